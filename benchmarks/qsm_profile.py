"""Wall time per env step of QSM vs ReinFlow at their shipped configs, and where QSM's time goes.

    PYTHONPATH=. python benchmarks/qsm_profile.py --steps 49152 --name qsm_profile_after

Runs ``configs/hopper/qsm.yaml`` and ``configs/hopper/reinflow.yaml`` one after the other in this process
(same machine, same load; each config's own ``torch_threads``, or ``--threads N`` for both) for the same
env-step budget, each under cProfile,
into a temporary directory. Reports for each: wall time per env step overall, and split into rollouts,
updates and evaluation (from the runner's perf/* TensorBoard scalars), the *steady-state* training cost
per env step (QSM: the iterations after its critic warm-up, where the actor trains too — what dominates a
500k run), and QSM's cumulative time in the parts of its update (critic targets, critic step, actor loss,
replay sampling, Polyak). Writes docs/results/<name>.json and prints a table.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np

from agents.finetune import FinetuneConfig, finetune
from agents.runner import read_scalars
from flowpolicy.config import load_config

# (label, function name as cProfile records it: file suffix, function)
QSM_PARTS = [
    ("update (all)", "agents/qsm.py", "update"),
    ("critic targets (sampler at s')", "agents/qsm.py", "critic_targets"),
    ("actor loss (QSM term)", "agents/qsm.py", "qsm_actor_loss"),
    ("BC term", "flowpolicy/policy.py", "bc_loss"),
    ("replay sampling", "agents/replay.py", "sample"),
    ("polyak", "agents/critics.py", "polyak_update"),
    ("backward (all)", "torch/_tensor.py", "backward"),
    ("optimizer steps", "torch/optim/adam.py", "step"),
    ("grad clipping", "torch/nn/utils/clip_grad.py", "clip_grad_norm_"),
    ("rollout (collect)", "agents/qsm.py", "collect"),
    ("evaluation", "agents/runner.py", "evaluate"),
]


def cumulative(stats: pstats.Stats, suffix: str, name: str) -> float:
    total = 0.0
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        if func == name and filename.replace("\\", "/").endswith(suffix):
            total = max(total, ct)  # recursion-safe: the outermost entry carries the whole time
    return total


def profile_run(config: str, steps: int, workdir: Path, extra: list[str]) -> dict:
    out = workdir / Path(config).parent.name / Path(config).stem
    overrides = [f"runner.total_env_steps={steps}", "runner.progress=false", f"out={out}", *extra]
    cfg = load_config(FinetuneConfig, config, overrides)
    profiler = cProfile.Profile()
    tick = time.perf_counter()
    profiler.enable()
    summary = finetune(cfg)
    profiler.disable()
    wall = time.perf_counter() - tick
    stats = pstats.Stats(profiler)
    perf = {tag: read_scalars(out, f"perf/{tag}") for tag in ("rollout_s", "update_s", "env_s")}
    env_steps = int(summary["env_steps"])
    steps_at = perf["update_s"][:, 0]
    per_iteration = np.diff(np.concatenate([[0], steps_at]))
    rollout, update = perf["rollout_s"][:, 1], perf["update_s"][:, 1]
    warmup = int(cfg.algo.get("critic_warmup_iterations", 0)) if cfg.algorithm == "qsm" else 0
    steady = slice(warmup, None) if len(update) > warmup else slice(None)
    result = {
        "config": config, "overrides": overrides, "env_steps": env_steps, "wall_s": round(wall, 2),
        "wall_ms_per_env_step": 1e3 * wall / env_steps,
        "rollout_s": float(rollout.sum()), "update_s": float(update.sum()), "env_s": float(perf["env_s"][:, 1].sum()),
        "eval_and_other_s": float(wall - rollout.sum() - update.sum()),
        "steady_train_ms_per_env_step": float(1e3 * (rollout[steady].sum() + update[steady].sum())
                                              / per_iteration[steady].sum()),
        "steady_update_ms_per_env_step": float(1e3 * update[steady].sum() / per_iteration[steady].sum()),
        "iterations": len(update), "warmup_iterations": warmup, "torch_threads": cfg.torch_threads,
    }
    if cfg.algorithm == "qsm":
        result["qsm_parts_s"] = {label: round(cumulative(stats, suffix, name), 2) for label, suffix, name in QSM_PARTS}
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:25]
    result["top_tottime"] = [{"function": f"{Path(f).name}:{ln}:{fn}", "calls": nc, "tottime_s": round(tt, 2),
                              "cumtime_s": round(ct, 2)} for (f, ln, fn), (_cc, nc, tt, ct, _c) in rows]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=49152, help="env-step budget of each run")
    parser.add_argument("--name", default="qsm_profile")
    parser.add_argument("--qsm-config", default="configs/hopper/qsm.yaml")
    parser.add_argument("--reinflow-config", default="configs/hopper/reinflow.yaml")
    parser.add_argument("--out-dir", default="docs/results")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="override runner.eval_every for both (default: each config's own)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch_threads for both (default: each config's own, as shipped)")
    args = parser.parse_args()
    extra = [] if args.eval_every is None else [f"runner.eval_every={args.eval_every}"]
    extra += [] if args.threads is None else [f"torch_threads={args.threads}"]
    with tempfile.TemporaryDirectory() as tmp:
        results = {"qsm": profile_run(args.qsm_config, args.steps, Path(tmp), extra),
                   "reinflow": profile_run(args.reinflow_config, args.steps, Path(tmp), extra)}
    q, r = results["qsm"], results["reinflow"]
    results["ratio_wall_per_env_step"] = q["wall_ms_per_env_step"] / r["wall_ms_per_env_step"]
    results["ratio_steady_train_per_env_step"] = q["steady_train_ms_per_env_step"] / r["steady_train_ms_per_env_step"]
    for name, res in (("QSM", q), ("ReinFlow", r)):
        print(f"{name:9s} {res['env_steps']:>7} env steps  wall {res['wall_s']:7.1f} s = "
              f"{res['wall_ms_per_env_step']:.3f} ms/step (rollout {res['rollout_s']:.1f} s, update "
              f"{res['update_s']:.1f} s, eval+other {res['eval_and_other_s']:.1f} s); steady training "
              f"{res['steady_train_ms_per_env_step']:.3f} ms/step")
    print(f"ratio QSM/ReinFlow: wall {results['ratio_wall_per_env_step']:.2f}x, "
          f"steady training {results['ratio_steady_train_per_env_step']:.2f}x")
    for label, seconds in q.get("qsm_parts_s", {}).items():
        print(f"  QSM {label:32s} {seconds:7.2f} s")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(args.out_dir) / f"{args.name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
