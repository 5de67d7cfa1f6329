"""Learning curves of QSM before and after its throughput work: same config, same seeds.

    python benchmarks/qsm_curve_compare.py --before RUN_DIR [RUN_DIR ...] --after RUN_DIR [RUN_DIR ...] \
        --name qsm_throughput_curves [--labels BEFORE AFTER] [--title TITLE]

Each RUN_DIR is one seed's run of ``configs/hopper/qsm.yaml`` (made with benchmarks/bench_finetune.py from a
checkout of the code before, and of the code after). Writes docs/results/<name>.json (per seed and evaluation:
env steps, normalized score, wall time; the per-seed difference after − before) and docs/results/<name>.png
(mean ± std of each arm, via ``flowpolicy plot``'s drawing). Also prints, per arm, the mean normalized score of
each 100k-env-step window (the mean of the window's evaluations per seed, then mean ± std over seeds: single
evaluations swing by ± 10 on Hopper) and the env steps of each seed's first evaluation ≥ 90.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from agents.curves import plot_groups, read_metric
from agents.runner import read_scalars


def arm(runs: list[str]) -> dict:
    out = {}
    for run in runs:
        seed = json.loads((Path(run) / "config.json").read_text())["seed"]
        score = read_metric(Path(run), "normalized_score")
        wall = dict(read_scalars(run, "eval/wall_s").tolist())
        out[str(seed)] = {"run": str(run), "steps": score[:, 0].astype(int).tolist(), "normalized_score":
                          score[:, 1].tolist(), "wall_s": [wall.get(s, 0.0) for s in score[:, 0]]}
    return out


WINDOW = 100_000


def window_means(data: dict, n_windows: int) -> list[list[float]]:
    """Per seed, the mean score of the evaluations in each window (0, 100k], (100k, 200k], …; the last of the
    ``n_windows`` also takes what lies past it (the evaluation at 503k of a 500k run)."""
    out = []
    for curve in data.values():
        steps, score = np.array(curve["steps"]), np.array(curve["normalized_score"])
        row = []
        for i in range(n_windows):
            mask = (steps > i * WINDOW) & ((steps <= (i + 1) * WINDOW) if i < n_windows - 1 else True)
            row.append(float(score[mask].mean()) if mask.any() else float("nan"))
        out.append(row)
    return out


def first_at(data: dict, level: float = 90.0) -> list[int | None]:
    return [next((int(st) for st, sc in zip(c["steps"], c["normalized_score"], strict=True) if sc >= level), None)
            for c in data.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", nargs="+", required=True)
    parser.add_argument("--after", nargs="+", required=True)
    parser.add_argument("--name", default="qsm_throughput_curves")
    parser.add_argument("--out-dir", default="docs/results")
    parser.add_argument("--labels", nargs=2, default=["before (straightforward update)",
                                                      "after (same math, less overhead)"])
    parser.add_argument("--title", default="QSM, Hopper, configs/hopper/qsm.yaml: mean ± std over the same seeds")
    args = parser.parse_args()
    before, after = arm(args.before), arm(args.after)
    result = {"before": before, "after": after, "per_seed": {}}
    for seed in sorted(set(before) & set(after)):
        b, a = before[seed], after[seed]
        n = min(len(b["steps"]), len(a["steps"]))
        diff = np.array(a["normalized_score"][:n]) - np.array(b["normalized_score"][:n])
        result["per_seed"][seed] = {"steps_before": b["steps"][:n], "steps_after": a["steps"][:n],
                                    "difference": diff.round(2).tolist(),
                                    "final_before": b["normalized_score"][-1], "final_after": a["normalized_score"][-1],
                                    "wall_before_s": b["wall_s"][-1], "wall_after_s": a["wall_s"][-1]}
        print(f"seed {seed}: before {np.round(b['normalized_score'], 1).tolist()}\n"
              f"        after  {np.round(a['normalized_score'], 1).tolist()}\n"
              f"        max |after − before| {np.abs(diff).max():.1f}; final {b['normalized_score'][-1]:.1f} → "
              f"{a['normalized_score'][-1]:.1f}; wall {b['wall_s'][-1]:.0f} s → {a['wall_s'][-1]:.0f} s")
    last = max(max(c["steps"]) for data in (before, after) for c in data.values())
    # whole windows up to the budget: the evaluation just past it (503k of a 500k run) joins the last one
    n_windows = int(np.ceil((last - WINDOW // 10) / WINDOW))
    print("| arm | " + " | ".join(f"{i * WINDOW // 1000}–{(i + 1) * WINDOW // 1000}k" for i in range(n_windows))
          + " | first ≥ 90 (per seed) |")
    print("|---" * (n_windows + 2) + "|")
    for label, data in zip(args.labels, (before, after), strict=True):
        rows = np.array(window_means(data, n_windows))
        result.setdefault("windows", {})[label] = {"window_env_steps": WINDOW, "per_seed": rows.round(2).tolist(),
                                                   "first_at_90": first_at(data)}
        cells = [f"{m:.1f} ± {sd:.1f}" for m, sd in zip(rows.mean(0), rows.std(0), strict=True)]
        firsts = ", ".join("—" if f is None else f"{f // 1000}k" for f in first_at(data))
        print(f"| {label} | " + " | ".join(cells) + f" | {firsts} |")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    groups = {label: [np.array([c["steps"], c["normalized_score"]]).T for c in data.values()]
              for label, data in zip(args.labels, (before, after), strict=True)}
    plot_groups(groups, out / f"{args.name}.png", "normalized_score", title=args.title, overwrite=True)
    print(f"wrote {out / args.name}.json and .png")


if __name__ == "__main__":
    main()
