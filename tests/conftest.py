"""Shared test fixtures: analytic references for the sampler tests and a tiny task for the learners.

For Gaussian action data a ~ N(m, s²) (per dimension, independent of the observation) the optimal
flow velocity and the optimal ε-prediction are known in closed form, so samplers can be checked
against the data distribution without training anything.
"""

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from flowpolicy import save_policy
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig

torch.set_num_threads(1)


def gaussian_velocity(m: torch.Tensor, s: torch.Tensor):
    """v*(x, t) = E[a − ε | x_t = x] for x_t = t·a + (1 − t)·ε, a ~ N(m, s²), ε ~ N(0, 1)."""

    def v(x, t, obs):
        t = t[:, None].double()
        gain = (t * s**2 - (1 - t)) / (t**2 * s**2 + (1 - t) ** 2)
        return (m + gain * (x.double() - t * m)).to(x.dtype)

    return v


def gaussian_epsilon(m: torch.Tensor, s: torch.Tensor, alphas_cumprod_fn):
    """ε*(x, t) = E[ε | x] for x = sqrt(ᾱ)·a + sqrt(1 − ᾱ)·ε with ᾱ = alphas_cumprod_fn(t)."""

    def eps(x, t, obs):
        alpha = alphas_cumprod_fn(t.double())[:, None]
        gain = (1 - alpha).sqrt() / (alpha * s**2 + 1 - alpha)
        return (gain * (x.double() - alpha.sqrt() * m)).to(x.dtype)

    return eps


def point_mass_velocity(c: torch.Tensor):
    """Optimal velocity when all data sit at c: v = (c − x)/(1 − t)."""

    def v(x, t, obs):
        return (c - x) / (1 - t[:, None])

    return v


@pytest.fixture
def toy_model_fn():
    """A fixed nonlinear, observation-dependent stand-in for a network: v(x, t, obs)."""
    gen = torch.Generator().manual_seed(123)
    D, O = 3, 2
    W = torch.randn(D, D, generator=gen) * 0.5
    C = torch.randn(O, D, generator=gen)
    b = torch.randn(D, generator=gen)

    def v(x, t, obs):
        return torch.tanh(x @ W + obs @ C + t[:, None] * b) + 0.3 * x

    v.D, v.O = D, O
    return v


# -- a tiny task on which RL must improve ---------------------------------------------------------

class ReachEnv(gym.Env):
    """Contextual reaching: observe a target in [−0.8, 0.8]², reward −‖a − target‖²; 8 steps per episode."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.target = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        return self.target.copy(), {}

    def step(self, action):
        reward = -float(np.sum((np.asarray(action) - self.target) ** 2))
        self.target = self.np_random.uniform(-0.8, 0.8, 2).astype(np.float32)
        return self.target.copy(), reward, False, False, {}


gym.register("ReachTest-v0", entry_point=ReachEnv, max_episode_steps=8)


class CounterEnv(gym.Env):
    """Observation = the step index, reward 1; terminates after ``length`` steps, never when ``length`` is None
    (registered with a TimeLimit, it is SB3's InfiniteHorizonEnv: every episode end is a truncation)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, length: int | None = None):
        self.length = length

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.length is not None and self.t >= self.length
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


@pytest.fixture(scope="module")
def reach_policy(tmp_path_factory):
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(obs_dim=2, action_dim=2, horizon=1, num_steps=2,
                                 network=NetworkConfig(hidden=[32, 32])))
    return save_policy(policy, tmp_path_factory.mktemp("reach"), metadata={"env_id": "ReachTest-v0"})


def full_and_resumed_runs(make_config, learner_cls, tmp_path, monkeypatch, crash_at: int = 2):
    """Summaries of a run to completion and of the same run interrupted (KeyboardInterrupt in
    ``learner_cls.update`` at iteration ``crash_at``) then continued with ``--resume`` semantics.
    ``make_config(out_dir)`` builds the FinetuneConfig."""
    from agents.finetune import finetune

    full = finetune(make_config(tmp_path / "full"))
    original = learner_cls.update

    def crash(self, iteration):
        if iteration == crash_at:
            raise KeyboardInterrupt
        return original(self, iteration)

    monkeypatch.setattr(learner_cls, "update", crash)
    with pytest.raises(KeyboardInterrupt):
        finetune(make_config(tmp_path / "resumed"))
    monkeypatch.setattr(learner_cls, "update", original)
    return full, finetune(make_config(tmp_path / "resumed"), resume=True)


@pytest.fixture
def run_cli():
    """``run_cli(*args) -> stdout`` of ``python -m flowpolicy.cli ARGS`` in the repository, asserting it succeeds
    (an end-to-end command as a user types it, in its own process)."""
    repo = Path(__file__).resolve().parents[1]

    def run(*args):
        proc = subprocess.run([sys.executable, "-m", "flowpolicy.cli", *map(str, args)], cwd=repo,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    return run
