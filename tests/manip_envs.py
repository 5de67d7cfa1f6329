"""Tiny manipulation-like envs for the env-layer tests, importable by a subprocess (``tests/`` on PYTHONPATH):
``manip_envs:ScriptedSuccessEnv`` (a class), ``manip_envs:ManipTiny-v0`` (registered on import) and
``manip_envs:with_own_episode_stats`` (a factory that wraps its env in RecordEpisodeStatistics, as Meta-World's
``gym.make`` does)."""

import gymnasium as gym
import numpy as np


class ScriptedSuccessEnv(gym.Env):
    """A goal-env-shaped Dict observation (keys given out of order on purpose; gymnasium sorts them) with a
    success flag in ``info[success_key]`` that is true only at step ``success_at`` (1-based; None: never,
    with the key still reported); ``success_key=None`` reports no success at all. The episode truncates
    itself after ``horizon`` steps; reward −‖a‖²."""

    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    max_episode_steps = None

    def __init__(self, success_at: int | None = 3, success_key: str | None = "is_success", horizon: int = 6):
        self.success_at, self.success_key, self.horizon = success_at, success_key, horizon
        self.observation_space = gym.spaces.Dict({
            "observation": gym.spaces.Box(-np.inf, np.inf, (4,), np.float64),
            "desired_goal": gym.spaces.Box(-1.0, 1.0, (2,), np.float64),
            "achieved_goal": gym.spaces.Box(-1.0, 1.0, (3,), np.float64),
        })

    def _obs(self):
        return {"observation": np.full(4, float(self.t)), "desired_goal": self.goal.copy(),
                "achieved_goal": np.array([self.t / 10, -self.t / 10, 0.5])}

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.goal = 0, self.np_random.uniform(-1, 1, 2)
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        info = {} if self.success_key is None else {self.success_key: float(self.t == self.success_at)}
        reward = -float(np.sum(np.square(action)))
        return self._obs(), reward, False, self.t >= self.horizon, info


def with_own_episode_stats(**kwargs):
    return gym.wrappers.RecordEpisodeStatistics(ScriptedSuccessEnv(**kwargs))


if "ManipTiny-v0" not in gym.registry:
    gym.register("ManipTiny-v0", entry_point=ScriptedSuccessEnv)
