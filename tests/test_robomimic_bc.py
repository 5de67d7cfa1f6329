"""The shipped robomimic BC policy (data/policies/lift-flow-bc) loads and acts on RobomimicLift-v0's
observation. Fast: one reset and a few steps, never a full evaluation (its success rate is in
data/cards/robomimic-scripted.md)."""
import warnings
from pathlib import Path

import numpy as np
import pytest

from flowpolicy import load_agent

ROOT = Path(__file__).resolve().parents[1]
LIFT_POLICY = ROOT / "data" / "policies" / "lift-flow-bc"


def test_shipped_lift_policy_config_matches_configs_lift():
    agent = load_agent(LIFT_POLICY)
    config = agent.policy.config
    assert (config.kind, config.horizon, config.act_steps, config.n_obs_steps) == ("flow", 8, 4, 1)
    assert (agent.observation_dim, agent.action_dim) == (19, 7)
    assert agent.metadata["env_id"] == "RobomimicLift-v0"


def test_shipped_lift_policy_acts_on_the_env_observation():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import robosuite  # noqa: F401
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"robosuite does not import: {type(err).__name__}: {err}")
    import gymnasium as gym

    import envs.robosuite_tasks  # noqa: F401  (registers the Robomimic ids)

    agent = load_agent(LIFT_POLICY, seed=0)
    env = gym.make("RobomimicLift-v0")
    try:
        obs, info = env.reset(seed=0)
        assert "is_success" in info
        for _ in range(6):  # crosses one replanning (act_steps 4)
            action = agent.act(obs)
            assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
            assert env.action_space.contains(action.astype(env.action_space.dtype))
            obs, reward, terminated, truncated, info = env.step(action)
            assert not terminated and not truncated
    finally:
        env.close()
