"""Is a policy's success decided by the start state? Run it several times from each reset seed with exploration
noise and print the outcomes per seed.

    python benchmarks/start_state_outcomes.py --policy data/policies/lift-flow-bc-10demos --seeds 10 --repeats 4 \
        --sigma 0.12 [--where chain|action] [--out docs/results/lift_start_states.json]

Each episode k of reset seed s draws its noise from its own generator (seed s + 100000·(k + 1)), so the repeats
differ only in the noise. Noise as the learners explore: Gaussian σ on every denoising step (``chain``, ReinFlow's)
or on the final action (``action``, QSM's), via ``agents.autoscale.ConstantNoise``. If nearly every seed gives the
same outcome in every repeat, on-policy fine-tuning gets almost no signal on the failing ones: the critic explains
the return by the start state (docs/manipulation.md, Lift).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from agents.autoscale import ConstantNoise
from envs.evaluation import evaluate_agent
from flowpolicy.agent import Agent
from flowpolicy.checkpoint import CheckpointError, load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--env", default=None, help="env id (default: the policy's)")
    parser.add_argument("--seeds", type=int, default=10, help="reset seeds 0 … N−1")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--sigma", type=float, default=0.12)
    parser.add_argument("--where", choices=["chain", "action"], default="chain")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    try:
        policy, metadata = load_policy(args.policy)
    except CheckpointError as err:
        raise SystemExit(str(err)) from None
    env_id = args.env or metadata["env_id"]
    sampler = ConstantNoise(policy.make_sampler(), args.sigma, last_only=args.where == "action")
    outcomes = {}
    for seed in range(args.seeds):
        row = []
        for repeat in range(args.repeats):
            agent = Agent(policy, sampler=sampler, seed=seed)
            own = agent.seed_episodes  # this repeat's noise: its own generator per episode
            agent.seed_episodes = lambda idx, seeds, own=own, r=repeat: own(idx, [s + 100_000 * (r + 1) for s in seeds])
            result = evaluate_agent(agent, env_id, 1, seed=seed, options=metadata.get("env_options"),
                                    **(metadata.get("env_kwargs") or {}))
            if result.successes is None:
                raise SystemExit(f"{env_id} reports no success signal")
            row.append(bool(result.successes[0]))
        outcomes[seed] = row
        print(f"seed {seed}: {''.join('S' if s else '.' for s in row)}", flush=True)
    decided = sum(len(set(row)) == 1 for row in outcomes.values())
    print(f"{decided}/{args.seeds} start states give the same outcome in all {args.repeats} repeats")
    if args.out:
        Path(args.out).write_text(json.dumps({"policy": args.policy, "env_id": env_id, "sigma": args.sigma,
                                              "where": args.where, "outcomes": outcomes,
                                              "decided_by_start_state": decided}, indent=2) + "\n")


if __name__ == "__main__":
    main()
