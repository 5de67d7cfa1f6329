"""ReinFlow and the shared runner: GAE golden tests, ratio assertion, improvement, exact resume, NaN guard."""

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import CounterEnv, full_and_resumed_runs

from agents.buffers import RolloutBuffer, compute_gae
from agents.finetune import FinetuneConfig, finetune
from agents.ppo import RatioCheckError, RunningReturnScale, check_ratio_is_one
from agents.reinflow import ReinFlowConfig, ReinFlowLearner
from agents.runner import NonFiniteError
from flowpolicy import load_agent, load_policy
from flowpolicy.config import from_dict

GAMMA = 0.9


# -- GAE golden tests -------------------------------------------------------------------------

def test_gae_bootstraps_on_time_limit_truncation():
    """Infinite-horizon task (reward 1 forever) cut by a time limit: with the true value 1/(1−γ)
    everywhere, every advantage must be 0 — only if truncation bootstraps from V(final obs)."""
    T, v = 6, 1.0 / (1.0 - GAMMA)
    rewards = torch.ones(T, 1)
    values = torch.full((T, 1), v)
    truncated = torch.zeros(T, 1, dtype=torch.bool)
    truncated[2] = True  # the time limit hits at step 2, a new episode starts at step 3
    adv, returns = compute_gae(rewards, values, torch.full((T, 1), v), torch.zeros_like(truncated), truncated,
                               GAMMA, 0.95)
    torch.testing.assert_close(adv, torch.zeros(T, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(returns, values)


def test_gae_does_not_bootstrap_on_termination_and_cuts_the_trace():
    """Episode of 3 steps with reward 1 that terminates: true values are 3, 2, 1 (γ = 1, λ = 1 gives
    Monte-Carlo returns). A critic that wrongly predicts 10 for the terminal next state must be ignored,
    and the next episode's advantages must not leak into this one."""
    rewards = torch.tensor([[1.0], [1.0], [1.0], [5.0]])
    values = torch.tensor([[0.0], [0.0], [0.0], [0.0]])
    next_values = torch.tensor([[0.0], [0.0], [10.0], [0.0]])  # step 2's next state is terminal
    terminated = torch.tensor([[False], [False], [True], [False]])
    truncated = torch.tensor([[False], [False], [False], [True]])
    adv, returns = compute_gae(rewards, values, next_values, terminated, truncated, 1.0, 1.0)
    torch.testing.assert_close(returns[:3, 0], torch.tensor([3.0, 2.0, 1.0]))
    torch.testing.assert_close(adv[3, 0], torch.tensor(5.0))  # truncated, bootstrapped from V = 0


def test_gae_matches_a_hand_computed_lambda_return():
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.5], [1.0], [1.5]])
    next_values = torch.tensor([[1.0], [1.5], [2.0]])
    no = torch.zeros(3, 1, dtype=torch.bool)
    gamma, lam = 0.9, 0.8
    d = [1 + 0.9 * 1.0 - 0.5, 2 + 0.9 * 1.5 - 1.0, 3 + 0.9 * 2.0 - 1.5]
    expected = [d[0] + gamma * lam * (d[1] + gamma * lam * d[2]), d[1] + gamma * lam * d[2], d[2]]
    adv, _ = compute_gae(rewards, values, next_values, no, no, gamma, lam)
    torch.testing.assert_close(adv[:, 0], torch.tensor(expected))


# reward 1 every step, never terminates; a TimeLimit of 4 truncates it (SB3's InfiniteHorizonEnv idea)
gym.register("ForeverTest-v0", entry_point=CounterEnv, max_episode_steps=4)


def test_buffer_with_vector_env_bootstraps_truncated_episodes_from_the_final_observation():
    """Through the real VecEnv: a critic that knows V = 1/(1−γ) for every state yields zero advantages."""
    from envs.vector import make_vec_env

    vec, obs = make_vec_env("ForeverTest-v0", num_envs=2, seed=0)
    buffer = RolloutBuffer(7, 2, 1, (2, 1))
    value = lambda cond: torch.full(cond.shape[:1], 1.0 / (1.0 - GAMMA))  # noqa: E731
    for _ in range(7):
        out = vec.step(np.zeros((2, 1)))
        cond = torch.as_tensor(obs)
        buffer.add(cond, torch.zeros(2, 2, 1), torch.zeros(2, 1), value(cond), out.reward, out.terminated,
                   out.truncated, torch.as_tensor(out.final_obs))
        obs = out.obs
    assert buffer.truncated[3].all() and not buffer.terminated.any()
    buffer.finish(value, GAMMA, 0.95)
    torch.testing.assert_close(buffer.advantages, torch.zeros(7, 2), atol=1e-5, rtol=0)
    vec.close()


def reach_config(policy, out, total=6144, **algo):
    return from_dict(FinetuneConfig, {
        "algorithm": "reinflow", "env_id": "ReachTest-v0", "policy": str(policy), "out": str(out), "seed": 1,
        "torch_threads": 1,
        "runner": {"total_env_steps": total, "eval_every": 0, "eval_episodes": 16, "progress": False},
        "algo": {"num_envs": 8, "decisions_per_env": 64, "minibatch_size": 128, "update_epochs": 4, "actor_lr": 3e-3,
                 "noise_lr": 3e-3, "critic_lr": 3e-3, "clip_range": 0.2, "critic_warmup_iterations": 1,
                 "critic_hidden": [32, 32], "ent_coef": 0.0, "target_kl": None, "sigma_min": 0.1, "sigma_max": 0.24,
                 **algo}})


def test_running_return_scale_matches_the_std_of_the_discounted_returns_it_saw():
    """Golden: the scale is 1/std of every discounted return G_t = γ·G_{t−1} + r_t (reset after an episode
    end) of the steps it counted — all envs, or only the ``active`` ones."""
    rng = np.random.default_rng(0)
    T, N, gamma = 200, 6, 0.9
    rewards = rng.normal(1.0, 2.0, (T, N))
    done = rng.random((T, N)) < 0.05
    active = rng.random((T, N)) < 0.6
    for mask in (None, active):
        scale, returns, seen = RunningReturnScale(N, gamma), np.zeros(N), []
        for t in range(T):
            scaled = scale(rewards[t], done[t], None if mask is None else mask[t])
            returns = gamma * returns + rewards[t]
            seen.extend(returns if mask is None else returns[mask[t]])
            returns[done[t]] = 0.0
            np.testing.assert_allclose(scaled * np.sqrt(np.var(seen)), rewards[t], rtol=1e-4)


def test_reinflow_improves_a_tiny_task(reach_policy, tmp_path):
    summary = finetune(reach_config(reach_policy, tmp_path, total=16384))
    # measured: about −12 → −0.03 (optimum 0); demand at least a four-fold cut of the squared error
    assert summary["initial_return"] < -5 and summary["final_return"] > 0.25 * summary["initial_return"], summary
    # the fine-tuned policy is saved without the noise net and loads as an agent
    agent = load_agent(tmp_path / "policy")
    assert not any("noise" in k for k in agent.policy.state_dict())
    assert json.loads((tmp_path / "summary.json").read_text())["env_steps"] == summary["env_steps"]


def test_ratio_is_one_on_the_first_minibatch_and_the_check_fires(reach_policy, tmp_path):
    cfg = reach_config(reach_policy, tmp_path)
    policy, _ = load_policy(reach_policy)
    learner = ReinFlowLearner(policy, "ReachTest-v0", from_dict(ReinFlowConfig, cfg.algo), total_iterations=4, seed=0)
    learner.collect(1)
    metrics = learner.update(1)  # passes the assertion: deviation is measured and tiny
    assert metrics["losses/logprob_max_dev"] <= 1e-5
    learner.collect(2)
    learner.buffer.log_probs += 0.01  # a rollout/recomputation mismatch
    with pytest.raises(RatioCheckError, match="first minibatch of iteration 2 .PPO ratio != 1"):
        learner.update(2)
    learner.envs.close()


def test_resume_reproduces_an_uninterrupted_run(reach_policy, tmp_path, monkeypatch):
    """With evaluation, best checkpoints and the BC regularizer in play, so all of them must resume right."""

    def config(out):
        cfg = reach_config(reach_policy, out, bc_coef=0.1)
        cfg.runner.eval_every = 1
        return cfg

    full, resumed = full_and_resumed_runs(config, ReinFlowLearner, tmp_path, monkeypatch)

    for key in ("final_return", "best_return", "env_steps", "iterations", "initial_return"):
        assert resumed[key] == full[key], key
    a, _ = load_policy(tmp_path / "full" / "policy")
    b, _ = load_policy(tmp_path / "resumed" / "policy")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_non_finite_guard_stops_and_keeps_a_loadable_checkpoint(reach_policy, tmp_path, monkeypatch):
    original = ReinFlowLearner.update

    def poison_at_iteration_2(self, iteration):
        metrics = original(self, iteration)
        if iteration == 2:
            with torch.no_grad():
                next(self.policy.parameters()).fill_(float("nan"))
        return metrics

    monkeypatch.setattr(ReinFlowLearner, "update", poison_at_iteration_2)
    with pytest.raises(NonFiniteError, match="at iteration 2"):
        finetune(reach_config(reach_policy, tmp_path))
    policy, meta = load_policy(tmp_path / "checkpoints" / "last")
    assert meta["iteration"] == 2 and all(torch.isfinite(p).all() for p in policy.parameters())


def test_shipped_finetune_configs_are_valid():
    from pathlib import Path

    from agents.finetune import ALGORITHMS
    from flowpolicy.config import load_config

    paths = sorted(Path("configs").glob("*/*.yaml"))
    finetune_paths = [p for p in paths if p.stem != "pretrain"]
    # 4 locomotion tasks, OCBench block lite, Lift, Can, Square
    assert len([p for p in finetune_paths if p.stem == "reinflow"]) == 8
    for path in finetune_paths:
        cfg = load_config(FinetuneConfig, path)
        assert cfg.algorithm == path.stem, path
        shipped = cfg.policy.startswith("data/")  # DDPO starts from a diffusion BC the user pretrains
        assert not shipped or Path(cfg.policy).is_dir(), path
        algo = from_dict(ALGORITHMS[cfg.algorithm][0], cfg.algo, prefix="algo")
        if cfg.algorithm == "reinflow":
            assert algo.logprob_reduction == "mean"
        if getattr(algo, "dataset", None):
            assert Path(algo.dataset).is_dir(), path


def test_the_ratio_check_also_fails_on_nan():
    assert check_ratio_is_one(torch.full((3,), 1e-7), 1e-5, 0, "x") == pytest.approx(1e-7)
    with pytest.raises(RatioCheckError):
        check_ratio_is_one(torch.tensor([0.0, float("nan")]), 1e-5, 3, "log-probs")


def test_warns_when_an_iteration_is_shorter_than_an_episode(reach_policy):
    """ReachTest-v0 episodes last 8 steps: 4 steps per iteration never reach their second half."""
    from agents.ppo import warn_if_rollouts_cut_episodes

    with pytest.warns(UserWarning, match="raise algo.decisions_per_env"):
        assert warn_if_rollouts_cut_episodes("ReachTest-v0", 4, "algo.decisions_per_env")
    assert not warn_if_rollouts_cut_episodes("ReachTest-v0", 8, "algo.decisions_per_env")
    policy, _ = load_policy(reach_policy)
    with pytest.warns(UserWarning, match="states after step 4 are never visited"):
        learner = ReinFlowLearner(policy, "ReachTest-v0", ReinFlowConfig(num_envs=2, decisions_per_env=4, sigma_min=0.1,
                                                                                 sigma_max=0.24),
                                  total_iterations=1)
    learner.envs.close()
