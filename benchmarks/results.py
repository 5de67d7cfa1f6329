"""One command, every table: rebuild docs/RESULTS.md from the run directories.

    python benchmarks/results.py --dry-run          # what is there, what is missing, what running it would cost
    python benchmarks/results.py                    # rebuild docs/RESULTS.md (+ per-task plots) from what is there
    python benchmarks/results.py --run --tasks ant  # also launch (or resume) the missing cells, then rebuild

A *cell* is one method on one task: a config in configs/<task>/, its overrides, seeds and env-step budget, and
the name of its benchmark (``stem``): its runs live in ``runs/bench/<stem>/seed<S>`` (what
``benchmarks/bench_finetune.py`` writes) and its curves in ``docs/results/<stem>.json``. Every cell is:

- **runs** — every seed's run directory is finished: its curves are re-read from TensorBoard and
  docs/results/<stem>.json is rewritten from them;
- **recorded** — no run directories here, but docs/results/<stem>.json holds the published curves (the
  recorded baseline: committed, never lost because runs/ is not); they are used as they are;
- **partial** — some run directories exist but not every seed finished: ``--run`` resumes them (the table
  keeps the recorded curves meanwhile, if any);
- **missing** — neither: listed with its command and an expected wall time, launched by ``--run``.

The cells are the shipped config of every algorithm that has one in configs/<task>/ (new configs appear
without editing this file: stem ``<algorithm>_<task>``), plus the ablation arms in :data:`SPECS` where they
were recorded. Expected times use the recorded wall time per env step of the same cell, else the mean of the
same algorithm's recorded cells on other tasks, scaled by the tasks' raw simulation speed (measured wall
times come from a shared 2-core CPU, so they are upper bounds more than forecasts).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_methods import plot_methods, table_lines  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
BUDGETS = [100_000, 300_000, 500_000, 1_000_000, 2_000_000]
TASKS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5", "ant": "Ant-v5"}
# raw single-thread env steps/s on these machines (shared/REFERENCE.md), to carry a wall time across tasks
ENV_SPEED = {"hopper": 10_000, "walker2d": 10_000, "halfcheetah": 22_000, "ant": 5_000}


@dataclass
class Spec:
    """One table row: a method (algorithm + overrides) as it is benchmarked on every task."""

    label: str
    algorithm: str
    stem: str  # {task} and {scale} (the budget: "2m", "500k") are replaced
    overrides: list[str] = field(default_factory=list)
    budget: int = 2_000_000
    task_budgets: dict[str, int] = field(default_factory=dict)  # where a task's table stops elsewhere
    task_seeds: dict[str, list[int]] = field(default_factory=dict)  # where a task runs other seeds
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    shipped: bool = True  # the shipped config: a cell on every task with a config; else only where recorded


SPECS = [
    Spec("ReinFlow", "reinflow", "reinflow_{task}_{scale}", ["torch_threads=1", "runner.progress=false"],
         task_budgets={"halfcheetah": 1_000_000, "ant": 1_000_000}),
    Spec("QSM (+ BC term, shipped config)", "qsm", "qsm_bc_{task}", budget=500_000),
    Spec("QSM, first config (4× the gradient steps)", "qsm", "qsm_bc_utd025_{task}",
         budget=500_000, shipped=False),
    Spec("QSM, no BC term (first config)", "qsm", "qsm_{task}", ["algo.bc_coeff=0"], budget=500_000, shipped=False),
    Spec("QSM, policy delay 2 (actor lr ×2)", "qsm", "qsm_delay2_{task}",
         ["algo.policy_delay=2", "algo.actor_lr=2.4e-4", "runner.eval_every=3", "torch_threads=1"], budget=500_000,
         shipped=False),
    Spec("QSM, policy delay 2 + half the gradient steps", "qsm", "qsm_delay2_utd03125_{task}",
         ["algo.policy_delay=2", "algo.updates_per_decision=0.03125", "algo.actor_lr=4.8e-4", "algo.critic_lr=1.2e-3",
          "algo.tau=0.08", "runner.eval_every=3", "torch_threads=1"], budget=500_000, shipped=False),
    Spec("CFGRL online", "cfgrl", "cfgrl_online_{task}", ["algo.mode=online"], budget=300_000),
    Spec("Flow-GRPO", "grpo", "grpo_{task}", ["torch_threads=1"], seeds=[0, 1, 2, 3, 4],
         task_budgets={"walker2d": 1_000_000}, task_seeds={"walker2d": [0, 1, 2]}),
    Spec("Flow-CPS", "cps", "cps_{task}", seeds=[0, 1, 2, 3, 4]),
    Spec("Flow-CPS η = 0.5", "cps", "cps_eta05_{task}", ["algo.eta=0.5"], seeds=[0, 1, 2, 3, 4], shipped=False),
    Spec("DDPO_IS (clip 1e-2, shipped config)", "ddpo_is", "ddpo_is_clip1e-2_{task}", ["algo.clip_range=0.01"]),
    Spec("DDPO_IS, clip 1e-3", "ddpo_is", "ddpo_is_clip1e-3_{task}", ["algo.clip_range=0.001"], shipped=False),
    Spec("DDPO_IS, clip 1e-4 (DDPO's image setting)", "ddpo_is", "ddpo_is_{task}", ["algo.clip_range=1e-4"],
         shipped=False),
    Spec("DDPO_SF", "ddpo_sf", "ddpo_sf_{task}"),
    Spec("FPO++ (shipped fpo config)", "fpo", "fpo_{task}", ["torch_threads=1"], task_budgets={"walker2d": 1_000_000}),
    Spec("FPO, plain", "fpo", "fpo_plain_{task}", ["algo.per_sample_ratio=false", "algo.negative_advantages=clip"],
         budget=500_000, seeds=[0], shipped=False),
]


# what a table alone does not say: setups, failures and their causes (written from the runs, kept with the tables)
NOTES: dict[str, str] = {
    "hopper": """
**QSM's shipped config changed** (issue #18, item 3): "QSM (+ BC term, shipped config)" takes 4× fewer
gradient steps per env step than "QSM, first config" (0.0625 vs 0.25 per decision) with the actor's learning
rate ×4, the critic's ×2 and the Polyak rate ×4, at about a third of the update cost
([qsm_throughput.md](qsm_throughput.md)). Same seeds, same BC policy: it reaches 90 sooner and ends within
the 3-seed spread of the first config (on Walker2d it learns more slowly: see there). The BC start differs
(≈ 51 vs 55) because the first config's runs predate the evaluation protocol in which episode k is seeded by
seed + k (the same BC policy, other episodes).

**Two cheaper QSM updates, measured and not shipped** (issue #18, item 3; [qsm_throughput.md](qsm_throughput.md)):
TD3's policy delay 2 (one actor step per two critic steps, actor lr ×2) costs 1.78× ReinFlow's wall time per env
step instead of the shipped 2.07×, and its curve stays within the seeds' spread after 100k but starts slower (first
≥ 90 at 73k, 49k, 98k vs 61k, 48k, 36k); adding half the gradient steps per decision (0.03125, learning rates and
Polyak rate ×2) reaches 1.47× but sits ≈ 10 points lower between 200k and 400k (80.9 ± 2.6 vs 91.1 ± 4.2, means
of each 100k window) and, on Walker2d seed 0, 9 points lower at 400–500k.
""",
    "walker2d": """
**Walker2d.** Flow-GRPO and FPO++ run the Hopper configs unchanged but for the env and policy (nothing tuned
for Walker2d); both improve from BC by ≈ 20 points at 1M env steps, where ReinFlow (Walker2d's own learning
rates) and QSM's first config reach the expert. Their BC start reads ≈ 38 rather than 41: these runs use
today's evaluation protocol (episode k seeded by seed + k); the ReinFlow, first-config QSM and CFGRL rows were
recorded before it. **QSM's shipped config (4× fewer gradient steps, see Hopper) learns more slowly here
than its first config**: 74.2 ± 19.1 vs 100.9 ± 11.4 at 500k (per seed at the end: 71, 95, 79 vs 90, 104,
104), where on Hopper the two are within seed noise — the cost of the 3× cheaper update on this task.
""",
    "halfcheetah": """
**HalfCheetah.** The shipped ReinFlow config (Hopper's settings; σ ∈ [0.10, 0.24]) improves every seed steadily
and none falls — the HalfCheetah drop a ReinFlow user reported with its published config (its issue #16) does
not appear here. Gains are modest at 1M env steps: the BC policy starts at 74 and our SAC expert (100) was
stopped at 150k steps, so there is less headroom than the normalized scale suggests. QSM uses Hopper's QSM
config unchanged but for the env, policy and dataset.
""",
    "ant": """
**Ant: ReinFlow does not improve at 1M env steps; QSM does (+21 at 500k).** Evaluated on 20 episodes, the BC
policy's episodes end early — the ant leaves its healthy height range: median 170 steps, 4 of 20 reach the
1000-step limit, return 172 (normalized 26). After 1M env steps ReinFlow keeps the ant alive longer (mean
episode length 325 → 444 and 382 for seeds 0 and 1; 6 and 5 of 20 episodes reach 1000 steps) but the return
per step does not rise (174 and 135); with 10 evaluation episodes one evaluation's standard error is ≈ ±8
normalized points, larger than its change. The data is weak: our Ant SAC expert was stopped at 150k steps
(854, where a converged SAC scores ≈ 5000) and the medium dataset holds 10 episodes (4k steps) of mostly
falling ones (336 ± 264). QSM, with Hopper's config, improves every seed on the same data (51.6 ± 7.6 at
500k): its replay keeps the demonstrations and its BC term pulls toward them, while ReinFlow learns only
from its own short, falling episodes. Exploration noise is not ReinFlow's limit (the probe of
`agents/autoscale.py` finds Ant tolerant: σ = 0.24 on the chain keeps 53 % of the BC score, more than the
shipped σ_max 0.16). We did not isolate the cause further; ReinFlow's own Ant gain (1231 → 4009, D4RL data of
a strong expert) took ≈ 7·10⁷ env steps. Next steps: an Ant dataset from a stronger expert
(`flowpolicy collect --env Ant-v5 --expert-steps 1000000`), and ReinFlow with its BC regularizer
(`algo.bc_coef`).
""",
}


@dataclass
class Cell:
    task: str
    label: str
    algorithm: str
    config: str
    stem: str
    overrides: list[str]
    seeds: list[int]
    budget: int
    status: str = "missing"  # runs | recorded | partial | missing
    done_steps: dict[int, int] = field(default_factory=dict)  # seed → env steps its run directory reached
    curves: dict = field(default_factory=dict)  # seed → {steps, score, wall_s, finished}

    def command(self) -> str:
        extra = "".join(f" {o}" for o in self.overrides)
        return (f"python benchmarks/bench_finetune.py --config {self.config} --seeds {' '.join(map(str, self.seeds))}"
                f" --budgets {self.budget} --name {self.stem}{extra}")

    def remaining_steps(self) -> int:
        return sum(max(self.budget - self.done_steps.get(s, 0), 0) for s in self.seeds)


def scale_tag(budget: int) -> str:
    return f"{budget / 1e6:g}m" if budget >= 1_000_000 else f"{budget // 1000}k"


def recorded(stem: str) -> dict | None:
    path = RESULTS / f"{stem}.json"
    return json.loads(path.read_text()) if path.exists() else None


def curves_of(data: dict) -> dict:
    return {str(seed): {"steps": c["steps"], "score": c[data["metric"]], "wall_s": c["wall_s"],
                        "finished": c.get("finished", True)} for seed, c in data["curves"].items()}


def discover_cells(tasks: list[str], runs_root: Path) -> list[Cell]:
    cells = []
    for task in tasks:
        labels = set()
        for spec in SPECS:
            budget = spec.task_budgets.get(task, spec.budget)
            stem = spec.stem.format(task=task, scale=scale_tag(budget))
            data = recorded(stem)
            config = f"configs/{task}/{spec.algorithm}.yaml"
            if data is None and not (spec.shipped and (ROOT / config).exists()):
                continue
            if data is not None:  # the recorded cell says exactly how it was made
                cell = Cell(task, spec.label, spec.algorithm, data["config"], stem, list(data["overrides"]),
                            [int(s) for s in data["seeds"]], int(data["table"][-1]["env_steps"]))
            else:
                cell = Cell(task, spec.label, spec.algorithm, config, stem, list(spec.overrides),
                            list(spec.task_seeds.get(task, spec.seeds)), budget)
            cells.append(cell)
            labels.add(spec.algorithm if spec.shipped else spec.label)
        for config in sorted((ROOT / "configs" / task).glob("*.yaml")):  # a shipped config no spec names
            algorithm = config.stem
            if algorithm == "pretrain" or algorithm in labels:
                continue
            cells.append(Cell(task, algorithm, algorithm, f"configs/{task}/{config.name}", f"{algorithm}_{task}",
                              ["runner.progress=false"], [0, 1, 2], 1_000_000))
    for cell in cells:
        classify(cell, runs_root)
    return cells


def classify(cell: Cell, runs_root: Path) -> None:
    from agents.runner import read_scalars

    finished = 0
    for seed in cell.seeds:
        run = runs_root / cell.stem / f"seed{seed}"
        if not run.is_dir():
            continue
        steps = read_scalars(run, "perf/update_s")
        cell.done_steps[seed] = int(steps[-1, 0]) if len(steps) else 0
        finished += (run / "summary.json").exists()
    data = recorded(cell.stem)
    if finished == len(cell.seeds):
        cell.status = "runs"
        cell.done_steps = {s: cell.budget for s in cell.seeds}
    elif cell.done_steps:
        cell.status = "partial"
    elif data is not None:
        cell.status = "recorded"
        cell.done_steps = {s: cell.budget for s in cell.seeds}
    if data is not None:
        cell.curves = curves_of(data)


def rebuild_from_runs(cell: Cell, runs_root: Path, write: bool) -> None:
    """Re-read a finished cell's curves from its run directories (docs/results/<stem>.json in
    bench_finetune's format when ``write``)."""
    from bench_finetune import at_budget, eval_curve

    curves = {}
    for seed in cell.seeds:
        run = runs_root / cell.stem / f"seed{seed}"
        curves[seed] = {**eval_curve(run), "finished": True}
    key = "normalized_score" if all("normalized_score" in c for c in curves.values()) else "return"
    table = []
    for budget in [0, cell.budget]:
        values = [at_budget(c, key, budget) for c in curves.values()]
        scores, walls = np.array([v[0] for v in values]), np.array([v[1] for v in values])
        table.append({"env_steps": budget, f"{key}_mean": float(scores.mean()), f"{key}_std": float(scores.std()),
                      f"{key}_per_seed": scores.tolist(), "wall_s_mean": float(walls.mean()),
                      "seeds_reaching": len(curves)})
    data = {"config": cell.config, "overrides": cell.overrides, "seeds": cell.seeds, "metric": key, "table": table,
            "curves": {str(s): c for s, c in curves.items()}, "source": f"runs/bench/{cell.stem}"}
    cell.curves = curves_of(data)
    if write:
        (RESULTS / f"{cell.stem}.json").write_text(json.dumps(data, indent=2) + "\n")


def ms_per_step(cell: Cell, cells: list[Cell]) -> tuple[float | None, str]:
    """Expected wall ms per env step of a cell, and where the number comes from."""
    def rate(c: Cell) -> float | None:
        rates = [curve["wall_s"][-1] / curve["steps"][-1] for curve in c.curves.values() if curve["steps"][-1] > 0]
        return 1e3 * float(np.mean(rates)) if rates else None

    own = rate(cell)
    if own:
        return own, "its recorded runs"
    same = [(c.task, r) for c in cells if c.algorithm == cell.algorithm and c is not cell and (r := rate(c))]
    if not same:
        return None, "no recorded run of this algorithm"
    # env stepping is only part of the cost, so scale half of it by the raw simulation speed
    scaled = [r * (0.5 + 0.5 * ENV_SPEED[t] / ENV_SPEED.get(cell.task, ENV_SPEED[t])) for t, r in same]
    return float(np.mean(scaled)), f"{cell.algorithm} on {', '.join(sorted({t for t, _ in same}))}"


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def to_run(cells: list[Cell], rerun: bool) -> list[Cell]:
    return [c for c in cells if c.status in ("missing", "partial") or (rerun and c.status == "recorded")]


def plan_lines(cells: list[Cell], todo: list[Cell]) -> list[str]:
    lines, total = [], 0.0
    for cell in todo:
        rate, source = ms_per_step(cell, cells)
        steps = cell.remaining_steps() if cell.status != "recorded" else cell.budget * len(cell.seeds)
        estimate = rate * steps / 1e3 if rate else None
        total += estimate or 0.0
        when = f"≈ {fmt_hours(estimate)} (from {source})" if estimate else f"unknown ({source})"
        lines.append(f"- {cell.task} · {cell.label} [{cell.status}]: {steps:,} env steps, {when}\n  `{cell.command()}`")
    lines.append(f"\nTotal ≈ {fmt_hours(total)} run one after another (cells of different tasks can run in parallel "
                 "shells with --tasks).")
    return lines


def write_results_md(cells: list[Cell], tasks: list[str], path: Path, plots: bool) -> None:
    out = ["# Results", "",
           "Every task × method table, rebuilt by one command from the run directories (runs/bench/<stem>/seed<S>) "
           "where they exist and otherwise from the recorded curves in docs/results/<stem>.json:", "",
           "```", "python benchmarks/results.py            # rebuild this page", "python benchmarks/results.py "
           "--dry-run  # list what is missing, its commands and expected wall time",
           "python benchmarks/results.py --run      # launch or resume what is missing, then rebuild", "```", "",
           "Normalized score: our SAC expert = 100, random policy = 0; mean ± std over seeds of the deterministic "
           "evaluation (10 episodes) at or before each env-step budget, from the shipped BC policies. "
           "\"Steps to ≥ 90\" is the median over seeds of the env steps of the first evaluation at 90 or more (how "
           "many seeds got there). Wall times were measured on a shared 2-core CPU with other jobs running; "
           "QSM's recorded times predate its throughput work ([qsm_throughput.md](qsm_throughput.md)). "
           "Learning curves of any run directory: `flowpolicy plot RUN_DIR ...`.", ""]
    for task in tasks:
        task_cells = [c for c in cells if c.task == task]
        if not task_cells:
            continue
        out += [f"## {TASKS.get(task, task)}", ""]
        have = {c.label: c.curves for c in task_cells if c.curves}
        if have:
            out += table_lines(have, BUDGETS) + [""]
            png = RESULTS / f"methods_{task}.png"
            if plots and plot_methods(have, task, png):
                out += [f"![{task}: every method](results/{png.name})", ""]
            elif png.exists():
                out += [f"![{task}: every method](results/{png.name})", ""]
        else:
            out += ["No results yet.", ""]
        if task in NOTES:
            out += [NOTES[task].strip(), ""]
        out += ["| method | source | seeds | budget | command |", "|---|---|---|---|---|"]
        for c in task_cells:
            source = {"runs": f"runs/bench/{c.stem}", "recorded": f"[recorded](results/{c.stem}.json)",
                      "partial": "partial runs (resume with --run)", "missing": "**missing**"}[c.status]
            budget = f"{c.budget / 1e6:g}M" if c.budget >= 1e6 else f"{c.budget // 1000}k"
            out.append(f"| {c.label} | {source} | {len(c.seeds)} | {budget} | `{c.command()}` |")
        out.append("")
    todo = to_run(cells, rerun=False)
    if todo:
        out += ["## Missing cells", "", "What `python benchmarks/results.py --run` would launch (expected wall "
                "time from recorded wall times per env step):", ""] + plan_lines(cells, todo) + [""]
    path.write_text("\n".join(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks (configs/<task>/)")
    parser.add_argument("--methods", nargs="+", default=None, help="only these algorithms (reinflow, qsm, ...)")
    parser.add_argument("--runs", default="runs/bench", help="where the benchmark run directories live")
    parser.add_argument("--dry-run", action="store_true", help="list the cells, what would run and how long; "
                        "write nothing")
    parser.add_argument("--run", action="store_true", help="launch or resume the missing/partial cells, then rebuild")
    parser.add_argument("--rerun", action="store_true", help="with --run/--dry-run: also re-run recorded cells here")
    parser.add_argument("--out", default="docs/RESULTS.md")
    parser.add_argument("--no-plots", action="store_true", help="do not redraw docs/results/methods_<task>.png")
    args = parser.parse_args(argv)
    runs_root = Path(args.runs)
    cells = discover_cells(args.tasks, runs_root)
    if args.methods:
        cells = [c for c in cells if c.algorithm in args.methods]
    for cell in cells:
        print(f"{cell.task:12s} {cell.label:45s} {cell.status:9s} {cell.stem}")
    todo = to_run(cells, args.rerun)
    if args.dry_run:
        print("\nwould run:" if todo else "\nnothing to run: every cell has finished runs or recorded results")
        if todo:
            print("\n".join(plan_lines(cells, todo)))
        return 0
    if args.run:
        for cell in todo:
            print(f"running {cell.task} · {cell.label}: {cell.command()}", flush=True)
            overrides = [*cell.overrides, "runner.progress=false"] if "runner.progress=false" not in cell.overrides \
                else cell.overrides
            subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_finetune.py"), "--config", cell.config,
                            "--seeds", *map(str, cell.seeds), "--budgets", str(cell.budget), "--name", cell.stem,
                            "--runs", str(runs_root.resolve()), *overrides], check=True, cwd=ROOT,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
            classify(cell, runs_root)
    for cell in cells:
        if cell.status == "runs":
            rebuild_from_runs(cell, runs_root, write=True)
    write_results_md(cells, [t for t in args.tasks if any(c.task == t for c in cells)], Path(args.out),
                     plots=not args.no_plots)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
