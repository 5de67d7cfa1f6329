"""Tiny envs for the reliability tests, importable by a subprocess (``tests/`` on PYTHONPATH) so env ids of the
form ``reliability_envs:TinyEnv`` (a class) and ``reliability_envs:ReliabilityTiny-v0`` (registered on import)
can be given to ``python -m flowpolicy.cli``."""

import gymnasium as gym
import numpy as np


class TinyEnv(gym.Env):
    """Observe a point in [−1, 1]³; reward −‖a − obs[:2]‖²; each step ends the episode with probability 0.25,
    so episode lengths vary with the reset seed; ``max_episode_steps`` (TimeLimit) cuts it at 7 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    max_episode_steps = 7

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.state = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return self.state.copy(), {}

    def step(self, action):
        reward = -float(np.sum((np.asarray(action, dtype=np.float64) - self.state[:2]) ** 2))
        self.state = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        terminated = bool(self.np_random.uniform() < 0.25)
        return self.state.copy(), reward, terminated, False, {}


class NaNEnv(TinyEnv):
    """TinyEnv whose third step returns a NaN reward (a broken simulator)."""

    def reset(self, seed=None, options=None):
        self.t = 0
        return super().reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, _, truncated, info = super().step(action)
        self.t += 1
        return obs, float("nan") if self.t == 3 else reward, self.t >= 4, truncated, info


if "ReliabilityTiny-v0" not in gym.registry:
    gym.register("ReliabilityTiny-v0", entry_point="reliability_envs:TinyEnv", max_episode_steps=7)
