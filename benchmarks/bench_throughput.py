"""Whole-loop throughput of ReinFlow fine-tuning vs. raw vector-env stepping vs. Stable-Baselines3 PPO,
measured in one run on this machine (ratios, because the machines here are noisy).

    python benchmarks/bench_throughput.py --config configs/hopper/reinflow.yaml --iterations 3 \
        --out docs/results/throughput_hopper.json

1. raw: the same number of envs, gymnasium SyncVectorEnv, random actions, one action per step;
2. ours: ReinFlow iterations (rollout + PPO update) with the config's settings, split into env stepping,
   rollout inference/bookkeeping and update;
3. SB3 PPO (MlpPolicy, same number of envs, n_steps chosen so one rollout has the same env steps).

With ``--backends sync,async:2,ray:1,ray:2,ray:2:w`` step 2 runs once per rollout backend (``name:workers``,
``:w`` for ``runner.inference: workers``; see agents/backends.py) and the overheads of the ray backend are
measured too: Ray start-up, worker start-up,
per-worker memory, and the time to broadcast the policy's weights to every worker through the object store:

    python benchmarks/bench_throughput.py --config configs/hopper/reinflow.yaml --iterations 3 \
        --backends sync,async:2,ray:1,ray:2 --out docs/results/scaling_hopper.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import gymnasium as gym
import numpy as np
import torch

from agents.finetune import FinetuneConfig
from agents.reinflow import ReinFlowConfig, ReinFlowLearner
from agents.runner import single_threaded
from envs.registry import make_gym_env
from flowpolicy.checkpoint import load_policy
from flowpolicy.config import from_dict, load_config


def raw_env_steps_per_s(env_id: str, num_envs: int, steps: int, seed: int = 0) -> float:
    envs = gym.vector.SyncVectorEnv([lambda: make_gym_env(env_id)] * num_envs)  # registers suite envs too
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(64)]
    start = time.perf_counter()
    for i in range(steps // num_envs):
        envs.step(actions[i % 64])
    elapsed = time.perf_counter() - start
    envs.close()
    return (steps // num_envs) * num_envs / elapsed


def broadcast_s(policy, envs) -> float:
    """Seconds to put the policy's weights into Ray's object store and have every worker's node fetch them
    (what workers that hold a policy copy pay once per iteration)."""
    import ray

    weights = {k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()}

    @ray.remote(num_cpus=0)
    def receive(w):
        return sum(a.nbytes for a in w.values())

    start = time.perf_counter()
    ref = ray.put(weights)
    ray.get([receive.options(scheduling_strategy="SPREAD").remote(ref) for _ in range(envs.num_workers)])
    return time.perf_counter() - start


def ours(cfg: FinetuneConfig, iterations: int, backend: str = "sync", workers: int = 1,
         inference: str = "learner") -> dict:
    from agents.backends import attach_backend
    from agents.runner import RunnerConfig

    torch.manual_seed(cfg.seed)  # the noise net's and critic's initialization, as finetune seeds it: every
    policy, _ = load_policy(cfg.policy)  # backend then runs the same numbers (env_steps must agree)
    algo = from_dict(ReinFlowConfig, cfg.algo)
    learner = ReinFlowLearner(policy, cfg.env_id, algo, total_iterations=iterations, seed=cfg.seed)
    learner.cfg.critic_warmup_iterations = 0  # time the full update from the first iteration
    overheads = {}
    tick = time.perf_counter()
    attach_backend(learner, from_dict(RunnerConfig, {"backend": backend, "num_workers": workers,
                                                     "inference": inference}, prefix="runner"))
    if backend != "sync":
        overheads["startup_s"] = time.perf_counter() - tick
        overheads["worker_rss_mb"] = [round(i["rss_mb"]) for i in learner.envs.worker_info()]
        if backend == "ray":
            overheads["broadcast_s"] = min(broadcast_s(policy, learner.envs) for _ in range(3))
            overheads["weights_mb"] = sum(p.numel() * p.element_size() for p in policy.state_dict().values()) / 2**20
    totals = {"env_steps": 0, "env_s": 0.0, "rollout_s": 0.0, "update_s": 0.0, "actor_shipping_s": 0.0}
    for it in range(iterations):
        t0 = time.perf_counter()
        with single_threaded():  # as the runner collects
            rollout = learner.collect(it)
        t1 = time.perf_counter()
        learner.update(it)
        t2 = time.perf_counter()
        totals["env_steps"] += rollout["env_steps"]
        totals["env_s"] += rollout["env_s"]
        totals["rollout_s"] += t1 - t0
        totals["update_s"] += t2 - t1
        totals["actor_shipping_s"] += getattr(learner.envs, "broadcast_s", 0.0)
    learner.envs.close()
    wall = totals["rollout_s"] + totals["update_s"]
    return {**totals, "wall_s": wall, "env_steps_per_s": totals["env_steps"] / wall,
            "inference_s": totals["rollout_s"] - totals["env_s"], "backend": backend, "workers": workers,
            "inference": inference,
            **overheads}


def sb3_ppo(env_id: str, num_envs: int, steps_per_rollout: int, rollouts: int, seed: int = 0) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(env_id, n_envs=num_envs, seed=seed)
    n_steps = max(1, steps_per_rollout // num_envs)
    model = PPO("MlpPolicy", venv, n_steps=n_steps, batch_size=min(64 * num_envs, n_steps * num_envs), seed=seed,
                verbose=0, device="cpu")
    total = n_steps * num_envs * rollouts
    start = time.perf_counter()
    model.learn(total)
    wall = time.perf_counter() - start
    venv.close()
    return {"env_steps": total, "wall_s": wall, "env_steps_per_s": total / wall, "n_steps": n_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/hopper/reinflow.yaml")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--backends", default="sync",
                        help="comma-separated rollout backends to time, name[:workers[:w]] (sync, async:2, ray:2, "
                             "ray:2:w); ':w' = runner.inference workers (the workers sample with a policy copy)")
    parser.add_argument("--skip-sb3", action="store_true", help="leave out SB3 PPO (e.g. for a scaling run)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(FinetuneConfig, args.config, args.overrides)
    algo = from_dict(ReinFlowConfig, cfg.algo)
    per_rollout = algo.num_envs * algo.decisions_per_env * load_policy(cfg.policy)[0].config.act_steps  # nominal
    raw = raw_env_steps_per_s(cfg.env_id, algo.num_envs, per_rollout)
    ppo = None if args.skip_sb3 else sb3_ppo(cfg.env_id, algo.num_envs, per_rollout, args.iterations)
    backends, ray_init_s = {}, None
    for spec in args.backends.split(","):
        name, _, rest = spec.partition(":")
        workers, _, where = rest.partition(":")
        if name == "ray" and ray_init_s is None:
            import ray

            tick = time.perf_counter()
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            ray_init_s = time.perf_counter() - tick
        backends[spec] = ours(cfg, args.iterations, name, int(workers or 1), "workers" if where == "w" else "learner")
    if ray_init_s is not None:
        import ray

        ray.shutdown()
    ours_result = backends.get("sync", next(iter(backends.values())))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads",
        "env_id": cfg.env_id, "num_envs": algo.num_envs, "config": args.config, "overrides": args.overrides,
        "raw_env_steps_per_s": raw, "ours": ours_result, "sb3_ppo": ppo, "backends": backends,
        "ray_init_s": ray_init_s,
        "ratio_ours_vs_raw": ours_result["env_steps_per_s"] / raw,
        "ratio_ours_vs_sb3_ppo": ours_result["env_steps_per_s"] / ppo["env_steps_per_s"] if ppo else None,
    }
    print(f"{cfg.env_id}, {algo.num_envs} envs, {args.iterations} iterations of {per_rollout} env steps")
    print(f"  raw SyncVectorEnv stepping : {raw:8.0f} env steps/s")
    if ppo:
        print(f"  SB3 PPO (MlpPolicy)        : {ppo['env_steps_per_s']:8.0f} env steps/s")
    for spec, o in backends.items():
        vs_ppo = f", {o['env_steps_per_s'] / ppo['env_steps_per_s']:.2f}x SB3 PPO" if ppo else ""
        print(f"  ReinFlow whole loop, {spec:8s}: {o['env_steps_per_s']:8.0f} env steps/s -> "
              f"{o['env_steps_per_s'] / raw:.2f}x raw{vs_ppo}; env {o['env_s']:.1f} s, inference "
              f"{o['inference_s']:.1f} s, update {o['update_s']:.1f} s (of {o['wall_s']:.1f} s)")
        for key in ("startup_s", "worker_rss_mb", "broadcast_s", "weights_mb", "actor_shipping_s"):
            if key in o:
                print(f"      {key}: {o[key]}")
    if ray_init_s is not None:
        print(f"  ray.init: {ray_init_s:.1f} s")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
