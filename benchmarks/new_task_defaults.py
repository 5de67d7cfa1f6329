"""Fine-tuning a task nobody tuned: the learners' defaults (noise and reward scale measured on the task) vs.
copies of the Hopper configs, from one BC policy (docs/new_task.md).

    python benchmarks/new_task_defaults.py --env Pusher-v5 --dataset runs/data/flowpolicy/pusher-medium-v0 \
        --runs runs/new_task/pusher --seeds 0 1 2 --steps 300000
    python benchmarks/new_task_defaults.py ... --report-only       # summarize the run directories as they are

Runs (skipping what has finished, resuming what has not), each as its own ``flowpolicy`` command:
1. ``flowpolicy pretrain --config configs/hopper/pretrain.yaml env_id=ENV dataset=DATASET`` → RUNS/bc;
2. per seed, ``flowpolicy finetune --policy RUNS/bc/policy --algorithm A`` for A in reinflow, qsm — no config:
   the defaults, with ``sigma_*`` / ``exploration_noise`` / ``reward_scale`` measured at the start;
3. for seed 0, ``flowpolicy finetune --config configs/hopper/A.yaml`` on the same policy (the issue's
   starting point: a tuned config copied to a new task).
Then prints a markdown table (BC → final and best normalized score, training episode length, the measured
settings) and writes RUNS/summary.json. Normalized scores use the dataset's reference scores (its random and
expert returns), which pretrain copies into the policy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ALGORITHMS = ("reinflow", "qsm")
EVAL_EVERY = {"reinflow": 2, "qsm": 8}  # iterations: about every 32k env steps for both


def run(command: list[str], log: Path) -> None:
    print("$", " ".join(command), flush=True)
    with open(log, "a") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        print(f"  failed (exit {done.returncode}); see {log}", flush=True)


def arms(args) -> list[tuple[str, str, int, list[str]]]:
    """(name, algorithm, seed, the finetune command's arguments) of every run."""
    policy = str(Path(args.runs) / "bc" / "policy")
    common = ["torch_threads=1", f"runner.total_env_steps={args.steps}", "runner.progress=false"]
    out = []
    for seed in args.seeds:
        for algo in ALGORITHMS:
            name = f"auto-{algo}-s{seed}"
            out.append((name, algo, seed, ["--policy", policy, "--algorithm", algo, "--out",
                                           str(Path(args.runs) / name), f"seed={seed}", *common,
                                           f"runner.eval_every={EVAL_EVERY[algo]}", "--resume"]))
    for algo in ALGORITHMS:
        name = f"hopper-{algo}-s0"
        extra = [f"algo.dataset={args.dataset}"] if algo == "qsm" else []
        out.append((name, algo, 0, ["--config", f"configs/hopper/{algo}.yaml", f"env_id={args.env}",
                                    f"policy={policy}", f"out={Path(args.runs) / name}", "seed=0", *common,
                                    f"runner.eval_every={EVAL_EVERY[algo]}", *extra, "--resume"]))
    return out


def summarize(run_dir: Path) -> dict | None:
    from agents.runner import read_scalars

    if not (run_dir / "summary.json").is_file():
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    algo = json.loads((run_dir / "config.json").read_text())["algo"]
    lengths = read_scalars(run_dir, "charts/episodic_length")
    return {"initial": summary.get("initial_normalized_score"), "final": summary.get("final_normalized_score"),
            "best": summary.get("best_normalized_score"), "env_steps": summary.get("env_steps"),
            "wall_s": summary.get("wall_s"),
            "train_episode_length": float(np.mean(lengths[-3:, 1])) if len(lengths) else None,
            "settings": {k: algo[k] for k in ("sigma_min", "sigma_max", "exploration_noise", "reward_scale",
                                              "q_grad_coeff", "q_grad_normalize") if k in algo}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True)
    parser.add_argument("--dataset", required=True, help="the Minari dataset directory (flowpolicy collect)")
    parser.add_argument("--runs", required=True, help="directory for the BC policy and the fine-tuning runs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300_000, help="env-step budget of each fine-tuning run")
    parser.add_argument("--report-only", action="store_true", help="train nothing; summarize the runs")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        if not (runs / "bc" / "policy" / "policy.json").is_file():
            run(["flowpolicy", "pretrain", "--config", "configs/hopper/pretrain.yaml", f"env_id={args.env}",
                 f"dataset={args.dataset}", f"out={runs / 'bc'}", "torch_threads=1", "train.eval_every=20000"],
                runs / "pretrain.log")
        for name, _algo, _seed, command in arms(args):
            if not (runs / name / "summary.json").is_file():
                run(["flowpolicy", "finetune", *command], runs / f"{name}.log")
    results = {name: summarize(runs / name) for name, *_ in arms(args)}
    (runs / "summary.json").write_text(json.dumps({"env": args.env, "dataset": args.dataset, "steps": args.steps,
                                                   "runs": results}, indent=2) + "\n")
    print(f"\n{args.env}, {args.steps:,} env steps per run (normalized: the dataset's random = 0, expert = 100)\n")
    print("| config | seeds | BC | final | best | training episode length | measured / set |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("auto", "hopper"):
        for algo in ALGORITHMS:
            done = [r for name, r in results.items() if name.startswith(f"{kind}-{algo}-") and r]
            if not done:
                continue

            def stat(key, rows=done):
                values = np.array([r[key] for r in rows], dtype=float)
                return f"{values.mean():.1f} ± {values.std():.1f}" if len(values) > 1 else f"{values[0]:.1f}"
            settings = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in done[0]["settings"].items())
            label = f"{algo}, no config (defaults)" if kind == "auto" else f"{algo}, configs/hopper/{algo}.yaml"
            print(f"| {label} | {len(done)} | {stat('initial')} | {stat('final')} | {stat('best')} | "
                  f"{stat('train_episode_length')} | {settings} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
