"""Evaluate a policy in simulation: returns, normalized score, and an mp4 of an episode.

Works with anything that has ``act(obs_batch) -> actions`` and ``reset(env_indices=None)`` — the
:class:`flowpolicy.Agent` in practice — so the env layer does not depend on the policy code. The agent
handles its own observation history and action chunks; the envs here step one action at a time.

**Seeding: episode k depends on (seed, k) only.** Episode k (k = 0 … episodes−1) of an evaluation with
``seed`` is reset with ``seed + k``, whichever env runs it and however many envs there are: the first
``num_envs`` episodes start on envs 0 … num_envs−1, and the env that finishes an episode takes the next
episode index. When the agent has ``seed_episodes(env_indices, episode_seeds)`` (:class:`flowpolicy.Agent`
does), it is told the episode seed too, and draws that episode's sampler noise (the initial noise x_0 of
every chain, and the per-step noise of stochastic samplers) from a generator seeded by it. So the same
policy, ``seed`` and ``episodes`` give the same returns with 1 env or 8, from ``flowpolicy evaluate``,
``pretrain``'s final evaluation or a fine-tuning run's evaluation — as long as they pass the same ``seed``.

**Success**: when the env reports success (see :mod:`envs.wrappers`), episode k succeeded when the success
flag was true at any step of it, and the result carries ``success_rate`` (fraction of episodes); an env
without a success signal gives no ``success_rate`` at all.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.registry import TASKS, EnvError, TaskSpec, get_task, make_gym_env
from envs.vector import make_env
from envs.wrappers import EnvOptions, as_options


class EvaluationError(EnvError):
    """An evaluation that cannot give a trustworthy number (e.g. a non-finite return); one line."""


@dataclass
class EvalResult:
    env_id: str
    returns: list[float]  # episode k's return at index k
    lengths: list[int]
    successes: list[bool] | None = None  # episode k succeeded (at any step); None: the env reports no success
    task: TaskSpec | None = None  # for the normalized score; None: looked up by env id

    @property
    def success_rate(self) -> float | None:
        return None if self.successes is None else float(np.mean(self.successes))

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))

    @property
    def return_sem(self) -> float:
        """Standard error of the mean return: sample std (ddof = 1) / sqrt(n); 0 for one episode."""
        n = len(self.returns)
        return float(np.std(self.returns, ddof=1) / math.sqrt(n)) if n > 1 else 0.0

    @property
    def normalized_score(self) -> float | None:
        return (self.task or get_task(self.env_id)).normalized_score(self.return_mean)

    def to_dict(self) -> dict:
        out = {"env": self.env_id, "episodes": len(self.returns), "return_mean": self.return_mean,
               "return_std": self.return_std, "return_sem": self.return_sem,
               "length_mean": float(np.mean(self.lengths)),
               "returns": [float(r) for r in self.returns], "lengths": [int(n) for n in self.lengths]}
        score = self.normalized_score  # (reads the task once: a non-registered id means making the env)
        if score is not None:
            out["normalized_score"] = score
        if self.successes is not None:
            out["success_rate"] = self.success_rate
            out["successes"] = [bool(s) for s in self.successes]
        return out


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise EnvError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def evaluate_agent(agent, env_id: str, episodes: int = 10, seed: int = 0, num_envs: int | None = None,
                   progress=None, options: EnvOptions | dict | None = None, task: TaskSpec | None = None,
                   **env_kwargs) -> EvalResult:
    """Run exactly ``episodes`` episodes on ``num_envs`` parallel envs (default ``min(episodes, 8)``);
    episode k is reset with ``seed + k`` and its sampler noise is seeded from it (see the module
    docstring), so the result does not depend on ``num_envs``. ``progress(return)`` is called as each
    episode ends. A non-finite return is an :class:`EvaluationError`. ``options`` and ``env_kwargs`` make
    the env as :func:`envs.vector.make_env` does. ``task``: whose reference scores give the normalized score
    (default: the registered task, when the env is made without kwargs or options)."""
    episodes = _check_count("episodes", episodes, 1)
    seed = _check_count("seed", seed, 0)
    n = min(episodes, 8 if num_envs is None else _check_count("num_envs", num_envs, 1))
    options = as_options(options)
    envs = [make_env(env_id, options=options, **env_kwargs) for _ in range(n)]
    seed_episodes = getattr(agent, "seed_episodes", None)
    returns: list[float | None] = [None] * episodes
    lengths: list[int | None] = [None] * episodes
    successes: list[bool | None] = [None] * episodes
    try:
        agent.reset()
        episode_of = list(range(n))  # the episode each env runs (None: idle, no episodes left)
        obs = [envs[i].reset(seed=seed + i)[0] for i in range(n)]
        if seed_episodes is not None:
            seed_episodes(list(range(n)), [seed + i for i in range(n)])
        totals, steps = [0.0] * n, [0] * n
        next_episode, remaining = n, episodes
        while remaining:
            actions = agent.act(np.stack(obs))
            ended = []
            for i, env in enumerate(envs):
                k = episode_of[i]
                if k is None:  # idle: its (stale) observation only keeps the agent's batch size fixed
                    continue
                obs[i], reward, terminated, truncated, info = env.step(actions[i])
                totals[i] += float(reward)
                steps[i] += 1
                if terminated or truncated:
                    if not math.isfinite(totals[i]):
                        raise EvaluationError(f"{env_id}: episode {k} (reset seed {seed + k}) has a non-finite "
                                              f"return ({totals[i]}); the env or the policy produced NaN/inf")
                    returns[k], lengths[k] = totals[i], steps[i]
                    successes[k] = info.get("episode_success")
                    remaining -= 1
                    if progress is not None:
                        progress(totals[i])
                    ended.append(i)
            started, started_seeds = [], []
            for i in ended:
                totals[i], steps[i] = 0.0, 0
                if next_episode < episodes:
                    episode_of[i] = next_episode
                    obs[i] = envs[i].reset(seed=seed + next_episode)[0]
                    started.append(i)
                    started_seeds.append(seed + next_episode)
                    next_episode += 1
                else:
                    episode_of[i] = None
            if ended:
                agent.reset(ended)
            if started and seed_episodes is not None:
                seed_episodes(started, started_seeds)
    finally:
        for env in envs:
            env.close()
    reported = [s for s in successes if s is not None]
    if task is None:
        task = TASKS.get(env_id) if not env_kwargs and options == EnvOptions() else None
    return EvalResult(env_id, returns, lengths, [bool(s) for s in successes] if reported else None,
                      task=task or TaskSpec(env_id, 0, 0, 0))

def random_policy_return(env_id: str, episodes: int = 100, seed: int = 0, options: EnvOptions | dict | None = None,
                         **env_kwargs) -> tuple[float, float]:
    """Mean and std of the return of uniformly random actions (the 0 of the normalized score); ``options``
    and ``env_kwargs`` make the env as :func:`envs.vector.make_env` does."""
    env = make_env(env_id, options=as_options(options), **env_kwargs) if options or env_kwargs \
        else make_gym_env(env_id)
    env.action_space.seed(seed)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        done, total = False, 0.0
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns))


def _ensure_offscreen_gl() -> None:
    """Pick a headless OpenGL backend before MuJoCo is imported (osmesa: software, works everywhere)."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "osmesa"
    if os.environ.get("MUJOCO_GL") in ("osmesa", "egl"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def _render_problem(env, env_id: str) -> str | None:
    """Render one frame; on failure (no usable OpenGL: an environment problem) a one-line description.
    A half-made MuJoCo viewer complains from ``__del__``; that noise is muted, the line says it all."""
    import gc
    import sys

    hook, problem = sys.unraisablehook, None
    sys.unraisablehook = lambda *_: None
    try:
        try:
            frame = env.render()
            if not isinstance(frame, np.ndarray) or frame.ndim != 3:
                problem = f"{env_id}: render() gives no rgb_array frames (got {type(frame).__name__})"
        except Exception as err:  # noqa: BLE001 - any failure of the first frame means no rendering here
            problem = (f"{env_id}: cannot render offscreen (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): "
                       f"{type(err).__name__}: {' '.join(str(err).split())[:200]}")
        if problem is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - closing a half-made renderer
                pass
        gc.collect()
    finally:
        sys.unraisablehook = hook
    return problem


def record_video(agent, env_id: str, path: str | Path, seed: int = 0, max_steps: int | None = None,
                 fps: int = 30, width: int = 320, height: int = 240, options: EnvOptions | dict | None = None,
                 **env_kwargs) -> tuple[Path, float, int]:
    """Roll out one episode with offscreen MuJoCo rendering into an mp4 at about ``fps`` frames/s of
    simulated time. The episode is episode 0 of ``evaluate_agent(agent, env_id, seed=seed)`` (same reset
    seed, same sampler noise). Returns ``(path, episode_return, frames)``."""
    _ensure_offscreen_gl()
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*render_mode")  # said below, in one line, if it matters
        try:
            env = make_env(env_id, render_mode="rgb_array", options=options, **{"width": width, "height": height,
                                                                                 **env_kwargs})
        except EnvError as err:  # not a MuJoCo env: it takes no frame size (any other problem is reported as is)
            if "width" not in str(err) and "height" not in str(err):
                raise
            try:
                env = make_env(env_id, render_mode="rgb_array", options=options, **env_kwargs)
            except (TypeError, EnvError) as err:
                raise EvaluationError(f"{env_id}: cannot be made with render_mode='rgb_array' "
                                      f"({' '.join(str(err).split())[:200]})") from None
    sim_fps = env.metadata.get("render_fps") or fps
    every = max(1, round(sim_fps / fps))
    obs, _ = env.reset(seed=seed)
    problem = _render_problem(env, env_id)
    if problem is not None:
        raise EvaluationError(problem)
    obs, _ = env.reset(seed=seed)
    agent.reset()
    if hasattr(agent, "seed_episodes"):  # the same noise as episode 0 of evaluate_agent(..., seed=seed)
        agent.seed_episodes([0], [seed])
    total, frames, step = 0.0, 0, 0
    with imageio.get_writer(path, fps=max(1, round(sim_fps / every)), codec="libx264", quality=7,
                            macro_block_size=8) as writer:
        while True:
            if step % every == 0:
                writer.append_data(env.render())
                frames += 1
            obs, reward, terminated, truncated, _ = env.step(agent.act(obs))
            total += float(reward)
            step += 1
            if terminated or truncated or (max_steps is not None and step >= max_steps):
                break
        writer.append_data(env.render())
        frames += 1
    env.close()
    return path, total, frames
