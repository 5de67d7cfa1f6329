"""CFGRL: the guided flow on a labelled bandit, the IQL critic, BC carry-over, offline/online runs, the w sweep."""

import json

import numpy as np
import pytest
import torch
from conftest import full_and_resumed_runs

from agents.cfgrl import CFGRLConfig, CFGRLLearner, IQLCritic, guided_policy_from
from agents.critics import expectile_loss
from agents.finetune import FinetuneConfig, finetune
from flowpolicy import load_agent, load_policy
from flowpolicy.cli import main as cli_main
from flowpolicy.config import from_dict
from flowpolicy.models import GuidedFlowModel
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig
from pretrain.datasets import Episode, write_robomimic_hdf5

GOOD_ACTION, BAD_ACTION = 0.6, -0.6


def bandit_reward(a):
    return -(a - GOOD_ACTION).square().sum(-1)


@pytest.fixture(scope="module")
def labelled_bandit_policy():
    """A guided flow trained on a 50/50 mix of good (around +0.6) and bad (around −0.6) actions, labelled by
    the known advantage A = r − E[r] ≥ 0, with label dropout 0.1."""
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(kind="guided_flow", obs_dim=1, action_dim=1, horizon=1, num_steps=8,
                                 network=NetworkConfig(hidden=[64, 64])))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3)
    cond = torch.zeros(512, 1)
    for _ in range(1500):
        centers = torch.where(torch.rand(512, 1, generator=gen) < 0.5, GOOD_ACTION, BAD_ACTION)
        actions = centers + 0.15 * torch.randn(512, 1, generator=gen)
        advantage = bandit_reward(actions) - bandit_reward(actions).mean()
        labels = torch.where(advantage >= 0, GuidedFlowModel.GOOD, GuidedFlowModel.BAD)
        loss = policy.model.bc_loss(cond, actions, gen, labels=labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


def sample_actions(policy, w, n=4000):
    policy.set_guidance(w)
    with torch.no_grad():
        return policy.sample(torch.zeros(n, 1), generator=torch.Generator().manual_seed(1)).actions


def test_guidance_zero_and_one_are_the_unconditional_and_good_conditional_velocities(labelled_bandit_policy):
    model = labelled_bandit_policy.model
    x, t, obs = torch.randn(64, 1), torch.rand(64), torch.zeros(64, 1)
    null = torch.full((64,), GuidedFlowModel.NULL)
    good = torch.full((64,), GuidedFlowModel.GOOD)
    with torch.no_grad():
        model.guidance = 0.0
        assert torch.allclose(model.velocity(x, t, obs), model.conditional_velocity(x, t, obs, null), atol=1e-6)
        model.guidance = 1.0
        assert torch.allclose(model.velocity(x, t, obs), model.conditional_velocity(x, t, obs, good), atol=1e-5)
        model.guidance = 2.0
        v0, v1 = model.conditional_velocity(x, t, obs, null), model.conditional_velocity(x, t, obs, good)
        assert torch.allclose(model.velocity(x, t, obs), v0 + 2.0 * (v1 - v0), atol=1e-5)


def test_label_dropout_gives_a_usable_unconditional_model(labelled_bandit_policy):
    a = sample_actions(labelled_bandit_policy, 0.0)
    good_share = (a > 0).float().mean().item()
    # both modes of the data in their proportions, spread like the data (std 0.62), as BC would
    # (measured: share 0.55, std 0.51; a plain BC flow on the same data: 0.52, 0.58)
    assert 0.35 < good_share < 0.65 and a.std() > 0.4


def test_expected_reward_rises_with_guidance(labelled_bandit_policy):
    rewards = [bandit_reward(sample_actions(labelled_bandit_policy, w)).mean().item() for w in (0.0, 0.5, 1.0, 2.0)]
    assert rewards == sorted(rewards), rewards
    assert (sample_actions(labelled_bandit_policy, 1.0) > 0).float().mean() > 0.9  # w = 1: the o = 1 conditional


def test_a_bc_flow_converts_to_a_guided_flow_that_reproduces_it_at_any_guidance():
    torch.manual_seed(0)
    bc = Policy(PolicyConfig(obs_dim=3, action_dim=2, horizon=2, num_steps=4, network=NetworkConfig(hidden=[32])))
    guided = guided_policy_from(bc, guidance=2.5)
    assert guided.config.kind == "guided_flow" and guided.config.guidance == 2.5
    cond = torch.randn(16, 3)
    with torch.no_grad():
        expected = bc.sample(cond, generator=torch.Generator().manual_seed(0)).actions
        for w in (0.0, 1.0, 2.5):
            guided.set_guidance(w)
            assert torch.allclose(guided.sample(cond, generator=torch.Generator().manual_seed(0)).actions, expected,
                                  atol=1e-6)
    with pytest.raises(ValueError, match="flow policy"):
        guided_policy_from(Policy(PolicyConfig(kind="diffusion", obs_dim=1, action_dim=1,
                                               network=NetworkConfig(hidden=[8]))))
    with pytest.raises(ValueError, match="guided_flow"):
        bc.set_guidance(1.0)


def test_expectile_loss_weights_positive_and_negative_errors():
    diff = torch.tensor([1.0, -1.0])
    assert expectile_loss(diff, 0.9).item() == pytest.approx((0.9 + 0.1) / 2)
    assert expectile_loss(torch.tensor([2.0]), 0.9).item() == pytest.approx(0.9 * 4)
    assert expectile_loss(torch.tensor([-2.0]), 0.9).item() == pytest.approx(0.1 * 4)


def test_iql_advantage_has_the_known_sign_on_a_one_step_bandit():
    """One-step episodes (terminated): Q(a) = r(a), V → an upper expectile of r under the data, so the
    advantage is positive for the good cluster and negative for the bad one."""
    torch.manual_seed(0)
    critic = IQLCritic(1, 1, [64, 64], "silu")
    opt = torch.optim.Adam(list(critic.q.parameters()) + list(critic.v.parameters()), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(1500):
        actions = torch.where(torch.rand(256, 1, generator=gen) < 0.5, GOOD_ACTION, BAD_ACTION)
        actions = actions + 0.1 * torch.randn(256, 1, generator=gen)
        batch = {"cond": torch.zeros(256, 1), "actions": actions, "rewards": bandit_reward(actions),
                 "next_cond": torch.zeros(256, 1), "terminated": torch.ones(256)}
        value_loss, q_loss = critic.losses(batch, gamma=0.99, expectile=0.7)
        opt.zero_grad()
        (value_loss + q_loss).backward()
        opt.step()
        with torch.no_grad():
            for p, tp in zip(critic.q.parameters(), critic.q_target.parameters(), strict=True):
                tp.lerp_(p, 0.05)
    probe = torch.tensor([[GOOD_ACTION], [BAD_ACTION]])
    advantage = critic.advantage(torch.zeros(2, 1), probe)
    assert advantage[0] > 0 > advantage[1], advantage
    # V sits between the two clusters' rewards (0 and −1.44), at its 0.7-expectile
    v = critic.v(torch.zeros(1, 1)).item()
    assert -1.3 < v < -0.1, v


@pytest.fixture(scope="module")
def reach_demos(tmp_path_factory):
    """Reach episodes whose actions are half good (the target + small noise), half random."""
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(40):
        targets = rng.uniform(-0.8, 0.8, (9, 2)).astype(np.float32)
        good = rng.random(8) < 0.5
        actions = np.where(good[:, None], targets[:8] + 0.05 * rng.standard_normal((8, 2)),
                           rng.uniform(-1, 1, (8, 2))).astype(np.float32)
        rewards = -np.square(actions - targets[:8]).sum(-1).astype(np.float32)
        episodes.append(Episode(observations=targets, actions=np.clip(actions, -1, 1), rewards=rewards,
                                terminated=False, truncated=True, seed=i))
    return write_robomimic_hdf5(tmp_path_factory.mktemp("demos") / "reach.hdf5", episodes, env_id="ReachTest-v0")


def cfgrl_config(policy, out, dataset, **algo):
    return from_dict(FinetuneConfig, {
        "algorithm": "cfgrl", "env_id": "ReachTest-v0", "policy": str(policy), "out": str(out), "seed": 0,
        "torch_threads": 1,
        "runner": {"total_env_steps": 1024, "eval_every": 0, "eval_episodes": 16, "progress": False},
        "algo": {"dataset": str(dataset), "critic_pretrain_steps": 300, "offline_iterations": 3,
                 "updates_per_iteration": 300, "batch_size": 128, "critic_hidden": [64, 64], "actor_lr": 2e-3,
                 "critic_lr": 3e-3, "gamma": 0.5, "reward_scale": 1.0, "guidance": 2.0, **algo}})


@pytest.fixture(scope="module")
def reach_bc_policy(reach_demos, tmp_path_factory):
    """A BC flow on the mixed demonstrations (so its return is mediocre: half the data is random)."""
    from pretrain.bc import PretrainConfig, pretrain

    out = tmp_path_factory.mktemp("reach_bc")
    cfg = from_dict(PretrainConfig, {
        "env_id": "ReachTest-v0", "dataset": str(reach_demos), "out": str(out), "torch_threads": 1,
        "policy": {"horizon": 1, "num_steps": 4, "network": {"hidden": [64, 64]}},
        "train": {"steps": 1500, "batch_size": 128, "lr": 2e-3, "eval_every": 0, "eval_episodes": 8,
                  "checkpoint_every": 0, "val_fraction": 0.0, "warmup_steps": 50}})
    pretrain(cfg, progress=False)
    return out / "policy"


def test_offline_cfgrl_beats_bc_on_mixed_data_and_the_sweep_reports_every_w(reach_bc_policy, reach_demos, tmp_path,
                                                                            capsys):
    summary = finetune(cfgrl_config(reach_bc_policy, tmp_path, reach_demos))
    assert summary["env_steps"] == 0 and summary["iterations"] == 3
    # BC imitates half-random actions; guided by the learned advantage the policy reaches for the target
    assert summary["final_return"] > 0.6 * summary["initial_return"], summary
    policy, _ = load_policy(tmp_path / "policy")
    assert policy.config.kind == "guided_flow" and policy.config.guidance == 2.0
    assert cli_main(["evaluate", "--checkpoint", str(tmp_path / "policy"), "--episodes", "8", "--guidance", "0",
                     "1", "2", "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["guidance_sweep"]
    assert [row["guidance"] for row in sweep] == [0.0, 1.0, 2.0]
    assert all(row["episodes"] == 8 and "return_mean" in row for row in sweep)
    assert sweep[2]["return_mean"] > sweep[0]["return_mean"]


def test_guidance_sweep_refuses_a_policy_without_labels(reach_bc_policy, capsys):
    assert cli_main(["evaluate", "--checkpoint", str(reach_bc_policy), "--episodes", "2", "--guidance", "1"]) != 0
    assert "guided_flow" in capsys.readouterr().err


def test_online_cfgrl_collects_into_the_replay_and_resumes_exactly(reach_bc_policy, reach_demos, tmp_path,
                                                                   monkeypatch):
    def config(out):
        cfg = cfgrl_config(reach_bc_policy, out, reach_demos, mode="online", num_envs=4, decisions_per_env=32,
                           critic_pretrain_steps=100, updates_per_decision=0.5)
        cfg.runner.eval_every = 1
        return cfg

    full, resumed = full_and_resumed_runs(config, CFGRLLearner, tmp_path, monkeypatch, crash_at=3)
    assert full["env_steps"] == 1024 and full["iterations"] == 8
    assert resumed["final_return"] == full["final_return"] and resumed["env_steps"] == full["env_steps"]
    agent = load_agent(tmp_path / "resumed" / "policy")
    assert agent.act(np.zeros(2, np.float32)).shape == (2,)


def test_online_demo_fraction_and_rollout_guidance(reach_bc_policy, reach_demos, tmp_path, monkeypatch):
    cfg = cfgrl_config(reach_bc_policy, tmp_path, reach_demos, mode="online", num_envs=4, decisions_per_env=8,
                       demo_fraction=0.25, rollout_guidance=1.0)
    learner = CFGRLLearner(load_policy(reach_bc_policy)[0], "ReachTest-v0", from_dict(CFGRLConfig, cfg.algo), 4)
    seen_w = []
    sample = learner.policy.sample
    monkeypatch.setattr(learner.policy, "sample", lambda *a, **k: (seen_w.append(learner.policy.model.guidance),
                                                                   sample(*a, **k))[1])
    learner.collect(0)
    assert set(seen_w) == {1.0} and learner.policy.config.guidance == 2.0  # rolled out at 1, restored to 2
    assert len(learner.replay) == 32 and len(learner.demos) == 320  # the online replay holds rollouts only
    learner.demos.rewards[:] = 123.0  # a marker no rollout reward (≤ 0) can take
    batch = learner.sample_batch()
    assert batch["cond"].shape[0] == 128 and (batch["rewards"] == 123.0).sum() == 32  # a quarter from the demos
    learner.envs.close()

    def config(out):
        return cfgrl_config(reach_bc_policy, out, reach_demos, mode="online", num_envs=4, decisions_per_env=32,
                            critic_pretrain_steps=100, demo_fraction=0.5, rollout_guidance=1.0)

    full, resumed = full_and_resumed_runs(config, CFGRLLearner, tmp_path, monkeypatch, crash_at=3)
    assert resumed["final_return"] == full["final_return"] and resumed["env_steps"] == full["env_steps"]


def test_cfgrl_config_errors_are_clear(reach_bc_policy, tmp_path):
    with pytest.raises(ValueError, match="algo.mode: expected one of offline, online"):
        from_dict(CFGRLConfig, {"mode": "batch", "dataset": "x"}, prefix="algo")
    with pytest.raises(ValueError, match="needs algo.dataset"):
        CFGRLLearner(load_policy(reach_bc_policy)[0], "ReachTest-v0", CFGRLConfig(), 1)
    with pytest.raises(ValueError, match="demo_fraction must lie in"):
        CFGRLLearner(load_policy(reach_bc_policy)[0], "ReachTest-v0",
                     CFGRLConfig(mode="online", dataset="x", demo_fraction=1.0), 1)
