"""QSM actor-loss variants on a one-step bandit with a known quadratic Q (no critic is learned).

A policy is behavior-cloned on actions around (−0.4, 0.3); Q(a) = −‖a − a*‖² has its maximum at
a* = (0.5, −0.3). QSM then trains on a replay that fills with the policy's own exploration-noised samples,
as in the learner, with the reference refreshed every 50 steps. The table reports the distance of the
deterministic sampler's mean action from a* and the per-dimension std: which combinations of ``anchor``,
``target_scale``, ``grad_at`` and α reach the argmax for flow (Euler, K = 4) and diffusion (DDIM, K = 10).

    python benchmarks/qsm_bandit.py --out docs/results/qsm_bandit.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from agents.qsm import qsm_actor_loss
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig

A_STAR = torch.tensor([0.5, -0.3])
DATA_MEAN = torch.tensor([-0.4, 0.3])


def bandit_q(cond, actions):
    return -(actions - A_STAR).square().sum(-1)


def bandit_data(generator, n=256):
    return DATA_MEAN + 0.3 * torch.randn(n, 2, generator=generator)


def run_bandit(kind: str, anchor: str, target_scale: str, alpha: float, grad_at: str = "denoised",
               bc_steps: int = 600, qsm_steps: int = 600, refresh_every: int = 50, seed: int = 0,
               bc_coeff: float = 0.0) -> dict:
    """BC then QSM on the bandit (plus ``bc_coeff`` × the BC loss on fresh data, as the learner's
    ``bc_coeff``); returns the sampled mean's distance to a* before and after, and the std."""
    torch.manual_seed(seed)
    K = 4 if kind == "flow" else 10
    policy = Policy(PolicyConfig(kind=kind, obs_dim=1, action_dim=2, horizon=1, num_steps=K,
                                 network=NetworkConfig(hidden=[64, 64])))
    gen = torch.Generator().manual_seed(seed)
    cond = torch.zeros(256, 1)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)

    def step(loss):
        opt.zero_grad()
        loss.backward()
        opt.step()

    def samples(n=2000):
        with torch.no_grad():
            return policy.sample(torch.zeros(n, 1), K=K, generator=torch.Generator().manual_seed(seed + 1)).actions

    for _ in range(bc_steps):
        step(policy.bc_loss(cond, bandit_data(gen), generator=gen))
    before = (samples().mean(0) - A_STAR).norm().item()
    replay = bandit_data(gen, 2000)
    reference = copy.deepcopy(policy).requires_grad_(False)
    for i in range(qsm_steps):
        if i % refresh_every == 0:
            reference.load_state_dict(policy.state_dict())
        if i % 10 == 0:
            with torch.no_grad():
                x = policy.sample(cond, K=K, generator=gen).actions
            replay = torch.cat([replay, (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)])[-5000:]
        batch = replay[torch.randint(0, len(replay), (256,), generator=gen)]
        loss = qsm_actor_loss(policy, bandit_q, cond, batch, alpha=alpha, grad_at=grad_at, target_scale=target_scale,
                              anchor=anchor, reference=reference, generator=gen)[0]
        if bc_coeff:
            loss = loss + bc_coeff * policy.bc_loss(cond, bandit_data(gen), generator=gen)
        step(loss)
    x = samples()
    distance = (x.mean(0) - A_STAR).norm().item()
    return {"kind": kind, "anchor": anchor, "target_scale": target_scale, "grad_at": grad_at, "alpha": alpha,
            "distance_before": before, "distance_after": distance if distance == distance else float("inf"),
            "std_after": x.std(0).mean().item()}


VARIANTS = [  # (anchor, target_scale, grad_at, α)
    ("none", "none", "noised", 1.0), ("none", "none", "noised", 3.0), ("none", "noise", "noised", 3.0),
    ("none", "none", "denoised", 3.0), ("replay", "none", "denoised", 3.0),
    ("reference", "none", "denoised", 3.0), ("reference", "noise", "denoised", 3.0),
    ("reference", "snr", "denoised", 0.1), ("reference", "snr", "denoised", 0.3), ("reference", "snr", "noised", 0.3),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'kind':10s} {'anchor':9s} {'scale':5s} {'grad_at':8s} {'α':>4s} {'before':>7s} {'after':>9s} {'std':>7s}")
    for kind in ("flow", "diffusion"):
        for anchor, scale, grad_at, alpha in VARIANTS:
            tick = time.perf_counter()
            row = run_bandit(kind, anchor, scale, alpha, grad_at)
            row["wall_s"] = time.perf_counter() - tick
            rows.append(row)
            print(f"{kind:10s} {anchor:9s} {scale:5s} {grad_at:8s} {alpha:4.1f} {row['distance_before']:7.3f} "
                  f"{row['distance_after']:9.3g} {row['std_after']:7.3g}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"command": "python benchmarks/qsm_bandit.py --out " + args.out, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
