"""Policy-core timings: batched chain log-prob recomputation vs. K sequential forward passes, and
``agent.act`` latency for one observation on CPU.

    python benchmarks/bench_policy_core.py --out docs/results/policy_core.json

Both sides of each ratio are measured in the same run, interleaved, on the same inputs (machines here
are noisy; compare ratios, not absolute times across runs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from flowpolicy import load_agent, save_policy
from flowpolicy.networks import NetworkConfig
from flowpolicy.noise import NoiseNet
from flowpolicy.policy import Policy, PolicyConfig
from flowpolicy.samplers import gaussian_log_prob

# Hopper-v5 shapes with ReinFlow's chunking: obs 11, action 3, chunk 4.
OBS_DIM, ACTION_DIM, HORIZON = 11, 3, 4


def timeit(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def sequential_log_prob(sampler, model_fn, obs, xs, K):
    """The naive recomputation: one forward pass per denoising step."""
    out = []
    for step in range(K):
        k = torch.full((xs.shape[0],), step, dtype=torch.long)
        mean, std = sampler.transition(model_fn, xs[:, step], k, K, obs)
        out.append(gaussian_log_prob(xs[:, step + 1], mean, std))
    return torch.stack(out, 1)


def batched_log_prob(sampler, model_fn, obs, xs, K):
    """The library's recomputation: all K steps stacked into one forward pass."""
    return sampler.log_prob(model_fn, obs, xs, K)


def forward_backward(policy, log_prob_fn, args):
    policy.zero_grad(set_to_none=True)
    log_prob_fn(*args).sum().backward()


def bench_log_prob(batches: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    network = NetworkConfig(kind="residual", hidden=[512], num_blocks=3)  # ReinFlow's actor size
    policy = Policy(PolicyConfig(obs_dim=OBS_DIM, action_dim=ACTION_DIM, horizon=HORIZON, network=network))
    noise = NoiseNet(policy.config.chunk_dim, policy.config.cond_dim)
    for batch, K in [(b, K) for b in batches for K in (4, 10)]:
        sampler = policy.make_sampler("reinflow", K=K, noise_fn=noise)
        obs = torch.randn(batch, policy.config.cond_dim)
        with torch.no_grad():
            chain = policy.sample(obs, sampler, K)
        model_fn = policy.model.model_fn(K)

        args = (sampler, model_fn, obs, chain.xs, K)
        with torch.no_grad():
            diff = (batched_log_prob(*args) - sequential_log_prob(*args)).abs().max().item()
        t_batched = timeit(functools.partial(forward_backward, policy, batched_log_prob, args), repeats)
        t_seq = timeit(functools.partial(forward_backward, policy, sequential_log_prob, args), repeats)
        rows.append({"K": K, "batch": batch, "batched_ms": 1e3 * t_batched, "sequential_ms": 1e3 * t_seq,
                     "speedup": t_seq / t_batched, "max_abs_diff": diff})
    return rows


def bench_act(repeats: int) -> list[dict]:
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        obs = np.random.default_rng(0).normal(size=OBS_DIM).astype(np.float32)
        for K in (1, 4, 10):
            timings = {}
            for act_steps in (1, HORIZON):  # 1: every call samples a new chunk; H: the chunk is executed
                config = PolicyConfig(obs_dim=OBS_DIM, action_dim=ACTION_DIM, horizon=HORIZON, act_steps=act_steps,
                                      num_steps=K)
                save_policy(Policy(config), tmp)
                agent = load_agent(tmp)

                def one_decision(agent=agent, act_steps=act_steps):
                    for _ in range(act_steps):
                        agent.act(obs)

                timings[act_steps] = 1e3 * timeit(one_decision, repeats) / act_steps
            rows.append({"K": K, "replan_ms": timings[1], "per_step_amortized_ms": timings[HORIZON]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 256, 2048],
                        help="chains per log-prob recomputation")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{args.threads} thread(s)",
        "log_prob": bench_log_prob(args.batches, max(5, args.repeats // 5)),
        "act": bench_act(args.repeats * 20),
    }
    print("Chain log-prob recomputation (forward + backward), ReinFlow sampler, residual MLP 512×3:")
    for r in result["log_prob"]:
        print(f"  K={r['K']:>2} batch={r['batch']:>5}: one batched pass {r['batched_ms']:.1f} ms, "
              f"K sequential passes {r['sequential_ms']:.1f} ms -> {r['speedup']:.2f}x "
              f"(max |diff| {r['max_abs_diff']:.1e})")
    print("agent.act on one observation (flow policy, MLP 256×3, chunk 4):")
    for r in result["act"]:
        print(f"  K={r['K']:>2}: call that samples a chunk {r['replan_ms']:.3f} ms, "
              f"amortized over the chunk {r['per_step_amortized_ms']:.3f} ms/step")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
