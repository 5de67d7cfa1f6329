"""Policy gradients through the stochastic denoising chain: DDPO (SF and IS), Flow-GRPO and Flow-CPS.

Adapted from image generation to action chunks; one learner, configured per method:

| method | policy | sampler | estimator |
|---|---|---|---|
| DDPO_SF (``ddpo_sf``) | diffusion (ε) | ``ddim`` η = 1 | ``reinforce``: −A·log p_k, one step per batch |
| DDPO_IS (``ddpo_is``) | diffusion (ε) | ``ddim`` η = 1 | ``ppo``: clipped per-step importance ratios, epochs |
| Flow-GRPO (``grpo``) | flow | ``flow_sde`` (a) | ``ppo`` |
| Flow-CPS (``cps``) | flow | ``cps`` (η) | ``ppo`` |

Each iteration starts ``num_groups`` groups of ``group_size`` envs; the members of a group are reset with
the *same* seed, so they start from the same state (the papers' "same prompt"). Every env runs one
episode (up to ``max_decisions``), sampling each chunk with the method's sampler, whose chains carry exact
per-step Gaussian log-probs. There is no critic: an episode's return R becomes the advantage
``(R − mean)/(std + 1e-4)`` over its group (``advantages: group``, GRPO and DDPO's per-prompt
normalization) or over the whole batch (``batch``), clipped to ±``adv_clip`` and broadcast to every
decision of the episode. ``advantages: gae`` replaces them with per-decision GAE from a learned value
V(s) (the one :func:`agents.buffers.compute_gae`: an episode cut at ``max_decisions`` bootstraps from V of
where it stopped, a terminated one does not), normalized over the batch; the critic regresses the
λ-returns in the same minibatches. The PPO loss clips *per-denoising-step* ratios (each step's log-prob a
per-dimension mean) and averages over the trained steps; an optional KL to the frozen pretrained policy
adds β times the per-dimension mean of ``(μ_θ − μ_ref)²/(2σ²)`` (the exact KL of two Gaussians with
the same σ, divided by D like the log-probs) averaged over the trained steps. REINFORCE's loss is likewise
−A·log p_k/D averaged over decisions and trained steps; it is on-policy, so ``clip_range`` and
``update_epochs`` do not apply and ``kl_coef`` is refused. Deterministic steps
(σ = 0: CPS's and DDIM's last step) never enter a loss; ``train_steps`` restricts it to a window.
Evaluation and the saved policy use the deterministic sampler (ODE / DDIM η = 0). The ratio == 1 check on
the first minibatch of every PPO update is an assertion, as in ReinFlow, on the per-step log-ratios
themselves (|log r| ≤ 1e-5; the per-step sums over D dimensions differ by ~1e-5 between the rollout's
small batches and the update's big ones from float32 matmul ordering alone).

An iteration takes a variable number of env steps (whole episodes), so the runner runs it until the
env-step budget is spent. Envs whose episode ended keep stepping (a vector env steps all envs) until the
slowest member finishes; those steps are neither stored nor counted.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from agents.buffers import compute_gae
from agents.critics import ValueNet
from agents.ppo import (
    OnPolicyLearner,
    PolicyTerms,
    RunningReturnScale,
    check_ratio_is_one,
    minibatch_indices,
    ppo_epochs,
    summarize,
    warn_if_rollouts_cut_episodes,
)
from agents.rollout import ChainActor, Rollout, adopt_training_K, iteration_seed
from envs.vector import VecEnv
from flowpolicy.config import ConfigError, param, redefault
from flowpolicy.policy import Policy
from flowpolicy.samplers import gaussian_log_prob

FLOW_SAMPLERS, DIFFUSION_SAMPLERS = ("flow_sde", "cps"), ("ddim",)


Sampler = Literal["flow_sde", "cps", "ddim"]
Estimator = Literal["ppo", "reinforce"]
# each sampler's noise parameter and its default; a parameter the chosen sampler does not use is an error
SAMPLER_PARAMS = {"flow_sde": ("a", 0.7), "cps": ("eta", 0.8), "ddim": ("eta", 1.0)}
GAE_ONLY = ("gamma", "gae_lambda", "critic_lr", "critic_hidden", "normalize_rewards")  # keys of the critic


@dataclass
class GRPOConfig:
    sampler: Sampler = param(
        "flow_sde", "flow_sde (Flow-GRPO) | cps (Flow-CPS) for flow policies; ddim (DDPO) for diffusion policies")
    a: float | None = param(None, "flow_sde only: noise scale a (null: 0.7)", ge=0)
    eta: float | None = param(None, "cps: noise angle η (null: 0.8); ddim: DDIM's η (null: 1.0)", ge=0, le=1)
    min_std: float = param(0.0, "ddim only: floor on every denoising step's σ in rollouts and the loss (DPPO's "
                                "min sampling/log-prob std, 0.1 on robomimic); 0: none", ge=0)
    estimator: Estimator = param(
        "ppo", "ppo: clipped per-step ratios over epochs; reinforce: DDPO_SF, one on-policy step per batch")
    advantages: Literal["group", "batch", "gae"] = param(
        "group", "group | batch: episode return normalized over its group or the batch; gae: per decision, "
                 "with a learned critic")
    K: int | None = param(None, "denoising steps in rollouts and the loss (null: the policy's); evaluation uses the "
                                "same K deterministically", ge=1)
    group_size: int = param(8, "envs per group, reset with the same seed (advantages are relative to it)", ge=2)
    num_groups: int = param(2, "groups per iteration", ge=1)
    max_decisions: int = param(250, "decisions per episode (an episode cut here counts with the return so far)",
                               ge=1)
    train_steps: list[int] | None = param(None, "denoising steps in the loss (null: every stochastic step)", ge=0)
    update_epochs: int = param(4, "epochs over each batch (reinforce: must be 1)", ge=1)
    minibatch_size: int = param(1024, "decisions per minibatch", ge=1)
    clip_range: float = param(0.01, "clip range of per-step, per-dimension-mean log-prob ratios", gt=0)
    kl_coef: float = param(0.0, "weight of the KL to the frozen pretrained policy (ppo only)", ge=0)
    adv_clip: float = param(5.0, "advantages are clipped to ± this", gt=0)
    actor_lr: float = param(1e-4, "policy learning rate", gt=0)
    max_grad_norm: float = param(1.0, "gradient-norm clip", gt=0)
    ratio_check_tol: float = param(1e-5, "max |recomputed − rollout| step log-prob on the first minibatch", gt=0)
    gamma: float = param(0.99, "advantages: gae only — discount per decision", ge=0, le=1)
    gae_lambda: float = param(0.95, "advantages: gae only — GAE λ", ge=0, le=1)
    critic_lr: float = param(1e-3, "advantages: gae only — critic learning rate", gt=0)
    critic_hidden: list[int] = param([256, 256, 256], "advantages: gae only — critic hidden widths", ge=1)
    normalize_rewards: bool = param(True, "advantages: gae only — divide rewards by the running std of the "
                                          "discounted return")

    def __post_init__(self):
        used, default = SAMPLER_PARAMS[self.sampler]
        unused = "eta" if used == "a" else "a"
        if getattr(self, unused) is not None:
            raise ConfigError(f"{unused} does not apply to sampler {self.sampler} (it takes {used})")
        if getattr(self, used) is None:
            setattr(self, used, default)
        if self.min_std and self.sampler != "ddim":
            raise ConfigError(f"min_std applies to the ddim sampler only (sampler is {self.sampler})")
        if self.advantages != "gae":
            defaults = {f.name: f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
                        for f in dataclasses.fields(self) if f.name in GAE_ONLY}
            for key, value in defaults.items():
                if getattr(self, key) != value:
                    raise ConfigError(f"{key} applies only with advantages: gae (advantages is {self.advantages})")
        if self.estimator == "reinforce" and (self.kl_coef > 0 or self.update_epochs != 1):
            raise ConfigError("estimator reinforce (DDPO_SF) takes one on-policy step per batch: it has no KL term "
                              f"and no epochs (kl_coef={self.kl_coef}, update_epochs={self.update_epochs}); use "
                              "estimator ppo for those")


@dataclass
class CPSConfig(GRPOConfig):
    """Flow-CPS: the GRPO learner with the coefficients-preserving sampler."""

    sampler: Sampler = redefault(GRPOConfig, "sampler", "cps")


@dataclass
class DDPOISConfig(GRPOConfig):
    """DDPO_IS: diffusion policy, DDIM η = 1, clipped per-step importance ratios (clip as in DDPO)."""

    sampler: Sampler = redefault(GRPOConfig, "sampler", "ddim")
    clip_range: float = redefault(GRPOConfig, "clip_range", 1e-4)


@dataclass
class DDPOSFConfig(DDPOISConfig):
    """DDPO_SF: the score-function (REINFORCE) estimator, one gradient step per batch of fresh data."""

    estimator: Estimator = redefault(GRPOConfig, "estimator", "reinforce")
    update_epochs: int = redefault(GRPOConfig, "update_epochs", 1)


def group_advantages(returns: torch.Tensor, group_size: int, clip: float = 5.0) -> torch.Tensor:
    """(R − group mean)/(group std + 1e-4) for returns laid out group-major ([g0 m0, g0 m1, …]), clipped.
    ``group_size`` = len(returns) normalizes over the whole batch."""
    grouped = returns.reshape(-1, group_size)
    adv = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)
    return adv.clamp(-clip, clip).reshape(-1)


class ChainPGLearner(OnPolicyLearner):
    name = "chain_pg"
    runs_until_env_steps = True

    def __init__(self, policy: Policy, env_id: str, config: GRPOConfig, total_iterations: int, seed: int = 0,
                 device: str = "cpu", reference: Policy | None = None, env_kwargs: dict | None = None,
                 env_options=None):
        """``reference``: the pretrained policy for the KL term (default: a copy of ``policy``)."""
        kind = policy.config.kind
        allowed = DIFFUSION_SAMPLERS if kind == "diffusion" else FLOW_SAMPLERS if kind in ("flow", "shortcut") else ()
        if config.sampler not in allowed:
            raise ConfigError(f"sampler {config.sampler!r} does not apply to a {kind} policy"
                              + (f"; use one of {allowed}" if allowed else ""))
        self.cfg, self.seed, self.device = config, seed, torch.device(device)
        self.total_iterations = total_iterations
        self.policy = policy.to(self.device).train()
        pc = policy.config
        self.K, self.D = adopt_training_K(policy, config.K), pc.chunk_dim
        params = {"a": config.a} if config.sampler == "flow_sde" else {"eta": config.eta}
        if config.min_std:
            params["min_std"] = config.min_std
        self.sampler = policy.make_sampler(config.sampler, K=self.K, **params)
        steps = range(self.K) if config.train_steps is None else config.train_steps
        if any(not 0 <= k < self.K for k in steps):
            raise ConfigError(f"train_steps must lie in [0, K={self.K}), got {list(steps)}")
        in_window = torch.zeros(self.K, dtype=torch.bool, device=self.device)
        in_window[list(steps)] = True
        # σ of these samplers depends on the step only: probe it once; deterministic steps never enter the loss
        probe = torch.zeros(1, self.K + 1, self.D, device=self.device)
        _, _, std = self.sampler.step_distributions(lambda x, t, obs: torch.zeros_like(x),
                                                    torch.zeros(1, pc.cond_dim, device=self.device), probe, self.K)
        stochastic = torch.as_tensor(std, device=self.device).expand(self.K, self.D)[:, 0] > 0
        self.trained_steps = in_window & stochastic
        if not self.trained_steps.any():
            raise ConfigError("no stochastic denoising step is selected for training (train_steps / sampler)")
        self.reference = None
        if config.kl_coef > 0:
            self.reference = copy.deepcopy(reference or policy).to(self.device).eval().requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic = self.critic_opt = self.reward_scale = None
        if config.advantages == "gae":
            self.critic = ValueNet(pc.cond_dim, list(config.critic_hidden)).to(self.device)
            self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr)
            if config.normalize_rewards:
                self.reward_scale = RunningReturnScale(config.group_size * config.num_groups, config.gamma)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.num_envs = config.group_size * config.num_groups
        self.envs = VecEnv(env_id, self.num_envs, act_steps=pc.act_steps, n_obs_steps=pc.n_obs_steps,
                           options=env_options, **(env_kwargs or {}))
        self.env_steps_per_iteration = self.num_envs * config.max_decisions * pc.act_steps  # an upper bound
        warn_if_rollouts_cut_episodes(env_id, config.max_decisions * pc.act_steps, "algo.max_decisions")
        self.batch: dict[str, torch.Tensor] = {}

    # -- runner interface ---------------------------------------------------------------------------
    def trainable(self) -> tuple[dict, dict]:
        modules, optimizers = {"policy": self.policy}, {"actor": self.actor_opt}
        if self.reference is not None:
            modules["reference"] = self.reference
        if self.critic is not None:
            modules["critic"], optimizers["critic"] = self.critic, self.critic_opt
        return modules, optimizers

    # -- rollout -----------------------------------------------------------------------------------
    def group_seeds(self, iteration: int) -> list[int]:
        """Env seeds of an iteration: the members of group g share seed base + g."""
        base = iteration_seed(self.seed, iteration, self.cfg.num_groups)
        return [base + g for g in range(self.cfg.num_groups) for _ in range(self.cfg.group_size)]

    @torch.no_grad()
    def collect(self, iteration: int) -> dict:
        active = np.ones(self.num_envs, dtype=bool)
        returns = np.zeros(self.num_envs)
        lengths = np.zeros(self.num_envs, dtype=np.int64)
        succeeded, reports_success = np.zeros(self.num_envs, dtype=bool), False
        conds, chains, log_probs, owners = [], [], [], []
        steps: dict[str, list] = {"cond": [], "reward": [], "terminated": [], "truncated": [], "next_cond": []}
        if self.reward_scale:
            self.reward_scale.returns[:] = 0.0  # every episode starts at this iteration

        rollout = Rollout(self.policy, self.envs)
        for step in rollout.decisions(self.group_seeds(iteration), ChainActor(self.policy, self.sampler, self.K),
                                      self.cfg.max_decisions, self.generator, until_all_done=True):
            cond, chain, out = step.cond, step.record, step.out
            rows = torch.as_tensor(np.flatnonzero(active), device=self.device)
            conds.append(cond[rows])
            chains.append(chain["chain_xs"][rows])
            log_probs.append(chain["log_probs"][rows])
            owners.append(rows)
            returns[active] += out.reward[active]
            lengths[active] += out.env_steps[active]
            if out.success is not None:
                reports_success = True
                succeeded[active] |= out.success[active]
            if self.critic is not None:  # [N] per step; rows of finished episodes are dropped after GAE
                steps["cond"].append(cond)
                reward = self.reward_scale(out.reward, out.done, active) if self.reward_scale else out.reward
                steps["reward"].append(reward)
                steps["terminated"].append(out.terminated)
                steps["truncated"].append(out.truncated | (step.t == self.cfg.max_decisions - 1))
                steps["next_cond"].append(step.next_cond)
            active &= ~out.done
            if not active.any():
                break
        owner = torch.cat(owners)
        self.batch = {"cond": torch.cat(conds), "chains": torch.cat(chains), "log_probs": torch.cat(log_probs)}
        if self.critic is not None:
            self.batch["advantages"], self.batch["returns"] = self._gae(steps, owners)
        else:
            group = self.cfg.group_size if self.cfg.advantages == "group" else self.num_envs
            advantages = group_advantages(torch.as_tensor(returns, dtype=torch.float32, device=self.device), group,
                                          self.cfg.adv_clip)
            self.batch["advantages"] = advantages[owner]
        # one episode per env: the metrics count only the steps inside it
        metrics = {"env_steps": int(lengths.sum()), "episode_returns": returns.tolist(),
                   "episode_lengths": lengths.tolist(), "env_s": rollout.env_s}
        if reports_success:
            metrics["episode_successes"] = succeeded.tolist()
        return metrics

    def _gae(self, steps: dict[str, list], owners: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-decision GAE advantages (batch-normalized, clipped) and λ-returns, in the batch's row order:
        computed on the full [T, N] grid, then the rows of each step's still-active envs are kept (the trace
        is cut at every episode end, so the steps an env takes after its episode never leak in)."""
        cond, next_cond = torch.stack(steps["cond"]), torch.stack(steps["next_cond"])
        as_tensor = lambda key: torch.as_tensor(np.stack(steps[key]), dtype=torch.float32, device=self.device)  # noqa: E731
        values, next_values = self.critic(cond), self.critic(next_cond)
        advantages, lambda_returns = compute_gae(as_tensor("reward"), values, next_values, as_tensor("terminated"),
                                                 as_tensor("truncated"), self.cfg.gamma, self.cfg.gae_lambda)
        advantages = torch.cat([advantages[t, rows] for t, rows in enumerate(owners)])
        lambda_returns = torch.cat([lambda_returns[t, rows] for t, rows in enumerate(owners)])
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        return advantages.clamp(-self.cfg.adv_clip, self.cfg.adv_clip), lambda_returns

    def value(self, cond: torch.Tensor) -> torch.Tensor:
        return self.critic(cond)

    # -- update ------------------------------------------------------------------------------------
    def update(self, iteration: int) -> dict:
        if self.cfg.estimator == "reinforce":
            return self._reinforce_update(iteration)
        return self._ppo_update(iteration)

    def _reinforce_update(self, iteration: int) -> dict:
        """DDPO_SF: ∇ E[A·log p_k] (per-dimension mean, averaged over decisions and trained steps) on the fresh
        batch, one optimizer step (gradients of the minibatches are accumulated), so θ = θ_old throughout and
        no ratio is needed — but the recomputed log-probs must still equal the rollout's (checked)."""
        c = self.cfg
        model_fn = self.policy.model.model_fn(self.K)
        n, trained = self.batch["cond"].shape[0], self.trained_steps
        self.actor_opt.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, n, c.minibatch_size):
            sl = slice(start, start + c.minibatch_size)
            x_next, mean, std = self.sampler.step_distributions(model_fn, self.batch["cond"][sl],
                                                                self.batch["chains"][sl], self.K)
            all_steps = gaussian_log_prob(x_next, mean, std).reshape(-1, self.K)
            if start == 0:
                max_dev = check_ratio_is_one((all_steps.detach() - self.batch["log_probs"][sl]) / self.D,
                                             c.ratio_check_tol, iteration, "per-step chain log-probs")
            log_probs = all_steps[:, trained] / self.D
            loss = -(self.batch["advantages"][sl, None] * log_probs).sum() / (n * int(trained.sum()))
            loss.backward()
            total += loss.item()
        nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
        self.actor_opt.step()
        out = {"losses/policy_loss": total, "charts/decisions": float(n), "losses/logprob_max_dev": max_dev}
        if self.critic is not None:  # the critic takes its minibatch steps on the same fresh batch
            out["losses/value_loss"] = float(np.mean([
                self.critic_step({key: value[idx] for key, value in self.batch.items()})
                for idx in minibatch_indices(n, c.minibatch_size, self.generator, self.device)]))
        return out

    def _policy_terms(self, mb: dict) -> PolicyTerms:
        """Per-step ratios (per-dimension means) over the trained steps, and the KL to the reference."""
        x_next, mean, std = self.sampler.step_distributions(self.policy.model.model_fn(self.K), mb["cond"],
                                                            mb["chains"], self.K)
        new = gaussian_log_prob(x_next, mean, std).reshape(-1, self.K)
        # every per-step log-ratio (what the ratio uses) must be 0 on the first minibatch
        deviation = (new - mb["log_probs"]) / self.D
        terms = PolicyTerms(log_ratio=deviation[:, self.trained_steps], deviation=deviation)
        if self.reference is not None:
            with torch.no_grad():
                _, ref_mean, _ = self.sampler.step_distributions(self.reference.model.model_fn(self.K), mb["cond"],
                                                                 mb["chains"], self.K)
            std_k = torch.as_tensor(std, dtype=mean.dtype).expand_as(mean).reshape(-1, self.K, self.D)
            diff = (mean - ref_mean).reshape(-1, self.K, self.D)[:, self.trained_steps]
            kl = (diff.square() / (2 * std_k[:, self.trained_steps].square())).mean()
            terms.extra_losses.append(self.cfg.kl_coef * kl)
            terms.stats["kl"] = kl.item()
        return terms

    def _ppo_update(self, iteration: int) -> dict:
        stats, _ = ppo_epochs(self.cfg, iteration, self.batch, self._policy_terms, self.actor_opt,
                              list(self.policy.parameters()), self.generator,
                              ("logprob_max_dev", "per-step chain log-probs"),
                              critic_step=self.critic_step if self.critic is not None else None)
        out = summarize(stats)
        out["charts/decisions"] = float(len(self.batch["cond"]))
        return out
