"""Learning-rate schedules shared by the learners."""

from __future__ import annotations

import math


def cosine_factor(iteration: int, total_iterations: int, min_fraction: float) -> float:
    """Cosine decay from 1 at the first iteration to ``min_fraction`` at the last (1.0: constant)."""
    progress = iteration / max(1, total_iterations - 1)
    return min_fraction + (1.0 - min_fraction) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
