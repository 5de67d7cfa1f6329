"""The env layer for robot manipulation tasks: Dict observations flattened in a documented order, a success
signal carried end to end (VecStep, evaluate, the runner), env kwargs and options, suite auto-imports, no second
RecordEpisodeStatistics, and a chunked env that passes gymnasium's env checker. Uses the tiny envs of
``tests/manip_envs.py``; the real suites are smoke-tested in ``test_manipulation_suites.py``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from envs.evaluation import evaluate_agent
from envs.registry import SUITE_MODULES, EnvError, get_task, make_gym_env
from envs.vector import ActionChunk, VecEnv, make_env
from envs.wrappers import EnvOptions, FlattenDictObservation, has_wrapper
from flowpolicy import load_agent, save_policy
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig

ROOT, TESTS = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
ENV = "manip_envs:ScriptedSuccessEnv"  # Dict obs 4 + 2 + 3 = 9, actions 2, 6 steps, success at step 3


def test_dict_observation_flattened_like_gymnasium_flatten_observation():
    env = make_env(ENV)
    reference = gym.wrappers.FlattenObservation(make_gym_env(ENV))
    obs, _ = env.reset(seed=3)
    ref, _ = reference.reset(seed=3)
    assert env.observation_space.shape == reference.observation_space.shape == (9,)
    # gymnasium's order (achieved_goal, desired_goal, observation), as float32
    np.testing.assert_array_equal(obs, ref.astype(np.float32))
    for _ in range(4):
        obs, *_ = env.step(np.zeros(2, np.float32))
        ref, *_ = reference.step(np.zeros(2, np.float32))
        np.testing.assert_array_equal(obs, ref.astype(np.float32))
    assert obs.dtype == np.float32 and env.observation_space.contains(obs)


def test_obs_keys_select_and_order_the_flattened_keys():
    env = make_env(ENV, options=EnvOptions(obs_keys=["observation", "desired_goal"]))
    obs, _ = env.reset(seed=0)
    raw, _ = ScriptedSuccessEnv().reset(seed=0)
    np.testing.assert_array_equal(obs, np.concatenate([raw["observation"], raw["desired_goal"]]).astype(np.float32))
    assert get_task(ENV, {"obs_keys": ["observation", "desired_goal"]}).obs_dim == 6
    assert get_task(ENV).obs_dim == 9
    with pytest.raises(EnvError, match="not among the observation's keys"):
        make_env(ENV, options=EnvOptions(obs_keys=["gripper"]))
    with pytest.raises(EnvError, match="applies to Dict observations"):
        make_env("Hopper-v5", options=EnvOptions(obs_keys=["observation"]))


def ScriptedSuccessEnv(**kwargs):
    import manip_envs

    return manip_envs.ScriptedSuccessEnv(**kwargs)


def run_episodes(vec: VecEnv, decisions: int) -> tuple[list, list, list]:
    vec.reset(seed=0)
    successes, per_step, returns = [], [], []
    for _ in range(decisions):
        out = vec.step(np.zeros((vec.num_envs, vec.act_steps, 2), np.float32))
        per_step.append(out.success)
        successes += out.episode_successes
        returns += out.episode_returns
        assert len(out.episode_successes) in (0, len(out.episode_returns))
    return successes, per_step, returns


def test_success_at_one_step_counts_once_per_episode():
    with VecEnv(ENV, 2) as vec:  # one action per decision: success at step 3 of every 6-step episode
        successes, per_step, returns = run_episodes(vec, 12)
    assert successes == [True] * 4 and len(returns) == 4
    assert [bool(s[0]) for s in per_step[:6]] == [False, False, True, False, False, False]


def test_success_inside_an_action_chunk_is_seen():
    with VecEnv(ENV, 1, act_steps=4) as vec:  # steps 1-4, then 5-6: the success at step 3 is mid-chunk
        successes, per_step, _ = run_episodes(vec, 2)
    assert successes == [True] and per_step[0].tolist() == [True] and per_step[1].tolist() == [False]


def test_no_success_is_zero_and_no_success_info_is_absent():
    with VecEnv(ENV, 1, success_at=None) as vec:
        successes, per_step, _ = run_episodes(vec, 6)
    assert successes == [False] and not any(s[0] for s in per_step)
    with VecEnv(ENV, 1, success_key=None) as vec:
        successes, per_step, returns = run_episodes(vec, 6)
    assert successes == [] and per_step == [None] * 6 and len(returns) == 1


def test_success_key_option_and_meta_world_style_key():
    with VecEnv(ENV, 1, success_key="success") as vec:  # Meta-World / OCBench spelling, found automatically
        assert run_episodes(vec, 6)[0] == [True]
    with VecEnv(ENV, 1, options={"success_key": "other"}) as vec:  # only the configured key is read
        assert run_episodes(vec, 6)[0] == []


def test_terminate_on_success_and_sparse_reward():
    options = EnvOptions(terminate_on_success=True, success_reward="sparse")
    env = make_env(ENV, options=options)
    env.reset(seed=0)
    rewards = []
    for _ in range(3):
        _, reward, terminated, truncated, info = env.step(np.ones(2, np.float32))
        rewards.append(reward)
    assert rewards == [0.0, 0.0, 1.0] and terminated and not truncated and info["episode_success"]
    assert info["episode"]["l"] == 3 and info["episode"]["r"] == 1.0
    with pytest.raises(EnvError, match="reports none of the info keys"):
        env = make_env(ENV, options=options, success_key=None)
        env.reset(seed=0)
        env.step(np.zeros(2, np.float32))


def test_env_kwargs_reach_the_env():
    env = make_env(ENV, horizon=2, success_at=1)
    env.reset(seed=0)
    assert env.step(np.zeros(2))[4]["success"]
    assert env.step(np.zeros(2))[3]  # truncated after 2 steps
    assert get_task("manip_envs:ManipTiny-v0", horizon=3).max_episode_steps == 0  # (no TimeLimit: self-truncating)


def test_a_wrong_or_missing_env_kwarg_is_a_one_line_error():
    with pytest.raises(EnvError, match="env_kwargs.KEY=VALUE") as err:
        make_gym_env("manip_envs:ManipTiny-v0", no_such_kwarg=1)
    assert "\n" not in str(err.value) and "no_such_kwarg" in str(err.value)


def test_no_second_record_episode_statistics():
    env = make_env("manip_envs:with_own_episode_stats", act_steps=2)
    stack, inner = [], env
    while isinstance(inner, gym.Wrapper):
        stack.append(type(inner))
        inner = inner.env
    assert stack.count(gym.wrappers.RecordEpisodeStatistics) == 1 and has_wrapper(env, ActionChunk)
    with VecEnv("manip_envs:with_own_episode_stats", 2) as vec:  # would fail gymnasium's assertion at episode end
        successes, _, returns = run_episodes(vec, 7)
    assert returns == [0.0, 0.0] and successes == [True, True]


def test_chunked_env_passes_gymnasium_check_env():
    from gymnasium.utils.env_checker import check_env

    check_env(make_env(ENV, act_steps=4), skip_render_check=True)
    check_env(make_env("Hopper-v5", act_steps=4), skip_render_check=True)
    chunked = make_env(ENV, act_steps=4)
    assert chunked.spec is not None  # re-creatable: every wrapper records its constructor arguments
    assert isinstance(gym.make(chunked.spec).unwrapped, type(chunked.unwrapped))


def test_flatten_wrapper_records_constructor_args():
    env = FlattenDictObservation(make_gym_env(ENV), ["observation"])
    assert env.spec.additional_wrappers[-1].kwargs == {"obs_keys": ["observation"]}


def test_unknown_ids_and_missing_suites_are_one_line_errors(monkeypatch):
    with pytest.raises(EnvError, match="unknown environment 'NoSuchTask-v0'"):
        make_gym_env("NoSuchTask-v0")
    monkeypatch.setitem(SUITE_MODULES, "FakeSuite", ("no_such_suite_module", "pip install 'flowpolicy[manipulation]'"))
    with pytest.raises(EnvError) as err:
        make_gym_env("FakeSuiteReach-v1")
    assert "pip install 'flowpolicy[manipulation]'" in str(err.value) and "\n" not in str(err.value)


def test_suite_ids_are_imported_automatically(monkeypatch):
    """An unknown id with a suite prefix imports its module first (the module registers the id)."""
    monkeypatch.setitem(SUITE_MODULES, "ManipAuto", ("manip_auto_suite", "flowpolicy[manipulation]"))
    monkeypatch.delitem(sys.modules, "manip_auto_suite", raising=False)
    gym.registry.pop("ManipAutoTiny-v0", None)
    try:
        env = make_gym_env("ManipAutoTiny-v0")
        assert "manip_auto_suite" in sys.modules and isinstance(env.observation_space, gym.spaces.Dict)
    finally:
        gym.registry.pop("ManipAutoTiny-v0", None)


class ZeroAgent:
    def reset(self, env_indices=None):
        pass

    def act(self, obs):
        return np.zeros((len(obs), 2), np.float32)


def test_evaluate_agent_success_rate():
    result = evaluate_agent(ZeroAgent(), ENV, episodes=3, num_envs=2)
    assert result.successes == [True] * 3 and result.to_dict()["success_rate"] == 1.0
    result = evaluate_agent(ZeroAgent(), ENV, episodes=2, success_at=None)
    assert result.to_dict()["success_rate"] == 0.0
    result = evaluate_agent(ZeroAgent(), ENV, episodes=2, success_key=None)
    assert result.success_rate is None and "success_rate" not in result.to_dict()


@pytest.fixture(scope="module")
def manip_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(obs_dim=9, action_dim=2, horizon=2, num_steps=2, network=NetworkConfig(hidden=[16])))
    return save_policy(policy, tmp_path_factory.mktemp("manip") / "policy",
                       metadata={"env_id": "manip_envs:ManipTiny-v0", "env_kwargs": {"success_at": 2}})


def flowpolicy(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "flowpolicy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)


def test_evaluate_cli_reports_success_rate_and_takes_env_kwargs(manip_checkpoint):
    out = flowpolicy("evaluate", "--checkpoint", manip_checkpoint, "--episodes", 2, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["success_rate"] == 1.0 and result["successes"] == [True, True]
    out = flowpolicy("evaluate", "--checkpoint", manip_checkpoint, "--episodes", 2, "--json",
                     "--env-kwarg", "success_at=null")  # overrides the checkpoint's env_kwargs
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["success_rate"] == 0.0
    out = flowpolicy("evaluate", "--checkpoint", manip_checkpoint, "--episodes", 2,
                     "--env-option", "terminate_on_success=true")
    assert out.returncode == 0 and "success rate 1.00" in out.stdout, out.stderr
    out = flowpolicy("evaluate", "--checkpoint", manip_checkpoint, "--env-kwarg", "nope")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "KEY=VALUE" in out.stderr
    out = flowpolicy("evaluate", "--checkpoint", manip_checkpoint, "--env-option", "success_reward=dense")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "success_reward" in out.stderr


def empty_config(tmp_path):
    path = tmp_path.parent / f"{tmp_path.name}.yaml"
    path.write_text("{}\n")
    return path


@pytest.mark.parametrize("algorithm,overrides", [
    ("reinflow", ["algo.num_envs=2", "algo.decisions_per_env=6", "algo.minibatch_size=6", "algo.sigma_min=0.1",
                  "algo.sigma_max=0.24"]),
    ("grpo", ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=6"]),
])
def test_finetune_logs_and_summarizes_success(algorithm, overrides, manip_checkpoint, tmp_path):
    from agents.finetune import FinetuneConfig, finetune
    from agents.runner import read_scalars
    from flowpolicy.config import load_config

    cfg = load_config(FinetuneConfig, empty_config(tmp_path),
                      [f"algorithm={algorithm}", "env_id=manip_envs:ManipTiny-v0", f"policy={manip_checkpoint}",
                       f"out={tmp_path}", *overrides, "runner.total_env_steps=24", "runner.eval_episodes=2",
                       "runner.progress=false", "env_kwargs.success_at=2", "env_options.success_reward=sparse"])
    summary = finetune(cfg)
    assert summary["initial_success_rate"] == summary["final_success_rate"] == summary["best_success_rate"] == 1.0
    assert summary["final_return"] == 1.0  # sparse reward: 1 at the one success step
    assert json.loads((tmp_path / "summary.json").read_text())["final_success_rate"] == 1.0
    training = read_scalars(tmp_path, "charts/success_rate")[:, 1]
    assert len(training) >= 1 and (training == 1.0).all()
    assert read_scalars(tmp_path, "eval/success_rate")[:, 1].tolist() == [1.0, 1.0]
    agent = load_agent(tmp_path / "policy")
    assert agent.metadata["env_kwargs"] == {"success_at": 2}
    assert agent.metadata["env_options"]["success_reward"] == "sparse"


def test_finetune_without_success_has_no_success_keys(manip_checkpoint, tmp_path):
    from agents.finetune import FinetuneConfig, finetune
    from agents.runner import read_scalars
    from flowpolicy.config import load_config

    cfg = load_config(FinetuneConfig, empty_config(tmp_path),
                      ["env_id=manip_envs:ManipTiny-v0", f"policy={manip_checkpoint}", f"out={tmp_path}",
                       "algo.num_envs=2", "algo.decisions_per_env=6", "algo.minibatch_size=6",
                       "runner.total_env_steps=12", "runner.eval_episodes=1", "runner.progress=false",
                       "env_kwargs.success_key=null"])
    summary = finetune(cfg)
    assert not any("success" in key for key in summary)
    assert len(read_scalars(tmp_path, "charts/success_rate")) == 0
