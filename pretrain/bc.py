"""Behavior cloning of flow, shortcut and diffusion policies from a demonstration dataset.

``flowpolicy pretrain --config configs/<task>/pretrain.yaml [key=value ...]`` runs :func:`pretrain`:
load a local Minari dataset (or a robomimic-layout hdf5 file), cut it into (observation history,
action chunk) samples, fit the normalizers on the training episodes, and minimize the model's BC loss
with AdamW and a cosine learning rate. An exponential moving average of the weights is what gets
evaluated and saved. Validation loss (on held-out whole episodes) and periodic evaluation rollouts are
logged to TensorBoard; the run directory ends up with::

    policy/              the EMA policy (flowpolicy checkpoint: load_agent / flowpolicy evaluate)
    checkpoints/step_N/  periodic EMA snapshots
    events.out.tfevents* TensorBoard scalars (losses/bc_loss, losses/val_loss, charts/eval_return, ...)
    summary.json         final validation loss, evaluation return ± std, normalized score, wall time

A run never replaces an earlier one: an ``out`` that exists and is not empty is refused unless
``overwrite: true`` (``flowpolicy pretrain --overwrite``); then the earlier run's outputs are removed only
after the config, env and dataset checks have passed, so a failing start changes nothing. The dataset must
have been recorded on ``env_id`` (checked by env id, not only by shape) and with the config's ``env_kwargs`` (when
the dataset records them) unless ``allow_env_mismatch: true``.
The evaluations use the run's ``seed`` as evaluation seed (episode k reset with ``seed + k``), so
``flowpolicy evaluate --checkpoint OUT/policy --seed SEED --episodes EVAL_EPISODES`` reports the same return.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from envs.evaluation import evaluate_agent
from envs.registry import get_task, with_reference_scores
from envs.wrappers import EnvOptions
from flowpolicy.agent import Agent
from flowpolicy.checkpoint import atomic_write_json, save_policy
from flowpolicy.config import ConfigError, check_device, from_dict, param, to_dict
from flowpolicy.normalizers import ActionNormalizer, ObservationNormalizer
from flowpolicy.policy import Policy, PolicyConfig
from pretrain.datasets import (
    check_dataset_env,
    check_matches_env,
    episode_returns,
    load_minari_dataset,
    make_chunk_samples,
    read_robomimic_hdf5,
    split_episodes,
)


@dataclass
class BCTrainConfig:
    steps: int = param(20_000, "gradient steps", ge=1)
    batch_size: int = param(256, "minibatch size", ge=1)
    lr: float = param(1e-3, "AdamW learning rate (peak of the cosine schedule)", gt=0)
    weight_decay: float = param(1e-6, "AdamW weight decay", ge=0)
    warmup_steps: int = param(500, "linear learning-rate warm-up steps", ge=0)
    ema_decay: float = param(0.995, "decay of the weight EMA that is evaluated and saved", ge=0, lt=1)
    grad_clip: float = param(1.0, "gradient-norm clip", gt=0)
    val_fraction: float = param(0.05, "share of whole episodes held out for the validation loss (a robomimic file's "
                                      "mask/train and mask/valid are used instead when it has both; 0: none)",
                                ge=0, lt=1)
    val_every: int = param(1000, "steps between validation losses", ge=1)
    eval_every: int = param(5000, "steps between evaluation rollouts (0: only at the end)", ge=0)
    eval_episodes: int = param(10, "episodes per evaluation, seeded with the run's seed (0: no evaluation)", ge=0)
    checkpoint_every: int = param(5000, "steps between EMA snapshots in checkpoints/ (0: only the final policy)",
                                  ge=0)
    log_every: int = param(100, "steps between TensorBoard loss scalars", ge=1)


@dataclass
class PretrainConfig:
    """A behavior-cloning run. ``policy`` holds :class:`PolicyConfig` fields except the dimensions,
    which come from the dataset."""

    env_id: str = param("Hopper-v5", "the env the policy is for: a gymnasium id, module:EnvId or module:Class")
    env_kwargs: dict = param({}, "keyword arguments for gym.make(env_id, ...) (e.g. env_name for Meta-World)")
    env_options: EnvOptions = field(default_factory=EnvOptions)
    dataset: str = param("", "Minari dataset directory or id, or a robomimic .hdf5 file, recorded on env_id")
    data_dir: str | None = param(None, "where Minari dataset ids are looked up (null: $MINARI_DATASETS_PATH)")
    out: str = param("runs/pretrain", "run directory (refused when it already holds a run, unless overwrite)")
    seed: int = param(0, "seed of training and of the evaluations (episode k reset with seed + k)", ge=0)
    device: str = param("cpu", "torch device, e.g. cpu or cuda")
    torch_threads: int = param(0, "torch CPU threads (0: leave torch's default)", ge=0)
    policy: dict = param({}, "PolicyConfig fields except obs_dim/action_dim (see the policy.* keys)")
    train: BCTrainConfig = field(default_factory=BCTrainConfig)
    allow_env_mismatch: bool = param(False, "accept a dataset recorded on another env id or with other env kwargs "
                                     "(deliberate cross-env use)")
    overwrite: bool = param(False, "replace an earlier run in out (same as pretrain --overwrite)")

    def __post_init__(self):
        for key in ("env_id", "out", "device"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).strip():
                raise ConfigError(f"{key}: must be a non-empty string, got {getattr(self, key)!r}")


def load_demonstrations(source: str, data_dir: str | None = None, env_id: str | None = None,
                        obs_dim: int | None = None, action_dim: int | None = None,
                        allow_env_mismatch: bool = False, override_key: str = "allow_env_mismatch",
                        env_kwargs: dict | None = None):
    """Episodes and metadata from a Minari dataset (id or directory) or a robomimic-layout hdf5 file.

    With ``env_id``: the env id the dataset records (Minari's ``env_spec``, or robomimic's
    ``env_args["env_name"]``) must name that env, and the env kwargs it records (if any) be ``env_kwargs`` — a
    one-line :class:`DatasetError` otherwise, even when the dimensions agree, unless ``allow_env_mismatch``.
    With ``obs_dim``/``action_dim``: every episode must have those sizes (checked whatever
    ``allow_env_mismatch`` says)."""
    if not source:
        raise ConfigError("dataset: no dataset given (a Minari dataset directory or id, or a .hdf5 file)")
    if source.endswith((".hdf5", ".h5")):
        episodes, meta = read_robomimic_hdf5(source)
    else:
        episodes, meta = load_minari_dataset(source, data_dir)
    if env_id is not None:
        check_dataset_env(meta.get("env_id"), env_id, f"dataset {source}", allow_env_mismatch,
                          f"{override_key}: true", meta.get("env_kwargs"), env_kwargs)
        if obs_dim is not None and action_dim is not None:
            check_matches_env(episodes, obs_dim, action_dim, f"dataset {source}", env_id)
    return episodes, meta


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1.0 - decay)


def _lr_factor(step: int, cfg: BCTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _mean_loss(policy: Policy, cond: torch.Tensor, x: torch.Tensor, batch: int, seed: int) -> float:
    gen = torch.Generator(device=cond.device).manual_seed(seed)  # the same noise every time: comparable
    losses = [policy.bc_loss(cond[i:i + batch], x[i:i + batch], generator=gen).item() * len(cond[i:i + batch])
              for i in range(0, len(cond), batch)]
    return float(sum(losses) / len(cond))


def _remove_run_outputs(out: Path) -> None:
    """Delete what a pretrain run writes into ``out`` (policy/, checkpoints/, summary.json, event files)."""
    import shutil

    for child in out.iterdir():
        if child.name in ("policy", "checkpoints") and child.is_dir():
            shutil.rmtree(child)
        elif child.name == "summary.json" or child.name.startswith("events.out.tfevents"):
            child.unlink()


def pretrain(cfg: PretrainConfig, progress: bool = True) -> dict:
    """Run behavior cloning as configured; returns the summary (also written to ``out/summary.json``)."""
    from torch.utils.tensorboard import SummaryWriter

    start = time.time()
    cfg = from_dict(PretrainConfig, to_dict(cfg))  # every key's type and range, also for configs built in code
    out = Path(cfg.out)
    tc = cfg.train
    # Everything that can fail on bad input is checked before anything is written.
    check_device(cfg.device)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a directory")
    previous = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if previous and not cfg.overwrite:
        raise ConfigError(f"out: {out} already holds a run ({', '.join(previous[:3])}"
                          f"{', …' if len(previous) > 3 else ''}); choose another out, or pass --overwrite "
                          f"(overwrite=true) to replace it")
    task = get_task(cfg.env_id, cfg.env_options, **cfg.env_kwargs)
    episodes, data_meta = load_demonstrations(cfg.dataset, cfg.data_dir, env_id=cfg.env_id, obs_dim=task.obs_dim,
                                              action_dim=task.action_dim,
                                              allow_env_mismatch=cfg.allow_env_mismatch, env_kwargs=cfg.env_kwargs)
    policy_cfg = from_dict(PolicyConfig, {**cfg.policy, "obs_dim": task.obs_dim, "action_dim": task.action_dim},
                           prefix="policy")
    if previous:  # overwrite=true and the checks passed: clear the earlier run's outputs
        _remove_run_outputs(out)
    torch.manual_seed(cfg.seed)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    out.mkdir(parents=True, exist_ok=True)
    masks = data_meta.get("filter_keys") or {}
    if tc.val_fraction > 0 and masks.get("train") and masks.get("valid"):  # a robomimic file's own split
        train_eps, val_eps = [episodes[i] for i in masks["train"]], [episodes[i] for i in masks["valid"]]
    else:
        train_eps, val_eps = split_episodes(episodes, tc.val_fraction, cfg.seed)
    train_obs = np.concatenate([e.observations for e in train_eps])
    train_act = np.concatenate([e.actions for e in train_eps])
    policy = Policy(policy_cfg, ObservationNormalizer.fit(train_obs), ActionNormalizer.fit(train_act)).to(cfg.device)

    def tensors(eps):
        samples = make_chunk_samples(eps, policy_cfg.n_obs_steps, policy_cfg.horizon)
        with torch.no_grad():
            cond = policy.condition(torch.as_tensor(samples.obs_history, device=cfg.device))
            x = policy.normalize_actions(torch.as_tensor(samples.action_chunks, device=cfg.device))
        return cond, x

    cond, x = tensors(train_eps)
    val_cond, val_x = tensors(val_eps) if val_eps else (None, None)
    ema = copy.deepcopy(policy).eval()
    opt = torch.optim.AdamW(policy.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, tc))
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
    writer = SummaryWriter(str(out))
    writer.add_text("config", f"```\n{json.dumps(asdict(cfg), indent=2)}\n```")
    metadata = {"env_id": cfg.env_id, "dataset": cfg.dataset, "trained_by": "flowpolicy pretrain",
                "bc_steps": tc.steps, "seed": cfg.seed}
    if cfg.env_kwargs:  # `flowpolicy evaluate` makes the same env from the saved policy
        metadata["env_kwargs"] = cfg.env_kwargs
    if cfg.env_options != EnvOptions():
        metadata["env_options"] = asdict(cfg.env_options)
    metadata["dataset_path"] = str(data_meta.get("path") or cfg.dataset)  # where it was found (ids included)
    if data_meta.get("ref_min_score") is not None and data_meta.get("ref_max_score") is not None:
        # the dataset's random and expert returns: normalized scores for a task the registry does not know
        metadata["reference_scores"] = {"random": data_meta["ref_min_score"], "expert": data_meta["ref_max_score"]}
    task = with_reference_scores(task, metadata)

    def evaluate(step: int) -> dict:
        # the evaluation seed is the run's seed: `flowpolicy evaluate --seed SEED` gives the same number
        result = evaluate_agent(Agent(ema, seed=cfg.seed), cfg.env_id, tc.eval_episodes, seed=cfg.seed,
                                options=cfg.env_options, task=task, **cfg.env_kwargs)
        writer.add_scalar("charts/eval_return", result.return_mean, step)
        if result.success_rate is not None:
            writer.add_scalar("charts/success_rate", result.success_rate, step)
        if result.normalized_score is not None:
            writer.add_scalar("charts/normalized_score", result.normalized_score, step)
        return result.to_dict()

    n, last_eval, val_loss = len(cond), {}, None
    bar = tqdm(range(tc.steps), desc=f"BC {policy_cfg.kind} {cfg.env_id}", disable=not progress or None,
               dynamic_ncols=True)
    running = None
    for step in bar:
        idx = torch.randint(0, n, (tc.batch_size,), generator=gen, device=cfg.device)
        loss = policy.bc_loss(cond[idx], x[idx], generator=gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"BC loss became {loss.item()} at step {step}; last checkpoint kept in {out}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        # EMA warm-up: early on, average over the steps so far instead of dragging the random init along
        _ema_update(ema, policy, min(tc.ema_decay, (1 + step) / (10 + step)))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        done = step + 1
        if done % tc.log_every == 0 or done == tc.steps:
            writer.add_scalar("losses/bc_loss", loss.item(), done)
            writer.add_scalar("losses/grad_norm", grad_norm.item(), done)
            writer.add_scalar("charts/learning_rate", sched.get_last_lr()[0], done)
        if val_cond is not None and (done % tc.val_every == 0 or done == tc.steps):
            val_loss = _mean_loss(ema, val_cond, val_x, 4096, cfg.seed)
            writer.add_scalar("losses/val_loss", val_loss, done)
        if tc.eval_every and done % tc.eval_every == 0 and done != tc.steps:
            last_eval = evaluate(done)
        if tc.checkpoint_every and done % tc.checkpoint_every == 0:
            save_policy(ema, out / "checkpoints" / f"step_{done}", metadata={**metadata, "bc_steps": done})
        bar.set_postfix(loss=f"{running:.4f}", val=f"{val_loss:.4f}" if val_loss is not None else "-",
                        ret=f"{last_eval['return_mean']:.0f}" if last_eval else "-")
    bar.close()

    final_eval = evaluate(tc.steps) if tc.eval_episodes > 0 else {}
    save_policy(ema, out / "policy", metadata={**metadata, "eval": final_eval})
    writer.close()
    summary = {
        "env_id": cfg.env_id, "kind": policy_cfg.kind, "dataset": cfg.dataset,
        "dataset_episodes": len(episodes), "dataset_return_mean": float(episode_returns(episodes).mean()),
        "train_samples": n, "val_loss": val_loss, "final_bc_loss": running, "eval": final_eval,
        "policy": str(out / "policy"), "wall_s": round(time.time() - start, 1),
        "dataset_metadata": {k: v for k, v in data_meta.items() if k in ("env_id", "quality", "ref_min_score",
                                                                        "ref_max_score")},
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
