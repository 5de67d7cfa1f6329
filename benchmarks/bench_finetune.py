"""Learning curves of a fine-tuning method: success rate or normalized score at env-step budgets over seeds.

    python benchmarks/bench_finetune.py --config configs/hopper/reinflow.yaml --seeds 0 1 2 \
        --budgets 500000 1000000 2000000 --name reinflow_hopper

Runs ``flowpolicy finetune`` once per seed up to the largest budget (runs/bench/<name>/seed<S>), reads the
periodic deterministic evaluations from TensorBoard, and writes docs/results/<name>.json (score and wall
time at each budget: the last evaluation at or before it) and docs/results/<name>.png (curves). The metric
is the evaluation success rate where the task reports success (manipulation), else the normalized score
where the task has reference scores, else the return (so robomimic runs report success rates, where results
recorded before this choice reported returns).
Existing finished runs are reused and unfinished ones resume from their last checkpoint, so an interrupted
benchmark can be re-run. ``--report-only`` trains nothing: it reports the runs as they stand (a budget a
run has not reached yet reports its latest evaluation, and docs/results/<name>.json records each run's
``last_env_steps`` so the table of every method can mark such budgets as not reached).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from agents.finetune import FinetuneConfig, finetune
from agents.runner import read_scalars
from flowpolicy.config import load_config


def eval_curve(run_dir: Path) -> dict[str, list[float]]:
    returns = read_scalars(run_dir, "eval/return")
    curve = {"steps": [int(s) for s in returns[:, 0]], "return": returns[:, 1].tolist()}
    for tag in ("normalized_score", "success_rate"):  # logged with eval/return: matched by step, not position
        values = dict(read_scalars(run_dir, f"eval/{tag}").tolist())
        if values:
            curve[tag] = [values[s] for s in curve["steps"]]
    wall = dict(read_scalars(run_dir, "eval/wall_s").tolist())
    curve["wall_s"] = [wall.get(s, 0.0) for s in curve["steps"]]
    return curve


def at_budget(curve: dict, key: str, budget: int) -> tuple[float, float]:
    idx = [i for i, s in enumerate(curve["steps"]) if s <= budget]
    i = idx[-1] if idx else 0
    return curve[key][i], curve["wall_s"][i]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=int, nargs="+", default=[500_000, 1_000_000, 2_000_000])
    parser.add_argument("--name", required=True)
    parser.add_argument("--runs", default="runs/bench")
    parser.add_argument("--report-only", action="store_true", help="train nothing; report the runs as they stand")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    curves = {}
    for seed in args.seeds:
        run_dir = Path(args.runs) / args.name / f"seed{seed}"
        if args.report_only:
            if not run_dir.exists():
                print(f"seed {seed}: no run in {run_dir}, skipped")
                continue
        elif not (run_dir / "summary.json").exists():
            overrides = [*args.overrides, f"seed={seed}", f"out={run_dir}",
                         f"runner.total_env_steps={max(args.budgets)}"]
            resume = (run_dir / "checkpoints" / "last" / "training_state.json").exists()
            cfg = load_config(FinetuneConfig, args.config, overrides)
            finetune(cfg, resume=resume)
        curves[seed] = eval_curve(run_dir)
        curves[seed]["finished"] = (run_dir / "summary.json").exists()

    key = next((k for k in ("success_rate", "normalized_score") if all(k in c for c in curves.values())), "return")
    table = []
    for budget in [0, *args.budgets]:
        values = [at_budget(c, key, budget) for c in curves.values()]
        scores, walls = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        table.append({"env_steps": budget, f"{key}_mean": float(scores.mean()), f"{key}_std": float(scores.std()),
                      f"{key}_per_seed": scores.tolist(), "wall_s_mean": float(walls.mean())})
        reached = sum(c["finished"] or c["steps"][-1] >= budget for c in curves.values())
        table[-1]["seeds_reaching"] = int(reached)
        digits = 2 if key == "success_rate" else 1
        print(f"{budget:>9,} env steps: {key} {scores.mean():7.{digits}f} ± {scores.std():5.{digits}f}  "
              f"(seeds {np.round(scores, digits).tolist()}), wall {walls.mean():6.0f} s"
              + ("" if reached == len(curves) else f"  [only {reached}/{len(curves)} runs reached it]"))
    os.makedirs("docs/results", exist_ok=True)
    result = {"config": args.config, "overrides": args.overrides, "seeds": list(curves), "metric": key,
              "table": table, "curves": {str(s): c for s, c in curves.items()}}
    Path(f"docs/results/{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for seed, c in curves.items():
        ax.plot(np.array(c["steps"]) / 1e6, c[key], marker=".", label=f"seed {seed}")
    ax.set_xlabel("env steps (millions)")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title(f"{args.name}: deterministic evaluation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"docs/results/{args.name}.png", dpi=120)
    print(f"wrote docs/results/{args.name}.json and .png ({len(curves)} seeds)")


if __name__ == "__main__":
    main()
