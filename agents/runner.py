"""The one training runner every online learner uses: iterations of collect → update, periodic
deterministic evaluation, TensorBoard, a progress bar, checkpoints, exact resume and a non-finite guard.

A learner implements the small :class:`Learner` interface; the runner owns everything around it. A run
directory holds::

    events.out.tfevents*       TensorBoard scalars (CleanRL-style names: charts/episodic_return,
                               losses/policy_loss, losses/approx_kl, charts/clipfrac, perf/env_steps_per_s …)
    checkpoints/last/          policy checkpoint + training_state.* (what --resume continues from)
    checkpoints/best/          policy with the best evaluation return so far
    policy/                    the final policy (load_agent / flowpolicy evaluate)
    config.json                the resolved configuration (written before any work starts)
    summary.json               initial/final/best return and normalized score (and success rate when the env
                               reports success), env_steps, wall_s, env_steps_per_s

Success (manipulation tasks): when the env reports success in ``info`` (see :mod:`envs.wrappers`), training
episodes log ``charts/success_rate`` (fraction of the iteration's finished episodes that succeeded at any
step), evaluations ``eval/success_rate``, the progress bar shows it and summary.json carries
``initial_success_rate`` / ``final_success_rate`` / ``best_success_rate`` (the success rate of the best-return
evaluation). An env without a success signal gets none of these keys.

A run is resumable from its first second: ``checkpoints/last`` is written at iteration 0, before the initial
evaluation, and a run directory with only ``config.json`` starts from scratch on ``--resume``. Resuming a
finished run changes nothing and returns its summary. Ctrl-C stops between two statements of the loop
with the last checkpoint intact (:class:`RunInterrupted`).

Exact resume: every iteration resets its envs with seeds derived from (seed, iteration) and all
randomness flows through generators saved in the training state, so a run resumed from ``last`` repeats
the numbers an uninterrupted run would have produced (CPU). Resetting at iteration boundaries ends
episodes early; those ends are truncations, which GAE bootstraps.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from tqdm import tqdm

from agents.backends import WorkerLostError
from agents.state import load_training_state, save_training_state
from envs.evaluation import evaluate_agent
from envs.registry import get_task
from flowpolicy.agent import Agent
from flowpolicy.checkpoint import atomic_write_json, save_policy
from flowpolicy.config import param
from flowpolicy.policy import Policy


@contextmanager
def single_threaded():
    """Rollouts run inference on a handful of rows per call, where extra torch threads only add
    synchronization: the runner collects with one thread (updates use the configured number)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_scalars(run_dir: str | Path, tag: str) -> np.ndarray:
    """[n, 2] (step, value) of one TensorBoard tag of a run, sorted by step. A resumed run has several event
    files and may log a step twice (an evaluation after its last checkpoint is repeated): the later file wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = {}
    for path in sorted(Path(run_dir).glob("events*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            points.update((e.step, e.value) for e in acc.Scalars(tag))
    return np.array(sorted(points.items()), dtype=float).reshape(-1, 2)


def last_checkpoint(run_dir: str | Path) -> Path:
    """The directory ``--resume`` continues from: ``checkpoints/last``, or ``checkpoints/.last.old`` when a
    save was interrupted between its two renames."""
    checkpoints = Path(run_dir) / "checkpoints"
    if not (checkpoints / "last").exists() and (checkpoints / ".last.old").exists():
        return checkpoints / ".last.old"
    return checkpoints / "last"


def has_training_state(checkpoint: Path) -> bool:
    return (checkpoint / "training_state.json").is_file()


class NonFiniteError(FloatingPointError):
    """A loss or parameter became NaN/inf; the message names the iteration and the kept checkpoint."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a run; the message names the last checkpoint and how to resume."""


@dataclass
class RunnerConfig:
    total_env_steps: int = param(1_000_000, "env-step budget of the run", ge=1)
    eval_every: int = param(5, "iterations between deterministic evaluations (0: only at the start and end)",
                            ge=0)
    eval_episodes: int = param(10, "episodes per evaluation", ge=1)
    checkpoint_every: int = param(1, "iterations between checkpoints/last saves", ge=1)
    progress: bool = param(True, "show a progress bar")
    backend: Literal["sync", "async", "ray"] = param(
        "sync", "where rollout envs step: sync (in the learner), async (subprocess shards), ray (Ray actor shards); "
                "same numbers on all three")
    num_workers: int = param(2, "async/ray: rollout workers, each stepping a contiguous shard of the envs", ge=1)
    ray_address: str = param("", "ray: address of an existing cluster to join (empty: RAY_ADDRESS, else a local one)")
    worker_cpus: float = param(0.5, "ray: CPUs each rollout actor reserves (fractional, so actors never starve "
                                    "each other or other work on the cluster)", ge=0)
    inference: Literal["learner", "workers"] = param(
        "learner", "who samples rollout actions: learner (this process, one generator for the batch) or workers "
                   "(every env its own noise generator; async/ray workers hold a policy copy and run whole "
                   "iterations — same numbers on every backend)")
    max_worker_restarts: int = param(3, "async/ray: dead rollout workers restarted (shard replayed) per run before "
                                        "the run stops", ge=0)


class Learner(Protocol):
    env_steps_per_iteration: int  # 0 for an offline learner
    total_iterations: int

    def collect(self, iteration: int) -> dict: ...  # rollout metrics; "episode_returns": list[float]

    def update(self, iteration: int) -> dict: ...  # scalars named like "losses/policy_loss"

    def eval_policy(self) -> Policy: ...  # the deterministic policy that is evaluated and saved

    def training_state(self) -> tuple[dict, dict, dict, dict]: ...  # modules, optimizers, generators, extra

    def training_arrays(self) -> dict: ...  # variable-size tensors to save (e.g. a replay buffer); may be {}

    def load_extra(self, extra: dict, arrays: dict) -> None: ...


def _all_finite(metrics: dict, modules: dict) -> str | None:
    for key, value in metrics.items():
        if isinstance(value, float | int) and not math.isfinite(value):
            return key
    for name, module in modules.items():
        for pname, p in module.named_parameters():
            if not torch.isfinite(p).all():
                return f"{name}.{pname}"
    return None


class Runner:
    def __init__(self, learner: Learner, config: RunnerConfig, env_id: str, run_dir: str | Path, seed: int = 0,
                 metadata: dict | None = None, env_kwargs: dict | None = None, env_options=None,
                 task=None):
        self.learner, self.cfg, self.env_id, self.seed = learner, config, env_id, seed
        self.run_dir = Path(run_dir)
        self.metadata = metadata or {}
        self.env_kwargs, self.env_options = dict(env_kwargs or {}), env_options
        self.task = task or get_task(env_id, env_options, **self.env_kwargs)
        self.iterations = learner.total_iterations
        # a learner whose iterations take a variable number of env steps (whole episodes) runs until the
        # env-step budget is spent; total_iterations is then only an upper bound
        self.until_env_steps = getattr(learner, "runs_until_env_steps", False)
        # an offline learner takes no env steps: progress and TensorBoard then count iterations
        self.offline = learner.env_steps_per_iteration == 0

    # -- evaluation and checkpoints ---------------------------------------------------------------
    def evaluate(self) -> dict:
        agent = Agent(self.learner.eval_policy(), seed=self.seed)
        result = evaluate_agent(agent, self.env_id, self.cfg.eval_episodes, seed=self.seed,  # = `evaluate --seed`
                                options=self.env_options, task=self.task, **self.env_kwargs)
        self.learner.eval_policy().train()
        return result.to_dict()

    def _save(self, name: str, iteration: int, state: dict, with_training_state: bool) -> None:
        target = self.run_dir / "checkpoints" / name
        tmp = self.run_dir / "checkpoints" / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_policy(self.learner.eval_policy(), tmp, metadata={**self.metadata, "env_id": self.env_id,
                                                               "iteration": iteration, "env_steps": state["env_steps"]})
        if with_training_state:
            modules, optimizers, generators, extra = self.learner.training_state()
            save_training_state(tmp, modules, optimizers, generators, {"runner": state, "learner": extra},
                                arrays=self.learner.training_arrays())
        # swap in the new directory; the old one stays complete until the rename
        old = self.run_dir / "checkpoints" / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)

    # -- the loop ---------------------------------------------------------------------------------
    def finished(self, state: dict) -> bool:
        return state["iteration"] >= self.iterations or \
            (self.until_env_steps and state["env_steps"] >= self.cfg.total_env_steps)

    def run(self, resume: bool = False) -> dict:
        """Run (or with ``resume``, continue from ``checkpoints/last``) until the budget is spent."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"iteration": 0, "env_steps": 0, "wall_s": 0.0, "initial_eval": None, "best_eval": None,
                 "last_eval": None}
        if resume:
            modules, optimizers, generators, _ = self.learner.training_state()
            extra, arrays = load_training_state(last_checkpoint(self.run_dir), modules, optimizers, generators)
            state.update(extra["runner"])
            self.learner.load_extra(extra["learner"], arrays)
            if self.finished(state) and state["last_eval"] is not None:
                return self._finish(state, rewrite=False)
        else:  # iteration 0 on disk before any work: a kill from here on resumes
            self._save("last", 0, {**state}, with_training_state=True)
        self._saved_iteration = state["iteration"]
        try:
            return self._loop(state)
        except WorkerLostError as err:  # a rollout worker kept dying: stop with one line naming where to resume
            raise WorkerLostError(f"{err}; the last checkpoint is {last_checkpoint(self.run_dir)} (iteration "
                                  f"{self._saved_iteration}); continue with: flowpolicy finetune --resume "
                                  f"{self.run_dir}") from None
        except KeyboardInterrupt:
            raise RunInterrupted(f"interrupted; the last checkpoint is {last_checkpoint(self.run_dir)} (iteration "
                                 f"{self._saved_iteration}); continue with: flowpolicy finetune --resume "
                                 f"{self.run_dir}") from None

    def _loop(self, state: dict) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir))
        start_wall = time.time() - state["wall_s"]
        if state["initial_eval"] is None:
            state["initial_eval"] = state["last_eval"] = self.evaluate()
            self._log_eval(writer, state["initial_eval"], 0)

        if self.offline:
            total, initial, unit = self.iterations, state["iteration"], "it"
        else:
            total = self.cfg.total_env_steps if self.until_env_steps else \
                self.iterations * self.learner.env_steps_per_iteration
            initial, unit = state["env_steps"], "step"
        bar = tqdm(total=total, initial=initial, unit=unit,
                   desc=f"{self.metadata.get('algorithm', 'finetune')} {self.env_id}",
                   disable=not self.cfg.progress or None, dynamic_ncols=True)
        last_return = last_success = None
        try:
            for iteration in range(state["iteration"], self.iterations):
                if self.finished(state):
                    break
                t0 = time.time()
                with single_threaded():
                    rollout = self.learner.collect(iteration)
                t1 = time.time()
                metrics = self.learner.update(iteration)
                t2 = time.time()
                modules = self.learner.training_state()[0]
                bad = _all_finite(metrics, modules)
                if bad is not None:
                    raise NonFiniteError(f"non-finite {bad} at iteration {iteration}; the last good checkpoint is "
                                         f"{last_checkpoint(self.run_dir)} (iteration {self._saved_iteration})")
                state["env_steps"] += rollout["env_steps"]
                state["iteration"] = iteration + 1
                step = state["iteration"] if self.offline else state["env_steps"]
                returns = rollout.get("episode_returns", [])
                if returns:
                    last_return = float(np.mean(returns))
                    writer.add_scalar("charts/episodic_return", last_return, step)
                    writer.add_scalar("charts/episodic_length", float(np.mean(rollout["episode_lengths"])), step)
                if rollout.get("episode_successes"):
                    last_success = float(np.mean(rollout["episode_successes"]))
                    writer.add_scalar("charts/success_rate", last_success, step)
                for key, value in metrics.items():
                    writer.add_scalar(key, value, step)
                writer.add_scalar("perf/env_steps_per_s", rollout["env_steps"] / max(t2 - t0, 1e-9), step)
                writer.add_scalar("perf/rollout_s", t1 - t0, step)
                if "env_s" in rollout:  # rollout time = env stepping + policy inference (+ bookkeeping)
                    writer.add_scalar("perf/env_s", rollout["env_s"], step)
                writer.add_scalar("perf/update_s", t2 - t1, step)
                last_iteration = self.finished(state)
                if last_iteration or (self.cfg.eval_every and (iteration + 1) % self.cfg.eval_every == 0):
                    state["last_eval"] = self.evaluate()
                    self._log_eval(writer, state["last_eval"], step)
                    writer.add_scalar("eval/wall_s", time.time() - start_wall, step)
                    best = state["best_eval"]
                    if best is None or state["last_eval"]["return_mean"] > best["return_mean"]:
                        state["best_eval"] = {**state["last_eval"], "env_steps": step}
                        self._save("best", iteration + 1, {**state}, with_training_state=False)
                state["wall_s"] = time.time() - start_wall
                if last_iteration or (iteration + 1) % self.cfg.checkpoint_every == 0:
                    self._save("last", iteration + 1, {**state}, with_training_state=True)
                    self._saved_iteration = iteration + 1
                bar.update(1 if self.offline else rollout["env_steps"])
                postfix = dict(sps=f"{rollout['env_steps'] / max(t2 - t0, 1e-9):.0f}",
                               ret=f"{last_return:.0f}" if last_return is not None else "-",
                               eval=f"{state['last_eval']['return_mean']:.0f}")
                if last_success is not None:
                    postfix["succ"] = f"{last_success:.2f}"
                if "success_rate" in state["last_eval"]:
                    postfix["eval_succ"] = f"{state['last_eval']['success_rate']:.2f}"
                bar.set_postfix(**postfix)
        finally:
            bar.close()
            writer.close()
        return self._finish(state, rewrite=True)

    def _finish(self, state: dict, rewrite: bool) -> dict:
        """The final policy and summary.json; a resumed finished run only rewrites what a kill left missing."""
        policy_dir, summary_path = self.run_dir / "policy", self.run_dir / "summary.json"
        if rewrite or not (policy_dir / "policy.json").is_file():
            save_policy(self.learner.eval_policy(), policy_dir,
                        metadata={**self.metadata, "env_id": self.env_id, "env_steps": state["env_steps"],
                                  "eval": state["last_eval"]})
        summary = self._summary(state)
        if rewrite or not summary_path.is_file():
            atomic_write_json(summary_path, summary)
        else:
            summary["resumed_finished_run"] = True
        return summary

    def _log_eval(self, writer, result: dict, step: int) -> None:
        writer.add_scalar("eval/return", result["return_mean"], step)
        if "normalized_score" in result:
            writer.add_scalar("eval/normalized_score", result["normalized_score"], step)
        if "success_rate" in result:
            writer.add_scalar("eval/success_rate", result["success_rate"], step)

    def _summary(self, state: dict) -> dict:
        wall = state["wall_s"]
        final, initial, best = state["last_eval"], state["initial_eval"], state["best_eval"] or state["last_eval"]
        success = {} if "success_rate" not in final else {
            "initial_success_rate": initial.get("success_rate"), "final_success_rate": final["success_rate"],
            "best_success_rate": best.get("success_rate")}
        return {
            "env_id": self.env_id, "algorithm": self.metadata.get("algorithm"), "seed": self.seed, **success,
            "initial_return": initial["return_mean"], "final_return": final["return_mean"],
            "final_return_std": final["return_std"], "best_return": best["return_mean"],
            "initial_normalized_score": initial.get("normalized_score"),
            "final_normalized_score": final.get("normalized_score"),
            "best_normalized_score": best.get("normalized_score"),
            "env_steps": state["env_steps"], "iterations": state["iteration"], "wall_s": round(wall, 1),
            "env_steps_per_s": round(state["env_steps"] / max(wall, 1e-9), 1),
            "eval_episodes": self.cfg.eval_episodes, "runner": asdict(self.cfg),
        }
