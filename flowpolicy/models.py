"""Generative action models and their behavior-cloning losses, in the project's one convention
(t = 0 noise, t = 1 data, ``x_t = t·a + (1 − t)·ε``).

* :class:`FlowModel`      rectified flow: a velocity net trained with conditional flow matching.
* :class:`ShortcutModel`  a flow whose net also takes the step size d and is trained with the shortcut
  self-consistency loss, so that 1–2 step sampling is good.
* :class:`DiffusionModel` DDPM ε-prediction on a cosine ᾱ(t) that rises from ≈ 0 at t = 0 to 1 at t = 1;
  sampled with DDIM-η at ``ᾱ(t_k)``, so K is a sampling choice like for flows.

Every model works on flattened, normalized action chunks x [B, D] (D = H·A) and flattened normalized
observation histories obs [B, O], and exposes ``model_fn(K)`` — the callable the samplers evaluate —
and ``sampler(name, K, **params)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flowpolicy.config import ConfigError
from flowpolicy.networks import ConditionalNet, NetworkConfig
from flowpolicy.samplers import ModelFn, Sampler, grid_times, make_sampler, time_grid

FLOW_SAMPLERS = ("ode", "reinflow", "flow_sde", "cps")


class FlowModel(nn.Module):
    """Rectified-flow velocity model v_θ(x, t, obs) with the conditional flow-matching BC loss."""

    kind = "flow"
    default_sampler_name = "ode"

    def __init__(self, action_dim: int, obs_dim: int, network: NetworkConfig):
        super().__init__()
        self.action_dim = action_dim
        self.net = ConditionalNet(action_dim, obs_dim, network, extra_scalars=self._extra_scalars())

    @staticmethod
    def _extra_scalars() -> int:
        return 0

    def velocity(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, obs)

    def model_fn(self, K: int) -> ModelFn:
        return self.velocity

    def sampler(self, name: str | None = None, K: int = 4, **params) -> Sampler:
        name = name or self.default_sampler_name
        if name not in FLOW_SAMPLERS:
            raise ConfigError(f"sampler {name!r} does not apply to a {self.kind} policy; use one of {FLOW_SAMPLERS}")
        return make_sampler(name, **params)

    def bc_loss(self, obs: torch.Tensor, actions: torch.Tensor, generator: torch.Generator | None = None
                ) -> torch.Tensor:
        """Conditional flow matching: ‖v_θ(t·a + (1 − t)·ε, t, obs) − (a − ε)‖², t ~ U(0, 1)."""
        noise = torch.randn(actions.shape, generator=generator, dtype=actions.dtype, device=actions.device)
        t = torch.rand(actions.shape[0], generator=generator, dtype=actions.dtype, device=actions.device)
        signal, sigma = self.coefficients(t)
        x_t = signal * actions + sigma * noise
        return (self.velocity(x_t, t, obs) - (actions - noise)).square().mean()

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal, noise level) [B, 1] of the probability path ``x_t = signal·a + noise_level·ε``: (t, 1 − t)."""
        return t[:, None], 1.0 - t[:, None]

    def noise_prediction(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """ε̂ implied by the velocity: ``x = t·â + (1 − t)·ε̂`` and ``v = â − ε̂`` give ``ε̂ = x − t·v``."""
        return x - t[:, None] * self.velocity(x, t, obs)


class ShortcutModel(FlowModel):
    """Shortcut model (Frans et al.): s_θ(x, t, d) with d the step size. Flow matching trains the
    smallest step d_min = 2^-M; self-consistency ``s(x, t, 2d) = ½[s(x, t, d) + s(x + d·s(x, t, d), t + d, d)]``
    trains the larger ones on the same dyadic time grids the sampler uses."""

    kind = "shortcut"

    def __init__(self, action_dim: int, obs_dim: int, network: NetworkConfig, max_log2_steps: int = 7,
                 self_consistency_fraction: float = 0.25):
        super().__init__(action_dim, obs_dim, network)
        self.max_log2_steps = max_log2_steps
        self.self_consistency_fraction = self_consistency_fraction

    @staticmethod
    def _extra_scalars() -> int:
        return 1

    def step_velocity(self, x, t, obs, d: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, obs, extra=d)

    def model_fn(self, K: int) -> ModelFn:
        d = max(1.0 / K, 2.0**-self.max_log2_steps)

        def velocity(x, t, obs):
            return self.step_velocity(x, t, obs, torch.full_like(t, d))

        return velocity

    def velocity(self, x, t, obs):
        return self.model_fn(2**self.max_log2_steps)(x, t, obs)

    def bc_loss(self, obs, actions, generator=None):
        B, M = actions.shape[0], self.max_log2_steps
        opts = dict(dtype=actions.dtype, device=actions.device)
        n_sc = int(round(B * self.self_consistency_fraction)) if M > 0 else 0
        noise = torch.randn(actions.shape, generator=generator, **opts)

        # Per row: the number of steps N of the grid it trains on; t is a grid point k/N with k < N.
        # Flow-matching rows use the finest grid N = 2^M with d = 1/N; self-consistency rows train the
        # step 2d = 1/N (N = 2^j, j < M) from two steps of size d on the twice-finer grid.
        log2_n = torch.full((B,), M, dtype=torch.long, device=actions.device)
        if n_sc:
            log2_n[:n_sc] = torch.randint(0, M, (n_sc,), generator=generator, device=actions.device)
        n = 2**log2_n
        k = (torch.rand(B, generator=generator, **opts) * n).long().clamp(max=n - 1)
        t = grid_times(k, n).to(**opts)
        x_t = t[:, None] * actions + (1.0 - t[:, None]) * noise

        target = actions - noise
        d = 1.0 / n.to(**opts)
        if n_sc:
            with torch.no_grad():
                sc = slice(0, n_sc)
                half = d[sc] / 2.0
                v1 = self.step_velocity(x_t[sc], t[sc], obs[sc], half)
                x_mid = x_t[sc] + half[:, None] * v1
                v2 = self.step_velocity(x_mid, t[sc] + half, obs[sc], half)
                target = torch.cat([(v1 + v2) / 2.0, target[n_sc:]])
        pred = self.step_velocity(x_t, t, obs, d)
        return (pred - target).square().mean()


class GuidedFlowModel(FlowModel):
    """CFGRL's optimality-conditioned flow: one velocity network v_θ(x, t, obs, o) with a learned label
    embedding o ∈ {∅, 0, 1} (``NULL``, ``BAD``, ``GOOD``), trained with the label dropped to ∅ with
    probability ``label_dropout``. Sampling uses the guided velocity ``v = v_∅ + w·(v_1 − v_∅)`` with the
    guidance weight w = ``self.guidance`` (settable at sampling time); both evaluations run as one batched
    pass. w = 0 is the unconditional policy, w = 1 the o = 1 conditional, w > 1 extrapolates past it."""

    kind = "guided_flow"
    NULL, BAD, GOOD = 0, 1, 2

    def __init__(self, action_dim: int, obs_dim: int, network: NetworkConfig, label_dim: int = 16,
                 guidance: float = 1.0, label_dropout: float = 0.1):
        nn.Module.__init__(self)
        self.action_dim = action_dim
        self.guidance, self.label_dropout = guidance, label_dropout
        self.net = ConditionalNet(action_dim, obs_dim, network, num_labels=3, label_dim=label_dim)

    def conditional_velocity(self, x, t, obs, label: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, obs, label=label)

    def velocity(self, x, t, obs):
        B, w = x.shape[0], self.guidance
        if w == 0.0:
            return self.conditional_velocity(x, t, obs, torch.full((B,), self.NULL, device=x.device))
        labels = torch.cat([torch.full((B,), self.NULL, device=x.device), torch.full((B,), self.GOOD, device=x.device)])
        v_null, v_good = self.conditional_velocity(torch.cat([x, x]), torch.cat([t, t]), torch.cat([obs, obs]),
                                                   labels).chunk(2)
        return v_null + w * (v_good - v_null)

    def bc_loss(self, obs, actions, generator=None, labels: torch.Tensor | None = None):
        """Conditional flow matching with labels (default: all ∅), each dropped to ∅ w.p. label_dropout."""
        B = actions.shape[0]
        if labels is None:
            labels = torch.full((B,), self.NULL, dtype=torch.long, device=actions.device)
        drop = torch.rand(B, generator=generator, device=actions.device) < self.label_dropout
        labels = torch.where(drop, torch.full_like(labels, self.NULL), labels)
        noise = torch.randn(actions.shape, generator=generator, dtype=actions.dtype, device=actions.device)
        t = torch.rand(B, generator=generator, dtype=actions.dtype, device=actions.device)
        signal, sigma = self.coefficients(t)
        x_t = signal * actions + sigma * noise
        return (self.conditional_velocity(x_t, t, obs, labels) - (actions - noise)).square().mean()


def cosine_alphas_cumprod(t: torch.Tensor, s: float = 0.008, alpha_min: float = 1e-4) -> torch.Tensor:
    """ᾱ(t) of the cosine schedule (Nichol & Dhariwal) in flow time: ≈ 0 at t = 0, exactly 1 at t = 1.
    Clamped below at ``alpha_min`` so that x̂₀ = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ) stays finite at t = 0."""
    u = 1.0 - t.double()  # DDPM's diffusion time: 0 = data
    f = torch.cos((u + s) / (1.0 + s) * math.pi / 2.0).square()
    f0 = math.cos(s / (1.0 + s) * math.pi / 2.0) ** 2
    return (f / f0).clamp(min=alpha_min, max=1.0).to(t.dtype if t.is_floating_point() else torch.float32)


class DiffusionModel(nn.Module):
    """DDPM ε-prediction model ε_θ(x_t, t, obs), ``x_t = sqrt(ᾱ(t))·a + sqrt(1 − ᾱ(t))·ε``, sampled with
    DDIM-η (η = 0: deterministic, the evaluation default)."""

    kind = "diffusion"
    default_sampler_name = "ddim"

    def __init__(self, action_dim: int, obs_dim: int, network: NetworkConfig, cosine_s: float = 0.008,
                 alpha_min: float = 1e-4, clip_denoised: bool = True):
        super().__init__()
        self.action_dim = action_dim
        self.cosine_s = cosine_s
        self.alpha_min = alpha_min
        self.clip_denoised = clip_denoised
        self.net = ConditionalNet(action_dim, obs_dim, network)

    def alphas_cumprod(self, t: torch.Tensor) -> torch.Tensor:
        return cosine_alphas_cumprod(t, self.cosine_s, self.alpha_min)

    def epsilon(self, x, t, obs):
        return self.net(x, t, obs)

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal, noise level) [B, 1] of ``x_t = sqrt(ᾱ)·a + sqrt(1 − ᾱ)·ε``."""
        alpha = self.alphas_cumprod(t)[:, None]
        return alpha.sqrt(), (1.0 - alpha).sqrt()

    def noise_prediction(self, x, t, obs):
        return self.epsilon(x, t, obs)

    def model_fn(self, K: int) -> ModelFn:
        return self.clipped_epsilon if self.clip_denoised else self.epsilon

    def clipped_epsilon(self, x, t, obs):
        """ε̂ re-derived from the data prediction x̂₀ clipped to the action box [−1, 1] (diffusers'
        ``clip_sample``). At high noise x̂₀ = (x − sqrt(1 − ᾱ)·ε̂)/sqrt(ᾱ) divides by sqrt(ᾱ) ≈ 0.01, and
        with few DDIM steps its error lands in the action. The clip lives in the model function, not the
        sampler: each transition stays an exact Gaussian whose mean is a (clipped) function of x_k, used
        identically at rollout and recomputation. Only called at t < 1, where 1 − ᾱ > 0."""
        eps = self.epsilon(x, t, obs)
        alpha = self.alphas_cumprod(t)[:, None]
        x0 = ((x - (1 - alpha).sqrt() * eps) / alpha.sqrt()).clamp(-1.0, 1.0)
        return (x - alpha.sqrt() * x0) / (1 - alpha).sqrt()

    def sampler(self, name: str | None = None, K: int = 4, **params) -> Sampler:
        name = name or self.default_sampler_name
        if name != "ddim":
            raise ConfigError(f"sampler {name!r} does not apply to a diffusion (ε-prediction) policy; use 'ddim'")
        params.setdefault("eta", 0.0)
        params.setdefault("alphas_cumprod", self.alphas_cumprod(time_grid(K, dtype=torch.float64)))
        return make_sampler("ddim", **params)

    def bc_loss(self, obs, actions, generator=None):
        """ε-prediction MSE at t ~ U(0, 1)."""
        noise = torch.randn(actions.shape, generator=generator, dtype=actions.dtype, device=actions.device)
        t = torch.rand(actions.shape[0], generator=generator, dtype=actions.dtype, device=actions.device)
        signal, sigma = self.coefficients(t)
        x_t = signal * actions + sigma * noise
        return (self.epsilon(x_t, t, obs) - noise).square().mean()


MODEL_KINDS = {"flow": FlowModel, "shortcut": ShortcutModel, "diffusion": DiffusionModel,
               "guided_flow": GuidedFlowModel}
