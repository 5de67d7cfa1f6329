"""The robomimic tasks (Lift, Can, Square) on robosuite, as gymnasium envs with flat low-dim observations.

Imported only when used: importing this module registers the gymnasium ids below but does not import
robosuite (that happens when an env is made). ``envs.registry`` imports it for any id starting with
``Robomimic``.

========================  ======================  =====  ==========  ==================================
gymnasium id              robosuite env           obs    horizon     object part of the observation
========================  ======================  =====  ==========  ==================================
``RobomimicLift-v0``      ``Lift``                19     300         cube pos, quat, gripper→cube pos
``RobomimicCan-v0``       ``PickPlaceCan``        23     300         can pos/quat relative to eef, pos, quat
``RobomimicSquare-v0``    ``NutAssemblySquare``   23     400         nut pos/quat relative to eef, pos, quat
========================  ======================  =====  ==========  ==================================

Settings are robomimic's for its v1.5 datasets (robosuite 1.5.1): Panda arm, robosuite 1.5's composite
``BASIC`` controller with an ``OSC_POSE`` delta controller on the right arm (``PANDA_OSC_POSE``, identical to
``robosuite.load_composite_controller_config(robot="Panda")``), 20 Hz control, ``reward_shaping=False``,
``ignore_done=True`` (episodes end by gymnasium's ``TimeLimit`` at the horizon), no renderer, no cameras.
Horizons are DPPO's ``max_episode_steps`` for its robomimic configs (Lift/Can 300, Square 400).

Observations are the float32 concatenation of ``obs_keys``, by default robomimic's low-dim keys in
robomimic's order: ``robot0_eef_pos`` (3), ``robot0_eef_quat`` (4), ``robot0_gripper_qpos`` (2),
``object`` (robosuite's ``object-state``), so a policy trained on a real robomimic ``low_dim`` dataset runs
here unchanged. Actions: 7-D in [−1, 1] (Δposition ×0.05 m, Δaxis-angle ×0.5 rad, gripper: −1 open, +1 close).

Reward is sparse, robomimic's/DPPO's: 1 on every step where the task is solved, else 0;
``info["is_success"]`` says the same as a bool. ``terminate_on_success=True`` ends the episode
(``terminated``) at the first success; by default episodes run to the horizon, as in robomimic and DPPO.

``reset(seed=s)`` is reproducible, also across env instances: robosuite 1.5.1 draws object placements and
the arm's initial-joint noise from numpy's *global* RNG, so each env keeps its own RNG state and swaps it in
only around robosuite's reset (the caller's global RNG is left as it was). Resets are soft
(``hard_reset=False``: the MuJoCo model is built once, from a fixed seed, so object sizes that robosuite
draws at build time — Lift's cube edge, 2.0–2.2 cm — are the same in every instance; robomimic's datasets,
recorded with hard resets, vary them per demo).

An env can also be made from a robomimic file's ``data.attrs["env_args"]`` (type 1, robosuite) — see
:func:`make_from_env_args` or pass ``env_args=`` (a dict, its JSON, or the path of an ``.hdf5`` file) — so a
real robomimic dataset gives its own env (its controller config, in robosuite 1.4's flat format or 1.5's
composite one, is used as recorded).
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

ROBOMIMIC_OBS_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
ROBOSUITE_ENV_TYPE = 1  # robomimic's EnvType.ROBOSUITE_TYPE
ID_PREFIX = "Robomimic"
CONTROL_FREQ = 20

# robosuite 1.5's composite controller config for the Panda (what robomimic's v1.5 datasets record).
PANDA_OSC_POSE = {
    "type": "BASIC",
    "body_parts": {
        "right": {
            "type": "OSC_POSE",
            "input_max": 1,
            "input_min": -1,
            "output_max": [0.05, 0.05, 0.05, 0.5, 0.5, 0.5],
            "output_min": [-0.05, -0.05, -0.05, -0.5, -0.5, -0.5],
            "kp": 150,
            "damping_ratio": 1,
            "impedance_mode": "fixed",
            "kp_limits": [0, 300],
            "damping_ratio_limits": [0, 10],
            "position_limits": None,
            "orientation_limits": None,
            "uncouple_pos_ori": True,
            "input_type": "delta",
            "input_ref_frame": "base",
            "interpolation": None,
            "ramp_ratio": 0.2,
            "gripper": {"type": "GRIP"},
        }
    },
}


@dataclass(frozen=True)
class RobomimicTask:
    env_id: str  # our gymnasium id
    env_name: str  # robosuite's
    short_name: str  # robomimic's dataset folder
    max_episode_steps: int
    obs_dim: int


TASKS: dict[str, RobomimicTask] = {
    task.env_name: task
    for task in [
        RobomimicTask("RobomimicLift-v0", "Lift", "lift", 300, 19),
        RobomimicTask("RobomimicCan-v0", "PickPlaceCan", "can", 300, 23),
        RobomimicTask("RobomimicSquare-v0", "NutAssemblySquare", "square", 400, 23),
    ]
}
TASKS_BY_ID = {task.env_id: task for task in TASKS.values()}


def gym_id_for(env_name: str) -> str | None:
    """Our gymnasium id for a robosuite env name (``"Lift"`` → ``"RobomimicLift-v0"``), None if not ours."""
    task = TASKS.get(env_name)
    return task.env_id if task else None


def task_for(env_id_or_name: str) -> RobomimicTask | None:
    name = env_id_or_name.rpartition(":")[2]
    return TASKS_BY_ID.get(name) or TASKS.get(name)


def default_robosuite_kwargs(env_name: str) -> dict:
    """robosuite ``make`` kwargs of robomimic's v1.5 low-dim datasets (the ``env_kwargs`` of their
    ``env_args``), without cameras."""
    return {
        "has_renderer": False,
        "has_offscreen_renderer": False,
        "ignore_done": True,
        "use_object_obs": True,
        "use_camera_obs": False,
        "control_freq": CONTROL_FREQ,
        "controller_configs": copy.deepcopy(PANDA_OSC_POSE),
        "robots": ["Panda"],
        "camera_depths": False,
        "camera_heights": 84,
        "camera_widths": 84,
        "reward_shaping": False,
    }


def make_env_args(env_name: str, robosuite_kwargs: dict | None = None, env_version: str | None = None) -> dict:
    """robomimic's ``env_args`` (type 1) for a robosuite env: what goes into ``data.attrs["env_args"]``."""
    if env_version is None:
        try:
            from importlib.metadata import version

            env_version = version("robosuite")
        except Exception:  # noqa: BLE001 - metadata only
            env_version = "1.5.1"
    return {"env_name": env_name, "env_version": env_version, "type": ROBOSUITE_ENV_TYPE,
            "env_kwargs": copy.deepcopy(robosuite_kwargs) if robosuite_kwargs is not None
            else default_robosuite_kwargs(env_name)}


def load_env_args(source) -> dict:
    """``env_args`` as a dict from a dict, its JSON text, or a robomimic ``.hdf5`` file path."""
    from envs.registry import EnvError

    if isinstance(source, dict):
        args = copy.deepcopy(source)
    elif isinstance(source, str | Path) and str(source).lstrip().startswith("{"):
        try:
            args = json.loads(str(source))
        except json.JSONDecodeError as err:
            raise EnvError(f"env_args is not valid JSON: {err}") from None
    elif isinstance(source, str | Path):
        import h5py

        path = Path(source).expanduser()
        if not path.is_file():
            raise EnvError(f"env_args: {path} is not a file (expected a robomimic .hdf5 file, a dict or JSON)")
        try:
            with h5py.File(path, "r") as file:
                args = json.loads(file["data"].attrs["env_args"])
        except (OSError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise EnvError(f"{path}: cannot read data.attrs['env_args'] ({err})") from None
    else:
        raise EnvError(f"env_args must be a dict, JSON text or an .hdf5 path, got {type(source).__name__}")
    if not isinstance(args, dict) or "env_name" not in args:
        raise EnvError("env_args has no 'env_name'")
    if args.get("type", ROBOSUITE_ENV_TYPE) != ROBOSUITE_ENV_TYPE:
        raise EnvError(f"env_args of type {args.get('type')} is not a robosuite env (robomimic type 1)")
    return args


def _import_robosuite():
    from envs.registry import EnvError

    # robosuite logs several setup warnings (private macro file, optional packages) at import.
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    try:
        import robosuite
    except ImportError as err:
        raise EnvError(f"the robomimic tasks need robosuite: pip install 'flowpolicy[manipulation]' ({err})") from None
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    return robosuite


class RobosuiteTaskEnv(gym.Env):
    """A robosuite manipulation task with flat float32 observations of ``obs_keys`` (see the module docstring).

    Args:
        env_name: robosuite env (``Lift``, ``PickPlaceCan``, ``NutAssemblySquare``; other single-arm robosuite
            envs work too, with ``obs_keys`` naming their observables).
        obs_keys: robosuite observation keys to concatenate, in order; ``object`` is ``object-state``.
        terminate_on_success: end the episode (``terminated=True``) at the first successful step.
        env_args: robomimic ``env_args`` (dict, JSON, or an ``.hdf5`` path); its ``env_name`` and ``env_kwargs``
            replace ``env_name`` and the default robosuite kwargs.
        robosuite_kwargs: extra ``robosuite.make`` kwargs, applied last.
        render_mode: ``None`` or ``"rgb_array"`` (needs an offscreen MuJoCo GL backend).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(self, env_name: str = "Lift", obs_keys=None, terminate_on_success: bool = False,
                 env_args=None, robosuite_kwargs: dict | None = None, render_mode: str | None = None,
                 camera_name: str = "agentview", width: int = 256, height: int = 256):
        from envs.registry import EnvError

        robosuite = _import_robosuite()
        if env_args is not None:
            args = load_env_args(env_args)
            env_name = args["env_name"]
            kwargs = copy.deepcopy(args.get("env_kwargs", {}))
        else:
            kwargs = default_robosuite_kwargs(env_name)
        kwargs.update(copy.deepcopy(robosuite_kwargs or {}))
        if render_mode not in (None, "rgb_array"):
            raise EnvError(f"{env_name}: render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode, self.camera_name, self.width, self.height = render_mode, camera_name, width, height
        # Fast and robomimic-compatible: no on-screen renderer, no camera observations, robosuite never ends an
        # episode itself (TimeLimit does), and resets do not rebuild the MuJoCo model.
        kwargs.update(has_renderer=False, has_offscreen_renderer=render_mode is not None, use_camera_obs=False,
                      use_object_obs=True, ignore_done=True, hard_reset=False,
                      horizon=max(int(kwargs.get("horizon", 0) or 0), 10**6))
        kwargs["controller_configs"] = self._controller_config(kwargs.get("controller_configs"), kwargs)
        self.env_name, self.robosuite_kwargs = env_name, kwargs
        self.obs_keys = tuple(ROBOMIMIC_OBS_KEYS if obs_keys is None else obs_keys)
        if not self.obs_keys:
            raise EnvError(f"{env_name}: obs_keys is empty")
        self.terminate_on_success = bool(terminate_on_success)
        # The model is built once (soft resets), and building it draws from numpy's global RNG (Lift's cube
        # size, 2.0–2.2 cm): build it from a fixed seed, so every instance of a task has the same model.
        caller_state = np.random.get_state()  # noqa: NPY002 - robosuite 1.5.1 draws from the legacy global RNG
        np.random.seed(0)  # noqa: NPY002
        try:
            self.robosuite_env = robosuite.make(env_name, **kwargs)
            self._disable_unused_observables()
            first = self._flat(self.robosuite_env.reset())
        except EnvError:
            raise
        except Exception as err:  # noqa: BLE001 - robosuite raises many kinds; one line for the user
            raise EnvError(f"robosuite cannot make {env_name!r}: {' '.join(str(err).split())}") from None
        finally:
            np.random.set_state(caller_state)  # noqa: NPY002
        self._rs_rng = None  # the numpy global-RNG state robosuite draws its resets from
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=first.shape, dtype=np.float32)
        low, high = self.robosuite_env.action_spec
        self.action_space = gym.spaces.Box(np.asarray(low, np.float32), np.asarray(high, np.float32),
                                           dtype=np.float32)

    @staticmethod
    def _controller_config(config, kwargs):
        if config is None:
            return copy.deepcopy(PANDA_OSC_POSE)
        if "body_parts" in config:
            return config
        # robosuite 1.4's flat part config (robomimic's older datasets): robosuite's own conversion
        from robosuite.controllers.composite.composite_controller_factory import (
            refactor_composite_controller_config,
        )

        robots = kwargs.get("robots", ["Panda"])
        robot = robots[0] if isinstance(robots, list | tuple) else robots
        return refactor_composite_controller_config(config, robot, ["right"])

    def _source_key(self, key: str) -> str:
        return "object-state" if key == "object" else key

    def _disable_unused_observables(self) -> None:
        env = self.robosuite_env
        wanted = {self._source_key(k) for k in self.obs_keys}
        for name, observable in env._observables.items():
            # object-state is assembled from the active object-modality observables: keep those.
            if name not in wanted and not (observable.modality == "object" and "object-state" in wanted):
                env.modify_observable(name, "enabled", False)

    def _flat_key_dim(self, key: str) -> int:
        """Size of one of ``obs_keys`` in the flat observation."""
        obs = self.robosuite_env._get_observations()
        return int(np.asarray(obs[self._source_key(key)]).size)

    def _flat(self, obs: dict) -> np.ndarray:
        from envs.registry import EnvError

        parts = []
        for key in self.obs_keys:
            source = self._source_key(key)
            if source not in obs:
                raise EnvError(f"{self.env_name} has no observation {key!r} (it has: {', '.join(sorted(obs))})")
            parts.append(np.asarray(obs[source], dtype=np.float32).reshape(-1))
        return np.concatenate(parts)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._rs_rng is None:
            self._rs_rng = np.random.RandomState(int(self.np_random.integers(2**31)))
        caller_state = np.random.get_state()  # noqa: NPY002 - robosuite 1.5.1 draws from the legacy global RNG
        np.random.set_state(self._rs_rng.get_state())  # noqa: NPY002
        try:
            self.robosuite_env.reset()
            # robosuite's reset observation has zeros for the object-relative-to-gripper parts (they read a cache
            # filled on the first step); a forced update computes them, as robomimic does when it records obs.
            obs = self.robosuite_env._get_observations(force_update=True)
        finally:
            self._rs_rng.set_state(np.random.get_state())  # noqa: NPY002
            np.random.set_state(caller_state)  # noqa: NPY002
        return self._flat(obs), {"is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(self.action_space.shape)
        obs, _, _, _ = self.robosuite_env.step(action)
        success = bool(self.robosuite_env._check_success())
        terminated = self.terminate_on_success and success
        return self._flat(obs), float(success), terminated, False, {"is_success": success}

    def get_sim_state(self) -> np.ndarray:
        """The flattened MuJoCo state (what robomimic stores as ``states``)."""
        return np.asarray(self.robosuite_env.sim.get_state().flatten(), dtype=np.float64)

    def env_args(self) -> dict:
        """robomimic ``env_args`` (type 1) that rebuild this env: what a dataset recorded here stores."""
        kwargs = copy.deepcopy(self.robosuite_kwargs)
        for key in ("hard_reset", "horizon"):  # our run-time settings, not the task's
            kwargs.pop(key, None)
        kwargs["has_offscreen_renderer"] = False
        return make_env_args(self.env_name, kwargs)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        frame = self.robosuite_env.sim.render(width=self.width, height=self.height, camera_name=self.camera_name)
        return np.ascontiguousarray(frame[::-1])

    def close(self):
        env = getattr(self, "robosuite_env", None)
        if env is not None:
            env.close()
            self.robosuite_env = None


def make_from_env_args(env_args, **kwargs) -> gym.Env:
    """A gymnasium env (with its TimeLimit) from robomimic ``env_args`` (dict, JSON or ``.hdf5`` path):
    our registered id when the task is one of ours, a bare :class:`RobosuiteTaskEnv` otherwise."""
    args = load_env_args(env_args)
    env_id = gym_id_for(args["env_name"])
    if env_id is not None:
        return gym.make(env_id, env_args=args, **kwargs)
    return RobosuiteTaskEnv(env_args=args, **kwargs)


def register() -> None:
    for task in TASKS.values():
        if task.env_id not in gym.registry:
            gym.register(task.env_id, entry_point=f"{__name__}:RobosuiteTaskEnv",
                         kwargs={"env_name": task.env_name}, max_episode_steps=task.max_episode_steps)


register()
