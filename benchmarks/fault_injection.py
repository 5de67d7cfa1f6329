"""Fault injection: does every run survive a SIGKILL at a random moment, and is every bad input one line?

Part 1 — for each learner, a tiny Hopper run (a few iterations of the shipped config, shrunk) is run once
uninterrupted as the reference; then ``--kills`` times it is started, SIGKILLed at a uniformly random moment
of its reference wall time (start-up, initial evaluation, iterations, checkpoint writes), and resumed —
``flowpolicy finetune --resume RUN_DIR``, or ``--config FILE --resume`` when the kill came before the run
directory existed. A resumed run *matches* when its summary's returns and env steps equal the reference's.

Part 2 — every bad input of the table below goes through the real command line: exit code, number of stderr
lines, whether a traceback was printed.

    python benchmarks/fault_injection.py --kills 5            # → docs/reliability.md (both tables)
    python benchmarks/fault_injection.py --kills 2 --algorithms reinflow qsm
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# shrunk shipped configs: about 8 iterations each (so most kills land mid-run), one evaluation episode
TINY = {
    "reinflow": ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8",
                 "runner.total_env_steps=512"],
    "fpo": ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=8",
            "algo.critic_warmup_iterations=0", "runner.total_env_steps=512"],
    "grpo": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=512"],
    "cps": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=512"],
    "ddpo_is": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=512"],
    "ddpo_sf": ["algo.group_size=2", "algo.num_groups=1", "algo.max_decisions=8", "runner.total_env_steps=512"],
    "qsm": ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.critic_warmup_iterations=1", "algo.batch_size=32",
            "runner.total_env_steps=512"],
    "cfgrl": ["algo.critic_pretrain_steps=20", "algo.offline_iterations=8", "algo.updates_per_iteration=10",
              "algo.batch_size=32"],
}
COMMON = ["runner.eval_episodes=1", "runner.progress=false", "torch_threads=1"]
MATCH_KEYS = ("initial_return", "final_return", "best_return", "env_steps", "iterations")

BAD_INPUTS = [
    ("finetune algo.K=0", ["finetune", "--config", "configs/hopper/reinflow.yaml", "algo.K=0"]),
    ("finetune runner.total_env_steps=0", ["finetune", "--config", "configs/hopper/reinflow.yaml",
                                           "runner.total_env_steps=0"]),
    ("finetune runner.total_env_steps=-5", ["finetune", "--config", "configs/hopper/reinflow.yaml",
                                            "runner.total_env_steps=-5"]),
    ("finetune algo.num_envs=0", ["finetune", "--config", "configs/hopper/reinflow.yaml", "algo.num_envs=0"]),
    ("finetune algo.minibatch_size=0", ["finetune", "--config", "configs/hopper/reinflow.yaml",
                                        "algo.minibatch_size=0"]),
    ("finetune seed=-1", ["finetune", "--config", "configs/hopper/reinflow.yaml", "seed=-1"]),
    ("finetune device=cuda (no CUDA here)", ["finetune", "--config", "configs/hopper/reinflow.yaml", "device=cuda"]),
    ("finetune unknown key", ["finetune", "--config", "configs/hopper/reinflow.yaml", "algo.num_env=4"]),
    ("finetune enum value", ["finetune", "--config", "configs/hopper/reinflow.yaml", "algo.logprob_reduction=x"]),
    ("grpo with a cps-only key", ["finetune", "--config", "configs/hopper/grpo.yaml", "algo.eta=0.5"]),
    ("finetune into an existing run", ["finetune", "--config", "configs/hopper/reinflow.yaml", "out={existing}"]),
    ("finetune --resume of a missing dir", ["finetune", "--resume", "{tmp}/missing"]),
    ("finetune --resume with garbage config.json", ["finetune", "--resume", "{garbage}"]),
    ("finetune --resume with changed num_envs", ["finetune", "--resume", "{existing}", "algo.num_envs=4"]),
    ("finetune module:Class env that gym.spec rejects", ["finetune", "--config", "configs/hopper/reinflow.yaml",
                                                         "env_id=nonexistent_module:Env"]),
    ("evaluate --K 0", ["evaluate", "--checkpoint", "data/policies/hopper-flow-bc", "--K", "0"]),
    ("evaluate --num-envs 0", ["evaluate", "--checkpoint", "data/policies/hopper-flow-bc", "--num-envs", "0"]),
    ("evaluate --episodes 0", ["evaluate", "--checkpoint", "data/policies/hopper-flow-bc", "--episodes", "0"]),
    ("evaluate --video under a file", ["evaluate", "--checkpoint", "data/policies/hopper-flow-bc", "--episodes", "1",
                                       "--video", "{file}/videos"]),
    ("evaluate an unknown env", ["evaluate", "--checkpoint", "data/policies/hopper-flow-bc", "--env", "Nope-v9"]),
    ("evaluate a missing checkpoint", ["evaluate", "--checkpoint", "{tmp}/missing"]),
    ("pretrain Walker2d data for HalfCheetah", ["pretrain", "--config", "configs/halfcheetah/pretrain.yaml",
                                               "dataset=data/datasets/flowpolicy/walker2d-medium-v0",
                                               "out={tmp}/bc"]),
    ("pretrain train.steps=0", ["pretrain", "--config", "configs/hopper/pretrain.yaml", "train.steps=0",
                                "out={tmp}/bc0"]),
    ("collect --episodes 0", ["collect", "--env", "Hopper-v5", "--out", "{tmp}/data", "--episodes", "0"]),
]


def cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "flowpolicy.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finetune_args(algorithm: str, out: Path) -> list[str]:
    return ["finetune", "--config", f"configs/hopper/{algorithm}.yaml", *TINY[algorithm], *COMMON, f"out={out}"]


def fault_loop(algorithms: list[str], kills: int, work: Path, rng: random.Random) -> list[dict]:
    rows = []
    for algorithm in algorithms:
        reference_dir = work / f"{algorithm}-reference"
        start = time.time()
        proc = cli(finetune_args(algorithm, reference_dir))
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{algorithm}: the reference run failed: {err.strip()}")
        wall = time.time() - start
        reference = json.loads((reference_dir / "summary.json").read_text())
        resumed = matched = 0
        moments = []
        for k in range(kills):
            run = work / f"{algorithm}-kill{k}"
            delay = rng.uniform(0.0, wall)
            proc = cli(finetune_args(algorithm, run))
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            state = ("nothing on disk" if not run.exists() else
                     "config only" if not (run / "checkpoints").exists() else
                     "finished" if (run / "summary.json").exists() else "checkpointed")
            moments.append(f"{delay:.1f}s ({state})")
            again = cli(["finetune", "--resume", run] if (run / "config.json").exists() else
                        [*finetune_args(algorithm, run), "--resume"])
            _, err = again.communicate()
            if again.returncode != 0:
                print(f"{algorithm} kill {k}: resume failed: {err.strip()[-300:]}", file=sys.stderr)
                continue
            resumed += 1
            summary = json.loads((run / "summary.json").read_text())
            if all(summary[key] == reference[key] for key in MATCH_KEYS):
                matched += 1
            else:
                print(f"{algorithm} kill {k}: mismatch {[(key, summary[key], reference[key]) for key in MATCH_KEYS]}",
                      file=sys.stderr)
        rows.append({"algorithm": algorithm, "kills": kills, "resumed": resumed, "matching": matched,
                     "reference_wall_s": round(wall, 1), "kill_moments": moments})
        print(f"{algorithm}: {resumed}/{kills} resumed, {matched}/{kills} matching (reference {wall:.1f} s)",
              flush=True)
    return rows


def bad_input_table(work: Path) -> list[dict]:
    existing = work / "existing-run"
    proc = cli(finetune_args("reinflow", existing))
    proc.communicate()
    garbage = work / "garbage-run"
    garbage.mkdir(exist_ok=True)
    (garbage / "config.json").write_text("{not json")
    a_file = work / "a-file"
    a_file.write_text("x")
    fill = {"existing": existing, "garbage": garbage, "tmp": work, "file": a_file}
    rows = []
    for name, args in BAD_INPUTS:
        args = [a.format(**{k: str(v) for k, v in fill.items()}) for a in args]
        before = {p: p.stat().st_mtime_ns for p in existing.rglob("*") if p.is_file()}
        proc = cli(args)
        _, err = proc.communicate()
        lines = [line for line in err.splitlines() if line.strip()]
        after = {p: p.stat().st_mtime_ns for p in existing.rglob("*") if p.is_file()}
        rows.append({"case": name, "exit": proc.returncode, "stderr_lines": len(lines),
                     "traceback": "Traceback" in err, "existing_run_unchanged": before == after,
                     "message": lines[-1] if lines else ""})
        print(f"{name}: exit {proc.returncode}, {len(lines)} line(s){', TRACEBACK' if 'Traceback' in err else ''}",
              flush=True)
    return rows


def write_report(path: Path, faults: list[dict], bad: list[dict], command: str) -> None:
    lines = ["# Reliability: fault injection and bad inputs", "",
             f"Measured with `{command}` on a 2-core machine ({time.strftime('%Y-%m-%d')}).", ""]
    if faults:
        lines += ["## SIGKILL at a random moment, then `--resume`", "",
                  "Each learner's tiny Hopper run (shipped config shrunk to about 8 iterations, 1 evaluation "
                  "episode) is run once uninterrupted, then killed with SIGKILL at a uniformly random moment of "
                  "its wall time and resumed (`flowpolicy finetune --resume RUN_DIR`, or `--config FILE "
                  "--resume` when nothing was on disk yet). *Matching*: initial/final/best return, env steps "
                  "and iterations equal the uninterrupted run's.", "",
                  "| learner | kills | resumed | matching | reference wall | kill moments (state on disk) |",
                  "|---|---|---|---|---|---|"]
        for r in faults:
            lines.append(f"| {r['algorithm']} | {r['kills']} | {r['resumed']} | {r['matching']} | "
                         f"{r['reference_wall_s']} s | {', '.join(r['kill_moments'])} |")
        total = sum(r["kills"] for r in faults)
        lines += ["", f"In all: {sum(r['resumed'] for r in faults)}/{total} resumed, "
                      f"{sum(r['matching'] for r in faults)}/{total} matching.", ""]
    if bad:
        lines += ["## Bad inputs through the command line", "",
                  "Exit code, number of stderr lines, whether a traceback was printed, whether an existing finished "
                  "run's files were touched (mtimes), and the message.", "",
                  "| input | exit | lines | traceback | existing run unchanged | message |",
                  "|---|---|---|---|---|---|"]
        for r in bad:
            message = r["message"].replace("|", "\\|")
            lines.append(f"| {r['case']} | {r['exit']} | {r['stderr_lines']} | {'yes' if r['traceback'] else 'no'} | "
                         f"{'yes' if r['existing_run_unchanged'] else 'NO'} | {message} |")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=5, help="random SIGKILLs per learner (default 5)")
    parser.add_argument("--algorithms", nargs="+", default=list(TINY), choices=list(TINY))
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--skip-faults", action="store_true", help="only the bad-input table")
    parser.add_argument("--skip-bad-inputs", action="store_true", help="only the fault-injection loop")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"),
                        help="markdown report (default docs/reliability.md)")
    args = parser.parse_args(argv)
    command = "python benchmarks/fault_injection.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="flowpolicy-faults-") as tmp:
        work = Path(tmp)
        faults = [] if args.skip_faults else fault_loop(args.algorithms, args.kills, work, random.Random(args.seed))
        bad = [] if args.skip_bad_inputs else bad_input_table(work)
    write_report(Path(args.out), faults, bad, command.strip())


if __name__ == "__main__":
    main()
