"""Success rate (or return and normalized score) of final policies on many held-out episodes: a precise
before → after where a periodic evaluation is too coarse.

    python benchmarks/final_success.py --policies data/policies/block-lite-single-flow-bc \
        --runs runs/bench/reinflow_block-lite-single runs/bench/qsm_block-lite-single \
        --episodes 100 --seed 10000 --out docs/results/block-lite-single_final.json

The runner's periodic evaluations (20 episodes) measure a success rate of 0.15 to ± 0.08; a learning curve
of them shows trends, not a before → after. This evaluates each policy once on ``--episodes`` episodes reset
with seeds ``seed … seed + episodes − 1`` (disjoint from the runs' evaluation seeds), deterministic sampler at
the policy's K, exactly as ``flowpolicy evaluate --episodes N --seed S`` does, and writes per policy the
success rate, its binomial standard error and the successes. On a task without a success signal it writes the
mean return and its standard error, the normalized score (registered task, or the reference scores in the
policy's metadata) with its standard error, and how many episodes ran to the time limit (on a task that ends
in failure: the ones that did not fail). ``--runs`` takes benchmark directories (``runs/bench/<name>``: every
``seed*/policy`` in it) or run directories.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from envs.evaluation import evaluate_agent
from envs.registry import get_task, with_reference_scores
from flowpolicy.agent import load_agent
from flowpolicy.checkpoint import CheckpointError


def policy_dirs(paths: list[str]) -> list[Path]:
    """Each run's final policy; a path with none, or a benchmark with an unfinished seed, is an error (a before →
    after must not rest on fewer seeds than it says)."""
    found = []
    for raw in paths:
        path = Path(raw)
        if (path / "policy").is_dir():
            found.append(path / "policy")
            continue
        seeds = sorted(p for p in path.glob("seed*") if p.is_dir())
        missing = [p.name for p in seeds if not (p / "policy").is_dir()]
        if not seeds or missing:
            raise SystemExit(f"{path}: no final policy in {', '.join(missing) if missing else 'it'} "
                             "(a run directory with policy/, or runs/bench/<name> with finished seed*/)")
        found += [p / "policy" for p in seeds]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="*", default=[], help="policy checkpoints (e.g. the BC policy)")
    parser.add_argument("--runs", nargs="*", default=[], help="benchmark or run directories (their final policy)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=10000)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = {}
    for path in [Path(p) for p in args.policies] + policy_dirs(args.runs):
        try:
            agent = load_agent(path, seed=args.seed)
        except CheckpointError as err:
            raise SystemExit(str(err)) from None
        env_id = agent.metadata["env_id"]
        start = time.time()
        options, env_kwargs = agent.metadata.get("env_options"), agent.metadata.get("env_kwargs") or {}
        task = with_reference_scores(get_task(env_id, options, **env_kwargs), agent.metadata)
        summary = evaluate_agent(agent, env_id, args.episodes, seed=args.seed, options=options, task=task,
                                 **env_kwargs)
        entry = {"env_id": env_id, "episodes": args.episodes, "seed": args.seed}
        if summary.successes is None:  # a dense task: the return, and the normalized score where it is defined
            entry |= {"return_mean": summary.return_mean, "return_sem": summary.return_sem,
                      "time_limit_episodes": int(sum(n >= task.max_episode_steps for n in summary.lengths))}
            line = f"return {summary.return_mean:.1f} ± {summary.return_sem:.1f}"
            if task.has_reference_scores:
                score, unit = summary.normalized_score, 100 / (task.expert_score - task.random_score)
                entry |= {"normalized_score": score, "normalized_sem": summary.return_sem * unit}
                line += f", normalized {score:.1f} ± {summary.return_sem * unit:.1f}"
        else:
            successes = [bool(s) for s in summary.successes]
            rate = float(np.mean(successes))
            entry |= {"success_rate": rate, "stderr": float(np.sqrt(rate * (1 - rate) / args.episodes)),
                      "successes": int(sum(successes))}
            line = f"success {rate:.2f} ± {entry['stderr']:.2f} ({sum(successes)}/{args.episodes})"
        results[str(path)] = entry | {"wall_s": round(time.time() - start, 1)}
        print(f"{path}: {line}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
