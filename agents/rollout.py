"""Stepping a policy through a :class:`envs.vector.VecEnv`: the one rollout loop every online learner uses
(ReinFlow and FPO fill a rollout buffer with it, the chain learners run whole episodes, QSM and CFGRL fill a
replay), the env seeds of an iteration, and the K a learner samples with."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from envs.vector import VecEnv, VecStep
from flowpolicy import draws
from flowpolicy.config import param
from flowpolicy.draws import RowGenerators
from flowpolicy.policy import Policy
from flowpolicy.samplers import Sampler


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


class Actor(Protocol):
    """How a learner acts in a rollout: ``actor(cond, generator) -> (actions, record)`` — normalized action
    chunks [N, D] and what the learner keeps of the decision (a tensor or a dict of tensors, one row per env).
    An actor holds only what acting needs (the policy, its sampler, a few numbers), so it can be pickled to
    rollout workers (``runner.inference: workers``); every random draw goes through ``generator``."""

    policy: Policy

    def __call__(self, cond: torch.Tensor, generator: draws.Generator) -> tuple[torch.Tensor, Any]: ...


class ChainActor:
    """The chain learners' actor (ReinFlow, Flow-GRPO / CPS, DDPO): a sampled chain; the record holds its
    states ``chain_xs`` [N, K+1, D] and per-step log-probs ``log_probs`` [N, K]."""

    def __init__(self, policy: Policy, sampler: Sampler, K: int):
        self.policy, self.sampler, self.K = policy, sampler, K

    def __call__(self, cond, generator):
        chain = self.policy.sample(cond, self.sampler, self.K, generator)
        return chain.actions, {"chain_xs": chain.xs, "log_probs": chain.log_probs}


class ExplorationActor:
    """The off-policy learners' actor (QSM, online CFGRL): the sampler's action plus Gaussian exploration
    noise, clipped to the box; the record is the executed (normalized) action."""

    def __init__(self, policy: Policy, sampler: Sampler, K: int, exploration_noise: float = 0.0):
        self.policy, self.sampler, self.K, self.exploration_noise = policy, sampler, K, exploration_noise

    def __call__(self, cond, generator):
        x = self.policy.sample(cond, self.sampler, self.K, generator).actions
        if self.exploration_noise:
            x = x + self.exploration_noise * draws.randn(x.shape, generator=generator, device=x.device)
        x = x.clamp(-1.0, 1.0)  # env_actions clips identically
        return x, x


class ShardedActor:
    """``actor`` applied shard by shard, each shard with its envs' own generators: the numbers rollout workers
    produce, in one process. (Per shard, not per batch: a matmul's rows can round differently at another batch
    size, so only the same shards give the same bits.)"""

    def __init__(self, actor: Actor, seeds: list[int], bounds: list[tuple[int, int]]):
        self.actor, self.policy, self.bounds = actor, actor.policy, bounds
        self.generators = [RowGenerators.for_envs(seeds[a:b], first_env=a) for a, b in bounds]

    def __call__(self, cond, _generator=None):
        parts = [self.actor(cond[a:b], g) for (a, b), g in zip(self.bounds, self.generators, strict=True)]
        return torch.cat([actions for actions, _ in parts]), concat_records([record for _, record in parts])


def concat_records(parts: list):
    """Per-decision records of consecutive env ranges (tensors or dicts of tensors) in env order."""
    if isinstance(parts[0], dict):
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return torch.cat(parts)


class Rollout:
    """One iteration of a policy in ``envs`` and the runner's metrics of it: env steps, finished episodes'
    returns and lengths, and the time spent stepping the envs.

    Who samples the actions is the envs' ``inference`` (``runner.inference``): ``learner`` (the default) —
    this process, the whole batch from the learner's ``generator``; ``workers`` — every env draws from its own
    generator (:class:`~flowpolicy.draws.RowGenerators`, seeded by its reset seed and index), in this process
    for the sync backend, else on the async / Ray workers, each running the whole iteration of its shard with a
    copy of the actor (one round trip per iteration instead of one per decision). Both ``workers`` variants
    give the same numbers; they differ from ``learner``'s only in which noise each env draws."""

    def __init__(self, policy: Policy, envs: VecEnv):
        self.policy, self.envs = policy, envs
        self.env_steps, self.env_s = 0, 0.0
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []
        self.episode_successes: list[bool] = []  # stays empty when the env reports no success

    def condition(self, obs) -> torch.Tensor:
        return self.policy.condition(torch.as_tensor(obs, dtype=torch.float32, device=self.policy.device))

    def decisions(self, seed: int | list[int], act: Actor, max_decisions: int,
                  generator: torch.Generator | None = None, until_all_done: bool = False) -> Iterator[Decision]:
        """Reset the envs with ``seed``, then up to ``max_decisions`` decisions (stop early by leaving the loop).
        ``act(cond, generator) -> (actions, record)`` (:class:`Actor`): the first ``act_steps`` of the normalized
        chunks are executed (the policy's ``env_actions`` clips and un-normalizes them). ``until_all_done``: the
        caller leaves once every env has finished an episode (workers then stop there too; the rows of envs
        whose episode ended carry placeholders the caller ignores)."""
        if getattr(self.envs, "inference", "learner") == "workers":
            seeds = env_seeds(seed, self.envs.num_envs)
            if seeds is None:
                raise ValueError("runner.inference: workers seeds every env's noise from its reset seed: reset with "
                                 "a seed")
            if hasattr(self.envs, "run_decisions"):  # async / Ray workers run the iteration with an actor copy
                steps = self.envs.run_decisions(act, seeds, max_decisions, until_all_done)
                self.env_s += self.envs.last_run_s
            else:  # sync: the same shards as runner.num_workers workers would run
                bounds = getattr(self.envs, "inference_shards", None) or [(0, self.envs.num_envs)]
                steps = self.steps(seeds, ShardedActor(act, seeds, bounds), max_decisions, None)
        else:
            steps = self.steps(seed, act, max_decisions, generator)
        for t, (cond, record, out, next_cond) in enumerate(steps):
            self.env_steps += int(out.env_steps.sum())
            self.episode_returns += out.episode_returns
            self.episode_lengths += out.episode_lengths
            self.episode_successes += out.episode_successes
            yield Decision(t, cond, record, out, next_cond)

    def steps(self, seed, act: Actor, max_decisions: int, generator: draws.Generator
              ) -> Iterator[tuple[torch.Tensor, Any, VecStep, torch.Tensor]]:
        """The loop itself, in this process: ``(cond, record, out, next_cond)`` per decision."""
        obs = self.envs.reset(seed=seed)
        act_steps = self.policy.config.act_steps
        for _ in range(max_decisions):
            cond = self.condition(obs)
            with torch.no_grad():  # acting never trains; the learners update from what the record keeps
                actions, record = act(cond, generator)
            tick = time.perf_counter()
            out = self.envs.step(self.policy.env_actions(actions)[:, :act_steps].cpu().numpy())
            self.env_s += time.perf_counter() - tick
            yield cond, record, out, self.condition(out.final_obs)
            obs = out.obs

    def metrics(self) -> dict:
        """What a learner's ``collect`` returns to the runner (``episode_successes`` only where the env reports
        success)."""
        out = {"env_steps": self.env_steps, "episode_returns": self.episode_returns,
               "episode_lengths": self.episode_lengths, "env_s": self.env_s}
        if self.episode_successes:
            out["episode_successes"] = self.episode_successes
        return out


def env_seeds(seed: int | list[int] | None, num_envs: int) -> list[int] | None:
    """The per-env seeds :meth:`VecEnv.reset` gives its envs: ``seed + i``, or the list itself."""
    if seed is None:
        return None
    if isinstance(seed, list | tuple | np.ndarray):
        if len(seed) != num_envs:
            raise ValueError(f"{len(seed)} seeds for {num_envs} envs")
        return [int(s) for s in seed]
    return [int(seed) + i for i in range(num_envs)]
