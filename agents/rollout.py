"""What every online learner does the same way around its env rollouts: the K it samples with, the env
seeds of an iteration, and (for the on-policy learners) the loop that steps the policy through a
:class:`envs.vector.VecEnv`."""

from __future__ import annotations

from flowpolicy.policy import Policy


def adopt_training_K(policy: Policy, K: int | None) -> int:
    """The number of denoising steps a learner trains with — its config's ``K``, else the policy's default —
    made the policy's default (``policy.config.num_steps``), so that the runner evaluates, and the saved
    checkpoint samples with, the K the policy was fine-tuned for, not the one it was pretrained with."""
    K = int(K or policy.config.num_steps)
    policy.config.num_steps = K
    return K
