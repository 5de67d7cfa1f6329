"""Record demonstration datasets with our own experts: ``flowpolicy collect``.

1. Find the expert (see :mod:`pretrain.expert` for its pickle-free files): ``--expert-dir`` if given;
   else the expert shipped with this checkout in ``data/experts/<env_id>`` (reused read-only, never
   written); else ``<out>/experts/<env_id>``, where a SAC expert is trained (``expert_steps`` env steps,
   a snapshot every ``snapshot_every``; SAC starts learning after min(10,000, budget / 3) random steps)
   when none is there yet, and reused by later commands; an unfinished training there is resumed. Nothing
   is ever written inside the repository or the installed package unless the user points there.
2. Pick the demonstrator: ``quality=expert`` is the expert; ``quality=medium`` is the training snapshot
   whose stochastic return (5 probe episodes) is closest to ``medium_fraction`` (default 0.4) of the
   expert's — D4RL's "medium", a partially trained policy. Returns are compared as the *expert fraction*
   ``(R − R_random) / (R_expert − R_random)`` (the normalized score / 100), which stays meaningful when
   returns are negative. When no snapshot comes within ``tolerance`` (default ±0.15) of the requested
   fraction, a warning names the fraction reached and the dataset is named by it instead of "medium":
   ``flowpolicy/<task>-frac97-v0`` (97 % of expert) rather than ``flowpolicy/<task>-medium-v0``.
3. Roll out ``episodes`` episodes with the demonstrator's stochastic actions (SAC's squashed Gaussian,
   as D4RL recorded its data), episode i reset with seed ``seed + i``.
4. Write a local Minari dataset ``<out>/<dataset_id>`` with reference scores (random and expert returns)
   and metadata: quality, demonstrator snapshot, requested and achieved fractions, episode seeds, returns.
   An existing non-empty dataset is refused unless ``overwrite``; then the old one is replaced only once
   the new one is written.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from envs.evaluation import random_policy_return
from envs.registry import get_task
from flowpolicy.config import ConfigError
from pretrain.datasets import _check_minari_dataset_id, episode_returns, write_minari_dataset
from pretrain.expert import (
    INFO_FILE,
    MODEL_FILE,
    SB3_ZIP,
    ExpertConfig,
    Progress,
    list_snapshots,
    load_sac,
    record_episodes,
    train_expert,
)

SHIPPED_EXPERTS = Path(__file__).resolve().parents[1] / "data" / "experts"
DEFAULT_MEDIUM_FRACTION = 0.4
DEFAULT_TOLERANCE = 0.15


class CollectError(ConfigError):
    """A bad ``collect`` request, phrased for the user in one line."""


@dataclass
class CollectResult:
    dataset_dir: Path
    quality: str
    episodes: int
    env_steps: int
    return_mean: float
    return_std: float
    expert_return: float
    random_return: float
    demonstrator: str
    wall_s: float
    fraction: float = float("nan")  # expert fraction of the recorded episodes' mean return
    expert_dir: Path | None = None


def task_name(env_id: str) -> str:
    """``Hopper-v5`` → ``hopper``; ``my.module:MyEnv-v1`` → ``myenv``."""
    name = env_id.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
    name = re.sub(r"-v\d+$", "", name).lower()
    return re.sub(r"[^\w-]+", "_", name).strip("_-") or "env"


def default_dataset_id(env_id: str, quality: str) -> str:
    """Minari id of our datasets, e.g. ``flowpolicy/hopper-medium-v0`` or ``flowpolicy/hopper-frac97-v0``."""
    return f"flowpolicy/{task_name(env_id)}-{quality}-v0"


dataset_id = default_dataset_id  # the name earlier versions exported


def expert_fraction(episode_return: float, random_return: float, expert_return: float) -> float:
    """``(R − R_random) / (R_expert − R_random)``: 0 for a random policy, 1 for the expert (the normalized
    score / 100); meaningful for negative returns too."""
    if not expert_return > random_return:
        raise CollectError(f"the expert's return {expert_return:.1f} is not above a random policy's "
                           f"{random_return:.1f}: there is no scale to measure quality on")
    return (episode_return - random_return) / (expert_return - random_return)


def quality_label(fraction: float) -> str:
    """The dataset name part for a demonstrator that is not the requested quality: the expert fraction in
    percent, e.g. ``frac97`` for 0.97 (Minari ids allow no ``.``)."""
    return f"frac{max(round(100 * fraction), 0)}"


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise CollectError(f"{name} must be an integer >= {minimum}, got {value!r}")


def validate_request(quality: str, episodes: int, seed: int, expert_steps: int, snapshot_every: int,
                     medium_fraction: float, tolerance: float, dataset_id_: str | None) -> None:
    if quality not in ("medium", "expert"):
        raise CollectError(f"quality must be 'medium' or 'expert', got {quality!r}")
    _check_int("episodes", episodes, 1)
    _check_int("seed", seed, 0)
    _check_int("expert_steps", expert_steps, 1)
    _check_int("snapshot_every", snapshot_every, 1)
    if not (isinstance(medium_fraction, (int, float)) and 0.0 < medium_fraction < 1.0):
        raise CollectError(f"medium_fraction must be in (0, 1), got {medium_fraction!r}")
    if not (isinstance(tolerance, (int, float)) and 0.0 <= tolerance < 1.0):
        raise CollectError(f"tolerance must be in [0, 1), got {tolerance!r}")
    if dataset_id_ is not None:
        _check_minari_dataset_id(dataset_id_)
        if "." in dataset_id_:  # Minari's own id pattern has no dots
            raise CollectError(f"dataset id {dataset_id_!r}: Minari ids allow letters, digits, '-', '_' and '/', "
                               f"not '.'")


def has_expert(expert_dir: Path) -> bool:
    return (expert_dir / MODEL_FILE).is_file() and (expert_dir / INFO_FILE).is_file()


def resolve_expert_dir(env_id: str, out: Path, expert_dir: str | Path | None) -> tuple[Path, bool]:
    """The expert directory and whether it is a shipped one (read-only)."""
    if expert_dir is not None:
        return Path(expert_dir).expanduser(), False
    shipped = SHIPPED_EXPERTS / env_id
    if has_expert(shipped):
        return shipped, True
    return out / "experts" / env_id, False


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())) and not overwrite:
        raise CollectError(f"{target} already exists; pass --overwrite to replace it")


def choose_demonstrator(expert_dir: Path, quality: str, medium_fraction: float, expert_return: float,
                        random_return: float, env_id: str, probe_episodes: int = 5,
                        seed: int = 50_000, progress: bool = False) -> tuple[Path, float | None, dict]:
    """The expert, or for ``medium`` the training snapshot whose *stochastic* return (what the dataset will
    hold; SAC's deterministic and stochastic returns can differ by 2×) has the expert fraction closest to
    ``medium_fraction``. Returns the path, its probe fraction (None for the expert) and the probe returns
    and fractions of every snapshot considered."""
    if quality == "expert":
        return expert_dir / MODEL_FILE, None, {}
    snapshots = list_snapshots(expert_dir)
    if not snapshots:
        raise CollectError(f"{expert_dir}: no training snapshots to pick a medium policy from")
    probes = {}
    bar = Progress(len(snapshots), f"probe {expert_dir.name} snapshots for medium", "snapshots", enabled=progress)
    for path in snapshots:
        episodes = record_episodes(load_sac(path), env_id, probe_episodes, seed, progress=False)
        ret = float(episode_returns(episodes).mean())
        probes[path.name] = {"return": ret, "fraction": expert_fraction(ret, random_return, expert_return)}
        bar.update(1, postfix=f"{path.name}: fraction {probes[path.name]['fraction']:.2f}")
    bar.close()
    best = min(snapshots, key=lambda p: abs(probes[p.name]["fraction"] - medium_fraction))
    return best, probes[best.name]["fraction"], probes


def _write_replacing(target: Path, overwrite: bool, write) -> Path:
    """Run ``write()`` (which creates ``target``); an existing ``target`` is moved aside first (when
    ``overwrite``) and removed only after the write succeeded, restored otherwise."""
    backup = None
    if target.exists():
        _refuse_existing(target, overwrite)
        backup = target.with_name(f".{target.name}.replaced-{int(time.time())}")
        target.rename(backup)
    try:
        result = write()
    except BaseException:
        if backup is not None:
            shutil.rmtree(target, ignore_errors=True)
            backup.rename(target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return result


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def collect(env_id: str, out: str | Path, quality: str = "medium", episodes: int = 50, seed: int = 0,
            expert_dir: str | Path | None = None, expert_steps: int = ExpertConfig.total_steps,
            snapshot_every: int = ExpertConfig.eval_every, medium_fraction: float = DEFAULT_MEDIUM_FRACTION,
            tolerance: float = DEFAULT_TOLERANCE, dataset_id: str | None = None, overwrite: bool = False,
            progress: bool = True) -> CollectResult:
    """See the module docstring. Bad arguments and an existing target raise :class:`CollectError` before
    anything is written."""
    validate_request(quality, episodes, seed, expert_steps, snapshot_every, medium_fraction, tolerance, dataset_id)
    start = time.time()
    task = get_task(env_id)  # unknown env id: ValueError naming it
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():  # found now, not after every episode was recorded
        raise CollectError(f"--out {out} is a file, not a directory")
    explicit_id = dataset_id
    target_id = explicit_id or default_dataset_id(env_id, quality)
    _refuse_existing(out / target_id, overwrite)

    expert_dir, shipped = resolve_expert_dir(env_id, out, expert_dir)
    if not has_expert(expert_dir):
        if (expert_dir / SB3_ZIP).exists():
            raise CollectError(f"{expert_dir} holds an SB3 {SB3_ZIP} (a pickle, not loaded by collect); convert it "
                               f"once with: python -m pretrain.expert --convert {expert_dir}")
        print(f"no expert in {expert_dir}: training SAC for {expert_steps:,} env steps there (snapshot every "
              f"{snapshot_every:,}; reused by later commands)", file=sys.stderr, flush=True)
        config = ExpertConfig(total_steps=expert_steps, seed=seed, eval_every=snapshot_every,
                              learning_starts=min(ExpertConfig.learning_starts, max(expert_steps // 3, 1)))
        train_expert(env_id, expert_dir, config, progress=progress)
    elif progress:
        print(f"reusing the expert in {expert_dir}" + (" (shipped, read-only)" if shipped else ""),
              file=sys.stderr, flush=True)
    expert_info = json.loads((expert_dir / INFO_FILE).read_text())
    expert_return = float(expert_info["eval_return_mean"])
    random_return = task.random_score
    if random_return is None:  # unregistered task: measure a random policy on the spot
        random_return, _ = random_policy_return(env_id, 20, seed)
    expert_fraction(expert_return, random_return, expert_return)  # the scale exists

    demonstrator, probe_fraction, probes = choose_demonstrator(expert_dir, quality, medium_fraction, expert_return,
                                                              random_return, env_id, progress=progress)
    label = quality
    if probe_fraction is not None and abs(probe_fraction - medium_fraction) > tolerance:
        label = quality_label(probe_fraction)
        new_id = explicit_id or default_dataset_id(env_id, label)
        _warn(f"no snapshot in {expert_dir} reaches the requested fraction {medium_fraction:.2f} ± {tolerance:.2f} "
              f"of expert return; the closest ({demonstrator.name}) reaches {probe_fraction:.2f}, so the dataset "
              f"is {new_id}, not medium (an expert trained with a smaller --snapshot-every into a new --expert-dir "
              f"gives more snapshots to choose from)")
        if new_id != target_id:
            target_id = new_id
            _refuse_existing(out / target_id, overwrite)

    model = load_sac(demonstrator)
    eps = record_episodes(model, env_id, episodes, seed, progress=progress)
    returns = episode_returns(eps)
    achieved = expert_fraction(float(returns.mean()), random_return, expert_return)
    metadata = {
        "quality": label, "requested_quality": quality, "demonstrator": str(demonstrator),
        "expert_dir": str(expert_dir), "expert_return": expert_return, "random_return": random_return,
        "fraction_definition": "(R - R_random) / (R_expert - R_random)",
        "requested_fraction": medium_fraction if quality == "medium" else 1.0,
        "fraction_tolerance": tolerance if quality == "medium" else None,
        "demonstrator_fraction": probe_fraction, "achieved_fraction": achieved,
        "medium_fraction": medium_fraction if quality == "medium" else None,
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "snapshot_probe_returns": {k: v["return"] for k, v in probes.items()},
        "snapshot_probe_fractions": {k: v["fraction"] for k, v in probes.items()},
        "actions": "stochastic (SAC squashed Gaussian samples)", "collected_by": "flowpolicy collect",
    }
    out_dir = _write_replacing(out / target_id, overwrite, lambda: write_minari_dataset(
        target_id, env_id, eps, out, metadata=metadata, ref_min_score=random_return, ref_max_score=expert_return,
        algorithm_name=f"SAC ({label})", description=f"{label} demonstrations for {env_id} by flowpolicy collect",
    ))
    return CollectResult(out_dir, label, len(eps), int(sum(e.length for e in eps)), float(returns.mean()),
                         float(returns.std()), expert_return, random_return, demonstrator.name,
                         round(time.time() - start, 1), achieved, expert_dir)
