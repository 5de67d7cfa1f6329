"""Stepping a policy through a :class:`envs.vector.VecEnv`: the one rollout loop every online learner uses
(ReinFlow and FPO fill a rollout buffer with it, the chain learners run whole episodes, QSM and CFGRL fill a
replay), the env seeds of an iteration, and the K a learner samples with."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from envs.vector import VecEnv, VecStep
from flowpolicy.config import param
from flowpolicy.policy import Policy


@dataclass
class RolloutConfig:
    """The rollout settings every learner that steps envs shares; its config extends this one (and may
    change a default with :func:`flowpolicy.config.redefault`)."""

    num_envs: int = param(16, "parallel envs in rollouts", ge=1)
    decisions_per_env: int = param(256, "decisions (action chunks) per env per iteration", ge=1,
                                   renamed_from="num_steps")
    K: int | None = param(None, "denoising steps in rollouts and updates; evaluation and the saved policy use the "
                                "same K (null: the policy's)", ge=1)
    gamma: float = param(0.99, "discount per decision (action chunk)", ge=0, le=1)


def adopt_training_K(policy: Policy, K: int | None) -> int:
    """The number of denoising steps a learner trains with — its config's ``K``, else the policy's default —
    made the policy's default (``policy.config.num_steps``), so that the runner evaluates, and the saved
    checkpoint samples with, the K the policy was fine-tuned for, not the one it was pretrained with."""
    K = int(K or policy.config.num_steps)
    policy.config.num_steps = K
    return K


def iteration_seed(seed: int, iteration: int, stride: int) -> int:
    """The env seed of an iteration of a run: every iteration resets its envs (new episodes, and a resumed run
    needs no simulator state), env i (or group i) with ``iteration_seed + i``; ``stride`` = the number of envs
    (or groups) keeps consecutive iterations' seeds apart, the large factor keeps runs with nearby seeds apart."""
    return seed * 1_000_003 + iteration * stride


@dataclass
class Decision:
    """One decision of every env: ``t`` counts from 0 in the iteration, ``cond`` is the condition acted on,
    ``record`` what ``act`` returned besides the actions, ``next_cond`` the condition of the *true* final
    observation where an episode ended (``out.obs`` is already the next episode's)."""

    t: int
    cond: torch.Tensor
    record: Any
    out: VecStep
    next_cond: torch.Tensor


class Rollout:
    """One iteration of a policy in ``envs`` and the runner's metrics of it: env steps, finished episodes'
    returns and lengths, and the time spent stepping the envs."""

    def __init__(self, policy: Policy, envs: VecEnv):
        self.policy, self.envs = policy, envs
        self.env_steps, self.env_s = 0, 0.0
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.episode_successes: list[bool] = []  # stays empty when the env reports no success

    def condition(self, obs) -> torch.Tensor:
        return self.policy.condition(torch.as_tensor(obs, dtype=torch.float32, device=self.policy.device))

    def decisions(self, seed: int | list[int], act: Callable[[torch.Tensor], tuple[torch.Tensor, Any]],
                  max_decisions: int) -> Iterator[Decision]:
        """Reset the envs with ``seed``, then up to ``max_decisions`` decisions (stop early by leaving the loop).
        ``act(cond) -> (actions, record)``: normalized action chunks [N, D] (the policy's ``env_actions``
        clips and un-normalizes them; the first ``act_steps`` actions are executed) and what to keep."""
        obs = self.envs.reset(seed=seed)
        act_steps = self.policy.config.act_steps
        for t in range(max_decisions):
            cond = self.condition(obs)
            actions, record = act(cond)
            tick = time.perf_counter()
            out = self.envs.step(self.policy.env_actions(actions)[:, :act_steps].cpu().numpy())
            self.env_s += time.perf_counter() - tick
            self.env_steps += int(out.env_steps.sum())
            self.episode_returns += out.episode_returns
            self.episode_lengths += out.episode_lengths
            self.episode_successes += out.episode_successes
            yield Decision(t, cond, record, out, self.condition(out.final_obs))
            obs = out.obs

    def metrics(self) -> dict:
        """What a learner's ``collect`` returns to the runner (``episode_successes`` only where the env reports
        success)."""
        out = {"env_steps": self.env_steps, "episode_returns": self.episode_returns,
               "episode_lengths": self.episode_lengths, "env_s": self.env_s}
        if self.episode_successes:
            out["episode_successes"] = self.episode_successes
        return out
