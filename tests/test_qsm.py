"""QSM: the actor loss on an analytic bandit, the critic's TD target, the replay buffer, and a short run."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import full_and_resumed_runs

from agents.finetune import FinetuneConfig, finetune
from agents.qsm import QSMConfig, QSMLearner, qsm_actor_loss
from agents.replay import ReplayBuffer, td_target
from benchmarks.qsm_bandit import A_STAR, bandit_q, run_bandit
from flowpolicy import load_agent, load_policy
from flowpolicy.config import from_dict
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
@pytest.mark.parametrize("anchor,scale,alpha", [("none", "none", 3.0), ("replay", "none", 3.0),
                                                ("reference", "snr", 0.3)])
def test_qsm_moves_a_bc_policy_to_the_argmax_of_a_known_q(kind, anchor, scale, alpha):
    """One-step bandit with Q = −‖a − a*‖²: BC on data around (−0.4, 0.3), then QSM with the analytic Q on
    a replay that fills with the policy's own (exploration-noised) samples, as in the learner."""
    row = run_bandit(kind, anchor, scale, alpha)
    assert row["distance_before"] > 0.9  # BC sits at the data
    # measured: 0.002–0.010 after (docs/qsm.md)
    assert row["distance_after"] < 0.05, row


@pytest.mark.parametrize("kind", ["flow", "diffusion"])
def test_the_bc_term_trades_the_argmax_for_the_data(kind):
    """With bc_coeff the fixed point lies between the data and a*, nearer the data as the weight grows."""
    # measured (flow / diffusion): 0.54 / 0.20 at 0.3, 0.95 / 0.61 at 3 (no BC term: 0.002 / 0.003)
    weak, strong = (run_bandit(kind, "reference", "snr", 0.3, bc_coeff=w) for w in (0.3, 3.0))
    assert 0.1 < weak["distance_after"] < strong["distance_after"] < strong["distance_before"], (weak, strong)

# the settings these tests were written with: fixed noise and reward scale, raw ∇Q (the defaults are now
# measured on the task or normalized, agents/autoscale.py, tested in tests/test_autoscale.py)
LEGACY = {"exploration_noise": 0.1, "target_noise": 0.1, "target_noise_clip": 0.3, "reward_scale": 0.1,
          "q_grad_coeff": 0.1, "q_grad_normalize": False, "tau": 0.005, "gamma": 0.99, "critic_warmup_iterations": 1,
          "bc_coeff": 0.0}


def test_qsm_target_sign_and_scale_in_noise_prediction_space():
    """At the loss minimum ε̂ = −α·c_t·∇Q: check the gradient of the loss w.r.t. ε̂ vanishes there."""
    policy = Policy(PolicyConfig(kind="diffusion", obs_dim=1, action_dim=2, horizon=1, num_steps=4,
                                 network=NetworkConfig(hidden=[8])))
    captured = {}

    def fake_epsilon(x, t, obs):
        captured["x"], captured["t"] = x, t
        # the exact minimizer for grad_at="noised", noise-scaled: ε̂ = −α·sqrt(1 − ᾱ)·∇Q(x_t)
        sigma = (1 - policy.model.alphas_cumprod(t)).sqrt()[:, None]
        return -2.0 * sigma * (-2.0 * (x - A_STAR)) + 0 * policy.model.net(x, t, obs)

    policy.model.epsilon = fake_epsilon
    loss, grad_norm = qsm_actor_loss(policy, bandit_q, torch.zeros(16, 1), torch.zeros(16, 2), alpha=2.0,
                                     grad_at="noised", target_scale="noise",
                                     generator=torch.Generator().manual_seed(0))
    assert loss.item() < 1e-10
    assert grad_norm == pytest.approx((2 * (captured["x"] - A_STAR)).norm(dim=-1).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="grad_at"):
        qsm_actor_loss(policy, bandit_q, torch.zeros(4, 1), torch.zeros(4, 2), alpha=1.0, grad_at="clamped")


def test_td_target_bootstraps_through_truncation_but_not_termination():
    rewards = torch.tensor([1.0, 1.0, 1.0])
    terminated = torch.tensor([0.0, 1.0, 0.0])  # row 0: mid-episode, row 1: terminal, row 2: truncated
    next_q = torch.tensor([10.0, 10.0, 10.0])
    assert torch.allclose(td_target(rewards, terminated, next_q, 0.9), torch.tensor([10.0, 1.0, 10.0]))


def test_learner_critic_targets_use_the_smaller_target_q_and_mask_only_termination(reach_policy):
    policy, _ = load_policy(reach_policy)
    config = QSMConfig(**{**LEGACY, "num_envs": 2, "decisions_per_env": 4, "critic_hidden": [8], "gamma": 0.5})
    learner = QSMLearner(policy, "ReachTest-v0", config, total_iterations=1)
    learner.critic_target.forward = lambda cond, actions: (torch.full((cond.shape[0],), 4.0),
                                                           torch.full((cond.shape[0],), 6.0))
    batch = {"rewards": torch.tensor([1.0, 1.0]), "terminated": torch.tensor([1.0, 0.0]),
             "next_cond": torch.zeros(2, 2)}
    assert torch.allclose(learner.critic_targets(batch), torch.tensor([1.0, 1.0 + 0.5 * 4.0]))
    learner.envs.close()


class ShortEpisodeEnv(gym.Env):
    """Observation = step count; terminates at step 3 if the first action was positive, else truncated
    by the time limit at step 3."""

    observation_space = gym.spaces.Box(-10.0, 10.0, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.first = 0, None
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        self.first = float(action[0]) if self.first is None else self.first
        terminated = self.t == 3 and self.first > 0
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


gym.register("ShortEpisodeTest-v0", entry_point=ShortEpisodeEnv, max_episode_steps=3)


def test_collected_transitions_keep_terminated_and_the_true_final_observation():
    policy = Policy(PolicyConfig(obs_dim=1, action_dim=1, horizon=1, num_steps=2, network=NetworkConfig(hidden=[8])))
    learner = QSMLearner(policy, "ShortEpisodeTest-v0", QSMConfig(**{**LEGACY, "num_envs": 2, "decisions_per_env": 7,
                                                                    "critic_hidden": [8], "exploration_noise": 0.0}
                                                                    ), total_iterations=1)
    with torch.no_grad():  # env 0 always acts +1 (terminates), env 1 always −1 (truncated)
        for p in policy.parameters():
            p.zero_()
    learner.policy.sample = lambda cond, *a, **k: type("C", (), {"actions": torch.tensor([[1.0], [-1.0]])})()
    learner.collect(0)
    n = len(learner.replay)
    obs, next_obs = learner.replay.cond[:n, 0], learner.replay.next_cond[:n, 0]
    term = learner.replay.terminated[:n]
    ends = next_obs == 3.0  # normalizer is the identity: the condition is the step count
    # each env ended episodes at step 3: its true final obs (3) is the next observation, not the reset obs
    assert ends.sum() >= 4 and torch.all(obs[ends] == 2.0)
    env_of_row = torch.arange(n) % 2
    assert torch.all(term[ends & (env_of_row == 0)] == 1.0) and torch.all(term[ends & (env_of_row == 1)] == 0.0)
    assert torch.all(term[~ends] == 0.0)
    learner.envs.close()


def test_replay_buffer_wraps_and_restores():
    buf = ReplayBuffer(5, cond_dim=1, action_dim=1)
    for i in range(3):
        buf.add(torch.full((2, 1), float(i)), torch.zeros(2, 1), [i, i], torch.zeros(2, 1), [0, 0])
    assert len(buf) == 5 and buf.position == 1 and buf.cond[0, 0] == 2.0  # the oldest row was overwritten
    copy = ReplayBuffer(5, cond_dim=1, action_dim=1)
    copy.load_state_tensors(buf.state_tensors(), buf.position)
    assert torch.equal(copy.cond, buf.cond) and copy.position == buf.position and len(copy) == 5


def test_replay_seeded_from_a_demonstration_dataset(tmp_path):
    from pretrain.datasets import Episode, write_robomimic_hdf5

    episodes = [Episode(observations=np.arange(11, dtype=np.float32)[:, None].repeat(2, 1),
                        actions=np.full((10, 2), 0.5, np.float32), rewards=np.ones(10, np.float32),
                        terminated=True, truncated=False, seed=0)]
    path = write_robomimic_hdf5(tmp_path / "demo.hdf5", episodes, env_id="ReachTest-v0")
    policy = Policy(PolicyConfig(obs_dim=2, action_dim=2, horizon=4, act_steps=4, num_steps=2,
                                 network=NetworkConfig(hidden=[8])))
    learner = QSMLearner(policy, "ReachTest-v0", QSMConfig(**{**LEGACY, "num_envs": 1, "decisions_per_env": 2,
                                                             "critic_hidden": [8], "reward_scale": 0.5,
                                                             "dataset": str(path)}), 1)
    r = learner.replay
    assert len(r) == 3  # decisions at steps 0, 4, 8 of a 10-step episode
    assert torch.equal(r.cond[:3, 0], torch.tensor([0.0, 4.0, 8.0]))
    assert torch.equal(r.next_cond[:3, 0], torch.tensor([4.0, 8.0, 10.0]))  # the last one: the final obs
    assert torch.equal(r.rewards[:3], torch.tensor([2.0, 2.0, 1.0]))  # 4, 4, 2 steps × 1 × 0.5
    assert torch.equal(r.terminated[:3], torch.tensor([0.0, 0.0, 1.0]))
    learner.envs.close()


def qsm_config(policy, out, total=4096, **algo):
    return from_dict(FinetuneConfig, {
        "algorithm": "qsm", "env_id": "ReachTest-v0", "policy": str(policy), "out": str(out), "seed": 1,
        "torch_threads": 1,
        "runner": {"total_env_steps": total, "eval_every": 0, "eval_episodes": 16, "progress": False},
        "algo": {**LEGACY, "num_envs": 8, "decisions_per_env": 32, "batch_size": 128, "updates_per_decision": 0.25,
                 "critic_lr": 3e-3, "actor_lr": 1e-3, "critic_warmup_iterations": 2,
                 "critic_hidden": [64, 64], "reward_scale": 1.0, "gamma": 0.5, **algo}})


def test_qsm_improves_a_tiny_task_and_saves_a_loadable_policy(reach_policy, tmp_path):
    """From a random (not behavior-cloned) policy with K = 2 only the paper's unanchored target learns
    here: the reference anchor keeps the untrained first Euler step, which ε-space targets cannot reach."""
    summary = finetune(qsm_config(reach_policy, tmp_path, anchor="none", target_scale="none", q_grad_coeff=3.0))
    # measured: −12.2 → −0.46 (optimum 0); demand at least a four-fold cut of the squared error
    assert summary["initial_return"] < -5 and summary["final_return"] > 0.25 * summary["initial_return"], summary
    agent = load_agent(tmp_path / "policy")
    assert agent.act(np.zeros(2, np.float32)).shape == (2,)


def test_qsm_resume_reproduces_an_uninterrupted_run(reach_policy, tmp_path, monkeypatch):
    """The replay buffer, critics, target critics, reference policy and optimizers must all come back."""

    def config(out):
        return qsm_config(reach_policy, out, total=2048, anchor="reference", reference_update_every=1)

    full, resumed = full_and_resumed_runs(config, QSMLearner, tmp_path, monkeypatch)
    for key in ("final_return", "env_steps", "iterations"):
        assert resumed[key] == full[key], key
    a, _ = load_policy(tmp_path / "full" / "policy")
    b, _ = load_policy(tmp_path / "resumed" / "policy")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_bc_coeff_needs_the_demonstrations(reach_policy):
    with pytest.raises(ValueError, match="bc_coeff > 0 needs a dataset"):
        QSMLearner(load_policy(reach_policy)[0], "ReachTest-v0",
                   QSMConfig(**{**LEGACY, "num_envs": 2, "decisions_per_env": 4, "bc_coeff": 0.5}), 1)


def reference_update(learner: QSMLearner, iteration: int) -> dict:
    """The learner's update written the straightforward way (the code before its throughput work):
    the full sampler chain for targets, per-parameter Polyak and gradient clipping, ``.item()`` per step."""
    from torch import nn

    c = learner.cfg
    n_updates = max(1, int(round(c.updates_per_decision * c.num_envs * c.decisions_per_env)))
    stats = {"critic_loss": [], "actor_loss": [], "q": []}
    for step in range(n_updates):
        batch = learner.replay.sample(c.batch_size, learner.generator)
        with torch.no_grad():
            next_actions = learner.policy.sample(batch["next_cond"], learner.sampler, learner.K,
                                                 learner.generator).actions
            smoothing = c.target_noise * torch.randn(next_actions.shape, generator=learner.generator)
            next_actions = (next_actions + smoothing.clamp(-c.target_noise_clip, c.target_noise_clip)).clamp(-1, 1)
            next_q = torch.minimum(*learner.critic_target(batch["next_cond"], next_actions))
            target = td_target(batch["rewards"], batch["terminated"], next_q, c.gamma)
        q1, q2 = learner.critic(batch["cond"], batch["actions"])
        critic_loss = (q1 - target).square().mean() + (q2 - target).square().mean()
        learner.critic_opt.zero_grad(set_to_none=True)
        critic_loss.backward()
        nn.utils.clip_grad_norm_(learner.critic.parameters(), c.max_grad_norm)
        learner.critic_opt.step()
        stats["critic_loss"].append(critic_loss.item())
        stats["q"].append(q1.mean().item())
        if iteration >= c.critic_warmup_iterations and step % c.policy_delay == c.policy_delay - 1:
            learner.critic.requires_grad_(False)
            actor_loss, _ = qsm_actor_loss(learner.policy, learner.q_mean, batch["cond"], batch["actions"],
                                           c.q_grad_coeff, c.grad_at, c.target_scale, c.anchor, learner.reference,
                                           learner.generator)
            learner.critic.requires_grad_(True)
            if learner.demos is not None:
                demo = learner.demos.sample(c.batch_size, learner.generator)
                actor_loss = actor_loss + c.bc_coeff * learner.policy.bc_loss(demo["cond"], demo["actions"],
                                                                              learner.generator)
            learner.actor_opt.zero_grad(set_to_none=True)
            actor_loss.backward()
            nn.utils.clip_grad_norm_(learner.policy.parameters(), c.max_grad_norm)
            learner.actor_opt.step()
            stats["actor_loss"].append(actor_loss.item())
        with torch.no_grad():
            for p, tp in zip(learner.critic.parameters(), learner.critic_target.parameters(), strict=True):
                tp.lerp_(p, c.tau)
    return {f"losses/{k}": float(np.mean(v)) for k, v in stats.items() if k != "q" and v} | \
        {"charts/q_mean": float(np.mean(stats["q"]))}


@pytest.mark.parametrize("kind,policy_delay", [("flow", 1), ("diffusion", 1), ("flow", 2)])
def test_optimized_update_matches_the_straightforward_one(kind, policy_delay, tmp_path):
    """Golden test of the throughput work: two learners from the same seed, one updated by ``update`` and one
    by :func:`reference_update` with plain (for-loop) Adam, give the same networks and losses after two
    iterations (the BC term and the reference anchor included); only float rounding of fused Adam differs."""
    from agents.replay import ReplayBuffer as Replay
    from flowpolicy.checkpoint import save_policy

    torch.manual_seed(0)
    path = save_policy(Policy(PolicyConfig(kind=kind, obs_dim=2, action_dim=2, horizon=1, num_steps=3,
                                           network=NetworkConfig(hidden=[32, 32]))), tmp_path / "p",
                       metadata={"env_id": "ReachTest-v0"})
    config = QSMConfig(**{**LEGACY, "num_envs": 2, "decisions_per_env": 16, "critic_hidden": [32, 32],
                          "batch_size": 32, "updates_per_decision": 0.25, "critic_warmup_iterations": 1, "tau": 0.05,
                          "q_grad_coeff": 0.5, "actor_lr": 1e-3, "bc_coeff": 0.0, "policy_delay": policy_delay})
    learners = []
    for _ in range(2):
        torch.manual_seed(1)
        learner = QSMLearner(load_policy(path)[0], "ReachTest-v0", config, total_iterations=4, seed=3)
        learner.collect(0)
        learner.demos = Replay(64, 2, 2)  # a BC term on a fixed set of "demonstrations"
        learner.demos.add(learner.replay.cond[:64], learner.replay.actions[:64], learner.replay.rewards[:64],
                          learner.replay.next_cond[:64], learner.replay.terminated[:64])
        learner.cfg = copy.copy(config)
        learner.cfg.bc_coeff = 0.5
        learners.append(learner)
    fast, slow = learners
    slow.actor_opt = torch.optim.Adam(slow.policy.parameters(), lr=config.actor_lr, foreach=False)
    slow.critic_opt = torch.optim.Adam(slow.critic.parameters(), lr=config.critic_lr, foreach=False)
    for iteration in (0, 1):  # critic only, then critic and actor
        got, want = fast.update(iteration), reference_update(slow, iteration)
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), (iteration, key)
    assert fast.generator.get_state().equal(slow.generator.get_state())  # the same random draws, in order
    # TD3's delay: one actor step after every policy_delay-th critic step (8 critic steps in the actor iteration)
    actor_steps = {int(state["step"]) for state in fast.actor_opt.state.values()}
    assert actor_steps == {8 // policy_delay}
    for name in ("policy", "critic", "critic_target"):
        for (pname, a), (_, b) in zip(getattr(fast, name).state_dict().items(),
                                      getattr(slow, name).state_dict().items(), strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), f"{name}.{pname}"
    cond = torch.randn(8, 2)
    fast.generator.manual_seed(7)
    lean = fast.deterministic_actions(cond)
    fast.generator.manual_seed(7)
    assert torch.equal(lean, fast.policy.sample(cond, fast.sampler, fast.K, fast.generator).actions)
    for learner in learners:
        learner.envs.close()


def test_multi_tensor_polyak_and_clipping_match_the_per_parameter_versions():
    from torch import nn

    from agents.critics import DoubleQ, clip_grad_norm, polyak_update

    torch.manual_seed(0)
    source, target = DoubleQ(5, 3, [16, 16]), DoubleQ(5, 3, [16, 16])
    expected = copy.deepcopy(target)
    polyak_update(source, target, 0.01)
    with torch.no_grad():
        for p, tp in zip(source.parameters(), expected.parameters(), strict=True):
            tp.lerp_(p, 0.01)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), expected.parameters(), strict=True))
    twin = copy.deepcopy(source)
    q1, q2 = source(torch.randn(7, 5), torch.randn(7, 3))
    ((q1 + q2).sum() * 100).backward()
    for p, q in zip(source.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()
    want = nn.utils.clip_grad_norm_(list(source.parameters()), 0.5)
    assert torch.equal(clip_grad_norm(list(twin.parameters()), 0.5), want) and want > 0.5
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(source.parameters(), twin.parameters(), strict=True))
