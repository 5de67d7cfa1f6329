"""benchmarks/final_success.py: the held-out before → after, on a task without a success signal (return and
normalized score from the reference scores a policy's metadata carries)."""
import json
import sys

import numpy as np
import pytest
import torch

from envs.evaluation import evaluate_agent
from flowpolicy.agent import load_agent
from flowpolicy.checkpoint import save_policy
from flowpolicy.policy import NetworkConfig, Policy, PolicyConfig


def test_dense_task_reports_return_and_normalized_score_with_their_errors(tmp_path, monkeypatch):
    import benchmarks.final_success as final_success

    torch.manual_seed(0)
    policy = Policy(PolicyConfig(obs_dim=2, action_dim=2, horizon=1, num_steps=2, network=NetworkConfig(hidden=[8])))
    path = save_policy(policy, tmp_path / "p", metadata={"env_id": "ReachTest-v0",
                                                          "reference_scores": {"random": -10.0, "expert": -2.0}})
    out = tmp_path / "final.json"
    monkeypatch.setattr(sys, "argv", ["final_success.py", "--policies", str(path), "--episodes", "6",
                                      "--seed", "100", "--out", str(out)])
    final_success.main()
    got = json.loads(out.read_text())[str(path)]
    want = evaluate_agent(load_agent(path, seed=100), "ReachTest-v0", 6, seed=100)
    assert "success_rate" not in got
    assert got["return_mean"] == pytest.approx(want.return_mean)
    assert got["return_sem"] == pytest.approx(np.std(want.returns, ddof=1) / np.sqrt(6))
    assert got["normalized_score"] == pytest.approx(100 * (want.return_mean + 10.0) / 8.0)
    assert got["normalized_sem"] == pytest.approx(100 * got["return_sem"] / 8.0)
    assert got["time_limit_episodes"] == sum(n >= 8 for n in want.lengths)
