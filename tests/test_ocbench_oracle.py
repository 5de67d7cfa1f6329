"""``flowpolicy collect --demonstrator oracle``: OCBench demonstrations by the package's own scripted oracles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ocbench.oracles", reason="ocbench not installed (pip install 'flowpolicy[manipulation]')")

from envs.registry import make_gym_env  # noqa: E402
from flowpolicy.cli import main as cli_main  # noqa: E402
from pretrain.datasets import load_minari_dataset  # noqa: E402
from pretrain.oracle import (  # noqa: E402
    SUCCESS_CRITERION,
    default_dataset_id,
    make_oracle,
    oracle_family,
    run_oracle_episode,
)

REPO = Path(__file__).resolve().parents[1]
LITE = "block-cpu-lite-single-task1-v0"


def test_oracle_family_and_dataset_id():
    assert oracle_family(LITE) == "block" and oracle_family("chamber-cpu-easy-task2-v0") == "chamber"
    assert oracle_family("Hopper-v5") is None and oracle_family("visual-block-cpu-single-task1-v0") is None
    assert default_dataset_id(LITE) == "ocbench/block-cpu-lite-single-task1-oracle-v0"
    assert default_dataset_id(LITE, 0.05) == "ocbench/block-cpu-lite-single-task1-oracle-noise5-v0"
    assert default_dataset_id(LITE, 0.025) == "ocbench/block-cpu-lite-single-task1-oracle-noise2p5-v0"


def test_oracle_episode_is_reproducible_and_succeeds():
    env = make_gym_env(LITE)
    try:
        oracle = make_oracle(env, "block")
        first, again = run_oracle_episode(env, oracle, 3), run_oracle_episode(env, oracle, 3)
    finally:
        env.close()
    assert first.success and first.episode.terminated and first.episode.length < 200
    assert first.episode.observations.shape[1] == 28 and first.episode.actions.shape[1] == 7
    assert (first.episode.actions == again.episode.actions).all()


def test_action_noise_is_executed_but_not_recorded():
    """DART: the env executes the oracle's action plus noise, the episode records the oracle's action — so
    replaying the recorded actions does not reproduce the recorded states; σ = 0 is the plain oracle, and
    the noise leaves the oracle's own random draws (NumPy's global generator) untouched."""
    env = make_gym_env(LITE)
    try:
        oracle = make_oracle(env, "block")
        clean = run_oracle_episode(env, oracle, 3)
        zero = run_oracle_episode(env, oracle, 3, action_noise=0.0)
        noisy = run_oracle_episode(env, oracle, 3, action_noise=0.05)
        noisy_again = run_oracle_episode(env, oracle, 3, action_noise=0.05)
        assert (zero.episode.actions == clean.episode.actions).all()
        assert (noisy.episode.actions == noisy_again.episode.actions).all()  # seeded per attempt
        assert noisy.speed == clean.speed  # the oracle drew the same episode parameters
        assert noisy.episode.length != clean.episode.length or not np.allclose(
            noisy.episode.observations, clean.episode.observations)
        # the recorded actions are the oracle's: replayed without the noise they leave the recorded path
        np.random.seed(3)  # noqa: NPY002
        obs, _ = env.reset(seed=3)
        replayed = [obs]
        for action in noisy.episode.actions:
            obs, *_ = env.step(action)
            replayed.append(obs)
        assert np.abs(np.stack(replayed) - noisy.episode.observations).max() > 1e-3
    finally:
        env.close()


def test_action_noise_draws_only_from_its_own_generator(monkeypatch):
    """With the noise generator returning zeros, a 'noisy' episode is the clean one exactly: the noise is drawn
    from nowhere else, and drawing it does not shift the oracle's own random stream."""
    import pretrain.oracle as oracle_module

    class Zeros:
        def standard_normal(self, shape):
            return np.zeros(shape)

    env = make_gym_env(LITE)
    try:
        oracle = make_oracle(env, "block")
        clean = run_oracle_episode(env, oracle, 4)
        monkeypatch.setattr(oracle_module, "noise_generator", lambda seed: Zeros())
        zero_noise = run_oracle_episode(env, oracle, 4, action_noise=0.05)
    finally:
        env.close()
    assert (zero_noise.episode.actions == clean.episode.actions).all()
    assert (zero_noise.episode.observations == clean.episode.observations).all()


@pytest.mark.parametrize("env_id, extra, message", [
    (LITE, ["--action-noise", "-0.1"], "action_noise must be a number in [0, 1)"),
    ("Hopper-v5", [], "'Hopper-v5' is not an OCBench CPU task"),
    (LITE, ["--episodes", "0"], "episodes must be an integer >= 1"),
    (LITE, ["--dataset-id", "ns/a.b-v0"], "not '.'"),
])
def test_oracle_collect_errors_are_one_line(tmp_path, capsys, env_id, extra, message):
    out = tmp_path / "data"
    assert cli_main(["collect", "--env", env_id, "--demonstrator", "oracle", "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowpolicy collect: error: ") and message in err
    assert err.count("\n") == 1 and not out.exists()


def test_keep_failures_needs_the_oracle(tmp_path, capsys):
    assert cli_main(["collect", "--env", LITE, "--keep-failures", "--out", str(tmp_path / "d")]) == 1
    assert "--keep-failures applies to --demonstrator oracle only" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--action-noise", "0.05"], "--action-noise applies to --demonstrator oracle only"),
    (["--env-kwarg", "x=1"], "--env-kwarg applies to --demonstrator oracle and scripted"),
])
def test_oracle_options_need_the_oracle(tmp_path, capsys, extra, message):
    assert cli_main(["collect", "--env", "Hopper-v5", "--out", str(tmp_path / "d"), *extra]) == 1
    assert message in capsys.readouterr().err


def test_help_documents_the_oracle():
    out = subprocess.run([sys.executable, "-m", "flowpolicy.cli", "collect", "--help"], capture_output=True,
                         text=True, cwd=REPO)
    assert out.returncode == 0
    for text in ("oracle", "--keep-failures", "ocbench/<task>-oracle-v0", "ocbench.oracles", "--action-noise",
                 "DART", "--env-kwarg"):
        assert text in out.stdout, text


def test_oracle_collect_pretrain_evaluate(tmp_path, run_cli):
    run = run_cli
    out = run("collect", "--env", LITE, "--demonstrator", "oracle", "--out", str(tmp_path), "--episodes", "2")
    assert "2 oracle demonstrations" in out and "oracle success 2/" in out
    path = tmp_path / default_dataset_id(LITE)
    episodes, info = load_minari_dataset(path)
    assert len(episodes) == 2 and all(ep.terminated and ep.rewards[-1] == 1 for ep in episodes)
    assert info["env_id"] == LITE and info["seeds"] == [0, 1] and info["demonstrator"] == "oracle"
    assert info["episode_success"] == [True, True] and 0 < info["oracle_success_rate"] <= 1
    metadata = json.loads((path / "data" / "metadata.json").read_text())
    assert metadata["success_criterion"] == SUCCESS_CRITERION
    run("pretrain", "--config", str(REPO / "configs/hopper/pretrain.yaml"), f"env_id={LITE}", f"dataset={path}",
        f"out={tmp_path / 'bc'}", "train.steps=10", "train.warmup_steps=2", "train.eval_every=0",
        "train.eval_episodes=0", "train.checkpoint_every=0", "train.val_every=10", "torch_threads=1")
    result = json.loads(run("evaluate", "--checkpoint", str(tmp_path / "bc" / "policy"), "--episodes", "1", "--json"))
    assert result["env"] == LITE and result["episodes"] == 1 and "success_rate" in result
    assert 0.0 <= result["success_rate"] <= 1.0


def test_oracle_collect_with_noise_and_env_kwargs(tmp_path, run_cli, capsys):
    out = run_cli("collect", "--env", LITE, "--demonstrator", "oracle", "--out", str(tmp_path), "--episodes", "1",
                  "--action-noise", "0.02", "--env-kwarg", "terminate_at_success=false")
    assert "1 oracle demonstrations" in out
    episodes, info = load_minari_dataset(tmp_path / default_dataset_id(LITE, 0.02))
    assert info["action_noise"] == 0.02 and "DART" in info["recorded_actions"]
    assert info["env_kwargs"] == {"terminate_at_success": False}
    # the kwarg reached the env: a successful episode no longer ends at its success, it runs to the horizon
    assert episodes[0].length == 200 and episodes[0].truncated
    # behavior cloning refuses the dataset unless the config makes the env with the same kwargs
    dataset = tmp_path / default_dataset_id(LITE, 0.02)
    base = ["pretrain", "--config", str(REPO / "configs/hopper/pretrain.yaml"), f"env_id={LITE}", f"dataset={dataset}",
            "train.steps=2", "train.warmup_steps=1", "train.eval_every=0", "train.eval_episodes=0",
            "train.checkpoint_every=0", "train.val_every=2", "torch_threads=1"]
    capsys.readouterr()
    assert cli_main([*base, f"out={tmp_path / 'bc_refused'}"]) == 1
    err = capsys.readouterr().err
    assert "was recorded with env_kwargs {'terminate_at_success': False}" in err and err.count("\n") == 1
    run_cli(*base, f"out={tmp_path / 'bc'}", "env_kwargs.terminate_at_success=false")


def test_shipped_block_lite_policy_acts_on_its_env():
    """The shipped BC policy (data card: data/cards/ocbench-oracle.md) loads, names its shipped dataset, and acts
    on its env's observation with in-range actions."""
    from flowpolicy.agent import load_agent

    agent = load_agent(REPO / "data/policies/block-lite-single-flow-bc")
    assert agent.metadata["env_id"] == LITE
    assert (REPO / agent.metadata["dataset"]).is_dir()
    env = make_gym_env(LITE)
    try:
        obs, _ = env.reset(seed=0)
        actions = agent.act(obs[None])
    finally:
        env.close()
    assert actions.shape == (1, 7) and np.all(np.abs(actions) <= 1.0)
