"""Runs you can trust: nothing is overwritten, every run resumes from its first second, a finished run
resumes as a no-op, Ctrl-C stops cleanly, and every bad input is one line with exit ≠ 0 and no files changed.

The tiny Hopper run below (2 envs × 8 decisions × chunk 4 = 64 env steps per iteration) takes a few seconds.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowpolicy.cli import main as cli_main

pytestmark = pytest.mark.filterwarnings("ignore:.*are never visited")

TINY = ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8", "runner.total_env_steps=192",
        "runner.eval_episodes=1", "runner.progress=false", "torch_threads=1"]
CONFIG = "configs/hopper/reinflow.yaml"


def checksums(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli_process(*argv, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "flowpolicy.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished tiny run and its summary (never modified by the tests that use it: they check that)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli_main(["finetune", "--config", CONFIG, *TINY, f"out={out}"]) == 0
    return out, json.loads((out / "summary.json").read_text())


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and code != 130
    assert len(lines) == 1 and "Traceback" not in err and lines[0].startswith("flowpolicy "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- bad input: one line, exit ≠ 0, nothing lost --------------------------------------------------

BAD_FINETUNE = {
    "K=0": (["algo.K=0"], "algo.K: must be ≥ 1"),
    "zero budget": (["runner.total_env_steps=0"], "runner.total_env_steps: must be ≥ 1"),
    "negative budget": (["runner.total_env_steps=-5"], "runner.total_env_steps"),
    "zero envs": (["algo.num_envs=0"], "algo.num_envs: must be ≥ 1"),
    "zero minibatch": (["algo.minibatch_size=0"], "algo.minibatch_size"),
    "negative seed": (["seed=-1"], "seed: must be ≥ 0"),
    "enum value": (["algo.logprob_reduction=median"], "algo.logprob_reduction: expected one of mean, sum"),
    "NaN learning rate": (["algo.actor_lr=.nan"], "algo.actor_lr: expected a finite number"),
    "σ bounds swapped": (["algo.sigma_min=0.5", "algo.sigma_max=0.2"], "sigma_min"),
    "unknown algorithm": (["algorithm=ppo2"], "algorithm: unknown 'ppo2'"),
    "missing policy": (["policy=/nonexistent/policy"], "/nonexistent/policy"),
    "unknown key": (["algo.num_env=4"], "unknown config key algo.num_env"),
}


@pytest.mark.parametrize("case", sorted(BAD_FINETUNE))
def test_bad_finetune_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    overrides, fragment = BAD_FINETUNE[case]
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={tmp_path / 'run'}", *overrides)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={tmp_path / 'run'}", "device=cuda")
    assert_one_line_error(code, err, "CUDA is not available")


@pytest.mark.parametrize("overrides,fragment", [
    (["algo.eta=0.5"], "algo.eta does not apply to sampler flow_sde"),
    (["algo.critic_lr=0.002"], "algo.critic_lr applies only with advantages: gae"),
    (["algo.estimator=reinforce", "algo.kl_coef=0.1"], "reinforce"),
])
def test_keys_the_method_does_not_use_are_errors(overrides, fragment, tmp_path, capsys):
    code, _, err = run_cli(capsys, "finetune", "--config", "configs/hopper/grpo.yaml", f"out={tmp_path / 'run'}",
                           *overrides)
    assert_one_line_error(code, err, fragment)


def test_a_new_run_never_overwrites_an_existing_one(finished_run, capsys):
    out, _ = finished_run
    before = checksums(out)
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={out}")
    assert_one_line_error(code, err, "already holds a run", "--resume", "--overwrite")
    # a failing start with --overwrite (a bad policy) must not touch the run either
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={out}", "policy=/nonexistent",
                           "--overwrite")
    assert_one_line_error(code, err, "/nonexistent")
    assert checksums(out) == before


def test_overwrite_replaces_a_run_on_request(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text('{"from": "another run"}')
    (out / "events.out.tfevents.1.old").write_text("old events")
    code, _, _ = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, "runner.total_env_steps=64", f"out={out}",
                         "--overwrite")
    assert code == 0 and not (out / "events.out.tfevents.1.old").exists()
    assert json.loads((out / "summary.json").read_text())["env_steps"] > 0


def test_overwrite_never_deletes_files_that_are_not_a_run(tmp_path, capsys):
    """out=. or a home directory with --overwrite: refused, and the user's files stay."""
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={out}", "--overwrite")
    assert_one_line_error(code, err, "not a flowpolicy run", "thesis.tex")
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_resume_errors_name_the_file_or_key(finished_run, tmp_path, capsys):
    out, _ = finished_run
    code, _, err = run_cli(capsys, "finetune", "--resume", tmp_path / "nothing-here")
    assert_one_line_error(code, err, "no such run directory", "--config FILE --resume")
    code, _, err = run_cli(capsys, "finetune", "--resume", out, "algo.num_envs=4")
    assert_one_line_error(code, err, "algo.num_envs", "keeps its settings")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("not json at all")
    code, _, err = run_cli(capsys, "finetune", "--resume", garbage)
    assert_one_line_error(code, err, str(garbage / "config.json"), "not valid JSON")


def test_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    def full_disk(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr("flowpolicy.checkpoint.save_file", full_disk)
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={tmp_path / 'run'}")
    assert_one_line_error(code, err, "No space left on device", ".safetensors")


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only user errors become one line: an unexpected exception inside a learner must stay visible."""
    from agents.reinflow import ReinFlowLearner

    def broken(self, iteration):
        raise ValueError("a genuine bug")

    monkeypatch.setattr(ReinFlowLearner, "update", broken)
    with pytest.raises(ValueError, match="a genuine bug"):
        cli_main(["finetune", "--config", CONFIG, *TINY, f"out={tmp_path / 'run'}"])


# -- resume: from the first second, of a finished run, after Ctrl-C --------------------------------

def test_resume_of_a_finished_run_is_a_no_op(finished_run, capsys):
    out, summary = finished_run
    before = checksums(out)
    code, printed, _ = run_cli(capsys, "finetune", "--resume", out)
    assert code == 0 and printed.startswith("finished run, nothing to do")
    assert f"{summary['env_steps']:,} env steps" in printed
    assert checksums(out) == before


def test_a_run_stopped_before_its_first_checkpoint_resumes_and_matches(finished_run, tmp_path, capsys, monkeypatch):
    """Stopped after config.json and the iteration-0 checkpoint, before the initial evaluation finished;
    and stopped before anything was written (bare --resume with --config starts it)."""
    from agents.runner import Runner

    out, summary = finished_run
    stopped = tmp_path / "stopped"
    original = Runner.evaluate

    def interrupt(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Runner, "evaluate", interrupt)
    code, _, err = run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={stopped}")
    assert code == 130 and "--resume" in err and len(err.strip().splitlines()) == 1
    assert (stopped / "config.json").is_file() and (stopped / "checkpoints/last/training_state.json").is_file()
    monkeypatch.setattr(Runner, "evaluate", original)
    assert run_cli(capsys, "finetune", "--resume", stopped)[0] == 0
    never_started = tmp_path / "never-started"
    assert run_cli(capsys, "finetune", "--config", CONFIG, *TINY, f"out={never_started}", "--resume")[0] == 0
    for run in (stopped, never_started):
        resumed = json.loads((run / "summary.json").read_text())
        for key in ("initial_return", "final_return", "best_return", "env_steps", "iterations"):
            assert resumed[key] == summary[key], (run.name, key)


@pytest.mark.slow
def test_sigkill_at_any_moment_then_resume_matches(finished_run, tmp_path):
    """SIGKILL within the first second (nothing on disk yet) and right after the run directory appears."""
    out, summary = finished_run
    for name, wait_for in (("first-second", None), ("after-config", "config.json")):
        run = tmp_path / name
        proc = cli_process("finetune", "--config", CONFIG, *TINY, f"out={run}")
        deadline = time.time() + 60
        if wait_for is None:
            time.sleep(0.8)
        else:
            while not (run / wait_for).exists() and time.time() < deadline:
                time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        resume = ["--resume", run] if (run / "config.json").exists() else ["--config", CONFIG, *TINY, f"out={run}",
                                                                          "--resume"]
        done = cli_process("finetune", *resume)
        _, err = done.communicate(timeout=300)
        assert done.returncode == 0, err
        resumed = json.loads((run / "summary.json").read_text())
        for key in ("initial_return", "final_return", "best_return", "env_steps"):
            assert resumed[key] == summary[key], (name, key)


def test_ctrl_c_stops_with_one_line_and_exit_130(tmp_path):
    run = tmp_path / "run"
    proc = cli_process("finetune", "--config", CONFIG, *TINY, "runner.total_env_steps=100000", f"out={run}")
    deadline = time.time() + 120
    while not (run / "checkpoints/last/training_state.json").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and f"flowpolicy finetune --resume {run}" in lines[0]
    assert (run / "checkpoints/last/training_state.json").is_file()


def test_non_finite_guard_names_a_checkpoint_that_exists(tmp_path, monkeypatch):
    from agents.finetune import FinetuneConfig, finetune
    from agents.reinflow import ReinFlowLearner
    from agents.runner import NonFiniteError
    from flowpolicy.config import load_config

    original = ReinFlowLearner.update

    def poison(self, iteration):
        metrics = original(self, iteration)
        return {**metrics, "losses/value_loss": float("nan")} if iteration == 0 else metrics

    monkeypatch.setattr(ReinFlowLearner, "update", poison)
    cfg = load_config(FinetuneConfig, CONFIG, [*TINY, f"out={tmp_path / 'run'}"])
    with pytest.raises(NonFiniteError, match=r"iteration 0\)") as info:
        finetune(cfg)
    named = Path(str(info.value).split("checkpoint is ")[1].split(" (")[0])
    assert (named / "training_state.json").is_file()


# -- the config is discoverable ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["reinflow", "qsm", "cfgrl", "grpo", "cps", "ddpo_is", "ddpo_sf", "fpo", "pretrain"])
def test_flowpolicy_config_lists_every_key_with_a_doc(name, capsys):
    code, printed, _ = run_cli(capsys, "config", name, "--json")
    rows = json.loads(printed)
    assert code == 0 and len(rows) > 10
    keys = {r["key"] for r in rows}
    assert ("algo.K" in keys) if name != "pretrain" else ("policy.kind" in keys)
    undocumented = [r["key"] for r in rows if not r["doc"]]
    assert not undocumented, undocumented


def test_old_spelling_of_a_renamed_key_is_accepted_with_a_warning():
    from agents.reinflow import ReinFlowConfig
    from flowpolicy.config import ConfigError, from_dict

    with pytest.warns(FutureWarning, match="algo.num_steps is now algo.decisions_per_env"):
        assert from_dict(ReinFlowConfig, {"num_steps": 7}, prefix="algo").decisions_per_env == 7
    with pytest.raises(ConfigError, match="give only decisions_per_env"):
        from_dict(ReinFlowConfig, {"num_steps": 7, "decisions_per_env": 8}, prefix="algo")


@pytest.mark.parametrize("argv,fragment", [
    (["--sampler", "bogus"], "sampler 'bogus' does not apply"),
    (["--sampler", "flow_sde", "--sampler-param", "eta=0.3"], "bad parameters for sampler 'flow_sde'"),
    (["--sampler", "flow_sde", "--sampler-param", "a=-1"], "a must be ≥ 0"),
])
def test_bad_sampler_choices_are_one_line(argv, fragment, capsys):
    code, _, err = run_cli(capsys, "evaluate", "--checkpoint", "data/policies/hopper-flow-bc", "--episodes", "1", *argv)
    assert_one_line_error(code, err, fragment)


def test_a_policy_config_rule_is_a_one_line_config_error(tmp_path, capsys):
    code, _, err = run_cli(capsys, "pretrain", "--config", "configs/hopper/pretrain.yaml", "policy.act_steps=9",
                           f"out={tmp_path / 'bc'}")
    assert_one_line_error(code, err, "act_steps must be in [1, horizon=4]")
