"""flowpolicy: flow-matching and diffusion robot action policies, behavior-cloned from demonstrations and
fine-tuned with online RL in vectorized MuJoCo.

This package is the policy itself (networks, models, samplers with exact log-probs, normalizers, the
Gymnasium agent, checkpoints, CLI). Environments live in ``envs``, learners in ``agents``, demonstrations
and behavior cloning in ``pretrain``.
"""

from flowpolicy.agent import Agent, load_agent
from flowpolicy.checkpoint import CheckpointError, load_policy, save_policy
from flowpolicy.policy import Policy, PolicyConfig
from flowpolicy.samplers import Chain, make_sampler, time_grid

__version__ = "0.1.0"

__all__ = ["Agent", "Chain", "CheckpointError", "Policy", "PolicyConfig", "load_agent", "load_policy",
           "make_sampler", "save_policy", "time_grid", "__version__"]
