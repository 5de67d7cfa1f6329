"""The shipped robomimic BC policies (data/policies/{lift,can,square}-flow-bc, lift-flow-bc-{10,20}demos) load and
act on their env's observation. Fast: one reset and a few steps, never a full evaluation (their success rates are in
data/cards/robomimic-scripted.md)."""
import warnings
from pathlib import Path

import numpy as np
import pytest

from flowpolicy import load_agent

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [("lift-flow-bc", "RobomimicLift-v0", 19), ("lift-flow-bc-10demos", "RobomimicLift-v0", 19),
           ("lift-flow-bc-20demos", "RobomimicLift-v0", 19),
           ("can-flow-bc", "RobomimicCan-v0", 23),
           ("square-flow-bc", "RobomimicSquare-v0", 23)]


@pytest.mark.parametrize("name, env_id, obs_dim", SHIPPED)
def test_shipped_policy_matches_its_config(name, env_id, obs_dim):
    agent = load_agent(ROOT / "data" / "policies" / name)
    config = agent.policy.config
    assert (config.kind, config.horizon, config.act_steps, config.n_obs_steps) == ("flow", 8, 4, 1)
    assert (agent.observation_dim, agent.action_dim) == (obs_dim, 7)
    assert agent.metadata["env_id"] == env_id


@pytest.mark.parametrize("name, env_id, obs_dim", SHIPPED)
def test_shipped_policy_acts_on_the_env_observation(name, env_id, obs_dim):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import robosuite  # noqa: F401
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"robosuite does not import: {type(err).__name__}: {err}")
    import gymnasium as gym

    import envs.robosuite_tasks  # noqa: F401  (registers the Robomimic ids)

    agent = load_agent(ROOT / "data" / "policies" / name, seed=0)
    env = gym.make(env_id)
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (obs_dim,) and "is_success" in info
        for _ in range(6):  # crosses one replanning (act_steps 4)
            action = agent.act(obs)
            assert action.shape == env.action_space.shape and np.all(np.isfinite(action))
            assert env.action_space.contains(action.astype(env.action_space.dtype))
            obs, reward, terminated, truncated, info = env.step(action)
            assert not terminated and not truncated
    finally:
        env.close()
