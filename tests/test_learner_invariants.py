"""Invariants every learner shares, checked through the real code paths: the K a run trains with is the K
it evaluates and saves; bootstrapped values come from the true final observation (not the next episode's
reset); demonstration transitions see the observation histories the env would give."""

import pytest

import agents.runner
from agents.finetune import FinetuneConfig, finetune
from flowpolicy import load_agent, load_policy
from flowpolicy.config import from_dict

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
