"""Task registry: env id, dimensions, episode length and reference scores of the tasks we ship.

Reference scores make returns comparable across tasks as a normalized score
``100·(R − R_random)/(R_expert − R_random)`` (D4RL's convention): 0 is a uniform-random policy, 100 our
own SAC expert (``flowpolicy collect``). Any other gymnasium env id works without an entry — it simply
has no normalized score.

Where the numbers come from: ``random_score`` is the mean return of uniform-random actions over 100
episodes (``python benchmarks/reference_scores.py``); ``expert_score`` is the mean return of the expert
in ``data/experts/<env_id>/expert.json`` over 10 episodes. ``None`` means not measured yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym


@dataclass(frozen=True)
class TaskSpec:
    env_id: str
    obs_dim: int
    action_dim: int
    max_episode_steps: int
    random_score: float | None = None
    expert_score: float | None = None
    short_name: str = ""  # the configs/ directory name

    @property
    def has_reference_scores(self) -> bool:
        return self.random_score is not None and self.expert_score is not None

    def normalized_score(self, episode_return: float) -> float | None:
        if not self.has_reference_scores:
            return None
        return 100.0 * (episode_return - self.random_score) / (self.expert_score - self.random_score)


TASKS: dict[str, TaskSpec] = {
    spec.env_id: spec
    for spec in [
        TaskSpec("Hopper-v5", 11, 3, 1000, random_score=16.7, expert_score=3154.8, short_name="hopper"),
        TaskSpec("Walker2d-v5", 17, 6, 1000, random_score=1.8, expert_score=3504.4, short_name="walker2d"),
        TaskSpec("HalfCheetah-v5", 17, 6, 1000, random_score=-277.9, expert_score=5905.6, short_name="halfcheetah"),
        TaskSpec("Ant-v5", 105, 8, 1000, random_score=-67.5, expert_score=854.4, short_name="ant"),
        TaskSpec("Humanoid-v5", 348, 17, 1000, random_score=112.6, expert_score=None, short_name="humanoid"),
    ]
}


def get_task(env_id: str) -> TaskSpec:
    """The registered spec, or one read off the gymnasium env (no reference scores) for any other id."""
    if env_id in TASKS:
        return TASKS[env_id]
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise ValueError(f"unknown environment {env_id!r}: {err}") from None
    try:
        obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
        if obs_shape is None or len(obs_shape) != 1 or act_shape is None or len(act_shape) != 1:
            raise ValueError(f"{env_id}: flowpolicy needs flat Box observations and actions, got "
                             f"{env.observation_space} and {env.action_space}")
        steps = env.spec.max_episode_steps if env.spec is not None else None
        return TaskSpec(env_id, obs_shape[0], act_shape[0], steps or 0)
    finally:
        env.close()
