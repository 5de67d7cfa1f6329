"""The Gymnasium agent: raw observations in, raw actions out.

:class:`Agent` owns everything between the environment and the policy — observation normalization,
the observation history, and the action-chunk queue — for one env or a batch of envs stepping in
lockstep. Each env replans independently: when its queue of ``act_steps`` actions runs out or its
episode restarts, a new chunk is sampled for it (all envs that need one share a single forward pass).

``predict`` has Stable-Baselines3's signature, so ``stable_baselines3.common.evaluation.evaluate_policy``
(and anything else written against SB3 models) works with a flowpolicy agent.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from flowpolicy.checkpoint import load_policy
from flowpolicy.config import ConfigError, check_device
from flowpolicy.policy import Policy
from flowpolicy.samplers import Sampler


def episode_noise_seed(episode_seed: int) -> int:
    """The torch seed of a seeded episode's sampler noise: derived from the episode (reset) seed, so it is
    not the same stream as the reset or as a run's own generators that start from the same integer."""
    return int(np.random.SeedSequence([int(episode_seed), 0x0F10]).generate_state(1, np.uint64)[0] >> 1)


class Agent:
    def __init__(self, policy: Policy, sampler: str | Sampler | None = None, K: int | None = None,
                 seed: int = 0, **sampler_params):
        self.policy = policy.eval()
        K = policy.config.num_steps if K is None else K  # 0 is a value (an invalid one), not "unset"
        if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
            raise ConfigError(f"K (denoising steps) must be an integer ≥ 1, got {K!r}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ConfigError(f"seed must be an integer ≥ 0, got {seed!r}")
        self.K = int(K)
        self.sampler = sampler if isinstance(sampler, Sampler) else policy.make_sampler(sampler, self.K,
                                                                                       **sampler_params)
        # Even the deterministic ODE starts from random x_0; a seeded generator makes actions reproducible.
        self.device = policy.device
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        # Per-env generators for seeded episodes (seed_episodes): env index -> generator of that episode.
        self._episode_generators: dict[int, torch.Generator] = {}
        self.metadata: dict = {}
        self._history: torch.Tensor | None = None  # [N, n_obs, obs_dim] raw observations
        self._queue: torch.Tensor | None = None  # [N, act_steps, A] raw actions
        self._position: np.ndarray | None = None  # [N] index of the next queued action
        self._fresh: np.ndarray | None = None  # [N] episode (re)started: refill history, replan

    @property
    def observation_dim(self) -> int:
        return self.policy.config.obs_dim

    @property
    def action_dim(self) -> int:
        return self.policy.config.action_dim

    def reset(self, env_indices=None) -> None:
        """Forget history and queued actions — of all envs, or of ``env_indices`` only."""
        if env_indices is None:
            self._episode_generators.clear()
        else:
            for i in np.asarray(env_indices).reshape(-1).tolist():
                self._episode_generators.pop(int(i), None)
        if env_indices is None or self._fresh is None:
            self._history = self._queue = self._position = self._fresh = None
        else:
            self._fresh[np.asarray(env_indices)] = True

    def seed_episodes(self, env_indices, episode_seeds) -> None:
        """Draw the sampler noise of the episodes now starting in ``env_indices`` from generators seeded
        by ``episode_seeds`` (one each), instead of from the agent's shared generator — so an episode's
        actions depend on its seed, not on which env runs it or on how many envs act in the batch. Lasts
        until that env's next :meth:`reset`. Call it after :meth:`reset` of those envs."""
        env_indices = np.asarray(env_indices).reshape(-1).tolist()
        episode_seeds = np.asarray(episode_seeds).reshape(-1).tolist()
        if len(env_indices) != len(episode_seeds):
            raise ValueError(f"{len(episode_seeds)} episode seeds for {len(env_indices)} envs")
        for i, episode_seed in zip(env_indices, episode_seeds, strict=True):
            self._episode_generators[int(i)] = torch.Generator(device=self.device).manual_seed(
                episode_noise_seed(int(episode_seed)))

    def _sample_chunks(self, history: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
        """Final chain states x_K for the observation histories of env ``rows``.

        Without seeded episodes all rows share one forward pass and the shared generator. Seeded episodes
        are sampled one row at a time with their own generator: a batch's floating-point result can depend
        on its size, and a row's must not depend on which other envs happen to replan with it."""
        gens = [self._episode_generators.get(int(i)) for i in rows]
        if all(g is None for g in gens):
            return self.policy.sample(self.policy.condition(history), self.sampler, self.K, self.generator).actions
        return torch.cat([self.policy.sample(self.policy.condition(history[j:j + 1]), self.sampler, self.K,
                                             g if g is not None else self.generator).actions
                          for j, g in enumerate(gens)])

    def _allocate(self, n: int, device) -> None:
        cfg = self.policy.config
        self._history = torch.zeros((n, cfg.n_obs_steps, cfg.obs_dim), device=device)
        self._queue = torch.zeros((n, cfg.act_steps, cfg.action_dim), device=device)
        self._position = np.full(n, cfg.act_steps)
        self._fresh = np.ones(n, dtype=bool)

    @torch.inference_mode()
    def act(self, obs) -> np.ndarray:
        """Action(s) for raw observation(s): [obs_dim] → [A], or [N, obs_dim] → [N, A]."""
        obs_np = np.asarray(obs, dtype=np.float32)
        single = obs_np.ndim == 1
        if single:
            obs_np = obs_np[None]
        if obs_np.ndim != 2 or obs_np.shape[1] != self.observation_dim:
            raise ValueError(f"expected observations of shape [{self.observation_dim}] or "
                             f"[N, {self.observation_dim}], got {tuple(np.shape(obs))}")
        n = obs_np.shape[0]
        if self._history is None or self._history.shape[0] != n:
            self._allocate(n, self.device)
        obs_t = torch.from_numpy(obs_np).to(self.device)

        fresh = self._fresh
        if fresh.all():
            self._history[:] = obs_t[:, None]
        else:
            self._history = torch.roll(self._history, shifts=-1, dims=1)
            self._history[:, -1] = obs_t
            if fresh.any():
                self._history[fresh] = obs_t[fresh][:, None]

        replan = fresh | (self._position >= self.policy.config.act_steps)
        if replan.any():
            rows = np.flatnonzero(replan)
            history = self._history if len(rows) == n else self._history[rows]
            x = self._sample_chunks(history, rows)
            chunk = self.policy.env_actions(x)[:, : self.policy.config.act_steps]
            if len(rows) == n:
                self._queue = chunk
            else:
                self._queue[rows] = chunk
            self._position[rows] = 0
            self._fresh[:] = False

        actions = self._queue[np.arange(n), self._position].cpu().numpy()
        self._position += 1
        return actions[0] if single else actions

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        """Stable-Baselines3 interface: returns ``(actions, state)``. Envs flagged in ``episode_start``
        restart their history and queue. The sampler chosen at load time decides stochasticity
        (the default ODE / DDIM-η=0 sampler is deterministic); ``deterministic`` is accepted for
        compatibility."""
        if episode_start is not None and self._fresh is not None:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape[0] == self._fresh.shape[0]:
                self._fresh |= starts
        return self.act(observation), state

    def __repr__(self) -> str:
        c = self.policy.config
        return (f"Agent(kind={c.kind}, obs_dim={c.obs_dim}, action_dim={c.action_dim}, horizon={c.horizon}, "
                f"act_steps={c.act_steps}, sampler={self.sampler!r}, K={self.K})")


def load_agent(path: str | os.PathLike, sampler: str | None = None, K: int | None = None,
               device: str = "cpu", seed: int = 0, **sampler_params) -> Agent:
    """Load a saved policy as an :class:`Agent`. ``sampler``/``K`` pick the sampler at load time
    (default: the deterministic ODE for flows, DDIM with η = 0 for diffusion, at the policy's K)."""
    check_device(device)
    policy, metadata = load_policy(path, device=device)
    agent = Agent(policy, sampler=sampler, K=K, seed=seed, **sampler_params)
    agent.metadata = metadata
    return agent
