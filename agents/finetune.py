"""``flowpolicy finetune``: load a pretrained policy, build the configured learner, run it on the runner.

A config names the algorithm and holds its settings under ``algo`` (validated by that algorithm's
dataclass, so an unknown key is an error that names it) and the runner's under ``runner``. With
``--resume RUN_DIR`` the run continues from ``RUN_DIR/checkpoints/last`` with the configuration saved in
``RUN_DIR/config.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from agents.cfgrl import CFGRLConfig, CFGRLLearner
from agents.chain_pg import ChainPGLearner, CPSConfig, DDPOISConfig, DDPOSFConfig, GRPOConfig
from agents.fpo import FPOConfig, FPOLearner
from agents.qsm import QSMConfig, QSMLearner
from agents.reinflow import ReinFlowConfig, ReinFlowLearner
from agents.runner import Runner, RunnerConfig, last_checkpoint
from envs.registry import get_task
from flowpolicy.checkpoint import atomic_write_json, load_policy
from flowpolicy.config import ConfigError, from_dict

ALGORITHMS = {"reinflow": (ReinFlowConfig, ReinFlowLearner), "qsm": (QSMConfig, QSMLearner),
              "cfgrl": (CFGRLConfig, CFGRLLearner), "grpo": (GRPOConfig, ChainPGLearner),
              "cps": (CPSConfig, ChainPGLearner), "ddpo_is": (DDPOISConfig, ChainPGLearner),
              "ddpo_sf": (DDPOSFConfig, ChainPGLearner), "fpo": (FPOConfig, FPOLearner)}


@dataclass
class FinetuneConfig:
    algorithm: str = "reinflow"
    env_id: str = "Hopper-v5"
    policy: str = ""  # pretrained policy checkpoint directory
    out: str = "runs/finetune"
    seed: int = 0
    device: str = "cpu"
    torch_threads: int = 0  # 0: leave torch's default
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    algo: dict = field(default_factory=dict)


def finetune(cfg: FinetuneConfig, resume: bool = False) -> dict:
    if cfg.algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm: unknown {cfg.algorithm!r}; available: {', '.join(sorted(ALGORITHMS))}")
    algo_cls, learner_cls = ALGORITHMS[cfg.algorithm]
    algo_cfg = from_dict(algo_cls, cfg.algo, prefix="algo")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.out)
    source = last_checkpoint(run_dir) if resume else Path(cfg.policy)
    policy, metadata = load_policy(source, device=cfg.device)
    task = get_task(cfg.env_id)
    if (policy.config.obs_dim, policy.config.action_dim) != (task.obs_dim, task.action_dim):
        raise ConfigError(f"policy {source} has obs/action dims {policy.config.obs_dim}/{policy.config.action_dim} "
                          f"but {cfg.env_id} has {task.obs_dim}/{task.action_dim}")
    pc = policy.config
    per_iteration = getattr(algo_cfg, "num_envs", 1) * getattr(algo_cfg, "num_steps", 1) * pc.act_steps
    iterations = max(1, math.ceil(cfg.runner.total_env_steps / per_iteration))
    if getattr(algo_cfg, "mode", "online") == "offline":  # no env steps: the budget is gradient steps
        iterations = algo_cfg.offline_iterations
    # a resumed run regularizes toward the pretrained policy, not toward where it was interrupted
    reference = load_policy(cfg.policy, device=cfg.device)[0] if resume and cfg.policy else None
    learner = learner_cls(policy, cfg.env_id, algo_cfg, iterations, seed=cfg.seed, device=cfg.device,
                          reference=reference)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / "config.json", asdict(cfg))
    runner = Runner(learner, cfg.runner, cfg.env_id, run_dir, seed=cfg.seed,
                    metadata={"algorithm": cfg.algorithm, "pretrained": cfg.policy,
                              "pretrained_metadata": metadata if not resume else metadata.get("pretrained_metadata")})
    try:
        return runner.run(resume=resume)
    finally:
        if getattr(learner, "envs", None) is not None:
            learner.envs.close()


def load_run_config(run_dir: str | Path) -> FinetuneConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: not found — is {run_dir} a finetune run directory?")
    return from_dict(FinetuneConfig, json.loads(path.read_text()))
