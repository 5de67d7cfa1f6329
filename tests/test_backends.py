"""Rollout backends (agents/backends.py): ``async`` and ``ray`` give bit-identical rollouts to ``sync`` for every
learner (group seeds of chain PG, the replay of QSM/CFGRL), a worker killed mid-iteration is restarted and its
shard replayed with identical numbers, a worker that keeps dying stops the run with one line and ``--resume``
(on another backend) continues exactly, and ``runner.backend`` is validated. The Ray tests share one
``ray.init(num_cpus=2)`` and skip with a reason when ray is not installed."""

import functools
import json

import numpy as np
import pytest
import torch

from agents.backends import ShardedVecEnv, WorkerLostError, make_backend_envs, shard_bounds
from agents.finetune import ALGORITHMS, FinetuneConfig, finetune
from agents.runner import RunnerConfig
from envs.vector import VecEnv
from flowpolicy.checkpoint import load_policy
from flowpolicy.config import ConfigError, from_dict, load_config

pytestmark = pytest.mark.filterwarnings("ignore:.*are never visited")

VEC_FIELDS = ("obs", "reward", "terminated", "truncated", "final_obs", "env_steps")


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'flowpolicy[ray]')")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def assert_same_steps(reference: VecEnv, other, seeds, kill_at=None, decisions=40):
    rng = np.random.default_rng(0)
    for seed in seeds:
        np.testing.assert_array_equal(reference.reset(seed), other.reset(seed))
        for t in range(decisions):
            if t == kill_at:
                other.kill_worker(len(other.bounds) - 1)
            actions = rng.uniform(-1, 1, (reference.num_envs, reference.act_steps, 3))
            a, b = reference.step(actions), other.step(actions)
            for name in VEC_FIELDS:
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{name} at {t}")
            assert a.episode_returns == b.episode_returns and a.episode_lengths == b.episode_lengths


def test_shards_are_contiguous_balanced_and_never_empty():
    assert shard_bounds(5, 2) == [(0, 3), (3, 5)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]
    assert shard_bounds(16, 1) == [(0, 16)]


def test_runner_backend_is_validated():
    assert RunnerConfig().backend == "sync"
    with pytest.raises(ConfigError, match="runner.backend"):
        from_dict(RunnerConfig, {"backend": "mpi"}, prefix="runner")
    with pytest.raises(ConfigError, match="runner.num_workers"):
        from_dict(RunnerConfig, {"num_workers": 0}, prefix="runner")
    with pytest.raises(ConfigError, match="runner.worker_cpus"):
        from_dict(RunnerConfig, {"worker_cpus": -1}, prefix="runner")


@pytest.mark.parametrize("workers", [1, 3])  # one shard; uneven shards (2, 2, 1)
def test_async_steps_exactly_like_sync_including_group_seeds(workers):
    with VecEnv("Hopper-v5", 5, act_steps=4) as ref, ShardedVecEnv("Hopper-v5", 5, 4, num_workers=workers) as sharded:
        assert_same_steps(ref, sharded, [3, [7, 7, 8, 8, 9]])


def test_backend_shards_get_the_learners_env_kwargs_and_options():
    """A Dict-observation env with obs_keys and a sparse success reward: the shards build the same env."""
    import manip_envs  # noqa: F401  (registers ManipTiny-v0)

    from agents.backends import make_backend_envs

    options = {"obs_keys": ["observation"], "success_reward": "sparse"}
    with VecEnv("ManipTiny-v0", 3, act_steps=2, options=options) as ref:
        sharded = make_backend_envs(ref, "async", num_workers=2)
        try:
            assert sharded.single_observation_space == ref.single_observation_space
            assert_same_steps(ref, sharded, [5])
        finally:
            sharded.close()


def test_a_killed_async_worker_is_restarted_and_its_shard_replayed():
    with VecEnv("Hopper-v5", 4, act_steps=4) as ref, ShardedVecEnv("Hopper-v5", 4, 4, num_workers=2) as sharded:
        assert_same_steps(ref, sharded, [11], kill_at=17)
        assert sharded.restarts == 1


def test_ray_steps_exactly_like_sync_and_survives_a_killed_actor(ray_session):
    with VecEnv("Hopper-v5", 5, act_steps=4) as ref, \
            ShardedVecEnv("Hopper-v5", 5, 4, num_workers=2, transport="ray") as sharded:
        assert_same_steps(ref, sharded, [[1, 1, 2, 2, 3]], kill_at=13)  # ray.kill of an actor mid-iteration
        assert sharded.restarts == 1
        assert all(info["rss_mb"] > 0 for info in sharded.worker_info())


# -- every learner, every backend: the collected data are identical -----------------------------------------

LEARNERS = {
    "reinflow": ["algo.num_envs=3", "algo.decisions_per_env=8"],
    "fpo": ["algo.num_envs=3", "algo.decisions_per_env=8"],
    "grpo": ["algo.group_size=2", "algo.num_groups=2", "algo.max_decisions=8"],
    "qsm": ["algo.num_envs=3", "algo.decisions_per_env=8"],
    "cfgrl": ["algo.mode=online", "algo.num_envs=3", "algo.decisions_per_env=8"],
}


@functools.cache  # each sync reference is collected once for both backends' tests
def collected(name: str, backend: str, iteration: int = 1) -> tuple[dict, dict]:
    cfg = load_config(FinetuneConfig, f"configs/hopper/{name}.yaml", LEARNERS[name])
    algo_cls, learner_cls = ALGORITHMS[name]
    torch.manual_seed(0)  # the critics' initialization, as finetune seeds it
    learner = learner_cls(load_policy(cfg.policy)[0], cfg.env_id, from_dict(algo_cls, cfg.algo, prefix="algo"), 3,
                          seed=7)
    sync_envs = learner.envs
    learner.envs = make_backend_envs(sync_envs, backend, num_workers=2, worker_cpus=0.5)
    try:
        metrics = learner.collect(iteration)
    finally:
        learner.envs.close()
        sync_envs.close()
    if hasattr(learner, "buffer"):
        data = learner.buffer.flat()
    elif hasattr(learner, "replay"):
        data = learner.replay.state_tensors()
    else:
        data = learner.batch
    return {k: v.clone() for k, v in data.items()}, metrics


def assert_same_collection(a, b):
    (data_a, metrics_a), (data_b, metrics_b) = a, b
    assert data_a.keys() == data_b.keys() and data_a
    for key in data_a:
        torch.testing.assert_close(data_a[key], data_b[key], rtol=0, atol=0, msg=key)
    for key in ("env_steps", "episode_returns", "episode_lengths"):
        assert metrics_a[key] == metrics_b[key], key


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_collects_identically_on_async(name):
    assert_same_collection(collected(name, "sync"), collected(name, "async"))


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_collects_identically_on_ray(name, ray_session):
    assert_same_collection(collected(name, "sync"), collected(name, "ray"))


# -- whole runs: restart, stop with one line, resume on another backend -------------------------------------

TINY = ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8", "runner.total_env_steps=192",
        "runner.eval_episodes=1", "runner.progress=false", "torch_threads=1"]
SAME = ("initial_return", "final_return", "best_return", "env_steps", "iterations")


def run(tmp_path, name, *overrides, resume=False):
    out = tmp_path / name
    if resume:
        from agents.finetune import load_run_config

        cfg = load_run_config(out)
        for item in overrides:
            key, value = item.split("=")
            setattr(cfg.runner, key.split(".")[1], type(getattr(cfg.runner, key.split(".")[1]))(value))
        return finetune(cfg, resume=True)
    return finetune(load_config(FinetuneConfig, "configs/hopper/reinflow.yaml", [*TINY, *overrides, f"out={out}"]))


@pytest.fixture
def kill_on_step(monkeypatch):
    """Kill the last worker on the n-th decision of the run (a decision in the middle of iteration 1)."""
    original, calls = ShardedVecEnv.step, {"n": 0}

    def arm(n):
        calls["n"] = 0
        def step(self, actions):
            calls["n"] += 1
            if calls["n"] == n:
                calls["killed"] = calls.get("killed", 0) + 1
                self.kill_worker(self.num_workers - 1)
            return original(self, actions)

        monkeypatch.setattr(ShardedVecEnv, "step", step)
        return calls

    return arm


def test_runs_on_every_backend_match_sync_through_a_killed_worker_and_a_resume(tmp_path, ray_session, kill_on_step):
    reference = run(tmp_path, "sync")
    calls = kill_on_step(12)
    restarted = run(tmp_path, "ray-restarted", "runner.backend=ray")
    assert calls["killed"] == 1
    assert {k: restarted[k] for k in SAME} == {k: reference[k] for k in SAME}

    kill_on_step(12)
    with pytest.raises(WorkerLostError, match="--resume") as stopped:
        run(tmp_path, "async-stopped", "runner.backend=async", "runner.max_worker_restarts=0")
    assert "\n" not in str(stopped.value) and "checkpoints/last (iteration 1)" in str(stopped.value)
    resumed = run(tmp_path, "async-stopped", "runner.backend=ray", resume=True)  # resumes on another backend
    assert {k: resumed[k] for k in SAME} == {k: reference[k] for k in SAME}
    assert json.loads((tmp_path / "async-stopped" / "config.json").read_text())["runner"]["backend"] == "async"


def test_ray_backend_without_ray_is_a_one_line_config_error(monkeypatch):
    import sys

    from agents.backends import check_backend

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ConfigError, match=r"runner.backend: ray needs the ray package \(pip install"):
        check_backend(from_dict(RunnerConfig, {"backend": "ray"}, prefix="runner"))
    check_backend(from_dict(RunnerConfig, {"backend": "async"}, prefix="runner"))  # needs nothing


def test_sync_and_envless_learners_keep_their_envs():
    from types import SimpleNamespace

    from agents.backends import attach_backend

    envs = VecEnv("Hopper-v5", 2)
    learner = SimpleNamespace(envs=envs)
    attach_backend(learner, RunnerConfig())
    assert learner.envs is envs
    envs.close()
    offline = SimpleNamespace(envs=None)  # offline CFGRL has no envs
    attach_backend(offline, from_dict(RunnerConfig, {"backend": "ray"}, prefix="runner"))
    assert offline.envs is None
