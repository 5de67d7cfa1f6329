"""Expert policies for making demonstrations: Stable-Baselines3 SAC trained on a gymnasium task.

No demonstration dataset can be downloaded on our machines, so ``flowpolicy collect`` trains an expert
here first (or reuses one found in its directory) and records datasets with it. An expert directory
holds ``sac.zip`` (SB3's format), ``expert.json`` (budget, seed, wall time, evaluation return),
``progress.csv`` (evaluation returns during training) and ``snapshots/sac_<steps>.zip`` at every
evaluation — the medium-quality dataset is recorded with the snapshot whose return is closest to a
target fraction of the expert's (D4RL's "medium": a partially trained policy). Saves are periodic, so an
interrupted training keeps its latest snapshot and is resumed by default.

    python -m pretrain.expert --env Hopper-v5 --out data/experts/Hopper-v5 --steps 300000
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from pretrain.datasets import Episode, episode_returns

MODEL_FILE = "sac.zip"
INFO_FILE = "expert.json"
SNAPSHOT_DIR = "snapshots"


@dataclass
class ExpertConfig:
    """SAC budget and settings (SB3 defaults otherwise: 256×256 MLPs, lr 3e-4, batch 256, τ 0.005)."""

    total_steps: int = 300_000
    learning_starts: int = 10_000
    eval_every: int = 25_000
    eval_episodes: int = 5
    seed: int = 0


def record_episodes(model, env_id: str, episodes: int, seed: int, deterministic: bool = False,
                    progress: bool = True) -> list[Episode]:
    """Roll out an SB3 model for ``episodes`` episodes (episode i reset with ``seed + i``)."""
    env = gym.make(env_id)
    out = []
    for i in tqdm(range(episodes), desc=f"record {env_id}", unit="ep", disable=not progress or None):
        obs, _ = env.reset(seed=seed + i)
        observations, actions, rewards = [obs], [], []
        while True:
            action, _ = model.predict(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
            rewards.append(reward)
            if terminated or truncated:
                break
        out.append(Episode(observations=np.asarray(observations, dtype=np.float32),
                           actions=np.asarray(actions, dtype=np.float32),
                           rewards=np.asarray(rewards, dtype=np.float32),
                           terminated=bool(terminated), truncated=bool(truncated), seed=seed + i))
    env.close()
    return out


def evaluate_sac(model, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of the deterministic return."""
    returns = episode_returns(record_episodes(model, env_id, episodes, seed, deterministic=True, progress=False))
    return float(returns.mean()), float(returns.std())


def train_expert(env_id: str, out_dir: str | Path, config: ExpertConfig | None = None, resume: bool = True,
                 progress: bool = True) -> Path:
    """Train SAC on ``env_id`` for ``config.total_steps`` env steps into ``out_dir``; returns it."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    config = config or ExpertConfig()
    out = Path(out_dir)
    (out / SNAPSHOT_DIR).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small nets, batch 256: one thread is fastest and leaves a core free
    env = gym.make(env_id)
    start = time.time()
    if resume and (out / MODEL_FILE).exists():
        model = SAC.load(out / MODEL_FILE, env=env)
        done_steps = int(model.num_timesteps)
    else:
        model = SAC("MlpPolicy", env, learning_starts=config.learning_starts, seed=config.seed, verbose=0)
        done_steps = 0
        (out / "progress.csv").write_text("env_steps,wall_s,return_mean,return_std\n")

    class Periodic(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % config.eval_every == 0:
                mean, std = evaluate_sac(self.model, env_id, config.eval_episodes, seed=10_000)
                self.model.save(out / SNAPSHOT_DIR / f"sac_{self.num_timesteps}.zip")
                self.model.save(out / MODEL_FILE)
                with open(out / "progress.csv", "a") as f:
                    f.write(f"{self.num_timesteps},{time.time() - start:.1f},{mean:.1f},{std:.1f}\n")
            return True

    remaining = config.total_steps - done_steps
    if remaining > 0:
        model.learn(remaining, callback=Periodic(), progress_bar=progress, reset_num_timesteps=False)
        model.save(out / SNAPSHOT_DIR / f"sac_{model.num_timesteps}.zip")
        model.save(out / MODEL_FILE)
    finalize_expert(env_id, out, {"config": asdict(config), "wall_s_this_run": round(time.time() - start, 1)})
    return out


def finalize_expert(env_id: str, out_dir: str | Path, info: dict | None = None, candidates: int = 3) -> dict:
    """Make ``sac.zip`` the best policy SAC produced: the final model or one of the ``candidates`` snapshots
    with the highest training-time evaluation, re-evaluated on the same 10 held-out episodes (SAC's return
    is not monotone in training steps). Writes and returns ``expert.json``."""
    from stable_baselines3 import SAC

    out = Path(out_dir)
    rows = []
    with open(out / "progress.csv") as f:
        next(f)
        for line in f:
            steps, _, ret, _ = line.strip().split(",")
            if (out / SNAPSHOT_DIR / f"sac_{steps}.zip").exists():
                rows.append((float(ret), int(steps)))
    paths = [out / MODEL_FILE] + [out / SNAPSHOT_DIR / f"sac_{s}.zip" for _, s in sorted(rows)[-candidates:]]
    scored = []
    for path in paths:
        mean, std = evaluate_sac(SAC.load(path, device="cpu"), env_id, 10, seed=20_000)
        scored.append((mean, std, path))
    mean, std, best = max(scored, key=lambda item: item[0])
    trained = max([s for _, s in rows] + [int(SAC.load(out / MODEL_FILE, device="cpu").num_timesteps)])
    if best != out / MODEL_FILE:
        shutil.copyfile(best, out / MODEL_FILE)
    final = SAC.load(out / MODEL_FILE, device="cpu")
    result = {"env_id": env_id, "algorithm": "SAC (stable-baselines3)", **(info or {}),
              "env_steps_trained": trained,
              "expert_snapshot": best.name if best != out / MODEL_FILE else "final",
              "expert_env_steps": int(final.num_timesteps),
              "candidates": {p.name: round(m, 1) for m, _, p in scored},
              "eval_return_mean": mean, "eval_return_std": std, "eval_episodes": 10}
    (out / INFO_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="gymnasium env id, e.g. Hopper-v5")
    parser.add_argument("--out", required=True, help="expert directory")
    parser.add_argument("--steps", type=int, default=ExpertConfig.total_steps, help="SAC env-step budget")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="start over even if a snapshot exists")
    parser.add_argument("--finalize", action="store_true", help="only (re)select and evaluate the best snapshot")
    args = parser.parse_args(argv)
    if args.finalize:
        print(json.dumps(finalize_expert(args.env, args.out), indent=2))
        return
    out = train_expert(args.env, args.out, ExpertConfig(total_steps=args.steps, seed=args.seed),
                       resume=not args.no_resume)
    print((out / INFO_FILE).read_text())


if __name__ == "__main__":
    main()
