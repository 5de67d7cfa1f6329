"""The policy: a generative action model plus its normalizers and chunk geometry.

A :class:`Policy` maps a raw observation history [B, n_obs, obs_dim] to a chunk of H raw actions
[B, H, A]. Inside, everything is normalized and flattened: the condition is obs [B, n_obs·obs_dim] and
the model generates x [B, H·A] in [−1, 1]-normalized action space. The one place where actions are
clipped is :meth:`Policy.env_actions` (the chain keeps the unclipped x_K, so log-probs of a stored chain
are recomputed on exactly what was sampled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from flowpolicy import draws
from flowpolicy.config import param
from flowpolicy.models import MODEL_KINDS
from flowpolicy.networks import NetworkConfig
from flowpolicy.normalizers import ActionNormalizer, ObservationNormalizer
from flowpolicy.samplers import Chain, Sampler


@dataclass
class PolicyConfig:
    """Shape and kind of a policy. ``act_steps`` of the H chunk actions are executed per decision."""

    kind: Literal["flow", "shortcut", "diffusion", "guided_flow"] = param(
        "flow", "generative model: rectified flow, shortcut flow, DDPM ε-diffusion, or guided_flow (CFGRL)")
    obs_dim: int = param(0, "observation size (from the dataset)", ge=0)
    action_dim: int = param(0, "action size (from the dataset)", ge=0)
    horizon: int = param(4, "H: actions per generated chunk", ge=1)
    act_steps: int | None = param(None, "actions of each chunk executed before replanning (null: all H)", ge=1)
    n_obs_steps: int = param(1, "observations in the condition (history length)", ge=1)
    num_steps: int = param(4, "default K, denoising steps at sampling time (evaluation uses it unless told)", ge=1)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    shortcut_max_log2_steps: int = param(7, "shortcut: finest step size 2^-this in training", ge=0)
    shortcut_self_consistency_fraction: float = param(0.25, "shortcut: share of each batch trained for "
                                                            "self-consistency", ge=0, le=1)
    diffusion_cosine_s: float = param(0.008, "diffusion: offset s of the cosine ᾱ(t) schedule", ge=0)
    diffusion_alpha_min: float = param(1e-4, "diffusion: floor of ᾱ at t = 0", gt=0, lt=1)
    diffusion_clip_denoised: bool = param(True, "diffusion: clip DDIM's x̂₀ to [−1, 1] "
                                                "(see DiffusionModel.clipped_epsilon)")
    guidance: float = param(1.0, "guided_flow: sampling guidance weight w (set per run with Policy.set_guidance)")
    guidance_label_dim: int = param(16, "guided_flow: size of the optimality-label embedding", ge=1)
    guidance_label_dropout: float = param(0.1, "guided_flow: label dropout in training", ge=0, lt=1)

    def __post_init__(self):
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"policy kind {self.kind!r} unknown; choose one of {sorted(MODEL_KINDS)}")
        for name in ("obs_dim", "action_dim", "horizon", "n_obs_steps", "num_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"policy {name} must be ≥ 1, got {getattr(self, name)}")
        if self.act_steps is None:
            self.act_steps = self.horizon
        if not 1 <= self.act_steps <= self.horizon:
            raise ValueError(f"act_steps must be in [1, horizon={self.horizon}], got {self.act_steps}")

    @property
    def chunk_dim(self) -> int:
        return self.horizon * self.action_dim

    @property
    def cond_dim(self) -> int:
        return self.n_obs_steps * self.obs_dim


class Policy(nn.Module):
    def __init__(self, config: PolicyConfig, obs_normalizer: ObservationNormalizer | None = None,
                 action_normalizer: ActionNormalizer | None = None):
        super().__init__()
        self.config = config
        self.obs_normalizer = obs_normalizer or ObservationNormalizer.identity(config.obs_dim)
        self.action_normalizer = action_normalizer or ActionNormalizer.identity(config.action_dim)
        if self.obs_normalizer.mean.shape[0] != config.obs_dim:
            raise ValueError(f"observation normalizer has {self.obs_normalizer.mean.shape[0]} dims, "
                             f"policy obs_dim is {config.obs_dim}")
        if self.action_normalizer.center.shape[0] != config.action_dim:
            raise ValueError(f"action normalizer has {self.action_normalizer.center.shape[0]} dims, "
                             f"policy action_dim is {config.action_dim}")
        kind_args = {
            "shortcut": {"max_log2_steps": config.shortcut_max_log2_steps,
                         "self_consistency_fraction": config.shortcut_self_consistency_fraction},
            "diffusion": {"cosine_s": config.diffusion_cosine_s, "alpha_min": config.diffusion_alpha_min,
                          "clip_denoised": config.diffusion_clip_denoised},
            "guided_flow": {"label_dim": config.guidance_label_dim, "guidance": config.guidance,
                            "label_dropout": config.guidance_label_dropout},
        }.get(config.kind, {})
        self.model = MODEL_KINDS[config.kind](config.chunk_dim, config.cond_dim, config.network, **kind_args)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- conditioning and actions ---------------------------------------------------------------
    def condition(self, obs_history: torch.Tensor) -> torch.Tensor:
        """Raw observation history [B, n_obs, obs_dim] (or [B, obs_dim] when n_obs = 1) → [B, cond_dim]."""
        obs = self.obs_normalizer.normalize(obs_history)
        return obs.reshape(obs.shape[0], self.config.cond_dim)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Raw action chunks [B, H, A] → flattened normalized x [B, H·A] (the model's data space)."""
        return self.action_normalizer.normalize(actions).reshape(actions.shape[0], self.config.chunk_dim)

    def env_actions(self, x: torch.Tensor) -> torch.Tensor:
        """Final chain state x_K [B, H·A] → raw action chunk [B, H, A]: clip to [−1, 1], un-normalize."""
        chunk = x.clamp(-1.0, 1.0).reshape(x.shape[0], self.config.horizon, self.config.action_dim)
        return self.action_normalizer.unnormalize(chunk)

    def set_guidance(self, w: float) -> None:
        """Guidance weight w of a ``guided_flow`` policy (kept in its config, so a saved policy samples
        with the w it was saved with)."""
        if self.config.kind != "guided_flow":
            raise ValueError(f"guidance applies to guided_flow policies (CFGRL), not {self.config.kind!r}")
        self.config.guidance = self.model.guidance = float(w)

    # -- sampling ---------------------------------------------------------------------------------
    def make_sampler(self, name: str | None = None, K: int | None = None, **params) -> Sampler:
        """The sampler ``name`` (default: ODE for flows, DDIM η = 0 for diffusion) for K steps."""
        return self.model.sampler(name, K or self.config.num_steps, **params)

    def sample(self, cond: torch.Tensor, sampler: Sampler | None = None, K: int | None = None,
               generator: draws.Generator = None) -> Chain:
        """Sample chains for normalized conditions [B, cond_dim]; x_0 ~ N(0, I) (per row from
        :class:`~flowpolicy.draws.RowGenerators`, where given)."""
        K = K or self.config.num_steps
        sampler = sampler or self.make_sampler(K=K)
        x0 = draws.randn((cond.shape[0], self.config.chunk_dim), generator=generator, device=cond.device,
                         dtype=cond.dtype)
        return sampler.sample(self.model.model_fn(K), cond, x0, K, generator=generator)

    def chain_log_prob(self, cond: torch.Tensor, chain_xs: torch.Tensor, sampler: Sampler) -> torch.Tensor:
        """Per-step log-probs [B, K] of stored chains under the current parameters (one forward pass)."""
        K = chain_xs.shape[1] - 1
        return sampler.log_prob(self.model.model_fn(K), cond, chain_xs, K)

    def bc_loss(self, cond: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None):
        return self.model.bc_loss(cond, x, generator=generator)
