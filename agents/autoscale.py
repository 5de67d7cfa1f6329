"""Defaults that scale with the task: settings a config leaves ``null`` are measured at the start of a run.

A learner's noise levels and reward scale are task properties, not method properties: Hopper's BC policy
keeps half its score under Gaussian noise of σ = 0.12 (normalized action units) on every denoising step,
InvertedDoublePendulum's loses it at 0.03 and falls within a dozen steps at Hopper's σ_max 0.24; Hopper's
rewards are ≈ 3 per step, Pusher's ≈ −0.8. Copying one task's
numbers to another therefore breaks the run before it learns anything (issue #18). Where a config leaves
them unset, :func:`resolve_auto_settings` measures them from the BC policy on the task itself, before
training, with a few seeded probe episodes:

- **Noise tolerance** (ReinFlow ``sigma_min``/``sigma_max``; QSM ``exploration_noise``/``target_noise``):
  the BC policy is run with constant Gaussian noise σ — on every denoising step (``where="chain"``,
  ReinFlow's noise) or on the final action only (``where="action"``, QSM's exploration) — for σ = 0.0075,
  0.015, 0.03, … 0.24 (doubling up to ReinFlow's published upper bound), 16 seeded episodes each. The
  largest σ before the first one at which the policy keeps less than ``keep`` (50 %) of its noiseless
  score above the random policy's is the task's noise level: exploration that large still visits the
  states the policy is good in, so PPO's advantages and the critic's targets are about the task, not about
  falling over. Ascending, so a noisy estimate errs toward less noise. The smallest grid value is used
  (with a warning) when even it loses too much.
- **Actor step** (QSM ``q_grad_coeff`` α, with ``q_grad_normalize``): a sixth of the measured exploration
  noise — the policy moves per mirror-descent period by a step the task tolerates (Hopper: 0.06 / 6 = 0.01,
  its tuned step).
- **Reward scale** (QSM ``reward_scale``): the inverse of the BC policy's mean |episode return| per
  decision in the noiseless probe, so the critic's targets are O(1/(1 − γ)) on every task (Hopper: 0.08, the shipped
  config's 0.1).

The probe's episodes are seeded from the run seed, so a run resolves the same numbers every time; they
are reported (printed, and under ``autoscale`` in the run's policy metadata) and written into the run's
``config.json``, so ``--resume`` reuses them without probing again. Probe episodes train nothing and, like
evaluation episodes, are not counted in ``runner.total_env_steps``; their number is reported.

QSM's third scale, the size of ∇ₐQ, changes during training, so it is normalized inside the learner by a
running mean (``q_grad_normalize``), not here.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from envs.evaluation import evaluate_agent, random_policy_return
from envs.registry import TaskSpec
from flowpolicy.agent import Agent
from flowpolicy.policy import Policy
from flowpolicy.samplers import Sampler

NOISE_GRID = (0.0075, 0.015, 0.03, 0.06, 0.12, 0.24)  # doubling up to ReinFlow's published σ_max
KEEP = 0.5  # fraction of the noiseless score above random that a noise level must keep
SIGMA_MIN_FRACTION = 0.4  # ReinFlow's σ_min as a fraction of σ_max (the shipped 0.10 / 0.24)
# QSM's α (normalized ∇Q) as a fraction of the measured exploration noise: Hopper's 0.06 / 6 = 0.01 ≈ its tuned
# raw α 0.1 × ∇Q's RMS 0.115; on Pusher (σ 0.24) a 4× larger step, on InvertedDoublePendulum (σ 0.015) 4× smaller
Q_STEP_FRACTION = 1 / 6
RAW_Q_GRAD_COEFF = 0.1  # α on the raw ∇Q (q_grad_normalize: false), the Hopper configs' value
PROBE_EPISODES = 16
# a probe whose noiseless score has a standard error above this fraction of its span cannot resolve a 50 % drop
# (from their 20- or 100-episode returns, over 16 episodes: robomimic Square BC (0.20) 0.5, the 10-demo Lift BC (0.45)
# 0.5; Can BC (0.85) 0.12, InvertedDoublePendulum BC 0.14)
NOISY_BASELINE = 0.25


class ConstantNoise(Sampler):
    """A deterministic sampler plus Gaussian noise of std ``sigma`` on every step (``last_only=False``: the
    ReinFlow chain with a constant noise net) or on the final step only (the final action plus exploration
    noise, as QSM's rollouts add it)."""

    name = "constant_noise"

    def __init__(self, base: Sampler, sigma: float, last_only: bool):
        self.base, self.sigma, self.last_only = base, float(sigma), last_only

    def transition(self, model_fn, x, k, K, obs):
        mean, _ = self.base.transition(model_fn, x, k, K, obs)
        std = torch.full((x.shape[0], 1), self.sigma, dtype=x.dtype, device=x.device)
        return mean, std * (k == K - 1).to(x.dtype).unsqueeze(-1) if self.last_only else std


@dataclass
class NoiseProbe:
    """What :func:`probe_noise_tolerance` measured: ``sigma`` chosen, mean return per σ tried (0 = none)."""

    sigma: float
    returns: dict[float, float]
    random_return: float
    env_steps: int
    where: str
    kept: dict[float, float] = field(default_factory=dict)  # σ → fraction of the noiseless score kept

    def describe(self) -> str:
        tried = ", ".join(f"σ={s:g}: {100 * k:.0f}%" for s, k in self.kept.items())
        return (f"{self.where} noise {self.sigma:g} (σ doubled while the BC policy kept ≥ {100 * KEEP:.0f}% of "
                f"its score above random: {tried})")


def _probe(policy: Policy, env_id: str, sampler: Sampler | None, K: int, seed: int, episodes: int,
           env_kwargs: dict, env_options) -> tuple[float, list[float], list[int]]:
    agent = Agent(policy, sampler=sampler, K=K, seed=seed)
    result = evaluate_agent(agent, env_id, episodes, seed=seed, options=env_options, **env_kwargs)
    return result.return_mean, result.returns, result.lengths


def baseline_probe(policy: Policy, env_id: str, K: int, seed: int = 0, episodes: int = PROBE_EPISODES,
                   env_kwargs: dict | None = None, env_options=None) -> tuple[list[float], list[int]]:
    """Returns and lengths of the BC policy's noiseless episodes (the probe's reference point)."""
    _, returns, lengths = _probe(policy, env_id, None, K, seed, episodes, env_kwargs or {}, env_options)
    return returns, lengths


def probe_noise_tolerance(policy: Policy, env_id: str, where: str, K: int, seed: int = 0,
                          episodes: int = PROBE_EPISODES, random_return: float | None = None,
                          baseline: tuple[list[float], list[int]] | None = None, grid=NOISE_GRID,
                          keep: float = KEEP, env_kwargs: dict | None = None, env_options=None) -> NoiseProbe:
    """The largest σ of ``grid`` at which ``policy`` keeps ``keep`` of its noiseless score above random
    (module docstring). ``where``: ``chain`` (every denoising step) or ``action`` (the final action).
    ``random_return``: the random policy's mean return (measured here, 10 episodes, when not given)."""
    if where not in ("chain", "action"):
        raise ValueError(f"where must be 'chain' or 'action', got {where!r}")
    env_kwargs = env_kwargs or {}
    policy = policy.eval()
    steps = 0
    if baseline is None:
        baseline = baseline_probe(policy, env_id, K, seed, episodes, env_kwargs, env_options)
    base_return = float(np.mean(baseline[0]))
    steps += int(sum(baseline[1]))
    if random_return is None:
        random_return = random_policy_return(env_id, episodes=10, seed=seed, options=env_options, **env_kwargs)[0]
    returns, kept = {0.0: base_return}, {}
    span = base_return - random_return
    base_sem = float(np.std(baseline[0], ddof=1) / np.sqrt(len(baseline[0]))) if len(baseline[0]) > 1 else 0.0
    if span > 0 and base_sem > NOISY_BASELINE * span:  # e.g. a weak policy on a sparse reward: 3 successes of 16
        warnings.warn(f"{env_id}: the BC policy's probe score is too noisy to measure its noise tolerance (standard "
                      f"error {base_sem:.3g} = {100 * base_sem / span:.0f}% of its score above random, over "
                      f"{len(baseline[0])} episodes): the chosen σ may be far too small; set it explicitly "
                      "(docs/new_task.md, 'Adapting a config by hand')", stacklevel=2)
    chosen = None
    deterministic = policy.make_sampler(K=K)
    for sigma in grid:  # ascending: stop at the first level that loses too much (a noisy fluke errs low)
        mean, _, lengths = _probe(policy, env_id, ConstantNoise(deterministic, sigma, last_only=where == "action"),
                                  K, seed, episodes, env_kwargs, env_options)
        steps += int(sum(lengths))
        returns[sigma] = mean
        kept[sigma] = (mean - random_return) / span if span > 0 else float(mean >= base_return)
        if kept[sigma] < keep:
            break
        chosen = sigma
    if chosen is None:
        chosen = grid[0]
        warnings.warn(f"{env_id}: the BC policy keeps < {100 * keep:.0f}% of its score even at {where} noise "
                      f"{chosen:g}; using {chosen:g} (set the noise explicitly if this task needs less)",
                      stacklevel=2)
    return NoiseProbe(chosen, returns, float(random_return), steps, where, kept)


def reward_scale_from(returns: list[float], lengths: list[int], act_steps: int) -> float:
    """1 / the probe episodes' mean |return| per decision (|episode return| / length × ``act_steps``); 1 when
    that is 0 (e.g. a sparse reward the BC policy never earns). Computed from episode returns, so rewards of
    both signs that cancel within an episode make it too large: set ``reward_scale`` for such a task."""
    per_step = float(np.mean(np.abs(np.asarray(returns, dtype=float)) / np.maximum(lengths, 1)))
    per_decision = per_step * act_steps
    return float(1.0 / per_decision) if per_decision > 1e-8 else 1.0


def _rounded(value: float) -> float:
    return float(f"{value:.3g}")


def policy_dataset(metadata: dict | None) -> str | None:
    """The dataset a BC policy was trained on, if it is on this machine (``flowpolicy pretrain`` records it)."""
    from pathlib import Path

    metadata = metadata or {}
    for key in ("dataset_path", "dataset"):
        if metadata.get(key) and Path(metadata[key]).exists():
            return str(metadata[key])
    return None


def resolve_auto_settings(algorithm: str, algo_cfg, policy: Policy, env_id: str, task: TaskSpec, seed: int = 0,
                          env_kwargs: dict | None = None, env_options=None, log=print, metadata: dict | None = None):
    """The algorithm's config with its ``null`` task-scaled settings measured (module docstring), and a report
    ``{setting: value, ..., "probe_env_steps": n, "notes": [...]}``; ``(algo_cfg, None)`` when nothing is unset.
    QSM's BC term without a ``dataset`` uses the one the policy was trained on (``metadata``), if it is here."""
    found = {}
    if algorithm == "qsm" and algo_cfg.bc_coeff > 0 and not algo_cfg.dataset:
        dataset = policy_dataset(metadata)
        found = {"dataset": dataset} if dataset else {"bc_coeff": 0.0}
        log(f"autoscale: dataset {dataset} (the BC policy's: the BC term and the replay's demonstrations)" if dataset
            else "autoscale: no dataset given and the BC policy's is not here: bc_coeff=0 (no BC term)")
        algo_cfg = dataclasses.replace(algo_cfg, **found)
    needs = [name for name in AUTO_SETTINGS.get(algorithm, ()) if getattr(algo_cfg, name, 0) is None]
    if not needs:
        return (algo_cfg, dict(found)) if found else (algo_cfg, None)
    K = algo_cfg.K or policy.config.num_steps
    random_return = task.random_score if task.has_reference_scores else None
    where = "chain" if algorithm == "reinflow" else "action"
    primary = "sigma_max" if algorithm == "reinflow" else "exploration_noise"
    sigma = getattr(algo_cfg, primary)
    values, notes, steps, baseline = {}, [], 0, None
    if sigma is None or "reward_scale" in needs:  # measured: the BC policy's noiseless episodes first
        log(f"autoscale: measuring {', '.join(needs)} from the BC policy on {env_id} (seeded probe episodes)")
        baseline = baseline_probe(policy, env_id, K, seed, env_kwargs=env_kwargs, env_options=env_options)
        steps = int(sum(baseline[1]))
    if sigma is None:  # the other noise settings follow from this one
        probe = probe_noise_tolerance(policy, env_id, where, K, seed, random_return=random_return,
                                      baseline=baseline, env_kwargs=env_kwargs, env_options=env_options)
        steps += probe.env_steps - int(sum(baseline[1]))
        notes.append(probe.describe())
        sigma = values[primary] = probe.sigma
    if algorithm == "reinflow":
        if algo_cfg.sigma_min is not None and algo_cfg.sigma_min > sigma:
            warnings.warn(f"the measured sigma_max {sigma:g} is below the configured sigma_min "
                          f"{algo_cfg.sigma_min:g}; using sigma_max = sigma_min", stacklevel=2)
            sigma = values["sigma_max"] = algo_cfg.sigma_min
        values["sigma_min"] = _rounded(SIGMA_MIN_FRACTION * sigma)
    else:
        target = values["target_noise"] = algo_cfg.target_noise if algo_cfg.target_noise is not None else sigma
        values["target_noise_clip"] = _rounded(3 * target)
        values["q_grad_coeff"] = _rounded(Q_STEP_FRACTION * sigma) if algo_cfg.q_grad_normalize else RAW_Q_GRAD_COEFF
    if "reward_scale" in needs:
        scale = _rounded(reward_scale_from(*baseline, policy.config.act_steps))
        values["reward_scale"] = scale
        notes.append(f"reward scale {scale:g} (1 / the BC policy's mean |reward| per decision, "
                     f"{np.mean(np.abs(baseline[0])):.1f} per episode of {np.mean(baseline[1]):.0f} steps)")
    values = {k: v for k, v in values.items() if k in needs}
    for note in notes:
        log(f"autoscale: {note}")
    log(f"autoscale: {', '.join(f'{k}={v:g}' for k, v in values.items())}"
        + (f" ({steps:,} probe env steps, not counted in the budget)" if steps else ""))
    return dataclasses.replace(algo_cfg, **values), {**found, **values, "probe_env_steps": steps, "notes": notes}


# the settings each learner lets autoscale measure when they are null (and what resolving may also set)
AUTO_SETTINGS = {
    "reinflow": ("sigma_min", "sigma_max"),
    "qsm": ("exploration_noise", "target_noise", "target_noise_clip", "reward_scale", "q_grad_coeff"),
}
RESOLVED_KEYS = {key for keys in AUTO_SETTINGS.values() for key in keys} | {"dataset", "bc_coeff"}


def require_resolved(algo_cfg, algorithm: str) -> None:
    """A learner needs numbers: ``finetune`` measures the null ones first (:func:`resolve_auto_settings`)."""
    from flowpolicy.config import ConfigError

    if getattr(algo_cfg, "bc_coeff", 0) > 0 and hasattr(algo_cfg, "dataset") and not algo_cfg.dataset:
        raise ConfigError("bc_coeff > 0 needs a dataset of demonstrations (set dataset, or bc_coeff=0)")
    unset = [name for name in AUTO_SETTINGS[algorithm] if getattr(algo_cfg, name) is None]
    if unset:
        raise ConfigError(f"{', '.join(unset)} unset: `flowpolicy finetune` measures them from the BC policy on the "
                          "task (agents.autoscale.resolve_auto_settings); a learner built directly needs numbers")
