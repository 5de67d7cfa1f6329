"""ReinFlow's learned exploration noise: σ(t, obs[, x]) squashed into [σ_min, σ_max].

The net outputs an unbounded value per action-chunk dimension that tanh squashes into
[log σ_min², log σ_max²] (bounded noise keeps exploration from collapsing or exploding). It exists
only during fine-tuning; an instance is directly usable as the ``reinflow`` sampler's ``noise_fn``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flowpolicy.networks import MLP, SinusoidalEmbedding


class NoiseNet(nn.Module):
    def __init__(self, action_dim: int, obs_dim: int, sigma_min: float = 0.10, sigma_max: float = 0.24,
                 hidden: tuple[int, ...] = (64, 64), time_embed_dim: int = 16, use_x: bool = False):
        super().__init__()
        if not 0 < sigma_min <= sigma_max:
            raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
        self.use_x = use_x
        self.time_embed = SinusoidalEmbedding(time_embed_dim)
        in_dim = time_embed_dim + obs_dim + (action_dim if use_x else 0)
        self.mlp = MLP(in_dim, list(hidden), action_dim, act="tanh")
        self.set_bounds(sigma_min, sigma_max)

    def set_bounds(self, sigma_min: float, sigma_max: float) -> None:
        """Move the squashing interval (a σ-bound schedule calls this between updates)."""
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.log_var_min, self.log_var_max = 2 * math.log(sigma_min), 2 * math.log(sigma_max)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        parts = [self.time_embed(t), obs] + ([x] if self.use_x else [])
        squashed = (torch.tanh(self.mlp(torch.cat(parts, dim=-1))) + 1.0) / 2.0
        log_var = self.log_var_min + (self.log_var_max - self.log_var_min) * squashed
        return (0.5 * log_var).exp()
