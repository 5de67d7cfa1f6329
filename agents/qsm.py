"""QSM (Q-score matching): off-policy fine-tuning that teaches the denoiser to follow ∇ₐQ.

No likelihoods are needed. Twin critics Q(s, a) over action chunks are trained TD3-style; the actor is
trained by regressing its noise prediction at a noised replay action onto −α·∇ₐQ, so every denoising
step moves the sample uphill on Q (QSM: the policy's score becomes α·∇Q, i.e. π ∝ exp(α·Q) locally).

**Diffusion (ε-model).** For a replay action a, t ~ U(0, 1), ε ~ N(0, I),
``x_t = sqrt(ᾱ(t))·a + sqrt(1 − ᾱ(t))·ε`` and the loss is ``‖ε_θ(x_t, t, s) + α·c_t·∇ₐQ(s, y)‖²``. The
sign: the score is −ε/sqrt(1 − ᾱ) and DDIM's data estimate is ``x̂₀ = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ)``, so
ε̂ = −α∇Q pushes both along +∇Q (QSM's README states the opposite sign; its code, like ours, ascends Q).

**Flow (velocity model), derived.** With ``x_t = t·a + (1 − t)·ε`` and ``v = a − ε`` the velocity model
implies a noise prediction ``ε̂ = x − t·v`` and the score ``∇ log p_t(x) = −ε̂/(1 − t)`` (DESIGN.md), the
same relation ε̂ = −(noise level)·score as for the ε-model. Asking the flow's score for the same QSM
target therefore asks ε̂ for the same value: ``‖(x_t − t·v_θ(x_t, t, s)) + α·c_t·∇ₐQ(s, y)‖²``. In terms
of v this is a velocity regression weighted by t² toward ``v* = (x_t + α·c_t·∇Q)/t``: the data estimate
``â = x + (1 − t)·v`` gains ``(1 − t)/t·α·c_t·∇Q`` — uphill on Q — and nothing is asked of v at t = 0,
where ε̂ = x_0 whatever v is (there the flow keeps its pretrained velocity).

**Documented choices** (``QSMConfig``):

- ``grad_at`` — where ∇Q is evaluated. ``noised``: at x_t (the paper and DPPO's port); ``denoised``: at
  the current model's data estimate â(x_t) = (x_t − σ_t·ε̂)/s_t clipped to the action box (stop-gradient);
  ``clean``: at the replay action a. Q is only trained on executed actions in [−1, 1], so ∇Q at a
  high-noise x_t is extrapolation (QSM's known weakness). On a quadratic bandit (docs/qsm.md) ``noised``
  reaches the argmax with a diffusion policy — whose x̂₀ clipping bounds every DDIM step — but drives
  a deterministic Euler flow far past it (α = 1) or to divergence (α ≥ 3): the target −α∇Q(x_t) is not
  the ε of any path from N(0, I), and only the flow's Euler integration follows it literally.
  ``denoised`` works for both kinds and is the default.
- ``target_scale`` — c_t in the shift −α·c_t·∇Q: ``none`` (the paper: an ε target −α∇Q at every level,
  i.e. a score α∇Q/σ_t), ``noise`` (c_t = σ_t: a score target α∇Q at every level, π_t ∝ exp(α·Q)) or
  ``snr`` (c_t = s_t/σ_t: the data estimate â moves by exactly α∇Q at every level, since δâ = −(σ/s)·δε̂).
- ``anchor`` — what the shift is added to: nothing (``none``, the paper: its fixed point ε̂ = −α·c_t·∇Q
  ignores the data, which from a BC start first erases BC), the noise ε that made x_t (``replay``: the
  replay's own denoising target), or the frozen ``reference`` policy's ε̂(x_t), copied from the policy
  every ``reference_update_every`` iterations — each period one mirror-descent step that moves the
  reference's denoised action by α∇Q. Our default is ``reference`` + ``snr`` + ``denoised``; the measured
  reasons (bandit sweep, Hopper trials) are in docs/qsm.md.

- ``bc_coeff`` — an optional behavior-cloning term (the policy's own BC loss on a batch of demonstrations,
  times ``bc_coeff``) added to the actor loss, as TD3+BC does: the reference anchor alone lets the
  policy walk anywhere ∇Q points, one mirror step per reference period; the BC term keeps pulling it
  toward the data, where the critic's action-gradient is not extrapolation (needs ``dataset``).

Critic: TD3-style twin Q with Polyak targets; the target action is the full deterministic sampler at s'
plus clipped Gaussian smoothing noise; the bootstrap is masked only on true termination (a truncated
transition bootstraps from its true final observation). Exploration adds Gaussian noise to the
deterministic sample. The replay buffer may be seeded with the demonstration dataset. Rewards are
multiplied by ``reward_scale``; γ applies once per decision (chunk rewards are summed inside the chunk).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from agents.autoscale import require_resolved
from agents.critics import DoubleQ, clip_grad_norm, polyak_update
from agents.replay import ReplayBuffer, collect_into_replay, demonstration_transitions, td_target
from agents.rollout import RolloutConfig, adopt_training_K, iteration_seed
from agents.schedules import cosine_factor
from envs.vector import VecEnv
from flowpolicy.config import param, redefault
from flowpolicy.networks import Activation
from flowpolicy.policy import Policy


@dataclass
class QSMConfig(RolloutConfig):
    num_envs: int = redefault(RolloutConfig, "num_envs", 4)
    decisions_per_env: int = redefault(RolloutConfig, "decisions_per_env", 256)
    gamma: float = redefault(RolloutConfig, "gamma", 0.97)
    buffer_size: int = param(250_000, "replay capacity in decisions", ge=1)
    batch_size: int = param(256, "replay minibatch size", ge=1)
    updates_per_decision: float = param(0.0625, "gradient steps per collected decision (summed over envs)", gt=0)
    critic_lr: float = param(6e-4, "critic learning rate", gt=0)
    actor_lr: float = param(1.2e-4, "policy learning rate", gt=0)
    actor_lr_min_fraction: float = param(1.0, "cosine decay of the actor's rate to this fraction (1: constant)",
                                         ge=0, le=1)
    tau: float = param(0.04, "Polyak rate of the target critics", gt=0, le=1)
    q_grad_coeff: float | None = param(None, "α: the step −α·c_t·∇Q the denoiser learns (with q_grad_normalize, ∇Q "
                                       "is in units of its running RMS per action dimension; null: exploration_noise "
                                       "/ 6 — a step the task tolerates, agents/autoscale.py)", ge=0)
    q_grad_normalize: bool = param(True, "divide ∇Q by a running mean of its RMS per action dimension, so α means the "
                                   "same on every task (false: raw ∇Q, the paper's)")
    grad_at: Literal["noised", "denoised", "clean"] = param("denoised", "where ∇Q is taken (module docstring)")
    target_scale: Literal["none", "noise", "snr"] = param("snr", "c_t in the shift −α·c_t·∇Q (module docstring)")
    anchor: Literal["none", "replay", "reference"] = param(
        "reference", "what the −α∇Q shift is added to (module docstring)")
    reference_update_every: int = param(4, "iterations between copies of the policy into the reference (0: never)",
                                        ge=0)
    target_noise: float | None = param(None, "TD3 target-action smoothing noise std (null: exploration_noise)", ge=0)
    target_noise_clip: float | None = param(None, "clip of the target smoothing noise (null: 3 × target_noise)", ge=0)
    exploration_noise: float | None = param(None, "Gaussian noise std added to rollout actions (null: measured at "
                                            "the start — the largest σ at which the BC policy keeps 50% of its "
                                            "score, agents/autoscale.py)", ge=0)
    reward_scale: float | None = param(None, "rewards are multiplied by this in the critic's targets (null: 1 / the "
                                       "BC policy's mean |reward| per decision, measured at the start)", gt=0)
    critic_warmup_iterations: int = param(5, "iterations that train only the critics", ge=0)
    policy_delay: int = param(1, "TD3's policy delay: the actor takes a gradient step after every d-th critic step "
                              "(d× fewer actor steps; scale actor_lr with it to keep the actor's pace per env step)",
                              ge=1)
    critic_hidden: list[int] = param([256, 256, 256], "critic hidden widths", ge=1)
    critic_activation: Activation = param("silu", "critic activation")
    max_grad_norm: float = param(10.0, "gradient-norm clip", gt=0)
    dataset: str | None = param(None, "seed the replay buffer with this demonstration dataset (Minari dir or .hdf5; "
                                "null with bc_coeff > 0: the dataset the BC policy was trained on)")
    bc_coeff: float = param(0.5, "weight of a BC loss on demonstration batches in the actor loss (needs dataset)",
                            ge=0)
    allow_env_mismatch: bool = param(False, "accept a dataset recorded on another env id or with other env kwargs "
                                     "(deliberate cross-env use)")



GRAD_AT = ("noised", "denoised", "clean")
TARGET_SCALES = ("none", "noise", "snr")


ANCHORS = ("none", "replay", "reference")


def qsm_actor_loss(policy: Policy, q_fn, cond: torch.Tensor, actions: torch.Tensor, alpha: float,
                   grad_at: str = "denoised", target_scale: str = "none", anchor: str = "none",
                   reference: Policy | None = None, generator: torch.Generator | None = None,
                   return_tensor: bool = False, grad_scale=None) -> tuple[torch.Tensor, float | torch.Tensor]:
    """QSM's regression ``‖ε̂_θ(x_t, t, s) − (b − α·c_t·∇ₐQ(s, y))‖²`` for either model kind: ε̂ is the
    model's noise prediction (``x − t·v`` for a flow), x_t the replay ``actions`` noised at t ~ U(0, 1),
    y chosen by ``grad_at``, c_t by ``target_scale`` (1, σ_t, or s_t/σ_t), and the anchor b is 0 (``none``,
    the paper), the noise ε that made x_t (``replay``) or the frozen ``reference`` policy's ε̂(x_t).
    ``q_fn(cond, actions) -> [B]``; gradients reach the policy only (∇Q is a constant target). Returns the
    loss and the mean ‖∇ₐQ‖ (a diagnostic for choosing α: the shift is α times it; a 0-d tensor with
    ``return_tensor``, which spares the learner's loop a device synchronization per step). ``grad_scale``:
    ``grad_scale(∇Q) -> s``, and the shift uses ∇Q / s (the learner's running normalization)."""
    if grad_at not in GRAD_AT:
        raise ValueError(f"grad_at must be one of {GRAD_AT}, got {grad_at!r}")
    if target_scale not in TARGET_SCALES:
        raise ValueError(f"target_scale must be one of {TARGET_SCALES}, got {target_scale!r}")
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    if anchor == "reference" and reference is None:
        raise ValueError("anchor='reference' needs a reference policy")
    model = policy.model
    noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
    t = torch.rand(actions.shape[0], generator=generator, device=actions.device, dtype=actions.dtype)
    signal, sigma = model.coefficients(t)
    x_t = signal * actions + sigma * noise
    eps_hat = model.noise_prediction(x_t, t, cond)
    with torch.no_grad():
        base = {"none": torch.zeros_like(noise), "replay": noise,
                "reference": reference.model.noise_prediction(x_t, t, cond) if anchor == "reference" else None
                }[anchor]
    if grad_at == "noised":
        point = x_t
    elif grad_at == "clean":
        point = actions
    else:  # the data estimate (of the anchor where there is a model one); the clip takes over at pure noise
        eps = base if anchor == "reference" else eps_hat
        point = ((x_t - sigma * eps) / signal.clamp(min=1e-3)).clamp(-1.0, 1.0)
    point = point.detach().requires_grad_(True)
    grad_q = torch.autograd.grad(q_fn(cond, point).sum(), point)[0].detach()
    grad_norm = grad_q.norm(dim=-1).mean()
    if grad_scale is not None:
        grad_q = grad_q / grad_scale(grad_q)
    # snr: σ ≥ 0.05 keeps the shift finite at the data end, where ε̂ barely affects â anyway
    scale = {"none": 1.0, "noise": sigma, "snr": signal / sigma.clamp(min=0.05)}[target_scale]
    target = base - alpha * scale * grad_q
    return (eps_hat - target).square().mean(), grad_norm if return_tensor else grad_norm.item()


class QSMLearner:
    name = "qsm"

    def __init__(self, policy: Policy, env_id: str, config: QSMConfig, total_iterations: int, seed: int = 0,
                 device: str = "cpu", reference: Policy | None = None, env_kwargs: dict | None = None,
                 env_options=None):
        """``reference``: the pretrained policy, for a resumed run (a fresh one copies ``policy``); with
        ``anchor: reference`` the saved reference of a resumed run replaces it when its state loads."""
        if config.grad_at not in GRAD_AT:
            raise ValueError(f"grad_at must be one of {GRAD_AT}, got {config.grad_at!r}")
        require_resolved(config, "qsm")
        self.cfg, self.seed, self.device = config, seed, torch.device(device)
        self.total_iterations = total_iterations
        self.policy = policy.to(self.device).train()
        pc = policy.config
        self.K = adopt_training_K(policy, config.K)
        self.sampler = policy.make_sampler(K=self.K)  # deterministic: ODE / DDIM η = 0
        self._step_indices: dict[int, list[torch.Tensor]] = {}  # batch size → the K step-index tensors
        with torch.no_grad():  # the critic's targets skip the sampler's noise draws: make sure there are none
            probe = torch.zeros(1, pc.cond_dim, device=self.device)
            std = self.sampler.transition(self.policy.model.model_fn(self.K), torch.zeros(1, pc.chunk_dim,
                                          device=self.device), torch.zeros(1, dtype=torch.long, device=self.device),
                                          self.K, probe)[1]
            if bool(torch.as_tensor(std).ne(0).any()):
                raise ValueError(f"QSM's default sampler must be deterministic, got {type(self.sampler).__name__}")
        self.critic = DoubleQ(pc.cond_dim, pc.chunk_dim, list(config.critic_hidden), config.critic_activation)
        self.critic = self.critic.to(self.device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        if config.target_scale not in TARGET_SCALES:
            raise ValueError(f"target_scale must be one of {TARGET_SCALES}, got {config.target_scale!r}")
        if config.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {config.anchor!r}")
        self.reference = None
        if config.anchor == "reference":
            self.reference = copy.deepcopy(reference or policy).to(self.device).eval().requires_grad_(False)
        # fused Adam: one kernel per step instead of a Python loop over parameters (same update rule; the
        # float rounding of its arithmetic differs from the for-loop implementation in the last bit)
        fused = {"fused": True} if self.device.type in ("cpu", "cuda") else {}
        self.actor_opt = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr, **fused)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, **fused)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # running mean of ∇Q's mean square per action dimension (q_grad_normalize), bias-corrected like Adam's
        self.q_grad_sq = torch.zeros((), device=self.device)
        self.q_grad_steps = 0
        self.envs = VecEnv(env_id, config.num_envs, act_steps=pc.act_steps, n_obs_steps=pc.n_obs_steps,
                           options=env_options, **(env_kwargs or {}))
        self.replay = ReplayBuffer(config.buffer_size, pc.cond_dim, pc.chunk_dim, self.device)
        if config.bc_coeff and not config.dataset:
            raise ValueError("bc_coeff > 0 needs algo.dataset (the demonstrations the BC term imitates)")
        self.demos = None  # the demonstrations apart, for the BC term
        if config.dataset:
            demos = demonstration_transitions(self.policy, config.dataset, config.reward_scale, env_id,
                                              config.allow_env_mismatch, env_kwargs)
            self.replay.add(**demos)
            if config.bc_coeff:
                self.demos = ReplayBuffer(len(demos["cond"]), pc.cond_dim, pc.chunk_dim, self.device)
                self.demos.add(**demos)
        self.env_steps_per_iteration = config.num_envs * config.decisions_per_env * pc.act_steps

    # -- runner interface ---------------------------------------------------------------------------
    def eval_policy(self) -> Policy:
        return self.policy

    def training_state(self):
        modules = {"policy": self.policy, "critic": self.critic, "critic_target": self.critic_target}
        if self.reference is not None:
            modules["reference"] = self.reference
        optimizers = {"actor": self.actor_opt, "critic": self.critic_opt}
        extra = {"replay_position": self.replay.position, "q_grad_sq": float(self.q_grad_sq),
                 "q_grad_steps": self.q_grad_steps}
        return modules, optimizers, {"learner": self.generator}, extra

    def training_arrays(self) -> dict:
        return self.replay.arrays()

    def load_extra(self, extra: dict, arrays: dict) -> None:
        self.replay.load_arrays(arrays, extra["replay_position"])
        self.q_grad_sq = torch.tensor(float(extra.get("q_grad_sq", 0.0)), device=self.device)
        self.q_grad_steps = int(extra.get("q_grad_steps", 0))

    Q_GRAD_DECAY = 0.99  # the running scale averages over ≈ 100 gradient steps

    def q_grad_scale(self, grad_q: torch.Tensor) -> torch.Tensor:
        """Update the running mean square of ∇Q (per action dimension) with this batch; return its root: the
        unit ∇Q is measured in (q_grad_normalize), so α means the same whatever the reward or action scale."""
        b = self.Q_GRAD_DECAY
        self.q_grad_sq = b * self.q_grad_sq + (1 - b) * grad_q.square().mean()
        self.q_grad_steps += 1
        return self.q_grad_rms().clamp(min=1e-8)

    def q_grad_rms(self) -> torch.Tensor:
        """The running RMS of ∇Q, bias-corrected for the steps averaged so far (as Adam's moments are)."""
        return (self.q_grad_sq / (1 - self.Q_GRAD_DECAY ** self.q_grad_steps)).sqrt()

    # -- rollout -----------------------------------------------------------------------------------
    def collect(self, iteration: int) -> dict:
        return collect_into_replay(self.policy, self.sampler, self.K, self.envs, self.replay,
                                   self.cfg.decisions_per_env,
                                   seed=iteration_seed(self.seed, iteration, self.cfg.num_envs),
                                   exploration_noise=self.cfg.exploration_noise,
                                   reward_scale=self.cfg.reward_scale, generator=self.generator)

    # -- update ------------------------------------------------------------------------------------
    def q_mean(self, cond: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        q1, q2 = self.critic(cond, actions)
        return (q1 + q2) / 2

    def deterministic_actions(self, cond: torch.Tensor) -> torch.Tensor:
        """x_K of the learner's deterministic sampler from x_0 ~ N(0, I): the numbers (and generator draws) of
        ``policy.sample(cond, sampler, K, generator).actions``, without building the chain and its zero
        log-probs (the critic's targets need only the action)."""
        B = cond.shape[0]
        x = torch.randn((B, self.policy.config.chunk_dim), generator=self.generator, device=cond.device,
                        dtype=cond.dtype)
        steps = self._step_indices.get(B)
        if steps is None:
            steps = self._step_indices[B] = [torch.full((B,), k, dtype=torch.long, device=cond.device)
                                             for k in range(self.K)]
        model_fn = self.policy.model.model_fn(self.K)
        for k in steps:
            x = self.sampler.transition(model_fn, x, k, self.K, cond)[0]  # std 0: checked in __init__
        return x

    @torch.no_grad()
    def critic_targets(self, batch: dict) -> torch.Tensor:
        """TD3's target y = r + γ·(1 − terminated)·min(Q'₁, Q'₂)(s', a'), a' = sampler(s') + clipped noise."""
        c = self.cfg
        next_actions = self.deterministic_actions(batch["next_cond"])
        smoothing = c.target_noise * torch.randn(next_actions.shape, generator=self.generator, device=self.device)
        next_actions = (next_actions + smoothing.clamp(-c.target_noise_clip, c.target_noise_clip)).clamp(-1.0, 1.0)
        next_q = torch.minimum(*self.critic_target(batch["next_cond"], next_actions))
        return td_target(batch["rewards"], batch["terminated"], next_q, c.gamma)

    def update(self, iteration: int) -> dict:
        c = self.cfg
        self.actor_opt.param_groups[0]["lr"] = c.actor_lr * cosine_factor(iteration, self.total_iterations,
                                                                          c.actor_lr_min_fraction)
        n_updates = max(1, int(round(c.updates_per_decision * c.num_envs * c.decisions_per_env)))
        actor_active = iteration >= c.critic_warmup_iterations
        stats: dict[str, list] = {"critic_loss": [], "actor_loss": [], "bc_loss": [], "q": [], "q_grad_norm": []}
        critic_params, policy_params = list(self.critic.parameters()), list(self.policy.parameters())
        for step in range(n_updates):
            batch = self.replay.sample(c.batch_size, self.generator)
            target = self.critic_targets(batch)
            q1, q2 = self.critic(batch["cond"], batch["actions"])
            critic_loss = (q1 - target).square().mean() + (q2 - target).square().mean()
            self.critic_opt.zero_grad(set_to_none=True)
            critic_loss.backward()
            clip_grad_norm(critic_params, c.max_grad_norm)
            self.critic_opt.step()
            stats["critic_loss"].append(critic_loss.detach())  # tensors: one conversion after the loop
            stats["q"].append(q1.detach().mean())

            if actor_active and (step + 1) % c.policy_delay == 0:
                self.critic.requires_grad_(False)
                actor_loss, grad_norm = qsm_actor_loss(
                    self.policy, self.q_mean, batch["cond"], batch["actions"], c.q_grad_coeff, c.grad_at,
                    c.target_scale, c.anchor, self.reference, self.generator, return_tensor=True,
                    grad_scale=self.q_grad_scale if c.q_grad_normalize else None)
                self.critic.requires_grad_(True)
                if self.demos is not None:
                    demo = self.demos.sample(c.batch_size, self.generator)
                    bc_loss = self.policy.bc_loss(demo["cond"], demo["actions"], self.generator)
                    actor_loss = actor_loss + c.bc_coeff * bc_loss
                    stats["bc_loss"].append(bc_loss.detach())
                self.actor_opt.zero_grad(set_to_none=True)
                actor_loss.backward()
                clip_grad_norm(policy_params, c.max_grad_norm)
                self.actor_opt.step()
                stats["actor_loss"].append(actor_loss.detach())  # the QSM term plus c.bc_coeff × bc_loss
                stats["q_grad_norm"].append(grad_norm)

            polyak_update(self.critic, self.critic_target, c.tau)
        stats = {k: torch.stack(v).double().cpu().tolist() if v else [] for k, v in stats.items()}
        actor_iterations = iteration + 1 - c.critic_warmup_iterations
        if self.reference is not None and c.reference_update_every and actor_iterations > 0 \
                and actor_iterations % c.reference_update_every == 0:
            self.reference.load_state_dict(self.policy.state_dict())  # the next improvement step starts here
        out = {f"losses/{k}": float(np.mean(stats[k])) for k in ("critic_loss", "actor_loss", "bc_loss") if stats[k]}
        out["charts/q_mean"] = float(np.mean(stats["q"]))
        if stats["q_grad_norm"]:
            out["charts/q_grad_norm"] = float(np.mean(stats["q_grad_norm"]))
            if c.q_grad_normalize:
                out["charts/q_grad_scale"] = float(self.q_grad_rms())
        out["charts/actor_lr"] = self.actor_opt.param_groups[0]["lr"]
        out["charts/replay_size"] = float(len(self.replay))
        out["charts/gradient_steps"] = float(n_updates)
        return out
