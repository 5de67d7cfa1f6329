"""One table of every fine-tuning method at equal env-step budgets, from the benchmark results in docs/results.

    python benchmarks/compare_methods.py --task hopper --budgets 100000 300000 500000 1000000 2000000

Reads ``docs/results/<method>_<task>*.json`` written by ``benchmarks/bench_finetune.py`` (learning curves
per seed) and reports, for each method and budget, the mean ± std over seeds of the normalized score of
the last deterministic evaluation at or before the budget ("—" where a run did not reach it), and the mean
wall time to the largest budget every seed reached (runs share a 2-core machine: see each method's page), and
how fast a method gets good: the median over seeds of the env steps of the first evaluation scoring at least
``--reach`` (90), with how many seeds got there. Writes docs/results/methods_<task>.md and a combined plot
docs/results/methods_<task>.png. ``benchmarks/results.py`` builds every task's table (and docs/RESULTS.md) with
the same functions, from run directories where they exist.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path("docs/results")
METHODS = {  # label: result-file stems, the longest run first (curves are merged per seed)
    "ReinFlow": ["reinflow_{task}_2m", "reinflow_{task}"],
    "QSM (+ BC term, shipped config)": ["qsm_bc_{task}"],
    "QSM, no BC term": ["qsm_{task}"],
    "CFGRL online": ["cfgrl_online_{task}"],
    "Flow-GRPO": ["grpo_{task}"],
    "Flow-CPS": ["cps_{task}"],
    "Flow-CPS η = 0.5": ["cps_eta05_{task}"],  # the noise-matched arm of the sampler comparison
    "DDPO_IS (clip 1e-2, shipped config)": ["ddpo_is_clip1e-2_{task}"],
    "DDPO_IS, clip 1e-3": ["ddpo_is_clip1e-3_{task}"],
    "DDPO_IS, clip 1e-4 (DDPO's image setting)": ["ddpo_is_{task}"],  # run before the config moved to 1e-2
    "DDPO_SF": ["ddpo_sf_{task}"],
    "FPO++ (shipped fpo config)": ["fpo_{task}"],
    "FPO, plain": ["fpo_plain_{task}"],  # per-decision ratio + PPO-clip: the variant that collapsed
}


def load_curves(stems: list[str], task: str) -> dict[str, dict]:
    for stem in stems:
        path = RESULTS / f"{stem.format(task=task)}.json"
        if path.exists():
            data = json.loads(path.read_text())
            return {seed: {"steps": c["steps"], "score": c[data["metric"]], "wall_s": c["wall_s"],
                           "finished": c.get("finished", True)} for seed, c in data["curves"].items()}
    return {}


def score_at(curve: dict, budget: int) -> float | None:
    if curve["steps"][-1] < budget and not (curve["finished"] and curve["steps"][-1] >= budget * 0.9):
        return None  # the run has not reached this budget (a finished run stops within an iteration of it)
    idx = [i for i, s in enumerate(curve["steps"]) if s <= budget]
    return curve["score"][idx[-1]] if idx else None


def steps_to_reach(curves: dict[str, dict], level: float) -> str:
    """Median over seeds of the env steps of the first evaluation ≥ level, and how many seeds reached it."""
    # TensorBoard stores float32: a success rate of 0.9 reads back as 0.89999998, which must count as reaching 0.9
    firsts = [next((s for s, v in zip(c["steps"], c["score"], strict=True) if v >= level - 1e-6 * max(1, abs(level))),
                   np.inf)
              for c in curves.values()]
    reached, median = sum(np.isfinite(firsts)), float(np.median(firsts))
    return f"{median / 1000:.0f}k ({reached}/{len(firsts)})" if np.isfinite(median) else f"— ({reached}/{len(firsts)})"


def table_lines(all_curves: dict[str, dict], budgets: list[int], reach: float = 90.0) -> list[str]:
    """The markdown table of every method (label → per-seed curves as :func:`load_curves` returns them)."""
    header = "| method | seeds | BC start | " + " | ".join(f"{b / 1e6:g}M" if b >= 1e6 else f"{b // 1000}k"
                                                         for b in budgets) + f" | wall time | steps to ≥ {reach:g} |"
    lines = [header, "|" + "---|" * (5 + len(budgets))]
    for label, curves in all_curves.items():
        cells, wall = [], "—"
        for budget in [0, *budgets]:
            values = [v for v in (score_at(c, budget) if budget else c["score"][0] for c in curves.values())
                      if v is not None]
            complete = len(values) == len(curves)
            cells.append(f"{np.mean(values):.1f} ± {np.std(values):.1f}" if complete else "—")
            if budget and complete:
                walls = [c["wall_s"][[i for i, s in enumerate(c["steps"]) if s <= budget][-1]] for c in curves.values()]
                wall = f"{np.mean(walls):.0f} s to {budget / 1e6:g}M" if budget >= 1e6 else \
                    f"{np.mean(walls):.0f} s to {budget // 1000}k"
        cells += [wall, steps_to_reach(curves, reach)]
        lines.append(f"| {label} | {len(curves)} | " + " | ".join(cells) + " |")
    return lines


def plot_methods(all_curves: dict[str, dict], task: str, path: Path) -> bool:
    """Every method's mean and range over seeds in one figure; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(11, 5))
    colors = plt.get_cmap("tab20").colors  # more methods than tab10 has colours
    for (label, curves), color in zip(all_curves.items(), colors, strict=False):
        grid = np.linspace(0, min(c["steps"][-1] for c in curves.values()), 60)
        scores = np.array([np.interp(grid, c["steps"], c["score"]) for c in curves.values()])
        ax.plot(grid / 1e6, scores.mean(0), label=f"{label} ({len(curves)})", color=color)
        ax.fill_between(grid / 1e6, scores.min(0), scores.max(0), color=color, alpha=0.1)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("env steps (millions)")
    ax.set_ylabel("normalized score (SAC expert = 100)")
    ax.set_title(f"{task}: mean and range over seeds (number of seeds in the legend)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--budgets", type=int, nargs="+", default=[100_000, 300_000, 500_000, 1_000_000, 2_000_000])
    parser.add_argument("--reach", type=float, default=90.0, help="score level for the 'steps to reach' column")
    args = parser.parse_args()
    all_curves = {label: curves for label, stems in METHODS.items() if (curves := load_curves(stems, args.task))}
    table = "\n".join(table_lines(all_curves, args.budgets, args.reach))
    print(table)
    (RESULTS / f"methods_{args.task}.md").write_text(
        f"Normalized score (mean ± std over seeds) at equal env steps, {args.task}. "
        f"`python benchmarks/compare_methods.py --task {args.task}`\n\n{table}\n")
    plot_methods(all_curves, args.task, RESULTS / f"methods_{args.task}.png")


if __name__ == "__main__":
    main()
