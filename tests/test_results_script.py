"""benchmarks/results.py: cells from recorded results and run directories; --dry-run lists what is missing,
with its command and an expected wall time, and writes nothing."""

from __future__ import annotations

import json

from benchmarks import results


def write_run(run_dir, budget: int, finished: bool = True) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir))
    for i, step in enumerate(range(0, budget + 1, budget // 4)):
        writer.add_scalar("eval/return", 1000.0 + 100 * i, step)
        writer.add_scalar("eval/normalized_score", 30.0 + 20 * i, step)
        writer.add_scalar("eval/wall_s", 10.0 * i, step)
        if step:
            writer.add_scalar("perf/update_s", 1.0, step)
    writer.close()
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"env_steps": budget}))


def not_recorded(monkeypatch, *tasks):
    """Pretend ``tasks`` have no recorded results (so the tests do not depend on what docs/results holds)."""
    recorded = results.recorded
    monkeypatch.setattr(results, "recorded", lambda stem: None if any(t in stem for t in tasks) else recorded(stem))


def test_dry_run_lists_missing_cells_with_commands_and_times(tmp_path, capsys, monkeypatch):
    not_recorded(monkeypatch, "_ant")
    before = {p: p.stat().st_mtime for p in results.RESULTS.iterdir()}
    assert results.main(["--dry-run", "--tasks", "hopper", "ant", "--runs", str(tmp_path / "none"),
                         "--out", str(tmp_path / "R.md")]) == 0
    out = capsys.readouterr().out
    assert "recorded  reinflow_hopper_2m" in out  # the published curves are the recorded baseline
    assert "missing   reinflow_ant_1m" in out  # the per-task budget: 1M on Ant, 2M on Hopper
    plan = out.split("would run:")[1]
    assert "ant · ReinFlow [missing]: 3,000,000 env steps, ≈" in plan and "from reinflow on hopper" in plan
    assert ("python benchmarks/bench_finetune.py --config configs/ant/reinflow.yaml --seeds 0 1 2 --budgets 1000000 "
            "--name reinflow_ant_1m") in plan
    assert "hopper · ReinFlow" not in plan  # recorded cells are not re-run unless --rerun
    assert not (tmp_path / "R.md").exists()
    assert {p: p.stat().st_mtime for p in results.RESULTS.iterdir()} == before


def test_cells_from_run_directories(tmp_path, monkeypatch):
    not_recorded(monkeypatch, "_ant", "_halfcheetah")
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        write_run(runs / "reinflow_ant_1m" / f"seed{seed}", 1_000_000)
    write_run(runs / "reinflow_halfcheetah_1m" / "seed0", 1_000_000, finished=False)
    cells = {c.stem: c for c in results.discover_cells(["ant", "halfcheetah"], runs)}
    ant, cheetah = cells["reinflow_ant_1m"], cells["reinflow_halfcheetah_1m"]
    assert ant.status == "runs" and cheetah.status == "partial"
    assert cheetah.done_steps == {0: 1_000_000} and cheetah.remaining_steps() == 2_000_000
    results.rebuild_from_runs(ant, runs, write=False)
    assert set(ant.curves) == {"0", "1", "2"} and ant.curves["0"]["score"][-1] == 110.0
    monkeypatch.setattr(results, "RESULTS", tmp_path / "results")
    (tmp_path / "results").mkdir()
    results.write_results_md(list(cells.values()), ["ant", "halfcheetah"], tmp_path / "R.md", plots=False)
    text = (tmp_path / "R.md").read_text()
    assert "| ReinFlow | 3 | 30.0 ± 0.0 |" in text and "runs/bench/reinflow_ant_1m" in text
    assert "partial runs" in text and "## Missing cells" in text


def test_steps_to_reach_counts_a_float32_success_rate_of_the_level():
    """TensorBoard keeps float32: 0.9 reads back as 0.89999998 and must count as reaching 0.9 (it did not)."""
    import numpy as np

    from benchmarks.compare_methods import steps_to_reach

    curve = {"steps": [0, 38400, 76800], "score": [0.85, float(np.float32(0.9)), 1.0]}
    assert steps_to_reach({"seed0": curve}, 0.9) == "38k (1/1)"
    assert steps_to_reach({"seed0": {"steps": [0], "score": [0.85]}}, 0.9) == "— (0/1)"
