"""Demonstration datasets: Minari and robomimic round trips, BC chunk samples, shape checks, splits."""

import json
import os

import h5py
import numpy as np
import pytest

from pretrain.datasets import (
    DATASET_AUTHOR,
    DATASET_AUTHOR_EMAIL,
    NAMESPACE_DESCRIPTION,
    DatasetError,
    Episode,
    check_matches_env,
    episode_returns,
    load_minari_dataset,
    make_chunk_samples,
    read_robomimic_hdf5,
    split_episodes,
    update_dataset_provenance,
    write_minari_dataset,
    write_robomimic_hdf5,
)

HOPPER_OBS, HOPPER_ACT = 11, 3


def random_episode(rng, steps, terminated, truncated, seed=None, obs_dim=HOPPER_OBS, action_dim=HOPPER_ACT):
    return Episode(observations=rng.normal(size=(steps + 1, obs_dim)), actions=rng.uniform(-1, 1, (steps, action_dim)),
                   rewards=rng.normal(size=steps), terminated=terminated, truncated=truncated, seed=seed)


@pytest.fixture
def hopper_episodes():
    rng = np.random.default_rng(0)
    return [random_episode(rng, 7, terminated=True, truncated=False, seed=11),
            random_episode(rng, 12, terminated=False, truncated=True, seed=12),
            random_episode(rng, 3, terminated=True, truncated=False, seed=None)]


def assert_same_episodes(loaded, written):
    assert len(loaded) == len(written)
    for got, want in zip(loaded, written, strict=True):
        assert got.observations.dtype == np.float32 and got.actions.dtype == np.float32
        np.testing.assert_array_equal(got.observations, want.observations)
        np.testing.assert_array_equal(got.actions, want.actions)
        np.testing.assert_array_equal(got.rewards, want.rewards)
        assert (got.terminated, got.truncated, got.length) == (want.terminated, want.truncated, want.length)


def test_episode_coerces_to_float32_and_rejects_inconsistent_lengths():
    ep = Episode(np.zeros((4, 2)), np.zeros((3, 1)), np.zeros(3), terminated=1, truncated=0, seed=np.int64(5))
    assert ep.observations.dtype == np.float32 and ep.length == 3 and ep.seed == 5 and ep.terminated is True
    with pytest.raises(DatasetError, match="T\\+1 observations"):
        Episode(np.zeros((3, 2)), np.zeros((3, 1)), np.zeros(3), terminated=False, truncated=True)


def test_minari_round_trip_keeps_arrays_flags_seeds_metadata_and_ref_scores(tmp_path, hopper_episodes):
    previous = os.environ.get("MINARI_DATASETS_PATH")
    metadata = {"quality": "expert", "expert_return": np.float64(3210.5), "collect_seed": 3}
    path = write_minari_dataset("flowpolicy/hopper-test-v0", "Hopper-v5", hopper_episodes, tmp_path,
                                metadata=metadata, ref_min_score=16.7, ref_max_score=3300.0,
                                algorithm_name="SAC", description="synthetic")
    assert os.environ.get("MINARI_DATASETS_PATH") == previous  # the override does not leak
    assert path == tmp_path / "flowpolicy" / "hopper-test-v0" and (path / "data" / "metadata.json").is_file()

    loaded, info = load_minari_dataset("flowpolicy/hopper-test-v0", data_dir=tmp_path)
    assert_same_episodes(loaded, hopper_episodes)
    assert info["seeds"] == [11, 12, None] and [ep.seed for ep in loaded] == [11, 12, None]
    assert info["env_id"] == "Hopper-v5" and info["dataset_id"] == "flowpolicy/hopper-test-v0"
    assert (info["ref_min_score"], info["ref_max_score"]) == (16.7, 3300.0)
    assert (info["quality"], info["expert_return"], info["collect_seed"]) == ("expert", 3210.5, 3)
    assert (info["algorithm_name"], info["description"]) == ("SAC", "synthetic")
    assert info["total_episodes"] == 3 and info["total_steps"] == 22

    by_path, _ = load_minari_dataset(path)  # the dataset directory works too, as does its data/ folder
    assert_same_episodes(by_path, hopper_episodes)
    assert_same_episodes(load_minari_dataset(path / "data")[0], hopper_episodes)
    with pytest.raises(DatasetError, match="already exists"):
        write_minari_dataset("flowpolicy/hopper-test-v0", "Hopper-v5", hopper_episodes, tmp_path)


def test_minari_single_ref_score_is_kept_without_a_random_rollout(tmp_path, hopper_episodes):
    write_minari_dataset("hopper-one-score-v0", "Hopper-v5", hopper_episodes[:1], tmp_path, ref_max_score=100.0)
    _, info = load_minari_dataset("hopper-one-score-v0", data_dir=tmp_path)
    assert (info["ref_min_score"], info["ref_max_score"]) == (None, 100.0)
    raw = json.loads((tmp_path / "hopper-one-score-v0" / "data" / "metadata.json").read_text())
    assert "num_episodes_average_score" not in raw  # Minari did not evaluate a random policy


def test_minari_write_rejects_bad_input_before_creating_anything(tmp_path, hopper_episodes):
    rng = np.random.default_rng(1)
    walker_like = [random_episode(rng, 4, True, False, obs_dim=17)]
    with pytest.raises(DatasetError, match="observations have 17 dims but Hopper-v5 has 11"):
        write_minari_dataset("bad-v0", "Hopper-v5", walker_like, tmp_path)
    with pytest.raises(DatasetError, match="must look like"):
        write_minari_dataset("no-version", "Hopper-v5", hopper_episodes, tmp_path)
    with pytest.raises(DatasetError, match="reserved"):
        write_minari_dataset("bad-v0", "Hopper-v5", hopper_episodes, tmp_path, metadata={"seeds": [1]})
    assert not (tmp_path / "bad-v0").exists()


def test_loading_a_missing_minari_dataset_is_a_one_line_error_naming_where_it_looked(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_minari_dataset("flowpolicy/absent-v0", data_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message and "flowpolicy/absent-v0" in message
    assert str(tmp_path / "flowpolicy" / "absent-v0") in message and "never downloaded" in message


def test_robomimic_round_trip(tmp_path, hopper_episodes):
    path = write_robomimic_hdf5(tmp_path / "demo.hdf5", hopper_episodes, "Hopper-v5")
    assert not (tmp_path / "demo.hdf5.tmp").exists()
    with h5py.File(path, "r") as f:  # the layout robomimic's loaders expect
        assert f["data"].attrs["total"] == 22 and json.loads(f["data"].attrs["env_args"])["env_name"] == "Hopper-v5"
        assert f["data/demo_1"].attrs["num_samples"] == 12 and f["data/demo_1/next_obs/state"].shape == (12, 11)
        assert list(f["data/demo_0/dones"][()]) == [0] * 6 + [1] and not f["data/demo_1/dones"][()].any()
    loaded, info = read_robomimic_hdf5(path)
    assert_same_episodes(loaded, hopper_episodes)
    assert info["env_id"] == "Hopper-v5" and info["obs_keys"] == ["state"] and info["seeds"] == [11, 12, None]


def write_two_key_file(path, demos):
    """A hand-made robomimic file whose observations are split over the keys 'b_vel' [T, 2] and 'a_pos' [T, 1]."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Toy-v0", "type": 2, "env_kwargs": {}})
        data.attrs["total"] = sum(len(d["actions"]) for d in demos)
        for i, d in enumerate(demos):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = len(d["actions"])
            for key in ("actions", "rewards", "dones"):
                demo.create_dataset(key, data=d[key])
            for group in ("obs", "next_obs"):
                for key, values in d[group].items():
                    demo.create_dataset(f"{group}/{key}", data=values)


def test_robomimic_two_obs_keys_are_concatenated_in_sorted_order_and_missing_keys_are_named(tmp_path):
    pos, vel = np.arange(4.0)[:, None], np.arange(8.0).reshape(4, 2) + 100  # o_0 … o_3 of a 3-step demo
    demo = {"actions": np.ones((3, 1)), "rewards": np.array([1.0, 2.0, 3.0]), "dones": np.array([0, 0, 0]),
            "obs": {"b_vel": vel[:-1], "a_pos": pos[:-1]}, "next_obs": {"b_vel": vel[1:], "a_pos": pos[1:]}}
    path = tmp_path / "two_keys.hdf5"
    write_two_key_file(path, [demo])
    (ep,), info = read_robomimic_hdf5(path)
    assert info["obs_keys"] == ["a_pos", "b_vel"] and info["env_id"] == "Toy-v0"
    np.testing.assert_array_equal(ep.observations, np.concatenate([pos, vel], axis=1))
    assert ep.truncated and not ep.terminated and ep.seed is None
    (ep,), _ = read_robomimic_hdf5(path, obs_keys=["b_vel", "a_pos"])
    np.testing.assert_array_equal(ep.observations, np.concatenate([vel, pos], axis=1))

    with pytest.raises(DatasetError, match=r"two_keys\.hdf5: /data/demo_0/obs has no observation key 'joint'"):
        read_robomimic_hdf5(path, obs_keys=["joint"])
    write_two_key_file(tmp_path / "no_actions.hdf5", [demo])
    with h5py.File(tmp_path / "no_actions.hdf5", "a") as f:
        del f["data/demo_0/actions"]
    with pytest.raises(DatasetError, match=r"no_actions\.hdf5: /data/demo_0 has no 'actions'"):
        read_robomimic_hdf5(tmp_path / "no_actions.hdf5")
    with pytest.raises(DatasetError, match="not found"):
        read_robomimic_hdf5(tmp_path / "absent.hdf5")


def test_chunk_samples_pad_with_first_observation_and_last_action_within_each_episode():
    # Episode A: 3 steps, observations 0..3, actions 10..12. Episode B: 2 steps, observations 20..22, actions 30, 31.
    a = Episode(np.arange(4.0)[:, None], np.array([[10.0], [11.0], [12.0]]), np.zeros(3), True, False)
    b = Episode(np.arange(20.0, 23.0)[:, None], np.array([[30.0], [31.0]]), np.zeros(2), False, True)
    samples = make_chunk_samples([a, b], n_obs_steps=2, horizon=3)
    assert len(samples) == 5
    assert samples.obs_history.shape == (5, 2, 1) and samples.action_chunks.shape == (5, 3, 1)
    assert samples.obs_history.dtype == np.float32 and samples.action_chunks.dtype == np.float32
    expected_history = [[0, 0], [0, 1], [1, 2], [20, 20], [20, 21]]
    expected_chunks = [[10, 11, 12], [11, 12, 12], [12, 12, 12], [30, 31, 31], [31, 31, 31]]
    np.testing.assert_array_equal(samples.obs_history[..., 0], expected_history)
    np.testing.assert_array_equal(samples.action_chunks[..., 0], expected_chunks)

    single = make_chunk_samples([a], n_obs_steps=1, horizon=1)
    np.testing.assert_array_equal(single.obs_history[:, 0, 0], [0, 1, 2])  # o_T is never a sample's input
    np.testing.assert_array_equal(single.action_chunks[:, 0, 0], [10, 11, 12])


def test_check_matches_env_names_source_env_and_both_sizes():
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, 3, True, False, obs_dim=17, action_dim=6)]
    with pytest.raises(DatasetError, match=r"^data/x: observations have 17 dims but Hopper-v5 has 11$"):
        check_matches_env(episodes, 11, 3, "data/x", "Hopper-v5")
    with pytest.raises(DatasetError, match=r"^data/x: actions have 6 dims but Walker2d-v5 has 5$"):
        check_matches_env(episodes, 17, 5, "data/x", "Walker2d-v5")
    check_matches_env(episodes, 17, 6, "data/x", "Walker2d-v5")


def test_split_episodes_is_deterministic_whole_episode_and_keeps_one_for_training():
    rng = np.random.default_rng(0)
    episodes = [random_episode(rng, 2, True, False, seed=i) for i in range(10)]
    train, val = split_episodes(episodes, val_fraction=0.3, seed=5)
    again_train, again_val = split_episodes(episodes, val_fraction=0.3, seed=5)
    assert [e.seed for e in train] == [e.seed for e in again_train]
    assert [e.seed for e in val] == [e.seed for e in again_val]
    assert len(val) == 3 and sorted(e.seed for e in train + val) == list(range(10))
    other_train, _ = split_episodes(episodes, val_fraction=0.3, seed=6)
    assert [e.seed for e in other_train] != [e.seed for e in train]
    assert len(split_episodes(episodes, val_fraction=0.01, seed=0)[1]) == 1  # a small fraction still validates
    assert split_episodes(episodes, val_fraction=0.0, seed=0)[1] == []
    (only,), no_val = split_episodes(episodes[:1], val_fraction=0.5, seed=0)
    assert only is episodes[0] and no_val == []


def test_episode_returns_sum_rewards_in_float64():
    a = Episode(np.zeros((3, 1)), np.zeros((2, 1)), [1.5, 2.0], True, False)
    b = Episode(np.zeros((2, 1)), np.zeros((1, 1)), [-1.0], False, True)
    returns = episode_returns([a, b])
    assert returns.dtype == np.float64
    np.testing.assert_array_equal(returns, [3.5, -1.0])


def test_minari_datasets_carry_provenance_and_namespace_metadata(tmp_path, hopper_episodes):
    import gymnasium
    import mujoco

    path = write_minari_dataset("flowpolicy/hopper-prov-v0", "Hopper-v5", hopper_episodes[:1], tmp_path,
                                ref_min_score=0.0, ref_max_score=1.0, success_criterion="none (locomotion)")
    meta = json.loads((path / "data" / "metadata.json").read_text())
    assert meta["author"] == [DATASET_AUTHOR] and meta["author_email"] == [DATASET_AUTHOR_EMAIL]
    assert meta["code_permalink"].startswith("flowpolicy ")
    assert meta["requirements"] == [f"gymnasium=={gymnasium.__version__}", f"mujoco=={mujoco.__version__}"]
    assert meta["success_criterion"] == "none (locomotion)"
    namespace = json.loads((tmp_path / "flowpolicy" / "namespace_metadata.json").read_text())
    assert namespace["description"] == NAMESPACE_DESCRIPTION


def test_provenance_is_filled_in_place_without_touching_the_episodes(tmp_path, hopper_episodes):
    import hashlib
    import shutil

    path = write_minari_dataset("flowpolicy/hopper-old-v0", "Hopper-v5", hopper_episodes[:1], tmp_path)
    meta_path = path / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    for key in ("author", "author_email", "code_permalink", "requirements"):  # as an older writer left it
        meta.pop(key, None)
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(tmp_path / "flowpolicy" / "namespace_metadata.json", ignore_errors=True)
    (tmp_path / "flowpolicy" / "namespace_metadata.json").write_text("{}")
    digest = hashlib.sha256((path / "data" / "main_data.hdf5").read_bytes()).hexdigest()
    update_dataset_provenance(path, requirements=["gymnasium[mujoco]==1.4.0", "mujoco==3.11.0"])
    meta = json.loads(meta_path.read_text())
    assert meta["requirements"] == ["gymnasium[mujoco]==1.4.0", "mujoco==3.11.0"]
    assert meta["author"] == [DATASET_AUTHOR] and meta["code_permalink"]
    assert hashlib.sha256((path / "data" / "main_data.hdf5").read_bytes()).hexdigest() == digest
    assert json.loads((tmp_path / "flowpolicy" / "namespace_metadata.json").read_text())["description"]
    assert load_minari_dataset(path)[1]["env_id"] == "Hopper-v5"
