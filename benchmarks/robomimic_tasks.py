"""Measure the robomimic tasks on robosuite: env steps per CPU-second and the scripted demonstrators' success.

    python benchmarks/robomimic_tasks.py [--seeds 20] [--steps 300] [--tasks RobomimicLift-v0 ...]

Prints a markdown table (docs/manipulation.md, "robomimic tasks on robosuite"): steps/s with uniform-random
actions (single env, CPU time of the step calls), demonstrator success over seeds 0..N-1 (default settings:
fail_prob 0.15, full variability), and the lengths of the successful episodes.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs.registry import make_gym_env
from pretrain.scripted import run_scripted_episode

TASKS = ["RobomimicLift-v0", "RobomimicCan-v0", "RobomimicSquare-v0"]


def steps_per_cpu_second(env_id: str, steps: int) -> float:
    env = make_gym_env(env_id)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 7)).astype(np.float32)
    start = time.process_time()
    for action in actions:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    elapsed = time.process_time() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    args = parser.parse_args()
    rows = []
    for env_id in args.tasks:
        speed = steps_per_cpu_second(env_id, args.steps)
        env = make_gym_env(env_id)
        results = [run_scripted_episode(env, seed) for seed in range(args.seeds)]
        env.close()
        lengths = [r.episode.length for r in results if r.success]
        failed = [seed for seed, r in enumerate(results) if not r.success]
        rows.append((env_id, speed, len(lengths), len(results), lengths, failed))
        print(f"{env_id}: {speed:.0f} steps/s, success {len(lengths)}/{len(results)}, failed seeds {failed}",
              flush=True)
    print("\n| task | env steps / CPU-s | demonstrator success | successful episode length (mean, min–max) |")
    print("|---|---|---|---|")
    for env_id, speed, ok, n, lengths, _ in rows:
        span = f"{np.mean(lengths):.0f} ({min(lengths)}–{max(lengths)})" if lengths else "–"
        rate = f"{ok}/{n} = {ok / n:.2f}" if n else "–"
        print(f"| {env_id} | {speed:.0f} | {rate} | {span} |")


if __name__ == "__main__":
    main()
