"""Task-scaled defaults (agents/autoscale.py): the noise probe's choice, the reward scale, ∇Q normalization,
reference scores from a dataset, and a run that measures its settings once and keeps them."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from agents import autoscale
from agents.autoscale import ConstantNoise, probe_noise_tolerance, resolve_auto_settings, reward_scale_from
from agents.qsm import QSMConfig, qsm_actor_loss
from agents.reinflow import ReinFlowConfig
from envs.registry import TaskSpec, with_reference_scores
from flowpolicy.checkpoint import load_policy
from flowpolicy.config import ConfigError
from flowpolicy.samplers import ODESampler


def test_constant_noise_adds_sigma_on_every_step_or_on_the_last_only():
    base = ODESampler()
    x, obs = torch.zeros(3, 2), torch.zeros(3, 1)
    K = 4
    for last_only, expected in [(False, [0.2, 0.2, 0.2, 0.2]), (True, [0.0, 0.0, 0.0, 0.2])]:
        sampler = ConstantNoise(base, 0.2, last_only)
        for k in range(K):
            steps = torch.full((3,), k)
            mean, std = sampler.transition(lambda x, t, o: torch.ones_like(x), x, steps, K, obs)
            torch.testing.assert_close(mean, base.transition(lambda x, t, o: torch.ones_like(x), x, steps, K, obs)[0])
            torch.testing.assert_close(std.expand(3, 2), torch.full((3, 2), expected[k]))


def scripted_probe(monkeypatch, returns_by_sigma: dict[float, float], base: float = 100.0):
    """Replace the probe's episodes by scripted mean returns (σ = None: the noiseless baseline)."""
    tried = []

    def fake(policy, env_id, sampler, K, seed, episodes, env_kwargs, env_options):
        sigma = None if sampler is None else sampler.sigma
        tried.append(sigma)
        mean = base if sigma is None else returns_by_sigma[sigma]
        return mean, [mean] * episodes, [10] * episodes

    monkeypatch.setattr(autoscale, "_probe", fake)
    return tried


def test_probe_doubles_sigma_until_the_policy_loses_half_its_score(reach_policy, monkeypatch):
    policy, _ = load_policy(reach_policy)
    # random = 0, BC = 100: keeps 90, 80, 60, 51 %, then 49 % at 0.12 → 0.06; 0.24 is never tried
    tried = scripted_probe(monkeypatch, {0.0075: 90, 0.015: 80, 0.03: 60, 0.06: 51, 0.12: 49, 0.24: 99})
    probe = probe_noise_tolerance(policy, "ReachTest-v0", "chain", K=2, random_return=0.0)
    assert probe.sigma == 0.06
    assert tried == [None, 0.0075, 0.015, 0.03, 0.06, 0.12]
    assert probe.kept[0.12] == pytest.approx(0.49) and probe.env_steps == 6 * 16 * 10
    # a score below random counts from random: BC −50 over random −100 keeps (−80 + 100) / 50 = 40 %
    scripted_probe(monkeypatch, {0.0075: -70, 0.015: -80}, base=-50.0)
    assert probe_noise_tolerance(policy, "ReachTest-v0", "action", K=2, random_return=-100.0).sigma == 0.0075


def test_probe_falls_back_to_the_smallest_sigma_with_a_warning(reach_policy, monkeypatch):
    policy, _ = load_policy(reach_policy)
    scripted_probe(monkeypatch, {0.0075: 10.0})
    with pytest.warns(UserWarning, match="keeps < 50% of its score even at chain noise 0.0075"):
        assert probe_noise_tolerance(policy, "ReachTest-v0", "chain", K=2, random_return=0.0).sigma == 0.0075


def test_reward_scale_is_one_over_the_mean_absolute_reward_per_decision():
    # |100| / 50 = 2 and |−400| / 100 = 4 per step → 3 per step → 12 per 4-step decision
    assert reward_scale_from([100.0, -400.0], [50, 100], act_steps=4) == pytest.approx(1 / 12)
    assert reward_scale_from([0.0, 0.0], [100, 100], act_steps=4) == 1.0  # a sparse reward never earned


def test_resolve_fills_only_the_unset_settings(reach_policy, monkeypatch):
    policy, _ = load_policy(reach_policy)
    scripted_probe(monkeypatch, {0.0075: 90, 0.015: 90, 0.03: 90, 0.06: 90, 0.12: 10})
    task = TaskSpec("ReachTest-v0", 2, 2, 8, random_score=0.0, expert_score=200.0)
    cfg, report = resolve_auto_settings("reinflow", ReinFlowConfig(), policy, "ReachTest-v0", task, log=lambda s: None)
    assert (cfg.sigma_max, cfg.sigma_min) == (0.06, 0.024) and report["probe_env_steps"] == 6 * 16 * 10
    cfg, report = resolve_auto_settings("reinflow", ReinFlowConfig(sigma_max=0.2), policy, "ReachTest-v0", task,
                                        log=lambda s: None)
    assert (cfg.sigma_max, cfg.sigma_min) == (0.2, 0.08)  # no noise probe: σ_min follows the given σ_max
    fixed = ReinFlowConfig(sigma_min=0.1, sigma_max=0.2)
    assert resolve_auto_settings("reinflow", fixed, policy, "ReachTest-v0", task) == (fixed, None)
    # QSM: exploration measured on the action, target noise and clip follow it, reward scale 1/(100/10·1)
    cfg, report = resolve_auto_settings("qsm", QSMConfig(), policy, "ReachTest-v0", task, log=lambda s: None)
    assert (cfg.exploration_noise, cfg.target_noise, cfg.target_noise_clip) == (0.06, 0.06, 0.18)
    assert cfg.reward_scale == pytest.approx(0.1) and cfg.q_grad_coeff == 0.01  # α = σ / 6
    cfg, _ = resolve_auto_settings("qsm", QSMConfig(exploration_noise=0.2, reward_scale=1.0), policy,
                                   "ReachTest-v0", task, log=lambda s: None)
    assert (cfg.exploration_noise, cfg.target_noise, cfg.target_noise_clip, cfg.reward_scale) == (0.2, 0.2, 0.6, 1.0)
    assert cfg.q_grad_coeff == 0.0333
    raw = resolve_auto_settings("qsm", QSMConfig(exploration_noise=0.2, reward_scale=1.0, q_grad_normalize=False),
                                policy, "ReachTest-v0", task, log=lambda s: None)[0]
    assert raw.q_grad_coeff == 0.1  # on the raw ∇Q: the Hopper configs' α


def test_a_learner_built_directly_needs_numbers(reach_policy):
    from agents.reinflow import ReinFlowLearner

    policy, _ = load_policy(reach_policy)
    with pytest.raises(ConfigError, match="sigma_min, sigma_max unset"):
        ReinFlowLearner(policy, "ReachTest-v0", ReinFlowConfig(num_envs=2), total_iterations=1)


def test_normalized_grad_q_makes_the_actor_target_independent_of_the_q_scale(reach_policy):
    """With ∇Q divided by its RMS, a critic 10× larger (a reward 10× larger) asks the same of the policy."""
    policy, _ = load_policy(reach_policy)
    cond, actions = torch.randn(64, policy.config.cond_dim), torch.rand(64, policy.config.chunk_dim) * 2 - 1
    weights = torch.randn(policy.config.chunk_dim)

    def rms(g):
        return g.square().mean().sqrt()

    losses = []
    for scale in (1.0, 10.0):
        def q_fn(c, a, scale=scale):
            return scale * (a * weights).sum(-1) + c.sum(-1)

        gen = torch.Generator().manual_seed(0)
        losses.append(qsm_actor_loss(policy, q_fn, cond, actions, 0.1, target_scale="noise", generator=gen,
                                     grad_scale=rms)[0])
    torch.testing.assert_close(losses[0], losses[1])
    gen = torch.Generator().manual_seed(0)
    raw = qsm_actor_loss(policy, lambda c, a: 10 * (a * weights).sum(-1), cond, actions, 0.1,
                         target_scale="noise", generator=gen)[0]
    assert not torch.allclose(raw, losses[0])  # without the normalization the scale does matter


def test_the_running_grad_scale_starts_at_the_first_batch_and_averages(reach_policy):
    from agents.qsm import QSMLearner

    policy, _ = load_policy(reach_policy)
    learner = QSMLearner(policy, "ReachTest-v0", QSMConfig(num_envs=1, decisions_per_env=2, exploration_noise=0.1,
                                                           target_noise=0.1, target_noise_clip=0.3, reward_scale=1.0,
                                                           bc_coeff=0.0, q_grad_coeff=0.01),
                         total_iterations=1)
    first = learner.q_grad_scale(torch.full((4, 2), 2.0))
    torch.testing.assert_close(first, torch.tensor(2.0))  # bias-corrected: exactly the first batch's RMS
    second = learner.q_grad_scale(torch.full((4, 2), 4.0))
    b = learner.Q_GRAD_DECAY
    expected = ((b * (1 - b) * 4 + (1 - b) * 16) / (1 - b ** 2)) ** 0.5
    torch.testing.assert_close(second, torch.tensor(expected))
    extra = learner.training_state()[3]
    learner.load_extra(extra, learner.training_arrays())
    assert learner.q_grad_steps == 2 and float(learner.q_grad_sq) == pytest.approx(extra["q_grad_sq"])
    learner.envs.close()


def test_reference_scores_of_the_dataset_normalize_an_unregistered_task():
    task = TaskSpec("Mine-v0", 3, 1, 100)
    scored = with_reference_scores(task, {"reference_scores": {"random": -10.0, "expert": 30.0}})
    assert scored.normalized_score(10.0) == 50.0
    fine_tuned = {"algorithm": "qsm", "pretrained_metadata": {"reference_scores": {"random": -10.0, "expert": 30.0}}}
    assert with_reference_scores(task, fine_tuned) == scored
    registered = TaskSpec("Hopper-v5", 11, 3, 1000, random_score=16.7, expert_score=3154.8)
    assert with_reference_scores(registered, {"reference_scores": {"random": 0, "expert": 1}}) is registered
    assert with_reference_scores(task, {}) is task


def test_a_run_measures_its_settings_once_and_resumes_with_them(reach_policy, tmp_path, monkeypatch, capsys):
    from flowpolicy.cli import main

    run = tmp_path / "run"
    tiny = ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.minibatch_size=16", "algo.update_epochs=1",
            "algo.critic_hidden=[8]", "algo.noise_hidden=[8]", "runner.total_env_steps=32", "runner.eval_every=0",
            "runner.eval_episodes=2", "runner.progress=false", "torch_threads=1"]
    assert main(["finetune", "--policy", str(reach_policy), "--out", str(run), *tiny]) == 0
    out = capsys.readouterr().out
    assert "autoscale: sigma_max=" in out and "probe env steps" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["algorithm"] == "reinflow" and saved["env_id"] == "ReachTest-v0"  # the policy's env
    assert saved["algo"]["sigma_max"] in autoscale.NOISE_GRID
    assert saved["algo"]["sigma_min"] == pytest.approx(0.4 * saved["algo"]["sigma_max"], rel=1e-2)
    meta = json.loads((run / "policy" / "policy.json").read_text())["metadata"]
    assert meta["autoscale"]["sigma_max"] == saved["algo"]["sigma_max"]

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run must not probe again")

    monkeypatch.setattr(autoscale, "_probe", no_probe)
    assert main(["finetune", "--resume", str(run), "runner.total_env_steps=64"]) == 0
    assert "autoscale" not in capsys.readouterr().out
    # bare --resume with the same command line: the run in --out, its measured settings kept
    assert main(["finetune", "--policy", str(reach_policy), "--out", str(run), *tiny, "--resume"]) == 0
    assert "finished run, nothing to do" in capsys.readouterr().out


def test_qsm_bc_term_uses_the_policys_own_dataset_or_turns_off(reach_policy, tmp_path):
    policy, _ = load_policy(reach_policy)
    task = TaskSpec("ReachTest-v0", 2, 2, 8)
    fixed = {"exploration_noise": 0.1, "reward_scale": 1.0}
    data = tmp_path / "demos"
    data.mkdir()
    cfg, report = resolve_auto_settings("qsm", QSMConfig(**fixed), policy, "ReachTest-v0", task, log=lambda s: None,
                                        metadata={"dataset": "gone/dataset", "dataset_path": str(data)})
    assert (cfg.dataset, cfg.bc_coeff) == (str(data), 0.5) and report["dataset"] == str(data)
    cfg, report = resolve_auto_settings("qsm", QSMConfig(**fixed), policy, "ReachTest-v0", task, log=lambda s: None,
                                        metadata={"dataset": "gone/dataset"})
    assert (cfg.dataset, cfg.bc_coeff) == (None, 0.0) and report["bc_coeff"] == 0.0
    given = QSMConfig(**fixed, dataset="mine", target_noise=0.1, target_noise_clip=0.3, q_grad_coeff=0.01)
    assert resolve_auto_settings("qsm", given, policy, "ReachTest-v0", task, metadata={"dataset": str(data)}) \
        == (given, None)


def test_resuming_from_a_config_with_nulls_reuses_the_measured_numbers(reach_policy, tmp_path, monkeypatch, capsys):
    from flowpolicy.cli import main

    run, config = tmp_path / "run", tmp_path / "qsm.yaml"
    config.write_text(json.dumps({
        "algorithm": "qsm", "env_id": "ReachTest-v0", "policy": str(reach_policy), "out": str(run), "torch_threads": 1,
        "runner": {"total_env_steps": 64, "eval_every": 0, "eval_episodes": 2, "progress": False},
        "algo": {"num_envs": 2, "decisions_per_env": 8, "batch_size": 16, "critic_hidden": [8],
                 "critic_warmup_iterations": 1, "bc_coeff": 0.5}}))
    assert main(["finetune", "--config", str(config)]) == 0
    saved = json.loads((run / "config.json").read_text())["algo"]
    assert saved["bc_coeff"] == 0.0 and saved["reward_scale"] > 0  # no dataset here: no BC term
    assert saved["tau"] == QSMConfig().tau  # every setting is saved, defaults too: a new default cannot leak in
    monkeypatch.setattr(autoscale, "_probe", lambda *a, **k: (_ for _ in ()).throw(AssertionError("probed")))
    capsys.readouterr()
    assert main(["finetune", "--config", str(config), "runner.total_env_steps=128", "--resume"]) == 0
    assert "autoscale" not in capsys.readouterr().out
    assert json.loads((run / "config.json").read_text())["algo"] == saved


def test_a_configured_sigma_min_above_the_measured_sigma_max_wins_with_a_warning(reach_policy, monkeypatch):
    policy, _ = load_policy(reach_policy)
    scripted_probe(monkeypatch, {0.0075: 90, 0.015: 90, 0.03: 90, 0.06: 90, 0.12: 10})
    task = TaskSpec("ReachTest-v0", 2, 2, 8, random_score=0.0, expert_score=200.0)
    with pytest.warns(UserWarning, match="below the configured sigma_min 0.1"):
        cfg, _ = resolve_auto_settings("reinflow", ReinFlowConfig(sigma_min=0.1), policy, "ReachTest-v0", task,
                                       log=lambda s: None)
    assert (cfg.sigma_min, cfg.sigma_max) == (0.1, 0.1)


def test_the_default_run_directory_names_the_algorithm_and_env_given_as_overrides(reach_policy, tmp_path,
                                                                                    monkeypatch):
    from flowpolicy.cli import main

    monkeypatch.chdir(tmp_path)
    tiny = ["algo.num_envs=2", "algo.decisions_per_env=8", "algo.batch_size=16", "algo.critic_hidden=[8]",
            "algo.exploration_noise=0.1", "algo.reward_scale=1.0", "algo.bc_coeff=0", "runner.total_env_steps=32",
            "runner.eval_every=0", "runner.eval_episodes=2", "runner.progress=false", "torch_threads=1"]
    assert main(["finetune", "--policy", str(reach_policy), "algorithm=qsm", *tiny]) == 0
    assert (tmp_path / "runs" / "finetune" / "ReachTest-v0-qsm" / "summary.json").is_file()


def test_a_probe_too_noisy_to_resolve_the_drop_warns(reach_policy, monkeypatch):
    """A weak policy on a sparse reward (3 successes of 16, as robomimic Square's BC): the noiseless score's
    standard error is half its span, so the σ the probe picks means nothing — it says so."""
    policy, _ = load_policy(reach_policy)
    scripted_probe(monkeypatch, {0.0075: 100.0, 0.015: 100.0, 0.03: 100.0, 0.06: 100.0, 0.12: 100.0, 0.24: 100.0})
    sparse = ([100.0] * 3 + [0.0] * 13, [10] * 16)  # mean 18.75, standard error ≈ 10 (53 % of the span)
    with pytest.warns(UserWarning, match="too noisy to measure its noise tolerance"):
        probe_noise_tolerance(policy, "ReachTest-v0", "chain", K=2, random_return=0.0, baseline=sparse)
    steady = ([100.0] * 8 + [90.0] * 8, [10] * 16)  # a dense task: standard error 1.3 % of the span
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe_noise_tolerance(policy, "ReachTest-v0", "chain", K=2, random_return=0.0, baseline=steady)
