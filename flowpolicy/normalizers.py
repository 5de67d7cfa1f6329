"""Observation and action normalizers, fit from demonstration data and saved with the policy as JSON.

Actions are mapped affinely from the dataset's per-dimension [min, max] to [−1, 1] (the policy's
action space; the env sees un-normalized actions). Observations are standardized with the dataset
mean and std and clipped to ±``clip`` so that an out-of-distribution state cannot blow up the net.

They are ``nn.Module``s with non-persistent buffers, so they follow the policy to its device while
their numbers live in the checkpoint's JSON (``to_dict``/``from_dict``), not in the tensor file.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

_EPS = 1e-6


def _as_2d_array(x) -> np.ndarray:
    a = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    return a.reshape(-1, a.shape[-1])


class ActionNormalizer(nn.Module):
    """Min-max map of each action dimension onto [−1, 1]; constant dimensions map to 0."""

    def __init__(self, low, high):
        super().__init__()
        low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        if low.shape != high.shape or low.ndim != 1:
            raise ValueError(f"action normalizer needs 1-D low/high of one shape, got {low.shape}, {high.shape}")
        self.low_np, self.high_np = low, high
        self.register_buffer("center", torch.as_tensor((high + low) / 2, dtype=torch.float32), persistent=False)
        self.register_buffer("scale", torch.as_tensor(np.maximum((high - low) / 2, _EPS), dtype=torch.float32),
                             persistent=False)

    @classmethod
    def fit(cls, actions) -> ActionNormalizer:
        a = _as_2d_array(actions)
        return cls(a.min(0), a.max(0))

    @classmethod
    def identity(cls, dim: int) -> ActionNormalizer:
        return cls(-np.ones(dim), np.ones(dim))

    def normalize(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.center) / self.scale

    def unnormalize(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.scale + self.center

    def to_dict(self) -> dict:
        return {"type": "minmax", "low": self.low_np.tolist(), "high": self.high_np.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> ActionNormalizer:
        return cls(d["low"], d["high"])


class ObservationNormalizer(nn.Module):
    """Standardize each observation dimension, then clip to ±clip."""

    def __init__(self, mean, std, clip: float = 10.0):
        super().__init__()
        mean, std = np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1:
            raise ValueError(f"observation normalizer needs 1-D mean/std of one shape, got {mean.shape}, {std.shape}")
        self.mean_np, self.std_np, self.clip = mean, std, float(clip)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.as_tensor(np.maximum(std, _EPS), dtype=torch.float32), persistent=False)

    @classmethod
    def fit(cls, observations, clip: float = 10.0) -> ObservationNormalizer:
        o = _as_2d_array(observations)
        return cls(o.mean(0), o.std(0), clip)

    @classmethod
    def identity(cls, dim: int) -> ObservationNormalizer:
        return cls(np.zeros(dim), np.ones(dim), float("inf"))

    def normalize(self, o: torch.Tensor) -> torch.Tensor:
        return ((o - self.mean) / self.std).clamp(-self.clip, self.clip)

    def to_dict(self) -> dict:
        # JSON has no infinity; None stands for "no clipping".
        clip = None if np.isinf(self.clip) else self.clip
        return {"type": "standard", "mean": self.mean_np.tolist(), "std": self.std_np.tolist(), "clip": clip}

    @classmethod
    def from_dict(cls, d: dict) -> ObservationNormalizer:
        return cls(d["mean"], d["std"], float("inf") if d.get("clip") is None else d["clip"])
