"""robomimic-layout hdf5 files both ways (issue #16 item 2): per-key observations, env_args type 1, mask/<filter
key> train/valid splits, states, files without next_obs — without robosuite or robomimic installed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from pretrain.bc import load_demonstrations
from pretrain.datasets import (
    ROBOMIMIC_LOW_DIM_KEYS,
    DatasetError,
    Episode,
    check_dataset_env,
    read_robomimic_hdf5,
    write_robomimic_hdf5,
)

REPO = Path(__file__).resolve().parents[1]
LIFT_KEYS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10}


def lift_env_args() -> dict:
    from envs.robosuite_tasks import make_env_args

    return make_env_args("Lift", env_version="1.5.1")


@pytest.fixture
def lift_episodes():
    rng = np.random.default_rng(0)
    episodes = []
    for i, steps in enumerate((5, 7, 6, 4, 8)):
        rewards = np.zeros(steps, np.float32)
        rewards[-1] = 1.0
        episodes.append(Episode(rng.normal(size=(steps + 1, 19)), rng.uniform(-1, 1, (steps, 7)), rewards,
                                terminated=True, truncated=False, seed=100 + i, states=rng.normal(size=(steps, 32))))
    return episodes


def test_write_is_robomimic_v15_layout_and_round_trips_with_filter_keys(tmp_path, lift_episodes):
    path = write_robomimic_hdf5(tmp_path / "lift.hdf5", lift_episodes, "RobomimicLift-v0", obs_keys=LIFT_KEYS,
                                env_args=lift_env_args(), val_fraction=0.4, split_seed=1,
                                filter_keys={"first_two": [0, 1]})
    with h5py.File(path, "r") as f:  # what robomimic's SequenceDataset / env_utils read
        data = f["data"]
        args = json.loads(data.attrs["env_args"])
        assert args["type"] == 1 and args["env_name"] == "Lift" and args["env_version"] == "1.5.1"
        right = args["env_kwargs"]["controller_configs"]["body_parts"]["right"]
        assert right["type"] == "OSC_POSE" and args["env_kwargs"]["control_freq"] == 20
        assert args["env_kwargs"]["reward_shaping"] is False
        assert data.attrs["total"] == sum(ep.length for ep in lift_episodes)
        demo = data["demo_1"]
        assert demo.attrs["num_samples"] == 7
        assert set(demo["obs"].keys()) == set(LIFT_KEYS) == set(demo["next_obs"].keys())
        assert demo["obs/object"].shape == (7, 10) and demo["actions"].dtype == np.float64
        assert demo["dones"].dtype == np.int64 and list(demo["dones"][()]) == [0] * 6 + [1]
        assert demo["states"].shape == (7, 32)
        train = sorted(n.decode() for n in f["mask/train"][()])
        valid = sorted(n.decode() for n in f["mask/valid"][()])
        assert f["mask/train"].dtype.kind == "S" and len(valid) == 2 and len(train) == 3
        assert not set(train) & set(valid) and set(train) | set(valid) == {f"demo_{i}" for i in range(5)}
        assert [n.decode() for n in f["mask/first_two"][()]] == ["demo_0", "demo_1"]

    everything, info = read_robomimic_hdf5(path)
    assert info["env_id"] == "RobomimicLift-v0" and info["env_name"] == "Lift"
    assert info["obs_keys"] == list(ROBOMIMIC_LOW_DIM_KEYS) and info["next_obs"] is True
    for ep, original in zip(everything, lift_episodes, strict=True):
        np.testing.assert_allclose(ep.observations, original.observations, rtol=1e-6)
        np.testing.assert_allclose(ep.actions, original.actions, rtol=1e-6)
        np.testing.assert_allclose(ep.states, original.states)
        assert ep.terminated and ep.seed == original.seed
    assert sorted(info["filter_keys"]["train"] + info["filter_keys"]["valid"]) == list(range(5))

    for key, names in (("train", train), ("valid", valid)):
        subset, sub_info = read_robomimic_hdf5(path, filter_key=key)
        assert sub_info["demos"] == sorted(names, key=lambda n: int(n.split("_")[1]))
        assert [ep.seed for ep in subset] == [100 + int(n.split("_")[1]) for n in sub_info["demos"]]
        assert sub_info["total"] == sum(ep.length for ep in subset)
    with pytest.raises(DatasetError, match=r"no filter key 'test'.*first_two, train, valid"):
        read_robomimic_hdf5(path, filter_key="test")


def test_a_robomimic_file_without_next_obs_rewards_or_our_attrs_reads(tmp_path):
    """A file as robomimic's own tools may leave it: extra obs keys, no next_obs, no rewards/dones, no seeds,
    no flowpolicy attributes, keys written in another order."""
    path = tmp_path / "robomimic.hdf5"
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps(lift_env_args())
        data.attrs["total"] = 6
        demo = data.create_group("demo_0")
        demo.attrs["num_samples"] = 6
        demo["actions"] = rng.normal(size=(6, 7))
        obs = demo.create_group("obs")
        for key in ("robot0_joint_pos", "object", "robot0_gripper_qpos", "robot0_eef_quat", "robot0_eef_pos"):
            obs[key] = rng.normal(size=(6, 7 if key == "robot0_joint_pos" else LIFT_KEYS[key]))
    (ep,), info = read_robomimic_hdf5(path)
    assert info["obs_keys"] == list(ROBOMIMIC_LOW_DIM_KEYS)  # robomimic's order, not sorted, not all keys
    assert info["env_id"] == "RobomimicLift-v0" and info["next_obs"] is False and info["filter_keys"] == {}
    with h5py.File(path, "r") as f:
        expected = np.concatenate([f[f"data/demo_0/obs/{k}"][()] for k in ROBOMIMIC_LOW_DIM_KEYS], axis=1)
    np.testing.assert_allclose(ep.observations[:-1], expected, rtol=1e-6)
    np.testing.assert_array_equal(ep.observations[-1], ep.observations[-2])  # o_T repeats o_{T-1}
    assert ep.truncated and not ep.terminated and ep.rewards.sum() == 0 and ep.states is None and ep.seed is None
    (ep,), info = read_robomimic_hdf5(path, obs_keys=["robot0_joint_pos"])
    assert ep.observations.shape == (7, 7)


def test_robomimic_env_id_check_maps_robosuite_names_to_our_ids(tmp_path, lift_episodes):
    path = write_robomimic_hdf5(tmp_path / "lift.hdf5", lift_episodes, "Lift", obs_keys=LIFT_KEYS,
                                env_args=lift_env_args())
    with h5py.File(path, "a") as f:  # as in a real robomimic file: no flowpolicy_env_id attribute
        del f["data"].attrs["flowpolicy_env_id"]
    episodes, meta = load_demonstrations(str(path), env_id="RobomimicLift-v0", obs_dim=19, action_dim=7)
    assert meta["env_id"] == "RobomimicLift-v0" and len(episodes) == 5
    with pytest.raises(DatasetError, match="recorded on RobomimicLift-v0, not RobomimicCan-v0"):
        check_dataset_env(meta["env_id"], "RobomimicCan-v0", "dataset lift.hdf5")


def test_old_writer_call_still_writes_a_gym_file(tmp_path, lift_episodes):
    path = write_robomimic_hdf5(tmp_path / "old.hdf5", lift_episodes, "Hopper-v5")
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["env_args"])["type"] == 2 and "mask" not in f
        assert list(f["data/demo_0/obs"].keys()) == ["state"]
    episodes, info = read_robomimic_hdf5(path)
    assert info["env_id"] == "Hopper-v5" and info["obs_keys"] == ["state"]
    np.testing.assert_allclose(episodes[2].observations, lift_episodes[2].observations, rtol=1e-6)


def test_bad_writer_arguments_are_one_line_errors(tmp_path, lift_episodes):
    with pytest.raises(DatasetError, match="do not add up"):
        write_robomimic_hdf5(tmp_path / "a.hdf5", lift_episodes, "X-v0", obs_keys={"a": 3})
    with pytest.raises(DatasetError, match="not a demo"):
        write_robomimic_hdf5(tmp_path / "b.hdf5", lift_episodes, "X-v0", filter_keys={"k": ["demo_9"]})
    assert not list(tmp_path.iterdir())


def test_importing_the_registry_and_task_module_does_not_import_robosuite():
    code = ("import sys, gymnasium as gym, envs.registry, envs.robosuite_tasks, pretrain.datasets\n"
            "assert 'robosuite' not in sys.modules\n"
            "assert 'RobomimicSquare-v0' in gym.registry and gym.spec('RobomimicSquare-v0').max_episode_steps == 400\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_dataset_env_check_compares_recorded_env_kwargs():
    """A dataset that records its env kwargs (`collect --env-kwarg`) is refused for an env made with others,
    unless the mismatch is allowed; one that records none cannot be checked and passes."""
    recorded = {"terminate_at_success": False}
    check_dataset_env("X-v0", "X-v0", "dataset d", dataset_env_kwargs=recorded, env_kwargs=dict(recorded))
    check_dataset_env("X-v0", "X-v0", "dataset d", dataset_env_kwargs=None, env_kwargs={"a": 1})
    check_dataset_env("X-v0", "X-v0", "dataset d", dataset_env_kwargs={}, env_kwargs=None)
    with pytest.raises(DatasetError, match=r"recorded with env_kwargs \{'terminate_at_success': False\}, not \{\}"):
        check_dataset_env("X-v0", "X-v0", "dataset d", dataset_env_kwargs=recorded)
    check_dataset_env("X-v0", "X-v0", "dataset d", allow_mismatch=True, dataset_env_kwargs=recorded)
