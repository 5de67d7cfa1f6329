"""How much exploration noise a stochastic sampler puts into a policy's actions: Flow-SDE vs. CPS.

    python benchmarks/sampler_noise.py --policy data/policies/hopper-flow-bc --env Hopper-v5 \
        --out docs/results/sampler_noise_hopper

The Flow-GRPO / Flow-CPS comparison of issue #7 changes only the sampler, so this measures what the
sampler changes, on states the BC policy visits (deterministic rollouts): the std of every denoising
step (state-independent for both samplers), their summed variance, and — what the environment sees —
the spread of the sampled action chunks of a state (next to the ODE's spread from the same x_0 draws:
the BC policy's own randomness) and how far each sampled chunk lands from the ODE's chunk for the same
x_0 (the noise the sampler adds). Normalized action space, before clipping, averaged over states and
dimensions. With ``--groups N`` it also rolls out GRPO-style groups (``--group-size`` episodes from one
reset seed) with each sampler and reports the mean episode return and its spread within a group — the
signal a group-relative advantage is made of. Writes a Markdown table and a JSON file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from envs.vector import VecEnv
from flowpolicy import load_agent
from flowpolicy.checkpoint import load_policy

DEFAULT_SAMPLERS = ["ode", "flow_sde:a=0.3", "flow_sde:a=0.5", "flow_sde:a=0.7", "cps:eta=0.3", "cps:eta=0.5",
                    "cps:eta=0.8"]


def parse_sampler(spec: str) -> tuple[str, dict]:
    """``"cps:eta=0.5"`` → ("cps", {"eta": 0.5})."""
    name, _, params = spec.partition(":")
    return name, {k: float(v) for k, v in (p.split("=") for p in params.split(",") if p)}


def visited_states(policy_dir: str, env_id: str, n_states: int, seed: int) -> np.ndarray:
    """Observations of deterministic rollouts of the policy, evenly thinned to ``n_states``."""
    agent = load_agent(policy_dir)
    env = gym.make(env_id)
    observations, episode = [], 0
    while len(observations) < 4 * n_states:
        obs, _ = env.reset(seed=seed + episode)
        agent.reset()
        done = False
        while not done:
            observations.append(obs)
            obs, _, terminated, truncated, _ = env.step(agent.act(obs))
            done = terminated or truncated
        episode += 1
    env.close()
    index = np.linspace(0, len(observations) - 1, n_states).round().astype(int)
    return np.asarray(observations, dtype=np.float32)[index]


@torch.no_grad()
def measure(policy, cond: torch.Tensor, spec: str, samples: int, seed: int) -> dict:
    name, params = parse_sampler(spec)
    K = policy.config.num_steps
    sampler = policy.make_sampler(name, K=K, **params)
    generator = torch.Generator().manual_seed(seed)
    repeated = cond.repeat_interleave(samples, dim=0)
    x0 = torch.randn((repeated.shape[0], policy.config.chunk_dim), generator=generator)
    model_fn = policy.model.model_fn(K)
    chain = sampler.sample(model_fn, repeated, x0, K, generator=generator)
    ode_actions = policy.make_sampler("ode", K=K).sample(model_fn, repeated, x0, K).actions.double()
    x_next, _, std = sampler.step_distributions(model_fn, repeated, chain.xs, K)
    step_std = std.expand_as(x_next).double().reshape(-1, K, x_next.shape[-1]).mean(dim=(0, 2))  # [K]
    actions = chain.actions.double()
    return {"sampler": spec, "K": K, "step_std": step_std.tolist(),
            "summed_step_variance": float(step_std.square().sum()),
            "action_std": float(actions.reshape(cond.shape[0], samples, -1).std(dim=1).mean()),
            "ode_action_std": float(ode_actions.reshape(cond.shape[0], samples, -1).std(dim=1).mean()),
            "deviation_from_ode_rms": float((actions - ode_actions).square().mean().sqrt())}

def group_returns(policy_dir: str, env_id: str, spec: str, groups: int, group_size: int, seed: int) -> dict:
    """First-episode returns of ``groups`` groups of ``group_size`` envs that share a reset seed, acting
    with the sampler ``spec``: mean return and mean within-group std (GRPO's advantage denominator)."""
    name, params = parse_sampler(spec)
    agent = load_agent(policy_dir, sampler=name, seed=seed, **params)
    returns = np.zeros((groups, group_size))
    with VecEnv(env_id, group_size) as vec:
        for g in range(groups):
            obs, finished = vec.reset(seed=[seed + 1000 + g] * group_size), np.zeros(group_size, dtype=bool)
            agent.reset()
            while not finished.all():
                out = vec.step(agent.act(obs))
                for i, ret in zip(np.flatnonzero(out.done), out.episode_returns, strict=True):
                    if not finished[i]:
                        returns[g, i], finished[i] = ret, True
                obs = out.obs
    return {"group_return_mean": float(returns.mean()), "group_return_std": float(returns.std(axis=1).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="data/policies/hopper-flow-bc")
    parser.add_argument("--env", default="Hopper-v5")
    parser.add_argument("--samplers", nargs="+", default=DEFAULT_SAMPLERS,
                        help="name[:param=value,...], e.g. flow_sde:a=0.5 cps:eta=0.8")
    parser.add_argument("--states", type=int, default=256)
    parser.add_argument("--samples", type=int, default=64, help="chunks sampled per state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", type=int, default=0, help="also roll out this many groups per sampler")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--out", default="docs/results/sampler_noise_hopper", help="writes OUT.md and OUT.json")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    policy, _ = load_policy(args.policy)
    policy.eval()
    obs = torch.as_tensor(visited_states(args.policy, args.env, args.states, args.seed))
    cond = policy.condition(obs)
    rows = [measure(policy, cond, spec, args.samples, args.seed) for spec in args.samplers]
    if args.groups:
        for row in rows:
            row.update(group_returns(args.policy, args.env, row["sampler"], args.groups, args.group_size, args.seed))

    K = rows[0]["K"]
    lines = [f"Sampler noise of `{args.policy}` on {args.states} states of its own {args.env} rollouts, "
             f"{args.samples} chunks per state, K = {K} (normalized action space, before clipping).",
             f"Command: `python benchmarks/sampler_noise.py --policy {args.policy} --env {args.env} "
             f"--out {args.out}" + (f" --groups {args.groups}" if args.groups else "") + "`", "",
             "| sampler | " + " | ".join(f"std step {k}" for k in range(K)) +
             " | summed variance | action std (ODE's, same x_0) | distance to the same-x_0 ODE action (rms) |",
             "|---|" + "---:|" * (K + 3)]
    for r in rows:
        lines.append(f"| {r['sampler']} | " + " | ".join(f"{s:.3f}" for s in r["step_std"]) +
                     f" | {r['summed_step_variance']:.3f} | {r['action_std']:.3f} ({r['ode_action_std']:.3f})"
                     f" | {r['deviation_from_ode_rms']:.3f} |")
    if args.groups:
        lines += ["", f"Rollouts in {args.groups} groups of {args.group_size} episodes sharing a reset seed "
                  f"(`--groups {args.groups}`): the GRPO signal each sampler starts from.", "",
                  "| sampler | mean episode return | within-group std of the return |", "|---|---:|---:|"]
        lines += [f"| {r['sampler']} | {r['group_return_mean']:.0f} | {r['group_return_std']:.0f} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.md").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps({"policy": args.policy, "env": args.env, "states": args.states,
                                                    "samples": args.samples, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
