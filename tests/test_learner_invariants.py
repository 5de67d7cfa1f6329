"""Invariants every learner shares, checked through the real code paths: the K a run trains with is the K
it evaluates and saves; bootstrapped values come from the true final observation (not the next episode's
reset); demonstration transitions see the observation histories the env would give."""

import gymnasium as gym
import numpy as np
import pytest
import torch

import agents.runner
from agents.finetune import FinetuneConfig, finetune
from flowpolicy import load_agent, load_policy
from flowpolicy.config import from_dict
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig

# small settings per algorithm: two iterations of ~16 env steps on the 8-step ReachTest task
TINY = {
    "reinflow": {"num_envs": 2, "num_steps": 8, "minibatch_size": 16, "update_epochs": 1, "critic_hidden": [8],
                 "noise_hidden": [8]},
    "fpo": {"num_envs": 2, "num_steps": 8, "minibatch_size": 16, "update_epochs": 1, "n_mc": 2,
            "critic_hidden": [8]},
    "grpo": {"group_size": 2, "num_groups": 1, "max_decisions": 8, "minibatch_size": 16, "update_epochs": 1},
    "qsm": {"num_envs": 2, "num_steps": 8, "batch_size": 16, "critic_hidden": [8]},
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


class CounterEnv(gym.Env):
    """Observation = the step index; terminates after ``length`` steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, length: int = 10):
        self.length = length

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, self.t >= self.length, False, {}


gym.register("CounterTest-v0", entry_point=CounterEnv)


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
    with VecEnv("CounterTest-v0", 1, horizon=H, n_obs_steps=n_obs_steps, length=T) as envs:
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
