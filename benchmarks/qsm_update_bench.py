"""Milliseconds per QSM gradient step at the shipped Hopper config (actor active, BC term on), one thread
unless --threads; config overrides after the options (e.g. algo.policy_delay=2); --matmul-precision bf16 measures
oneDNN's bfloat16 matmuls (docs/qsm_throughput.md, option 6).

    PYTHONPATH=. python benchmarks/qsm_update_bench.py --steps 32 --reps 7

Builds the learner of configs/hopper/qsm.yaml, fills its replay with one iteration of rollouts, then times
``update`` on an actor-active iteration with ``updates_per_decision`` scaled so that one call makes ``--steps``
gradient steps (each step's work does not depend on how many there are), ``--reps`` times; prints the median
and the spread. To compare two checkouts under the same load, run it from both at the same time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from agents.finetune import FinetuneConfig
from agents.qsm import QSMConfig, QSMLearner
from flowpolicy.checkpoint import load_policy
from flowpolicy.config import from_dict, load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/hopper/qsm.yaml")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--label", default="")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the update")
    parser.add_argument("--matmul-precision", choices=["ieee", "bf16"], default="ieee",
                        help="bf16: oneDNN runs the fp32 matmuls in bfloat16 (fast only on CPUs with AVX512-BF16/AMX)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. algo.policy_delay=2")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.matmul_precision == "bf16":
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    algo = from_dict(QSMConfig, cfg.algo)
    learner = QSMLearner(load_policy(cfg.policy)[0], cfg.env_id, algo, total_iterations=100, seed=0)
    learner.collect(0)
    learner.cfg.updates_per_decision = args.steps / (algo.num_envs * algo.decisions_per_env)
    iteration = algo.critic_warmup_iterations  # the actor trains from here on
    learner.update(iteration)  # warm-up
    times = []
    for _ in range(args.reps):
        tick = time.perf_counter()
        learner.update(iteration)
        times.append(1e3 * (time.perf_counter() - tick) / args.steps)
    result = {"label": args.label, "ms_per_gradient_step_median": statistics.median(times),
              "ms_per_gradient_step": [round(t, 2) for t in times], "steps": args.steps,
              "threads": args.threads, "matmul_precision": args.matmul_precision,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "overrides": args.overrides}
    print(json.dumps(result))
    learner.envs.close()


if __name__ == "__main__":
    main()
