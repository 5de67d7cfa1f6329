"""Demonstrations of OCBench tasks by the package's own scripted oracles: ``flowpolicy collect --demonstrator oracle``.

OCBench (``pip install ocbench``) ships ``ocbench.oracles``: one controller per task family (``BlockController``,
``ChamberController``, ``SwitchController``, ``HanoiController``, ``BowlingController``). A controller is built
on the env (``Controller(env)``), reset with the first observation and info (``reset(ob, info)``) and queried
each step (``select_action(ob, info)``); it reads the privileged entries of ``info`` (object poses). Its
defaults are the human-like mode OCBench's own datasets are recorded in: a speed drawn per episode from
``speed_profile``, high-level mistakes with probability ``p_mistake`` (e.g. 0.1 for block, 0.2 for chamber)
followed by recovery, randomized keyframes and pick retries. The controllers draw from NumPy's *global*
generator, so episode i seeds it and the env's reset with ``seed + i`` (reproducible for a fixed seed).

OCBench's envs terminate at success (``terminate_at_success=True``), so a successful episode ends at its
first successful step; ``info["success"]`` is the success signal. :func:`collect_oracle` keeps only
successful episodes by default (``keep_failures`` keeps all), reports the oracle's success rate over all
attempts and writes a local Minari dataset with the success criterion, the rate and the episode seeds in
its metadata.

**Recovery data (``action_noise``, DART).** The oracles move along smooth, nearly identical paths, so a
cloned policy that drifts a little off them meets states no demonstration shows; on block-lite-single a flow
BC policy trained on 500 clean demos succeeded in 0–5 % of episodes although it fit them closely (it closed
the gripper early and turned the wrist away). With ``action_noise`` σ > 0 each executed action is the oracle's
plus Gaussian noise N(0, σ²) (clipped to the action box) while the *recorded* action is the oracle's own,
which corrects the perturbation it sees — Laskey et al.'s DART ("Noise Injection for Robust Imitation
Learning", 2017). 300 demos recorded with σ = 0.05 cloned to 0.14–0.22 (docs/manipulation.md has the
table). The noise comes from its own generator seeded
per attempt, so the oracle's draws (NumPy's global generator) are unchanged and σ = 0 records exactly what
it recorded before. A recorded transition's next observation follows the *executed* action; the metadata
says so (``action_noise``, ``recorded_actions``).
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.datasets import Episode

FAMILIES = ("block", "chamber", "switch", "hanoi", "bowling")
SUCCESS_CRITERION = "info['success'] at any step (OCBench terminates the episode at success)"
_OCBENCH_ID = re.compile(r"(block|chamber|switch|hanoi|bowling)-cpu-[\w-]+-v\d+")


def _error(message: str):
    from pretrain.collect import CollectError

    return CollectError(message)


def oracle_family(env_id: str) -> str | None:
    """``block-cpu-lite-single-task1-v0`` → ``block``; None for an id that is not an OCBench CPU state task."""
    match = _OCBENCH_ID.fullmatch(env_id.rsplit(":", 1)[-1])
    return match.group(1) if match else None


def make_oracle(env, family: str):
    """The OCBench oracle controller of ``family`` built on ``env`` with its default (human-like) settings."""
    try:
        import ocbench.oracles as oracles
    except ImportError as err:
        raise _error(f"--demonstrator oracle needs the ocbench package (pip install ocbench): {err}") from None
    classes = {"block": oracles.BlockController, "chamber": oracles.ChamberController,
               "switch": oracles.SwitchController, "hanoi": oracles.HanoiController,
               "bowling": oracles.BowlingController}
    return classes[family](env)


@dataclass
class OracleEpisode:
    episode: Episode
    success: bool
    speed: float | None


def noise_generator(seed: int) -> np.random.Generator:
    """The executed-action noise of the attempt reset with ``seed``: its own stream, not NumPy's global one
    (the oracle's) and not the env's."""
    return np.random.default_rng([int(seed), 0xDA27])


def run_oracle_episode(env, oracle, seed: int, action_noise: float = 0.0) -> OracleEpisode:
    """One episode of ``oracle`` on ``env`` (its TimeLimit gives the horizon), env and NumPy's global generator
    (which the oracles draw from) seeded with ``seed``. With ``action_noise`` σ > 0 the env executes the
    oracle's action plus N(0, σ²) noise and the episode records the oracle's action (DART, module docstring)."""
    np.random.seed(seed)  # noqa: NPY002 -- the oracles draw from NumPy's global generator
    noise = noise_generator(seed) if action_noise > 0 else None
    obs, info = env.reset(seed=seed)
    oracle.reset(obs, info)
    observations, actions, rewards = [obs], [], []
    success, terminated, truncated = False, False, False
    low, high = env.action_space.low, env.action_space.high
    while not (terminated or truncated):
        action = np.clip(np.asarray(oracle.select_action(obs, info), dtype=np.float32), low, high)
        executed = action if noise is None else np.clip(
            action + action_noise * noise.standard_normal(action.shape).astype(np.float32), low, high)
        obs, reward, terminated, truncated, info = env.step(executed)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        success = success or bool(info.get("success", False))
    episode = Episode(np.stack(observations), np.stack(actions), np.asarray(rewards, np.float32),
                      terminated=terminated, truncated=truncated and not terminated, seed=seed)
    return OracleEpisode(episode, success, oracle.speed)


@dataclass
class OracleCollectResult:
    dataset_dir: Path
    episodes: int  # kept
    attempts: int
    successes: int
    env_steps: int  # in the kept episodes
    length_mean: float  # of the kept episodes
    wall_s: float

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else float("nan")


def default_dataset_id(env_id: str, action_noise: float = 0.0) -> str:
    """``block-cpu-lite-single-task1-v0`` → ``ocbench/block-cpu-lite-single-task1-oracle-v0`` (action noise 0.05:
    ``…-oracle-noise5-v0``; Minari ids allow no dot)."""
    from pretrain.collect import task_name

    noise = f"-noise{action_noise * 100:g}".replace(".", "p") if action_noise > 0 else ""
    return f"ocbench/{task_name(env_id)}-oracle{noise}-v0"


def record_oracle(env_id: str, episodes: int, seed: int = 0, keep_failures: bool = False,
                  max_attempts: int | None = None, progress: bool = True, action_noise: float = 0.0,
                  env_kwargs: dict | None = None) -> tuple[list[Episode], int, int, list[dict]]:
    """Run the oracle until ``episodes`` are kept (successful ones, or any with ``keep_failures``) or
    ``max_attempts`` (default 3 × episodes) were made; attempt i uses seed ``seed + i``. Returns the kept
    episodes, attempts, successes and per kept episode its success and oracle speed."""
    from envs.registry import make_gym_env

    family = oracle_family(env_id)
    if family is None:
        raise _error(f"--demonstrator oracle: {env_id!r} is not an OCBench CPU task "
                     f"({{{','.join(FAMILIES)}}}-cpu[-lite]-<variant>-task<N>-v0); the oracles are OCBench's")
    max_attempts = 3 * episodes if max_attempts is None else max_attempts
    env = make_gym_env(env_id, **(env_kwargs or {}))
    kept, speeds, attempts, successes = [], [], 0, 0
    try:
        oracle = make_oracle(env, family)
        while len(kept) < episodes and attempts < max_attempts:
            result = run_oracle_episode(env, oracle, seed + attempts, action_noise)
            attempts += 1
            successes += result.success
            if result.success or keep_failures:
                kept.append(result.episode)
                speeds.append({"success": result.success, "speed": result.speed})
            if progress:
                print(f"\r{env_id} oracle: {len(kept)}/{episodes} kept, {successes}/{attempts} successful",
                      end="", file=sys.stderr, flush=True)
    finally:
        env.close()
        if progress:
            print(file=sys.stderr, flush=True)
    return kept, attempts, successes, speeds


def collect_oracle(env_id: str, out: str | Path, episodes: int = 50, seed: int = 0, keep_failures: bool = False,
                   max_attempts: int | None = None, dataset_id: str | None = None, overwrite: bool = False,
                   progress: bool = True, action_noise: float = 0.0, env_kwargs: dict | None = None
                   ) -> OracleCollectResult:
    """Record ``episodes`` demonstrations of an OCBench task by its oracle (see the module docstring) as the
    local Minari dataset ``out/<dataset_id>`` (default ``ocbench/<task>-oracle-v0``, with ``-noise<σ×100>``
    when ``action_noise`` > 0, e.g. ``-oracle-noise5-v0``). ``env_kwargs`` go to ``gym.make``. Bad arguments, a
    non-OCBench env and an existing dataset (unless ``overwrite``) raise a one-line ``CollectError`` before
    anything is recorded."""
    from pretrain.collect import _check_int, _refuse_existing, _write_replacing, validate_request
    from pretrain.datasets import write_minari_dataset

    _check_int("episodes", episodes, 1)
    _check_int("seed", seed, 0)
    if max_attempts is not None:
        _check_int("max_attempts", max_attempts, 1)
    if isinstance(action_noise, bool) or not isinstance(action_noise, int | float) or not 0 <= action_noise < 1:
        raise _error(f"action_noise must be a number in [0, 1) (the std of the executed-action noise in action "
                     f"units; 0.05 is a good start), got {action_noise!r}")
    if oracle_family(env_id) is None:
        raise _error(f"--demonstrator oracle: {env_id!r} is not an OCBench CPU task "
                     f"({{{','.join(FAMILIES)}}}-cpu[-lite]-<variant>-task<N>-v0); the oracles are OCBench's")
    target_id = dataset_id or default_dataset_id(env_id, action_noise)
    validate_request("expert", episodes, seed, 1, 1, 0.4, 0.15, target_id)  # the id checks
    start = time.time()
    out = Path(out).expanduser().resolve()
    _refuse_existing(out / target_id, overwrite)
    kept, attempts, successes, per_episode = record_oracle(env_id, episodes, seed, keep_failures, max_attempts,
                                                           progress, action_noise, env_kwargs)
    if not kept:
        raise _error(f"{env_id}: the oracle succeeded in none of {attempts} attempts (--keep-failures keeps them)")
    lengths = [ep.length for ep in kept]
    metadata = {
        "demonstrator": "oracle", "oracle": f"ocbench.oracles ({oracle_family(env_id)} controller, default "
                                            f"human-like settings)",
        "attempts": attempts, "successes": successes, "oracle_success_rate": successes / attempts,
        "kept_failures": keep_failures, "first_seed": seed,
        "kept_successes": int(sum(e["success"] for e in per_episode)),
        "length_mean": float(np.mean(lengths)), "episode_success": [e["success"] for e in per_episode],
        "oracle_speeds": [e["speed"] for e in per_episode],
        "seeding": "attempt i: env.reset(seed=first_seed+i) and np.random.seed(first_seed+i)",
        "action_noise": float(action_noise), "env_kwargs": dict(env_kwargs or {}),
        "recorded_actions": "the oracle's actions" + (
            f"; the env executed them plus N(0, {action_noise:g}^2) noise, clipped (DART), drawn from "
            "numpy.random.default_rng([first_seed+i, 0xDA27])" if action_noise > 0 else ""),
        "collected_by": "flowpolicy collect --demonstrator oracle",
    }
    out_dir = _write_replacing(out / target_id, overwrite, lambda: write_minari_dataset(
        target_id, env_id, kept, out, metadata=metadata, algorithm_name="OCBench oracle",
        description=f"OCBench oracle demonstrations for {env_id} by flowpolicy collect",
        success_criterion=SUCCESS_CRITERION,
    ))
    return OracleCollectResult(out_dir, len(kept), attempts, successes, int(sum(lengths)), float(np.mean(lengths)),
                               round(time.time() - start, 1))
