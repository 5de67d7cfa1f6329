"""Pieces shared by the PPO-style learners (ReinFlow, FPO, DDPO_IS / Flow-GRPO / Flow-CPS): the clipped
surrogate, the on-policy ratio check, the critic's regression step, reward scaling by the running std of
the discounted return, and :class:`OnPolicyLearner`, their common side of the runner interface."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import torch


class RatioCheckError(AssertionError):
    """PPO's ratio was not 1 on the first minibatch: rollout and recomputation disagree."""


def check_ratio_is_one(log_ratio: torch.Tensor, tol: float, iteration: int, what: str) -> float:
    """On the first minibatch of an update θ = θ_old, so every recomputed log-ratio must be 0: raise
    :class:`RatioCheckError` naming the iteration when one exceeds ``tol``; returns the largest deviation."""
    deviation = log_ratio.abs().max().item()
    if not deviation <= tol:  # a NaN deviation fails too
        raise RatioCheckError(f"recomputed {what} deviate from the rollout's by {deviation:.2e} on the first "
                              f"minibatch of iteration {iteration} (PPO ratio != 1)")
    return deviation


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's pessimistic clipped objective, as a loss: mean of max(−A·r, −A·clip(r, 1 ± ε))."""
    return torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()


def value_regression_step(value_fn, critic: torch.nn.Module, optimizer: torch.optim.Optimizer, cond: torch.Tensor,
                          returns: torch.Tensor, max_grad_norm: float) -> float:
    """One critic step of ½·(V(s) − return)² on a minibatch (``value_fn(cond)`` → [B]), gradient norm clipped.
    Returns the loss."""
    value_loss = 0.5 * (value_fn(cond) - returns).square().mean()
    optimizer.zero_grad(set_to_none=True)
    value_loss.backward()
    torch.nn.utils.clip_grad_norm_(critic.parameters(), max_grad_norm)
    optimizer.step()
    return value_loss.item()


def asymmetric_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO-clip where A ≥ 0 and, where A < 0, SPO's objective −(A·r − |A|/(2ε)·(r − 1)²) (FPO++'s
    asymmetric trust region). Both have PPO's gradient at r = 1; outside [1 − ε, 1 + ε] the clip only
    stops pushing, while SPO's penalty pulls r back toward its optimum 1 + ε·sign(A) — the restoring
    force a likelihood surrogate needs when shared parameters keep moving a clipped sample further."""
    advantages = advantages.expand_as(ratio)
    clip = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range))
    spo = -(advantages * ratio - advantages.abs() / (2 * clip_range) * (ratio - 1).square())
    return torch.where(advantages >= 0, clip, spo).mean()


def warn_if_rollouts_cut_episodes(env_id: str, env_steps_per_env: int, setting: str) -> bool:
    """Every iteration resets its envs, so a rollout shorter than the task's time limit never reaches the
    late part of an episode (the cut is a truncation GAE bootstraps, but those states are never trained on).
    Warns, naming the setting to raise; returns whether it warned."""
    limit = gym.spec(env_id).max_episode_steps
    if limit is None or env_steps_per_env >= limit:
        return False
    warnings.warn(f"{env_id}: each iteration runs {env_steps_per_env} env steps per env but an episode may last "
                  f"{limit}: states after step {env_steps_per_env} are never visited (raise {setting})", stacklevel=3)
    return True


class RunningReturnScale:
    """Reward scaling by the running std of the per-env discounted return (as gymnasium's NormalizeReward)."""

    def __init__(self, num_envs: int, gamma: float):
        self.gamma = gamma
        self.returns = np.zeros(num_envs)
        self.count, self.mean, self.var = 1e-4, 0.0, 1.0

    def __call__(self, rewards: np.ndarray, done: np.ndarray, active: np.ndarray | None = None) -> np.ndarray:
        """Scaled rewards of one step of every env. ``active`` (bool [N]) marks the envs whose step belongs
        to an episode; the others (envs that keep stepping until their group finishes) stay out of the
        statistics."""
        self.returns = self.returns * self.gamma + rewards
        tracked = self.returns if active is None else self.returns[active]
        if len(tracked):
            batch_mean, batch_var, n = tracked.mean(), tracked.var(), len(tracked)
            delta, total = batch_mean - self.mean, self.count + n
            self.mean += delta * n / total
            self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
            self.count = total
        self.returns[done] = 0.0
        return rewards / math.sqrt(self.var + 1e-8)

    def state(self) -> dict:
        return {"returns": self.returns.tolist(), "count": self.count, "mean": self.mean, "var": self.var}

    def load(self, state: dict) -> None:
        self.returns = np.asarray(state["returns"], dtype=np.float64)
        self.count, self.mean, self.var = state["count"], state["mean"], state["var"]


class OnPolicyLearner:
    """The runner interface (agents.runner.Learner) as every on-policy learner implements it: the policy
    being trained is the one evaluated and saved, the per-iteration rollout is not worth saving (nothing
    variable-size), and the running reward scale, when there is one, travels in the training state so a
    resumed run scales rewards exactly as an uninterrupted one. A subclass sets ``policy``,
    ``reward_scale`` (or None) and ``generator`` and names its modules and optimizers."""

    policy: torch.nn.Module
    reward_scale: RunningReturnScale | None
    generator: torch.Generator

    def trainable(self) -> tuple[dict, dict]:
        """``(modules, optimizers)`` by name: what a checkpoint saves besides the generator."""
        raise NotImplementedError

    def eval_policy(self):
        return self.policy

    def training_state(self):
        modules, optimizers = self.trainable()
        extra = {"reward_scale": self.reward_scale.state() if self.reward_scale else None}
        return modules, optimizers, {"learner": self.generator}, extra

    def training_arrays(self) -> dict:
        return {}

    def load_extra(self, extra: dict, arrays: dict) -> None:
        if self.reward_scale and extra.get("reward_scale"):
            self.reward_scale.load(extra["reward_scale"])
