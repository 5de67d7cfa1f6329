"""Invariants every learner shares, checked through the real code paths: the K a run trains with is the K
it evaluates and saves; bootstrapped values come from the true final observation (not the next episode's
reset); demonstration transitions see the observation histories the env would give."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CounterEnv

import agents.runner
from agents.finetune import FinetuneConfig, finetune
from flowpolicy import load_agent, load_policy
from flowpolicy.config import from_dict
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig

# small settings per algorithm: two iterations of ~16 env steps on the 8-step ReachTest task
TINY = {
    "reinflow": {"num_envs": 2, "decisions_per_env": 8, "minibatch_size": 16, "update_epochs": 1, "critic_hidden": [8],
                 "noise_hidden": [8], "sigma_min": 0.1, "sigma_max": 0.24},
    "fpo": {"num_envs": 2, "decisions_per_env": 8, "minibatch_size": 16, "update_epochs": 1, "n_mc": 2,
            "critic_hidden": [8]},
    "grpo": {"group_size": 2, "num_groups": 1, "max_decisions": 8, "minibatch_size": 16, "update_epochs": 1},
    "qsm": {"num_envs": 2, "decisions_per_env": 8, "batch_size": 16, "critic_hidden": [8], "exploration_noise": 0.1,
            "reward_scale": 0.1, "bc_coeff": 0.0, "q_grad_coeff": 0.01},
}


@pytest.mark.parametrize("algorithm", sorted(TINY))
def test_a_run_evaluates_and_saves_the_K_it_trains_with(algorithm, reach_policy, tmp_path, monkeypatch):
    """algo.K = 3 on a policy pretrained with num_steps = 2: every evaluation samples with K = 3 and the
    saved policies (final, last, best) default to it."""
    assert load_policy(reach_policy)[0].config.num_steps == 2
    evaluated_K = []
    evaluate = agents.runner.evaluate_agent

    def spy(agent, *args, **kwargs):
        evaluated_K.append(agent.K)
        return evaluate(agent, *args, **kwargs)

    monkeypatch.setattr(agents.runner, "evaluate_agent", spy)
    out = tmp_path / "run"
    finetune(from_dict(FinetuneConfig, {
        "algorithm": algorithm, "env_id": "ReachTest-v0", "policy": str(reach_policy), "out": str(out),
        "torch_threads": 1, "runner": {"total_env_steps": 32, "eval_every": 1, "eval_episodes": 2, "progress": False},
        "algo": {"K": 3, **TINY[algorithm]}}))
    assert evaluated_K and set(evaluated_K) == {3}
    for saved in ("policy", "checkpoints/last", "checkpoints/best"):
        assert load_policy(out / saved)[0].config.num_steps == 3, saved
    assert load_agent(out / "policy").K == 3


gym.register("CounterTest-v0", entry_point=CounterEnv, kwargs={"length": 10})


@pytest.mark.parametrize("n_obs_steps", [1, 2, 3])
@pytest.mark.parametrize(("H", "T"), [(1, 5), (4, 10), (3, 10), (4, 2)])
def test_demonstration_histories_are_the_ones_the_env_gives(n_obs_steps, H, T, monkeypatch):
    """The demonstration of a T-step episode with o_t = t, as decision-level transitions, against the same
    episode stepped through VecEnv (observation history padded at the start, final observation at the end)."""
    import pretrain.bc
    from agents.replay import demonstration_transitions
    from envs.vector import VecEnv
    from pretrain.datasets import Episode

    policy = Policy(PolicyConfig(obs_dim=1, action_dim=1, horizon=H, act_steps=H, n_obs_steps=n_obs_steps,
                                 network=NetworkConfig(hidden=[8])))
    with VecEnv("CounterTest-v0", 1, act_steps=H, n_obs_steps=n_obs_steps, length=T) as envs:
        obs, cond, next_cond, terminated = envs.reset(seed=0), [], [], []
        while True:
            out = envs.step(np.zeros((1, H, 1)))
            cond.append(policy.condition(torch.as_tensor(obs)))
            next_cond.append(policy.condition(torch.as_tensor(out.final_obs)))
            terminated.append(float(out.terminated[0]))
            obs = out.obs
            if out.done[0]:
                break
    episode = Episode(observations=np.arange(T + 1)[:, None], actions=np.zeros((T, 1)), rewards=np.ones(T),
                      terminated=True, truncated=False)
    monkeypatch.setattr(pretrain.bc, "load_demonstrations", lambda source: ([episode], {}))
    demos = demonstration_transitions(policy, "counter")
    assert torch.equal(demos["cond"], torch.cat(cond))
    assert torch.equal(demos["next_cond"], torch.cat(next_cond))
    assert demos["terminated"].tolist() == terminated


# -- bootstrapping from the true final observation ------------------------------------------------
gym.register("StepIndexTest-v0", entry_point=CounterEnv, max_episode_steps=3)  # truncated at 3, never terminates
GAMMA, LAMBDA = 0.5, 0.5


class StepValue(torch.nn.Module):
    """V(s) = s for a one-dimensional condition (``squeeze``: return [B] like ValueNet, else [B, 1])."""

    def __init__(self, squeeze: bool):
        super().__init__()
        self.squeeze = squeeze

    def forward(self, cond):
        return cond[..., 0] if self.squeeze else cond[..., :1]


def step_index_policy():
    torch.manual_seed(0)
    return Policy(PolicyConfig(obs_dim=1, action_dim=1, horizon=1, num_steps=2, network=NetworkConfig(hidden=[8])))


# With V(s) = s and γ = λ = 0.5 each of the two envs sees s = 0, 1, 2 | 0, 1: truncated by the time limit after
# s = 2 (true final observation 3; the reset observation 0 is what comes next) and by the iteration at the end.
# δ_t = 1 + γ·s'_t − s_t = 1.5, 1, 0.5 | 1.5, 1 and the trace is cut at both ends.
STEP_INDEX_ADVANTAGES = [1.5 + 0.25 * (1 + 0.25 * 0.5), 1 + 0.25 * 0.5, 0.5, 1.5 + 0.25 * 1, 1.0]


@pytest.mark.parametrize("algorithm", ["reinflow", "fpo"])
def test_on_policy_rollouts_bootstrap_a_truncation_from_the_true_final_observation(algorithm):
    """Bootstrapping from the reset observation instead would give δ_2 = 1 + γ·0 − 2 = −1."""
    from agents.fpo import FPOConfig, FPOLearner
    from agents.reinflow import ReinFlowConfig, ReinFlowLearner

    config_cls, learner_cls = (ReinFlowConfig, ReinFlowLearner) if algorithm == "reinflow" else (FPOConfig, FPOLearner)
    fixed_noise = {"sigma_min": 0.1, "sigma_max": 0.24} if algorithm == "reinflow" else {}
    config = config_cls(num_envs=2, decisions_per_env=5, gamma=GAMMA, gae_lambda=LAMBDA, normalize_rewards=False,
                        critic_hidden=[8], **fixed_noise)
    learner = learner_cls(step_index_policy(), "StepIndexTest-v0", config, total_iterations=1)
    learner.critic = StepValue(squeeze=False)
    learner.collect(0)
    buffer = learner.buffer
    assert buffer.cond[:, :, 0].T.tolist() == [[0, 1, 2, 0, 1]] * 2
    assert buffer.next_values.T.tolist() == [[1, 2, 3, 1, 2]] * 2
    expected = torch.tensor(STEP_INDEX_ADVANTAGES)[:, None].expand(5, 2)
    torch.testing.assert_close(buffer.advantages, expected)
    torch.testing.assert_close(buffer.returns, expected + buffer.cond[:, :, 0])
    learner.envs.close()


def test_chain_learner_bootstraps_a_truncation_from_the_true_final_observation():
    """advantages: gae in the chain learners; an episode stops at the time limit (s = 0, 1, 2), well before
    max_decisions: λ-returns A + V from δ = 1.5, 1, 0.5 (with the reset observation δ_2 would be −1)."""
    from agents.chain_pg import ChainPGLearner, GRPOConfig

    config = GRPOConfig(group_size=2, num_groups=1, max_decisions=5, advantages="gae", gamma=GAMMA,
                        gae_lambda=LAMBDA, normalize_rewards=False, critic_hidden=[8])
    learner = ChainPGLearner(step_index_policy(), "StepIndexTest-v0", config, total_iterations=1)
    learner.critic = StepValue(squeeze=True)
    learner.collect(0)
    assert learner.batch["cond"][:, 0].tolist() == [0, 0, 1, 1, 2, 2]  # step-major rows of the two envs
    advantages = torch.tensor(STEP_INDEX_ADVANTAGES[:3])  # A at s = 0, 1, 2
    torch.testing.assert_close(learner.batch["returns"], (advantages + torch.tensor([0.0, 1, 2])).repeat_interleave(2))
    learner.envs.close()


def test_gae_cuts_the_trace_at_a_truncation_inside_the_rollout():
    """Two envs, four steps, non-zero δ everywhere. Env 0 is truncated at t = 1 (bootstraps from its final
    observation, V = 1.5) and cut by the rollout at t = 3; env 1 terminates at t = 2 (no bootstrap)."""
    from agents.buffers import compute_gae

    gamma, lam = 0.9, 0.8
    rewards = torch.tensor([[1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [4.0, 1.0]])
    values = torch.tensor([[0.5, 1.0], [1.0, 1.0], [0.2, 1.0], [0.7, 1.0]])
    next_values = torch.tensor([[1.0, 1.0], [1.5, 1.0], [0.7, 5.0], [0.9, 1.0]])
    terminated = torch.tensor([[0, 0], [0, 0], [0, 1], [0, 0]], dtype=torch.bool)
    truncated = torch.tensor([[0, 0], [1, 0], [0, 0], [1, 1]], dtype=torch.bool)
    advantages, returns = compute_gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    # env 0: δ = 1.4, 2.35, 3.43, 4.11; the trace restarts after t = 1
    # env 1: δ = 0.9, 0.9, 0 (terminated: 1 + 0 − 1), 0.9; the trace restarts after t = 2
    expected = torch.tensor([[1.4 + 0.72 * 2.35, 0.9 + 0.72 * 0.9], [2.35, 0.9], [3.43 + 0.72 * 4.11, 0.0],
                             [4.11, 0.9]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)
