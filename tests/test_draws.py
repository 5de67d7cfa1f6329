"""Per-env noise streams (flowpolicy/draws.py): with a plain generator the draw helpers are torch's calls number
for number; with RowGenerators row i depends only on env i's reset seed and index — not on the other rows, the
batch split or a shared reset seed — which is what lets rollout workers reproduce the learner's sampling."""

import torch

from flowpolicy import draws
from flowpolicy.checkpoint import load_policy
from flowpolicy.draws import RowGenerators


def test_a_plain_generator_draws_exactly_what_torch_draws():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(draws.randn((4, 5), a), torch.randn((4, 5), generator=b), rtol=0, atol=0)
    torch.testing.assert_close(draws.rand((4, 2), a), torch.rand((4, 2), generator=b), rtol=0, atol=0)


def test_row_draws_do_not_depend_on_the_batch_split():
    seeds = [10, 11, 12, 13, 14]
    whole = draws.randn((5, 2, 3), RowGenerators.for_envs(seeds))
    head = draws.randn((2, 2, 3), RowGenerators.for_envs(seeds[:2]))
    tail = draws.randn((3, 2, 3), RowGenerators.for_envs(seeds[2:], first_env=2))
    torch.testing.assert_close(torch.cat([head, tail]), whole, rtol=0, atol=0)
    assert not torch.equal(tail, draws.randn((3, 2, 3), RowGenerators.for_envs(seeds[2:])))  # the index counts


def test_envs_sharing_a_reset_seed_draw_different_noise():
    x = draws.rand((4, 6), RowGenerators.for_envs([7, 7, 8, 8]))
    assert not torch.equal(x[0], x[1]) and not torch.equal(x[2], x[3])


def test_a_policy_samples_each_row_from_its_own_stream():
    """Up to float rounding: a matmul's rows can round differently at another batch size, which is why
    ``runner.inference: workers`` samples shard by shard on every backend (exact: tests/test_backends.py)."""
    policy = load_policy("data/policies/hopper-flow-bc")[0]
    sampler = policy.make_sampler("reinflow", K=4, noise_fn=lambda x, t, obs: torch.full_like(x, 0.1))
    cond = torch.randn(4, policy.config.cond_dim, generator=torch.Generator().manual_seed(0))
    seeds = [1, 2, 3, 4]
    whole = policy.sample(cond, sampler, 4, RowGenerators.for_envs(seeds))
    part = policy.sample(cond[2:], sampler, 4, RowGenerators.for_envs(seeds[2:], first_env=2))
    torch.testing.assert_close(whole.xs[2:], part.xs, rtol=0, atol=1e-5)
    torch.testing.assert_close(whole.log_probs[2:], part.log_probs, rtol=0, atol=1e-3)
