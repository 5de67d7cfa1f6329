"""Evaluate a policy in simulation: returns, normalized score, and an mp4 of an episode.

Works with anything that has ``act(obs_batch) -> actions`` and ``reset(env_indices=None)`` — the
:class:`flowpolicy.Agent` in practice — so the env layer does not depend on the policy code. The agent
handles its own observation history and action chunks; the envs here step one action at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.registry import get_task
from envs.vector import VecEnv, make_env


@dataclass
class EvalResult:
    env_id: str
    returns: list[float]
    lengths: list[int]

    @property
    def return_mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def return_std(self) -> float:
        return float(np.std(self.returns))

    @property
    def normalized_score(self) -> float | None:
        return get_task(self.env_id).normalized_score(self.return_mean)

    def to_dict(self) -> dict:
        out = {"env": self.env_id, "episodes": len(self.returns), "return_mean": self.return_mean,
               "return_std": self.return_std, "length_mean": float(np.mean(self.lengths))}
        if self.normalized_score is not None:
            out["normalized_score"] = self.normalized_score
        return out


def evaluate_agent(agent, env_id: str, episodes: int = 10, seed: int = 0, num_envs: int | None = None,
                   progress=None) -> EvalResult:
    """Run exactly ``episodes`` episodes on ``num_envs`` parallel envs (env i runs episodes i, i+n, …, so
    short episodes are not over-counted); env i's first episode is seeded ``seed + i``."""
    if episodes < 1:
        raise ValueError(f"episodes must be ≥ 1, got {episodes}")
    n = min(episodes, num_envs or 8)
    quota = np.array([episodes // n + (i < episodes % n) for i in range(n)])
    returns, lengths = [], []
    with VecEnv(env_id, n) as vec:
        obs = vec.reset(seed)
        agent.reset()
        while quota.any():
            out = vec.step(agent.act(obs))
            ended = np.flatnonzero(out.done)
            for env_index, ret, length in zip(ended, out.episode_returns, out.episode_lengths, strict=True):
                if quota[env_index] > 0:
                    quota[env_index] -= 1
                    returns.append(ret)
                    lengths.append(length)
                    if progress is not None:
                        progress(ret)
            if len(ended):
                agent.reset(ended)
            obs = out.obs
    return EvalResult(env_id, returns, lengths)


def random_policy_return(env_id: str, episodes: int = 100, seed: int = 0) -> tuple[float, float]:
    """Mean and std of the return of uniformly random actions (the 0 of the normalized score)."""
    import gymnasium as gym

    env = gym.make(env_id)
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


def record_video(agent, env_id: str, path: str | Path, seed: int = 0, max_steps: int | None = None,
                 fps: int = 30, width: int = 320, height: int = 240) -> tuple[Path, float, int]:
    """Roll out one episode with offscreen MuJoCo rendering into an mp4 at about ``fps`` frames/s of
    simulated time. Returns ``(path, episode_return, frames)``."""
    _ensure_offscreen_gl()
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = make_env(env_id, render_mode="rgb_array", width=width, height=height)
    sim_fps = env.metadata.get("render_fps") or fps
    every = max(1, round(sim_fps / fps))
    obs, _ = env.reset(seed=seed)
    agent.reset()
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
