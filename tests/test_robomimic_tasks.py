"""The robomimic tasks on robosuite (issue #16 items 1 and 3): env contract, env from env_args, scripted
demonstrators, and a tiny collect → pretrain → evaluate path. Skipped where robosuite is not installed
(``pip install 'flowpolicy[manipulation]'``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="robosuite not installed (pip install 'flowpolicy[manipulation]')")

import gymnasium as gym  # noqa: E402

from envs.registry import EnvError, make_gym_env  # noqa: E402
from envs.robosuite_tasks import (  # noqa: E402
    PANDA_OSC_POSE,
    ROBOMIMIC_OBS_KEYS,
    make_env_args,
    make_from_env_args,
)
from envs.vector import make_env  # noqa: E402
from pretrain.datasets import read_robomimic_hdf5  # noqa: E402
from pretrain.scripted import run_scripted_episode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = [("RobomimicLift-v0", "Lift", 19, 300), ("RobomimicCan-v0", "PickPlaceCan", 23, 300),
         ("RobomimicSquare-v0", "NutAssemblySquare", 23, 400)]


@pytest.fixture(scope="module")
def envs():
    made = {env_id: make_gym_env(env_id) for env_id, *_ in TASKS}
    yield made
    for env in made.values():
        env.close()


@pytest.mark.parametrize("env_id,env_name,obs_dim,horizon", TASKS)
def test_env_contract(envs, env_id, env_name, obs_dim, horizon):
    env = envs[env_id]
    base = env.unwrapped
    assert base.env_name == env_name and env.spec.max_episode_steps == horizon
    assert env.observation_space.shape == (obs_dim,) and env.observation_space.dtype == np.float32
    assert env.action_space.shape == (7,) and np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    global_state = np.random.get_state()  # noqa: NPY002 - the env must leave the global RNG alone
    obs, info = env.reset(seed=7)
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,) and info["is_success"] is False
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 7)).astype(np.float32)
    first = [env.step(a) for a in actions]
    again_obs, _ = env.reset(seed=7)
    np.testing.assert_array_equal(again_obs, obs)
    second = [env.step(a) for a in actions]
    for (o1, r1, te1, tr1, i1), (o2, r2, te2, tr2, i2) in zip(first, second, strict=True):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2 == 0.0 and not (te1 or tr1 or te2 or tr2) and i1["is_success"] is i2["is_success"] is False
    other, _ = env.reset(seed=8)
    assert not np.allclose(other[9:], obs[9:])  # another seed places the object elsewhere
    np.testing.assert_array_equal(np.random.get_state()[1], global_state[1])  # noqa: NPY002
    # robomimic's keys in robomimic's order: the flat vector is robosuite's dict concatenated. (Checked last:
    # an extra forced observation update runs mj_forward, which changes the solver's warm start.)
    obs, _ = env.reset(seed=7)
    raw = base.robosuite_env._get_observations(force_update=True)
    expected = np.concatenate([np.ravel(raw["object-state" if k == "object" else k]) for k in ROBOMIMIC_OBS_KEYS])
    np.testing.assert_allclose(obs, expected.astype(np.float32))
    assert np.any(obs[9:16] != 0)  # object parts relative to the gripper are filled at reset (robomimic's obs)


def test_lift_passes_gymnasium_check_env_and_runs_chunked(envs):
    from gymnasium.utils.env_checker import check_env

    check_env(envs["RobomimicLift-v0"].unwrapped, skip_render_check=True)
    env = make_env("RobomimicLift-v0", act_steps=4)
    try:
        env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(np.zeros((4, 7), np.float32))
        assert obs.shape == (19,) and info["chunk_steps"] == 4 and "is_success" in info
    finally:
        env.close()


def test_controller_config_is_robosuites_panda_default():
    from robosuite.controllers import load_composite_controller_config

    assert load_composite_controller_config(robot="Panda") == PANDA_OSC_POSE


def test_env_from_env_args_dict_json_file_and_old_controller_format(tmp_path, envs):
    args = make_env_args("PickPlaceCan")
    global_state = np.random.get_state()  # noqa: NPY002 - building an env leaves the global RNG alone too
    env = make_from_env_args(args)
    np.testing.assert_array_equal(np.random.get_state()[1], global_state[1])  # noqa: NPY002
    try:
        assert env.spec.id == "RobomimicCan-v0" and env.observation_space.shape == (23,)
        assert env.unwrapped.env_args()["env_kwargs"]["controller_configs"] == PANDA_OSC_POSE
    finally:
        env.close()
    # robosuite 1.4's flat controller config (robomimic's v1.4 datasets) is converted by robosuite itself
    old = make_env_args("Lift")
    old["env_kwargs"]["controller_configs"] = {k: v for k, v in PANDA_OSC_POSE["body_parts"]["right"].items()
                                               if k not in ("gripper", "input_type", "input_ref_frame")}
    old["env_kwargs"]["controller_configs"]["control_delta"] = True
    import h5py

    path = tmp_path / "lift.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("data").attrs["env_args"] = json.dumps(old)
    env = make_gym_env("RobomimicLift-v0", env_args=str(path))
    try:
        obs, _ = env.reset(seed=3)
        np.testing.assert_array_equal(obs, envs["RobomimicLift-v0"].reset(seed=3)[0])
    finally:
        env.close()
    with pytest.raises(EnvError, match="not a robosuite env"):
        make_from_env_args({"env_name": "Hopper-v5", "type": 2, "env_kwargs": {}})


def test_terminate_on_success_and_success_signal():
    env = gym.make("RobomimicLift-v0", terminate_on_success=True)
    try:
        result = run_scripted_episode(env, seed=1, fail_prob=0.0)
        assert result.success and result.episode.terminated
        assert result.episode.rewards[-1] == 1.0 and result.episode.rewards[:-1].sum() == 0
        assert result.states.shape[0] == result.episode.length
    finally:
        env.close()


@pytest.mark.parametrize("env_id,seeds", [("RobomimicLift-v0", (0, 1)), ("RobomimicCan-v0", (0,)),
                                          ("RobomimicSquare-v0", (0,))])
def test_scripted_demonstrators_succeed(envs, env_id, seeds):
    for seed in seeds:
        result = run_scripted_episode(envs[env_id], seed)
        assert result.success, f"{env_id} seed {seed}"
        assert result.episode.length < envs[env_id].spec.max_episode_steps


def test_a_failed_first_grasp_recovers(envs):
    normal = run_scripted_episode(envs["RobomimicLift-v0"], 2, fail_prob=0.0)
    missed = run_scripted_episode(envs["RobomimicLift-v0"], 2, fail_prob=1.0)
    assert normal.success and missed.success and missed.episode.length > normal.episode.length + 15


@pytest.mark.slow
def test_collect_pretrain_evaluate(tmp_path, run_cli):
    run = run_cli
    out = run("collect", "--env", "RobomimicLift-v0", "--demonstrator", "scripted", "--out", str(tmp_path),
              "--episodes", "3", "--seed", "5")
    path = tmp_path / "lift-scripted.hdf5"
    assert "3 scripted demonstrations" in out and path.is_file()
    episodes, info = read_robomimic_hdf5(path)
    assert len(episodes) == 3 and all(ep.terminated for ep in episodes) and info["env_id"] == "RobomimicLift-v0"
    assert len(info["filter_keys"]["train"]) == 2 and len(info["filter_keys"]["valid"]) == 1
    run("pretrain", "--config", str(REPO / "configs/hopper/pretrain.yaml"), "env_id=RobomimicLift-v0",
        f"dataset={path}", f"out={tmp_path / 'bc'}", "train.steps=20", "train.warmup_steps=2", "train.eval_every=0",
        "train.eval_episodes=0", "train.checkpoint_every=0", "train.val_every=10", "torch_threads=1")
    result = json.loads(run("evaluate", "--checkpoint", str(tmp_path / "bc" / "policy"), "--episodes", "1", "--json"))
    assert result["env"] == "RobomimicLift-v0" and result["episodes"] == 1 and result["length_mean"] == 300
