"""FPO (flow policy optimization): PPO for flow policies without likelihoods.

The policy acts with its deterministic ODE from a fresh x_0 ~ N(0, I) (the flow is stochastic through
x_0), so any sampler works and no chain is stored. For each decision with generated chunk a, ``n_mc``
pairs (τ_i ~ U(0, 1), ε_i ~ N(0, I)) are drawn *at rollout time* and stored with the per-sample
conditional flow-matching loss of the rollout policy,

    ℓ_i(θ) = w(τ_i) · mean_d ( v_θ(τ_i·a + (1 − τ_i)·ε_i, τ_i, s) − (a − ε_i) )²,

a per-dimension mean (so the clip range refers to it), w = 1 (``velocity``) or τ² (``epsilon``: the same
error measured on the implied noise prediction ε̂ = x − τ·v, which FPO found better). The ratio is
``exp(mean_i ℓ_old − mean_i ℓ_θ)`` — lower flow-matching loss on the taken action stands in for higher
likelihood — or, per sample (``per_sample_ratio``, FPO++),
``exp(ℓ_old,i − ℓ_θ,i)`` with the clipped objective averaged over the samples; FPO++'s other change,
``negative_advantages: spo``, replaces the clip by SPO's quadratic penalty where A < 0
(:func:`agents.ppo.asymmetric_surrogate`). PPO-clip uses a small ε
(0.05; FPO reports 0.1 and 0.2 much worse); advantages come from GAE with a critic
(:mod:`agents.buffers`: truncation bootstraps, termination does not). The recomputed losses use exactly
the stored (τ, ε), so the ratio is 1 on the first minibatch of every update — asserted, as in ReinFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from agents.buffers import RolloutBuffer
from agents.ppo import (
    OnPolicyLearner,
    PolicyTerms,
    RunningReturnScale,
    asymmetric_surrogate,
    clipped_surrogate,
    summarize,
    warn_if_rollouts_cut_episodes,
)
from agents.rollout import RolloutConfig, adopt_training_K
from agents.schedules import cosine_factor
from envs.vector import VecEnv
from flowpolicy import draws
from flowpolicy.config import ConfigError, param
from flowpolicy.networks import MLP, Activation
from flowpolicy.policy import Policy


@dataclass
class FPOConfig(RolloutConfig):
    n_mc: int = param(8, "(τ, ε) pairs per decision", ge=1)
    loss_weighting: Literal["epsilon", "velocity"] = param("epsilon", "CFM loss: ε-MSE (τ²-weighted) or velocity MSE")
    per_sample_ratio: bool = param(False, "FPO++: one ratio per (τ, ε) pair")
    negative_advantages: Literal["clip", "spo"] = param(
        "clip", "clip: PPO-clip everywhere; spo: FPO++'s SPO penalty where A < 0, PPO-clip elsewhere")
    gae_lambda: float = param(0.95, "GAE λ", ge=0, le=1)
    update_epochs: int = param(5, "PPO epochs over each rollout", ge=1)
    minibatch_size: int = param(1024, "decisions per minibatch", ge=1)
    clip_range: float = param(0.05, "clip range of the CFM-loss ratio", gt=0)
    actor_lr: float = param(3e-5, "policy learning rate", gt=0)
    critic_lr: float = param(6.5e-4, "critic learning rate", gt=0)
    lr_min_fraction: float = param(0.1, "cosine schedules decay to this fraction of the initial rates", ge=0, le=1)
    max_grad_norm: float = param(1.0, "gradient-norm clip", gt=0)
    target_kl: float | None = param(None, "stop an update's epochs when approx-KL exceeds this (null: never)", gt=0)
    critic_warmup_iterations: int = param(2, "iterations that train only the critic", ge=0)
    critic_hidden: list[int] = param([256, 256, 256], "critic hidden widths", ge=1)
    critic_activation: Activation = param("silu", "critic activation")
    normalize_rewards: bool = param(True, "divide rewards by a running std of the discounted return")
    ratio_check_tol: float = param(1e-5, "max |recomputed − rollout| CFM loss on the first minibatch", gt=0)


class FPOActor:
    """FPO's rollout actor: the ODE's action and its n (τ, ε) pairs with the rollout policy's flow-matching
    losses (the "old" side of FPO's ratio)."""

    def __init__(self, policy: Policy, sampler, K: int, n_mc: int, loss_weighting: str):
        self.policy, self.sampler, self.K, self.n_mc, self.loss_weighting = policy, sampler, K, n_mc, loss_weighting

    def __call__(self, cond, generator):
        actions = self.policy.sample(cond, self.sampler, self.K, generator).actions
        B, D = actions.shape
        taus = draws.rand((B, self.n_mc), generator=generator, device=actions.device)
        noises = draws.randn((B, self.n_mc, D), generator=generator, device=actions.device)
        old_losses = cfm_losses(self.policy, cond, actions, taus, noises, self.loss_weighting)
        return actions, {"chain_xs": actions[:, None], "log_probs": actions.new_zeros(B, 0),
                         "taus": taus, "noises": noises, "old_losses": old_losses}


def cfm_losses(policy: Policy, cond: torch.Tensor, actions: torch.Tensor, taus: torch.Tensor,
               noises: torch.Tensor, weighting: str = "epsilon") -> torch.Tensor:
    """Per-sample conditional flow-matching losses [B, n] of ``actions`` [B, D] at the given τ [B, n] and
    ε [B, n, D] (one batched forward pass over the B·n pairs), each a mean over D."""
    B, n, D = noises.shape
    a = actions[:, None].expand(B, n, D)
    t = taus[..., None]
    x = t * a + (1.0 - t) * noises
    v = policy.model.velocity(x.reshape(B * n, D), taus.reshape(B * n), cond.repeat_interleave(n, dim=0))
    err = (v.reshape(B, n, D) - (a - noises)).square().mean(-1)
    return err * taus.square() if weighting == "epsilon" else err


class FPOLearner(OnPolicyLearner):
    name = "fpo"

    def __init__(self, policy: Policy, env_id: str, config: FPOConfig, total_iterations: int, seed: int = 0,
                 device: str = "cpu", reference: Policy | None = None, env_kwargs: dict | None = None,
                 env_options=None):
        """``reference`` is unused (FPO has no regularizer toward the pretrained policy)."""
        if policy.config.kind != "flow":  # a shortcut model acts with its step-size head, not the velocity ℓ scores
            raise ConfigError(f"FPO fine-tunes flow policies; this policy is {policy.config.kind!r}")
        self.cfg, self.seed, self.device = config, seed, torch.device(device)
        self.total_iterations = total_iterations
        self.policy = policy.to(self.device).train()
        pc = policy.config
        self.K, self.D = adopt_training_K(policy, config.K), pc.chunk_dim
        self.sampler = policy.make_sampler("ode", K=self.K)
        self.critic = MLP(pc.cond_dim, list(config.critic_hidden), 1, act=config.critic_activation).to(self.device)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.envs = VecEnv(env_id, config.num_envs, act_steps=pc.act_steps, n_obs_steps=pc.n_obs_steps,
                           options=env_options, **(env_kwargs or {}))
        self.reward_scale = RunningReturnScale(config.num_envs, config.gamma) if config.normalize_rewards else None
        n = config.n_mc
        self.buffer = RolloutBuffer(config.decisions_per_env, config.num_envs, pc.cond_dim, (1, self.D), self.device,
                                    extra_shapes={"taus": (n,), "noises": (n, self.D), "old_losses": (n,)})
        self.env_steps_per_iteration = config.num_envs * config.decisions_per_env * pc.act_steps
        warn_if_rollouts_cut_episodes(env_id, config.decisions_per_env * pc.act_steps, "algo.decisions_per_env")

    # -- runner interface ---------------------------------------------------------------------------
    def trainable(self) -> tuple[dict, dict]:
        return {"policy": self.policy, "critic": self.critic}, {"actor": self.actor_opt, "critic": self.critic_opt}

    def value(self, cond: torch.Tensor) -> torch.Tensor:
        return self.critic(cond).squeeze(-1)

    # -- rollout -----------------------------------------------------------------------------------
    def collect(self, iteration: int) -> dict:
        c = self.cfg
        factor = cosine_factor(iteration, self.total_iterations, c.lr_min_fraction)
        self.actor_opt.param_groups[0]["lr"] = c.actor_lr * factor
        self.critic_opt.param_groups[0]["lr"] = c.critic_lr * factor

        return self.collect_into_buffer(iteration, FPOActor(self.policy, self.sampler, self.K, c.n_mc,
                                                            c.loss_weighting))

    # -- update ------------------------------------------------------------------------------------
    def _policy_terms(self, mb: dict) -> PolicyTerms:
        """The ratio of flow-matching losses at the stored (τ, ε): per pair, or of their means."""
        losses = cfm_losses(self.policy, mb["cond"], mb["chains"][:, 0], mb["taus"], mb["noises"],
                            self.cfg.loss_weighting)
        log_ratio = mb["old_losses"] - losses  # [B, n]
        if not self.cfg.per_sample_ratio:
            log_ratio = log_ratio.mean(-1, keepdim=True)
        return PolicyTerms(log_ratio=log_ratio, deviation=log_ratio, stats={"cfm_loss": losses.mean().item()})

    def update(self, iteration: int) -> dict:
        surrogate = asymmetric_surrogate if self.cfg.negative_advantages == "spo" else clipped_surrogate
        stats, stop = self.update_from_buffer(iteration, self._policy_terms, list(self.policy.parameters()),
                                              ("logratio_max_dev", "flow-matching losses"), surrogate)
        out = summarize(stats)
        out["charts/actor_lr"] = self.actor_opt.param_groups[0]["lr"]
        out["charts/kl_early_stop"] = float(stop)
        return out
