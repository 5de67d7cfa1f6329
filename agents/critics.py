"""Critics over (condition, normalized action chunk) for the off-policy learners: twin Q networks (QSM's
TD3-style critic, CFGRL's IQL critic), a state-value network, and IQL's expectile loss."""

from __future__ import annotations

import torch
from torch import nn

from flowpolicy.networks import MLP


class DoubleQ(nn.Module):
    """Two independent Q(s, a) MLPs on [condition, normalized action chunk]."""

    def __init__(self, cond_dim: int, action_dim: int, hidden: list[int], activation: str = "silu"):
        super().__init__()
        self.q1 = MLP(cond_dim + action_dim, hidden, 1, activation)
        self.q2 = MLP(cond_dim + action_dim, hidden, 1, activation)

    def forward(self, cond: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([cond, actions], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ValueNet(nn.Module):
    """V(s) on the condition."""

    def __init__(self, cond_dim: int, hidden: list[int], activation: str = "silu"):
        super().__init__()
        self.net = MLP(cond_dim, hidden, 1, activation)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond).squeeze(-1)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL's asymmetric L2 on diff = Q − V: weight τ where diff > 0, 1 − τ elsewhere (τ = 0.5: MSE/2·2)."""
    weight = torch.where(diff > 0, expectile, 1.0 - expectile)
    return (weight * diff.square()).mean()


def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """target ← (1 − τ)·target + τ·source (one multi-tensor lerp: the numbers of a per-parameter ``lerp_``)."""
    with torch.no_grad():
        sources, targets = list(source.parameters()), list(target.parameters())
        if len(sources) != len(targets):
            raise ValueError(f"polyak_update: {len(sources)} source parameters, {len(targets)} target ones")
        torch._foreach_lerp_(targets, sources, tau)


def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``nn.utils.clip_grad_norm_(params, max_norm)`` for the parameters' gradients (same norm, same scaling)
    with multi-tensor kernels: the total 2-norm of the per-tensor norms, gradients scaled by
    min(1, max_norm/(norm + 1e-6)). Returns the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, (max_norm / (total + 1e-6)).clamp(max=1.0))
    return total
