"""CFGRL: classifier-free guidance as a policy-improvement operator (Frans et al.), offline and online.

One velocity network is conditioned on an optimality label o ∈ {∅, 0, 1}
(:class:`flowpolicy.models.GuidedFlowModel`): o = 1[A(s, a) ≥ 0] with the advantage A = Q − V of an IQL
critic, dropped to ∅ with probability p during training. Sampling follows ``v_∅ + w·(v_1 − v_∅)``: w = 0
is the behavior policy, w = 1 the policy conditioned on "better than V", and w > 1 sharpens further — the
paper's result is that return rises with w up to a point, *without retraining*. A BC flow checkpoint is
converted on load (its weights carry over; the label inputs start at zero, so every label starts as BC).

**IQL critic** (fitted in-sample, never querying actions outside the data): V by expectile regression on
min(Q̄₁, Q̄₂)(s, a) (Q̄ the Polyak targets), twin Q by TD toward r + γ·(1 − terminated)·V(s'), bootstrap
masked only on true termination. The critic is pre-fitted for ``critic_pretrain_steps`` before the policy
trains, then both train together; labels always come from the current critic.

**Offline mode** (the paper): the replay holds the demonstration dataset only; an iteration is
``updates_per_iteration`` gradient steps and no env steps (``offline_iterations`` of them).

**Online mode** (not in the paper — our design): each iteration rolls out the guided policy (w =
``guidance``, optional exploration noise) into a replay seeded with the demonstrations, then runs
``updates_per_decision`` gradient steps per collected decision on the critic and the conditional flow.
Relabelling is implicit: every batch is labelled by the critic of that moment, so old data are relabelled
as the critic improves. Two options keep the conditional model anchored while the replay fills with its own
rollouts: ``demo_fraction`` draws that share of every batch from the demonstrations (kept apart from the
online replay, RLPD-style symmetric sampling) instead of one replay seeded with them, and
``rollout_guidance`` rolls out at a w other than the evaluated one (e.g. 1: the "better than V" policy
itself, while evaluation and the saved policy use ``guidance``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import nn

from agents.critics import DoubleQ, ValueNet, expectile_loss, polyak_update
from agents.replay import ReplayBuffer, collect_into_replay, demonstration_transitions, td_target
from agents.rollout import RolloutConfig, adopt_training_K, iteration_seed
from envs.vector import VecEnv
from flowpolicy.config import ConfigError, param, redefault
from flowpolicy.models import GuidedFlowModel
from flowpolicy.networks import Activation
from flowpolicy.policy import Policy


@dataclass
class CFGRLConfig(RolloutConfig):
    num_envs: int = redefault(RolloutConfig, "num_envs", 4)
    mode: Literal["offline", "online"] = param("offline", "offline: the dataset only; online: with env rollouts")
    dataset: str = param("", "the demonstrations: all the data offline, the replay's seed online")
    allow_env_mismatch: bool = param(False, "accept a dataset recorded on another env id or with other env kwargs "
                                     "(deliberate cross-env use)")
    guidance: float = param(1.5, "w for rollouts, evaluation and the saved policy (sweep others at evaluation)")
    label_dropout: float = param(0.1, "probability of dropping the optimality label to ∅", ge=0, lt=1)
    label_dim: int = param(16, "size of the label embedding", ge=1)
    critic_pretrain_steps: int = param(20_000, "IQL steps before the policy trains", ge=0)
    offline_iterations: int = param(20, "offline mode: iterations (the budget; no env steps)", ge=1)
    updates_per_iteration: int = param(1000, "offline mode: gradient steps per iteration", ge=1)
    updates_per_decision: float = param(0.25, "online mode: gradient steps per collected decision", gt=0)
    exploration_noise: float = param(0.0, "online mode: Gaussian noise std added to rollout actions", ge=0)
    buffer_size: int = param(250_000, "online mode: replay capacity in decisions", ge=1)
    demo_fraction: float = param(0.0, "online mode: share of each batch from the demonstrations "
                                      "(0: one replay seeded with them)", ge=0, lt=1)
    rollout_guidance: float | None = param(None, "online mode: w for rollouts (null: guidance)")
    batch_size: int = param(256, "minibatch size", ge=1)
    expectile: float = param(0.9, "IQL expectile", gt=0, lt=1)
    tau: float = param(0.005, "Polyak rate of the target critic", gt=0, le=1)
    critic_lr: float = param(3e-4, "critic learning rate", gt=0)
    actor_lr: float = param(1e-4, "policy learning rate", gt=0)
    reward_scale: float = param(0.1, "rewards are multiplied by this in the critic's targets", gt=0)
    critic_hidden: list[int] = param([256, 256], "critic hidden widths", ge=1)
    critic_activation: Activation = param("silu", "critic activation")
    max_grad_norm: float = param(10.0, "gradient-norm clip", gt=0)



def guided_policy_from(policy: Policy, label_dim: int = 16, label_dropout: float = 0.1,
                       guidance: float = 1.0) -> Policy:
    """A ``guided_flow`` policy whose every label initially reproduces the (flow) ``policy`` exactly."""
    if policy.config.kind == "guided_flow":
        return policy
    if policy.config.kind != "flow":
        raise ConfigError(f"CFGRL starts from a flow policy; this one is {policy.config.kind!r}")
    config = replace(policy.config, kind="guided_flow", guidance=guidance, guidance_label_dim=label_dim,
                     guidance_label_dropout=label_dropout)
    guided = Policy(config, copy.deepcopy(policy.obs_normalizer), copy.deepcopy(policy.action_normalizer))
    guided.model.net.load_unlabelled(policy.model.net.state_dict())
    return guided.to(policy.device)


class IQLCritic(nn.Module):
    """Twin Q (+ Polyak targets) and V fitted with IQL's expectile regression."""

    def __init__(self, cond_dim: int, action_dim: int, hidden: list[int], activation: str):
        super().__init__()
        self.q = DoubleQ(cond_dim, action_dim, hidden, activation)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.v = ValueNet(cond_dim, hidden, activation)

    @torch.no_grad()
    def advantage(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return torch.minimum(*self.q_target(cond, actions)) - self.v(cond)

    def losses(self, batch: dict, gamma: float, expectile: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(value loss, Q loss) on a replay batch."""
        with torch.no_grad():
            q_min = torch.minimum(*self.q_target(batch["cond"], batch["actions"]))
            target = td_target(batch["rewards"], batch["terminated"], self.v(batch["next_cond"]), gamma)
        value_loss = expectile_loss(q_min - self.v(batch["cond"]), expectile)
        q1, q2 = self.q(batch["cond"], batch["actions"])
        return value_loss, (q1 - target).square().mean() + (q2 - target).square().mean()


class CFGRLLearner:
    name = "cfgrl"

    def __init__(self, policy: Policy, env_id: str, config: CFGRLConfig, total_iterations: int, seed: int = 0,
                 device: str = "cpu", reference: Policy | None = None, env_kwargs: dict | None = None,
                 env_options=None):
        """``reference`` is unused (CFGRL stays near the data through the label-dropout prior)."""
        if not config.dataset:
            raise ConfigError("CFGRL needs algo.dataset (the demonstrations its critic and labels are fitted on)")
        self.cfg, self.seed, self.device = config, seed, torch.device(device)
        self.total_iterations = total_iterations
        self.policy = guided_policy_from(policy.to(self.device), config.label_dim, config.label_dropout,
                                         config.guidance).train()
        pc = self.policy.config
        self.K = adopt_training_K(self.policy, config.K)
        self.critic = IQLCritic(pc.cond_dim, pc.chunk_dim, list(config.critic_hidden),
                                config.critic_activation).to(self.device)
        self.q_opt = torch.optim.Adam(self.critic.q.parameters(), lr=config.critic_lr)
        self.v_opt = torch.optim.Adam(self.critic.v.parameters(), lr=config.critic_lr)
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        if not 0.0 <= config.demo_fraction < 1.0:
            raise ConfigError(f"demo_fraction must lie in [0, 1), got {config.demo_fraction}")
        self.online = config.mode == "online"
        demos = demonstration_transitions(self.policy, config.dataset, config.reward_scale, env_id,
                                          config.allow_env_mismatch, env_kwargs)
        capacity = len(demos["cond"]) if config.mode == "offline" else max(config.buffer_size, len(demos["cond"]))
        self.replay = ReplayBuffer(capacity, pc.cond_dim, pc.chunk_dim, self.device)
        self.demos = None  # a separate demonstration buffer when batches mix it in at a fixed share
        if self.online and config.demo_fraction > 0:
            self.demos = ReplayBuffer(len(demos["cond"]), pc.cond_dim, pc.chunk_dim, self.device)
            self.demos.add(**demos)
        else:
            self.replay.add(**demos)
        self.envs = VecEnv(env_id, config.num_envs, act_steps=pc.act_steps, n_obs_steps=pc.n_obs_steps,
                           options=env_options, **(env_kwargs or {})) \
            if self.online else None
        self.sampler = self.policy.make_sampler(K=self.K)
        self.env_steps_per_iteration = config.num_envs * config.decisions_per_env * pc.act_steps if self.online else 0

    # -- runner interface ---------------------------------------------------------------------------
    def eval_policy(self) -> Policy:
        return self.policy

    def training_state(self):
        modules = {"policy": self.policy, "critic": self.critic}
        optimizers = {"actor": self.actor_opt, "q": self.q_opt, "v": self.v_opt}
        return modules, optimizers, {"learner": self.generator}, {"replay_position": self.replay.position}

    def training_arrays(self) -> dict:
        if not self.online:  # the replay is the dataset, rebuilt on resume
            return {}
        return self.replay.arrays()

    def load_extra(self, extra: dict, arrays: dict) -> None:
        self.replay.load_arrays(arrays, extra["replay_position"])

    # -- rollout -----------------------------------------------------------------------------------
    def collect(self, iteration: int) -> dict:
        if not self.online:
            return {"env_steps": 0}
        c = self.cfg
        if c.rollout_guidance is not None:
            self.policy.set_guidance(c.rollout_guidance)
        try:
            return collect_into_replay(self.policy, self.sampler, self.K, self.envs, self.replay, c.decisions_per_env,
                                       seed=iteration_seed(self.seed, iteration, c.num_envs),
                                       exploration_noise=c.exploration_noise, reward_scale=c.reward_scale,
                                       generator=self.generator)
        finally:
            self.policy.set_guidance(c.guidance)

    def sample_batch(self) -> dict[str, torch.Tensor]:
        """A replay batch; with ``demo_fraction`` > 0, that share comes from the demonstrations."""
        c = self.cfg
        if self.demos is None:
            return self.replay.sample(c.batch_size, self.generator)
        n_demo = int(round(c.demo_fraction * c.batch_size))
        demo, online = self.demos.sample(n_demo, self.generator), self.replay.sample(c.batch_size - n_demo,
                                                                                      self.generator)
        return {k: torch.cat([demo[k], online[k]]) for k in demo}

    # -- update ------------------------------------------------------------------------------------
    def labels(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """o = 1[A(s, a) ≥ 0] as model label indices (GOOD / BAD)."""
        good = self.critic.advantage(cond, actions) >= 0
        return torch.where(good, GuidedFlowModel.GOOD, GuidedFlowModel.BAD)

    def _critic_step(self, batch: dict) -> tuple[float, float]:
        c = self.cfg
        value_loss, q_loss = self.critic.losses(batch, c.gamma, c.expectile)
        for opt, loss, params in ((self.v_opt, value_loss, self.critic.v.parameters()),
                                  (self.q_opt, q_loss, self.critic.q.parameters())):
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, c.max_grad_norm)
            opt.step()
        polyak_update(self.critic.q, self.critic.q_target, c.tau)
        return value_loss.item(), q_loss.item()

    def update(self, iteration: int) -> dict:
        c = self.cfg
        stats: dict[str, list[float]] = {"value_loss": [], "q_loss": [], "actor_loss": [], "good_fraction": []}
        if iteration == 0:
            for _ in range(c.critic_pretrain_steps):
                self._critic_step(self.sample_batch())
        if self.online:
            n_updates = max(1, int(round(c.updates_per_decision * c.num_envs * c.decisions_per_env)))
        else:
            n_updates = c.updates_per_iteration
        for _ in range(n_updates):
            batch = self.sample_batch()
            value_loss, q_loss = self._critic_step(batch)
            labels = self.labels(batch["cond"], batch["actions"])
            actor_loss = self.policy.model.bc_loss(batch["cond"], batch["actions"], self.generator, labels=labels)
            self.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
            self.actor_opt.step()
            stats["value_loss"].append(value_loss)
            stats["q_loss"].append(q_loss)
            stats["actor_loss"].append(actor_loss.item())
            stats["good_fraction"].append((labels == GuidedFlowModel.GOOD).float().mean().item())
        out = {f"losses/{k}": float(np.mean(stats[k])) for k in ("value_loss", "q_loss", "actor_loss")}
        out["charts/good_fraction"] = float(np.mean(stats["good_fraction"]))
        out["charts/replay_size"] = float(len(self.replay))
        out["charts/gradient_steps"] = float(n_updates)
        return out
