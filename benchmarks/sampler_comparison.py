"""The controlled sampler comparison of issue #7: one learner (GRPO), Flow-SDE vs. CPS, equal budgets.

    python benchmarks/sampler_comparison.py            # after the bench_finetune runs of docs/policy_gradients.md

Reads the TensorBoard logs of the benchmark runs (runs/bench/<arm>/seed*/) — the deterministic evaluations
and the returns of the stochastic training rollouts — and writes docs/results/sampler_comparison_<task>.md
and .png: per arm, the normalized score at each budget, its mean over all evaluations up to the largest
budget (area under the curve), the env steps to a first score ≥ 90, and the return of the training
rollouts next to the deterministic policy's (rollout quality: how much the sampler's noise costs while
exploring). Every arm uses the same config but the sampler (see the arms' bench commands).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from agents.runner import read_scalars

DEFAULT_ARMS = ["grpo_hopper=Flow-SDE a = 0.5 (grpo)", "cps_hopper=CPS η = 0.8 (cps)",
                "cps_eta05_hopper=CPS η = 0.5 (noise-matched)"]
DEFAULT_BUDGETS = [100_000, 300_000, 500_000, 1_000_000, 2_000_000]


def window_mean(series: np.ndarray, lo: float, hi: float) -> float:
    inside = (series[:, 0] > lo) & (series[:, 0] <= hi)
    return float(series[inside, 1].mean()) if inside.any() else float("nan")


def arm_stats(run_dirs: list[Path], budgets: list[int], windows: list[tuple[int, int]], reach: float) -> dict:
    per_seed = []
    for run in run_dirs:
        score = read_scalars(run, "eval/normalized_score")
        ret, rollout = read_scalars(run, "eval/return"), read_scalars(run, "charts/episodic_return")
        if len(score) == 0 or score[-1, 0] < max(budgets) * 0.95:
            continue  # unfinished run: left out so every arm compares complete curves
        upto = score[score[:, 0] <= max(budgets) * 1.01]
        per_seed.append({
            "at": [float(score[score[:, 0] <= b][-1, 1]) for b in budgets],
            "auc": float(upto[:, 1].mean()),
            "reach": float(next((s for s, v in upto if v >= reach), np.inf)),
            "bc_return": float(ret[0, 1]),
            "rollout": [window_mean(rollout, lo, hi) for lo, hi in windows],
            "eval": [window_mean(ret, lo, hi) for lo, hi in windows]})
    return {"seeds": len(per_seed), "per_seed": per_seed}


def fmt(values, digits=1) -> str:
    values = np.asarray(values, dtype=float)
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, help="RUN_NAME=label (runs/bench/RUN_NAME)")
    parser.add_argument("--runs", default="runs/bench")
    parser.add_argument("--budgets", type=int, nargs="+", default=DEFAULT_BUDGETS)
    parser.add_argument("--reach", type=float, default=90.0)
    parser.add_argument("--task", default="hopper")
    parser.add_argument("--out", help="writes OUT.md and OUT.png (default docs/results/sampler_comparison_TASK)")
    args = parser.parse_args()
    last = max(args.budgets)
    windows = [(0, 100_000), (last // 2 - 100_000, last // 2), (last - 100_000, last)]
    budget_names = [f"{b / 1e6:g}M" if b >= 1e6 else f"{b // 1000}k" for b in args.budgets]

    arms = {}
    for spec in args.arms:
        name, _, label = spec.partition("=")
        runs = sorted(Path(args.runs, name).glob("seed*"))
        arms[label or name] = (name, arm_stats(runs, args.budgets, windows, args.reach))

    lines = [f"Sampler comparison on {args.task}: the GRPO learner with each sampler, same config otherwise, "
             f"finished runs only (deterministic evaluation, normalized; mean ± std over seeds).",
             "Command: `python benchmarks/sampler_comparison.py" + (" " + " ".join(f"'{a}'" for a in args.arms) if
                                                                    args.arms != DEFAULT_ARMS else "") +
             (f" --budgets {' '.join(map(str, args.budgets))}" if args.budgets != DEFAULT_BUDGETS else "") +
             (f" --out {args.out}" if args.out else "") + "`", "",
             "| sampler | seeds | " + " | ".join(budget_names) +
             f" | mean score to {budget_names[-1]} (AUC) | steps to ≥ {args.reach:g} (median) |",
             "|---|---|" + "---:|" * (len(budget_names) + 2)]
    for label, (_, stats) in arms.items():
        seeds = stats["per_seed"]
        if not seeds:
            lines.append(f"| {label} | 0 | " + " | ".join("—" for _ in range(len(budget_names) + 2)) + " |")
            continue
        at = np.array([s["at"] for s in seeds])
        reach = np.array([s["reach"] for s in seeds])
        reached = f"{np.median(reach) / 1000:.0f}k" if np.isfinite(np.median(reach)) else "—"
        lines.append(f"| {label} | {len(seeds)} | " + " | ".join(fmt(at[:, i]) for i in range(len(budget_names))) +
                     f" | {fmt([s['auc'] for s in seeds])} | {reached} ({int(np.isfinite(reach).sum())}/{len(seeds)}"
                     f" reached; per seed {', '.join(f'{r / 1000:.0f}k' if np.isfinite(r) else '—' for r in reach)}) |")
    window_names = [f"{lo // 1000}–{hi // 1000}k" for lo, hi in windows]
    lines += ["", "Return of the stochastic training rollouts (what the sampler explores with) vs. the deterministic "
              "evaluation in the same window of env steps (mean over seeds; BC policy's deterministic return "
              "at step 0 in the first column):", "",
              "| sampler | BC (deterministic) | " + " | ".join(f"rollouts / eval {w}" for w in window_names) + " |",
              "|---|---:|" + "---:|" * len(windows)]
    for label, (_, stats) in arms.items():
        seeds = stats["per_seed"]
        if not seeds:
            continue
        cells = []
        for i in range(len(windows)):
            rollout = np.nanmean([s["rollout"][i] for s in seeds])
            evaluation = np.nanmean([s["eval"][i] for s in seeds])
            cells.append(f"{rollout:.0f} / {evaluation:.0f}")
        lines.append(f"| {label} | {np.mean([s['bc_return'] for s in seeds]):.0f} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out or f"docs/results/sampler_comparison_{args.task}")
    out.with_suffix(".md").write_text(text)

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, (name, _) in arms.items():
        runs = sorted(Path(args.runs, name).glob("seed*"))
        for ax, tag in zip(axes, ["eval/normalized_score", "charts/episodic_return"], strict=True):
            curves = [read_scalars(r, tag) for r in runs]
            curves = [c for c in curves if len(c) and c[-1, 0] >= max(args.budgets) * 0.95]
            if not curves:
                continue
            grid = np.linspace(0, max(args.budgets), 80)
            values = np.array([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
            line, = ax.plot(grid / 1e6, values.mean(0), label=f"{label} ({len(curves)} seeds)")
            ax.fill_between(grid / 1e6, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    axes[0].set_ylabel("deterministic evaluation (normalized)")
    axes[1].set_ylabel("training-rollout return (stochastic sampler)")
    for ax in axes:
        ax.set_xlabel("env steps (millions)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(f"{args.task}: GRPO with Flow-SDE vs. CPS (mean and range over seeds)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out}.md and .png")


if __name__ == "__main__":
    main()
