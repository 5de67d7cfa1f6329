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
def collected(name: str, backend: str, iteration: int = 1, inference: str = "learner", workers: int = 2,
              kill: bool = False, overrides: tuple = ()) -> tuple[dict, dict]:
    cfg = load_config(FinetuneConfig, f"configs/hopper/{name}.yaml", [*LEARNERS[name], *overrides])
    algo_cls, learner_cls = ALGORITHMS[name]
    torch.manual_seed(0)  # the critics' initialization, as finetune seeds it
    learner = learner_cls(load_policy(cfg.policy)[0], cfg.env_id, from_dict(algo_cls, cfg.algo, prefix="algo"), 3,
                          seed=7)
    sync_envs = learner.envs
    learner.envs = make_backend_envs(sync_envs, backend, num_workers=workers, worker_cpus=0.5)
    learner.envs.inference = inference
    if backend == "sync" and inference == "workers":  # as attach_backend does: sample in the workers' shards
        learner.envs.inference_shards = shard_bounds(sync_envs.num_envs, workers)
    if kill:  # the last worker is dead when the iteration is sent: restarted, its shard's iteration re-run
        learner.envs.kill_worker(learner.envs.num_workers - 1)
    try:
        metrics = learner.collect(iteration)
    finally:
        learner.envs.close()
        sync_envs.close()
    if kill:
        assert learner.envs.restarts == 1
    metrics = {**metrics, "backend_env_steps": getattr(learner.envs, "total_env_steps", None)}
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


# -- runner.inference: workers — per-env noise; async/ray workers hold the actor and run whole iterations -----

@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_worker_inference_collects_identically_on_every_backend(name, ray_session):
    """Every env draws from its own generator and sync samples in the workers' shards, so workers with a policy
    copy each (one round trip per iteration) give sync's numbers — a worker restarted mid-call included —
    while the noise really is another stream than the default one."""
    assert_same_collection(collected(name, "sync", inference="workers"), collected(name, "async", inference="workers"))
    assert_same_collection(collected(name, "sync", inference="workers", workers=3),
                           collected(name, "ray", inference="workers", workers=3, kill=True))
    reference = collected(name, "sync", inference="workers")
    default = collected(name, "sync")[0]
    assert any(not torch.equal(default[k], reference[0][k]) for k in default)


@pytest.mark.parametrize("advantages", ["group", "gae"])  # gae: critic values and reward scale on the full grid
def test_worker_inference_stops_with_the_last_episode_of_a_group(advantages):
    """Chain PG leaves when every env has finished its episode: the workers stop there too, and a shard that
    finished first contributes placeholders the learner ignores — the batch equals the sync one."""
    long_episodes = ("algo.max_decisions=250", "algo.a=3.0", f"algo.advantages={advantages}")
    reference = collected("grpo", "sync", inference="workers", workers=4, overrides=long_episodes)
    lengths = reference[1]["episode_lengths"]
    assert len(set(lengths)) > 1 and max(lengths) < 4 * 250  # episodes of different lengths, all ended
    on_workers = collected("grpo", "async", inference="workers", workers=4, overrides=long_episodes)
    assert_same_collection(reference, on_workers)
    assert on_workers[1]["backend_env_steps"] < 4 * 250 * 4 / 2  # the workers stopped with their episodes


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


def test_worker_inference_runs_match_sync_and_resume_on_another_backend(tmp_path, ray_session, monkeypatch):
    """Whole runs with runner.inference: workers: the actor copies on Ray workers give the sync run's returns;
    a run whose worker dies in iteration 1 with no restarts left stops with one line and resumes on async to
    the same end."""
    workers = ("runner.inference=workers", "runner.num_workers=2")
    reference = run(tmp_path, "sync-w", *workers)
    default = run(tmp_path, "sync", "runner.num_workers=2")
    assert reference["final_return"] != default["final_return"]  # other noise streams than the default's
    on_ray = run(tmp_path, "ray-w", *workers, "runner.backend=ray")
    assert {k: on_ray[k] for k in SAME} == {k: reference[k] for k in SAME}

    original, calls = ShardedVecEnv.run_decisions, {"n": 0}

    def dies_in_iteration_1(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            self.kill_worker(self.num_workers - 1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ShardedVecEnv, "run_decisions", dies_in_iteration_1)
    with pytest.raises(WorkerLostError, match="--resume"):
        run(tmp_path, "stopped-w", *workers, "runner.backend=ray", "runner.max_worker_restarts=0")
    monkeypatch.setattr(ShardedVecEnv, "run_decisions", original)
    resumed = run(tmp_path, "stopped-w", "runner.backend=async", resume=True)
    assert {k: resumed[k] for k in SAME} == {k: reference[k] for k in SAME}


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
