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

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from agents.buffers import RolloutBuffer
from agents.ppo import (
    OnPolicyLearner,
    RunningReturnScale,
    asymmetric_surrogate,
    check_ratio_is_one,
    clipped_surrogate,
    value_regression_step,
    warn_if_rollouts_cut_episodes,
)
from agents.rollout import adopt_training_K
from agents.schedules import cosine_factor
from envs.vector import VecEnv
from flowpolicy.networks import MLP
from flowpolicy.policy import Policy


@dataclass
class FPOConfig:
    num_envs: int = 16
    num_steps: int = 256  # decisions per env per iteration
    K: int | None = None  # ODE steps for acting (default: the policy's)
    n_mc: int = 8  # (τ, ε) pairs per decision
    loss_weighting: str = "epsilon"  # epsilon (τ²-weighted) | velocity
    per_sample_ratio: bool = False  # FPO++: one ratio per (τ, ε) pair
    negative_advantages: str = "clip"  # clip (PPO) | spo (FPO++: SPO's penalty where A < 0, PPO-clip elsewhere)
    gamma: float = 0.99  # per decision
    gae_lambda: float = 0.95
    update_epochs: int = 5
    minibatch_size: int = 1024
    clip_range: float = 0.05
    actor_lr: float = 3e-5
    critic_lr: float = 6.5e-4
    lr_min_fraction: float = 0.1
    max_grad_norm: float = 1.0
    target_kl: float | None = None
    critic_warmup_iterations: int = 2
    critic_hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    critic_activation: str = "silu"
    normalize_rewards: bool = True
    ratio_check_tol: float = 1e-5


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
                 device: str = "cpu", reference: Policy | None = None):
        """``reference`` is unused (FPO has no regularizer toward the pretrained policy)."""
        if policy.config.kind != "flow":  # a shortcut model acts with its step-size head, not the velocity ℓ scores
            raise ValueError(f"FPO fine-tunes flow policies; this policy is {policy.config.kind!r}")
        if config.loss_weighting not in ("epsilon", "velocity"):
            raise ValueError(f"loss_weighting must be 'epsilon' or 'velocity', got {config.loss_weighting!r}")
        if config.negative_advantages not in ("clip", "spo"):
            raise ValueError(f"negative_advantages must be 'clip' or 'spo', got {config.negative_advantages!r}")
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
        self.envs = VecEnv(env_id, config.num_envs, horizon=pc.act_steps, n_obs_steps=pc.n_obs_steps)
        self.reward_scale = RunningReturnScale(config.num_envs, config.gamma) if config.normalize_rewards else None
        n = config.n_mc
        self.buffer = RolloutBuffer(config.num_steps, config.num_envs, pc.cond_dim, (1, self.D), self.device,
                                    extra_shapes={"taus": (n,), "noises": (n, self.D), "old_losses": (n,)})
        self.env_steps_per_iteration = config.num_envs * config.num_steps * pc.act_steps
        warn_if_rollouts_cut_episodes(env_id, config.num_steps * pc.act_steps, "algo.num_steps")

    # -- runner interface ---------------------------------------------------------------------------
    def trainable(self) -> tuple[dict, dict]:
        return {"policy": self.policy, "critic": self.critic}, {"actor": self.actor_opt, "critic": self.critic_opt}

    def value(self, cond: torch.Tensor) -> torch.Tensor:
        return self.critic(cond).squeeze(-1)

    # -- rollout -----------------------------------------------------------------------------------
    @torch.no_grad()
    def collect(self, iteration: int) -> dict:
        c = self.cfg
        factor = cosine_factor(iteration, self.total_iterations, c.lr_min_fraction)
        self.actor_opt.param_groups[0]["lr"] = c.actor_lr * factor
        self.critic_opt.param_groups[0]["lr"] = c.critic_lr * factor
        obs = self.envs.reset(seed=self.seed * 1_000_003 + iteration * c.num_envs)
        if self.reward_scale:
            self.reward_scale.returns[:] = 0.0  # episodes restart at every iteration
        self.buffer.reset()
        act_steps = self.policy.config.act_steps
        returns, lengths, env_steps, env_seconds = [], [], 0, 0.0
        while not self.buffer.full:
            cond = self.policy.condition(torch.as_tensor(obs, dtype=torch.float32, device=self.device))
            actions = self.policy.sample(cond, self.sampler, self.K, self.generator).actions
            taus = torch.rand(c.num_envs, c.n_mc, generator=self.generator, device=self.device)
            noises = torch.randn(c.num_envs, c.n_mc, self.D, generator=self.generator, device=self.device)
            old_losses = cfm_losses(self.policy, cond, actions, taus, noises, c.loss_weighting)
            tick = time.perf_counter()
            out = self.envs.step(self.policy.env_actions(actions)[:, :act_steps].cpu().numpy())
            env_seconds += time.perf_counter() - tick
            rewards = self.reward_scale(out.reward, out.done) if self.reward_scale else out.reward
            next_cond = self.policy.condition(torch.as_tensor(out.final_obs, dtype=torch.float32, device=self.device))
            truncated = out.truncated | (self.buffer.step == self.buffer.T - 1)  # the iteration cuts the episode
            self.buffer.add(cond, actions[:, None], torch.zeros(c.num_envs, 0, device=self.device), self.value(cond),
                            rewards, out.terminated, truncated, next_cond, taus=taus, noises=noises,
                            old_losses=old_losses)
            returns += out.episode_returns
            lengths += out.episode_lengths
            env_steps += int(out.env_steps.sum())
            obs = out.obs
        self.buffer.finish(self.value, c.gamma, c.gae_lambda)
        return {"env_steps": env_steps, "episode_returns": returns, "episode_lengths": lengths, "env_s": env_seconds}

    # -- update ------------------------------------------------------------------------------------
    def update(self, iteration: int) -> dict:
        c = self.cfg
        actor_active = iteration >= c.critic_warmup_iterations
        stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "approx_kl", "clipfrac",
                                                         "cfm_loss", "logratio_max_dev")}
        adv_all = self.buffer.advantages
        self.buffer.advantages = (adv_all - adv_all.mean()) / (adv_all.std() + 1e-8)
        first, stop = True, False
        for _epoch in range(c.update_epochs):
            for mb in self.buffer.minibatches(c.minibatch_size, self.generator):
                stats["value_loss"].append(value_regression_step(self.value, self.critic, self.critic_opt, mb["cond"],
                                                                 mb["returns"], c.max_grad_norm))
                if not actor_active:
                    continue
                losses = cfm_losses(self.policy, mb["cond"], mb["chains"][:, 0], mb["taus"], mb["noises"],
                                    c.loss_weighting)
                log_ratio = mb["old_losses"] - losses  # [B, n]
                if not c.per_sample_ratio:
                    log_ratio = log_ratio.mean(-1, keepdim=True)
                if first:  # θ = θ_old and the stored (τ, ε): the ratio must be exactly 1
                    stats["logratio_max_dev"].append(check_ratio_is_one(
                        log_ratio, c.ratio_check_tol, iteration, "flow-matching losses"))
                    first = False
                ratio = log_ratio.exp()
                adv = mb["advantages"][:, None]
                surrogate = asymmetric_surrogate if c.negative_advantages == "spo" else clipped_surrogate
                policy_loss = surrogate(ratio, adv, c.clip_range)
                self.actor_opt.zero_grad(set_to_none=True)
                policy_loss.backward()
                nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                self.actor_opt.step()
                with torch.no_grad():
                    approx_kl = ((ratio - 1) - log_ratio).mean().item()
                stats["policy_loss"].append(policy_loss.item())
                stats["cfm_loss"].append(losses.mean().item())
                stats["approx_kl"].append(approx_kl)
                stats["clipfrac"].append(((ratio - 1).abs() > c.clip_range).float().mean().item())
                if c.target_kl is not None and approx_kl > c.target_kl:
                    stop = True
                    break
            if stop:
                break
        out = {f"losses/{k}": float(np.mean(v)) for k, v in stats.items() if v and k != "clipfrac"}
        if stats["clipfrac"]:
            out["charts/clipfrac"] = float(np.mean(stats["clipfrac"]))
        out["charts/actor_lr"] = self.actor_opt.param_groups[0]["lr"]
        out["charts/kl_early_stop"] = float(stop)
        return out
