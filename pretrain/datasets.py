"""Demonstration datasets: episodes in memory, Minari and robomimic-hdf5 files on disk, BC training samples.

An :class:`Episode` holds flat float32 arrays: T+1 observations (o_0 … o_T, the last being the final
observation), T actions and T rewards, plus how it ended (``terminated`` vs. ``truncated`` are kept apart,
as GAE needs). Everything else in the project reads demonstrations through this one type.

On disk there are two formats:

- **Minari** (our own datasets, ``flowpolicy collect``): written with ``minari.create_dataset_from_buffers``
  from ``EpisodeBuffer``s (Minari's ``DataCollector`` would need jax). Where things are stored:

  * episode reset seeds: Minari's own per-episode ``seed`` (``EpisodeBuffer.seed``, an attribute of each
    episode group in ``main_data.hdf5``), so Minari's tools see them too;
  * reference scores: Minari's ``ref_min_score``/``ref_max_score`` in ``data/metadata.json``. Minari takes
    them without evaluating anything when both are given (it only builds the eval env, which is local for
    MuJoCo tasks); given only ``ref_max_score`` it would roll out a random policy for 100 episodes, so a
    lone score is written into the same metadata keys directly, after creation;
  * the caller's ``metadata`` dict and the env id: under the key ``"flowpolicy"`` of ``data/metadata.json``;
  * provenance, in Minari's own keys: ``author``, ``author_email``, ``code_permalink`` (the flowpolicy
    version and git commit that wrote it) and ``requirements`` (pip requirements of the packages that made the
    env: gymnasium, mujoco and the suite's package, at the versions that recorded it); for tasks with a success
    signal, ``success_criterion``. The namespace (``flowpolicy/``) gets a ``namespace_metadata.json`` with a
    description. :func:`update_dataset_provenance` fills these into an existing dataset in place (only
    ``data/metadata.json`` changes, the recorded episodes stay byte-identical).

  Loading never downloads: a dataset id is looked up under ``data_dir``, else ``$MINARI_DATASETS_PATH``,
  else Minari's default ``~/.minari/datasets``.
- **robomimic hdf5** (read and write with h5py only; importing robomimic drags in CUDA torchvision), in
  robomimic's v1.5 layout: group ``data`` (attrs ``total``, ``env_args`` JSON — type 1 for robosuite, 2 for
  gym) with ``demo_<i>`` groups (attr ``num_samples``) holding ``actions``, ``rewards``, ``dones``,
  ``states`` and ``obs``/``next_obs`` groups of per-key arrays, and ``mask/<filter key>`` lists of demo names
  (``train``/``valid``). Episode seeds, when known, go into an extra ``seed`` attribute of each demo group
  and our env id into ``data.attrs["flowpolicy_env_id"]`` (robomimic ignores unknown attributes).

:func:`make_chunk_samples` turns episodes into (observation history, action chunk) pairs for behavior
cloning with the same padding the agent uses at run time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from flowpolicy.config import ConfigError


class DatasetError(ConfigError):
    """A problem with a demonstration dataset, phrased for the user in one line (a :class:`ConfigError`,
    so a ``ValueError`` too)."""


@dataclass
class Episode:
    """One demonstration: ``observations`` [T+1, obs_dim], ``actions`` [T, action_dim], ``rewards`` [T]."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    truncated: bool
    seed: int | None = None
    states: np.ndarray | None = None  # simulator states s_0 … s_{T−1} (robomimic's ``states``), when known

    def __post_init__(self):
        self.observations = np.asarray(self.observations, dtype=np.float32)
        self.actions = np.asarray(self.actions, dtype=np.float32)
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        self.terminated, self.truncated = bool(self.terminated), bool(self.truncated)
        self.seed = None if self.seed is None else int(self.seed)
        if self.observations.ndim != 2 or self.actions.ndim != 2 or self.rewards.ndim != 1:
            raise DatasetError(f"episode arrays must be observations [T+1, obs_dim], actions [T, action_dim], "
                               f"rewards [T]; got shapes {self.observations.shape}, {self.actions.shape}, "
                               f"{self.rewards.shape}")
        steps = self.actions.shape[0]
        if steps < 1 or self.observations.shape[0] != steps + 1 or self.rewards.shape[0] != steps:
            raise DatasetError(f"episode needs T ≥ 1 actions, T rewards and T+1 observations; got "
                               f"{self.actions.shape[0]}, {self.rewards.shape[0]} and {self.observations.shape[0]}")

        if self.states is not None:
            self.states = np.asarray(self.states, dtype=np.float64)
            if self.states.shape[0] != steps:
                raise DatasetError(f"episode has {steps} actions but {self.states.shape[0]} simulator states")

    @property
    def length(self) -> int:
        return self.actions.shape[0]


def episode_returns(episodes: list[Episode]) -> np.ndarray:
    """Undiscounted return of each episode, [n_episodes] float64."""
    return np.array([np.sum(ep.rewards, dtype=np.float64) for ep in episodes], dtype=np.float64)


def check_matches_env(episodes: list[Episode], obs_dim: int, action_dim: int, source: str, env_id: str) -> None:
    """Raise :class:`DatasetError` unless every episode has the env's observation and action sizes."""
    if not episodes:
        raise DatasetError(f"{source}: holds no episodes")
    for what, dims, expected in (("observations", {ep.observations.shape[1] for ep in episodes}, obs_dim),
                                 ("actions", {ep.actions.shape[1] for ep in episodes}, action_dim)):
        if dims != {expected}:
            found = "/".join(str(d) for d in sorted(dims))
            raise DatasetError(f"{source}: {what} have {found} dims but {env_id} has {expected}")


def same_env_id(a: str, b: str) -> bool:
    """Whether two env ids name the same env: equal, or ``module:EnvId`` vs. the registered ``EnvId``."""
    if a == b:
        return True
    a_name, b_name = a.rpartition(":")[2], b.rpartition(":")[2]
    return a_name == b_name and (":" not in a or ":" not in b)


def check_dataset_env(dataset_env_id: str | None, env_id: str, source: str, allow_mismatch: bool = False,
                      override: str = "allow_env_mismatch=true", dataset_env_kwargs: dict | None = None,
                      env_kwargs: dict | None = None) -> None:
    """Raise :class:`DatasetError` when a dataset recorded for another env is used for ``env_id`` — even when
    the dimensions agree (a Walker2d dataset for HalfCheetah) — or recorded with other env kwargs than
    ``env_kwargs`` (``flowpolicy collect --env-kwarg`` records them), unless ``allow_mismatch`` (deliberate
    cross-env use). A dataset that records no env id (no kwargs) cannot be checked for it and passes."""
    if allow_mismatch:
        return
    if dataset_env_id and not same_env_id(str(dataset_env_id), env_id):
        raise DatasetError(f"{source} was recorded on {dataset_env_id}, not {env_id}; use a dataset of {env_id} "
                           f"(or set {override} for deliberate cross-env use)")
    if isinstance(dataset_env_kwargs, dict) and dataset_env_kwargs != (env_kwargs or {}):
        raise DatasetError(f"{source} was recorded with env_kwargs {dataset_env_kwargs}, not {env_kwargs or {}}; "
                           f"make the env with the dataset's kwargs (or set {override} for deliberate use)")


def split_episodes(episodes: list[Episode], val_fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """Split whole episodes into (train, val) by a seeded permutation; train keeps at least one episode.

    The validation set gets ``round(val_fraction · n)`` episodes, at least one when ``val_fraction > 0``
    (a validation loss is worth an episode), capped at n − 1 (so it is empty for a single episode).
    Both parts keep the dataset's episode order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if not episodes:
        raise DatasetError("cannot split an empty list of episodes")
    n = len(episodes)
    n_val = min(max(int(round(val_fraction * n)), 1 if val_fraction > 0 else 0), n - 1)
    val_indices = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [ep for i, ep in enumerate(episodes) if i not in val_indices]
    val = [ep for i, ep in enumerate(episodes) if i in val_indices]
    return train, val


@dataclass
class ChunkSamples:
    """Behavior-cloning pairs: ``obs_history`` [N, n_obs_steps, obs_dim] → ``action_chunks`` [N, horizon, A]."""

    obs_history: np.ndarray
    action_chunks: np.ndarray

    def __len__(self) -> int:
        return self.obs_history.shape[0]


def make_chunk_samples(episodes: list[Episode], n_obs_steps: int, horizon: int) -> ChunkSamples:
    """One sample per time step t of every episode, padded the way the agent pads at run time.

    ``obs_history`` is o_{t−n_obs+1} … o_t, where indices before 0 repeat o_0 (the agent fills its history
    with the first observation at reset); ``action_chunks`` is a_t … a_{t+H−1}, where indices past the last
    action repeat it. Padding is per episode, so no sample mixes two episodes.
    """
    if n_obs_steps < 1 or horizon < 1:
        raise DatasetError(f"n_obs_steps and horizon must be ≥ 1, got {n_obs_steps} and {horizon}")
    if not episodes:
        raise DatasetError("cannot make training samples from an empty list of episodes")
    obs_offsets = np.arange(-n_obs_steps + 1, 1)
    action_offsets = np.arange(horizon)
    histories, chunks = [], []
    for ep in episodes:
        steps = np.arange(ep.length)[:, None]
        histories.append(ep.observations[np.maximum(steps + obs_offsets, 0)])
        chunks.append(ep.actions[np.minimum(steps + action_offsets, ep.length - 1)])
    return ChunkSamples(np.concatenate(histories).astype(np.float32, copy=False),
                        np.concatenate(chunks).astype(np.float32, copy=False))


# ---------------------------------------------------------------------------------------------- Minari

_OUR_METADATA_KEY = "flowpolicy"
DATASET_AUTHOR = "flowpolicy maintainers"
DATASET_AUTHOR_EMAIL = "maintainers@users.noreply.r-seed-3222457e.example"  # the project's commit identity
NAMESPACE_DESCRIPTION = ("Demonstration datasets recorded by flowpolicy (`flowpolicy collect`): SAC experts and "
                         "suite demonstrators on gymnasium tasks, with reference scores for normalized returns.")
# Keys that load_minari_dataset fills itself; a caller's metadata may not shadow them.
_RESERVED_METADATA_KEYS = frozenset({
    "dataset_id", "path", "env_id", "seeds", "total_episodes", "total_steps", "ref_min_score", "ref_max_score",
    "algorithm_name", "description", "minari_version",
})
_MINARI_DEFAULT_ROOT = Path("~/.minari/datasets")


@contextmanager
def _minari_datasets_path(root: Path):
    """Point Minari at ``root`` for the duration of a call, restoring the caller's setting afterwards."""
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _jsonable(value, what: str):
    def convert(obj):
        if isinstance(obj, np.generic | np.ndarray):
            return obj.tolist()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"{type(obj).__name__} is not JSON-serializable")

    try:
        return json.loads(json.dumps(value, default=convert))
    except (TypeError, ValueError) as err:
        raise DatasetError(f"{what}: {err}") from None


def _check_minari_dataset_id(dataset_id: str) -> None:
    # Minari parses ids as (namespace/)name-v<version> and fails with a TypeError when the version is missing.
    if not re.fullmatch(r"(?:[-_\w][-_\w/]*[-_\w]+/)?[-_.\w]+-v\d+", dataset_id):
        raise DatasetError(f"Minari dataset id {dataset_id!r} must look like '(namespace/)name-v<version>', "
                           f"e.g. 'flowpolicy/hopper-expert-v0'")


def _flat_box_space(space, env_id: str):
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box) and len(space.shape) == 1:
        return space
    try:
        return gym.spaces.flatten_space(space)
    except NotImplementedError:
        raise DatasetError(f"{env_id}: space {space} cannot be flattened into the vectors episodes hold") from None


def _flag_on_last_step(length: int, flag: bool) -> np.ndarray:
    """Minari's per-step terminations/truncations: an episode can only end on its last step."""
    flags = np.zeros(length, dtype=bool)
    flags[-1] = flag
    return flags


def code_permalink() -> str:
    """What wrote a dataset: the flowpolicy version, and the git commit when run from a checkout. (The project
    has no public repository URL yet; this string is what Minari's ``code_permalink`` holds until it has.)"""
    import subprocess

    from flowpolicy import __version__

    text = f"flowpolicy {__version__}"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{text} (git {commit})" if re.fullmatch(r"[0-9a-f]{40}", commit) else text


def dataset_requirements(env_id: str) -> list[str]:
    """pip requirements that made ``env_id``'s env, at the installed versions: gymnasium, mujoco and, for a
    suite id (see :data:`envs.registry.SUITE_MODULES`) or a ``module:`` id, that module's distribution."""
    import importlib.metadata as md

    from envs.registry import SUITE_MODULES

    def pin(dist: str) -> str | None:
        try:
            return f"{dist}=={md.version(dist)}"
        except md.PackageNotFoundError:
            return None

    modules = [module for prefix, (module, _) in SUITE_MODULES.items() if env_id.startswith(prefix)]
    if ":" in env_id:
        modules.append(env_id.partition(":")[0].split(".")[0])
    dists = ["gymnasium", "mujoco"]
    packages = md.packages_distributions()
    for module in modules:
        dists += [d for d in packages.get(module, []) if d not in dists]
    return [r for r in map(pin, dists) if r is not None]


def dataset_provenance(env_id: str, requirements: list[str] | None = None) -> dict:
    """Minari's provenance keys for a dataset flowpolicy writes (author, e-mail, code, requirements)."""
    return {"author": {DATASET_AUTHOR}, "author_email": {DATASET_AUTHOR_EMAIL}, "code_permalink": code_permalink(),
            "requirements": requirements if requirements is not None else dataset_requirements(env_id)}


def ensure_namespace_metadata(root: str | Path, dataset_id: str) -> None:
    """Give the dataset's namespace (``flowpolicy`` of ``flowpolicy/hopper-medium-v0``) a description in its
    ``namespace_metadata.json`` when it has none (an existing description is kept)."""
    namespace = dataset_id.rpartition("/")[0]
    if not namespace:
        return
    path = Path(root) / namespace / "namespace_metadata.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    if current.get("description"):
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**current, "description": NAMESPACE_DESCRIPTION}, indent=1) + "\n")
    tmp.replace(path)


def update_dataset_provenance(dataset_dir: str | Path, requirements: list[str] | None = None,
                              success_criterion: str | None = None, code: str | None = None) -> dict:
    """Fill the provenance keys (see the module docstring) into the existing Minari dataset at ``dataset_dir``
    (the directory holding ``data/``), in place: only ``data/metadata.json`` is rewritten. ``requirements`` and
    ``code`` default to what is installed / checked out now; pass what recorded the dataset when known.
    Returns the keys."""
    from minari.dataset.minari_storage import MinariStorage

    data_path = Path(dataset_dir) / "data"
    if not _holds_minari_data(data_path):
        raise DatasetError(f"{dataset_dir}: not a Minari dataset directory (no data/metadata.json + main_data.hdf5)")
    meta = MinariStorage.read_raw_metadata(data_path)
    env_id = json.loads(meta["env_spec"])["id"] if meta.get("env_spec") else ""
    update = dataset_provenance(env_id, requirements)
    if code:
        update["code_permalink"] = code
    if success_criterion:
        update["success_criterion"] = success_criterion
    MinariStorage.read(data_path).update_metadata(update)
    dataset_id = meta.get("dataset_id", "")
    if dataset_id.count("/"):
        ensure_namespace_metadata(Path(dataset_dir).resolve().parents[dataset_id.count("/")], dataset_id)
    return update


def write_minari_dataset(dataset_id: str, env_id: str, episodes: list[Episode], data_dir: str | Path,
                         metadata: dict | None = None, ref_min_score: float | None = None,
                         ref_max_score: float | None = None, algorithm_name: str = "",
                         description: str = "", success_criterion: str | None = None) -> Path:
    """Write ``episodes`` as the local Minari dataset ``data_dir/dataset_id``; returns that directory.

    The episodes must match ``env_id``'s (flattened) observation and action sizes. Seeds, reference scores
    and ``metadata`` (a JSON-able dict) are stored as described in the module docstring and come back from
    :func:`load_minari_dataset`. Provenance (author, e-mail, code, requirements) and, for a task with a
    success signal, ``success_criterion`` (e.g. "info['is_success'] at any step") go into Minari's metadata.
    An existing dataset is never overwritten; a failed write removes what it created.
    """
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    _check_minari_dataset_id(dataset_id)
    user_metadata = _jsonable(dict(metadata or {}), f"metadata of dataset {dataset_id}")
    shadowed = sorted(_RESERVED_METADATA_KEYS.intersection(user_metadata))
    if shadowed:
        raise DatasetError(f"metadata of dataset {dataset_id}: keys {shadowed} are reserved (filled on load)")
    root = Path(data_dir).expanduser().resolve()
    dataset_dir = root / dataset_id
    if dataset_dir.exists():
        raise DatasetError(f"{dataset_dir} already exists; choose another dataset id or delete it")

    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise DatasetError(f"unknown environment {env_id!r}: {err}") from None
    try:
        observation_space = _flat_box_space(env.observation_space, env_id)
        action_space = _flat_box_space(env.action_space, env_id)
        check_matches_env(episodes, observation_space.shape[0], action_space.shape[0],
                          f"dataset {dataset_id}", env_id)
        buffers = [
            EpisodeBuffer(
                seed=ep.seed,
                observations=ep.observations,
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=_flag_on_last_step(ep.length, ep.terminated),
                truncations=_flag_on_last_step(ep.length, ep.truncated),
            )
            for ep in episodes
        ]
        both_scores = ref_min_score is not None and ref_max_score is not None
        root.mkdir(parents=True, exist_ok=True)
        try:
            provenance = dataset_provenance(env_id)
            with _minari_datasets_path(root):
                dataset = minari.create_dataset_from_buffers(
                    dataset_id, buffers, env=env, eval_env=env.spec,
                    observation_space=observation_space, action_space=action_space,
                    ref_min_score=float(ref_min_score) if both_scores else None,
                    ref_max_score=float(ref_max_score) if both_scores else None,
                    algorithm_name=algorithm_name, description=description, author=provenance["author"],
                    author_email=provenance["author_email"], code_permalink=provenance["code_permalink"],
                    requirements=provenance["requirements"],
                )
                extra = {_OUR_METADATA_KEY: {"env_id": env_id, "metadata": user_metadata}}
                if success_criterion:
                    extra["success_criterion"] = success_criterion
                if not both_scores:
                    extra.update({key: float(score) for key, score in
                                  (("ref_min_score", ref_min_score), ("ref_max_score", ref_max_score))
                                  if score is not None})
                dataset.storage.update_metadata(extra)
            ensure_namespace_metadata(root, dataset_id)
        except BaseException:
            shutil.rmtree(dataset_dir, ignore_errors=True)
            raise
    finally:
        env.close()
    return dataset_dir


def _holds_minari_data(directory: Path) -> bool:
    return (directory / "metadata.json").is_file() and (directory / "main_data.hdf5").is_file()


def _find_minari_data(dataset_id_or_path: str | Path, data_dir: str | Path | None) -> Path:
    """The ``data`` directory of a local dataset given by id (under the datasets root) or by path."""
    candidates = []
    if isinstance(dataset_id_or_path, str):
        if data_dir is not None:
            root = Path(data_dir)
        elif os.environ.get("MINARI_DATASETS_PATH"):
            root = Path(os.environ["MINARI_DATASETS_PATH"])
        else:
            root = _MINARI_DEFAULT_ROOT
        candidates.append(root.expanduser() / dataset_id_or_path)
    as_path = Path(dataset_id_or_path).expanduser()
    if as_path not in candidates:
        candidates.append(as_path)
    for candidate in candidates:
        for data_path in (candidate / "data", candidate):
            if _holds_minari_data(data_path):
                return data_path
    looked = " and ".join(str(c.resolve()) for c in candidates)
    raise DatasetError(f"no local Minari dataset {str(dataset_id_or_path)!r}: looked in {looked} "
                       f"(datasets are never downloaded; make one with `flowpolicy collect`)")


def _flat_observations(observations) -> np.ndarray:
    if isinstance(observations, dict):  # Dict spaces: concatenate keys in sorted order, as gymnasium flattens
        parts = [_flat_observations(observations[key]) for key in sorted(observations)]
        return np.concatenate(parts, axis=1)
    if isinstance(observations, tuple | list):
        return np.concatenate([_flat_observations(part) for part in observations], axis=1)
    array = np.asarray(observations)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise DatasetError(f"observations of dtype {array.dtype} are not numeric vectors")
    return array.reshape(array.shape[0], -1)


def load_minari_dataset(dataset_id_or_path: str | Path, data_dir: str | Path | None = None
                        ) -> tuple[list[Episode], dict]:
    """Load a local Minari dataset (never downloads) into episodes plus a metadata dict.

    ``dataset_id_or_path`` is an id looked up under ``data_dir`` (else ``$MINARI_DATASETS_PATH``, else
    ``~/.minari/datasets``), or a dataset directory (the one holding ``data/``, or ``data/`` itself). The
    metadata holds ``dataset_id``, ``path`` (the dataset directory), ``env_id``, ``seeds`` (one per episode,
    None where unknown), ``total_episodes``, ``total_steps``, ``ref_min_score``/``ref_max_score`` (None when
    absent), ``algorithm_name``, ``description``, ``minari_version`` and every key of the ``metadata`` given
    to :func:`write_minari_dataset`.
    """
    import minari

    data_path = _find_minari_data(dataset_id_or_path, data_dir)
    source = str(data_path.parent)
    try:
        dataset = minari.MinariDataset(data_path)
        raw = dataset.storage.metadata
        episode_metadata = list(dataset.storage.get_episode_metadata(dataset.episode_indices))
        episodes = []
        for data, info in zip(dataset.iterate_episodes(), episode_metadata, strict=True):
            episodes.append(Episode(
                observations=_flat_observations(data.observations),
                actions=np.asarray(data.actions).reshape(len(data), -1),
                rewards=data.rewards,
                terminated=bool(data.terminations[-1]),
                truncated=bool(data.truncations[-1]),
                seed=info.get("seed"),
            ))
    except DatasetError as err:
        raise DatasetError(f"{source}: {err}") from None
    except (OSError, KeyError, ValueError, AssertionError) as err:
        raise DatasetError(f"{source}: cannot read Minari dataset: {err}") from None

    ours = raw.get(_OUR_METADATA_KEY, {})
    env_id = dataset.env_spec.id if dataset.env_spec is not None else ours.get("env_id")
    info = dict(ours.get("metadata", {}))
    info.update({
        "dataset_id": dataset.id,
        "path": source,
        "env_id": env_id,
        "seeds": [ep.seed for ep in episodes],
        "total_episodes": len(episodes),
        "total_steps": int(sum(ep.length for ep in episodes)),
        "ref_min_score": raw.get("ref_min_score"),
        "ref_max_score": raw.get("ref_max_score"),
        "algorithm_name": raw.get("algorithm_name", ""),
        "description": raw.get("description", ""),
        "minari_version": dataset.minari_version,
    })
    return episodes, info


# --------------------------------------------------------------------------------------- robomimic hdf5

_ROBOMIMIC_GYM_ENV_TYPE = 2  # robomimic's EnvType.GYM_TYPE
_ROBOMIMIC_ROBOSUITE_ENV_TYPE = 1  # robomimic's EnvType.ROBOSUITE_TYPE
ROBOMIMIC_LOW_DIM_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
_OUR_ENV_ID_ATTR = "flowpolicy_env_id"  # extra attribute of /data (robomimic ignores unknown attributes)


def _demo_order(name: str) -> tuple[int, str]:
    match = re.fullmatch(r"demo_(\d+)", name)
    return (int(match.group(1)), name) if match else (-1, name)


def _split_obs_keys(obs_keys, obs_dim: int, obs_key: str, path: Path) -> dict[str, int]:
    if obs_keys is None:
        return {obs_key: obs_dim}
    keys = dict(obs_keys)
    if not keys or sum(keys.values()) != obs_dim:
        raise DatasetError(f"{path}: obs_keys {keys} do not add up to the observations' {obs_dim} dims")
    return keys


def _filter_key_demos(filter_keys, val_fraction, split_seed: int, names: list[str], path: Path) -> dict:
    """``{filter key: [demo names]}`` from explicit ``filter_keys`` (episode indices or demo names) and/or
    a seeded ``train``/``valid`` split by ``val_fraction`` (robomimic's ``split_train_val.py`` names)."""
    masks: dict[str, list[str]] = {}
    if val_fraction is not None:
        n = len(names)
        if not 0.0 <= val_fraction < 1.0:
            raise DatasetError(f"{path}: val_fraction must be in [0, 1), got {val_fraction}")
        n_val = min(max(int(round(val_fraction * n)), 1 if val_fraction > 0 else 0), n - 1)
        val = set(np.random.default_rng(split_seed).permutation(n)[:n_val].tolist())
        masks["train"] = [name for i, name in enumerate(names) if i not in val]
        masks["valid"] = [name for i, name in enumerate(names) if i in val]
    for key, members in (filter_keys or {}).items():
        if not re.fullmatch(r"[\w.-]+", str(key)):
            raise DatasetError(f"{path}: filter key {key!r} must be letters, digits, '_', '.' or '-'")
        chosen = []
        for member in members:
            name = names[member] if isinstance(member, int | np.integer) and 0 <= member < len(names) else member
            if name not in names:
                raise DatasetError(f"{path}: filter key {key!r} names {member!r}, which is not a demo of this file")
            chosen.append(name)
        masks[str(key)] = chosen
    return masks


def write_robomimic_hdf5(path: str | Path, episodes: list[Episode], env_id: str, obs_key: str = "state", *,
                         obs_keys: dict[str, int] | None = None, env_args: dict | None = None,
                         filter_keys: dict | None = None, val_fraction: float | None = None, split_seed: int = 0,
                         next_obs: bool = True, compression: str | None = None,
                         attrs: dict | None = None) -> Path:
    """Write ``episodes`` in robomimic's v1.5 layout; returns ``path``.

    - ``/data`` attrs: ``total`` (steps), ``env_args`` (JSON: ``env_args`` when given — type 1 for robosuite —,
      else a gym env, type 2, named ``env_id``) and ``flowpolicy_env_id`` (``env_id``; robomimic ignores it);
    - ``/data/demo_<i>``: attrs ``num_samples`` (and ``seed`` when known); ``actions``, ``rewards``, ``dones``
      (1 only on the last step of a terminated episode), ``obs/<key>``, ``next_obs/<key>`` (unless
      ``next_obs=False``) and ``states`` when the episodes carry simulator states;
    - observations are split into ``obs_keys`` (ordered ``{key: dims}``, e.g. robomimic's low-dim keys), or
      written whole under ``obs_key``;
    - ``/mask/<filter key>``: demo names as byte strings, as robomimic's ``split_train_val.py`` writes them —
      ``train``/``valid`` from a seeded split when ``val_fraction`` is given, plus any ``filter_keys``
      (``{name: [episode index or demo name]}``).

    ``attrs`` (JSON-able values) become extra ``/data`` attributes (dicts and lists as JSON text).
    Arrays are float64 (dones int64), as robomimic stores them; ``compression`` (e.g. ``"gzip"``) is an h5py
    filter every HDF5 reader undoes transparently. Written to a temporary file and renamed, so an interrupted
    write leaves no half file at ``path``.
    """
    path = Path(path)
    if not episodes:
        raise DatasetError(f"{path}: refusing to write a dataset with no episodes")
    obs_dim = episodes[0].observations.shape[1]
    if any(ep.observations.shape[1] != obs_dim for ep in episodes):
        raise DatasetError(f"{path}: episodes have different observation sizes")
    keys = _split_obs_keys(obs_keys, obs_dim, obs_key, path)
    names = [f"demo_{i}" for i in range(len(episodes))]
    masks = _filter_key_demos(filter_keys, val_fraction, split_seed, names, path)
    args = env_args if env_args is not None else {"env_name": env_id, "type": _ROBOMIMIC_GYM_ENV_TYPE,
                                                  "env_kwargs": {}}
    options = {"compression": compression} if compression else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")

    def put(group, name, values, dtype=np.float64):
        group.create_dataset(name, data=np.asarray(values, dtype=dtype), **options)

    def put_obs(group, observations):
        start = 0
        for key, dim in keys.items():
            put(group, key, observations[:, start:start + dim])
            start += dim

    try:
        with h5py.File(temporary, "w") as file:
            data = file.create_group("data")
            data.attrs["total"] = int(sum(ep.length for ep in episodes))
            data.attrs["env_args"] = json.dumps(_jsonable(args, f"{path}: env_args"))
            data.attrs[_OUR_ENV_ID_ATTR] = env_id
            for key, value in _jsonable(dict(attrs or {}), f"{path}: attrs").items():
                data.attrs[key] = json.dumps(value) if isinstance(value, dict | list) or value is None else value
            for name, ep in zip(names, episodes, strict=True):
                demo = data.create_group(name)
                demo.attrs["num_samples"] = ep.length
                if ep.seed is not None:
                    demo.attrs["seed"] = ep.seed
                put(demo, "actions", ep.actions)
                put(demo, "rewards", ep.rewards)
                dones = np.zeros(ep.length, dtype=np.int64)
                dones[-1] = int(ep.terminated)
                put(demo, "dones", dones, np.int64)
                if ep.states is not None:
                    put(demo, "states", ep.states)
                put_obs(demo.create_group("obs"), ep.observations[:-1])
                if next_obs:
                    put_obs(demo.create_group("next_obs"), ep.observations[1:])
            for key, members in masks.items():
                file.create_dataset(f"mask/{key}", data=np.array(members, dtype="S"))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _member(group: h5py.Group, key: str, path: Path):
    if key not in group:
        raise DatasetError(f"{path}: {group.name} has no {key!r}")
    return group[key]


def _stacked_observations(group: h5py.Group, obs_keys: list[str], path: Path, rows: slice) -> np.ndarray:
    parts = []
    for key in obs_keys:
        if key not in group:
            raise DatasetError(f"{path}: {group.name} has no observation key {key!r} "
                               f"(it has: {', '.join(sorted(group.keys())) or 'none'})")
        values = np.asarray(group[key][rows], dtype=np.float32)
        parts.append(values.reshape(values.shape[0], -1))
    return np.concatenate(parts, axis=1)


def _robomimic_env_id(env_args: dict, recorded: str | None) -> str | None:
    """The env id a robomimic file is for: ours when recorded, our gymnasium id for a robosuite task
    (``Lift`` → ``RobomimicLift-v0``), else ``env_args["env_name"]``."""
    if recorded:
        return str(recorded)
    name = env_args.get("env_name")
    if env_args.get("type") == _ROBOMIMIC_ROBOSUITE_ENV_TYPE and name:
        from envs.robosuite_tasks import gym_id_for  # registers ids only; robosuite is not imported

        return gym_id_for(name) or name
    return name


def _mask_names(file: h5py.File) -> dict[str, list[str]]:
    if "mask" not in file:
        return {}
    return {key: [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(file["mask"][key][()]).ravel()]
            for key in file["mask"].keys()}


def read_robomimic_hdf5(path: str | Path, obs_keys: list[str] | None = None,
                        filter_key: str | None = None) -> tuple[list[Episode], dict]:
    """Read a robomimic hdf5 file into episodes (observations = concatenated ``obs_keys``) and metadata.

    ``obs_keys`` defaults to robomimic's low-dim keys in robomimic's order (``robot0_eef_pos``,
    ``robot0_eef_quat``, ``robot0_gripper_qpos``, ``object``) for a robosuite file that has them, else to all
    keys of the first demo's ``obs`` group, sorted. ``filter_key`` reads only the demos listed in
    ``mask/<filter_key>`` (e.g. ``train``/``valid``), as robomimic's ``SequenceDataset`` does. o_T is
    ``next_obs[-1]``; a file without ``next_obs`` (robomimic's ``obs``-only files) repeats o_{T−1} as o_T
    (exact for behavior cloning, which never reads o_T; metadata ``next_obs`` says False). An episode whose
    last ``dones`` is 1 is terminated, otherwise truncated; missing ``rewards`` read as zeros, missing
    ``dones`` as truncated; ``states`` come back in :attr:`Episode.states`.

    The metadata holds ``env_id`` (see :func:`_robomimic_env_id`), ``env_name``, ``env_args``, ``obs_keys``,
    ``seeds`` (None where the file has none), ``demos`` (names, in order), ``filter_key``, ``filter_keys``
    (``{key: [indices into the returned episodes]}`` for every mask of the file whose demos were read),
    ``next_obs``, ``total`` and ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"robomimic dataset {path} not found")
    try:
        file = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"{path}: not a readable hdf5 file ({err})") from None
    with file:
        data = _member(file, "data", path)
        try:
            env_args = json.loads(data.attrs["env_args"])
        except KeyError:
            raise DatasetError(f"{path}: /data has no attribute 'env_args'") from None
        except (TypeError, json.JSONDecodeError) as err:
            raise DatasetError(f"{path}: /data attribute 'env_args' is not JSON ({err})") from None
        masks = _mask_names(file)
        if filter_key is not None:
            if filter_key not in masks:
                raise DatasetError(f"{path}: no filter key {filter_key!r} (mask/ has: "
                                   f"{', '.join(sorted(masks)) or 'nothing'})")
            demo_names = sorted(masks[filter_key], key=_demo_order)
            missing = [name for name in demo_names if name not in data]
            if missing:
                raise DatasetError(f"{path}: mask/{filter_key} names {missing[0]!r}, which is not in /data")
        else:
            demo_names = sorted((name for name in data.keys() if name.startswith("demo_")), key=_demo_order)
        if not demo_names:
            raise DatasetError(f"{path}: /data holds no demo_<i> groups"
                               + (f" in mask/{filter_key}" if filter_key is not None else ""))
        if obs_keys is None:
            available = _member(data[demo_names[0]], "obs", path).keys()
            if env_args.get("type") == _ROBOMIMIC_ROBOSUITE_ENV_TYPE and set(ROBOMIMIC_LOW_DIM_KEYS) <= set(available):
                obs_keys = list(ROBOMIMIC_LOW_DIM_KEYS)
            else:
                obs_keys = sorted(available)
        obs_keys = list(obs_keys)
        if not obs_keys:
            raise DatasetError(f"{path}: no observation keys to read")
        episodes, all_next_obs = [], True
        for name in demo_names:
            demo = data[name]
            actions = np.asarray(_member(demo, "actions", path)[()], dtype=np.float32)
            steps = actions.shape[0]
            first = _stacked_observations(_member(demo, "obs", path), obs_keys, path, slice(None))
            if "next_obs" in demo:
                final = _stacked_observations(demo["next_obs"], obs_keys, path, slice(-1, None))
            else:
                final, all_next_obs = first[-1:], False
            dones = np.asarray(demo["dones"][()]) if "dones" in demo else np.zeros(steps, dtype=np.int64)
            rewards = np.asarray(demo["rewards"][()]).reshape(-1) if "rewards" in demo else np.zeros(steps)
            if first.shape[0] != steps or dones.shape[0] != steps:
                raise DatasetError(f"{path}: {demo.name} has {steps} actions but {first.shape[0]} observations "
                                   f"and {dones.shape[0]} dones")
            seed = demo.attrs.get("seed")
            terminated = steps > 0 and bool(dones[-1])
            try:
                episodes.append(Episode(
                    observations=np.concatenate([first, final]),
                    actions=actions.reshape(steps, -1),
                    rewards=rewards,
                    terminated=terminated,
                    truncated=not terminated,
                    seed=None if seed is None else int(seed),
                    states=np.asarray(demo["states"][()]) if "states" in demo else None,
                ))
            except DatasetError as err:
                raise DatasetError(f"{path}: {demo.name}: {err}") from None
        total = data.attrs.get("total")
        recorded_id = data.attrs.get(_OUR_ENV_ID_ATTR)
    position = {name: i for i, name in enumerate(demo_names)}
    info = {
        "env_id": _robomimic_env_id(env_args, recorded_id),
        "env_name": env_args.get("env_name"),
        "env_args": env_args,
        "obs_keys": obs_keys,
        "seeds": [ep.seed for ep in episodes],
        "demos": demo_names,
        "filter_key": filter_key,
        "filter_keys": {key: [position[n] for n in names if n in position] for key, names in masks.items()},
        "next_obs": all_next_obs,
        "total": int(total) if total is not None and filter_key is None else int(sum(ep.length for ep in episodes)),
        "path": str(path),
    }
    return episodes, info
