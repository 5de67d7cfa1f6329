"""The ``flowpolicy`` command line: the one place that ties the policy core, envs, pretraining and
learners together. Each subcommand documents its options under ``flowpolicy CMD --help``."""

from __future__ import annotations

import argparse
import json
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    from flowpolicy.checkpoint import CheckpointError
    from flowpolicy.config import ConfigError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, ConfigError) as err:
        print(f"flowpolicy {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
