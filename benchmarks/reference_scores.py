"""Measure the random-policy reference score of each registered task (uniform random actions).

    python benchmarks/reference_scores.py --episodes 100

Prints one line per task and a JSON object; the numbers go into envs/registry.py's ``random_score``.
"""

import argparse
import json

from envs.evaluation import random_policy_return
from envs.registry import TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = {}
    for env_id in TASKS:
        mean, std = random_policy_return(env_id, args.episodes, args.seed)
        result[env_id] = {"random_return_mean": round(mean, 1), "random_return_std": round(std, 1)}
        print(f"{env_id:16s} random return {mean:9.1f} ± {std:.1f} over {args.episodes} episodes", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
