"""Smoke tests of the real manipulation suites through flowpolicy's env layer (gymnasium-robotics Fetch and
FrankaKitchen, Meta-World, gym-pusht, OCBench): make, step action chunks, flatten, report success, evaluate a
tiny untrained policy. A suite that is not installed (Meta-World needs `pip install --no-deps metaworld==3.1.1`)
is skipped with the reason. The pins themselves: robosuite 1.5.1 steps on the installed mujoco."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from benchmarks.manipulation_suites import SUITES, missing_module, smoke
from envs.evaluation import evaluate_agent
from envs.registry import get_task
from flowpolicy import save_policy
from flowpolicy.agent import Agent
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore")
EXPECTED = {  # flat obs dim (FlattenObservation order), action dim
    "fetch-reach": (16, 4), "fetch-push": (31, 4), "franka-kitchen": (93, 9), "metaworld-reach": (39, 4),
    "pusht": (5, 2), "ocbench-block-lite": (28, 7),
}


def require(name: str) -> None:
    reason = missing_module(name)
    if reason is not None:
        pytest.skip(f"{name}: {reason}")


def tiny_agent(name: str) -> Agent:
    env_id, kwargs, _ = SUITES[name]
    task = get_task(env_id, **kwargs)
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(obs_dim=task.obs_dim, action_dim=task.action_dim, horizon=4, num_steps=2,
                                 network=NetworkConfig(hidden=[16])))
    return Agent(policy, seed=0)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_suite_steps_chunks_flattens_and_reports_success(name):
    require(name)
    result = smoke(name, num_envs=2, act_steps=4)
    assert (result["obs_dim"], result["action_shape"]) == (EXPECTED[name][0], [4, EXPECTED[name][1]])
    assert result["reports_success"] and result["episodes"] >= 2
    assert len(result["episode_successes"]) == result["episodes"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_suite_evaluates_a_tiny_policy_with_a_success_rate(name):
    require(name)
    env_id, kwargs, _ = SUITES[name]
    result = evaluate_agent(tiny_agent(name), env_id, episodes=1, num_envs=1, **kwargs).to_dict()
    assert result["episodes"] == 1 and 0.0 <= result["success_rate"] <= 1.0


def test_chunked_suite_env_passes_check_env():
    require("fetch-reach")
    from gymnasium.utils.env_checker import check_env

    from envs.vector import make_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(make_env("FetchReach-v4", act_steps=4), skip_render_check=True)


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=ROOT)


def test_suite_ids_work_without_importing_the_suite():
    """A fresh process: FetchReach-v4 is unknown to gymnasium until gymnasium_robotics is imported, which the
    registry does by itself."""
    require("fetch-reach")
    out = run_python("import sys; from envs.registry import make_gym_env; env = make_gym_env('FetchReach-v4'); "
                     "print('gymnasium_robotics' in sys.modules, type(env.unwrapped).__name__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "True"


def test_evaluate_cli_with_env_kwargs_on_meta_world(tmp_path):
    require("metaworld-reach")
    agent = tiny_agent("metaworld-reach")
    checkpoint = save_policy(agent.policy, tmp_path / "policy", metadata={"env_id": "Meta-World/MT1"})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "flowpolicy.cli", "evaluate", "--checkpoint", str(checkpoint),
                          "--episodes", "1", "--json", "--env-kwarg", "env_name=reach-v3"],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["env"] == "Meta-World/MT1" and "success_rate" in result


def test_robosuite_runs_on_the_pinned_mujoco():
    """robosuite 1.5.x needs mujoco <= 3.9.0 (MjData.qM, mj_fullM): the core pin must keep it working."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import robosuite
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"robosuite does not import: {type(err).__name__}: {err}")
    import numpy as np

    env = robosuite.make("Lift", robots="Panda", has_renderer=False, has_offscreen_renderer=False,
                         use_camera_obs=False, horizon=10)
    env.reset()
    low, high = env.action_spec
    for _ in range(5):
        obs, reward, done, info = env.step(np.zeros_like(low))
    assert "robot0_eef_pos" in obs and np.isfinite(obs["robot0_eef_pos"]).all()
    env.close()
