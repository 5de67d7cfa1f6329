"""On-policy rollout storage and generalized advantage estimation (GAE).

Per decision (one action chunk) the buffer keeps: the policy condition (normalized observation
history), the whole denoising chain x_0 … x_K, its per-step log-probs, the value estimate, the chunk
reward, ``terminated`` and ``truncated`` apart, and the condition of the *true* next observation
(the final observation where the episode ended — :class:`envs.vector.VecEnv` reports it — so a
truncated episode can be bootstrapped from where it really stopped).

GAE, in one place for every learner:

    δ_t = r_t + γ·(1 − terminated_t)·V(s'_t) − V(s_t)
    A_t = δ_t + γ·λ·(1 − (terminated_t or truncated_t))·A_{t+1}

so time-limit truncation bootstraps from V(final observation) while termination does not, and the
λ-trace never crosses an episode boundary. γ applies once per decision (chunk rewards are summed
undiscounted inside the chunk, see :mod:`envs.vector`).
"""

from __future__ import annotations

import numpy as np
import torch


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
                terminated: torch.Tensor, truncated: torch.Tensor, gamma: float, lam: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns [T, N] from per-decision rewards, V(s_t), V(s'_t) and end flags [T, N].

    ``next_values[t]`` must be V of the true next observation of step t (the final observation when the
    episode ended there). The last step of the rollout bootstraps from it unless terminated.
    """
    T = rewards.shape[0]
    term, trunc = terminated.float(), truncated.float()
    deltas = rewards + gamma * (1.0 - term) * next_values - values
    carry = 1.0 - torch.maximum(term, trunc)  # the trace is cut at every episode end
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(T)):
        running = deltas[t] + gamma * lam * carry[t] * running
        advantages[t] = running
    return advantages, advantages + values


class RolloutBuffer:
    """Fixed-size [T, N] storage of decisions for N envs, filled step by step, then flattened."""

    def __init__(self, num_steps: int, num_envs: int, cond_dim: int, chain_shape: tuple[int, int],
                 device: str | torch.device = "cpu", extra_shapes: dict[str, tuple[int, ...]] | None = None):
        """``extra_shapes``: further per-decision tensors a learner stores (e.g. FPO's (τ, ε) pairs), passed
        to :meth:`add` by name and returned by :meth:`minibatches`."""
        T, N = num_steps, num_envs
        K1, D = chain_shape
        self.T, self.N, self.device = T, N, torch.device(device)
        z = dict(device=self.device)
        self.cond = torch.zeros(T, N, cond_dim, **z)
        self.next_cond = torch.zeros(T, N, cond_dim, **z)
        self.chains = torch.zeros(T, N, K1, D, **z)
        self.log_probs = torch.zeros(T, N, K1 - 1, **z)
        self.values = torch.zeros(T, N, **z)
        self.next_values = torch.zeros(T, N, **z)
        self.rewards = torch.zeros(T, N, **z)
        self.terminated = torch.zeros(T, N, dtype=torch.bool, **z)
        self.truncated = torch.zeros(T, N, dtype=torch.bool, **z)
        self.advantages = torch.zeros(T, N, **z)
        self.returns = torch.zeros(T, N, **z)
        self.extras = {name: torch.zeros(T, N, *shape, **z) for name, shape in (extra_shapes or {}).items()}
        self.step = 0

    def add(self, cond, chain_xs, log_probs, values, rewards, terminated, truncated, next_cond, **extras) -> None:
        if self.step >= self.T:
            raise IndexError("rollout buffer is full")
        t = self.step
        self.cond[t] = cond
        self.chains[t] = chain_xs
        self.log_probs[t] = log_probs
        self.values[t] = values
        self.rewards[t] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.terminated[t] = torch.as_tensor(np.asarray(terminated), device=self.device)
        self.truncated[t] = torch.as_tensor(np.asarray(truncated), device=self.device)
        self.next_cond[t] = next_cond
        for name, value in extras.items():
            self.extras[name][t] = value
        self.step += 1

    @property
    def full(self) -> bool:
        return self.step == self.T

    def finish(self, value_fn, gamma: float, lam: float) -> None:
        """Evaluate V(s'_t) for every step in one batch, then GAE."""
        with torch.no_grad():
            self.next_values = value_fn(self.next_cond.reshape(self.T * self.N, -1)).reshape(self.T, self.N)
        self.advantages, self.returns = compute_gae(self.rewards, self.values, self.next_values, self.terminated,
                                                    self.truncated, gamma, lam)

    def reset(self) -> None:
        self.step = 0

    def flat(self) -> dict[str, torch.Tensor]:
        """All T·N decisions as flat tensors by name (what :func:`agents.ppo.ppo_epochs` takes)."""
        n = self.T * self.N
        return {
            "cond": self.cond.reshape(n, -1), "chains": self.chains.reshape(n, *self.chains.shape[2:]),
            "log_probs": self.log_probs.reshape(n, -1), "values": self.values.reshape(n),
            "advantages": self.advantages.reshape(n), "returns": self.returns.reshape(n),
            **{name: value.reshape(n, *value.shape[2:]) for name, value in self.extras.items()},
        }
