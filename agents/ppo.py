"""Pieces shared by the PPO-style learners (ReinFlow, FPO, DDPO_IS / Flow-GRPO / Flow-CPS): the clipped
surrogate, the on-policy ratio check, the critic's regression step, reward scaling by the running std of
the discounted return, :func:`ppo_epochs` (the update loop around a learner's likelihood ratio), and
:class:`OnPolicyLearner`, their common side of the runner interface (with the buffer-filling rollout of the
learners that have one)."""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from agents.rollout import Actor, Rollout, iteration_seed


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


def minibatch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device
                      ) -> Iterator[torch.Tensor]:
    """Row indices of shuffled minibatches over ``n`` rows (one permutation per call; the last may be smaller)."""
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


@dataclass
class PolicyTerms:
    """What a learner contributes to a PPO minibatch step. ``log_ratio``: log π_θ/π_old as the ratio uses it
    (shape [B] or [B, m]: one ratio per row or m per row, each with the row's advantage); ``deviation``:
    recomputed − rollout log-likelihoods, which must be 0 on the first minibatch; ``extra_losses``: terms
    added, in order, to the surrogate (entropy bonus, regularizers); ``stats``: scalars to average."""

    log_ratio: torch.Tensor
    deviation: torch.Tensor
    extra_losses: list[torch.Tensor] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def ppo_epochs(cfg, iteration: int, batch: dict[str, torch.Tensor], policy_terms: Callable[[dict], PolicyTerms],
               optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], generator: torch.Generator,
               check: tuple[str, str], surrogate=clipped_surrogate, critic_step: Callable[[dict], float] | None = None,
               train_actor: bool = True) -> tuple[dict[str, list[float]], bool]:
    """PPO's update: ``cfg.update_epochs`` passes over ``batch`` (flat tensors of equal length, with
    ``advantages``) in shuffled minibatches of ``cfg.minibatch_size``; per minibatch, the critic's step
    (``critic_step(mb)`` → its loss, when given), then — with ``train_actor`` — the learner's
    ``policy_terms(mb)``, the ratio check on the first minibatch (``check`` = (stat name, what deviates)),
    ``surrogate(ratio, advantages, cfg.clip_range)`` plus the extra losses, one clipped optimizer step, and
    approx-KL (k3) and clip fraction; stops once approx-KL exceeds ``cfg.target_kl`` (when the config has
    one). Returns the per-minibatch statistics and whether the KL stop fired."""
    stats: dict[str, list[float]] = defaultdict(list)
    first, target_kl = True, getattr(cfg, "target_kl", None)
    n = len(batch["advantages"])
    for _epoch in range(cfg.update_epochs):
        for idx in minibatch_indices(n, cfg.minibatch_size, generator, batch["advantages"].device):
            mb = {key: value[idx] for key, value in batch.items()}
            if critic_step is not None:
                stats["value_loss"].append(critic_step(mb))
            if not train_actor:
                continue
            terms = policy_terms(mb)
            if first:  # θ = θ_old here: the recomputed likelihoods must be the rollout's
                stats[check[0]].append(check_ratio_is_one(terms.deviation, cfg.ratio_check_tol, iteration, check[1]))
                first = False
            ratio = terms.log_ratio.exp()
            advantages = mb["advantages"].reshape(-1, *(1,) * (ratio.dim() - 1))
            policy_loss = surrogate(ratio, advantages, cfg.clip_range)
            loss = policy_loss
            for extra in terms.extra_losses:
                loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - terms.log_ratio).mean().item()
            stats["policy_loss"].append(policy_loss.item())
            stats["approx_kl"].append(approx_kl)
            stats["clipfrac"].append(((ratio - 1).abs() > cfg.clip_range).float().mean().item())
            for key, value in terms.stats.items():
                stats[key].append(value)
            if target_kl is not None and approx_kl > target_kl:
                return stats, True
    return stats, False


def summarize(stats: dict[str, list[float]]) -> dict[str, float]:
    """Per-update means under CleanRL's names: ``losses/<name>``, and ``charts/clipfrac``."""
    out = {f"losses/{k}": float(np.mean(v)) for k, v in stats.items() if v and k != "clipfrac"}
    if stats.get("clipfrac"):
        out["charts/clipfrac"] = float(np.mean(stats["clipfrac"]))
    return out


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
    try:  # a module:EnvId id is registered as EnvId (its module was imported when the envs were made)
        limit = gym.spec(env_id.rpartition(":")[2]).max_episode_steps
    except gym.error.Error:  # a module:Class id: no registered spec to read
        return False
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
    ``reward_scale`` (or None) and ``generator`` and names its modules and optimizers; one with a rollout
    buffer and a critic (``cfg``, ``seed``, ``envs``, ``buffer``, ``value``, ``critic``, ``critic_opt``,
    ``actor_opt``) collects with :meth:`collect_into_buffer` and updates with :meth:`update_from_buffer`, so
    that it only says how it acts and what its likelihood ratio is."""

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

    # -- the rollout of the learners with a rollout buffer and a critic (ReinFlow, FPO) ---------------
    @torch.no_grad()
    def collect_into_buffer(self, iteration: int, act: Actor) -> dict:
        """Fill ``self.buffer`` with ``cfg.decisions_per_env`` decisions of every env in ``self.envs``, then GAE with
        ``self.value``. ``act(cond, generator) -> (actions, fields)``: the normalized actions and the decision's buffer
        fields (``chain_xs``, ``log_probs`` and the extras). Rewards are scaled when the learner has a
        ``reward_scale``; the last decision is cut by the iteration boundary and bootstrapped like a
        truncation. Returns the runner's rollout metrics."""
        cfg = self.cfg
        if self.reward_scale:
            self.reward_scale.returns[:] = 0.0  # episodes restart at every iteration
        self.buffer.reset()
        rollout = Rollout(self.policy, self.envs)
        for step in rollout.decisions(iteration_seed(self.seed, iteration, cfg.num_envs), act, cfg.decisions_per_env,
                                      self.generator):
            out = step.out
            rewards = self.reward_scale(out.reward, out.done) if self.reward_scale else out.reward
            self.buffer.add(cond=step.cond, values=self.value(step.cond), rewards=rewards, terminated=out.terminated,
                            truncated=out.truncated | (step.t == cfg.decisions_per_env - 1), next_cond=step.next_cond,
                            **step.record)
        self.buffer.finish(self.value, cfg.gamma, cfg.gae_lambda)
        return rollout.metrics()

    def critic_step(self, mb: dict) -> float:
        return value_regression_step(self.value, self.critic, self.critic_opt, mb["cond"], mb["returns"],
                                     self.cfg.max_grad_norm)

    def update_from_buffer(self, iteration: int, policy_terms: Callable[[dict], PolicyTerms],
                           params: list[torch.nn.Parameter], check: tuple[str, str], surrogate=clipped_surrogate
                           ) -> tuple[dict[str, list[float]], bool]:
        """:func:`ppo_epochs` over ``self.buffer`` with the critic's step in every minibatch; the actor trains
        once ``cfg.critic_warmup_iterations`` have passed."""
        # normalize advantages once over the whole rollout (a per-minibatch std is undefined for one row)
        advantages = self.buffer.advantages
        self.buffer.advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return ppo_epochs(self.cfg, iteration, self.buffer.flat(), policy_terms, self.actor_opt, params,
                          self.generator, check, surrogate, critic_step=self.critic_step,
                          train_actor=iteration >= self.cfg.critic_warmup_iterations)
