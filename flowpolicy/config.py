"""Typed configuration: dataclasses filled from YAML/JSON dicts and ``key=value`` overrides.

Unknown keys, wrong types and out-of-range values are one-line errors that name the dotted key; nothing is
silently ignored, and 0 is a value, never "unset". Every default lives in a dataclass (or the YAML file that
fills it), nowhere else. A field documents and bounds itself with :func:`param`::

    num_envs: int = param(16, "parallel envs in rollouts", ge=1)
    reduction: Literal["mean", "sum"] = param("mean", "how chain log-probs are reduced")

:func:`describe` turns a config class into the table ``flowpolicy config ALGORITHM`` prints. A dataclass may
add rules across fields in ``__post_init__`` (raising :class:`ConfigError`, e.g. "``critic_lr`` applies only
with ``advantages: gae``") — :func:`from_dict` prefixes its message with the section.

Why not tyro or draccus: both build a CLI from the dataclass, which we already have in ~200 lines with the
YAML + dotted-override model users know from the anchors' Hydra configs; neither validates ranges, and a
dependency for this is not worth it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, TypeVar

T = TypeVar("T")

_BOUNDS = {"ge": (lambda v, b: v >= b, "≥"), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "≤"), "lt": (lambda v, b: v < b, "<")}


class ConfigError(ValueError):
    """A configuration problem, phrased for the user in one line."""


def param(default: Any = dataclasses.MISSING, doc: str = "", *, default_factory: Any = dataclasses.MISSING,
          ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
          renamed_from: str | None = None):
    """A dataclass field with a one-line ``doc`` and optional bounds (checked by :func:`from_dict`; ``None``
    values are not bounded). ``renamed_from`` accepts an old spelling of the key with a warning."""
    metadata = {"doc": doc, "bounds": {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt))
                                       if v is not None}, "renamed_from": renamed_from}
    if isinstance(default, list | dict):  # a mutable default would be shared between instances
        value = default
        default_factory = lambda: type(value)(value)  # noqa: E731
        default = dataclasses.MISSING
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def redefault(cls, name: str, default: Any):
    """The field ``name`` of config class ``cls`` with another default (doc and bounds kept), for a subclass
    that presets a method: ``sampler: Sampler = redefault(GRPOConfig, "sampler", "cps")``."""
    metadata = cls.__dataclass_fields__[name].metadata
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _describe(tp) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (Any,)
        return f"list of {_describe(item)}"
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str):
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{key}: expected {' or '.join(_describe(a) for a in args)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = f"{prefix}." if prefix else ""
    data = dict(data)
    for f in fields.values():  # old spellings, accepted for one release
        old = f.metadata.get("renamed_from")
        if old and old in data:
            if f.name in data:
                raise ConfigError(f"{where}{old} and {where}{f.name} are the same setting; give only {f.name}")
            _warn(f"config key {where}{old} is now {where}{f.name}; the old name will stop working in the next "
                  "release")
            data[f.name] = data.pop(old)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {where}{unknown[0]!s} (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{where}{name}"
        kwargs[name] = _coerce(value, hints[name], key)
        _check_bounds(kwargs[name], fields[name].metadata.get("bounds") or {}, key)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{prefix or cls.__name__}: {err}") from None
    except ValueError as err:  # a rule of the dataclass itself (__post_init__): a config error by construction
        raise ConfigError(f"{where}{err}" if prefix else str(err)) from None


def _check_bounds(value, bounds: dict, key: str) -> None:
    if value is None or not bounds:
        return
    for item in value if isinstance(value, list | tuple) else [value]:
        for name, bound in bounds.items():
            ok, symbol = _BOUNDS[name]
            if not ok(item, bound):
                raise ConfigError(f"{key}: must be {symbol} {bound:g}, got {item!r}")


def check_device(device: str, key: str = "device") -> None:
    """A torch device that exists on this machine (``cuda`` without CUDA is a one-line error, not a traceback
    from deep inside the first ``.to()``)."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"{key}: {device!r} is not a torch device ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {device!r} requested but CUDA is not available on this machine (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps' requested but MPS is not available on this machine")


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, FutureWarning, stacklevel=3)


def describe(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Every key of config class ``cls`` (nested dataclasses flattened to dotted keys) as
    ``(key, type, default, doc)`` rows."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{key}.")
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        doc = f.metadata.get("doc", "")
        bounds = f.metadata.get("bounds") or {}
        if bounds:
            doc += (" " if doc else "") + "(" + ", ".join(f"{_BOUNDS[k][1]} {v:g}" for k, v in bounds.items()) + ")"
        rows.append((key, _describe(tp), "null" if default is None else repr(default) if isinstance(default, str)
                     else str(default).lower() if isinstance(default, bool) else str(default), doc))
    return rows


def format_table(rows: list[tuple[str, str, str, str]]) -> str:
    """The rows of :func:`describe` as aligned text: ``key  type  default  doc``."""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {doc}".rstrip()
                     for k, t, d, doc in rows)


def to_dict(obj) -> dict:
    return dataclasses.asdict(obj)


def parse_override(item: str) -> tuple[str, Any]:
    """``a.b.c=value`` → ("a.b.c", value). Values are read as YAML (numbers, true/false, lists, null),
    with ``1e-4``-style numbers that YAML 1.1 leaves as strings read as floats."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not of the form key=value (dotted keys allowed)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Return a copy of the nested dict ``data`` with dotted ``key=value`` overrides applied. Keys that do
    not exist are still set here — validation against the dataclass (:func:`from_dict`) names them."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        node = data
        *parents, leaf = key.split(".")
        for i, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key}: {'.'.join(parents[: i + 1])} is not a section")
            node = child
        node[leaf] = value
    return data


def load_config(cls: type[T], path, overrides: list[str] | None = None) -> T:
    """Read YAML file ``path``, apply ``key=value`` overrides, build and validate dataclass ``cls``."""
    from pathlib import Path

    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(cls, apply_overrides(data, overrides or []))
