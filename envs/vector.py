"""Vectorized environments for flow policies: action chunks, observation history, seeding, episode stats.

One *decision* executes a chunk of H actions (:class:`ActionChunk`): the rewards of the executed steps
are summed (undiscounted by default — γ then applies once per decision, as in ReinFlow; pass
``reward_gamma`` to discount inside the chunk), and the chunk stops early when the episode ends.

:class:`VecEnv` wraps gymnasium's vector API (``SyncVectorEnv`` by default, ``AsyncVectorEnv`` on
request) in its default NEXT_STEP autoreset mode and handles it: when sub-envs end an episode, they are
reset at once through ``reset(options={"reset_mask": ...})``, so every :meth:`VecEnv.step` is a real
transition for every env — ``final_obs`` carries the true last observation, ``terminated`` and
``truncated`` stay apart, and ``obs`` is already the next episode's first observation. No learner ever
sees (or has to mask) gymnasium's reset step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from envs.registry import EnvError, make_gym_env
from envs.wrappers import EnvOptions, adapt_env, as_options, has_wrapper


class ActionChunk(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Execute an [H, A] chunk of actions per step; reward = Σ_h reward_gamma^h · r_h over executed steps.

    ``info["chunk_steps"]`` is the number of env steps executed (< H when the episode ended inside the
    chunk); the episode statistics of the inner ``RecordEpisodeStatistics`` pass through ``info``, and
    ``info["success"]`` is true when any executed step succeeded.
    """

    def __init__(self, env: gym.Env, act_steps: int, reward_gamma: float = 1.0):
        gym.utils.RecordConstructorArgs.__init__(self, act_steps=act_steps, reward_gamma=reward_gamma)
        gym.Wrapper.__init__(self, env)
        if act_steps < 1:
            raise ValueError(f"act_steps (actions executed per chunk) must be ≥ 1, got {act_steps}")
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"action chunks need a flat Box action space, got {space}")
        self.act_steps, self.reward_gamma = act_steps, reward_gamma
        self.action_space = gym.spaces.Box(np.tile(space.low, (act_steps, 1)), np.tile(space.high, (act_steps, 1)),
                                           dtype=space.dtype)

    def step(self, chunk):
        chunk = np.asarray(chunk).reshape(self.act_steps, -1)
        total, discount, success = 0.0, 1.0, None
        for h in range(self.act_steps):
            obs, reward, terminated, truncated, info = self.env.step(chunk[h])
            total += discount * float(reward)
            discount *= self.reward_gamma
            if "success" in info:
                success = bool(success) or bool(info["success"])
            if terminated or truncated:
                break
        info["chunk_steps"] = h + 1
        if success is not None:
            info["success"] = success
        return obs, total, terminated, truncated, info


def make_env(env_id: str, act_steps: int = 1, n_obs_steps: int = 1, reward_gamma: float = 1.0,
             render_mode: str | None = None, options: EnvOptions | dict | None = None, **env_kwargs) -> gym.Env:
    """One env: ``gym.make(env_id, **env_kwargs)`` → Dict observations flattened and the success signal
    (:func:`envs.wrappers.adapt_env`, set by ``options``) → ``RecordEpisodeStatistics`` (per env step; not a
    second one when the suite already adds its own) → optional observation history → action chunks.

    With ``n_obs_steps > 1`` observations are [n_obs_steps, obs_dim], oldest first, and the history is
    padded with the reset observation at episode start (as :class:`flowpolicy.Agent` does). ``env_id`` may be
    a registered id, ``module:EnvId`` or ``module:Class`` (see :mod:`envs.registry`).
    """
    if render_mode is not None:
        env_kwargs["render_mode"] = render_mode
    env = adapt_env(make_gym_env(env_id, **env_kwargs), options)
    if not has_wrapper(env, gym.wrappers.RecordEpisodeStatistics):
        env = gym.wrappers.RecordEpisodeStatistics(env)
    if n_obs_steps > 1:
        env = gym.wrappers.FrameStackObservation(env, n_obs_steps, padding_type="reset")
    if act_steps > 1 or reward_gamma != 1.0:
        env = ActionChunk(env, act_steps, reward_gamma)
    return env


@dataclass
class VecStep:
    """One decision for all N envs. ``obs`` is what to act on next (a new episode's first observation
    where one ended); ``final_obs`` is the true observation the transition ended in. Where the env reports
    success: ``success`` [N] (any executed step of the decision succeeded) and ``episode_successes`` (one
    bool per finished episode, in the order of ``episode_returns``: success at any step of the episode);
    else ``success`` is None and ``episode_successes`` empty."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    final_obs: np.ndarray
    env_steps: np.ndarray
    episode_returns: list[float] = field(default_factory=list)
    episode_lengths: list[int] = field(default_factory=list)
    success: np.ndarray | None = None
    episode_successes: list[bool] = field(default_factory=list)

    @property
    def done(self) -> np.ndarray:
        return self.terminated | self.truncated


class VecEnv:
    """N envs stepping in lockstep, one decision (an action chunk) per :meth:`step`."""

    inference = "learner"  # who samples a rollout's actions on these envs: agents.rollout.Rollout, runner.inference

    def __init__(self, env_id: str, num_envs: int, act_steps: int = 1, n_obs_steps: int = 1,
                 reward_gamma: float = 1.0, asynchronous: bool = False, options: EnvOptions | dict | None = None,
                 **env_kwargs):
        if isinstance(num_envs, bool) or not isinstance(num_envs, int | np.integer) or num_envs < 1:
            raise EnvError(f"num_envs must be an integer ≥ 1, got {num_envs!r}")
        self.env_id, self.num_envs, self.act_steps, self.n_obs_steps = env_id, num_envs, act_steps, n_obs_steps
        self.options = as_options(options)
        self.env_kwargs = dict(env_kwargs)  # what a backend needs to build the same envs elsewhere

        def factory():
            return make_env(env_id, act_steps, n_obs_steps, reward_gamma, options=self.options, **env_kwargs)

        vector_cls = gym.vector.AsyncVectorEnv if asynchronous else gym.vector.SyncVectorEnv
        self.envs = vector_cls([factory] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)
        self.single_observation_space = self.envs.single_observation_space
        self.single_action_space = self.envs.single_action_space
        self.total_env_steps = 0

    def reset(self, seed: int | list[int] | None = None) -> np.ndarray:
        """Reset all envs; with a seed, env i is seeded ``seed + i`` (and so is its action space). A list
        gives each env its own seed — equal seeds start envs from the same state (GRPO's groups)."""
        if isinstance(seed, list | tuple | np.ndarray):
            if len(seed) != self.num_envs:
                raise ValueError(f"{len(seed)} seeds for {self.num_envs} envs")
            obs, _ = self.envs.reset(seed=[int(s) for s in seed])
            self.envs.action_space.seed(int(seed[0]))
            return obs
        obs, _ = self.envs.reset(seed=seed)
        if seed is not None:
            self.envs.action_space.seed(seed)
        return obs

    def step(self, actions: np.ndarray) -> VecStep:
        """``actions``: [num_envs, H, A] chunks (or [num_envs, A] when H = 1)."""
        actions = np.asarray(actions)
        if self.act_steps == 1 and actions.ndim == 3:  # an unwrapped env takes a single action, not a 1-chunk
            actions = actions[:, 0]
        obs, reward, terminated, truncated, info = self.envs.step(actions)
        terminated, truncated = terminated.astype(bool), truncated.astype(bool)
        env_steps = np.asarray(info.get("chunk_steps", np.ones(self.num_envs)), dtype=np.int64)
        self.total_env_steps += int(env_steps.sum())
        result = VecStep(obs=obs, reward=reward.astype(np.float64), terminated=terminated, truncated=truncated,
                         final_obs=obs, env_steps=env_steps)
        if "success" in info:
            result.success = np.asarray(info["success"], dtype=bool) & np.asarray(info["_success"], dtype=bool)
        ended = terminated | truncated
        if ended.any():
            episode, mask = info["episode"], info["_episode"]
            result.episode_returns = [float(r) for r in episode["r"][mask]]
            result.episode_lengths = [int(n) for n in episode["l"][mask]]
            if "episode_success" in info:
                result.episode_successes = [bool(s) for s in info["episode_success"][mask]]
            result.final_obs = obs.copy()
            reset_obs, _ = self.envs.reset(options={"reset_mask": ended})
            result.obs = np.where(ended.reshape((-1,) + (1,) * (obs.ndim - 1)), reset_obs, obs)
        return result

    def close(self) -> None:
        self.envs.close()

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_vec_env(env_id: str, num_envs: int = 1, act_steps: int = 1, n_obs_steps: int = 1, seed: int | None = None,
                 asynchronous: bool = False, reward_gamma: float = 1.0, options: EnvOptions | dict | None = None,
                 **env_kwargs) -> tuple[VecEnv, np.ndarray]:
    """Build a :class:`VecEnv` and reset it with ``seed``; returns ``(vec_env, first_obs)``."""
    vec = VecEnv(env_id, num_envs, act_steps, n_obs_steps, reward_gamma, asynchronous, options=options, **env_kwargs)
    return vec, vec.reset(seed)
