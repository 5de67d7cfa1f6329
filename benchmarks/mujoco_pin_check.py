"""Re-measure the shipped artifacts under the installed MuJoCo: the BC policies' returns (`flowpolicy evaluate
--episodes 10 --json`, seed 0) and the SAC experts' returns (10 deterministic episodes, reset seeds 20000+i, as
`pretrain.expert.finalize_expert` recorded them in data/experts/*/expert.json). Run it before and after a MuJoCo
pin change; docs/manipulation.md keeps the numbers.

    python benchmarks/mujoco_pin_check.py [--only bc|experts] > pin_check.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import mujoco

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ["hopper-flow-bc", "walker2d-flow-bc", "halfcheetah-flow-bc", "ant-flow-bc", "hopper-diffusion-bc"]


def bc_returns() -> dict:
    out = {}
    for name in POLICIES:
        res = subprocess.run([sys.executable, "-m", "flowpolicy.cli", "evaluate", "--checkpoint",
                              str(ROOT / "data" / "policies" / name), "--episodes", "10", "--json"],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        result = json.loads(res.stdout.strip().splitlines()[-1])
        out[name] = {"return_mean": round(result["return_mean"], 1), "return_std": round(result["return_std"], 1),
                     "normalized_score": round(result.get("normalized_score", float("nan")), 1)}
        print(name, out[name], file=sys.stderr)
    return out


def expert_returns() -> dict:
    from pretrain.expert import evaluate_sac, load_sac

    out = {}
    for expert_dir in sorted((ROOT / "data" / "experts").iterdir()):
        info = json.loads((expert_dir / "expert.json").read_text())
        snapshot = expert_dir / "snapshots" / Path(info["expert_snapshot"]).with_suffix(".safetensors").name
        path = snapshot if snapshot.is_file() else expert_dir / "sac.safetensors"
        mean, std = evaluate_sac(load_sac(path), expert_dir.name, 10, seed=20_000)
        out[expert_dir.name] = {"recorded": round(info["eval_return_mean"], 1), "measured": round(mean, 1),
                                "std": round(std, 1), "file": path.name}
        print(expert_dir.name, out[expert_dir.name], file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["bc", "experts"], default=None)
    args = parser.parse_args()
    result = {"mujoco": mujoco.__version__}
    if args.only in (None, "bc"):
        result["bc"] = bc_returns()
    if args.only in (None, "experts"):
        result["experts"] = expert_returns()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
