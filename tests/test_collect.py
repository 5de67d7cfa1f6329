"""``flowpolicy collect`` and its experts (issue #13): no unpickling, artifacts where the user says, refusal to
overwrite, dataset ids, quality by expert fraction (negative returns too), argument errors, progress in logs.

Most tests use a tiny task whose return is controlled exactly by the policy: ``LineReward`` rewards
``action + offset`` for 10 steps, and a fake SAC "snapshot" whose actor outputs tanh(b) with a negligible std
returns 10·(tanh(b) + offset). A uniform-random policy gets ≈ 10·offset, the expert (a ≈ 1) 10·(1 + offset), so a
snapshot acting ``a`` has expert fraction ≈ a — for any offset, negative returns included.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch

import pretrain.collect as collect_mod
from flowpolicy.cli import main as cli_main
from pretrain.collect import CollectError, collect, expert_fraction
from pretrain.datasets import load_minari_dataset
from pretrain.expert import (
    INFO_FILE,
    MODEL_FILE,
    ExpertConfig,
    load_sac,
    save_sac,
    snapshot_path,
    train_expert,
)

REPO = Path(__file__).resolve().parents[1]


class LineReward(gym.Env):
    """Reward ``action[0] + offset`` per step; 10 steps per episode (time limit from the registration)."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float(np.clip(action[0], -1, 1)) + self.offset, False, False, {}


for _id, _offset in (("LineReward-v0", 0.0), ("LineRewardNegative-v0", -3.0)):
    if _id not in gym.registry:
        gym.register(_id, entry_point=f"{__name__}:LineReward", max_episode_steps=10, kwargs={"offset": _offset})


def fake_sac(env_id: str, action: float):
    """An SB3 SAC whose actor always means ``action`` (std e^-20)."""
    from stable_baselines3 import SAC

    model = SAC("MlpPolicy", gym.make(env_id), policy_kwargs={"net_arch": [8]}, buffer_size=10, seed=0)
    with torch.no_grad():
        for layer, bias in ((model.actor.mu, np.arctanh(np.clip(action, -0.9999, 0.9999))),
                            (model.actor.log_std, -20.0)):
            layer.weight.zero_()
            layer.bias.fill_(float(bias))
    return model


def make_fake_expert(directory: Path, env_id: str, snapshot_actions=(0.4, 0.97), offset: float = 0.0) -> Path:
    """An expert directory in the shipped format: the expert acts ≈1, snapshot i acts ``snapshot_actions[i]``."""
    save_sac(fake_sac(env_id, 1.0), directory / MODEL_FILE, env_id=env_id)
    for i, a in enumerate(snapshot_actions):
        save_sac(fake_sac(env_id, a), snapshot_path(directory, 1000 * (i + 1)), env_id=env_id)
    expert_return = 10 * (np.tanh(np.arctanh(0.9999)) + offset)
    (directory / INFO_FILE).write_text(json.dumps({"env_id": env_id, "eval_return_mean": expert_return}))
    return directory


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    for module, name in ((pickle, "loads"), (pickle, "load"), (cloudpickle, "loads"), (cloudpickle, "load"),
                         (torch, "load")):
        monkeypatch.setattr(module, name, refuse)


def test_collect_reuses_an_expert_without_unpickling(tmp_path, no_unpickling):
    expert = make_fake_expert(tmp_path / "expert", "LineReward-v0")
    for quality in ("expert", "medium"):
        result = collect("LineReward-v0", tmp_path / "data", quality=quality, episodes=1, expert_dir=expert,
                         progress=False)
        episodes, meta = load_minari_dataset(result.dataset_dir)
        assert len(episodes) == 1 and meta["quality"] == quality
    assert result.demonstrator == "sac_1000.safetensors"  # the 0.4 snapshot


def test_shipped_experts_load_without_unpickling(no_unpickling):
    shipped = sorted((REPO / "data" / "experts").glob("*/" + MODEL_FILE))
    assert len(shipped) == 4 and not list((REPO / "data" / "experts").rglob("*.zip"))
    for path in shipped:
        info = json.loads((path.parent / INFO_FILE).read_text())
        model = load_sac(path)
        assert model.num_timesteps == info["expert_env_steps"]
        action, _ = model.predict(np.zeros(model.observation_space.shape), deterministic=True)
        assert action.shape == model.action_space.shape and np.all(np.abs(action) <= 1)


def test_shipped_expert_collects_without_unpickling(tmp_path, no_unpickling):
    result = collect("Hopper-v5", tmp_path, quality="expert", episodes=1, progress=False)
    assert result.expert_dir == REPO / "data" / "experts" / "Hopper-v5" and result.fraction > 0.5


def test_an_existing_dataset_is_refused_byte_identical_and_replaced_with_overwrite(tmp_path, capsys):
    expert = make_fake_expert(tmp_path / "expert", "LineReward-v0")
    args = ["collect", "--env", "LineReward-v0", "--out", str(tmp_path / "data"), "--expert-dir", str(expert),
            "--quality", "expert", "--episodes", "2"]
    assert cli_main(args) == 0
    dataset = tmp_path / "data" / "flowpolicy" / "linereward-expert-v0"
    before = tree_digest(tmp_path / "data")
    capsys.readouterr()
    assert cli_main([*args, "--seed", "7"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(dataset) in err and "--overwrite" in err and "Traceback" not in err
    assert tree_digest(tmp_path / "data") == before
    assert cli_main([*args, "--seed", "7", "--overwrite"]) == 0
    _, meta = load_minari_dataset(dataset)
    assert meta["seeds"] == [7, 8] and tree_digest(tmp_path / "data") != before
    assert not [p for p in dataset.parent.iterdir() if p.name.startswith(".")]  # no leftover backup


def test_dataset_id_option(tmp_path):
    expert = make_fake_expert(tmp_path / "expert", "LineReward-v0")
    assert cli_main(["collect", "--env", "LineReward-v0", "--out", str(tmp_path / "data"), "--expert-dir",
                     str(expert), "--episodes", "1", "--dataset-id", "mine/line-demo-v3"]) == 0
    _, meta = load_minari_dataset(tmp_path / "data" / "mine" / "line-demo-v3")
    assert meta["dataset_id"] == "mine/line-demo-v3" and meta["quality"] == "medium"


def test_a_new_expert_is_trained_under_out_with_progress_lines(tmp_path, capsys):
    before = sorted(p.name for p in (REPO / "data" / "experts").iterdir())
    result = collect("LineReward-v0", tmp_path / "data", quality="expert", episodes=2, expert_steps=300,
                     snapshot_every=100)
    expert_dir = tmp_path / "data" / "experts" / "LineReward-v0"
    assert result.expert_dir == expert_dir and (expert_dir / MODEL_FILE).exists()
    assert sorted(p.name for p in (expert_dir / "snapshots").iterdir()) == [
        f"sac_{n}.safetensors" for n in (100, 200, 300)]
    assert sorted(p.name for p in (REPO / "data" / "experts").iterdir()) == before
    err = capsys.readouterr().err  # stderr is not a TTY here: periodic lines, not bars
    assert "SAC LineReward-v0: 300/300 env steps" in err and "record LineReward-v0: 2/2 episodes" in err
    assert "\r" not in err


def test_expert_fraction_is_the_normalized_score_for_negative_returns(tmp_path):
    assert expert_fraction(-25.0, -30.0, -20.0) == pytest.approx(0.5)
    assert expert_fraction(-30.0, -30.0, -20.0) == 0.0 and expert_fraction(-20.0, -30.0, -20.0) == 1.0
    with pytest.raises(CollectError, match="not above a random"):
        expert_fraction(1.0, 5.0, 5.0)
    # returns all negative: the 0.4 snapshot returns ≈ -26, the 0.97 one ≈ -20.3, the expert -20, random ≈ -30.
    # R / R_expert would call the 0.4 snapshot "1.3 of expert"; the fraction picks it as medium.
    expert = make_fake_expert(tmp_path / "expert", "LineRewardNegative-v0", snapshot_actions=(0.97, 0.4), offset=-3)
    result = collect("LineRewardNegative-v0", tmp_path / "data", episodes=2, expert_dir=expert, progress=False)
    _, meta = load_minari_dataset(result.dataset_dir)
    assert result.quality == "medium" and result.demonstrator == "sac_2000.safetensors"
    assert meta["achieved_fraction"] == pytest.approx(0.4, abs=0.06) and meta["return_mean"] < 0
    assert meta["snapshot_probe_fractions"]["sac_1000.safetensors"] == pytest.approx(0.97, abs=0.06)


def test_medium_far_from_the_target_warns_and_is_named_by_its_fraction(tmp_path, capsys):
    expert = make_fake_expert(tmp_path / "expert", "LineReward-v0", snapshot_actions=(0.97,))
    result = collect("LineReward-v0", tmp_path / "data", episodes=1, expert_dir=expert, progress=False)
    err = capsys.readouterr().err
    assert "warning:" in err and "reaches 0.97" in err and "frac97" in err
    assert result.dataset_dir.name == "linereward-frac97-v0" and result.quality == "frac97"
    _, meta = load_minari_dataset(result.dataset_dir)
    assert meta["requested_quality"] == "medium" and meta["requested_fraction"] == 0.4
    assert meta["demonstrator_fraction"] == pytest.approx(0.97, abs=0.05)
    assert meta["achieved_fraction"] == pytest.approx(0.97, abs=0.05)
    assert not (tmp_path / "data" / "flowpolicy" / "linereward-medium-v0").exists()


@pytest.mark.parametrize("extra, message", [
    (["--episodes", "0"], "episodes must be an integer >= 1"),
    (["--expert-steps", "0"], "expert_steps must be an integer >= 1"),
    (["--snapshot-every", "-5"], "snapshot_every must be an integer >= 1"),
    (["--seed", "-1"], "seed must be an integer >= 0"),
    (["--medium-fraction", "1"], "medium_fraction must be in (0, 1)"),
    (["--medium-fraction", "0"], "medium_fraction must be in (0, 1)"),
    (["--dataset-id", "no-version"], "must look like"),
    (["--dataset-id", "ns/a.b-v0"], "not '.'"),
])
def test_collect_argument_errors_are_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "data"
    assert cli_main(["collect", "--env", "LineReward-v0", "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowpolicy collect: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("env_id, extra, message", [
    ("LineReward-v0", [], "no scripted demonstrator for 'LineReward-v0'"),
    ("RobomimicLift-v0", ["--episodes", "0"], "episodes must be an integer >= 1"),
])
def test_scripted_collect_errors_are_one_line(tmp_path, capsys, env_id, extra, message):
    out = tmp_path / "data"
    assert cli_main(["collect", "--env", env_id, "--demonstrator", "scripted", "--out", str(out), *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith("flowpolicy collect: error: ") and message in err
    assert err.count("\n") == 1 and not out.exists()


def test_collect_argument_error_exit_code_from_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flowpolicy.cli", "collect", "--env", "Hopper-v5", "--out",
                          str(tmp_path), "--episodes", "0"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "episodes must be" in out.stderr


def test_help_documents_the_budget_and_the_options():
    out = subprocess.run([sys.executable, "-m", "flowpolicy.cli", "collect", "--help"], capture_output=True,
                         text=True, cwd=REPO)
    for text in ("--expert-steps", "default 300,000", "--snapshot-every", "--dataset-id", "--overwrite",
                 "read-only", "OUT/experts/ENV_ID"):
        assert text in out.stdout, text
    assert f"{ExpertConfig.total_steps:,}" in out.stdout


def test_training_state_round_trips_without_pickle(tmp_path, no_unpickling):
    out = tmp_path / "expert"
    train_expert("LineReward-v0", out, ExpertConfig(total_steps=60, learning_starts=20, eval_every=30,
                                                    eval_episodes=1), progress=False)
    a = load_sac(out / "last.safetensors", env=gym.make("LineReward-v0"), training_state=True)
    save_sac(a, tmp_path / "again.safetensors", training_state=True)
    b = load_sac(tmp_path / "again.safetensors", env=gym.make("LineReward-v0"), training_state=True)
    assert a.num_timesteps == b.num_timesteps == 60 and a._n_updates == b._n_updates == 40
    assert torch.equal(a.log_ent_coef, b.log_ent_coef)
    for opt_a, opt_b in ((a.actor.optimizer, b.actor.optimizer), (a.critic.optimizer, b.critic.optimizer),
                         (a.ent_coef_optimizer, b.ent_coef_optimizer)):
        sa, sb = opt_a.state_dict(), opt_b.state_dict()
        assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
        for k in sa["state"]:
            for key, value in sa["state"][k].items():
                assert torch.equal(value, sb["state"][k][key])
    # resuming continues from the saved step count
    train_expert("LineReward-v0", out, ExpertConfig(total_steps=90, learning_starts=20, eval_every=30,
                                                    eval_episodes=1), progress=False)
    assert load_sac(out / "last.safetensors").num_timesteps == 90


def test_an_sb3_zip_is_not_loaded_by_collect(tmp_path):
    expert = tmp_path / "expert"
    expert.mkdir()
    (expert / "sac.zip").write_bytes(b"PK")
    with pytest.raises(CollectError, match="--convert"):
        collect("LineReward-v0", tmp_path / "data", episodes=1, expert_dir=expert, progress=False)


def test_a_corrupt_expert_file_is_a_one_line_error(tmp_path):
    (tmp_path / MODEL_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a flowpolicy SAC file"):
        load_sac(tmp_path / MODEL_FILE)


def test_default_dataset_ids():
    assert collect_mod.default_dataset_id("Hopper-v5", "medium") == "flowpolicy/hopper-medium-v0"
    assert collect_mod.default_dataset_id("my.mod:Thing-v2", "frac97") == "flowpolicy/thing-frac97-v0"
    assert collect_mod.quality_label(0.974) == "frac97" and collect_mod.quality_label(-0.2) == "frac0"


def test_out_that_is_a_file_is_refused_before_recording(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    assert cli_main(["collect", "--env", "Hopper-v5", "--out", str(a_file), "--episodes", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file, not a directory" in err[0] and a_file.read_text() == "mine"


def test_expert_training_with_an_unknown_env_is_one_line_and_creates_nothing(tmp_path, capsys):
    from pretrain.expert import main as expert_main

    assert expert_main(["--env", "Nope-v0", "--out", str(tmp_path / "expert")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Nope" in err[0] and not (tmp_path / "expert").exists()
