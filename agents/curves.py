"""Learning curves of run directories (``flowpolicy plot``): read a metric from each run's TensorBoard events,
group seeds of one configuration, and draw mean ± std over seeds against env steps as a PNG.

Metrics (``METRICS``): ``success_rate`` (eval/success_rate, else the training episodes' charts/success_rate),
``normalized_score`` (eval/normalized_score), ``return`` (eval/return), ``episodic_return`` (the training
episodes' charts/episodic_return). ``auto`` picks success rate where every run logs it, else the normalized
score where every run logs it, else the evaluation return.

Grouping: runs are grouped by their label. A run directory named ``seed<N>`` (the layout of
``benchmarks/bench_finetune.py``: ``runs/bench/<name>/seed<N>``) is labelled by its parent's name, so the seeds
of one benchmark form one curve with a ±std band; any other run is labelled by its own name. A directory that
holds no event files but whose sub-directories do (``runs/bench/<name>``) stands for those runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from agents.runner import read_scalars

METRICS = {  # name: TensorBoard tags tried in order
    "success_rate": ("eval/success_rate", "charts/success_rate"),
    "normalized_score": ("eval/normalized_score",),
    "return": ("eval/return",),
    "episodic_return": ("charts/episodic_return",),
}
AUTO_ORDER = ("success_rate", "normalized_score", "return")
LABELS = {"success_rate": "success rate", "normalized_score": "normalized score (expert = 100)",
          "return": "evaluation return", "episodic_return": "training episodic return"}


class CurveError(ValueError):
    """A run directory without the events or metric asked for (a user error: one line)."""


def has_events(directory: Path) -> bool:
    return any(directory.glob("events.out.tfevents*"))


def expand_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories: each path itself if it holds event files, else its sub-directories that do."""
    runs: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise CurveError(f"{path}: not a directory")
        if has_events(path):
            runs.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and has_events(p))
        if not children:
            raise CurveError(f"{path}: no TensorBoard event files (events.out.tfevents*) in it or its sub-directories; "
                             "is it a run directory of `flowpolicy finetune`?")
        runs += children
    return runs


def run_label(run: Path) -> str:
    """The group a run belongs to: ``<parent>`` for ``<parent>/seed<N>``, else the run's own name."""
    run = run.resolve()
    return run.parent.name if re.fullmatch(r"seed\d+", run.name) else run.name


def read_metric(run: Path, metric: str) -> np.ndarray:
    """[n, 2] (env steps, value) of ``metric`` in one run (empty when the run does not log it)."""
    for tag in METRICS[metric]:
        points = read_scalars(run, tag)
        if len(points):
            return points
    return np.zeros((0, 2))


def choose_metric(runs: list[Path], metric: str = "auto") -> str:
    if metric != "auto":
        if metric not in METRICS:
            raise CurveError(f"--metric must be auto or one of {', '.join(METRICS)}, got {metric!r}")
        return metric
    for candidate in AUTO_ORDER:
        if all(len(read_metric(run, candidate)) for run in runs):
            return candidate
    raise CurveError(f"{runs[0]}: no evaluation scalars (eval/return) yet; try --metric episodic_return")


def group_curves(runs: list[Path], metric: str) -> dict[str, list[np.ndarray]]:
    """label → the runs' [n, 2] curves of ``metric``; a run without it is an error that names it."""
    groups: dict[str, list[np.ndarray]] = {}
    for run in runs:
        points = read_metric(run, metric)
        if not len(points):
            raise CurveError(f"{run}: no {' or '.join(METRICS[metric])} scalars; "
                             f"available metrics here: {', '.join(m for m in METRICS if len(read_metric(run, m)))}")
        groups.setdefault(run_label(run), []).append(points)
    return groups


def mean_std(curves: list[np.ndarray], points: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs on a common step grid (linear interpolation within the range every run covers;
    one run: its own steps, std 0)."""
    if len(curves) == 1:
        steps, values = curves[0][:, 0], curves[0][:, 1]
        return steps, values, np.zeros_like(values)
    lo, hi = max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves)
    union = np.unique(np.concatenate([c[:, 0] for c in curves]))
    grid = union[(union >= lo) & (union <= hi)]
    if len(grid) > points:
        grid = np.linspace(lo, hi, points)
    values = np.array([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
    return grid, values.mean(0), values.std(0)


def default_output(runs: list[Path], metric: str) -> Path:
    """Next to the run: ``<run>_<metric>.png`` beside one run (or one group's directory), else in the runs'
    common parent directory."""
    resolved = [r.resolve() for r in runs]
    labels = {run_label(r) for r in resolved}
    if len(resolved) == 1:
        return resolved[0].parent / f"{resolved[0].name}_{metric}.png"
    if len(labels) == 1 and len({r.parent for r in resolved}) == 1:  # the seeds of one benchmark
        group = resolved[0].parent
        return group.parent / f"{group.name}_{metric}.png"
    return Path(os.path.commonpath(resolved)) / f"plot_{metric}.png"


def plot_runs(paths: list[str | Path], out: str | Path | None = None, metric: str = "auto",
              title: str | None = None, overwrite: bool = False) -> Path:
    """Draw the learning curves of the run directories ``paths`` (grouped, mean ± std over seeds) to a PNG and
    return its path. Needs matplotlib (the ``bench`` extra)."""
    runs = expand_runs(paths)
    metric = choose_metric(runs, metric)
    groups = group_curves(runs, metric)
    path = Path(out) if out else default_output(runs, metric)
    return plot_groups(groups, path, metric, title, overwrite)


def plot_groups(groups: dict[str, list[np.ndarray]], path: str | Path, metric: str, title: str | None = None,
                overwrite: bool = False) -> Path:
    """Draw label → [n, 2] curves (mean ± std band where a label has several) to the PNG ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CurveError("plotting needs matplotlib: pip install 'flowpolicy[bench]'") from None
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CurveError(f"--out {path}: must end in .png")
    if path.exists() and not overwrite:
        raise CurveError(f"{path} exists; pass --overwrite to replace it or --out another file")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    big = max(c[-1, 0] for curves in groups.values() for c in curves) >= 1e6
    scale, unit = (1e6, "millions") if big else (1e3, "thousands")
    for label, curves in groups.items():
        steps, mean, std = mean_std(curves)
        line, = ax.plot(steps / scale, mean, marker="." if len(steps) < 40 else None,
                        label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        if len(curves) > 1:
            ax.fill_between(steps / scale, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(f"env steps ({unit})")
    ax.set_ylabel(LABELS[metric])
    ax.set_title(title or ("mean ± std over seeds" if any(len(c) > 1 for c in groups.values()) else "learning curve"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
