"""Record demonstration datasets with our own experts: ``flowpolicy collect``.

1. Train a Stable-Baselines3 SAC expert for the task, or reuse the one in ``--expert-dir``
   (default ``data/experts/<env_id>``; see :mod:`pretrain.expert`).
2. Pick the demonstrator: ``quality=expert`` is the expert; ``quality=medium`` is the training snapshot
   whose stochastic return (5 probe episodes) is closest to ``medium_fraction`` (default 0.4) of the
   expert's — D4RL's "medium", a partially trained policy at roughly a third to a half of expert return.
3. Roll out ``episodes`` episodes with the demonstrator's stochastic actions (SAC's squashed Gaussian,
   as D4RL recorded its data), episode i reset with seed ``seed + i``.
4. Write a local Minari dataset with reference scores (random and expert returns) and metadata: quality,
   demonstrator snapshot, episode seeds, returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from envs.evaluation import random_policy_return
from envs.registry import get_task
from pretrain.datasets import episode_returns, write_minari_dataset
from pretrain.expert import INFO_FILE, MODEL_FILE, SNAPSHOT_DIR, ExpertConfig, record_episodes, train_expert


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


def dataset_id(env_id: str, quality: str) -> str:
    """Minari id of our datasets, e.g. ``flowpolicy/hopper-medium-v0``."""
    name = env_id.split("-v")[0].lower()
    return f"flowpolicy/{name}-{quality}-v0"


def choose_demonstrator(expert_dir: Path, quality: str, medium_fraction: float, expert_return: float,
                        env_id: str, probe_episodes: int = 5, seed: int = 50_000) -> tuple[Path, dict]:
    """The expert, or for ``medium`` the training snapshot whose *stochastic* return (what the dataset will
    hold; SAC's deterministic and stochastic returns can differ by 2×) is closest to ``medium_fraction`` of
    the expert's. Returns the path and the probe returns of every snapshot considered."""
    from stable_baselines3 import SAC

    if quality == "expert":
        return expert_dir / MODEL_FILE, {}
    snapshots = sorted((expert_dir / SNAPSHOT_DIR).glob("sac_*.zip"), key=lambda p: int(p.stem.split("_")[1]))
    if not snapshots:
        raise FileNotFoundError(f"{expert_dir / SNAPSHOT_DIR}: no training snapshots to pick a medium policy from")
    probes = {}
    for path in snapshots:
        episodes = record_episodes(SAC.load(path, device="cpu"), env_id, probe_episodes, seed, progress=False)
        probes[path.name] = float(episode_returns(episodes).mean())
    target = medium_fraction * expert_return
    best = min(snapshots, key=lambda p: abs(probes[p.name] - target))
    return best, probes


def collect(env_id: str, out: str | Path, quality: str = "medium", episodes: int = 50, seed: int = 0,
            expert_dir: str | Path | None = None, expert_steps: int = ExpertConfig.total_steps,
            medium_fraction: float = 0.4, progress: bool = True) -> CollectResult:
    import json

    from stable_baselines3 import SAC

    if quality not in ("medium", "expert"):
        raise ValueError(f"quality must be 'medium' or 'expert', got {quality!r}")
    start = time.time()
    task = get_task(env_id)
    expert_dir = Path(expert_dir or Path("data/experts") / env_id)
    if not (expert_dir / INFO_FILE).exists():
        print(f"no expert in {expert_dir}: training SAC for {expert_steps} env steps (saved there for reuse)")
        train_expert(env_id, expert_dir, ExpertConfig(total_steps=expert_steps, seed=seed), progress=progress)
    expert_info = json.loads((expert_dir / INFO_FILE).read_text())
    expert_return = float(expert_info["eval_return_mean"])
    demonstrator, probes = choose_demonstrator(expert_dir, quality, medium_fraction, expert_return, env_id)
    model = SAC.load(demonstrator, device="cpu")
    eps = record_episodes(model, env_id, episodes, seed, progress=progress)
    returns = episode_returns(eps)
    random_return = task.random_score
    if random_return is None:  # unregistered task: measure a random policy on the spot
        random_return, _ = random_policy_return(env_id, 20, seed)
    out_dir = write_minari_dataset(
        dataset_id(env_id, quality), env_id, eps, out,
        metadata={"quality": quality, "demonstrator": str(demonstrator), "expert_return": expert_return,
                  "random_return": random_return, "medium_fraction": medium_fraction if quality == "medium" else None,
                  "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                  "snapshot_probe_returns": probes,
                  "actions": "stochastic (SAC squashed Gaussian samples)", "collected_by": "flowpolicy collect"},
        ref_min_score=random_return, ref_max_score=expert_return,
        algorithm_name=f"SAC ({quality})", description=f"{quality} demonstrations for {env_id} by flowpolicy collect",
    )
    return CollectResult(out_dir, quality, len(eps), int(sum(e.length for e in eps)), float(returns.mean()),
                         float(returns.std()), expert_return, random_return, demonstrator.name,
                         round(time.time() - start, 1))
