"""FPO: per-sample flow-matching losses, stored (τ, ε), ratio == 1, and a short run that improves."""

import numpy as np
import pytest
import torch
from conftest import full_and_resumed_runs

from agents.finetune import FinetuneConfig, finetune
from agents.fpo import FPOConfig, FPOLearner, cfm_losses
from agents.ppo import RatioCheckError
from flowpolicy import load_agent, load_policy
from flowpolicy.config import from_dict


def test_cfm_losses_match_a_hand_computed_loop(reach_policy):
    policy, _ = load_policy(reach_policy)
    gen = torch.Generator().manual_seed(0)
    cond, actions = torch.randn(3, 2, generator=gen), torch.randn(3, 2, generator=gen)
    taus, noises = torch.rand(3, 4, generator=gen), torch.randn(3, 4, 2, generator=gen)
    with torch.no_grad():
        got = cfm_losses(policy, cond, actions, taus, noises, "velocity")
        got_eps = cfm_losses(policy, cond, actions, taus, noises, "epsilon")
        for b in range(3):
            for i in range(4):
                t, e = taus[b, i], noises[b, i]
                x = t * actions[b] + (1 - t) * e
                v = policy.model.velocity(x[None], t[None], cond[b][None])[0]
                expected = (v - (actions[b] - e)).square().mean()
                assert got[b, i] == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
                # the ε-weighted loss is the error of the implied noise prediction x − τ·v
                eps_err = ((x - t * v) - e).square().mean()
                assert got_eps[b, i] == pytest.approx(eps_err.item(), rel=1e-4, abs=1e-7)


def make_learner(policy_path, **cfg):
    policy, _ = load_policy(policy_path)
    config = FPOConfig(**{"num_envs": 4, "decisions_per_env": 16, "minibatch_size": 32, "critic_hidden": [16],
                          "critic_warmup_iterations": 0, **cfg})
    return FPOLearner(policy, "ReachTest-v0", config, total_iterations=4, seed=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_ratio_is_one_with_the_stored_tau_and_noise_and_the_check_fires(reach_policy, per_sample):
    learner = make_learner(reach_policy, per_sample_ratio=per_sample)
    learner.collect(0)
    assert learner.update(0)["losses/logratio_max_dev"] <= 1e-5
    learner.collect(1)
    # recomputation must use the stored (τ, ε): with other noises the losses, hence the ratio, change
    learner.buffer.extras["noises"] += 0.3
    with pytest.raises(RatioCheckError, match="iteration 1"):
        learner.update(1)
    learner.collect(2)
    learner.buffer.extras["taus"] = (learner.buffer.extras["taus"] + 0.2) % 1.0
    with pytest.raises(RatioCheckError, match="iteration 2"):
        learner.update(2)
    learner.envs.close()


def fpo_config(policy, out, total=8192, **algo):
    return from_dict(FinetuneConfig, {
        "algorithm": "fpo", "env_id": "ReachTest-v0", "policy": str(policy), "out": str(out), "seed": 1,
        "torch_threads": 1,
        "runner": {"total_env_steps": total, "eval_every": 0, "eval_episodes": 16, "progress": False},
        "algo": {"num_envs": 8, "decisions_per_env": 64, "minibatch_size": 128, "update_epochs": 4, "actor_lr": 3e-3,
                 "critic_lr": 3e-3, "clip_range": 0.2, "critic_warmup_iterations": 1, "critic_hidden": [32, 32],
                 "lr_min_fraction": 1.0, **algo}})


def test_fpo_improves_a_tiny_task_and_saves_a_loadable_policy(reach_policy, tmp_path):
    summary = finetune(fpo_config(reach_policy, tmp_path))
    # measured: −12.2 → −1.4 (optimum 0)
    assert summary["initial_return"] < -5 and summary["final_return"] > 0.5 * summary["initial_return"], summary
    assert load_agent(tmp_path / "policy").act(np.zeros(2, np.float32)).shape == (2,)


def test_fpo_resume_reproduces_an_uninterrupted_run(reach_policy, tmp_path, monkeypatch):
    def config(out):
        return fpo_config(reach_policy, out, total=2048)

    full, resumed = full_and_resumed_runs(config, FPOLearner, tmp_path, monkeypatch)
    assert resumed["final_return"] == full["final_return"] and resumed["env_steps"] == full["env_steps"]


def test_asymmetric_surrogate_is_ppo_at_ratio_one_and_pulls_negative_samples_back():
    from agents.ppo import asymmetric_surrogate, clipped_surrogate

    adv = torch.tensor([[2.0], [-2.0]])
    for r0 in (1.0, 0.5):  # at r = 1 both give PPO's gradient; far below 1 − ε only SPO's is non-zero
        grads = []
        for surrogate in (clipped_surrogate, asymmetric_surrogate):
            ratio = torch.full((2, 1), r0, requires_grad=True)
            surrogate(ratio, adv, 0.1).backward()
            grads.append(ratio.grad.clone())
        if r0 == 1.0:
            assert torch.allclose(grads[0], grads[1]) and torch.allclose(grads[0], -adv / 2)
        else:
            assert grads[0][1].item() == 0.0  # the clip has stopped pushing the A < 0 sample ...
            # ... SPO pulls it back up: d/dr of −(A·r − |A|/(2ε)(r − 1)²) / 2 at r = 0.5, A = −2, ε = 0.1
            assert grads[1][1].item() == pytest.approx((2.0 + 2.0 / 0.1 * (0.5 - 1.0)) / 2)
            assert grads[1][1].item() < 0  # descending the loss raises r
    # the optimum of SPO's objective for fixed A < 0 is r = 1 − ε
    ratio = torch.linspace(0.5, 1.5, 1001)[:, None]
    losses = [asymmetric_surrogate(r[None], torch.tensor([[-1.0]]), 0.1) for r in ratio]
    assert ratio[int(torch.stack(losses).argmin())].item() == pytest.approx(0.9, abs=1e-3)


def test_fpo_plus_plus_settings_improve_a_tiny_task(reach_policy, tmp_path):
    summary = finetune(fpo_config(reach_policy, tmp_path, per_sample_ratio=True, negative_advantages="spo"))
    # measured: −12.2 → −2.2
    assert summary["initial_return"] < -5 and summary["final_return"] > 0.5 * summary["initial_return"], summary


def test_fpo_refuses_shortcut_policies(tmp_path):
    """A shortcut policy acts with its step-size head, so FPO's flow-matching ratio would score another network."""
    from flowpolicy.networks import NetworkConfig
    from flowpolicy.policy import Policy, PolicyConfig

    policy = Policy(PolicyConfig(kind="shortcut", obs_dim=2, action_dim=2, horizon=1, num_steps=2,
                                 network=NetworkConfig(hidden=[8])))
    with pytest.raises(ValueError, match="flow policies"):
        FPOLearner(policy, "ReachTest-v0", FPOConfig(num_envs=2, decisions_per_env=4), total_iterations=1)
