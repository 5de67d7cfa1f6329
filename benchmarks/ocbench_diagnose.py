"""Where does a BC policy get stuck on an OCBench task? Per episode, the task state the policy reached.

    python benchmarks/ocbench_diagnose.py --policy runs/pretrain/chamber-lite-easy-flow/policy --episodes 6
    python benchmarks/ocbench_diagnose.py --policy runs/pretrain/block-lite-double-stack-flow/policy --episodes 8

Runs the policy (deterministic sampler, episode k reset with seed k, as ``flowpolicy evaluate`` does) on the env
its checkpoint names and prints, per episode, what a success rate hides: for block tasks the highest and the
final height of every cube (0.03 = resting on the table: never lifted) and the xy distance between the first
two; for chamber tasks the drawer and window positions (most open reached, final) against the task's goal and
the button states. Reads the simulator state through ``env.unwrapped`` (OCBench's own joint names).
"""

from __future__ import annotations

import argparse

import numpy as np

from envs.registry import make_gym_env
from flowpolicy.agent import load_agent


def block_state(u) -> dict:
    xyz = np.array([u._data.joint(f"object_joint_{i}").qpos[:3] for i in range(u._num_cubes)])
    return {"z": xyz[:, 2]} | ({"xy_01": float(np.linalg.norm(xyz[0, :2] - xyz[1, :2]))} if len(xyz) > 1 else {})


def chamber_state(u) -> dict:
    return {"drawer": float(u._data.joint("drawer_slide").qpos[0]),
            "window": float(u._data.joint("window_slide").qpos[0]), "buttons": u._cur_button_states.copy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--env", default=None, help="default: the env the policy was trained on")
    args = parser.parse_args()
    agent = load_agent(args.policy)
    env_id = args.env or agent.metadata.get("env_id")
    if not env_id:
        raise SystemExit(f"{args.policy}: its metadata names no env; pass --env")
    env = make_gym_env(env_id)
    u = env.unwrapped
    chamber = env_id.startswith("chamber")
    if not chamber and not env_id.startswith("block"):
        raise SystemExit(f"{env_id}: this diagnosis knows OCBench's block and chamber tasks")
    for episode in range(args.episodes):
        obs, info = env.reset(seed=episode)
        agent.reset()
        states, done, t = [], False, 0
        while not done:
            obs, _reward, terminated, truncated, info = env.step(agent.act(obs))
            states.append(chamber_state(u) if chamber else block_state(u))
            done, t = terminated or truncated, t + 1
        last = states[-1]
        if chamber:
            goal = u.cur_task_info["goal"]
            line = (f"drawer {last['drawer']:+.3f} (most open {min(s['drawer'] for s in states):+.3f}, goal "
                    f"{goal['drawer_pos']:+.2f}), window {last['window']:+.3f} (max "
                    f"{max(s['window'] for s in states):+.3f}, goal {goal['window_pos']:+.2f}), "
                    f"buttons {last['buttons'].tolist()} (goal {goal['button_states'].tolist()})")
        else:
            highest = np.max([s["z"] for s in states], axis=0)
            line = f"cube z highest {highest.round(3).tolist()} final {last['z'].round(3).tolist()}"
            if "xy_01" in last:
                line += f", xy distance of cubes 0–1 {last['xy_01']:.3f}"
        print(f"episode {episode}: {t} steps, success {bool(info.get('success', False))}; {line}", flush=True)


if __name__ == "__main__":
    main()
