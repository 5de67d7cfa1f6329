"""Training state for exact resume, without pickle: modules, optimizers and RNG states as safetensors,
everything else (iteration counters, optimizer hyperparameters, normalizer statistics) as JSON.

``training_state.safetensors`` + ``training_state.json`` sit next to the policy checkpoint of a run
(``checkpoints/last/``). Both are written atomically, JSON last.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from flowpolicy.checkpoint import CheckpointError, atomic_save_tensors, atomic_write_json

TENSORS = "training_state.safetensors"
META = "training_state.json"
FORMAT = "flowpolicy.training_state"
FORMAT_VERSION = 1


def save_training_state(directory: str | Path, modules: dict[str, nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], generators: dict[str, torch.Generator],
                        extra: dict, arrays: dict[str, torch.Tensor] | None = None) -> None:
    """``arrays`` are plain tensors of any shape (a replay buffer's contents), returned as they were."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "optimizers": {}, "extra": extra}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"module/{name}/{key}"] = value
    for name, opt in optimizers.items():
        state = opt.state_dict()
        scalars = {}
        for pid, per_param in state["state"].items():
            for key, value in per_param.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim/{name}/{pid}/{key}"] = value
                else:
                    scalars[f"{pid}/{key}"] = value
        meta["optimizers"][name] = {"param_groups": state["param_groups"], "scalars": scalars,
                                    "param_ids": sorted(state["state"])}
    for name, gen in generators.items():
        tensors[f"rng/{name}"] = gen.get_state()
    for name, array in (arrays or {}).items():
        tensors[f"array/{name}"] = array
    atomic_save_tensors(directory / TENSORS, tensors)
    atomic_write_json(directory / META, meta)


def load_training_state(directory: str | Path, modules: dict[str, nn.Module],
                        optimizers: dict[str, torch.optim.Optimizer], generators: dict[str, torch.Generator]
                        ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore what :func:`save_training_state` wrote into the given objects; returns ``(extra, arrays)``."""
    directory = Path(directory)
    meta_path, tensor_path = directory / META, directory / TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise CheckpointError(f"{directory}: no training state to resume from (need {META} and {TENSORS})")
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load_file(tensor_path)
    except (json.JSONDecodeError, SafetensorError, OSError) as err:
        raise CheckpointError(f"{directory}: corrupt training state ({err})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: not a flowpolicy training state of version {FORMAT_VERSION}")
    for name, module in modules.items():  # name the first tensor that does not fit, not torch's error dump
        for key, value in module.state_dict().items():
            saved = tensors.get(f"module/{name}/{key}")
            if saved is not None and saved.shape != value.shape:
                raise CheckpointError(f"{tensor_path}: module/{name}/{key} has shape {tuple(saved.shape)} in the "
                                      f"saved state but {tuple(value.shape)} in this run — was it started with "
                                      "other settings?")
    try:
        for name, module in modules.items():
            prefix = f"module/{name}/"
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        for name, opt in optimizers.items():
            saved = meta["optimizers"][name]
            state: dict = {int(pid): {} for pid in saved["param_ids"]}
            prefix = f"optim/{name}/"
            for key, value in tensors.items():
                if key.startswith(prefix):
                    pid, field = key[len(prefix):].split("/", 1)
                    state[int(pid)][field] = value
            for key, value in saved["scalars"].items():
                pid, field = key.split("/", 1)
                state[int(pid)][field] = value
            opt.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
        for name, gen in generators.items():
            gen.set_state(tensors[f"rng/{name}"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{directory}: training state does not match this run ({err})") from None
    arrays = {k[len("array/"):]: v for k, v in tensors.items() if k.startswith("array/")}
    return meta["extra"], arrays
