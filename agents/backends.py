"""Rollout backends: where the envs of a learner's rollout step, behind the interface of
:class:`envs.vector.VecEnv` (``reset(seed)``, ``step(actions) -> VecStep``, ``close()``), so that no learner
knows which one it runs on.

- ``sync`` (the default and the reference): the learner's own :class:`~envs.vector.VecEnv`, every env
  stepping in the learner's process.
- ``async``: the N envs split into ``num_workers`` contiguous shards, each a ``VecEnv`` in its own subprocess;
  a decision sends every shard its actions first and then collects the results, so the shards step in
  parallel on different cores.
- ``ray``: the same shards, each owned by a Ray actor (``runner.ray_address`` / ``RAY_ADDRESS`` joins an
  existing cluster; otherwise a local one is started); actions go out and :class:`~envs.vector.VecStep`
  arrays come back through Ray's object store.

Same numbers on every backend: env ``i`` of the learner is env ``i - start`` of its shard and is reset with
exactly the seed the sync ``VecEnv`` gives it (``seed + i``, or the i-th of a seed list — chain PG's group
seeds), sub-envs never interact, and the results are concatenated in env order; the policy's inference (and so
every random draw of the samplers) stays in the learner, on the whole batch, in the order sync draws it. A
rollout on ``async`` or ``ray`` is therefore bit-identical to ``sync`` for any worker count (tests pin it).

Faults: each shard remembers the seeds of its last reset and the actions it was sent since. When a worker dies
(a killed actor or process, a lost node), a new one is started, replays the reset and the actions — MuJoCo is
deterministic, so it arrives in exactly the state the dead one was in — and the decision is retried; the
rollout goes on with identical numbers. After ``max_worker_restarts`` restarts in one run a
:class:`WorkerLostError` stops the run with one line (the runner names the last checkpoint; ``--resume``,
on any backend, continues exactly from it).

``runner.inference: workers`` (the default is ``learner``, as above): every env draws its noise from its own
generator (:mod:`flowpolicy.draws`), and the workers hold a copy of the learner's rollout actor (policy,
sampler, settings — shipped once per iteration, one ``ray.put`` fetched by every worker) and run a whole
iteration of their shard, so a worker costs one round trip per iteration instead of one per decision and
inference runs in parallel with the other shards. The sync backend samples in the same shards
(``runner.num_workers``) in the learner's process, so ``sync``, ``async`` and ``ray`` again give the same numbers
for a given worker count (a matmul's rows can round differently at another batch size, so the shards, not only
the generators, must match); they differ from ``learner``'s numbers by the noise each env draws. A worker that
dies mid-iteration is restarted and its shard's iteration re-run with the same actor and seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from agents.rollout import Actor, Rollout, concat_records, env_seeds
from envs.vector import VecEnv, VecStep
from flowpolicy.draws import RowGenerators

BACKENDS = ("sync", "async", "ray")


class WorkerLostError(ConnectionError):
    """A rollout worker died more often than ``runner.max_worker_restarts`` allows; the run stops (one line)."""


def shard_bounds(num_envs: int, num_workers: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` env ranges of the workers: sizes differ by at most one, none is empty."""
    workers = max(1, min(num_workers, num_envs))
    base, extra = divmod(num_envs, workers)
    bounds, start = [], 0
    for k in range(workers):
        stop = start + base + (k < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def concat_steps(steps: list[VecStep]) -> VecStep:
    """Shards' results in env order, field by field (arrays concatenated, episode lists joined), so that a
    field another module adds to :class:`VecStep` travels too."""
    values = {}
    for f in dataclasses.fields(VecStep):
        parts = [getattr(s, f.name) for s in steps]
        if isinstance(parts[0], np.ndarray):
            values[f.name] = np.concatenate(parts)
        elif isinstance(parts[0], list):
            values[f.name] = [x for p in parts for x in p]
        else:
            values[f.name] = None if all(p is None for p in parts) else parts
    return VecStep(**values)


def actor_on_cpu(actor: Actor) -> Actor:
    """The actor to ship to CPU workers: itself on a CPU learner, else a copy with every module moved to the CPU
    (the policy, and a sampler's noise net)."""
    if actor.policy.device.type == "cpu":
        return actor
    shipped = copy.deepcopy(actor)
    for holder in (shipped, getattr(shipped, "sampler", None)):
        for name, value in vars(holder).items() if holder is not None else ():
            if isinstance(value, torch.nn.Module):
                setattr(holder, name, value.to("cpu"))
    return shipped


def to_device(record, device: torch.device):
    if isinstance(record, dict):
        return {key: value.to(device) for key, value in record.items()}
    return record.to(device)


def placeholder_step(last: tuple) -> tuple:
    """What a shard whose envs have all finished their episode contributes to a later decision (the caller of
    ``until_all_done`` ignores these rows): its last decision's tensors, no reward, every env done."""
    cond, record, out, next_cond = last
    zeros = np.zeros_like(out.reward)
    step = VecStep(obs=out.obs, reward=zeros, terminated=np.ones_like(out.terminated), truncated=np.zeros_like(
        out.truncated), final_obs=out.final_obs, env_steps=np.zeros_like(out.env_steps),
        success=None if out.success is None else np.zeros_like(out.success))
    return cond, record, step, next_cond


class ShardWorker:
    """What a worker holds: one ``VecEnv`` over its shard. Runs in a subprocess (``async``) or a Ray actor."""

    def __init__(self, env_id: str, num_envs: int, act_steps: int, n_obs_steps: int, env_kwargs: dict):
        self.envs = VecEnv(env_id, num_envs, act_steps=act_steps, n_obs_steps=n_obs_steps, **env_kwargs)

    def reset(self, seeds: list[int] | None) -> np.ndarray:
        return self.envs.reset(seed=seeds)

    def step(self, actions: np.ndarray) -> VecStep:
        return self.envs.step(actions)

    @torch.no_grad()
    def run_decisions(self, actor: Actor, seeds: list[int], first_env: int, max_decisions: int,
                      until_all_done: bool) -> tuple[list[tuple], float]:
        """A whole iteration of this shard with the learner's ``actor`` (``runner.inference: workers``): every env
        draws from its own generator (the ones the learner would give envs ``first_env…``), one thread.
        Returns ``(cond, record, out, next_cond)`` per decision and the seconds it took."""
        torch.set_num_threads(1)
        tick = time.perf_counter()
        rollout = Rollout(actor.policy, self.envs)
        generators = RowGenerators.for_envs(seeds, first_env)
        steps, finished = [], np.zeros(len(seeds), dtype=bool)
        for step in rollout.steps(seeds, actor, max_decisions, generators):  # the shard is one batch
            steps.append(step)
            finished |= step[2].done
            if until_all_done and finished.all():
                break
        return steps, time.perf_counter() - tick

    def info(self) -> dict:
        """Where the worker runs and what it costs: node, pid, resident memory (MB)."""
        rss = 0.0
        try:
            with open(f"/proc/{os.getpid()}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
        except (OSError, StopIteration):
            pass
        node = ""
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except ImportError:
            pass
        return {"pid": os.getpid(), "rss_mb": rss, "node_id": node}

    def close(self) -> None:
        self.envs.close()


# -- transports: how the learner talks to a worker ----------------------------------------------------

def _process_main(conn, args) -> None:  # the loop of an ``async`` worker process
    worker = ShardWorker(*args)
    try:
        while True:
            method, payload = conn.recv()
            if method == "close":
                worker.close()
                conn.send(None)
                return
            conn.send(getattr(worker, method)(*payload))
    except (EOFError, KeyboardInterrupt):
        worker.close()


def _start_method() -> str:
    """fork where it is safe (fast: the child already has gymnasium and MuJoCo imported); forkserver when this
    process runs a Ray driver, whose gRPC threads must not be forked."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() or "fork" not in mp.get_all_start_methods():
        return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return "fork"


class _ProcessHandle:
    lost = (EOFError, BrokenPipeError, ConnectionResetError)

    def __init__(self, args):
        ctx = mp.get_context(_start_method())
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_process_main, args=(child, args), daemon=True)
        self.process.start()
        child.close()

    def send(self, method: str, *payload):
        self.conn.send((method, payload))
        return None

    def receive(self, _ticket):
        return self.conn.recv()

    def kill(self):
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def close(self):
        try:
            self.conn.send(("close", ()))
            self.conn.recv()
        except self.lost:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()


class _RayHandle:
    def __init__(self, args, actor_cls, options):
        import ray

        self.ray = ray
        self.lost = (ray.exceptions.RayActorError,)
        self.actor = actor_cls.options(**options).remote(*args)

    def send(self, method: str, *payload):
        return getattr(self.actor, method).remote(*payload)

    def receive(self, ticket):
        return self.ray.get(ticket)

    def kill(self):
        self.ray.kill(self.actor, no_restart=True)

    def close(self):
        try:
            self.ray.get(self.actor.close.remote(), timeout=30)
        except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
            pass
        self.ray.kill(self.actor, no_restart=True)


_RAY_ACTOR = None


def ray_actor_class():
    """``ShardWorker`` as a Ray actor class (made once, when the ray backend is first used)."""
    global _RAY_ACTOR
    if _RAY_ACTOR is None:
        import ray

        _RAY_ACTOR = ray.remote(ShardWorker)
    return _RAY_ACTOR


def check_backend(runner_cfg) -> None:
    """Before a run writes anything: the configured backend can run here (ray is installed for ``ray``)."""
    if runner_cfg.backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            from flowpolicy.config import ConfigError

            raise ConfigError("runner.backend: ray needs the ray package (pip install 'flowpolicy[ray]')") from None


def init_ray(address: str = "", num_cpus: int | None = None) -> bool:
    """Connect to Ray: the running session if there is one, else the cluster at ``address`` (or
    ``RAY_ADDRESS``), else a new local one sized to this machine. Returns whether this call started it (then
    the backend shuts it down on close)."""
    try:
        import ray
    except ImportError:
        from flowpolicy.config import ConfigError

        raise ConfigError("runner.backend: ray needs the ray package (pip install 'flowpolicy[ray]')") from None
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS", "")
    # workers import envs/ and any `module:EnvId` module the way the learner does
    path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
    runtime_env = {"env_vars": {"PYTHONPATH": path}}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, runtime_env=runtime_env,
                 log_to_driver=False)
    return True


class ShardedVecEnv:
    """N envs stepped by ``num_workers`` workers, each owning a contiguous shard: the ``VecEnv`` interface
    with the same numbers as one ``VecEnv`` of N envs (see the module docstring)."""

    inference = "learner"  # runner.inference: "workers" runs whole iterations on the workers (run_decisions)

    def __init__(self, env_id: str, num_envs: int, act_steps: int = 1, n_obs_steps: int = 1,
                 num_workers: int = 2, transport: str = "process", env_kwargs: dict | None = None,
                 ray_address: str = "", worker_cpus: float = 0.5, max_restarts: int = 3):
        if transport not in ("process", "ray"):
            raise ValueError(f"transport must be 'process' or 'ray', got {transport!r}")
        self.env_id, self.num_envs, self.act_steps, self.n_obs_steps = env_id, num_envs, act_steps, n_obs_steps
        self.transport, self.max_restarts, self.restarts = transport, max_restarts, 0
        self.bounds = shard_bounds(num_envs, num_workers)
        self.env_kwargs = dict(env_kwargs or {})
        self.total_env_steps = 0
        self.last_run_s = self.broadcast_s = 0.0  # run_decisions: its wall time; shipping the actor to the workers
        self.started_ray = False
        self.startup_s = 0.0
        tick = time.perf_counter()
        if transport == "ray":
            self.started_ray = init_ray(ray_address)
            self._options = {"num_cpus": worker_cpus, "scheduling_strategy": "SPREAD"}
        self.workers = [self._start(k) for k in range(len(self.bounds))]
        # the spaces come from a local, unstepped env (cheap; nothing crosses the wire)
        probe = VecEnv(env_id, 1, act_steps=act_steps, n_obs_steps=n_obs_steps, **self.env_kwargs)
        self.single_observation_space = probe.single_observation_space
        self.single_action_space = probe.single_action_space
        probe.close()
        self._seeds: list[list[int] | None] = [None] * len(self.bounds)
        self._actions: list[list[np.ndarray]] = [[] for _ in self.bounds]
        self._call_all("info")  # wait until every worker is up
        self.startup_s = time.perf_counter() - tick

    @property
    def num_workers(self) -> int:
        return len(self.bounds)

    def _start(self, k: int):
        start, stop = self.bounds[k]
        args = (self.env_id, stop - start, self.act_steps, self.n_obs_steps, self.env_kwargs)
        if self.transport == "ray":
            return _RayHandle(args, ray_actor_class(), self._options)
        return _ProcessHandle(args)

    def _restart(self, k: int, err: BaseException) -> None:
        """Replace dead worker k by a new one in the dead one's exact state (reset + replayed actions); a
        replacement that dies while replaying counts as another restart."""
        while True:
            if self.restarts >= self.max_restarts:
                raise WorkerLostError(f"rollout worker {k} ({self.transport}, envs {self.bounds[k][0]}–"
                                      f"{self.bounds[k][1] - 1}) died ({type(err).__name__}) after {self.restarts} "
                                      f"restarts (runner.max_worker_restarts={self.max_restarts})") from None
            self.restarts += 1
            try:
                self.workers[k].kill()
            except Exception:  # noqa: BLE001 - it is already gone
                pass
            self.workers[k] = worker = self._start(k)
            try:
                worker.receive(worker.send("reset", self._seeds[k]))
                for actions in self._actions[k]:
                    worker.receive(worker.send("step", actions))
                return
            except worker.lost as again:
                err = again

    def _call_all(self, method: str, payloads: list[tuple] | None = None) -> list[Any]:
        """Send every worker its call first (they run in parallel), then collect; a dead worker is restarted
        and its call repeated."""
        payloads = payloads or [()] * self.num_workers
        tickets = []
        for k, worker in enumerate(self.workers):
            try:
                tickets.append(worker.send(method, *payloads[k]))
            except worker.lost as err:
                self._restart(k, err)
                tickets.append(self.workers[k].send(method, *payloads[k]))
        results = []
        for k in range(self.num_workers):
            while True:
                try:
                    results.append(self.workers[k].receive(tickets[k]))
                    break
                except self.workers[k].lost as err:
                    self._restart(k, err)
                    tickets[k] = self.workers[k].send(method, *payloads[k])
        return results

    # -- the VecEnv interface -------------------------------------------------------------------------
    def reset(self, seed: int | list[int] | None = None) -> np.ndarray:
        seeds = env_seeds(seed, self.num_envs)
        shard_seeds = [None if seeds is None else seeds[a:b] for a, b in self.bounds]
        self._seeds, self._actions = shard_seeds, [[] for _ in self.bounds]
        return np.concatenate(self._call_all("reset", [(s,) for s in shard_seeds]))

    def step(self, actions: np.ndarray) -> VecStep:
        actions = np.asarray(actions)
        shards = [actions[a:b] for a, b in self.bounds]
        result = concat_steps(self._call_all("step", [(s,) for s in shards]))
        for k, shard in enumerate(shards):  # after the step: a restart replays what the dead worker had done
            self._actions[k].append(shard)
        self.total_env_steps += int(result.env_steps.sum())
        return result

    def run_decisions(self, actor: Actor, seeds: list[int], max_decisions: int, until_all_done: bool = False
                      ) -> list[tuple]:
        """A whole iteration on the workers (``runner.inference: workers``): the actor (policy copy, sampler,
        settings) is shipped once — one ``ray.put`` that every worker fetches, or pickled down each pipe — each
        worker runs its shard's decisions with the per-env generators of its envs, and the decisions come back
        merged in env order: ``(cond, record, out, next_cond)`` per decision, tensors on the policy's device.
        A worker that dies is restarted and its shard's iteration re-run (same seeds, same actor: same numbers)."""
        tick = time.perf_counter()
        device = actor.policy.device
        shipped = actor_on_cpu(actor)
        if self.transport == "ray":
            import ray

            shipped = ray.put(shipped)
        self.broadcast_s = time.perf_counter() - tick
        shard_seeds = [seeds[a:b] for a, b in self.bounds]
        self._seeds, self._actions = shard_seeds, [[] for _ in self.bounds]  # a restart resets, then re-runs
        results = self._call_all("run_decisions", [(shipped, shard_seeds[k], a, max_decisions, until_all_done)
                                                   for k, (a, _b) in enumerate(self.bounds)])
        shards = [steps for steps, _seconds in results]
        merged = []
        for t in range(max(len(steps) for steps in shards)):
            parts = [steps[t] if t < len(steps) else placeholder_step(steps[-1]) for steps in shards]
            cond, record, out, next_cond = zip(*parts, strict=True)
            merged.append((torch.cat(cond).to(device), to_device(concat_records(list(record)), device),
                           concat_steps(list(out)), torch.cat(next_cond).to(device)))
            self.total_env_steps += int(merged[-1][2].env_steps.sum())
        self.last_run_s = time.perf_counter() - tick
        return merged

    def worker_info(self) -> list[dict]:
        return self._call_all("info")

    def kill_worker(self, k: int) -> None:
        """Kill worker k (fault-injection for tests and benchmarks)."""
        self.workers[k].kill()

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []
        if self.started_ray:
            import ray

            ray.shutdown()
            self.started_ray = False

    def __enter__(self) -> ShardedVecEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_backend_envs(envs: VecEnv, backend: str, num_workers: int = 2, ray_address: str = "",
                      worker_cpus: float = 0.5, max_restarts: int = 3, env_kwargs: dict | None = None):
    """The envs of ``backend`` with the spec of ``envs`` (a learner's sync ``VecEnv``): ``envs`` itself for
    ``sync``, else a :class:`ShardedVecEnv` of the same env id, env count, chunk and history."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "sync":
        return envs
    if env_kwargs is None:  # the same env as the learner's: its kwargs and options travel to every shard
        env_kwargs = {**envs.env_kwargs, "options": asdict(envs.options)}
    return ShardedVecEnv(envs.env_id, envs.num_envs, envs.act_steps, envs.n_obs_steps, num_workers=num_workers,
                         transport="ray" if backend == "ray" else "process", env_kwargs=env_kwargs,
                         ray_address=ray_address, worker_cpus=worker_cpus, max_restarts=max_restarts)


def attach_backend(learner, runner_cfg) -> None:
    """Swap a learner's sync envs for the ``runner.backend`` ones (a no-op for ``sync`` and for a learner
    without envs, e.g. offline CFGRL). The learner keeps calling ``self.envs.reset/step`` as before."""
    envs = getattr(learner, "envs", None)
    if envs is None:
        return
    if runner_cfg.backend != "sync":
        learner.envs = make_backend_envs(envs, runner_cfg.backend, runner_cfg.num_workers, runner_cfg.ray_address,
                                         runner_cfg.worker_cpus, runner_cfg.max_worker_restarts)
        envs.close()
    learner.envs.inference = runner_cfg.inference
    if runner_cfg.inference == "workers" and runner_cfg.backend == "sync":  # the workers' shards, sampled here
        learner.envs.inference_shards = shard_bounds(learner.envs.num_envs, runner_cfg.num_workers)
