"""Issue #13, evaluation / dataset / env-id part: bad input to `evaluate` and `pretrain` is one line and
changes nothing; module env ids; evaluation independent of the number of envs and of the command;
non-finite returns are errors; `--json` carries the standard error and per-episode returns; datasets are
checked by env id (with an explicit override)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from envs.evaluation import EvaluationError, evaluate_agent
from envs.registry import EnvError, get_task
from envs.vector import VecEnv, make_env
from flowpolicy import save_policy
from flowpolicy.agent import Agent, load_agent
from flowpolicy.config import ConfigError, from_dict
from flowpolicy.networks import NetworkConfig
from flowpolicy.policy import Policy, PolicyConfig
from pretrain.bc import PretrainConfig, load_demonstrations, pretrain
from pretrain.datasets import DatasetError, Episode, write_minari_dataset, write_robomimic_hdf5

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TINY_CLASS = "reliability_envs:TinyEnv"
TINY_ID = "reliability_envs:ReliabilityTiny-v0"


def flowpolicy(*args):
    """``python -m flowpolicy.cli ARGS`` with this checkout and ``tests/`` (the helper env module) importable."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "flowpolicy.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


_DRIVER = """
import contextlib, io, json, sys, traceback
from flowpolicy.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as exit:
            rc = exit.code
        except BaseException:
            rc, _ = -1, traceback.print_exc()
    results.append({"returncode": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def flowpolicy_many(argvs: list[list]) -> list[Result]:
    """Run ``flowpolicy.cli.main(argv)`` for each argv in one fresh subprocess (imports paid once): a
    traceback that escapes ``main`` is captured as stderr, so the checks are those of separate runs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps([[str(a) for a in argv] for argv in argvs])],
                         capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert out.returncode == 0, out.stderr
    return [Result(**r) for r in json.loads(out.stdout.splitlines()[-1])]


def checksums(directory: Path) -> dict:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_line_error(out, *fragments):
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.endswith("\n"), out.stderr
    for fragment in fragments:
        assert fragment in out.stderr, out.stderr


def tiny_policy(obs_dim=3, action_dim=2, horizon=2, seed=0):
    torch.manual_seed(seed)
    return Policy(PolicyConfig(obs_dim=obs_dim, action_dim=action_dim, horizon=horizon, num_steps=3,
                               network=NetworkConfig(hidden=[16])))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_policy(tiny_policy(), tmp_path_factory.mktemp("tiny") / "policy", metadata={"env_id": TINY_CLASS})


@pytest.fixture(scope="module")
def hopper_checkpoint(tmp_path_factory):
    return save_policy(tiny_policy(11, 3, 4), tmp_path_factory.mktemp("hopper") / "policy",
                       metadata={"env_id": "Hopper-v5"})


# -- env ids --------------------------------------------------------------------------------------------

def test_module_class_and_module_env_id_work_everywhere():
    for env_id in (TINY_CLASS, TINY_ID):
        task = get_task(env_id)
        assert (task.obs_dim, task.action_dim, task.max_episode_steps) == (3, 2, 7)
        env = make_env(env_id)
        env.reset(seed=0)
        for _ in range(7):
            *_, terminated, truncated, _ = env.step(np.zeros(2, np.float32))
            if terminated or truncated:
                break
        assert terminated or truncated  # TimeLimit from the class's max_episode_steps
        env.close()
        with VecEnv(env_id, 2) as vec:
            vec.reset(0)
            assert vec.step(np.zeros((2, 2), np.float32)).obs.shape == (2, 3)


@pytest.mark.parametrize("env_id, message", [
    ("Nope-v0", "unknown environment 'Nope-v0'"),
    ("no_such_module_xyz:Env", "cannot import module 'no_such_module_xyz'"),
    ("reliability_envs:Missing", "neither registers a gymnasium env 'Missing' nor defines 'Missing'"),
    (":TinyEnv", "expected module:EnvId or module:Class"),
])
def test_bad_env_ids_are_one_line_env_errors(env_id, message):
    with pytest.raises(EnvError, match=message) as err:
        get_task(env_id)
    assert "\n" not in str(err.value)
    with pytest.raises(EnvError):
        make_env(env_id)


# -- evaluation semantics ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler, params", [(None, {}), ("flow_sde", {"a": 0.5})])
def test_evaluation_does_not_depend_on_the_number_of_envs(sampler, params):
    policy = tiny_policy()
    results = [evaluate_agent(Agent(policy, sampler=sampler, seed=n, **params), TINY_CLASS, 7, seed=3, num_envs=n)
               for n in (1, 3, 8)]
    assert results[0].returns == results[1].returns == results[2].returns
    assert results[0].lengths == results[1].lengths == results[2].lengths
    assert len(set(results[0].lengths)) > 1  # uneven episodes: envs really do take episodes out of order
    # episode k depends on (seed, k) only: a longer evaluation starts with the same episodes
    assert evaluate_agent(Agent(policy, sampler=sampler, **params), TINY_CLASS, 3, seed=3,
                          num_envs=2).returns == results[0].returns[:3]
    assert evaluate_agent(Agent(policy), TINY_CLASS, 3, seed=4).returns != results[0].returns[:3]


def test_mujoco_evaluation_does_not_depend_on_the_number_of_envs():
    policy = tiny_policy(11, 3, 4)
    one, three = (evaluate_agent(Agent(policy), "Hopper-v5", 4, seed=11, num_envs=n) for n in (1, 3))
    assert one.returns == three.returns and one.lengths == three.lengths


def test_bad_evaluation_arguments_are_errors():
    agent = Agent(tiny_policy())
    for kwargs, message in (({"episodes": 0}, "episodes must be"), ({"num_envs": 0}, "num_envs must be"),
                            ({"seed": -1}, "seed must be")):
        with pytest.raises(EnvError, match=message):
            evaluate_agent(agent, TINY_CLASS, **{"episodes": 2, **kwargs})
    with pytest.raises(ConfigError, match="K .* must be an integer ≥ 1, got 0"):
        Agent(tiny_policy(), K=0)


def test_non_finite_return_is_an_error(tiny_checkpoint):
    with pytest.raises(EvaluationError, match="non-finite return"):
        evaluate_agent(Agent(tiny_policy()), "reliability_envs:NaNEnv", 2)
    out = flowpolicy("evaluate", "--checkpoint", tiny_checkpoint, "--env", "reliability_envs:NaNEnv", "--episodes", 2)
    assert_one_line_error(out, "non-finite return")
    assert "return nan" not in out.stdout


def test_json_has_standard_error_and_per_episode_results_and_matches_in_process(tiny_checkpoint):
    outs = [flowpolicy("evaluate", "--checkpoint", tiny_checkpoint, "--episodes", 5, "--seed", 2, "--num-envs", n,
                       "--json") for n in (1, 4)]
    for out in outs:
        assert out.returncode == 0, out.stderr
    one, four = (json.loads(out.stdout) for out in outs)
    for key in ("env", "episodes", "return_mean", "return_std", "return_sem", "returns", "lengths"):
        assert key in one, key
    assert one["env"] == TINY_CLASS and one["episodes"] == 5 and len(one["returns"]) == len(one["lengths"]) == 5
    assert one["return_sem"] == pytest.approx(np.std(one["returns"], ddof=1) / np.sqrt(5))
    assert one["return_mean"] == pytest.approx(np.mean(one["returns"]))
    assert one["returns"] == four["returns"] and one["lengths"] == four["lengths"]
    # the CLI evaluates exactly what evaluate_agent gives in-process for the same seed
    assert one["returns"] == evaluate_agent(load_agent(tiny_checkpoint), TINY_CLASS, 5, seed=2).returns
    out = flowpolicy("evaluate", "--checkpoint", tiny_checkpoint, "--env", TINY_ID, "--episodes", 2)
    assert out.returncode == 0 and "s.e." in out.stdout, out.stderr


# -- bad input to the commands: one line, exit ≠ 0, nothing changed -----------------------------------------

def test_evaluate_bad_inputs_are_one_line(hopper_checkpoint, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    before = checksums(tmp_path)
    cases = [
        (["--K", 0], "--K must be ≥ 1, got 0"),
        (["--num-envs", 0], "--num-envs must be ≥ 1, got 0"),
        (["--episodes", 0], "--episodes must be ≥ 1, got 0"),
        (["--seed", -1], "--seed must be ≥ 0"),
        (["--env", "Nope-v0"], "unknown environment 'Nope-v0'"),
        (["--env", "no_such_module_xyz:Env"], "cannot import module"),
        (["--env", "Walker2d-v5"], "but Walker2d-v5 has 17 and 6"),
        (["--sampler-param", "a=high"], "--sampler-param expects KEY=NUMBER"),
        (["--video", blocker / "videos"], "cannot create the directory"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    argvs = [["evaluate", "--checkpoint", hopper_checkpoint, "--episodes", 2, *extra] for extra, _ in cases]
    outs = [flowpolicy(*argvs[0])] + flowpolicy_many(argvs[1:])  # the first as its own process, end to end
    for (extra, message), out in zip(cases, outs, strict=True):
        assert_one_line_error(out, message)
        assert out.stdout == "", (extra, out.stdout)  # rejected before any episode ran
    assert checksums(tmp_path) == before


@pytest.fixture(scope="module")
def cheetah_world(tmp_path_factory):
    """A tiny Walker2d-v5 dataset (17/6 dims, like HalfCheetah-v5's) and a tiny HalfCheetah-v5 one, as Minari
    datasets and a robomimic file."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)

    def episodes(n=3, steps=6, obs_dim=17, action_dim=6):
        return [Episode(rng.normal(size=(steps + 1, obs_dim)), rng.uniform(-1, 1, (steps, action_dim)),
                        rng.normal(size=steps), False, True, i) for i in range(n)]

    return {"walker": write_minari_dataset("test/walker-tiny-v0", "Walker2d-v5", episodes(), root),
            "cheetah": write_minari_dataset("test/cheetah-tiny-v0", "HalfCheetah-v5", episodes(), root),
            "walker_h5": write_robomimic_hdf5(root / "walker.hdf5", episodes(), "Walker2d-v5")}


def pretrain_config(dataset, out, **top):
    data = {"env_id": "HalfCheetah-v5", "dataset": str(dataset), "out": str(out), "torch_threads": 1,
            "policy": {"kind": "flow", "horizon": 2, "num_steps": 2, "network": {"hidden": [16]}},
            "train": {"steps": 3, "batch_size": 8, "warmup_steps": 1, "val_every": 2, "eval_every": 0,
                      "eval_episodes": 0, "checkpoint_every": 0, "log_every": 1}}
    data.update(top)
    return data


def test_pretrain_bad_inputs_are_one_line_and_change_nothing(cheetah_world, tmp_path):
    out_dir = tmp_path / "run"
    (out_dir / "policy").mkdir(parents=True)
    (out_dir / "policy" / "model.safetensors").write_bytes(b"an earlier run's weights")
    (out_dir / "summary.json").write_text("{}")
    config = tmp_path / "pretrain.yaml"
    config.write_text(yaml.safe_dump(pretrain_config(cheetah_world["cheetah"], out_dir)))
    before = checksums(tmp_path)
    cases = [
        ([], "already holds a run"),  # no --overwrite: the earlier run is kept
        (["--overwrite", "train.steps=0"], "train.steps: must be ≥ 1, got 0"),
        (["--overwrite", "train.batch_size=0"], "train.batch_size: must be ≥ 1"),
        (["--overwrite", "train.lr=0"], "train.lr: must be > 0"),
        (["--overwrite", "train.lr=-1e-3"], "train.lr: must be > 0"),
        (["--overwrite", "train.ema_decay=1"], "train.ema_decay: must be < 1"),
        (["--overwrite", "train.val_fraction=1.5"], "train.val_fraction: must be < 1"),
        (["--overwrite", "train.eval_episodes=-1"], "train.eval_episodes: must be ≥ 0"),
        (["--overwrite", "train.lr=.nan"], "train.lr: expected a finite number"),
        (["--overwrite", "out="], "out: must be a non-empty string"),
        (["--overwrite", "seed=-1"], "seed: must be ≥ 0"),
        (["--overwrite", "env_id=Nope-v0"], "unknown environment 'Nope-v0'"),
        (["--overwrite", f"dataset={cheetah_world['walker']}"], "was recorded on Walker2d-v5, not HalfCheetah-v5"),
        (["--overwrite", f"dataset={cheetah_world['walker_h5']}"], "was recorded on Walker2d-v5"),
        (["--overwrite", "env_id=Hopper-v5", "allow_env_mismatch=true"], "observations have 17 dims but Hopper-v5"),
        (["--overwrite", f"dataset={tmp_path / 'missing'}"], "no local Minari dataset"),
    ]
    if not torch.cuda.is_available():
        cases.append((["--overwrite", "device=cuda"], "CUDA is not available"))
    argvs = [["pretrain", "--config", config, *extra] for extra, _ in cases]
    outs = [flowpolicy(*argvs[0])] + flowpolicy_many(argvs[1:])  # the first as its own process, end to end
    for (_, message), out in zip(cases, outs, strict=True):
        assert_one_line_error(out, message)
    assert checksums(tmp_path) == before


def test_pretrain_overwrite_replaces_an_earlier_run(cheetah_world, tmp_path):
    cfg = from_dict(PretrainConfig, pretrain_config(cheetah_world["cheetah"], tmp_path))
    pretrain(cfg, progress=False)
    first = checksums(tmp_path)
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(cfg, progress=False)
    assert checksums(tmp_path) == first
    cfg.overwrite, cfg.seed = True, 1
    pretrain(cfg, progress=False)
    assert json.loads((tmp_path / "summary.json").read_text())["policy"] == str(tmp_path / "policy")
    assert checksums(tmp_path)["policy/model.safetensors"] != first["policy/model.safetensors"]
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("events.out")]) == 1  # old events removed


# -- datasets checked by env id ------------------------------------------------------------------------------

def test_dataset_env_id_mismatch_is_refused_unless_allowed(cheetah_world, tmp_path):
    for source in (cheetah_world["walker"], cheetah_world["walker_h5"]):
        with pytest.raises(DatasetError, match="recorded on Walker2d-v5, not HalfCheetah-v5") as err:
            load_demonstrations(str(source), env_id="HalfCheetah-v5", obs_dim=17, action_dim=6)
        assert "\n" not in str(err.value) and "allow_env_mismatch" in str(err.value)
        episodes, meta = load_demonstrations(str(source), env_id="HalfCheetah-v5", obs_dim=17, action_dim=6,
                                             allow_env_mismatch=True)
        assert meta["env_id"] == "Walker2d-v5" and len(episodes) == 3
    with pytest.raises(DatasetError, match="recorded on Walker2d-v5"):
        pretrain(from_dict(PretrainConfig, pretrain_config(cheetah_world["walker"], tmp_path / "a")), progress=False)
    assert not (tmp_path / "a").exists()  # nothing written
    summary = pretrain(from_dict(PretrainConfig, pretrain_config(cheetah_world["walker"], tmp_path / "b",
                                                                 allow_env_mismatch=True)), progress=False)
    assert summary["dataset_metadata"]["env_id"] == "Walker2d-v5"


def test_learner_demonstrations_are_checked_by_env_id_and_size(cheetah_world):
    from agents.replay import demonstration_transitions

    cheetah_policy = tiny_policy(17, 6, 2)
    with pytest.raises(DatasetError, match="recorded on Walker2d-v5, not HalfCheetah-v5.*algo.allow_env_mismatch"):
        demonstration_transitions(cheetah_policy, str(cheetah_world["walker"]), env_id="HalfCheetah-v5")
    demos = demonstration_transitions(cheetah_policy, str(cheetah_world["walker"]), env_id="HalfCheetah-v5",
                                      allow_env_mismatch=True)
    assert demos["actions"].shape[1] == 12
    hopper_policy = tiny_policy(11, 3, 2)  # a Walker2d dataset for a Hopper learner: one line, not a shape traceback
    with pytest.raises(DatasetError, match="observations have 17 dims but Hopper-v5 has 11"):
        demonstration_transitions(hopper_policy, str(cheetah_world["walker"]), env_id="Hopper-v5",
                                  allow_env_mismatch=True)


# -- one number per checkpoint and seed ----------------------------------------------------------------------

def test_pretrain_final_evaluation_equals_the_evaluate_command(cheetah_world, tmp_path):
    cfg = from_dict(PretrainConfig, pretrain_config(cheetah_world["cheetah"], tmp_path, seed=4))
    cfg.train.eval_episodes = 3
    summary = pretrain(cfg, progress=False)
    out = flowpolicy("evaluate", "--checkpoint", tmp_path / "policy", "--episodes", 3, "--seed", 4, "--num-envs", 2,
                     "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["returns"] == summary["eval"]["returns"]
    assert result["return_mean"] == summary["eval"]["return_mean"]


def test_a_failing_video_prints_the_result_first_then_one_line(tiny_checkpoint, tmp_path):
    out = flowpolicy("evaluate", "--checkpoint", tiny_checkpoint, "--episodes", 2, "--json", "--video", tmp_path)
    assert_one_line_error(out, "--video: cannot write", "render_mode='rgb_array'")  # TinyEnv cannot render
    assert json.loads(out.stdout)["episodes"] == 2  # the evaluation result was printed anyway
