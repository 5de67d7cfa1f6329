"""Produce a task's shipped data with the project's own commands, measure it, and write its data card.

    python benchmarks/make_task_data.py --task hopper

Runs, timing each step (skipping what already exists):
1. ``flowpolicy collect --quality medium`` → data/datasets/flowpolicy/<task>-medium-v0 (shipped) and
   ``--quality expert`` → runs/datasets/… (measured, not shipped: too large);
2. ``flowpolicy pretrain`` of a flow (K = 4), a shortcut (K = 1) and a diffusion (DDIM, K = 10) policy;
   the ``--ship`` variants (default: flow) are copied to data/policies/<task>-<variant>-bc (shipped);
3. ``flowpolicy evaluate --json`` of each (10 episodes);
then writes docs/results/data_<task>.json and the data card data/cards/<task>.md.
The expert must exist in data/experts/<env_id> (``python -m pretrain.expert``; collect trains one if not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from envs.registry import TASKS

BC_VARIANTS = {  # name: (overrides, label)
    "flow": ([], "flow, K = 4"),
    "shortcut": (["policy.kind=shortcut", "policy.num_steps=1"], "shortcut, K = 1"),
    "diffusion": (["policy.kind=diffusion", "policy.num_steps=10"], "diffusion (DDIM η = 0), K = 10"),
}


def run(command: list[str]) -> tuple[str, float]:
    print("$", " ".join(command), flush=True)
    start = time.time()
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{out.stderr[-3000:]}")
    return out.stdout, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="configs/ directory name, e.g. hopper")
    parser.add_argument("--episodes", type=int, default=50, help="medium-dataset episodes")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=list(BC_VARIANTS))
    parser.add_argument("--ship", nargs="+", default=["flow"], choices=list(BC_VARIANTS),
                        help="BC variants copied to data/policies/<task>-<variant>-bc")
    parser.add_argument("bc_overrides", nargs="*", help="extra overrides for every pretrain run")
    args = parser.parse_args()
    spec = next(s for s in TASKS.values() if s.short_name == args.task)
    env, name = spec.env_id, spec.env_id.split("-v")[0].lower()
    fp = [sys.executable, "-m", "flowpolicy.cli"]
    results: dict = {"env_id": env, "commands": {}, "wall_s": {}}
    previous = Path(f"docs/results/data_{args.task}.json")
    if previous.exists():  # steps skipped below keep the wall times measured when they ran
        results["wall_s"] = json.loads(previous.read_text()).get("wall_s", {})

    for quality, root in (("medium", "data/datasets"), ("expert", "runs/datasets")):
        dataset = Path(root) / "flowpolicy" / f"{name}-{quality}-v0"
        command = [*fp, "collect", "--env", env, "--out", root, "--quality", quality, "--episodes",
                   str(args.episodes if quality == "medium" else 20)]
        results["commands"][f"collect_{quality}"] = " ".join(["flowpolicy", *command[3:]])
        if not dataset.exists():
            _, results["wall_s"][f"collect_{quality}"] = run(command)
        from pretrain.datasets import episode_returns, load_minari_dataset

        episodes, meta = load_minari_dataset(dataset)
        returns = episode_returns(episodes)
        results[f"{quality}_dataset"] = {
            "path": str(dataset), "episodes": len(episodes), "env_steps": int(sum(e.length for e in episodes)),
            "return_mean": float(returns.mean()), "return_std": float(returns.std()),
            "demonstrator": Path(meta.get("demonstrator", "")).name, "expert_return": meta.get("expert_return"),
            "random_return": meta.get("random_return"),
            "snapshot_probe_returns": meta.get("snapshot_probe_returns"),
            "size_mb": round(sum(f.stat().st_size for f in dataset.rglob("*") if f.is_file()) / 1e6, 2)}

    for variant in args.variants:
        overrides, label = BC_VARIANTS[variant]
        out = Path("runs/pretrain") / f"{args.task}-{variant}"
        command = [*fp, "pretrain", "--config", f"configs/{args.task}/pretrain.yaml", f"out={out}",
                   "train.eval_every=0", *overrides, *args.bc_overrides]
        results["commands"][f"pretrain_{variant}"] = " ".join(["flowpolicy", *command[3:]])
        if not (out / "summary.json").exists():
            _, results["wall_s"][f"pretrain_{variant}"] = run(command)
        if variant in args.ship:
            shipped = Path("data/policies") / f"{args.task}-{variant}-bc"
            shutil.rmtree(shipped, ignore_errors=True)
            shutil.copytree(out / "policy", shipped)
            results.setdefault("shipped_policies", {})[variant] = str(shipped)
        stdout, _ = run([*fp, "evaluate", "--checkpoint", str(out / "policy"), "--episodes",
                         str(args.eval_episodes), "--json"])
        results[f"bc_{variant}"] = {"label": label, **json.loads(stdout)}

    Path("docs/results").mkdir(parents=True, exist_ok=True)
    Path(f"docs/results/data_{args.task}.json").write_text(json.dumps(results, indent=2) + "\n")
    write_card(args.task, spec, results)
    print(json.dumps({k: v for k, v in results.items() if k != "commands"}, indent=2))


def write_card(task: str, spec, r: dict) -> None:
    def score(ret):
        s = spec.normalized_score(ret)
        return f"{s:.1f}" if s is not None else "—"

    med, exp = r["medium_dataset"], r["expert_dataset"]
    lines = [
        f"# Data card: {spec.env_id}", "",
        "Everything here was produced by this project's own commands on a 2-core CPU machine.", "",
        "## Reference scores", "",
        f"- random (uniform actions, 100 episodes, `python benchmarks/reference_scores.py`): {spec.random_score}",
        f"- expert: SAC (stable-baselines3), `data/experts/{spec.env_id}/` — return {med['expert_return']:.1f} "
        "(10 episodes; budget and learning curve in `expert.json` and `progress.csv`)", "",
        "## Datasets", "",
        "| dataset | episodes | env steps | return | normalized | demonstrator | size |",
        "|---|---:|---:|---:|---:|---|---:|",
        f"| medium (shipped: `{med['path']}`) | {med['episodes']} | {med['env_steps']:,} | "
        f"{med['return_mean']:.1f} ± {med['return_std']:.1f} | {score(med['return_mean'])} | {med['demonstrator']} | "
        f"{med['size_mb']} MB |",
        f"| expert (not shipped) | {exp['episodes']} | {exp['env_steps']:,} | {exp['return_mean']:.1f} ± "
        f"{exp['return_std']:.1f} | {score(exp['return_mean'])} | {exp['demonstrator']} | {exp['size_mb']} MB |", "",
        "Medium = the SAC training snapshot whose stochastic return (5 probe episodes) is closest to 40% of the",
        "expert's; actions are the demonstrator's stochastic samples; episode i is reset with seed i.",
        "Probe returns of the snapshots (env steps: return): " + ", ".join(
            f"{k[4:-4]}: {v:.0f}" for k, v in (med.get("snapshot_probe_returns") or {}).items()), "",
        "## Behavior cloning on the medium dataset", "",
        f"| policy | return ({r['bc_flow']['episodes']} episodes) | normalized |", "|---|---:|---:|",
    ]
    for variant in ("flow", "shortcut", "diffusion"):
        if f"bc_{variant}" in r:
            b = r[f"bc_{variant}"]
            ret = f"{b['return_mean']:.1f} ± {b['return_std']:.1f}"
            lines.append(f"| {b['label']} | {ret} | {score(b['return_mean'])} |")
    expert_info = json.loads((Path("data/experts") / spec.env_id / "expert.json").read_text())
    budget = expert_info.get("config", {}).get("total_steps", 300_000)
    shipped = r.get("shipped_policies") or {"flow": r.get("shipped_policy")}
    lines += ["", "Shipped checkpoints (chunk 4): " + ", ".join(
        f"`{path}` ({BC_VARIANTS[variant][1]})" for variant, path in shipped.items()) + ".", "",
              "## Commands", "", "```bash", f"python -m pretrain.expert --env {spec.env_id} --out "
              f"data/experts/{spec.env_id} --steps {budget}"]
    if expert_info.get("note"):
        lines.insert(lines.index("## Datasets"), f"Expert note: {expert_info['note']}.\n")
    lines += [c for c in r["commands"].values()]
    episodes = r["medium_dataset"]["episodes"]
    options = f" --episodes {episodes}" if episodes != 50 else ""
    if list(shipped) != ["flow"]:
        options += " --ship " + " ".join(shipped)
    lines += [f"python benchmarks/make_task_data.py --task {task} torch_threads=1{options}"
              "   # all of the above + this card", "```", "",
              "Wall times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["wall_s"].items()), ""]
    Path("data/cards").mkdir(parents=True, exist_ok=True)
    Path(f"data/cards/{task}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
