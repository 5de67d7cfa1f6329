"""Checkpoints (bit-exact round trip, clear errors) and the Gymnasium agent (chunk queue, history, SB3)."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flowpolicy import CheckpointError, load_agent, load_policy, save_policy
from flowpolicy.networks import NetworkConfig
from flowpolicy.normalizers import ActionNormalizer, ObservationNormalizer
from flowpolicy.policy import Policy, PolicyConfig


def make_policy(kind="flow", obs_dim=3, action_dim=2, horizon=4, act_steps=None, n_obs_steps=2, seed=0):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    return Policy(
        PolicyConfig(kind=kind, obs_dim=obs_dim, action_dim=action_dim, horizon=horizon, act_steps=act_steps,
                     n_obs_steps=n_obs_steps, network=NetworkConfig(kind="residual", hidden=[32], num_blocks=2)),
        ObservationNormalizer.fit(rng.normal(size=(100, obs_dim))),
        ActionNormalizer.fit(rng.uniform(-2, 2, size=(100, action_dim))),
    )


@pytest.mark.parametrize("kind", ["flow", "shortcut", "diffusion"])
def test_round_trip_is_bit_exact(tmp_path, kind):
    policy = make_policy(kind)
    save_policy(policy, tmp_path / "ckpt", metadata={"env_id": "Toy-v0"})
    loaded, metadata = load_policy(tmp_path / "ckpt")
    assert metadata == {"env_id": "Toy-v0"} and loaded.config == policy.config
    for (name, a), (_, b) in zip(policy.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert np.array_equal(loaded.obs_normalizer.mean_np, policy.obs_normalizer.mean_np)
    assert np.array_equal(loaded.action_normalizer.high_np, policy.action_normalizer.high_np)
    obs = torch.randn(5, 2, 3)
    for p in (policy, loaded):
        p.chain = p.sample(p.condition(obs), generator=torch.Generator().manual_seed(7))
    assert torch.equal(policy.chain.xs, loaded.chain.xs)
    # loading also works from the JSON file's path
    assert load_policy(tmp_path / "ckpt" / "policy.json")[0].config == policy.config


def test_save_leaves_no_temp_files(tmp_path):
    save_policy(make_policy(), tmp_path)
    save_policy(make_policy(seed=1), tmp_path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "policy.json"]


@pytest.fixture
def saved(tmp_path):
    return save_policy(make_policy(), tmp_path / "ckpt")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*not found"):
        load_policy(tmp_path / "nowhere")


def test_missing_tensor_file(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_policy(saved)


def test_truncated_tensor_file(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or truncated") as err:
        load_policy(saved)
    assert "\n" not in str(err.value)


def test_truncated_json(saved):
    text = (saved / "policy.json").read_text()
    (saved / "policy.json").write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match=r"policy\.json: corrupt or truncated JSON"):
        load_policy(saved)


def test_wrong_format_version(saved):
    meta = json.loads((saved / "policy.json").read_text())
    meta["format_version"] = 99
    (saved / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"policy\.json: format version 99"):
        load_policy(saved)


def test_tensors_that_do_not_match_the_config(saved):
    meta = json.loads((saved / "policy.json").read_text())
    meta["config"]["horizon"] = 8  # the net's output layer no longer fits
    (saved / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor .* has shape"):
        load_policy(saved)


def test_tensor_file_from_another_model(saved):
    tensors = load_file(saved / "model.safetensors")
    tensors.pop(next(iter(tensors)))
    save_file(tensors, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="missing tensor"):
        load_policy(saved)


def test_unknown_config_key(saved):
    meta = json.loads((saved / "policy.json").read_text())
    meta["config"]["horizn"] = 4
    (saved / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown config key horizn"):
        load_policy(saved)


# -- agent ------------------------------------------------------------------------------------


class CountingPolicy:
    """Wrap a policy's sample() to count replanning calls and their batch sizes."""

    def __init__(self, policy):
        self.calls = []
        original = policy.sample

        def sample(cond, *args, **kwargs):
            self.calls.append(cond.shape[0])
            return original(cond, *args, **kwargs)

        policy.sample = sample


def test_agent_single_and_batched_shapes_and_action_box(saved):
    agent = load_agent(saved)
    a = agent.act(np.zeros(3))
    assert a.shape == (2,) and a.dtype == np.float32
    agent.reset()
    b = agent.act(np.random.default_rng(0).normal(size=(5, 3)))
    assert b.shape == (5, 2)
    low, high = agent.policy.action_normalizer.low_np, agent.policy.action_normalizer.high_np
    assert np.all(b >= low - 1e-6) and np.all(b <= high + 1e-6)
    with pytest.raises(ValueError, match="expected observations of shape"):
        agent.act(np.zeros(4))


def test_agent_executes_the_chunk_before_replanning(tmp_path):
    save_policy(make_policy(horizon=4, act_steps=3), tmp_path)
    agent = load_agent(tmp_path)
    counter = CountingPolicy(agent.policy)
    obs = np.zeros((2, 3))
    actions = [agent.act(obs) for _ in range(7)]
    assert counter.calls == [2, 2, 2]  # steps 0, 3, 6
    # x_0 is random even for the ODE; the agent draws it from its generator seeded with 0
    cond = agent.policy.condition(torch.zeros(2, 2, 3))
    chain = agent.policy.sample(cond, generator=torch.Generator().manual_seed(0))
    chunk = agent.policy.env_actions(chain.actions)
    np.testing.assert_allclose(np.stack(actions[:3], 1), chunk[:, :3].detach().numpy(), atol=1e-6)


def test_agent_episode_start_replans_only_that_env(saved):
    agent = load_agent(saved)
    counter = CountingPolicy(agent.policy)
    obs = np.zeros((3, 3))
    agent.predict(obs, episode_start=np.ones(3, dtype=bool))
    agent.predict(obs, episode_start=np.array([False, True, False]))
    assert counter.calls == [3, 1]


def test_agent_observation_history(tmp_path):
    save_policy(make_policy(n_obs_steps=2), tmp_path)
    agent = load_agent(tmp_path)
    seen = []
    original = agent.policy.condition
    agent.policy.condition = lambda h: (seen.append(h.clone()), original(h))[1]
    for i in range(5):  # act_steps = 4: plans at steps 0 and 4
        agent.act(np.full(3, float(i)))
    assert torch.equal(seen[0][0, :, 0], torch.tensor([0.0, 0.0]))  # first obs repeated
    assert torch.equal(seen[1][0, :, 0], torch.tensor([3.0, 4.0]))  # the two latest


def test_agent_sampler_is_selectable_at_load_time(saved):
    assert load_agent(saved).sampler.name == "ode"
    agent = load_agent(saved, sampler="flow_sde", K=10, a=0.5, seed=0)
    assert agent.sampler.name == "flow_sde" and agent.K == 10
    first = agent.act(np.zeros(3))
    agent2 = load_agent(saved, sampler="flow_sde", K=10, a=0.5, seed=0)
    assert np.array_equal(first, agent2.act(np.zeros(3)))  # seeded stochastic sampling reproduces


def test_evaluate_policy_from_stable_baselines3_works_on_the_agent(tmp_path):
    from stable_baselines3.common.evaluation import evaluate_policy

    env = gym.make("Pendulum-v1")  # 200-step episodes
    save_policy(make_policy(obs_dim=3, action_dim=1, n_obs_steps=1, horizon=6, act_steps=6), tmp_path)
    agent = load_agent(tmp_path)
    counter = CountingPolicy(agent.policy)
    returns, lengths = evaluate_policy(agent, env, n_eval_episodes=2, warn=False, return_episode_rewards=True)
    assert lengths == [200, 200] and all(np.isfinite(returns))
    # one chunk every 6 steps and a fresh one when the second episode starts: 2·ceil(200/6) = 68, where
    # carrying the first episode's leftover actions over would give ceil(400/6) = 67
    assert len(counter.calls) == 2 * 34
