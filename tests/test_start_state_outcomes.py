"""benchmarks/start_state_outcomes.py: repeats from one reset seed differ only in their exploration noise, so a
task whose outcome the noise decides shows mixed outcomes, and one whose start decides shows none."""
import json
import sys

import gymnasium as gym
import numpy as np
import torch

from flowpolicy.checkpoint import save_policy
from flowpolicy.policy import NetworkConfig, Policy, PolicyConfig


class CoinFlipEnv(gym.Env):
    """One step: success iff the action's first coordinate has the sign the start state asks for."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.sign = 1.0 if seed is None or seed % 2 == 0 else -1.0
        return np.array([self.sign], np.float32), {}

    def step(self, action):
        success = bool(np.sign(action[0]) == self.sign)
        return np.array([self.sign], np.float32), float(success), True, False, {"is_success": success}


gym.register("CoinFlipTest-v0", entry_point=CoinFlipEnv, max_episode_steps=1)


def run(tmp_path, monkeypatch, sigma: float) -> dict:
    import benchmarks.start_state_outcomes as script

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(obs_dim=1, action_dim=1, horizon=1, num_steps=2, network=NetworkConfig(hidden=[8])))
    path = save_policy(policy, tmp_path / f"p{sigma}", metadata={"env_id": "CoinFlipTest-v0"})
    out = tmp_path / f"outcomes{sigma}.json"
    monkeypatch.setattr(sys, "argv", ["start_state_outcomes.py", "--policy", str(path), "--seeds", "6",
                                      "--repeats", "6", "--sigma", str(sigma), "--out", str(out)])
    script.main()
    return json.loads(out.read_text())


def test_noise_that_decides_the_outcome_shows_in_the_repeats(tmp_path, monkeypatch):
    noisy = run(tmp_path, monkeypatch, sigma=3.0)  # the chain's noise swamps the policy: a coin flip per repeat
    mixed = [row for row in noisy["outcomes"].values() if len(set(row)) == 2]
    assert len(mixed) >= 3, noisy["outcomes"]
    assert noisy["decided_by_start_state"] == 6 - len(mixed)
