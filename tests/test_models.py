"""Behavior cloning of the three model kinds on a two-mode toy dataset, and schedule endpoints."""

import functools

import pytest
import torch

from flowpolicy.models import cosine_alphas_cumprod
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig
from flowpolicy.samplers import time_grid

MODE = 0.7


def two_mode_actions(n, gen):
    """Actions at +0.7 or −0.7 (both dims together) with equal probability; the mean, 0, is never seen."""
    sign = torch.randint(0, 2, (n, 1), generator=gen) * 2 - 1
    return MODE * sign + 0.05 * torch.randn(n, 2, generator=gen)


@functools.cache  # trained policies are only sampled from, so tests may share them
def train_two_mode(kind, steps=2000, seed=0):
    torch.manual_seed(seed)
    policy = Policy(PolicyConfig(kind=kind, obs_dim=1, action_dim=2, horizon=1, num_steps=8,
                                 network=NetworkConfig(hidden=[128, 128]), shortcut_max_log2_steps=3))
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3)
    # A decaying learning rate matters for ε-prediction: at high noise the mode is a faint signal in
    # the ε target, and SGD noise at a fixed rate skews which mode the sampler picks.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = policy.bc_loss(torch.zeros(256, 1), two_mode_actions(256, gen), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return policy


def mode_fractions(policy, K, n=4000):
    with torch.no_grad():
        x = policy.sample(torch.zeros(n, 1), K=K, generator=torch.Generator().manual_seed(1)).actions
    dist = lambda c: (x - c).abs().max(1).values  # noqa: E731
    return ((dist(MODE) < 0.2).float().mean().item(), (dist(-MODE) < 0.2).float().mean().item(),
            (dist(0.0) < 0.3).float().mean().item())


# Diffusion at K = 16: with x̂₀ clipped to the action box (the default, which real tasks need — see
# docs/data.md) DDIM at K = 4–8 leaves 12–18% of this toy's samples between the modes; at K ≥ 16 < 5%.
@pytest.mark.parametrize("kind,K", [("flow", 8), ("shortcut", 1), ("diffusion", 16)])
def test_bc_covers_both_modes_not_their_mean(kind, K):
    pos, neg, middle = mode_fractions(train_two_mode(kind), K)
    assert pos > 0.3 and neg > 0.3, (pos, neg)
    assert pos + neg > 0.75 and middle < 0.15, (pos, neg, middle)


def test_shortcut_one_step_beats_plain_flow_one_step():
    """One Euler step of a plain flow lands on the data mean; the shortcut model's one step does not."""
    *_, flow_middle = mode_fractions(train_two_mode("flow", steps=800), K=1)
    pos, neg, shortcut_middle = mode_fractions(train_two_mode("shortcut"), K=1)
    assert flow_middle > 0.9
    assert shortcut_middle < 0.15 and min(pos, neg) > 0.3


def test_cosine_schedule_rises_from_near_zero_to_exactly_one():
    alphas = cosine_alphas_cumprod(time_grid(10, dtype=torch.float64))
    assert alphas[-1] == 1.0 and 0 < alphas[0] <= 1e-3
    assert torch.all(alphas[1:] > alphas[:-1])


def test_samplers_are_checked_against_the_model_kind():
    flow = Policy(PolicyConfig(kind="flow", obs_dim=2, action_dim=1))
    diffusion = Policy(PolicyConfig(kind="diffusion", obs_dim=2, action_dim=1))
    with pytest.raises(ValueError, match="does not apply"):
        flow.make_sampler("ddim")
    with pytest.raises(ValueError, match="does not apply"):
        diffusion.make_sampler("flow_sde", a=0.5)
    assert diffusion.make_sampler(K=5).alphas_cumprod.numel() == 6


def test_env_actions_clip_then_unnormalize():
    from flowpolicy.normalizers import ActionNormalizer

    policy = Policy(PolicyConfig(obs_dim=1, action_dim=2, horizon=2),
                    action_normalizer=ActionNormalizer([0.0, -2.0], [1.0, 2.0]))
    x = torch.tensor([[2.0, -3.0, 0.0, 0.5]])
    torch.testing.assert_close(policy.env_actions(x), torch.tensor([[[1.0, -2.0], [0.5, 1.0]]]))
    raw = torch.tensor([[[0.25, 1.0], [1.0, -2.0]]])
    torch.testing.assert_close(policy.env_actions(policy.normalize_actions(raw)), raw)


def test_diffusion_clips_the_denoised_estimate_inside_the_model_function():
    """x̂₀ is clipped to the action box through the ε the model function returns: the final DDIM state
    (ᾱ_K = 1, so x_K = x̂₀) lies in [−1, 1], and the chain's log-probs still recompute exactly."""
    torch.manual_seed(0)
    policy = Policy(PolicyConfig(kind="diffusion", obs_dim=3, action_dim=2, horizon=2, num_steps=5))
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(20)  # an untrained, wild ε-net: unclipped x̂₀ lands far outside the box
    cond = torch.randn(64, 3)
    sampler = policy.make_sampler(K=5, eta=1.0)
    with torch.no_grad():
        chain = policy.sample(cond, sampler, generator=torch.Generator().manual_seed(0))
        assert chain.actions.abs().max() <= 1.0 + 1e-5
        torch.testing.assert_close(policy.chain_log_prob(cond, chain.xs, sampler), chain.log_probs, rtol=0, atol=1e-5)
        policy.model.clip_denoised = False
        wild = policy.sample(cond, sampler, generator=torch.Generator().manual_seed(0))
    assert wild.actions.abs().max() > 2.0
