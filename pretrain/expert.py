"""Expert policies for making demonstrations: Stable-Baselines3 SAC trained on a gymnasium task.

No demonstration dataset can be downloaded on our machines, so ``flowpolicy collect`` trains an expert
first (or reuses one) and records datasets with it. An expert directory holds

- ``sac.safetensors``: the expert (the best policy SAC produced, see :func:`finalize_expert`);
- ``expert.json``: budget, seed, wall time, evaluation return;
- ``progress.csv``: evaluation returns during training;
- ``snapshots/sac_<steps>.safetensors``: the policy at every evaluation — the medium-quality dataset is
  recorded with a snapshot (D4RL's "medium": a partially trained policy);
- ``last.safetensors``: the training state of the latest save, for resuming an interrupted training.

**No pickle.** SB3's own ``.zip`` format stores its settings with cloudpickle, so loading one runs code
from the file. Our files are safetensors: the SAC policy's ``state_dict`` (actor, critics, target critics)
plus the observation/action boxes as tensors, and the hyperparameters (``policy_kwargs``, SAC settings,
``num_timesteps``) as JSON in the safetensors header. :func:`load_sac` rebuilds an SB3 ``SAC("MlpPolicy",
…)`` from them and loads the weights; nothing is unpickled. ``last.safetensors`` adds the optimizer states
(actor, critic, entropy coefficient) and ``log_ent_coef``, so a resumed training continues with the same
weights, optimizer moments, entropy coefficient and step count. SB3 does not save its replay buffer by
default and neither do we: a resumed run starts with an empty buffer (updates continue at once; the buffer
refills from the resumed policy). The only code that reads SB3 ``.zip`` files is the explicit one-off
conversion ``python -m pretrain.expert --convert DIR``, for experts made before this format; it unpickles,
so convert only files you made or trust.

    python -m pretrain.expert --env Hopper-v5 --out ~/experts/Hopper-v5 --steps 300000
    python -m pretrain.expert --convert data/experts/Hopper-v5     # old sac.zip → sac.safetensors
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from pretrain.datasets import Episode, episode_returns

MODEL_FILE = "sac.safetensors"
TRAIN_STATE_FILE = "last.safetensors"
INFO_FILE = "expert.json"
SNAPSHOT_DIR = "snapshots"
FORMAT = "flowpolicy-sac-v1"
SB3_ZIP = "sac.zip"  # the old, pickled format: read only by --convert


class ExpertError(ValueError):
    """A missing, corrupt or unusable expert file, phrased for the user in one line."""


@dataclass
class ExpertConfig:
    """SAC budget and settings (SB3 defaults otherwise: 256×256 MLPs, lr 3e-4, batch 256, τ 0.005)."""

    total_steps: int = 300_000
    learning_starts: int = 10_000
    eval_every: int = 25_000
    eval_episodes: int = 5
    seed: int = 0


# ---------------------------------------------------------------------------------------------------------
# progress: a bar on a terminal, periodic lines in a log file


class Progress:
    """A tqdm bar when stderr is a terminal; otherwise one line to stderr at the start, at most every
    ``every_s`` seconds, and at the end (so a redirected run shows progress while it runs)."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True, every_s: float = 30.0,
                 initial: int = 0):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.enabled = enabled
        self.n, self.postfix, self.start = initial, "", time.time()
        tty = sys.stderr.isatty()
        self.bar = (tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr)
                    if enabled and tty else None)
        self.lines = enabled and not tty
        self.last_line = -float("inf")
        if self.lines:
            self._line()

    def _line(self) -> None:
        self.last_line = time.time()
        post = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {self.n:,}/{self.total:,} {self.unit}{post}, {time.time() - self.start:.0f} s elapsed",
              file=sys.stderr, flush=True)

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self.bar is not None:
            self.bar.update(n)
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
        elif self.lines and time.time() - self.last_line >= self.every_s:
            self._line()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.lines and self.last_line < time.time() and self.n:
            self._line()
        self.lines = False


# ---------------------------------------------------------------------------------------------------------
# pickle-free SAC files

_HYPERPARAMETERS = ("learning_rate", "buffer_size", "learning_starts", "batch_size", "tau", "gamma",
                    "gradient_steps", "ent_coef", "target_update_interval", "target_entropy", "use_sde",
                    "sde_sample_freq", "use_sde_at_warmup", "seed")
_POLICY_KWARGS = {"net_arch", "activation_fn", "use_sde", "log_std_init", "use_expln", "clip_mean", "n_critics",
                  "share_features_extractor", "normalize_images"}


def _space_tensors(prefix: str, space) -> dict[str, torch.Tensor]:
    if not isinstance(space, gym.spaces.Box):
        raise ExpertError(f"only Box spaces can be stored, got {space}")
    return {f"{prefix}.low": torch.from_numpy(np.array(space.low)),
            f"{prefix}.high": torch.from_numpy(np.array(space.high))}


def _policy_kwargs_to_json(kwargs: dict) -> dict:
    unknown = sorted(set(kwargs) - _POLICY_KWARGS)
    if unknown:
        raise ExpertError(f"policy_kwargs {unknown} cannot be stored without pickle")
    out = dict(kwargs)
    if "activation_fn" in out:
        out["activation_fn"] = out["activation_fn"].__name__
    return out


def _policy_kwargs_from_json(kwargs: dict) -> dict:
    out = dict(kwargs)
    if "activation_fn" in out:
        fn = getattr(torch.nn, out["activation_fn"], None)
        if not (isinstance(fn, type) and issubclass(fn, torch.nn.Module)):
            raise ExpertError(f"unknown activation {out['activation_fn']!r}")
        out["activation_fn"] = fn
    return out


def _sac_settings(model) -> dict:
    settings = {}
    for key in _HYPERPARAMETERS:
        value = getattr(model, key)
        if key == "learning_rate" and callable(value):
            value = float(model.lr_schedule(1.0))  # a schedule: keep its start value
        settings[key] = value.item() if isinstance(value, np.generic) else value
    settings["train_freq"] = [int(model.train_freq.frequency), model.train_freq.unit.value]
    return settings


def _optimizer_to_safe(name: str, optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_safe(name: str, optimizer, tensors: dict, info: dict) -> None:
    state: dict[int, dict] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, entry = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[entry] = value
    for key, value in info["scalars"].items():
        idx, entry = key.split(".", 1)
        state.setdefault(int(idx), {})[entry] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in info["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _atomic_save(tensors: dict[str, torch.Tensor], metadata: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"flowpolicy": json.dumps(metadata)})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_sac(model, path: str | Path, training_state: bool = False, env_id: str | None = None) -> Path:
    """Write an SB3 SAC model as one safetensors file (weights + boxes; settings as JSON in its header),
    atomically. ``training_state`` adds optimizer states and the entropy coefficient, for resuming."""
    path = Path(path)
    tensors = {f"policy.{k}": v for k, v in model.policy.state_dict().items()}
    tensors.update(_space_tensors("observation_space", model.observation_space))
    tensors.update(_space_tensors("action_space", model.action_space))
    meta = {"format": FORMAT, "algorithm": "SAC", "env_id": env_id, "policy": "MlpPolicy",
            "policy_kwargs": _policy_kwargs_to_json(model.policy_kwargs), "settings": _sac_settings(model),
            "num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
            "episode_num": int(model._episode_num),
            "observation_dtype": str(model.observation_space.dtype), "action_dtype": str(model.action_space.dtype)}
    if training_state:
        optimizers = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
        if model.ent_coef_optimizer is not None:
            optimizers["ent_coef"] = model.ent_coef_optimizer
            tensors["log_ent_coef"] = model.log_ent_coef.detach()
        meta["optimizers"] = {}
        for name, opt in optimizers.items():
            opt_tensors, meta["optimizers"][name] = _optimizer_to_safe(name, opt)
            tensors.update(opt_tensors)
    _atomic_save(tensors, meta, path)
    return path


def read_sac_file(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON header and tensors of a file written by :func:`save_sac` (no unpickling)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ExpertError(f"{path}: no such expert file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        meta = json.loads(header["flowpolicy"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError) as err:
        raise ExpertError(f"{path}: not a flowpolicy SAC file ({err})") from None
    if meta.get("format") != FORMAT:
        raise ExpertError(f"{path}: unknown format {meta.get('format')!r} (expected {FORMAT})")
    return meta, tensors


class _SpacesOnly(gym.Env):
    """Carries the stored spaces into SAC's constructor; a loaded expert acts through ``predict``."""

    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        raise RuntimeError("a loaded expert has no environment; pass env= to load_sac to train it")

    def step(self, action):
        raise RuntimeError("a loaded expert has no environment; pass env= to load_sac to train it")


def load_sac(path: str | Path, env=None, device: str = "cpu", training_state: bool = False):
    """Rebuild an SB3 ``SAC`` from a :func:`save_sac` file: ``SAC("MlpPolicy", env, **settings)`` and the
    policy ``state_dict`` (strict). Without ``env`` the model can ``predict`` but not ``learn``.
    ``training_state`` also restores optimizers and the entropy coefficient (the file must hold them)."""
    from stable_baselines3 import SAC

    meta, tensors = read_sac_file(path)

    def box(prefix: str, dtype: str):
        low, high = tensors[f"{prefix}.low"].numpy(), tensors[f"{prefix}.high"].numpy()
        return gym.spaces.Box(low=low, high=high, dtype=np.dtype(dtype))

    try:
        obs_space = box("observation_space", meta["observation_dtype"])
        act_space = box("action_space", meta["action_dtype"])
        settings = dict(meta["settings"])
        freq, unit = settings.pop("train_freq")
        if env is None:
            env = _SpacesOnly(obs_space, act_space)
            settings["buffer_size"] = 1  # never filled: a loaded expert only acts
        else:
            from stable_baselines3.common.utils import check_for_correct_spaces

            check_for_correct_spaces(env, obs_space, act_space)
        model = SAC(meta["policy"], env, train_freq=(freq, unit), device=device,
                    policy_kwargs=_policy_kwargs_from_json(meta["policy_kwargs"]), **settings)
        policy_state = {k[len("policy."):]: v for k, v in tensors.items() if k.startswith("policy.")}
        model.policy.load_state_dict(policy_state, strict=True)
        model.num_timesteps = int(meta["num_timesteps"])
        model._n_updates = int(meta["n_updates"])
        model._episode_num = int(meta.get("episode_num", 0))
        if training_state:
            if "optimizers" not in meta:
                raise ExpertError(f"{path}: holds no training state (optimizers)")
            optimizers = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
            if "ent_coef" in meta["optimizers"]:
                with torch.no_grad():
                    model.log_ent_coef.copy_(tensors["log_ent_coef"])
                optimizers["ent_coef"] = model.ent_coef_optimizer
            for name, opt in optimizers.items():
                _optimizer_from_safe(name, opt, tensors, meta["optimizers"][name])
    except (KeyError, RuntimeError, TypeError) as err:
        if isinstance(err, RuntimeError) and "Error(s) in loading state_dict" not in str(err) \
                and "loaded state dict" not in str(err):
            raise
        raise ExpertError(f"{path}: corrupt or incompatible SAC file ({str(err).splitlines()[0]})") from None
    return model


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def snapshot_path(expert_dir: str | Path, steps: int) -> Path:
    return Path(expert_dir) / SNAPSHOT_DIR / f"sac_{steps}.safetensors"


def snapshot_steps(path: Path) -> int:
    return int(path.name.split(".")[0].split("_")[1])


def list_snapshots(expert_dir: str | Path) -> list[Path]:
    """The training snapshots of an expert directory, by env steps."""
    return sorted((Path(expert_dir) / SNAPSHOT_DIR).glob("sac_*.safetensors"), key=snapshot_steps)


# ---------------------------------------------------------------------------------------------------------
# rollouts, training, selection


def record_episodes(model, env_id: str, episodes: int, seed: int, deterministic: bool = False,
                    progress: bool = True) -> list[Episode]:
    """Roll out an SB3 model for ``episodes`` episodes (episode i reset with ``seed + i``; SAC's action noise
    drawn from a torch generator seeded with ``seed``, so the same seed gives the same episodes)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _record(model, env_id, episodes, seed, deterministic, progress)


def _record(model, env_id: str, episodes: int, seed: int, deterministic: bool, progress: bool) -> list[Episode]:
    env = gym.make(env_id)
    out = []
    bar = Progress(episodes, f"record {env_id}", "episodes", enabled=progress)
    for i in range(episodes):
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
        bar.update(1, postfix=f"return {float(np.sum(rewards)):.1f}")
    bar.close()
    env.close()
    return out


def evaluate_sac(model, env_id: str, episodes: int, seed: int) -> tuple[float, float]:
    """Mean and std of the deterministic return."""
    returns = episode_returns(record_episodes(model, env_id, episodes, seed, deterministic=True, progress=False))
    return float(returns.mean()), float(returns.std())


def validate_expert_config(config: ExpertConfig) -> None:
    for key in ("total_steps", "eval_every", "eval_episodes"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ExpertError(f"{key} must be an integer >= 1, got {value!r}")
    for key in ("learning_starts", "seed"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ExpertError(f"{key} must be an integer >= 0, got {value!r}")


def train_expert(env_id: str, out_dir: str | Path, config: ExpertConfig | None = None, resume: bool = True,
                 progress: bool = True) -> Path:
    """Train SAC on ``env_id`` for ``config.total_steps`` env steps into ``out_dir``; returns it.

    Every ``config.eval_every`` steps: a deterministic evaluation (``progress.csv``), a snapshot and the
    training state (``last.safetensors``). With ``resume`` an existing training state is continued."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    config = config or ExpertConfig()
    validate_expert_config(config)
    out = Path(out_dir)
    env = gym.make(env_id)  # an unknown id fails here, before anything is created on disk
    (out / SNAPSHOT_DIR).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # small nets, batch 256: one thread is fastest and leaves a core free
    start = time.time()
    if resume and (out / TRAIN_STATE_FILE).exists():
        model = load_sac(out / TRAIN_STATE_FILE, env=env, training_state=True)
        done_steps = int(model.num_timesteps)
    else:
        model = SAC("MlpPolicy", env, learning_starts=config.learning_starts, seed=config.seed, verbose=0)
        done_steps = 0
        (out / "progress.csv").write_text("env_steps,wall_s,return_mean,return_std\n")

    def save_all(steps: int) -> None:
        save_sac(model, snapshot_path(out, steps), env_id=env_id)
        save_sac(model, out / TRAIN_STATE_FILE, training_state=True, env_id=env_id)

    remaining = config.total_steps - done_steps
    bar = Progress(config.total_steps, f"SAC {env_id}" + (f" (resumed at {done_steps:,})" if done_steps else ""),
                   "env steps", enabled=progress and remaining > 0, initial=done_steps)

    class Periodic(BaseCallback):
        def _on_step(self) -> bool:
            returns = [info["r"] for info in self.model.ep_info_buffer or []]
            bar.update(1, postfix=f"return {np.mean(returns[-10:]):.1f}" if returns else None)
            if self.num_timesteps % config.eval_every == 0:
                mean, std = evaluate_sac(self.model, env_id, config.eval_episodes, seed=10_000)
                save_all(self.num_timesteps)
                with open(out / "progress.csv", "a") as f:
                    f.write(f"{self.num_timesteps},{time.time() - start:.1f},{mean:.1f},{std:.1f}\n")
            return True

    if remaining > 0:
        model.learn(remaining, callback=Periodic(), reset_num_timesteps=False)
        save_all(int(model.num_timesteps))
    bar.close()
    if not (out / MODEL_FILE).exists() or remaining > 0:
        save_sac(model, out / MODEL_FILE, env_id=env_id)
    finalize_expert(env_id, out, {"config": asdict(config), "wall_s_this_run": round(time.time() - start, 1)})
    return out


def finalize_expert(env_id: str, out_dir: str | Path, info: dict | None = None, candidates: int = 3) -> dict:
    """Make ``sac.safetensors`` the best policy SAC produced: the final model or one of the ``candidates``
    snapshots with the highest training-time evaluation, re-evaluated on the same 10 held-out episodes
    (SAC's return is not monotone in training steps). Writes and returns ``expert.json``."""
    import shutil

    out = Path(out_dir)
    rows = []
    with open(out / "progress.csv") as f:
        next(f)
        for line in f:
            steps, _, ret, _ = line.strip().split(",")
            if snapshot_path(out, int(steps)).exists():
                rows.append((float(ret), int(steps)))
    paths = [out / MODEL_FILE] + [snapshot_path(out, s) for _, s in sorted(rows)[-candidates:]]
    scored = []
    for path in paths:
        mean, std = evaluate_sac(load_sac(path), env_id, 10, seed=20_000)
        scored.append((mean, std, path))
    mean, std, best = max(scored, key=lambda item: item[0])
    trained = max([s for _, s in rows] + [int(read_sac_file(out / MODEL_FILE)[0]["num_timesteps"])])
    if best != out / MODEL_FILE:
        tmp = out / f".{MODEL_FILE}.tmp{os.getpid()}"
        shutil.copyfile(best, tmp)
        os.replace(tmp, out / MODEL_FILE)
    final_meta, _ = read_sac_file(out / MODEL_FILE)
    result = {"env_id": env_id, "algorithm": "SAC (stable-baselines3)", "format": FORMAT, **(info or {}),
              "env_steps_trained": trained,
              "expert_snapshot": best.name if best != out / MODEL_FILE else "final",
              "expert_env_steps": int(final_meta["num_timesteps"]),
              "candidates": {p.name: round(m, 1) for m, _, p in scored},
              "eval_return_mean": mean, "eval_return_std": std, "eval_episodes": 10}
    write_json_atomic(out / INFO_FILE, result)
    return result


# ---------------------------------------------------------------------------------------------------------
# one-off conversion of SB3 .zip experts (the only place that unpickles)


def convert_sb3_zip(zip_path: str | Path, out_path: str | Path, env_id: str | None = None,
                    check_observations: int = 256, seed: int = 0) -> float:
    """Convert an SB3 ``SAC`` ``.zip`` (UNPICKLES it: trusted files only) into :func:`save_sac`'s format
    and check that both give the same deterministic actions on ``check_observations`` observations drawn
    from the observation box (clipped to ±10 where it is unbounded) and, when ``env_id`` is given, on the
    observations of one episode of the old policy in that env. Returns the max abs action difference."""
    from stable_baselines3 import SAC

    old = SAC.load(zip_path, device="cpu")
    save_sac(old, out_path, env_id=env_id)
    new = load_sac(out_path)
    rng = np.random.default_rng(seed)
    space = old.observation_space
    low, high = np.maximum(space.low, -10.0), np.minimum(space.high, 10.0)
    obs = rng.uniform(low, high, size=(check_observations, *space.shape)).astype(space.dtype)
    if env_id is not None:
        visited = [e.observations for e in record_episodes(old, env_id, 1, seed, deterministic=True, progress=False)]
        obs = np.concatenate([obs, *[v.astype(space.dtype) for v in visited]])
    a_old, _ = old.predict(obs, deterministic=True)
    a_new, _ = new.predict(obs, deterministic=True)
    return float(np.max(np.abs(a_old - a_new)))


def convert_directory(expert_dir: str | Path, remove: bool = False) -> dict[str, float]:
    """Convert ``sac.zip`` and ``snapshots/sac_*.zip`` of an expert directory; returns the max abs action
    difference per file (conversion fails unless it is 0). ``remove`` deletes each zip after its check."""
    expert_dir = Path(expert_dir)
    info_path = expert_dir / INFO_FILE
    env_id = json.loads(info_path.read_text()).get("env_id") if info_path.exists() else None
    pairs = [(expert_dir / SB3_ZIP, expert_dir / MODEL_FILE)]
    pairs += [(p, p.with_suffix(".safetensors")) for p in sorted((expert_dir / SNAPSHOT_DIR).glob("sac_*.zip"))]
    results = {}
    for old, new in pairs:
        if not old.exists():
            continue
        diff = convert_sb3_zip(old, new, env_id=env_id)
        results[str(old)] = diff
        if diff != 0.0:
            new.unlink()
            raise ExpertError(f"{old}: converted actions differ by {diff:g}; conversion undone")
        if remove:
            old.unlink()
    if not results:
        raise ExpertError(f"{expert_dir}: no {SB3_ZIP} or {SNAPSHOT_DIR}/sac_*.zip to convert")
    if info_path.exists():  # names in expert.json stay as trained (history); the note says what changed
        info = json.loads(info_path.read_text())
        info["format"] = FORMAT
        info["converted"] = (f"{SB3_ZIP} and {SNAPSHOT_DIR}/*.zip converted to {MODEL_FILE} and "
                             f"{SNAPSHOT_DIR}/*.safetensors by python -m pretrain.expert --convert (identical "
                             f"deterministic actions); file names above are those of the training run")
        write_json_atomic(info_path, info)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", help="gymnasium env id, e.g. Hopper-v5")
    parser.add_argument("--out", help="expert directory to train into")
    parser.add_argument("--steps", type=int, default=ExpertConfig.total_steps,
                        help=f"SAC env-step budget (default {ExpertConfig.total_steps:,})")
    parser.add_argument("--snapshot-every", type=int, default=ExpertConfig.eval_every,
                        help=f"evaluate and snapshot every N env steps (default {ExpertConfig.eval_every:,})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="start over even if a training state exists")
    parser.add_argument("--finalize", action="store_true", help="only (re)select and evaluate the best snapshot")
    parser.add_argument("--convert", metavar="DIR", help="one-off: convert DIR's SB3 sac.zip and snapshots/*.zip "
                        "(UNPICKLES them: trusted files only) to safetensors, check actions match, delete the zips")
    parser.add_argument("--keep-zips", action="store_true", help="with --convert: keep the .zip files")
    args = parser.parse_args(argv)
    try:
        if args.convert:
            for path, diff in convert_directory(args.convert, remove=not args.keep_zips).items():
                print(f"{path}: converted; max abs deterministic action difference {diff:g}")
            return 0
        if not args.env or not args.out:
            parser.error("--env and --out are required (unless --convert)")
        if args.finalize:
            print(json.dumps(finalize_expert(args.env, args.out), indent=2))
            return 0
        out = train_expert(args.env, args.out, ExpertConfig(total_steps=args.steps, seed=args.seed,
                                                            eval_every=args.snapshot_every),
                           resume=not args.no_resume)
    except (ExpertError, gym.error.Error, OSError) as err:  # what a user can fix: one line, no traceback
        print(f"pretrain.expert: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    print((out / INFO_FILE).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
