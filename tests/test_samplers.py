"""Sampler math against analytic and hand-written references (DESIGN.md's formulas)."""

import math

import pytest
import torch
from conftest import gaussian_epsilon, gaussian_velocity, point_mass_velocity
from torch.distributions import Normal

from flowpolicy.models import cosine_alphas_cumprod
from flowpolicy.networks import ConditionalNet, NetworkConfig
from flowpolicy.noise import NoiseNet
from flowpolicy.samplers import make_sampler, time_grid

KS = [1, 4, 10]


def test_time_grid_is_k_over_K():
    assert torch.equal(time_grid(4), torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    assert time_grid(10)[0] == 0 and time_grid(10)[-1] == 1 and len(time_grid(10)) == 11
    with pytest.raises(ValueError):
        time_grid(0)


def test_make_sampler_rejects_unknown_names_and_params():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("euler")
    with pytest.raises(ValueError, match="bad parameters"):
        make_sampler("cps", a=0.7)
    with pytest.raises(ValueError, match="alphas_cumprod"):
        make_sampler("ddim", eta=1.0)
    with pytest.raises(ValueError, match="noise_fn"):
        make_sampler("reinflow")


# -- hand-written references: one Normal per step, straight from DESIGN.md ----------------------

def reference_step(name, params, model_fn, x, k, K, obs):
    """Mean and std (None = deterministic) of step k → k+1, written out independently of the library."""
    B = x.shape[0]
    t, t_next = k / K, (k + 1) / K
    tt = torch.full((B,), t)
    dt = 1.0 / K
    out = model_fn(x, tt, obs)
    if name == "ode":
        return x + dt * out, None
    if name == "reinflow":
        return x + dt * out, params["noise_fn"](x, tt, obs)
    if name == "flow_sde":
        a = params["a"]
        t_sigma = max(t, 1.0 / K)
        sigma = a * math.sqrt((1 - t_sigma) / t_sigma)
        mean = x + dt * (out - sigma**2 / (2 * (1 - t)) * (x - t * out))
        std = sigma * math.sqrt(dt)
        return mean, (std if std > 0 else None)
    if name == "cps":
        eta = params["eta"]
        a_hat, e_hat = x + (1 - t) * out, x - t * out
        mean = t_next * a_hat + (1 - t_next) * math.cos(eta * math.pi / 2) * e_hat
        std = (1 - t_next) * math.sin(eta * math.pi / 2)
        return mean, (std if std > 0 else None)
    if name == "ddim":
        eta, ab = params["eta"], params["alphas_cumprod"]
        a_k, a_n = float(ab[k]), float(ab[k + 1])
        x0 = (x - math.sqrt(1 - a_k) * out) / math.sqrt(a_k)
        var = eta**2 * (1 - a_n) / (1 - a_k) * (1 - a_k / a_n)
        mean = math.sqrt(a_n) * x0 + math.sqrt(max(1 - a_n - var, 0.0)) * out
        return mean, (math.sqrt(var) if var > 0 else None)
    raise AssertionError(name)


def sampler_cases(toy_D, toy_O, K):
    torch.manual_seed(0)
    noise_net = NoiseNet(toy_D, toy_O, sigma_min=0.05, sigma_max=0.3, use_x=True)
    return [
        ("ode", {}),
        ("reinflow", {"noise_fn": noise_net}),
        ("flow_sde", {"a": 0.7}),
        ("cps", {"eta": 0.8}),
        ("ddim", {"eta": 1.0, "alphas_cumprod": cosine_alphas_cumprod(time_grid(K, dtype=torch.float64))}),
        ("ddim", {"eta": 0.5, "alphas_cumprod": cosine_alphas_cumprod(time_grid(K, dtype=torch.float64))}),
    ]


@pytest.mark.parametrize("K", KS)
def test_log_prob_matches_torch_distributions(toy_model_fn, K):
    B = 7
    gen = torch.Generator().manual_seed(K)
    obs = torch.randn(B, toy_model_fn.O, generator=gen)
    x0 = torch.randn(B, toy_model_fn.D, generator=gen)
    for name, params in sampler_cases(toy_model_fn.D, toy_model_fn.O, K):
        sampler = make_sampler(name, **params)
        with torch.no_grad():
            chain = sampler.sample(toy_model_fn, obs, x0, K, generator=gen)
            recomputed = sampler.log_prob(toy_model_fn, obs, chain.xs, K)
        assert chain.xs.shape == (B, K + 1, toy_model_fn.D) and chain.log_probs.shape == (B, K)
        assert torch.equal(chain.xs[:, 0], x0) and torch.equal(chain.actions, chain.xs[:, -1])
        for k in range(K):
            with torch.no_grad():
                mean, std = reference_step(name, params, toy_model_fn, chain.xs[:, k], k, K, obs)
            if std is None:  # deterministic: the next state is the mean and the step carries no log-prob
                torch.testing.assert_close(chain.xs[:, k + 1], mean, rtol=1e-5, atol=1e-5)
                assert torch.all(chain.log_probs[:, k] == 0) and torch.all(recomputed[:, k] == 0)
            else:
                expected = Normal(mean.double(), torch.as_tensor(std).double()).log_prob(
                    chain.xs[:, k + 1].double()).sum(-1)
                torch.testing.assert_close(chain.log_probs[:, k].double(), expected, rtol=1e-5, atol=1e-4,
                                           msg=f"{name} K={K} step {k}")
        torch.testing.assert_close(recomputed, chain.log_probs, rtol=0, atol=1e-5)


@pytest.mark.parametrize("K", KS)
def test_batched_recomputation_reproduces_rollout_log_probs_with_networks(K):
    """With real networks (velocity + ReinFlow noise net on obs and x) recomputation in one batched
    forward reproduces the sample-time log-probs to 1e-5; deterministic steps are exactly 0."""
    torch.manual_seed(1)
    D, O, B = 12, 22, 64
    net = ConditionalNet(D, O, NetworkConfig(hidden=[64, 64]))
    noise = NoiseNet(D, O, sigma_min=0.10, sigma_max=0.24, use_x=True)
    obs, x0 = torch.randn(B, O), torch.randn(B, D)
    alphas = cosine_alphas_cumprod(time_grid(K, dtype=torch.float64))
    for name, params in [("reinflow", {"noise_fn": noise}), ("flow_sde", {"a": 0.7}), ("cps", {"eta": 0.8}),
                         ("ddim", {"eta": 1.0, "alphas_cumprod": alphas}), ("ode", {})]:
        sampler = make_sampler(name, **params)
        with torch.no_grad():
            chain = sampler.sample(net, obs, x0, K)
            recomputed = sampler.log_prob(net, obs, chain.xs, K)
        assert (recomputed - chain.log_probs).abs().max() <= 1e-5, name
        deterministic = chain.log_probs == 0
        assert torch.equal(recomputed == 0, deterministic), name


def test_log_prob_evaluates_all_steps_in_one_forward_pass(toy_model_fn):
    calls = []

    def counting(x, t, obs):
        calls.append(x.shape[0])
        return toy_model_fn(x, t, obs)

    B, K = 5, 10
    sampler = make_sampler("flow_sde", a=0.5)
    chain = sampler.sample(counting, torch.randn(B, 2), torch.randn(B, 3), K)
    calls.clear()
    sampler.log_prob(counting, torch.randn(B, 2), chain.xs, K)
    assert calls == [B * K]


def test_log_prob_is_differentiable_wrt_parameters():
    torch.manual_seed(0)
    net = ConditionalNet(4, 3, NetworkConfig(hidden=[16]))
    sampler = make_sampler("cps", eta=0.8)
    obs = torch.randn(8, 3)
    with torch.no_grad():
        chain = sampler.sample(net, obs, torch.randn(8, 4), 4)
    sampler.log_prob(net, obs, chain.xs, 4).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("K", KS)
def test_zero_noise_samplers_equal_the_ode(toy_model_fn, K):
    obs, x0 = torch.randn(9, 2), torch.randn(9, 3)
    ode = make_sampler("ode").sample(toy_model_fn, obs, x0, K)
    for name, params in [("flow_sde", {"a": 0.0}), ("cps", {"eta": 0.0})]:
        chain = make_sampler(name, **params).sample(toy_model_fn, obs, x0, K)
        torch.testing.assert_close(chain.xs, ode.xs, rtol=1e-6, atol=1e-6)
        assert torch.all(chain.log_probs == 0)


def _noise_level_after_step(sampler, model_fn, K, D=2, k=0):
    """Std of x_{k+1} per unit std of x_k's noise: the step is affine in x with gain A, plus std σ."""
    obs = torch.zeros(2, 1)
    kk = torch.full((2,), k, dtype=torch.long)
    x = torch.stack([torch.zeros(D), torch.ones(D)]).double()
    mean, std = sampler.transition(model_fn, x, kk, K, obs.double())
    gain = mean[1] - mean[0]
    std = torch.as_tensor(std, dtype=torch.float64).expand_as(mean)[0]
    return (gain.square() + std.square()).sqrt()


@pytest.mark.parametrize("K", [2, 4, 10])
def test_cps_keeps_the_noise_level_and_flow_sde_exceeds_it(K):
    """Data at a point c, x_0 ~ N(0, I): after the first step the noise std must be exactly 1 − t_1
    for CPS (for any η), while Flow-SDE's is larger (the seed's derivation)."""
    c = torch.tensor([0.3, -0.5], dtype=torch.float64)
    v = point_mass_velocity(c)
    t1 = 1.0 / K
    for eta in (0.3, 0.8, 1.0):
        level = _noise_level_after_step(make_sampler("cps", eta=eta), v, K)
        torch.testing.assert_close(level, torch.full_like(level, 1 - t1), rtol=1e-12, atol=1e-12)
    sde_level = _noise_level_after_step(make_sampler("flow_sde", a=0.7), v, K)
    assert torch.all(sde_level > 1 - t1 + 1e-3)


def test_cps_noise_level_along_the_whole_chain():
    """Monte Carlo over the whole chain: x_k = t_k·c + (1 − t_k)·z with z ~ N(0, 1) at every k."""
    K, N = 5, 200_000
    c = torch.tensor([0.4])
    gen = torch.Generator().manual_seed(0)
    chain = make_sampler("cps", eta=0.8).sample(point_mass_velocity(c), torch.zeros(N, 1),
                                                 torch.randn(N, 1, generator=gen), K, generator=gen)
    grid = time_grid(K)
    for k in range(K):  # k = K is the point itself
        xk = chain.xs[:, k, 0]
        assert abs(xk.std().item() - (1 - grid[k].item())) < 0.01
        assert abs(xk.mean().item() - grid[k].item() * 0.4) < 0.01
    assert chain.actions.std() < 1e-5


# -- Gaussian data: the samplers reproduce the data distribution as K grows --------------------

M = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
S = torch.tensor([0.3, 1.0, 0.05], dtype=torch.float64)


def _ode_moments(K):
    """The optimal-velocity ODE is affine in x_0, so two chains give its exact output mean and std."""
    v = gaussian_velocity(M, S)
    x0 = torch.stack([torch.zeros(3), torch.ones(3)]).double()
    out = make_sampler("ode").sample(v, torch.zeros(2, 1).double(), x0, K).actions
    return out[0], out[1] - out[0]


def test_ode_with_optimal_velocity_reproduces_gaussian_data():
    errors = []
    for K in (1, 4, 16, 64, 256):
        mean, std = _ode_moments(K)
        errors.append(float((mean - M).abs().max() + (std - S).abs().max()))
    # Euler is first order: quadrupling K cuts the error about four-fold.
    ratios = [earlier / later for earlier, later in zip(errors[1:], errors[2:], strict=False)]
    assert all(r > 3.5 for r in ratios), errors
    mean, std = _ode_moments(256)
    torch.testing.assert_close(mean, M, atol=1e-6, rtol=0)  # the mean is exact for any K
    torch.testing.assert_close(std, S, atol=6e-3, rtol=0)


def _mc_moments(sampler, model_fn, K, N=100_000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(N, 3, generator=gen, dtype=torch.float64)
    acts = sampler.sample(model_fn, torch.zeros(N, 1, dtype=torch.float64), x0, K, generator=gen).actions
    return acts.mean(0), acts.std(0)


def test_flow_sde_with_optimal_velocity_reproduces_gaussian_data():
    mean, std = _mc_moments(make_sampler("flow_sde", a=0.5), gaussian_velocity(M, S), K=100)
    torch.testing.assert_close(mean, M, atol=0.03, rtol=0)
    torch.testing.assert_close(std, S, atol=0.05, rtol=0.1)
    coarse_mean, coarse_std = _mc_moments(make_sampler("flow_sde", a=0.5), gaussian_velocity(M, S), K=4)
    assert (coarse_std - S).abs().max() > (std - S).abs().max()  # finer steps are closer


def test_cps_preserves_the_noise_coefficient_not_the_marginals():
    """With the exact velocity of Gaussian data, CPS at η = 0 reproduces the data, while at η = 0.8 its
    samples keep the mean but come out narrower (fresh noise replaces part of ε̂) — the property behind
    CPS's narrower action spread in benchmarks/sampler_noise.py. Flow-SDE stays at S (test above)."""
    mean, std = _mc_moments(make_sampler("cps", eta=0.0), gaussian_velocity(M, S), K=100)
    torch.testing.assert_close(std, S, atol=0.02, rtol=0.05)
    mean, std = _mc_moments(make_sampler("cps", eta=0.8), gaussian_velocity(M, S), K=100)
    torch.testing.assert_close(mean, M, atol=0.02, rtol=0)
    assert std[0] < 0.85 * S[0] and std[1] < 0.85 * S[1]  # s = 0.3 → ≈ 0.24, s = 1 → < 1


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_with_optimal_epsilon_reproduces_gaussian_data(eta):
    K = 100
    alphas = cosine_alphas_cumprod(time_grid(K, dtype=torch.float64))
    sampler = make_sampler("ddim", eta=eta, alphas_cumprod=alphas)
    mean, std = _mc_moments(sampler, gaussian_epsilon(M, S, cosine_alphas_cumprod), K)
    torch.testing.assert_close(mean, M, atol=0.02, rtol=0)
    torch.testing.assert_close(std, S, atol=0.02, rtol=0.05)


def test_ddim_last_step_is_deterministic_and_eta_one_is_stochastic_before():
    K = 6
    alphas = cosine_alphas_cumprod(time_grid(K, dtype=torch.float64))
    v = gaussian_epsilon(M, S, cosine_alphas_cumprod)
    chain = make_sampler("ddim", eta=1.0, alphas_cumprod=alphas).sample(
        v, torch.zeros(4, 1).double(), torch.randn(4, 3).double(), K)
    assert torch.all(chain.log_probs[:, -1] == 0) and torch.all(chain.log_probs[:, :-1] != 0)
    assert alphas[-1] == 1.0 and alphas[0] > 0


def test_sampler_noise_measure_separates_excess_noise_from_resampling():
    """benchmarks/sampler_noise.py (the Flow-SDE vs CPS write-up): noiseless settings land exactly on the
    ODE's action from the same x_0; Flow-SDE widens the action spread, CPS keeps it near the ODE's."""
    from benchmarks.sampler_noise import measure
    from flowpolicy.checkpoint import load_policy

    policy, _ = load_policy("data/policies/hopper-flow-bc")
    cond = torch.randn(16, policy.config.cond_dim, generator=torch.Generator().manual_seed(0))
    for spec in ["ode", "flow_sde:a=0", "cps:eta=0"]:
        row = measure(policy, cond, spec, samples=8, seed=0)
        assert row["deviation_from_ode_rms"] < 1e-5, spec
        assert row["summed_step_variance"] == 0.0, spec
    sde, cps = (measure(policy, cond, spec, samples=32, seed=0) for spec in ["flow_sde:a=0.5", "cps:eta=0.8"])
    assert sde["deviation_from_ode_rms"] > 0.1 and cps["deviation_from_ode_rms"] > 0.1
    assert sde["action_std"] > 1.3 * sde["ode_action_std"]
    assert abs(cps["action_std"] / cps["ode_action_std"] - 1) < 0.2


@pytest.mark.parametrize("alphas", [[0.1, 0.5, 0.999999], [0.1, 1.0, 1.0], [0.5, 0.4, 1.0], [0.0, 0.5, 1.0]])
def test_ddim_refuses_schedules_that_break_its_last_step(alphas):
    """ᾱ_K must be exactly 1 (a deterministic last step), ᾱ_{K−1} < 1 (else 0/0), and ᾱ non-decreasing from > 0."""
    with pytest.raises(ValueError, match="alphas_cumprod"):
        make_sampler("ddim", eta=1.0, alphas_cumprod=torch.tensor(alphas, dtype=torch.float64))


def test_ddim_min_std_floors_every_step_and_keeps_the_mean():
    """DPPO's exploration floor: σ_k = max(σ_η,k, floor) on every step (the last one too, which η leaves at 0), the
    means are DDIM-η's, and each step's log-prob is the Gaussian one of the floored σ (exact likelihoods)."""
    from flowpolicy.config import ConfigError

    K, floor, B = 6, 0.5, 4
    alphas = cosine_alphas_cumprod(time_grid(K, dtype=torch.float64))
    v = gaussian_epsilon(M, S, cosine_alphas_cumprod)
    cond = torch.zeros(B, 1).double()
    plain = make_sampler("ddim", eta=1.0, alphas_cumprod=alphas)
    floored = make_sampler("ddim", eta=1.0, alphas_cumprod=alphas, min_std=floor)
    chain = floored.sample(v, cond, torch.randn(B, 3, generator=torch.Generator().manual_seed(0)).double(), K)
    x_next, mean, std = floored.step_distributions(v, cond, chain.xs, K)
    _, plain_mean, plain_std = plain.step_distributions(v, cond, chain.xs, K)
    torch.testing.assert_close(mean, plain_mean, rtol=0, atol=0)
    std, plain_std = (torch.as_tensor(t).expand_as(mean).reshape(B, K, -1) for t in (std, plain_std))
    torch.testing.assert_close(std, plain_std.clamp(min=floor), rtol=0, atol=0)
    assert torch.all(plain_std[:, -1] == 0) and torch.all(std[:, -1] == floor)
    assert torch.any(plain_std[:, :-1] > floor) and torch.any(plain_std[:, :-1] < floor)  # the floor binds somewhere
    expected = Normal(mean, std.reshape(B * K, -1)).log_prob(x_next).sum(-1).reshape(B, K)
    torch.testing.assert_close(chain.log_probs, expected)
    with pytest.raises(ConfigError, match="min_std"):
        make_sampler("ddim", eta=1.0, alphas_cumprod=alphas, min_std=-0.1)
