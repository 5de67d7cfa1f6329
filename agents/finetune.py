"""``flowpolicy finetune``: load a pretrained policy, build the configured learner, run it on the runner.

A config names the algorithm and holds its settings under ``algo`` (validated by that algorithm's
dataclass, so an unknown key is an error that names it) and the runner's under ``runner``. With
``--resume RUN_DIR`` the run continues from ``RUN_DIR/checkpoints/last`` with the configuration saved in
``RUN_DIR/config.json``.

Nothing is overwritten: a new run refuses an ``out`` directory that already holds files unless
``overwrite`` is given, and everything that can fail at start-up (config, policy, env, learner) is checked
before the first byte is written. A resumed run keeps the settings it started with; only the keys in
:data:`RESUMABLE_KEYS` (budget, evaluation, progress, threads) may change.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from agents.autoscale import RESOLVED_KEYS, resolve_auto_settings
from agents.backends import attach_backend, check_backend
from agents.cfgrl import CFGRLConfig, CFGRLLearner
from agents.chain_pg import ChainPGLearner, CPSConfig, DDPOISConfig, DDPOSFConfig, GRPOConfig
from agents.fpo import FPOConfig, FPOLearner
from agents.qsm import QSMConfig, QSMLearner
from agents.reinflow import ReinFlowConfig, ReinFlowLearner
from agents.runner import Runner, RunnerConfig, has_training_state, last_checkpoint
from envs.registry import get_task, with_reference_scores
from envs.wrappers import EnvOptions
from flowpolicy.checkpoint import atomic_write_json, load_policy
from flowpolicy.config import ConfigError, check_device, from_dict, param

ALGORITHMS = {"reinflow": (ReinFlowConfig, ReinFlowLearner), "qsm": (QSMConfig, QSMLearner),
              "cfgrl": (CFGRLConfig, CFGRLLearner), "grpo": (GRPOConfig, ChainPGLearner),
              "cps": (CPSConfig, ChainPGLearner), "ddpo_is": (DDPOISConfig, ChainPGLearner),
              "ddpo_sf": (DDPOSFConfig, ChainPGLearner), "fpo": (FPOConfig, FPOLearner)}


@dataclass
class FinetuneConfig:
    algorithm: str = param("reinflow", f"online learner: {' | '.join(ALGORITHMS)} (its settings go under algo.*)")
    env_id: str = param("Hopper-v5", "gymnasium env id (or module:EnvId)")
    env_kwargs: dict = param({}, "keyword arguments for gym.make(env_id, ...) (e.g. env_name for Meta-World)")
    env_options: EnvOptions = field(default_factory=EnvOptions)
    policy: str = param("", "pretrained policy checkpoint directory")
    out: str = param("runs/finetune", "run directory (must not hold another run unless --overwrite)")
    seed: int = param(0, "seed of the learner, its envs and its evaluations", ge=0)
    device: str = param("cpu", "torch device (cpu, cuda, cuda:1 …)")
    torch_threads: int = param(0, "torch threads for updates (0: torch's default)", ge=0)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    algo: dict = param({}, "the algorithm's settings (`flowpolicy config ALGORITHM` lists them)")

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm: unknown {self.algorithm!r}; available: {', '.join(sorted(ALGORITHMS))}")


# what a resumed run may change: how long it runs, how it is evaluated and shown, not what it learns
RESUMABLE_KEYS = ("runner.total_env_steps", "runner.eval_every", "runner.eval_episodes", "runner.checkpoint_every",
                  "runner.progress", "torch_threads", "device",
                  # rollouts give the same numbers on every backend, so a run may resume on another one
                  "runner.backend", "runner.num_workers", "runner.ray_address", "runner.worker_cpus",
                  "runner.max_worker_restarts")


def check_resume_settings(saved: dict, resumed: dict, run_dir) -> None:
    """A resumed run trains with the settings it started with: a changed key outside :data:`RESUMABLE_KEYS`
    (a different ``algo.num_envs`` would not even fit the saved state) is an error that names it."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    def filled(d: dict) -> dict:  # the algorithm's defaults where the dict leaves a key out
        algo_cls = ALGORITHMS.get(d.get("algorithm"), (None,))[0]
        if algo_cls is None:
            return d
        with warnings.catch_warnings():  # a renamed key warns where the config is read, not here again
            warnings.simplefilter("ignore")
            return {**d, "algo": asdict(from_dict(algo_cls, dict(d.get("algo") or {}), prefix="algo"))}

    before, after = flat(filled(saved)), flat(filled(resumed))
    for key in sorted(set(before) | set(after)):
        if key in RESUMABLE_KEYS or key == "out" or before.get(key) == after.get(key):
            continue
        if key.startswith("algo.") and key[5:] in RESOLVED_KEYS and after.get(key) is None:
            continue  # null: measured when the run started; config.json holds the number it measured
        if key == "algo.bc_coeff" and not after.get("algo.dataset") and not before.get("algo.dataset"):
            continue  # no dataset to be found: the start turned the BC term off, and so will this one
        raise ConfigError(f"{key}: the run in {run_dir} was started with {before.get(key, '(default)')!r}, not "
                          f"{after.get(key, '(default)')!r}; a resumed run keeps its settings (it may change "
                          f"{', '.join(RESUMABLE_KEYS)})")


def _run_files(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """A directory's entries split into what a run writes (see agents.runner) and anything else."""
    ours, others = [], []
    for entry in sorted(run_dir.iterdir()):
        is_ours = entry.name in ("config.json", "summary.json", "checkpoints", "policy") or \
            entry.name.startswith("events.out.tfevents")
        (ours if is_ours else others).append(entry)
    return ours, others


def check_new_run_dir(run_dir: Path, overwrite: bool) -> None:
    """A new run never lands on top of files it did not write; ``overwrite`` replaces only a run's own files."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"out: {run_dir} is a file, not a directory")
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return
    ours, others = _run_files(run_dir)
    if others:  # --overwrite never deletes what flowpolicy did not write (out=. or a home directory)
        raise ConfigError(f"out: {run_dir} holds files that are not a flowpolicy run ({others[0].name}"
                          f"{', …' if len(others) > 1 else ''}); choose another out=")
    if not overwrite:
        hint = " (continue it with --resume)" if (run_dir / "config.json").is_file() else ""
        raise ConfigError(f"out: {run_dir} already holds a run{hint}; choose another out=, or pass --overwrite "
                          "to replace it")


def finetune(cfg: FinetuneConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or resume) the configured fine-tuning; returns the summary (also in ``out/summary.json``)."""
    algo_cls, learner_cls = ALGORITHMS[cfg.algorithm]
    algo_cfg = from_dict(algo_cls, cfg.algo, prefix="algo")
    check_device(cfg.device)
    check_backend(cfg.runner)
    run_dir = Path(cfg.out)
    if not resume:
        check_new_run_dir(run_dir, overwrite)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    # a run killed before its first checkpoint starts again from the pretrained policy
    continuing = resume and has_training_state(last_checkpoint(run_dir))
    source = last_checkpoint(run_dir) if continuing else Path(cfg.policy)
    policy, metadata = load_policy(source, device=cfg.device)
    task = with_reference_scores(get_task(cfg.env_id, cfg.env_options, **cfg.env_kwargs), metadata)
    if (policy.config.obs_dim, policy.config.action_dim) != (task.obs_dim, task.action_dim):
        raise ConfigError(f"policy {source} has obs/action dims {policy.config.obs_dim}/{policy.config.action_dim} "
                          f"but {cfg.env_id} has {task.obs_dim}/{task.action_dim}")
    pc = policy.config
    per_iteration = getattr(algo_cfg, "num_envs", 1) * getattr(algo_cfg, "decisions_per_env", 1) * pc.act_steps
    iterations = max(1, math.ceil(cfg.runner.total_env_steps / per_iteration))
    if getattr(algo_cfg, "mode", "online") == "offline":  # no env steps: the budget is gradient steps
        iterations = algo_cfg.offline_iterations
    # settings the config leaves null are measured on the task (agents/autoscale.py) — only once: config.json
    # keeps the numbers, so a resumed run reads them back instead of probing again
    algo_cfg, autoscale = resolve_auto_settings(cfg.algorithm, algo_cfg, policy, cfg.env_id, task, seed=cfg.seed,
                                                env_kwargs=cfg.env_kwargs, env_options=cfg.env_options,
                                                metadata=metadata.get("pretrained_metadata") if continuing
                                                else metadata)
    # config.json keeps every setting the run trains with (defaults and measured numbers included), so a later
    # change of a default cannot change what --resume trains
    cfg = replace(cfg, algo=asdict(algo_cfg))
    # a resumed run regularizes toward the pretrained policy, not toward where it was interrupted
    reference = load_policy(cfg.policy, device=cfg.device)[0] if continuing and cfg.policy else None
    learner = learner_cls(policy, cfg.env_id, algo_cfg, iterations, seed=cfg.seed, device=cfg.device,
                          reference=reference, env_kwargs=cfg.env_kwargs, env_options=cfg.env_options)
    if not resume:  # everything checked: only now touch the disk
        if overwrite and run_dir.is_dir():  # only a run's own files (check_new_run_dir refused anything else)
            for entry in _run_files(run_dir)[0]:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", asdict(cfg))
    env_meta = {}  # what `flowpolicy evaluate` needs to make the same env from the saved policy
    if cfg.env_kwargs:
        env_meta["env_kwargs"] = cfg.env_kwargs
    if cfg.env_options != EnvOptions():
        env_meta["env_options"] = asdict(cfg.env_options)
    runner = Runner(learner, cfg.runner, cfg.env_id, run_dir, seed=cfg.seed,
                    metadata={"algorithm": cfg.algorithm, "pretrained": cfg.policy, **env_meta,
                              **({"autoscale": autoscale} if autoscale else {}),
                              "pretrained_metadata": metadata.get("pretrained_metadata") if continuing else metadata},
                    env_kwargs=cfg.env_kwargs, env_options=cfg.env_options, task=task)
    try:
        attach_backend(learner, cfg.runner)  # runner.backend: where the envs step; the learner does not see it
        return runner.run(resume=continuing)
    finally:
        if getattr(learner, "envs", None) is not None:
            learner.envs.close()


def read_run_config(run_dir: str | Path) -> dict:
    """The saved configuration of a run directory, as a dict (one-line errors for a missing or bad file)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{run_dir}: no such run directory (a run stopped before it wrote anything starts again "
                          "with --config FILE --resume)")
    if not path.is_file():
        raise ConfigError(f"{path}: not found — is {run_dir} a finetune run directory?")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return data


def load_run_config(run_dir: str | Path) -> FinetuneConfig:
    return from_dict(FinetuneConfig, read_run_config(run_dir))
