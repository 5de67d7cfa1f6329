"""Manipulation suites through flowpolicy's env layer: make, step (action chunks), flatten, report success —
and env steps per second on this machine. The tests (tests/test_manipulation_suites.py) run the same smoke check
with a few steps; this script measures throughput for docs/manipulation.md:

    python benchmarks/manipulation_suites.py [--steps 2000] [--suite fetch-reach ...] > suites.json

Throughput: one env, uniformly random actions, one action per step through ``VecEnv`` (so it includes our
wrappers: Dict flattening, success, episode statistics, autoreset); single-threaded. Reported per wall-clock
second and per CPU-second of this process (the latter is what to compare on a shared, loaded machine).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import warnings

import numpy as np

# name → (env id, gym.make kwargs, the module it needs); one task per suite
SUITES = {
    "fetch-reach": ("FetchReach-v4", {}, "gymnasium_robotics"),
    "fetch-push": ("FetchPush-v4", {}, "gymnasium_robotics"),
    "franka-kitchen": ("FrankaKitchen-v1", {}, "gymnasium_robotics"),
    "metaworld-reach": ("Meta-World/MT1", {"env_name": "reach-v3"}, "metaworld"),
    "pusht": ("gym_pusht/PushT-v0", {"obs_type": "state"}, "gym_pusht"),
    "ocbench-block-lite": ("block-cpu-lite-single-task1-v0", {}, "ocbench"),
    "robosuite-lift": None,  # robosuite has no gymnasium ids; its adapter module is not part of this change
}


def missing_module(name: str) -> str | None:
    """Why a suite cannot run here (its package does not import), or None."""
    spec = SUITES[name]
    if spec is None:
        return "no gymnasium adapter for robosuite yet"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(spec[2])
    except Exception as err:  # noqa: BLE001 - any import failure means the suite is unusable here
        return f"{spec[2]} does not import: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
    return None


def smoke(name: str, num_envs: int = 2, act_steps: int = 4, decisions: int | None = None, seed: int = 0) -> dict:
    """Step ``num_envs`` envs with random action chunks until every env has ended an episode (or
    ``decisions`` decisions); returns what was seen: flat obs dim, episodes, success flags."""
    from envs.vector import VecEnv

    env_id, kwargs, _ = SUITES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = VecEnv(env_id, num_envs, act_steps=act_steps, **kwargs)
    try:
        obs = vec.reset(seed=seed)
        space = vec.single_action_space
        rng = np.random.default_rng(seed)
        ended, successes, returns, per_decision = np.zeros(num_envs, bool), [], [], []
        limit = decisions or 10_000
        for _ in range(limit):
            actions = rng.uniform(space.low, space.high, (num_envs, *space.shape)).astype(space.dtype)
            out = vec.step(actions)
            assert out.obs.shape == obs.shape and np.isfinite(out.obs).all()
            per_decision.append(out.success)
            successes += out.episode_successes
            returns += out.episode_returns
            ended |= out.done
            if decisions is None and ended.all():
                break
        return {"env_id": env_id, "obs_dim": int(obs.shape[-1]), "action_shape": list(space.shape),
                "episodes": len(returns), "episode_successes": successes,
                "reports_success": any(s is not None for s in per_decision), "env_steps": vec.total_env_steps}
    finally:
        vec.close()


def steps_per_second(name: str, steps: int, seed: int = 0) -> tuple[float, float]:
    """(env steps per wall-clock second, env steps per CPU-second of this process)."""
    from envs.vector import VecEnv

    env_id, kwargs, _ = SUITES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = VecEnv(env_id, 1, **kwargs)
        vec.reset(seed=seed)
        vec.envs.action_space.seed(seed)
        for _ in range(20):  # warm-up
            vec.step(vec.envs.action_space.sample())
        start, cpu, count = time.perf_counter(), time.process_time(), vec.total_env_steps
        while vec.total_env_steps - count < steps:
            vec.step(vec.envs.action_space.sample())
        done = vec.total_env_steps - count
        rates = done / (time.perf_counter() - start), done / max(time.process_time() - cpu, 1e-9)
    vec.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="env steps timed per suite")
    parser.add_argument("--suite", nargs="*", default=list(SUITES), choices=list(SUITES))
    args = parser.parse_args()
    import mujoco

    results = {"mujoco": mujoco.__version__, "load_average": [round(x, 1) for x in os.getloadavg()],
               "cpus": os.cpu_count(), "suites": {}}
    for name in args.suite:
        reason = missing_module(name)
        if reason is not None:
            results["suites"][name] = {"skipped": reason}
        else:
            check = smoke(name)
            wall, cpu = steps_per_second(name, args.steps)
            results["suites"][name] = {**{k: check[k] for k in ("env_id", "obs_dim", "action_shape",
                                                                 "reports_success")},
                                       "env_steps_per_s": round(wall), "env_steps_per_cpu_s": round(cpu)}
        print(name, results["suites"][name], file=sys.stderr)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
