"""ReinFlow noise net bounds and the observation/action normalizers."""

import numpy as np
import torch

from flowpolicy.noise import NoiseNet
from flowpolicy.normalizers import ActionNormalizer, ObservationNormalizer


def test_noise_net_std_stays_within_bounds_even_for_extreme_inputs():
    torch.manual_seed(0)
    net = NoiseNet(action_dim=6, obs_dim=5, sigma_min=0.1, sigma_max=0.24, use_x=True)
    for scale in (1.0, 1e3):
        std = net(scale * torch.randn(64, 6), torch.rand(64), scale * torch.randn(64, 5))
        assert std.shape == (64, 6)
        assert torch.all(std >= 0.1 - 1e-6) and torch.all(std <= 0.24 + 1e-6)
    net.set_bounds(0.05, 0.12)  # a σ-bound schedule moves the interval
    std = net(torch.randn(64, 6), torch.rand(64), torch.randn(64, 5))
    assert torch.all(std >= 0.05 - 1e-6) and torch.all(std <= 0.12 + 1e-6)


def test_action_normalizer_maps_data_range_onto_unit_box_and_back():
    rng = np.random.default_rng(0)
    actions = rng.uniform([-3.0, 0.0, 5.0], [1.0, 2.0, 5.0], size=(500, 3))  # last dim constant
    norm = ActionNormalizer.fit(actions)
    x = norm.normalize(torch.as_tensor(actions, dtype=torch.float32))
    assert x[:, :2].min() >= -1 - 1e-6 and x[:, :2].max() <= 1 + 1e-6
    assert torch.allclose(x[:, :2].amin(0), torch.tensor([-1.0, -1.0])) and torch.all(x[:, 2] == 0)
    torch.testing.assert_close(norm.unnormalize(x), torch.as_tensor(actions, dtype=torch.float32))
    again = ActionNormalizer.from_dict(norm.to_dict())
    assert np.array_equal(again.low_np, norm.low_np) and np.array_equal(again.high_np, norm.high_np)


def test_observation_normalizer_standardizes_and_clips():
    rng = np.random.default_rng(0)
    obs = rng.normal([1.0, -2.0], [0.5, 3.0], size=(10_000, 2))
    norm = ObservationNormalizer.fit(obs, clip=5.0)
    z = norm.normalize(torch.as_tensor(obs, dtype=torch.float32))
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(2), atol=1e-3, rtol=0)
    far = norm.normalize(torch.tensor([[1e6, -1e6]]))
    assert torch.equal(far, torch.tensor([[5.0, -5.0]]))
    identity = ObservationNormalizer.identity(2)
    assert ObservationNormalizer.from_dict(identity.to_dict()).clip == float("inf")
