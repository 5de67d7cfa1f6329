"""The ``flowpolicy`` command line: the one place that ties the policy core, envs, pretraining and
learners together. Each subcommand documents its options under ``flowpolicy CMD --help``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flowpolicy import __version__


def cmd_info(args: argparse.Namespace) -> int:
    """Print a checkpoint's policy description (kind, shapes, normalizers, metadata)."""
    from flowpolicy.checkpoint import load_policy, read_policy_json

    meta = read_policy_json(args.checkpoint)
    policy, _ = load_policy(args.checkpoint)  # also validates the tensors against the description
    n_params = sum(p.numel() for p in policy.parameters())
    if args.json:
        print(json.dumps({**meta, "num_parameters": n_params}, indent=2))
        return 0
    c = policy.config
    print(f"{args.checkpoint}: {c.kind} policy, {n_params:,} parameters")
    print(f"  observation {c.obs_dim} × history {c.n_obs_steps}; action {c.action_dim} × chunk {c.horizon} "
          f"(executes {c.act_steps}); default K = {c.num_steps}")
    print(f"  network: {c.network.kind} {c.network.hidden} ({c.network.activation})")
    for key, value in sorted(meta.get("metadata", {}).items()):
        print(f"  {key}: {value}")
    return 0


def parse_env_kwargs(items: list[str] | None, option: str = "--env-kwarg") -> dict:
    """``KEY=VALUE`` strings as a dict; VALUE is read as a YAML scalar (3, 0.5, true, null, [a, b], text)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"{option} expects KEY=VALUE (e.g. env_name=reach-v3), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def env_settings(args: argparse.Namespace, metadata: dict, env_id: str):
    """The env kwargs and :class:`envs.wrappers.EnvOptions` of an evaluation: those the checkpoint was trained
    with (its metadata) when it is evaluated on its own env, updated by --env-kwarg / --env-option."""
    from envs.wrappers import EnvOptions
    from flowpolicy.config import from_dict

    same_env = env_id == metadata.get("env_id")
    kwargs = {**(metadata.get("env_kwargs") or {} if same_env else {}), **parse_env_kwargs(args.env_kwarg)}
    options = {**(metadata.get("env_options") or {} if same_env else {}),
               **parse_env_kwargs(args.env_option, "--env-option")}
    return kwargs, from_dict(EnvOptions, options, prefix="--env-option")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a policy checkpoint in simulation: return mean ± std (and standard error) over N episodes,
    normalized score (for registered tasks), success rate (envs that report success: fraction of episodes
    with success at any step), optionally an mp4 of one episode. Episode k is reset with SEED+k and its
    sampler noise is seeded from it too, so the result does not depend on --num-envs. Env kwargs
    (--env-kwarg) and options (--env-option) default to those the checkpoint was trained with."""
    import time

    from tqdm import tqdm

    from envs.evaluation import EvaluationError, evaluate_agent, record_video
    from envs.registry import get_task, with_reference_scores
    from flowpolicy.agent import load_agent
    from flowpolicy.config import check_device

    def _positive(name: str, value, minimum: int = 1):
        if value is not None and value < minimum:
            raise CLIError(f"{name} must be ≥ {minimum}, got {value}")

    def _prepare_video_dir(directory: str):
        """Create the --video directory (and check it is writable) before any episode runs."""
        import os
        from pathlib import Path

        path = Path(directory)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CLIError(f"--video {directory}: cannot create the directory ({err.strerror or err})") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise CLIError(f"--video {directory}: the directory is not writable")
        return path

    _positive("--episodes", args.episodes)
    _positive("--num-envs", args.num_envs)
    _positive("--K", args.K)
    _positive("--seed", args.seed, 0)
    check_device(args.device, "--device")
    sampler_params = {}
    for item in args.sampler_param or []:
        key, sep, value = item.partition("=")
        try:
            sampler_params[key] = float(value)
        except ValueError:
            sep = ""
        if not sep or not key:
            raise CLIError(f"--sampler-param expects KEY=NUMBER (e.g. a=0.7), got {item!r}")
    video_dir = _prepare_video_dir(args.video) if args.video else None
    agent = load_agent(args.checkpoint, sampler=args.sampler, K=args.K, device=args.device, seed=args.seed,
                       **sampler_params)
    env_id = args.env or agent.metadata.get("env_id")
    if not env_id:
        raise CLIError("the checkpoint does not name its environment; pass --env ENV_ID")
    if args.guidance and agent.policy.config.kind != "guided_flow":
        raise CLIError(f"--guidance applies to CFGRL (guided_flow) policies; {args.checkpoint} is a "
                       f"{agent.policy.config.kind} policy")
    env_kwargs, env_options = env_settings(args, agent.metadata, env_id)
    task = with_reference_scores(get_task(env_id, env_options, **env_kwargs), agent.metadata)
    if (task.obs_dim, task.action_dim) != (agent.observation_dim, agent.action_dim):
        raise CLIError(f"{args.checkpoint} takes observations of size {agent.observation_dim} and gives actions of "
                       f"size {agent.action_dim}, but {env_id} has {task.obs_dim} and {task.action_dim}")

    def run_episodes(desc: str) -> dict:
        start = time.time()
        with tqdm(total=args.episodes, desc=desc, unit="ep", disable=args.json or None) as bar:
            def on_episode(ret):
                bar.update()
                bar.set_postfix(last_return=f"{ret:.1f}")

            agent.reset()
            result = evaluate_agent(agent, env_id, args.episodes, seed=args.seed, num_envs=args.num_envs,
                                    progress=on_episode, options=env_options, task=task, **env_kwargs)
        summary = result.to_dict()
        summary.update(checkpoint=str(args.checkpoint), sampler=agent.sampler.name, K=agent.K, seed=args.seed,
                       wall_s=round(time.time() - start, 2))
        if agent.policy.config.kind == "guided_flow":
            summary["guidance"] = agent.policy.config.guidance
        return summary

    def line(summary: dict) -> str:
        score = summary.get("normalized_score")
        return (f"return {summary['return_mean']:.1f} ± {summary['return_std']:.1f} "
                f"(s.e. {summary['return_sem']:.1f}) over {summary['episodes']} episodes"
                + (f", normalized score {score:.1f}" if score is not None else "")
                + (f", success rate {summary['success_rate']:.2f}" if "success_rate" in summary else ""))

    if args.guidance:  # a sweep over w without retraining
        sweep = []
        for w in args.guidance:  # a fresh agent per w: every w sees the same initial noises and env seeds
            agent = load_agent(args.checkpoint, sampler=args.sampler, K=args.K, device=args.device, seed=args.seed,
                               **sampler_params)
            agent.policy.set_guidance(w)
            sweep.append(run_episodes(f"evaluate {env_id} w={w:g}"))
        if args.json:
            print(json.dumps({"env_id": env_id, "checkpoint": str(args.checkpoint), "guidance_sweep": sweep}))
        else:
            for summary in sweep:
                print(f"{env_id} w={summary['guidance']:<5g}: {line(summary)}")
            best = max(sweep, key=lambda r: r["return_mean"])
            print(f"best guidance w={best['guidance']:g} ({agent.sampler.name}, K={agent.K})")
        return 0

    summary = run_episodes(f"evaluate {env_id}")
    video_error = None
    if video_dir is not None:
        target = video_dir / f"{env_id.replace(':', '_').replace('/', '_')}-seed{args.seed}.mp4"
        try:
            video, video_return, frames = record_video(agent, env_id, target, seed=args.seed, options=env_options,
                                                       **env_kwargs)
            summary.update(video=str(video), video_return=video_return, video_frames=frames)
        except (OSError, ImportError, RuntimeError, EvaluationError) as err:  # the evaluation stands: print it
            video_error = f"--video: cannot write {target}: {' '.join(str(err).split())}"
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{env_id}: {line(summary)} ({agent.sampler.name}, K={agent.K}, seed {args.seed}, "
              f"{summary['wall_s']:.1f} s)")
        if "video" in summary:
            print(f"video: {summary['video']} ({summary['video_frames']} frames, episode return "
                  f"{summary['video_return']:.1f})")
    if video_error:
        sys.stdout.flush()
        raise CLIError(video_error)
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    """Train (or reuse) a SAC expert for ENV_ID and record a Minari dataset of medium or expert quality
    with reference scores, as OUT/DATASET_ID (default flowpolicy/<task>-<quality>-v0).

    Expert: --expert-dir if given; else the expert shipped in this checkout's data/experts/ENV_ID
    (Hopper, Walker2d, HalfCheetah, Ant; reused read-only); else OUT/experts/ENV_ID, where one is trained
    (--expert-steps env steps; hours on a CPU) unless a previous command left it there. Experts are
    safetensors + JSON, loaded without unpickling (see data/README.md).

    Quality is measured as the expert fraction (R - R_random) / (R_expert - R_random). "medium" is the
    training snapshot closest to --medium-fraction; when none is within +-0.15 a warning names the fraction
    reached and the default dataset id says it (e.g. flowpolicy/hopper-frac97-v0 for 97 % of expert).
    An existing dataset is never replaced without --overwrite.

    --demonstrator scripted (the robomimic tasks RobomimicLift-v0, RobomimicCan-v0, RobomimicSquare-v0):
    our scripted demonstrators record EPISODES successful demonstrations (failures are dropped, as in
    robomimic's datasets; at most 3 x EPISODES attempts) into OUT/<task>-scripted.hdf5 (or
    OUT/DATASET_ID.hdf5) in robomimic's layout, with mask/train and mask/valid filter keys.

    --demonstrator oracle (OCBench CPU tasks, e.g. block-cpu-lite-single-task1-v0): OCBench's own scripted
    oracles (ocbench.oracles, human-like speed profiles and mistakes) record EPISODES successful episodes
    (--keep-failures keeps failed ones too; at most 3 x EPISODES attempts) as the Minari dataset
    OUT/DATASET_ID (default ocbench/<task>-oracle-v0) with the success criterion info['success'] and the
    oracle's success rate in its metadata. --action-noise SIGMA executes each oracle action plus N(0, SIGMA^2)
    noise while recording the oracle's own (corrective) action, so the demos show how to recover (DART;
    with 0.05 BC on block-cpu-lite-single reached 0.14-0.22 instead of 0-0.05, docs/manipulation.md); the
    default id then ends -noise5-v0.

    --env-kwarg KEY=VALUE (repeatable; VALUE read as YAML) goes to gym.make for the oracle and scripted
    demonstrators."""
    env_kwargs = parse_env_kwargs(args.env_kwarg)
    if env_kwargs and args.demonstrator == "sac":
        raise CLIError("--env-kwarg applies to --demonstrator oracle and scripted (the SAC path records the "
                       "registered task as its expert was trained on it)")
    if args.action_noise and args.demonstrator != "oracle":
        raise CLIError("--action-noise applies to --demonstrator oracle only (the scripted demonstrators have "
                       "their own variability)")
    if args.demonstrator == "oracle":
        from pretrain.oracle import collect_oracle

        result = collect_oracle(args.env, args.out, episodes=args.episodes, seed=args.seed,
                                keep_failures=args.keep_failures, dataset_id=args.dataset_id,
                                overwrite=args.overwrite, action_noise=args.action_noise, env_kwargs=env_kwargs)
        print(f"{result.dataset_dir}: {result.episodes} oracle demonstrations, {result.env_steps} env steps "
              f"(mean length {result.length_mean:.0f}); oracle success {result.successes}/{result.attempts} "
              f"= {result.success_rate:.2f}; {result.wall_s:.0f} s")
        return 0
    if args.keep_failures:
        raise CLIError("--keep-failures applies to --demonstrator oracle only")
    if args.demonstrator == "scripted":
        from pretrain.scripted import collect_scripted

        result = collect_scripted(args.env, args.out, episodes=args.episodes, seed=args.seed,
                                  name=args.dataset_id, overwrite=args.overwrite, env_kwargs=env_kwargs)
        print(f"{result.path}: {result.episodes} scripted demonstrations, {result.env_steps} env steps "
              f"(mean length {result.length_mean:.0f}); demonstrator success {result.successes}/{result.attempts} "
              f"= {result.success_rate:.2f}; {result.wall_s:.0f} s")
        return 0
    from pretrain.collect import collect

    result = collect(args.env, args.out, quality=args.quality, episodes=args.episodes, seed=args.seed,
                     expert_dir=args.expert_dir, expert_steps=args.expert_steps, snapshot_every=args.snapshot_every,
                     medium_fraction=args.medium_fraction, dataset_id=args.dataset_id, overwrite=args.overwrite)
    print(f"{result.dataset_dir}: {result.episodes} {result.quality} episodes, {result.env_steps} env steps, "
          f"return {result.return_mean:.1f} ± {result.return_std:.1f} = {result.fraction:.2f} of expert "
          f"(expert {result.expert_return:.1f}, random {result.random_return:.1f}; demonstrator "
          f"{result.demonstrator} in {result.expert_dir}; {result.wall_s:.0f} s)")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Behavior-clone a flow, shortcut or diffusion policy from a demonstration dataset. Settings come
    from the YAML config and dotted key=value overrides (e.g. train.steps=2000 policy.kind=shortcut).
    An existing, non-empty output directory is refused unless --overwrite; a dataset recorded on another
    env is refused unless allow_env_mismatch=true."""
    from flowpolicy.config import load_config
    from pretrain.bc import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    if args.overwrite:
        cfg.overwrite = True
    summary = pretrain(cfg)
    ev = summary["eval"]
    line = f"{summary['policy']}: {summary['kind']} BC on {summary['dataset']} in {summary['wall_s']:.0f} s"
    if ev:
        line += f"; return {ev['return_mean']:.1f} ± {ev['return_std']:.1f} over {ev['episodes']} episodes"
        if "normalized_score" in ev:
            line += f" (normalized {ev['normalized_score']:.1f})"
    print(line)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune a pretrained policy with online RL (the algorithm named in the config, or --policy and
    --algorithm without one: the learner's defaults, its task-dependent noise and scales measured on the task
    at the start, see docs/new_task.md) and print the
    deterministic evaluation return before and after. With --resume RUN_DIR, continue that run exactly
    where it stopped (its saved config is used; only budget/evaluation overrides may change). Every
    algo.* key, with its type, default and meaning: `flowpolicy config ALGORITHM`."""
    from agents.autoscale import RESOLVED_KEYS
    from agents.finetune import (
        FinetuneConfig,
        check_resume_settings,
        finetune,
        read_run_config,
    )
    from flowpolicy.config import apply_overrides, from_dict, load_config, to_dict

    # --algorithm/--policy/--env/--out are the overrides algorithm=, policy=, env_id=, out= (given first, so an
    # explicit key=value wins); with no --config they make a run of the learner's defaults, which measure the
    # task-dependent settings on the task itself (agents/autoscale.py)
    flags = {"algorithm": args.algorithm, "policy": args.policy, "env_id": args.env, "out": args.out}
    if not args.config and args.policy and not args.resume:
        if not args.env:  # the task the policy was trained on
            from flowpolicy.agent import load_agent
            flags["env_id"] = load_agent(args.policy).metadata.get("env_id") or None
            if flags["env_id"] is None:
                raise CLIError(f"{args.policy} does not name its environment; pass --env ENV_ID")
        given = dict(o.split("=", 1) for o in args.overrides if "=" in o)  # key=value overrides win
        if not args.out and "out" not in given:
            env = given.get("env_id", flags["env_id"])
            name = f"{env}-{given.get('algorithm', args.algorithm or 'reinflow')}".replace(":", "_").replace("/", "_")
            flags["out"] = f"runs/finetune/{name}"
    args.overrides = [f"{k}={v}" for k, v in flags.items() if v] + list(args.overrides)

    resume_dir = args.resume
    if resume_dir == "":  # bare --resume: the run of --config's out dir, started if it never wrote anything
        if not args.config and not args.policy:
            raise CLIError("--resume without RUN_DIR needs --config FILE or --policy CHECKPOINT (the run is its out "
                           "directory)")
        cfg = load_config(FinetuneConfig, args.config, args.overrides) if args.config else \
            from_dict(FinetuneConfig, apply_overrides({}, args.overrides))
        if (Path(cfg.out) / "config.json").is_file():
            resume_dir = cfg.out
    if resume_dir:
        saved = read_run_config(resume_dir)
        data = apply_overrides(saved, args.overrides)
        if args.config:  # the config a user re-runs must be the one the run started with
            data = apply_overrides(to_dict(load_config(FinetuneConfig, args.config, [])), args.overrides)
        cfg = from_dict(FinetuneConfig, data)
        cfg.out = resume_dir
        check_resume_settings(to_dict(from_dict(FinetuneConfig, saved)), to_dict(cfg), resume_dir)
        # settings the config leaves null were measured when the run started: keep those numbers
        measured = {k: v for k, v in (saved.get("algo") or {}).items()
                    if k in RESOLVED_KEYS and cfg.algo.get(k) is None}
        saved_algo = saved.get("algo") or {}
        if not cfg.algo.get("dataset") and not saved_algo.get("dataset") and saved_algo.get("bc_coeff") == 0:
            measured["bc_coeff"] = 0.0  # the start found no dataset and turned the BC term off
        cfg.algo = {**cfg.algo, **measured}
    elif args.config:
        cfg = load_config(FinetuneConfig, args.config, args.overrides)
    elif args.policy:
        cfg = from_dict(FinetuneConfig, apply_overrides({}, args.overrides))
    else:
        raise CLIError("give --config FILE, or --policy CHECKPOINT [--algorithm A] [--env ENV] (or --resume RUN_DIR)")
    s = finetune(cfg, resume=bool(resume_dir), overwrite=args.overwrite)

    def fmt(ret, score):
        return f"{ret:.1f}" + (f" (normalized {score:.1f})" if score is not None else "")

    done = "finished run, nothing to do: " if s.get("resumed_finished_run") else ""
    print(f"{done}{cfg.algorithm} on {cfg.env_id}: return before "
          f"{fmt(s['initial_return'], s['initial_normalized_score'])} -> after "
          f"{fmt(s['final_return'], s['final_normalized_score'])}; best "
          f"{fmt(s['best_return'], s['best_normalized_score'])}; {s['env_steps']:,} env steps in {s['wall_s']:.0f} s "
          f"({s['env_steps_per_s']:.0f} steps/s). Run: {cfg.out}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """Print every key of a configuration with its type, default and a one-line description: an online
    learner's (`flowpolicy config reinflow`: the finetune keys, runner.* and algo.*) or `pretrain`'s."""
    from flowpolicy.config import describe, format_table

    if args.name == "pretrain":
        from flowpolicy.policy import PolicyConfig
        from pretrain.bc import PretrainConfig

        rows = [r for r in describe(PretrainConfig) if r[0] != "policy"]
        rows += [r for r in describe(PolicyConfig, "policy.") if r[0] not in ("policy.obs_dim", "policy.action_dim")]
    else:
        from agents.finetune import ALGORITHMS, FinetuneConfig

        if args.name not in ALGORITHMS:
            raise CLIError(f"unknown configuration {args.name!r}; choose pretrain or one of "
                           f"{', '.join(ALGORITHMS)}")
        rows = [r for r in describe(FinetuneConfig) if r[0] != "algo"] + describe(ALGORITHMS[args.name][0], "algo.")
    if args.json:
        print(json.dumps([dict(zip(("key", "type", "default", "doc"), r, strict=True)) for r in rows], indent=1))
    else:
        print(format_table(rows))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """Learning curves of run directories as a PNG: success rate, normalized score or return against env
    steps, several runs overlaid; the seeds of one benchmark (runs/bench/NAME/seed*) are drawn as mean ± std.
    Writes next to the runs (RUN_DIR_<metric>.png) unless --out is given; needs matplotlib (flowpolicy[bench])."""
    from agents.curves import CurveError, plot_runs

    try:
        path = plot_runs(args.run_dirs, out=args.out, metric=args.metric, title=args.title, overwrite=args.overwrite)
    except CurveError as err:
        raise CLIError(str(err)) from None
    print(f"wrote {path}")
    return 0


class CLIError(RuntimeError):
    """A user-facing error of a command line invocation."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowpolicy",
        description="Behavior-cloned flow/diffusion action policies, fine-tuned with online RL in MuJoCo.",
    )
    parser.add_argument("--version", action="version", version=f"flowpolicy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="describe a policy checkpoint", description=cmd_info.__doc__)
    info.add_argument("checkpoint", help="checkpoint directory (holding policy.json and model.safetensors)")
    info.add_argument("--json", action="store_true", help="print the full description as JSON")
    info.set_defaults(func=cmd_info)

    from inspect import cleandoc

    from pretrain.collect import DEFAULT_MEDIUM_FRACTION
    from pretrain.expert import ExpertConfig

    co = sub.add_parser("collect", help="train/reuse an expert and record a Minari dataset",
                        description=cleandoc(cmd_collect.__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    co.add_argument("--env", required=True, help="gymnasium env id, e.g. Hopper-v5")
    co.add_argument("--out", required=True, help="directory to write the Minari dataset (and a trained expert) under")
    co.add_argument("--quality", choices=["medium", "expert"], default="medium", help="default medium")
    co.add_argument("--episodes", type=int, default=50, help="episodes to record, >= 1 (default 50)")
    co.add_argument("--seed", type=int, default=0, help="episode i is reset with SEED+i, >= 0 (default 0)")
    co.add_argument("--demonstrator", choices=["sac", "scripted", "oracle"], default="sac",
                    help="who demonstrates: a SAC expert (default; writes a Minari dataset), our scripted "
                         "demonstrator for the robomimic tasks (Robomimic*-v0; writes a robomimic .hdf5) or "
                         "OCBench's scripted oracle for OCBench CPU tasks (writes a Minari dataset "
                         "ocbench/<task>-oracle-v0)")
    co.add_argument("--keep-failures", action="store_true",
                    help="with --demonstrator oracle: keep the oracle's failed episodes too (default: successful "
                         "ones only)")
    co.add_argument("--action-noise", type=float, default=0.0, metavar="SIGMA",
                    help="oracle: execute each action plus N(0, SIGMA^2) noise, record the oracle's (DART "
                         "recovery data; default 0)")
    co.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE",
                    help="keyword argument for gym.make (oracle, scripted; repeatable; VALUE read as YAML)")
    co.add_argument("--dataset-id", default=None,
                    help="Minari id of the dataset (default flowpolicy/<task>-<quality>-v0, e.g. "
                         "flowpolicy/hopper-medium-v0); with --demonstrator scripted the file name without "
                         ".hdf5 (default <task>-scripted)")
    co.add_argument("--overwrite", action="store_true",
                    help="replace an existing dataset of the same id (refused otherwise)")
    co.add_argument("--expert-dir", default=None,
                    help="expert directory (default: the shipped data/experts/ENV_ID, reused read-only, "
                         "else OUT/experts/ENV_ID)")
    co.add_argument("--expert-steps", type=int, default=ExpertConfig.total_steps,
                    help=f"SAC budget in env steps when an expert must be trained, >= 1 "
                         f"(default {ExpertConfig.total_steps:,}: about 75 min for Hopper on one CPU core)")
    co.add_argument("--snapshot-every", type=int, default=ExpertConfig.eval_every,
                    help=f"when training: evaluate and keep a snapshot every N env steps; medium is picked "
                         f"among them (default {ExpertConfig.eval_every:,})")
    co.add_argument("--medium-fraction", type=float, default=DEFAULT_MEDIUM_FRACTION,
                    help=f"medium = the snapshot closest to this expert fraction (R - R_random) / "
                         f"(R_expert - R_random), in (0, 1) (default {DEFAULT_MEDIUM_FRACTION})")
    co.set_defaults(func=cmd_collect)

    pt = sub.add_parser("pretrain", help="behavior-clone a policy from demonstrations",
                        description=cmd_pretrain.__doc__)
    pt.add_argument("--config", required=True, help="YAML config, e.g. configs/hopper/pretrain.yaml")
    pt.add_argument("--overwrite", action="store_true",
                    help="replace an earlier run in the output directory (same as overwrite=true)")
    pt.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    pt.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser("finetune", help="fine-tune a pretrained policy with online RL",
                        description=cmd_finetune.__doc__)
    ft.add_argument("--config", default=None, help="YAML config, e.g. configs/hopper/reinflow.yaml")
    ft.add_argument("--algorithm", default=None, help="the learner (= algorithm=...; default reinflow): "
                    "reinflow, qsm, cfgrl, grpo, cps, ddpo_is, ddpo_sf, fpo")
    ft.add_argument("--policy", default=None, help="pretrained policy checkpoint (= policy=...); without --config "
                    "the learner's defaults, with noise levels and reward scale measured on the task")
    ft.add_argument("--env", default=None, help="env id (= env_id=...; default: the policy's)")
    ft.add_argument("--out", default=None, help="run directory (= out=...; default without --config: "
                    "runs/finetune/ENV-ALGORITHM)")
    ft.add_argument("--resume", metavar="RUN_DIR", nargs="?", const="", default=None,
                    help="continue the run in RUN_DIR exactly where it stopped (a finished run: print its summary); "
                         "bare --resume with --config (or --policy) continues that run, or starts it if it never began")
    ft.add_argument("--overwrite", action="store_true",
                    help="replace the files of an existing run in the out directory (default: refuse)")
    ft.add_argument("overrides", nargs="*", metavar="key=value",
                    help="dotted config overrides, e.g. algo.actor_lr=3e-4 runner.total_env_steps=200000 "
                         "(all keys: flowpolicy config ALGORITHM)")
    ft.set_defaults(func=cmd_finetune)

    cf = sub.add_parser("config", help="list every key of a configuration (type, default, meaning)",
                        description=cmd_config.__doc__)
    cf.add_argument("name", metavar="ALGORITHM|pretrain",
                    help="reinflow, qsm, cfgrl, grpo, cps, ddpo_is, ddpo_sf, fpo, or pretrain")
    cf.add_argument("--json", action="store_true", help="print the keys as a JSON list")
    cf.set_defaults(func=cmd_config)

    ev = sub.add_parser("evaluate", help="evaluate a checkpoint in simulation", description=cmd_evaluate.__doc__)
    ev.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    ev.add_argument("--env", default=None, help="gymnasium env id, module:EnvId or module:Class (default: the one "
                    "the checkpoint was made for)")
    ev.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE",
                    help="keyword argument for gym.make, VALUE read as YAML, e.g. env_name=reach-v3 (repeatable; "
                         "default: the checkpoint's env_kwargs)")
    ev.add_argument("--env-option", action="append", metavar="KEY=VALUE",
                    help="env option: obs_keys=[observation,desired_goal], success_key=is_success, "
                         "terminate_on_success=true, success_reward=sparse (repeatable; default: the checkpoint's)")
    ev.add_argument("--episodes", type=int, default=10, help="number of episodes, ≥ 1 (default 10)")
    ev.add_argument("--seed", type=int, default=0,
                    help="episode k is reset with SEED+k and its sampler noise is seeded from it (default 0)")
    ev.add_argument("--num-envs", type=int, default=None,
                    help="parallel envs, ≥ 1 (default min(episodes, 8)); the result does not depend on it")
    ev.add_argument("--sampler", default=None,
                    help="sampler (default: deterministic ODE for flows, DDIM eta=0 for diffusion)")
    ev.add_argument("--K", type=int, default=None, help="denoising steps, ≥ 1 (default: the policy's)")
    ev.add_argument("--sampler-param", action="append", metavar="KEY=VALUE",
                    help="sampler parameter, e.g. a=0.7 or eta=0.8 (repeatable)")
    ev.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    ev.add_argument("--guidance", type=float, nargs="+", metavar="W", default=None,
                    help="CFGRL policies: evaluate each guidance weight w (e.g. --guidance 0 1 1.5 2 3)")
    ev.add_argument("--video", metavar="DIR", default=None, help="also write an mp4 of one episode into DIR")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of text: env, episodes, "
                    "return_mean, return_std, return_sem, returns, lengths, normalized_score (registered tasks), "
                    "success_rate (envs that report success), ...")
    ev.set_defaults(func=cmd_evaluate)

    pl = sub.add_parser("plot", help="learning curves of run directories as a PNG", description=cmd_plot.__doc__)
    pl.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                    help="run directories of `flowpolicy finetune` (or a directory of them, e.g. runs/bench/NAME)")
    pl.add_argument("--metric", default="auto",
                    choices=["auto", "success_rate", "normalized_score", "return", "episodic_return"],
                    help="auto (default): success rate where logged, else normalized score, else evaluation return")
    pl.add_argument("--out", default=None, help="PNG path (default: next to the run directory)")
    pl.add_argument("--title", default=None, help="plot title")
    pl.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    pl.set_defaults(func=cmd_plot)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix, printed as one line: the project's own and the expected environmental ones
    (files, disks, gymnasium ids, safetensors files). Anything else is a bug and keeps its traceback."""
    import gymnasium as gym
    from safetensors import SafetensorError

    from flowpolicy.checkpoint import CheckpointError
    from flowpolicy.config import ConfigError

    errors: list[type[BaseException]] = [CheckpointError, ConfigError, CLIError, OSError, gym.error.Error,
                                         SafetensorError]
    try:  # the runner's NonFiniteError: the run stopped, its last good checkpoint is kept and named
        from agents.runner import NonFiniteError

        errors.append(NonFiniteError)
    except ImportError:  # pragma: no cover - agents is part of the distribution
        pass
    return tuple(errors)


def _describe_error(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err):
        return f"{err.filename}: {err.strerror or err}"
    text = " ".join(str(err).split())  # one line, whatever the library put in its message
    return text or type(err).__name__


def main(argv: list[str] | None = None) -> int:
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    def stop(signum, frame):  # SIGTERM (schedulers, `kill`) stops like Ctrl-C: checkpoints intact
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if argv is None else None
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        print(f"flowpolicy {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except _user_errors() as err:
        print(f"flowpolicy {args.command}: error: {_describe_error(err)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
