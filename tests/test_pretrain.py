"""Demonstrations and behavior cloning end to end: tiny-budget collect, BC on tiny data, config errors."""

import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import yaml

from envs.evaluation import random_policy_return
from flowpolicy import load_agent
from flowpolicy.config import ConfigError, from_dict, load_config
from pretrain.bc import PretrainConfig, pretrain
from pretrain.collect import collect
from pretrain.datasets import Episode, load_minari_dataset, write_minari_dataset
from pretrain.expert import ExpertConfig, train_expert

# A linear controller that balances InvertedPendulum-v5 for the full 1000 steps (random: ~5 steps).
PENDULUM_GAINS = np.array([0.5, 5.0, 0.5, 1.0])


def pendulum_demonstrations(episodes, seed=0):
    env = gym.make("InvertedPendulum-v5")
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards = [obs], [], []
        for _ in range(200):  # short episodes keep the dataset tiny
            action = np.clip(PENDULUM_GAINS @ obs, -3, 3)[None]
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            if terminated or truncated:
                break
        out.append(Episode(np.array(observations), np.array(actions), np.array(rewards), bool(terminated),
                           not terminated, seed + i))
    return out


@pytest.fixture(scope="module")
def pendulum_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return write_minari_dataset("test/pendulum-demo-v0", "InvertedPendulum-v5", pendulum_demonstrations(8), root,
                                ref_min_score=5.0, ref_max_score=1000.0)


def tiny_config(dataset, out, **train):
    return from_dict(PretrainConfig, {
        "env_id": "InvertedPendulum-v5", "dataset": str(dataset), "out": str(out), "torch_threads": 1,
        "policy": {"kind": "flow", "horizon": 2, "num_steps": 4, "network": {"hidden": [64, 64]}},
        "train": {"steps": 600, "batch_size": 128, "lr": 3e-3, "warmup_steps": 50, "ema_decay": 0.95, "val_every": 200,
                  "eval_every": 0, "eval_episodes": 3, "checkpoint_every": 0, **train}})


def test_bc_on_tiny_data_beats_a_random_policy(pendulum_dataset, tmp_path):
    summary = pretrain(tiny_config(pendulum_dataset, tmp_path), progress=False)
    random_mean, _ = random_policy_return("InvertedPendulum-v5", 10)
    assert summary["eval"]["return_mean"] > 10 * random_mean, (summary["eval"], random_mean)
    assert summary["val_loss"] is not None and np.isfinite(summary["val_loss"])
    # the saved policy is a regular checkpoint that knows its env
    agent = load_agent(tmp_path / "policy")
    assert agent.metadata["env_id"] == "InvertedPendulum-v5" and agent.policy.config.horizon == 2
    assert json.loads((tmp_path / "summary.json").read_text())["train_samples"] > 0
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_tiny_budget_collect_writes_a_loadable_dataset(tmp_path):
    expert_dir = tmp_path / "expert"
    train_expert("InvertedPendulum-v5", expert_dir,
                 ExpertConfig(total_steps=400, learning_starts=100, eval_every=200, eval_episodes=1), progress=False)
    for quality in ("medium", "expert"):
        result = collect("InvertedPendulum-v5", tmp_path / "data", quality=quality, episodes=3, seed=5,
                         expert_dir=expert_dir, progress=False)
        episodes, meta = load_minari_dataset(result.dataset_dir)
        assert len(episodes) == 3 and meta["seeds"] == [5, 6, 7]
        assert all(e.observations.shape == (e.length + 1, 4) and e.actions.shape == (e.length, 1) for e in episodes)
        assert meta["requested_quality"] == quality and meta["ref_max_score"] == result.expert_return
        assert meta["env_id"] == "InvertedPendulum-v5" and meta["ref_min_score"] is not None


def test_dataset_that_does_not_match_the_env_is_a_clear_error(pendulum_dataset, tmp_path):
    cfg = tiny_config(pendulum_dataset, tmp_path)
    cfg.env_id = "Hopper-v5"
    with pytest.raises(ValueError, match="Hopper-v5"):
        pretrain(cfg, progress=False)


def test_config_errors_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"env_id": "Hopper-v5", "train": {"steps": 10}}))
    assert load_config(PretrainConfig, path, ["train.lr=1e-4", "policy.kind=shortcut"]).train.lr == 1e-4
    with pytest.raises(ConfigError, match="unknown config key train.stpes"):
        load_config(PretrainConfig, path, ["train.stpes=5"])
    with pytest.raises(ConfigError, match="train.steps: expected an integer"):
        load_config(PretrainConfig, path, ["train.steps=lots"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(PretrainConfig, path, ["train.steps"])


def test_pretrain_cli_reports_unknown_keys_in_one_line(tmp_path):
    command = ["pretrain", "--config", "configs/hopper/pretrain.yaml", "train.bogus=1"]
    out = subprocess.run([sys.executable, "-m", "flowpolicy.cli", *command], capture_output=True, text=True)
    assert out.returncode == 1 and "unknown config key train.bogus" in out.stderr and out.stderr.count("\n") == 1


def test_shipped_configs_are_valid():
    from pathlib import Path

    for path in Path("configs").glob("*/pretrain.yaml"):
        cfg = load_config(PretrainConfig, path)
        # locomotion: chunk 4, all executed; manipulation (robomimic Lift, Can; OCBench): chunk 8, 4 executed
        manipulation = cfg.env_id.startswith(("Robomimic", "block-cpu", "chamber-cpu"))
        horizon, act_steps = (8, 4) if manipulation else (4, 4)
        assert cfg.policy["kind"] == "flow" and cfg.policy["num_steps"] == 4, path
        assert (cfg.policy["horizon"], cfg.policy["act_steps"]) == (horizon, act_steps), path
        assert Path(cfg.dataset).exists() or not cfg.env_id.startswith("Robomimic"), path
