"""Replay buffer of decisions for off-policy learners (QSM, online CFGRL).

A transition is (condition, executed action chunk, chunk reward, next condition, terminated): the
action is the *executed* chunk in normalized space (the policy's x_K clipped to [−1, 1]), the next
condition comes from the true final observation where an episode ended, and only ``terminated`` masks
the bootstrap — a time-limit truncation is not an end of the MDP. It is a ring buffer of fixed
capacity whose contents are tensors, so it can be saved with the training state for exact resume.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.rollout import ExplorationActor, Rollout
from envs.vector import VecEnv
from flowpolicy.policy import Policy
from flowpolicy.samplers import Sampler


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

    def arrays(self, prefix: str = "replay/") -> dict[str, torch.Tensor]:
        """The contents as named arrays for a learner's ``training_arrays``."""
        return {prefix + k: v for k, v in self.state_tensors().items()}

    def load_arrays(self, arrays: dict[str, torch.Tensor], position: int, prefix: str = "replay/") -> None:
        """Restore from :meth:`arrays` (a learner's ``load_extra``); nothing happens if none were saved."""
        tensors = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if tensors:
            self.load_state_tensors(tensors, position)

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], position: int) -> None:
        n = tensors["cond"].shape[0]
        for key, value in tensors.items():
            getattr(self, key)[:n] = value.to(self.device)
        self.size, self.position = n, position


def td_target(rewards: torch.Tensor, terminated: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """y = r + γ·(1 − terminated)·Q'(s', a'): truncated transitions bootstrap, terminal ones do not."""
    return rewards + gamma * (1.0 - terminated) * next_q


def demonstration_transitions(policy: Policy, source: str, reward_scale: float = 1.0, env_id: str | None = None,
                              allow_env_mismatch: bool = False, env_kwargs: dict | None = None
                              ) -> dict[str, torch.Tensor]:
    """A demonstration dataset (Minari directory/id or robomimic hdf5) as decision-level transitions for
    :meth:`ReplayBuffer.add`: every H = act_steps env steps from each episode start, the chunk a_t…a_{t+H'−1}
    (H' = the policy's horizon, padded with the last action as BC does), the summed rewards of the steps
    inside the episode (× ``reward_scale``), the next observation o_{t+H} (the final one at the end) and
    ``terminated`` only on the last decision of a terminated episode. With ``env_id`` the dataset must have
    been recorded on that env with ``env_kwargs`` (unless ``allow_env_mismatch``: config key
    ``algo.allow_env_mismatch``); its sizes must match the policy's in any case — one-line ``DatasetError``s."""
    from pretrain.bc import load_demonstrations
    from pretrain.datasets import check_dataset_env, check_matches_env

    pc = policy.config
    episodes, meta = load_demonstrations(source)
    if env_id:
        check_dataset_env(meta.get("env_id"), env_id, f"dataset {source}", allow_env_mismatch,
                          "algo.allow_env_mismatch: true", meta.get("env_kwargs"), env_kwargs)
    check_matches_env(episodes, pc.obs_dim, pc.action_dim, f"dataset {source}", env_id or "the policy")
    H, device = pc.act_steps, policy.device
    parts: dict[str, list] = {"cond": [], "actions": [], "rewards": [], "next_cond": [], "terminated": []}
    for ep in episodes:
        T = ep.length
        starts = np.arange(0, T, H)
        idx = np.minimum(starts[:, None] + np.arange(pc.horizon), T - 1)
        # the env's history at step s is o_{s−n+1} … o_s, padded with the reset observation o_0 (as
        # envs.vector's FrameStackObservation does); the next decision starts at s + H, or ends at T
        offsets = np.arange(-pc.n_obs_steps + 1, 1)
        history = np.maximum(starts[:, None] + offsets, 0)
        next_history = np.maximum(np.minimum(starts + H, T)[:, None] + offsets, 0)
        with torch.no_grad():
            parts["cond"].append(policy.condition(torch.as_tensor(ep.observations[history], device=device)))
            parts["next_cond"].append(policy.condition(torch.as_tensor(ep.observations[next_history], device=device)))
            chunks = policy.normalize_actions(torch.as_tensor(ep.actions[idx], device=device))
            parts["actions"].append(chunks.clamp(-1, 1))
        parts["rewards"].append(torch.as_tensor([ep.rewards[s:s + H].sum() * reward_scale for s in starts],
                                                dtype=torch.float32))
        terminated = torch.zeros(len(starts))
        terminated[-1] = float(ep.terminated)
        parts["terminated"].append(terminated)
    return {k: torch.cat(v) for k, v in parts.items()}


@torch.no_grad()
def collect_into_replay(policy: Policy, sampler: Sampler, K: int, envs: VecEnv, replay: ReplayBuffer,
                        num_steps: int, seed: int, exploration_noise: float = 0.0, reward_scale: float = 1.0,
                        generator: torch.Generator | None = None) -> dict:
    """Reset ``envs`` with ``seed`` (so a resumed run needs no simulator state), run ``num_steps`` decisions
    of ``policy`` (+ Gaussian exploration noise, then clipped to the box: the executed action is what is
    stored) and add every transition to ``replay``. Returns the runner's rollout metrics."""

    rollout = Rollout(policy, envs)
    for step in rollout.decisions(seed, ExplorationActor(policy, sampler, K, exploration_noise), num_steps, generator):
        replay.add(step.cond, step.record, step.out.reward * reward_scale, step.next_cond, step.out.terminated)
    return rollout.metrics()
