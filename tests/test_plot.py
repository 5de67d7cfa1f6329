"""`flowpolicy plot`: learning curves of (synthetic) run directories as PNGs, outside the repository."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from agents.curves import expand_runs, group_curves, mean_std, run_label  # noqa: E402
from flowpolicy.cli import main  # noqa: E402


def write_run(run_dir, scalars: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def curve(offset: float, steps=(0, 1000, 2000, 3000)) -> list[tuple[int, float]]:
    return [(s, offset + s / 100) for s in steps]


def is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_one_run_default_output_next_to_it(tmp_path, capsys):
    run = tmp_path / "runs" / "hopper-qsm"
    write_run(run, {"eval/return": curve(100), "eval/normalized_score": curve(10)})
    assert main(["plot", str(run)]) == 0
    out = tmp_path / "runs" / "hopper-qsm_normalized_score.png"  # auto: normalized score when logged
    assert is_png(out) and str(out) in capsys.readouterr().out
    assert main(["plot", str(run)]) == 1  # never overwrites silently
    assert "exists" in capsys.readouterr().err
    assert main(["plot", str(run), "--overwrite", "--metric", "return"]) == 0
    assert is_png(tmp_path / "runs" / "hopper-qsm_return.png")


def test_plot_groups_seeds_with_mean_and_std(tmp_path):
    for seed, offset in enumerate((0.0, 10.0, 20.0)):
        write_run(tmp_path / "bench" / "qsm" / f"seed{seed}", {"eval/normalized_score": curve(offset)})
    write_run(tmp_path / "bench" / "reinflow" / "seed0", {"eval/normalized_score": curve(5, (0, 1500, 3000))})
    runs = expand_runs([tmp_path / "bench" / "qsm", tmp_path / "bench" / "reinflow" / "seed0"])
    assert [run_label(r) for r in runs] == ["qsm"] * 3 + ["reinflow"]
    groups = group_curves(runs, "normalized_score")
    steps, mean, std = mean_std(groups["qsm"])
    assert np.allclose(steps, [0, 1000, 2000, 3000]) and np.allclose(mean, np.array([0, 10, 20, 30]) + 10)
    assert np.allclose(std, np.std([0, 10, 20]))
    out = tmp_path / "elsewhere" / "both.png"
    assert main(["plot", str(tmp_path / "bench" / "qsm"), str(tmp_path / "bench" / "reinflow" / "seed0"),
                 "--out", str(out)]) == 0
    assert is_png(out)
    assert main(["plot", *(str(tmp_path / "bench" / "qsm" / f"seed{s}") for s in range(3))]) == 0
    assert is_png(tmp_path / "bench" / "qsm_normalized_score.png")


def test_plot_success_rate_when_logged(tmp_path):
    run = tmp_path / "lift"
    write_run(run, {"eval/return": curve(1), "eval/success_rate": [(0, 0.2), (500, 0.6), (1000, 0.9)]})
    assert main(["plot", str(run), "--out", str(tmp_path / "a.png")]) == 0  # auto picks success rate
    assert is_png(tmp_path / "a.png")
    assert main(["plot", str(run), "--metric", "success_rate", "--out", str(tmp_path / "b.png")]) == 0
    other = tmp_path / "hopper"
    write_run(other, {"eval/return": curve(1)})
    assert main(["plot", str(other), "--metric", "success_rate", "--out", str(tmp_path / "c.png")]) == 1
    assert not (tmp_path / "c.png").exists()


def test_plot_clear_error_without_events(tmp_path, capsys):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main(["plot", str(empty)]) == 1
    err = capsys.readouterr().err
    assert "no TensorBoard event files" in err and err.count("\n") == 1
    assert main(["plot", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
