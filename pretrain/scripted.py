"""Scripted demonstrators for the robomimic tasks (Lift, Can, Square) on robosuite, with human-like variability.

A demonstrator reads the simulator's true state (object poses, handle sites, peg and bin positions) and
drives the arm through waypoints with the env's own 7-D OSC_POSE delta actions (position error → clipped
Δposition, yaw error → Δaxis-angle, gripper −1 open / +1 close):

- **Lift**: above the cube → down around it → close → lift 15–25 cm.
- **Can**: above the can (in bin 1) → down → close → lift → carry over the can's target cell of bin 2 →
  lower → open.
- **Square**: turn the gripper across the nut's handle → above the handle → down → close → lift → carry the
  nut's centre over the square peg while turning it so its hole lines up with the peg → lower onto the peg →
  open → move away (robosuite counts the nut as placed only once the gripper has left it).

Variability, drawn per episode from its seed, so a dataset is not one trajectory repeated and BC is not
trivial: speed (the action's translation limit, 0.45–1.0), proportional gain, waypoint noise (a few mm at
the grasp, cm elsewhere), Gaussian action noise, random pauses (3–15 steps) between phases, and — with
probability ``fail_prob`` — a first grasp aimed 2–3.5 cm off the object, which fails; the demonstrator
notices that the object did not come up, opens, backs off and grasps again (a recovery that a human
teleoperator's data shows too).

An episode ends at the first successful step (robomimic's demos end at task success; ``dones`` is 1 there)
or at the env's horizon. :func:`record_scripted` keeps only successful episodes by default, as robomimic's
PH/MH datasets do.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pretrain.datasets import Episode

GRIP_OPEN, GRIP_CLOSE = -1.0, 1.0


@dataclass
class Style:
    """One episode's demonstrator style (drawn by :meth:`Style.sample`)."""

    speed: float = 1.0
    gain: float = 12.0
    noise: float = 0.03
    pause_prob: float = 0.15
    fail_first_grasp: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    @classmethod
    def sample(cls, rng: np.random.Generator, fail_prob: float = 0.15, variability: float = 1.0) -> Style:
        v = float(variability)
        return cls(speed=1.0 - v * rng.uniform(0.0, 0.55), gain=12.0 * (1.0 + v * rng.uniform(-0.25, 0.25)),
                   noise=0.03 * v, pause_prob=0.15 * v, fail_first_grasp=bool(rng.random() < fail_prob), rng=rng)


def _rotvec(matrix: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    cos = np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0)
    angle = math.acos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([matrix[2, 1] - matrix[1, 2], matrix[0, 2] - matrix[2, 0], matrix[1, 0] - matrix[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-9:  # angle ≈ π: axis from the diagonal
        axis = np.sqrt(np.maximum((np.diag(matrix) + 1.0) / 2.0, 0.0))
        norm = np.linalg.norm(axis)
    return axis / norm * angle


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _wrap(angle: float, period: float = 2 * math.pi) -> float:
    return (angle + period / 2) % period - period / 2


_DOWN = np.diag([1.0, -1.0, -1.0])  # gripper pointing down at yaw 0 (the fingers then close along world x)


class ScriptedDemonstrator:
    """Base class: waypoint following on a :class:`envs.robosuite_tasks.RobosuiteTaskEnv` (``env.unwrapped``)."""

    def __init__(self, env, style: Style):
        self.env, self.style = env, style
        self.rs = env.robosuite_env
        self.grip = GRIP_OPEN
        self.neutral_yaw = self.eef_yaw()

    # -- state -----------------------------------------------------------------------------------------
    def eef_pos(self) -> np.ndarray:
        return np.array(self.rs.sim.data.site_xpos[self.rs.robots[0].eef_site_id["right"]])

    def eef_rot(self) -> np.ndarray:
        return np.array(self.rs.sim.data.site_xmat[self.rs.robots[0].eef_site_id["right"]]).reshape(3, 3)

    def eef_yaw(self) -> float:
        rot = self.eef_rot() @ _DOWN.T
        return math.atan2(rot[1, 0], rot[0, 0])

    def body_pos(self, name: str) -> np.ndarray:
        return np.array(self.rs.sim.data.body_xpos[self.rs.sim.model.body_name2id(name)])

    def body_yaw(self, name: str) -> float:
        rot = np.array(self.rs.sim.data.body_xmat[self.rs.sim.model.body_name2id(name)]).reshape(3, 3)
        return math.atan2(rot[1, 0], rot[0, 0])

    # -- motion primitives (generators of actions) --------------------------------------------------------
    def _action(self, target: np.ndarray, yaw: float | None) -> np.ndarray:
        s = self.style
        err = target - self.eef_pos()
        pos = np.clip(err * s.gain / 0.6, -s.speed, s.speed)  # 1 cm error → ≈ 1 cm commanded step
        pos = pos + s.rng.normal(0.0, s.noise, 3)
        goal = _rot_z(self.eef_yaw() if yaw is None else yaw) @ _DOWN
        ori = np.clip(_rotvec(goal @ self.eef_rot().T) / 0.5 * 1.5, -0.6, 0.6)
        return np.concatenate([np.clip(pos, -1, 1), ori, [self.grip]])

    def move(self, target, yaw: float | None = None, tol: float = 0.008, max_steps: int = 80):
        target = np.asarray(target, dtype=np.float64)
        for _ in range(max_steps):
            yaw_ok = yaw is None or abs(_wrap(yaw - self.eef_yaw())) < 0.05
            if np.linalg.norm(target - self.eef_pos()) < tol and yaw_ok:
                return
            yield self._action(target, yaw)

    def gripper(self, value: float, steps: int = 10, yaw: float | None = None):
        self.grip = value
        hold = self.eef_pos()
        for _ in range(steps):
            yield self._action(hold, yaw)

    def maybe_pause(self, yaw: float | None = None):
        if self.style.rng.random() < self.style.pause_prob:
            hold = self.eef_pos()
            for _ in range(int(self.style.rng.integers(3, 16))):
                yield self._action(hold, yaw)

    def jitter(self, scale: float) -> np.ndarray:
        return self.style.rng.normal(0.0, scale * (self.style.noise / 0.03 if self.style.noise else 0.0), 3)

    def miss_offset(self) -> np.ndarray:
        angle = self.style.rng.uniform(0, 2 * math.pi)
        radius = self.style.rng.uniform(0.02, 0.035)
        return np.array([radius * math.cos(angle), radius * math.sin(angle), 0.0])

    def grasp(self, object_body: str, grasp_point, yaw: float | None, depth: float, attempts: int = 3):
        """Approach from above, close, lift a little; retry when the object did not come up."""
        for attempt in range(attempts):
            point = np.asarray(grasp_point(), dtype=np.float64)
            offset = self.miss_offset() if (attempt == 0 and self.style.fail_first_grasp) else np.zeros(3)
            above = point + offset + np.array([0, 0, 0.1]) + self.jitter(0.01) * [1, 1, 0.5]
            yield from self.move(above, yaw, tol=0.015)
            yield from self.maybe_pause(yaw)
            low = point + offset + np.array([0, 0, depth]) + self.jitter(0.003)
            yield from self.move(low, yaw, tol=0.006, max_steps=60)
            yield from self.gripper(GRIP_CLOSE, 8 + int(self.style.rng.integers(0, 5)), yaw)
            start_z = self.body_pos(object_body)[2]
            yield from self.move(self.eef_pos() + [0, 0, 0.08], yaw, tol=0.02, max_steps=30)
            if self.body_pos(object_body)[2] > start_z + 0.04:
                return True
            yield from self.gripper(GRIP_OPEN, 8, yaw)  # missed: open, back off, try again
            yield from self.move(self.eef_pos() + [0, 0, 0.05], yaw, tol=0.02, max_steps=20)
        return False

    def actions(self):
        raise NotImplementedError


class LiftDemonstrator(ScriptedDemonstrator):
    def actions(self):
        yield from self.maybe_pause()
        ok = yield from self.grasp("cube_main", lambda: self.body_pos("cube_main"), None, -0.005)
        if ok:
            yield from self.move(self.eef_pos() + [0, 0, self.style.rng.uniform(0.07, 0.17)], None, tol=0.02)


class CanDemonstrator(ScriptedDemonstrator):
    def actions(self):
        yield from self.maybe_pause()
        ok = yield from self.grasp("Can_main", lambda: self.body_pos("Can_main"), None, 0.01)
        if not ok:
            return
        # robosuite counts the can as placed when its centre is in its cell of bin 2: x ∈ [bin2_x, bin2_x + w/2],
        # y ∈ [bin2_y, bin2_y + d/2]. The cell's centre is at the edge of the Panda's reach, so aim at its
        # near corner, 5–7 cm inside the walls.
        bin2, size = np.asarray(self.rs.bin2_pos, dtype=np.float64), np.asarray(self.rs.bin_size, dtype=np.float64)
        target = np.array([bin2[0] + self.style.rng.uniform(0.05, 0.07), bin2[1] + self.style.rng.uniform(0.05, 0.07),
                           bin2[2]])
        assert target[0] < bin2[0] + size[0] / 2 and target[1] < bin2[1] + size[1] / 2
        carry_z = 0.97 + self.style.rng.uniform(0.0, 0.03)  # higher is out of reach over the far bin
        yield from self.move([*self.eef_pos()[:2], carry_z], None, tol=0.03)
        yield from self.maybe_pause()
        over = np.array([target[0], target[1], carry_z]) + self.jitter(0.01) * [1, 1, 0]
        yield from self.move(over, None, tol=0.02, max_steps=120)
        yield from self.move([over[0], over[1], target[2] + 0.14 + self.style.rng.uniform(0, 0.04)], None, tol=0.02)
        yield from self.gripper(GRIP_OPEN, 12)
        yield from self.move(self.eef_pos() + [0, 0, 0.1], None, tol=0.02)


class SquareDemonstrator(ScriptedDemonstrator):
    def _handle(self) -> np.ndarray:
        return np.array(self.rs.sim.data.site_xpos[self.rs.sim.model.site_name2id("SquareNut_handle_site")])

    def _hole(self) -> np.ndarray:
        """Centre of the nut's hole (its ``center_site``; the body's origin is off it)."""
        return np.array(self.rs.sim.data.site_xpos[self.rs.sim.model.site_name2id("SquareNut_center_site")])

    def _grasp_yaw(self) -> float:
        nut = self.body_pos("SquareNut_main")
        bar = self._handle() - nut
        # fingers close along the gripper yaw's direction (measured: the finger axis is the yaw axis, mod π):
        # turn it across the handle
        angle = math.atan2(bar[1], bar[0]) + math.pi / 2
        return self.eef_yaw() + _wrap(angle - self.eef_yaw(), math.pi)

    def actions(self):
        yield from self.maybe_pause()
        for _ in range(2):  # a nut that slips out on the way is grasped again where it fell
            placed = yield from self._pick_and_place()
            if placed:
                return

    def _pick_and_place(self):
        yaw = self._grasp_yaw()
        yield from self.move(self._handle() + [0, 0, 0.1], yaw, tol=0.015)
        ok = yield from self.grasp("SquareNut_main", self._handle, yaw, 0.0)
        if not ok:
            return False
        rest_z = self.rs.table_offset[2]
        carry_z = 1.02 + self.style.rng.uniform(0.0, 0.04)
        yield from self.move([*self.eef_pos()[:2], carry_z], yaw, tol=0.03)  # lift first, turn at height
        if self.body_pos("SquareNut_main")[2] < rest_z + 0.12:
            yield from self.gripper(GRIP_OPEN, 8, yaw)
            return False
        peg = self.body_pos("peg1")
        # Turn so the nut's square hole lines up with the (axis-aligned) square peg: nut yaw ≡ 0 (mod π/2). Of
        # those turns, take the one that leaves the gripper on the robot's side of the nut (the peg is near the
        # edge of the Panda's reach), keeping the final yaw within ±110° of the start pose's (wrist limits).
        offset = (self.eef_pos() - self._hole())[:2]
        base = -_wrap(self.body_yaw("SquareNut_main"), math.pi / 2)
        turns = [base + k * math.pi / 2 for k in range(-3, 4)
                 if abs(_wrap(self.eef_yaw() + base + k * math.pi / 2 - self.neutral_yaw)) <= 0.61 * math.pi]
        turn = min(turns, key=lambda t: (_rot_z(t)[:2, :2] @ offset)[0])
        yaw = self.eef_yaw() + turn
        yield from self.maybe_pause(yaw)
        for tol, steps in ((0.02, 120), (0.004, 60)):
            # the hole over the peg: gripper target = peg + (gripper − hole centre), re-read as the nut settles
            offset = self.eef_pos() - self._hole()
            over = np.array([peg[0] + offset[0], peg[1] + offset[1], carry_z])
            yield from self.move(over, yaw, tol=tol, max_steps=steps)
        if self.body_pos("SquareNut_main")[2] < rest_z + 0.12:  # dropped on the way
            yield from self.gripper(GRIP_OPEN, 8, yaw)
            return False
        for _ in range(3):  # lower in stages, re-centring the nut over the peg
            offset = self.eef_pos() - self._hole()
            z = self.eef_pos()[2] - 0.06
            yield from self.move([peg[0] + offset[0], peg[1] + offset[1], max(z, 0.86)], yaw, tol=0.005, max_steps=40)
        yield from self.gripper(GRIP_OPEN, 10, yaw)
        yield from self.move(self.eef_pos() + [0, 0, 0.12], yaw, tol=0.02)
        return True


DEMONSTRATORS = {"Lift": LiftDemonstrator, "PickPlaceCan": CanDemonstrator, "NutAssemblySquare": SquareDemonstrator}


@dataclass
class ScriptedEpisode:
    episode: Episode
    success: bool
    states: np.ndarray


def run_scripted_episode(env, seed: int, fail_prob: float = 0.15, variability: float = 1.0,
                         extra_steps: int = 0) -> ScriptedEpisode:
    """One episode of the task's scripted demonstrator on ``env`` (a gymnasium env made from a ``Robomimic*``
    id; its TimeLimit gives the horizon), reset with ``seed``. Ends ``extra_steps`` after the first success or
    at the horizon."""
    base = env.unwrapped
    name = base.env_name
    if name not in DEMONSTRATORS:
        raise ValueError(f"no scripted demonstrator for {name!r}; there are: {', '.join(DEMONSTRATORS)}")
    obs, _ = env.reset(seed=seed)
    style = Style.sample(np.random.default_rng([seed, 7919]), fail_prob, variability)
    demo = DEMONSTRATORS[name](base, style)
    actions_iter = demo.actions()
    observations, actions, rewards, states = [obs], [], [], [base.get_sim_state()]
    success, after, terminated, truncated = False, 0, False, False
    while True:
        try:
            action = next(actions_iter)
        except StopIteration:  # script finished without success: hold still until the horizon
            action = np.concatenate([np.zeros(6), [demo.grip]])
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        success = success or bool(info["is_success"])
        if success:
            after += 1
        if terminated or truncated or (success and after > extra_steps):
            break
        states.append(base.get_sim_state())
    ended_by_success = success and not truncated
    episode = Episode(np.stack(observations), np.stack(actions), np.asarray(rewards, np.float32),
                      terminated=ended_by_success, truncated=not ended_by_success, seed=seed)
    return ScriptedEpisode(episode, success, np.stack(states))


# ------------------------------------------------------------------------------------------ collection


@dataclass
class ScriptedCollectResult:
    path: Path
    episodes: int  # kept
    attempts: int
    successes: int
    env_steps: int  # in the kept episodes
    length_mean: float
    wall_s: float

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else float("nan")


def default_file_name(env_id: str) -> str:
    from envs.robosuite_tasks import task_for

    task = task_for(env_id)
    return f"{task.short_name if task else env_id.rpartition(':')[2].lower()}-scripted"


def collect_scripted(env_id: str, out: str | Path, episodes: int = 50, seed: int = 0, keep_failures: bool = False,
                     max_attempts: int | None = None, val_fraction: float = 0.1, name: str | None = None,
                     overwrite: bool = False, fail_prob: float = 0.15, variability: float = 1.0,
                     compression: str | None = "gzip", progress: bool = True,
                     env_kwargs: dict | None = None) -> ScriptedCollectResult:
    """Record ``episodes`` demonstrations of a robomimic task (``Robomimic*`` id) by its scripted demonstrator
    into ``out/<name>.hdf5`` (default ``<task>-scripted``, e.g. ``lift-scripted.hdf5``) in robomimic's layout:
    robosuite ``env_args`` (type 1), robomimic's low-dim obs keys, ``states``, ``mask/train`` and
    ``mask/valid`` (``val_fraction`` of the demos, seeded by ``seed``).

    Attempt i is reset with ``seed + i``. Only successful episodes are kept (as in robomimic's PH/MH
    datasets) unless ``keep_failures``; attempts stop at ``episodes`` kept or ``max_attempts`` (default
    3 × episodes). The demonstrator's success rate over all attempts is stored in ``data.attrs`` and returned.
    ``env_kwargs`` go to ``gym.make`` (the file's ``env_args`` record the env they make). An existing file is
    refused unless ``overwrite`` (then replaced only once the new one is written)."""
    import time

    from envs.registry import make_gym_env
    from envs.robosuite_tasks import task_for
    from pretrain.collect import CollectError
    from pretrain.datasets import write_robomimic_hdf5

    if task_for(env_id) is None or task_for(env_id).env_name not in DEMONSTRATORS:
        raise CollectError(f"--demonstrator scripted: no scripted demonstrator for {env_id!r}; there are: "
                           f"RobomimicLift-v0, RobomimicCan-v0, RobomimicSquare-v0")
    for key, value, low in (("episodes", episodes, 1), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CollectError(f"{key} must be an integer >= {low}, got {value!r}")
    max_attempts = 3 * episodes if max_attempts is None else max_attempts
    start = time.time()
    path = Path(out).expanduser() / f"{name or default_file_name(env_id)}.hdf5"
    if path.exists() and not overwrite:
        raise CollectError(f"{path} already exists; pass --overwrite to replace it")
    env = make_gym_env(env_id, **(env_kwargs or {}))
    kept, attempts, successes = [], 0, 0
    try:
        base = env.unwrapped
        dims = {key: int(base._flat_key_dim(key)) for key in base.obs_keys}
        while len(kept) < episodes and attempts < max_attempts:
            result = run_scripted_episode(env, seed + attempts, fail_prob, variability)
            attempts += 1
            successes += result.success
            if result.success or keep_failures:
                result.episode.states = result.states
                kept.append(result.episode)
            if progress:
                print(f"\r{env_id} scripted: {len(kept)}/{episodes} kept, {successes}/{attempts} successful",
                      end="", file=sys.stderr, flush=True)
        env_args = base.env_args()
    finally:
        env.close()
        if progress:
            print(file=sys.stderr, flush=True)
    if not kept:
        raise CollectError(f"{env_id}: the scripted demonstrator succeeded in none of {attempts} attempts")
    info = {"demonstrator": "scripted", "attempts": attempts, "successes": successes,
            "success_rate": successes / attempts, "kept_failures": keep_failures, "first_seed": seed,
            "fail_prob": fail_prob, "variability": variability, "env_kwargs": dict(env_kwargs or {}),
            "collected_by": "flowpolicy collect"}
    write_robomimic_hdf5(path, kept, env_id, obs_keys=dims, env_args=env_args,
                         val_fraction=val_fraction if len(kept) > 1 else None, split_seed=seed,
                         compression=compression, attrs={"flowpolicy_collect": info})
    lengths = [ep.length for ep in kept]
    return ScriptedCollectResult(path, len(kept), attempts, successes, int(sum(lengths)), float(np.mean(lengths)),
                                 round(time.time() - start, 1))
