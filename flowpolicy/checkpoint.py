"""Policy checkpoints: a directory with ``model.safetensors`` (tensors) and ``policy.json`` (format
version, config, normalizers, metadata, and the expected tensor shapes).

Writes are atomic (temp file in the same directory + ``os.replace``) and the JSON is written last, so
a directory either holds a complete checkpoint or an old one. Loading never unpickles. Every problem —
missing, truncated, corrupt or mismatched files — is a :class:`CheckpointError` whose one-line message
names the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from flowpolicy.config import ConfigError, from_dict, to_dict
from flowpolicy.normalizers import ActionNormalizer, ObservationNormalizer
from flowpolicy.policy import Policy, PolicyConfig

FORMAT = "flowpolicy.policy"
FORMAT_VERSION = 1
CONFIG_FILE = "policy.json"
TENSOR_FILE = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except SafetensorError as err:  # e.g. a full disk: name the file, keep the previous one
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(f"{path}: could not be written ({' '.join(str(err).split())})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_policy(policy: Policy, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write ``policy`` to directory ``path`` (created if needed); returns the directory."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    state = policy.state_dict()
    atomic_save_tensors(directory / TENSOR_FILE, state, metadata={"format": FORMAT,
                                                                   "format_version": str(FORMAT_VERSION)})
    atomic_write_json(directory / CONFIG_FILE, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": to_dict(policy.config),
        "obs_normalizer": policy.obs_normalizer.to_dict(),
        "action_normalizer": policy.action_normalizer.to_dict(),
        "tensors": {name: list(t.shape) for name, t in state.items()},
        "metadata": metadata or {},
    })
    return directory


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (CONFIG_FILE, TENSOR_FILE):
        p = p.parent
    if not p.exists():
        raise CheckpointError(f"{p}: checkpoint not found")
    if not p.is_dir():
        raise CheckpointError(f"{p}: not a checkpoint directory (expected {CONFIG_FILE} and {TENSOR_FILE} in it)")
    return p


def read_policy_json(path: str | os.PathLike) -> dict:
    """The checkpoint's JSON, validated for format and version."""
    cfg_path = _checkpoint_dir(path) / CONFIG_FILE
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing (not a flowpolicy checkpoint, or an interrupted save)")
    try:
        meta = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{cfg_path}: corrupt or truncated JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg_path}: not a flowpolicy policy file (format {meta.get('format')!r})"
                              if isinstance(meta, dict) else f"{cfg_path}: not a flowpolicy policy file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{cfg_path}: format version {version!r}, this flowpolicy reads version "
                              f"{FORMAT_VERSION}")
    return meta


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Policy, dict]:
    """Load a policy saved by :func:`save_policy`; returns ``(policy, metadata)``."""
    directory = _checkpoint_dir(path)
    meta = read_policy_json(directory)
    cfg_path = directory / CONFIG_FILE
    try:
        config = from_dict(PolicyConfig, meta["config"])
        policy = Policy(config, ObservationNormalizer.from_dict(meta["obs_normalizer"]),
                        ActionNormalizer.from_dict(meta["action_normalizer"]))
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{cfg_path}: invalid policy description ({err})") from None

    tensor_path = directory / TENSOR_FILE
    if not tensor_path.is_file():
        raise CheckpointError(f"{tensor_path}: missing")
    try:
        state = load_file(tensor_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{tensor_path}: corrupt or truncated tensor file ({err})") from None

    expected = {name: tuple(t.shape) for name, t in policy.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        what = f"missing tensor {missing[0]}" if missing else f"unexpected tensor {extra[0]}"
        raise CheckpointError(f"{tensor_path}: does not match {CONFIG_FILE} ({what})")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CheckpointError(f"{tensor_path}: tensor {name} has shape {tuple(state[name].shape)}, "
                                  f"{CONFIG_FILE} implies {shape}")
    policy.load_state_dict(state)
    return policy.to(device), meta.get("metadata", {})
