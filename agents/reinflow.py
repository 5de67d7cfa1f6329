"""ReinFlow: PPO fine-tuning of a flow policy made stochastic by a learned noise network.

Rollouts sample each action chunk with the ``reinflow`` sampler — every Euler step gets Gaussian noise
σ(t, obs) ∈ [σ_min, σ_max] from :class:`flowpolicy.noise.NoiseNet` — so the whole denoising chain has an
exact likelihood, the sum of K Gaussian step log-densities. PPO then optimizes the clipped surrogate over
that chain likelihood.

**Log-prob reduction (a deliberate choice).** The chain log-prob is summed over K steps and D = H·A
action-chunk dimensions; its PPO ratio exp(Σ Δ) compounds K·D small per-dimension changes, so a tiny
parameter step moves it a lot. We use the *per-dimension mean* ``Σ_k Σ_d log p / (K·D)`` (default,
``logprob_reduction: mean``), whose ratio is the geometric mean of the per-dimension ratios: at the
on-policy point its gradient is the true policy gradient scaled by 1/(K·D), and the clip range then
bounds the average per-dimension change. ReinFlow does the same (divides by (K+1)·H·A); the clip range
of 0.01 is tuned to this scale. ``logprob_reduction: sum`` gives the joint ratio (use a much smaller
step size).

Also here: value loss, noise-entropy bonus (mean log σ), target-KL early stop, gradient clipping, cosine
learning rates, critic warm-up, an optional BC regularizer toward the frozen pretrained policy, and a
σ_max schedule. The ratio == 1 check on the first minibatch of every update is an assertion.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch

from agents.autoscale import require_resolved
from agents.buffers import RolloutBuffer
from agents.ppo import (
    OnPolicyLearner,
    PolicyTerms,
    RunningReturnScale,
    summarize,
    warn_if_rollouts_cut_episodes,
)
from agents.rollout import ChainActor, RolloutConfig, adopt_training_K
from agents.schedules import cosine_factor
from envs.vector import VecEnv
from flowpolicy.config import ConfigError, param, redefault
from flowpolicy.networks import MLP, Activation
from flowpolicy.noise import NoiseNet
from flowpolicy.policy import Policy
from flowpolicy.samplers import gaussian_log_prob


@dataclass
class ReinFlowConfig(RolloutConfig):
    decisions_per_env: int = redefault(RolloutConfig, "decisions_per_env", 256)
    gae_lambda: float = param(0.95, "GAE λ", ge=0, le=1)
    update_epochs: int = param(5, "PPO epochs over each rollout", ge=1)
    minibatch_size: int = param(1024, "decisions per PPO minibatch", ge=1)
    clip_range: float = param(0.01, "PPO clip range of the (per-dimension mean) chain ratio", gt=0)
    logprob_reduction: Literal["mean", "sum"] = param(
        "mean", "chain log-prob: per-dimension mean (ReinFlow's scale) or joint sum (see module docstring)")
    ent_coef: float = param(0.03, "weight of the noise-entropy bonus (mean log σ)", ge=0)
    bc_coef: float = param(0.0, "weight of a BC loss toward the frozen pretrained policy", ge=0)
    actor_lr: float = param(3e-4, "policy learning rate (tuned on Hopper; ReinFlow's 4.5e-5 is far slower on our "
                            "budgets)", gt=0)
    noise_lr: float = param(3e-4, "noise-net learning rate", gt=0)
    critic_lr: float = param(6.5e-4, "critic learning rate", gt=0)
    lr_min_fraction: float = param(0.1, "cosine schedules decay to this fraction of the initial rates", ge=0, le=1)
    max_grad_norm: float = param(1.0, "gradient-norm clip", gt=0)
    target_kl: float | None = param(1.0, "stop an update's epochs when approx-KL exceeds this (null: never)", gt=0)
    critic_warmup_iterations: int = param(2, "iterations that train only the critic", ge=0)
    sigma_min: float | None = param(None, "lower bound of the learned noise std (normalized action units; null: "
                                    "0.4 × sigma_max)", gt=0)
    sigma_max: float | None = param(None, "upper bound of the learned noise std (null: measured at the start — the "
                                    "largest σ at which the BC policy keeps 50% of its score, agents/autoscale.py)",
                                    gt=0)
    sigma_max_end: float | None = param(None, "linear schedule of sigma_max to this value over the run", gt=0)
    noise_hidden: list[int] = param([64, 64], "noise-net hidden widths", ge=1)
    critic_hidden: list[int] = param([256, 256, 256], "critic hidden widths", ge=1)
    critic_activation: Activation = param("silu", "critic activation")
    normalize_rewards: bool = param(True, "divide rewards by a running std of the discounted return")
    ratio_check_tol: float = param(1e-5, "max |recomputed − rollout| step log-prob on the first minibatch", gt=0)

    def __post_init__(self):
        if self.sigma_min is not None and self.sigma_max is not None and self.sigma_min > self.sigma_max:
            raise ConfigError(f"sigma_min ({self.sigma_min}) must be ≤ sigma_max ({self.sigma_max})")


class ReinFlowLearner(OnPolicyLearner):
    name = "reinflow"

    def __init__(self, policy: Policy, env_id: str, config: ReinFlowConfig, total_iterations: int, seed: int = 0,
                 device: str = "cpu", reference: Policy | None = None, env_kwargs: dict | None = None,
                 env_options=None):
        """``reference`` is the frozen pretrained policy for the BC regularizer (default: a copy of
        ``policy``, which is right for a fresh run; a resumed run must pass the pretrained one)."""
        if policy.config.kind not in ("flow", "shortcut"):
            raise ConfigError(f"ReinFlow fine-tunes flow policies; this policy is {policy.config.kind!r}")
        require_resolved(config, "reinflow")
        self.cfg, self.seed, self.device = config, seed, torch.device(device)
        self.total_iterations = total_iterations
        self.policy = policy.to(self.device).train()
        pc = policy.config
        self.K = adopt_training_K(policy, config.K)
        self.D = pc.chunk_dim
        self.noise = NoiseNet(pc.chunk_dim, pc.cond_dim, config.sigma_min, config.sigma_max,
                              hidden=tuple(config.noise_hidden)).to(self.device)
        self.critic = MLP(pc.cond_dim, list(config.critic_hidden), 1, act=config.critic_activation).to(self.device)
        self.reference = None
        if config.bc_coef > 0:
            self.reference = copy.deepcopy(reference or policy).to(self.device).eval().requires_grad_(False)
        self.sampler = policy.make_sampler("reinflow", K=self.K, noise_fn=self.noise)
        self.actor_opt = torch.optim.Adam([{"params": self.policy.parameters(), "lr": config.actor_lr},
                                           {"params": self.noise.parameters(), "lr": config.noise_lr}])
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.envs = VecEnv(env_id, config.num_envs, act_steps=pc.act_steps, n_obs_steps=pc.n_obs_steps,
                           options=env_options, **(env_kwargs or {}))
        self.reward_scale = RunningReturnScale(config.num_envs, config.gamma) if config.normalize_rewards else None
        self.buffer = RolloutBuffer(config.decisions_per_env, config.num_envs, pc.cond_dim, (self.K + 1, self.D),
                                    self.device)
        self.env_steps_per_iteration = config.num_envs * config.decisions_per_env * pc.act_steps
        warn_if_rollouts_cut_episodes(env_id, config.decisions_per_env * pc.act_steps, "algo.decisions_per_env")

    # -- runner interface ---------------------------------------------------------------------------
    def trainable(self) -> tuple[dict, dict]:
        return ({"policy": self.policy, "noise": self.noise, "critic": self.critic},
                {"actor": self.actor_opt, "critic": self.critic_opt})

    def value(self, cond: torch.Tensor) -> torch.Tensor:
        return self.critic(cond).squeeze(-1)

    # -- schedules --------------------------------------------------------------------------------
    def _schedule(self, iteration: int) -> None:
        c = self.cfg
        progress = iteration / max(1, self.total_iterations - 1)
        factor = cosine_factor(iteration, self.total_iterations, c.lr_min_fraction)
        self.actor_opt.param_groups[0]["lr"] = c.actor_lr * factor
        self.actor_opt.param_groups[1]["lr"] = c.noise_lr * factor
        self.critic_opt.param_groups[0]["lr"] = c.critic_lr * factor
        if c.sigma_max_end is not None:
            self.noise.set_bounds(c.sigma_min, c.sigma_max + (c.sigma_max_end - c.sigma_max) * progress)

    # -- rollout ----------------------------------------------------------------------------------
    def collect(self, iteration: int) -> dict:
        self._schedule(iteration)
        return self.collect_into_buffer(iteration, ChainActor(self.policy, self.sampler, self.K))

    # -- update -----------------------------------------------------------------------------------
    def _reduce(self, step_log_probs: torch.Tensor) -> torch.Tensor:
        total = step_log_probs.sum(-1)
        return total / (self.K * self.D) if self.cfg.logprob_reduction == "mean" else total

    def _policy_terms(self, mb: dict) -> PolicyTerms:
        """The chain's likelihood ratio, the noise-entropy bonus and the BC regularizer."""
        c = self.cfg
        x_next, mean, std = self.sampler.step_distributions(self.policy.model.model_fn(self.K), mb["cond"],
                                                            mb["chains"], self.K)
        step_log_probs = gaussian_log_prob(x_next, mean, std).reshape(-1, self.K)
        entropy = std.log().mean()  # Gaussian entropy per dimension, up to a constant
        terms = PolicyTerms(log_ratio=self._reduce(step_log_probs) - self._reduce(mb["log_probs"]),
                            deviation=step_log_probs - mb["log_probs"], extra_losses=[-(c.ent_coef * entropy)],
                            stats={"entropy": entropy.item()})
        if self.reference is not None:
            with torch.no_grad():
                target = self.reference.sample(mb["cond"], K=self.K, generator=self.generator).actions
            bc_loss = self.policy.bc_loss(mb["cond"], target, generator=self.generator)
            terms.extra_losses.append(c.bc_coef * bc_loss)
            terms.stats["bc_loss"] = bc_loss.item()
        return terms

    def update(self, iteration: int) -> dict:
        params = list(self.policy.parameters()) + list(self.noise.parameters())
        stats, stop = self.update_from_buffer(iteration, self._policy_terms, params,
                                              ("logprob_max_dev", "chain log-probs"))
        values, returns = self.buffer.values.flatten(), self.buffer.returns.flatten()
        explained = 1 - (returns - values).var() / (returns.var() + 1e-8)
        out = summarize(stats)
        out["losses/explained_variance"] = explained.item()
        if stats["entropy"]:
            out["charts/noise_std"] = math.exp(stats["entropy"][-1])
        out["charts/actor_lr"] = self.actor_opt.param_groups[0]["lr"]
        out["charts/kl_early_stop"] = float(stop)
        return out
