"""Replay buffer of decisions for off-policy learners (QSM, online CFGRL).

A transition is (condition, executed action chunk, chunk reward, next condition, terminated): the
action is the *executed* chunk in normalized space (the policy's x_K clipped to [−1, 1]), the next
condition comes from the true final observation where an episode ended, and only ``terminated`` masks
the bootstrap — a time-limit truncation is not an end of the MDP. It is a ring buffer of fixed
capacity whose contents are tensors, so it can be saved with the training state for exact resume.
"""

from __future__ import annotations

import torch


class ReplayBuffer:
    def __init__(self, capacity: int, cond_dim: int, action_dim: int, device: str | torch.device = "cpu"):
        self.capacity, self.device = capacity, torch.device(device)
        z = dict(device=self.device)
        self.cond = torch.zeros(capacity, cond_dim, **z)
        self.actions = torch.zeros(capacity, action_dim, **z)
        self.rewards = torch.zeros(capacity, **z)
        self.next_cond = torch.zeros(capacity, cond_dim, **z)
        self.terminated = torch.zeros(capacity, **z)
        self.position, self.size = 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, cond, actions, rewards, next_cond, terminated) -> None:
        """Add a batch of N transitions (oldest ones are overwritten when full)."""
        n = cond.shape[0]
        idx = (self.position + torch.arange(n, device=self.device)) % self.capacity
        self.cond[idx] = cond.to(self.device)
        self.actions[idx] = actions.to(self.device)
        self.rewards[idx] = torch.as_tensor(rewards, dtype=torch.float32, device=self.device)
        self.next_cond[idx] = next_cond.to(self.device)
        self.terminated[idx] = torch.as_tensor(terminated, dtype=torch.float32, device=self.device)
        self.position = int((self.position + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator, device=generator.device).to(self.device)
        return {"cond": self.cond[idx], "actions": self.actions[idx], "rewards": self.rewards[idx],
                "next_cond": self.next_cond[idx], "terminated": self.terminated[idx]}

    # -- saved with the training state --------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        n = self.size
        return {"cond": self.cond[:n], "actions": self.actions[:n], "rewards": self.rewards[:n],
                "next_cond": self.next_cond[:n], "terminated": self.terminated[:n]}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], position: int) -> None:
        n = tensors["cond"].shape[0]
        for key, value in tensors.items():
            getattr(self, key)[:n] = value.to(self.device)
        self.size, self.position = n, position


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + γ·(1 − terminated)·Q'(s', a'): truncated transitions bootstrap, terminal ones do not."""
    return rewards + gamma * (1.0 - terminated) * next_q
