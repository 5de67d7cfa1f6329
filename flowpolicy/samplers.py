"""Samplers for flow and diffusion policies, with exact per-step log-likelihoods.

Every sampler is a chain of K Gaussian transitions ``x_{k+1} ~ N(mean_k, std_k²)`` from noise
(k = 0, t = 0) to action (k = K, t = 1) on the single time grid ``t_k = k/K`` (:func:`time_grid`).
Each sampler only defines :meth:`Sampler.transition` — the mean and std of one step — and the base
class derives both sampling and log-prob recomputation from it, so rollout and recomputation cannot
drift apart. Steps with std = 0 are deterministic and carry log-prob 0.

The formulas (flow time t: 0 = noise, 1 = data; s = 1 − t is the noise level):

* ``ode``       Euler: ``x' = x + Δ·v``.
* ``reinflow``  ``x' ~ N(x + Δ·v, σ²)``, σ = ``noise_fn(x, t, obs)`` (a learned noise network).
* ``flow_sde``  Flow-GRPO's SDE in our time direction: ``σ_t = a·sqrt((1 − t)/t)`` (t clamped to ≥ t_1
  for σ_t only), ``mean = x + Δ·[v − σ_t²/(2(1 − t))·(x − t·v)]``, std ``σ_t·sqrt(Δ)``.
* ``cps``       coefficients-preserving: ``x' = t'·â + (1 − t')·cos(ηπ/2)·ε̂ + (1 − t')·sin(ηπ/2)·ξ``
  with ``â = x + (1 − t)·v`` and ``ε̂ = x − t·v``.
* ``ddim``      DDIM-η for ε-models on ᾱ_k (``alphas_cumprod``, K+1 entries, ᾱ_K = 1).

Samplers are pure math: nothing is clipped here (the policy clips the final action, identically at
rollout and recomputation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from flowpolicy import draws
from flowpolicy.config import ConfigError

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def time_grid(K: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The one time grid of the project: ``t_k = k/K`` for k = 0..K (t = 0 noise, t = 1 data)."""
    if int(K) != K or K < 1:
        raise ValueError(f"number of denoising steps K must be a positive integer, got {K!r}")
    K = int(K)
    return grid_times(torch.arange(K + 1, device=device), K).to(dtype)


def grid_times(k: torch.Tensor, K: int | torch.Tensor) -> torch.Tensor:
    """Grid times ``k/K`` (float64) for step indices k — elementwise, so rows may use different K.
    :func:`time_grid` is this over k = 0..K; training code that draws grid points calls it directly."""
    return k.double() / torch.as_tensor(K, dtype=torch.float64, device=k.device)


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, std²) summed over the last dimension; entries with std = 0 contribute 0.

    Evaluated in float64 so that rollout and recomputation agree to far better than 1e-5 even for
    small σ and long action chunks; the result is returned in x's dtype.
    """
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).expand_as(x)
    stochastic = std > 0
    x64, mean64 = x.double(), mean.double()
    std64 = torch.where(stochastic, std, torch.ones_like(std)).double()
    z = (x64 - mean64) / std64
    log_density = -0.5 * z.square() - std64.log() - _LOG_SQRT_2PI
    return torch.where(stochastic, log_density, torch.zeros_like(log_density)).sum(-1).to(x.dtype)


@dataclass
class Chain:
    """One sampled denoising chain: ``xs`` is [B, K+1, D] (x_0 noise … x_K action, unclipped) and
    ``log_probs`` is [B, K], the per-transition log-densities (0 for deterministic steps)."""

    xs: torch.Tensor
    log_probs: torch.Tensor

    @property
    def actions(self) -> torch.Tensor:
        return self.xs[:, -1]

    @property
    def K(self) -> int:
        return self.xs.shape[1] - 1


class Sampler:
    """Base class: subclasses implement :meth:`transition`; sampling and log-probs follow from it."""

    name = "base"

    def transition(
        self, model_fn: ModelFn, x: torch.Tensor, k: torch.Tensor, K: int, obs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [N, D] and std (broadcastable to [N, D], ≥ 0) of step k → k+1 for each row.

        ``k`` is a LongTensor [N] of step indices, so rows of different steps can share one call
        (that is how :meth:`log_prob` evaluates all K steps in a single forward pass).
        """
        raise NotImplementedError

    # -- helpers shared by the subclasses -------------------------------------------------------
    @staticmethod
    def _times(k: torch.Tensor, K: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid times t_k and t_{k+1} per row (the values of :func:`time_grid`, without building it)."""
        return grid_times(k, K).to(like.dtype), grid_times(k + 1, K).to(like.dtype)

    # -- derived ---------------------------------------------------------------------------------
    def sample(
        self,
        model_fn: ModelFn,
        obs: torch.Tensor,
        x0: torch.Tensor,
        K: int,
        generator: draws.Generator = None,
    ) -> Chain:
        """Run the K transitions from ``x0`` [B, D]; returns the whole chain and its log-probs. The step noise
        is drawn per row where ``generator`` is :class:`~flowpolicy.draws.RowGenerators`."""
        K = int(time_grid(K).numel() - 1)  # validates K
        B = x0.shape[0]
        xs = [x0]
        log_probs = []
        x = x0
        for step in range(K):
            k = torch.full((B,), step, dtype=torch.long, device=x0.device)
            mean, std = self.transition(model_fn, x, k, K, obs)
            std = torch.as_tensor(std, dtype=mean.dtype, device=mean.device)
            if bool((std > 0).any()):
                noise = draws.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
                x_next = mean + std * noise
                log_probs.append(gaussian_log_prob(x_next, mean, std))
            else:  # a deterministic step: no draw, no log-prob
                x_next = mean
                log_probs.append(mean.new_zeros(B))
            xs.append(x_next)
            x = x_next
        return Chain(xs=torch.stack(xs, dim=1), log_probs=torch.stack(log_probs, dim=1))

    def log_prob(self, model_fn: ModelFn, obs: torch.Tensor, chain_xs: torch.Tensor, K: int) -> torch.Tensor:
        """Recompute the K transition log-densities [B, K] of stored chains ``chain_xs`` [B, K+1, D]
        in one batched model evaluation (the K steps are stacked along the batch)."""
        x_next, mean, std = self.step_distributions(model_fn, obs, chain_xs, K)
        return gaussian_log_prob(x_next, mean, std).reshape(chain_xs.shape[0], K)

    def step_distributions(self, model_fn: ModelFn, obs: torch.Tensor, chain_xs: torch.Tensor, K: int
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All K steps of stored chains at once: ``(x_{k+1}, mean_k, std_k)``, each [B·K, D] (std may
        broadcast), rows ordered chain-major. :meth:`log_prob` is the Gaussian density of these; learners
        that also need σ (an entropy bonus) take it from here instead of evaluating the noise net again."""
        B, steps, D = chain_xs.shape
        if steps != K + 1:
            raise ValueError(f"chain has {steps} states but K={K} needs K+1={K + 1}")
        x_from = chain_xs[:, :-1].reshape(B * K, D)
        x_next = chain_xs[:, 1:].reshape(B * K, D)
        k = torch.arange(K, device=chain_xs.device).repeat(B)
        mean, std = self.transition(model_fn, x_from, k, K, obs.repeat_interleave(K, dim=0))
        return x_next, mean, std

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not callable(v) and not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class ODESampler(Sampler):
    """Deterministic Euler integration of the flow ODE; every step has log-prob 0."""

    name = "ode"

    def transition(self, model_fn, x, k, K, obs):
        t, _ = self._times(k, K, x)
        v = model_fn(x, t, obs)
        return x + v / K, torch.zeros((), dtype=x.dtype, device=x.device)


class ReinFlowSampler(Sampler):
    """Euler step plus learned Gaussian noise: ``x' ~ N(x + Δ·v, noise_fn(x, t, obs)²)``."""

    name = "reinflow"

    def __init__(self, noise_fn: NoiseFn):
        if noise_fn is None or not callable(noise_fn):
            raise ConfigError("the reinflow sampler needs noise_fn(x, t, obs) -> std")
        self.noise_fn = noise_fn

    def transition(self, model_fn, x, k, K, obs):
        t, _ = self._times(k, K, x)
        v = model_fn(x, t, obs)
        return x + v / K, self.noise_fn(x, t, obs)


class FlowSDESampler(Sampler):
    """Flow-GRPO's marginal-preserving SDE, written for t: 0 → 1 (a = 0 is the ODE)."""

    name = "flow_sde"

    def __init__(self, a: float = 0.7):
        if a < 0:
            raise ConfigError(f"flow_sde noise scale a must be ≥ 0, got {a}")
        self.a = float(a)

    def sigma(self, t: torch.Tensor, K: int) -> torch.Tensor:
        """σ_t = a·sqrt((1 − t)/t), with t clamped to ≥ t_1 = 1/K (σ diverges at t = 0)."""
        t_safe = t.clamp(min=1.0 / K)
        return self.a * ((1.0 - t_safe) / t_safe).sqrt()

    def transition(self, model_fn, x, k, K, obs):
        t, _ = self._times(k, K, x)
        v = model_fn(x, t, obs)
        sigma = self.sigma(t, K).unsqueeze(-1)
        eps_hat = x - t.unsqueeze(-1) * v
        # (1 − t) ≥ 1/K on every step we take (t ≤ (K−1)/K), so no division by zero here.
        drift = v - sigma.square() / (2.0 * (1.0 - t.unsqueeze(-1))) * eps_hat
        return x + drift / K, sigma * math.sqrt(1.0 / K)


class CPSSampler(Sampler):
    """Coefficients-preserving sampling (Flow-CPS): the noise level after each step is exactly 1 − t'.

    What it preserves is the *noise coefficient* of x = t·â + (1 − t)·ε̂, not the flow's marginals: at η > 0
    the fresh noise replaces part of ε̂, which the velocity field would have mapped to the data's spread, so
    samples come out narrower than the data even as K → ∞ (Gaussian data s = 0.3: std ≈ 0.24 at η = 0.8;
    tested). Flow-SDE keeps the marginals but widens every finite-K chain with its excess noise."""

    name = "cps"

    def __init__(self, eta: float = 0.8):
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"cps eta must be in [0, 1], got {eta}")
        self.eta = float(eta)

    def transition(self, model_fn, x, k, K, obs):
        t, t_next = self._times(k, K, x)
        v = model_fn(x, t, obs)
        t, t_next = t.unsqueeze(-1), t_next.unsqueeze(-1)
        a_hat = x + (1.0 - t) * v
        eps_hat = x - t * v
        angle = self.eta * math.pi / 2.0
        mean = t_next * a_hat + (1.0 - t_next) * math.cos(angle) * eps_hat
        return mean, (1.0 - t_next) * math.sin(angle)


class DDIMSampler(Sampler):
    """DDIM-η for ε-prediction models on the chain index (ᾱ rises from k to k+1; ᾱ_K = 1).

    ``min_std``: DPPO's exploration floor — every step's σ is max(σ_η, min_std), including the last step, which
    η alone leaves deterministic; the mean stays DDIM-η's. The transition is still an exact Gaussian, so the
    per-step likelihoods stay exact (of the floored chain)."""

    name = "ddim"

    def __init__(self, eta: float = 1.0, alphas_cumprod: torch.Tensor | None = None, min_std: float = 0.0):
        if alphas_cumprod is None:
            raise ValueError("the ddim sampler needs alphas_cumprod (K+1 values, small at k=0, 1 at k=K)")
        if not 0.0 <= eta <= 1.0:
            raise ConfigError(f"ddim eta must be in [0, 1], got {eta}")
        alphas = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        if alphas.ndim != 1 or alphas.numel() < 2:
            raise ValueError("alphas_cumprod must be a 1-D tensor with K+1 ≥ 2 entries")
        if not torch.all(alphas[1:] >= alphas[:-1]) or alphas[0] <= 0 or alphas[-1] != 1 or alphas[-2] >= 1:
            # ᾱ_K = 1 makes the last step deterministic (an almost-1 value gives it a tiny σ and a log-prob
            # dominated by rounding); ᾱ_{K−1} = 1 as well would make its variance 0/0
            raise ValueError("alphas_cumprod must rise from > 0 at k=0 to exactly 1 at k=K (and < 1 before)")
        if not min_std >= 0.0:
            raise ConfigError(f"ddim min_std must be ≥ 0, got {min_std}")
        self.eta = float(eta)
        self.min_std = float(min_std)
        self.alphas_cumprod = alphas

    def transition(self, model_fn, x, k, K, obs):
        if self.alphas_cumprod.numel() != K + 1:
            raise ValueError(f"ddim sampler has {self.alphas_cumprod.numel()} alphas_cumprod, K={K} needs {K + 1}")
        t, _ = self._times(k, K, x)
        eps_hat = model_fn(x, t, obs)
        alphas = self.alphas_cumprod.to(device=x.device)
        a_now, a_next = alphas[k].unsqueeze(-1), alphas[k + 1].unsqueeze(-1)
        var = self.eta**2 * (1.0 - a_next) / (1.0 - a_now) * (1.0 - a_now / a_next)
        var = var.clamp(min=0.0)
        x0_hat = (x - (1.0 - a_now).sqrt().to(x.dtype) * eps_hat) / a_now.sqrt().to(x.dtype)
        mean = a_next.sqrt().to(x.dtype) * x0_hat + (1.0 - a_next - var).clamp(min=0.0).sqrt().to(x.dtype) * eps_hat
        return mean, var.sqrt().clamp(min=self.min_std).to(x.dtype)


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls for cls in (ODESampler, ReinFlowSampler, FlowSDESampler, CPSSampler, DDIMSampler)
}


def make_sampler(name: str, **params) -> Sampler:
    """Build a sampler by name: ``ode``, ``reinflow`` (noise_fn), ``flow_sde`` (a), ``cps`` (eta),
    ``ddim`` (eta, alphas_cumprod, min_std)."""
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}") from None
    try:
        return cls(**params)
    except TypeError as err:
        raise ConfigError(f"bad parameters for sampler {name!r}: {err}") from None
