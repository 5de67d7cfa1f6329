"""Where a rollout's random numbers come from: one generator for the whole batch, or one per env.

By default a learner samples a decision's noise (x₀, the samplers' step noise, exploration noise, FPO's (τ, ε))
for all N envs at once from its own ``torch.Generator``, so env i's draws depend on how many envs come
before it in the batch. :class:`RowGenerators` gives every batch row (env) its own generator instead, seeded
from that env's reset seed and index: env i's draws are then the same whichever process samples them and
however the envs are split into shards — what lets rollout workers that hold a policy copy reproduce the
learner's rollout exactly (``runner.inference: workers``, agents/backends.py).

:func:`randn` and :func:`rand` are the draw sites' ``torch.randn`` / ``torch.rand``: with a plain generator (or
None) they are those calls, number for number; with :class:`RowGenerators` row i is drawn from generator i.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

ROW_SEED_TAG = 0x5EED_0E1F  # keeps the per-env noise streams apart from anything else seeded by the env seed


class RowGenerators:
    """One ``torch.Generator`` per batch row. Row i's draws depend only on generator i (and the shapes)."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def for_envs(cls, env_seeds: Sequence[int], first_env: int = 0, device: str | torch.device = "cpu"
                 ) -> RowGenerators:
        """Generators for envs ``first_env, first_env + 1, …`` reset with ``env_seeds``: seeded from (reset seed,
        env index), so envs that share a reset seed (a GRPO group) still draw different noise, and a shard of
        envs gets exactly the generators the whole batch would give those envs."""
        generators = []
        for i, seed in enumerate(env_seeds):
            words = np.random.SeedSequence([int(seed) % 2**63, first_env + i, ROW_SEED_TAG])
            generators.append(torch.Generator(device=device).manual_seed(int(words.generate_state(1, np.uint64)[0])))
        return cls(generators)

    def __len__(self) -> int:
        return len(self.generators)


Generator = torch.Generator | RowGenerators | None


def _rows(draw, shape, generator: RowGenerators, dtype, device) -> torch.Tensor:
    shape = tuple(shape)
    if not shape or shape[0] != len(generator):
        raise ValueError(f"per-env draws need one generator per row: shape {shape}, {len(generator)} generators")
    rows = [draw(shape[1:], generator=g, dtype=dtype, device=g.device) for g in generator.generators]
    return torch.stack(rows).to(device)


def randn(shape, generator: Generator = None, dtype: torch.dtype | None = None,
          device: str | torch.device | None = None) -> torch.Tensor:
    """``torch.randn(shape, generator=generator, …)``, or per row for :class:`RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return _rows(torch.randn, shape, generator, dtype, device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=device)


def rand(shape, generator: Generator = None, dtype: torch.dtype | None = None,
         device: str | torch.device | None = None) -> torch.Tensor:
    """``torch.rand(shape, generator=generator, …)``, or per row for :class:`RowGenerators`."""
    if isinstance(generator, RowGenerators):
        return _rows(torch.rand, shape, generator, dtype, device)
    return torch.rand(shape, generator=generator, dtype=dtype, device=device)
