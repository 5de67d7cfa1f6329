"""Short runs of every learner from the shipped Hopper configs (the flow BC policy, and the diffusion BC
policy for DDPO): the pipeline writes a loadable policy, and resuming the finished run is a no-op."""

import numpy as np
import pytest

from agents.finetune import FinetuneConfig, finetune
from flowpolicy import load_agent
from flowpolicy.config import load_config

# smoke runs are deliberately shorter than an episode
pytestmark = pytest.mark.filterwarnings("ignore:.*are never visited")

SMOKE = {
    "reinflow": ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8", "runner.total_env_steps=128"],
    "qsm": ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.critic_warmup_iterations=1", "algo.batch_size=32",
            "runner.total_env_steps=128"],
    "qsm-bc": ["algo.bc_coeff=0.5", "algo.num_envs=2", "algo.decisions_per_env=8", "algo.critic_warmup_iterations=0",
               "algo.batch_size=32", "runner.total_env_steps=128"],
    "cfgrl-offline": ["algo.critic_pretrain_steps=20", "algo.offline_iterations=2", "algo.updates_per_iteration=10",
                      "algo.batch_size=32"],
    "grpo": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=64"],
    "cps": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=64"],
    "ddpo_is": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=64"],
    "ddpo_sf-gae": ["algo.advantages=gae", "algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8",
                    "runner.total_env_steps=64"],
    "fpo": ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8", "algo.critic_warmup_iterations=0",
            "runner.total_env_steps=64"],
    "cfgrl-online": ["algo.mode=online", "algo.num_envs=2", "algo.decisions_per_env=8", "algo.critic_pretrain_steps=20",
                     "algo.batch_size=32", "runner.total_env_steps=128"],
}


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_hopper_smoke_run_writes_a_loadable_policy(name, tmp_path):
    algorithm = name.split("-")[0]
    cfg = load_config(FinetuneConfig, f"configs/hopper/{algorithm}.yaml",
                      [*SMOKE[name], f"out={tmp_path}", "runner.eval_episodes=1", "runner.progress=false"])
    summary = finetune(cfg)
    assert summary["algorithm"] == algorithm and np.isfinite(summary["final_return"])
    agent = load_agent(tmp_path / "policy")
    assert agent.act(np.zeros(11, np.float32)).shape == (3,)
    # resuming the finished run changes nothing, for every learner (no extra iteration, no new event file)
    before = {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    again = finetune(cfg, resume=True)
    assert again["resumed_finished_run"] and again["env_steps"] == summary["env_steps"]
    assert {p: p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()} == before


@pytest.mark.parametrize("task,obs_dim,action_dim", [("halfcheetah", 17, 6), ("ant", 105, 8), ("walker2d", 17, 6)])
def test_every_shipped_task_fine_tunes_from_its_shipped_policy(task, obs_dim, action_dim, tmp_path):
    cfg = load_config(FinetuneConfig, f"configs/{task}/reinflow.yaml",
                      ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8",
                       "runner.total_env_steps=64", f"out={tmp_path}", "runner.eval_episodes=1",
                       "runner.progress=false"])
    summary = finetune(cfg)
    assert np.isfinite(summary["final_return"]) and summary["initial_normalized_score"] is not None
    assert load_agent(tmp_path / "policy").act(np.zeros(obs_dim, np.float32)).shape == (action_dim,)


def test_read_scalars_merges_the_event_files_of_a_resumed_run(tmp_path):
    """A resumed run writes a second event file that may repeat steps logged after the last checkpoint:
    the curve has each step once, sorted, with the later file's value."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from agents.runner import read_scalars

    for values in ({0: 1.0, 10: 2.0, 20: 99.0}, {20: 3.0, 30: 4.0}):
        with SummaryWriter(tmp_path, filename_suffix=f".{time.time_ns()}") as writer:
            for step, value in values.items():
                writer.add_scalar("eval/return", value, step)
        time.sleep(1.1)  # event file names carry a timestamp in seconds
    np.testing.assert_array_equal(read_scalars(tmp_path, "eval/return"),
                                  [[0, 1.0], [10, 2.0], [20, 3.0], [30, 4.0]])
    assert read_scalars(tmp_path, "eval/missing").shape == (0, 2)
