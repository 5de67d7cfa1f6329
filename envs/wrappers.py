"""Wrappers that make any gymnasium robot task usable by flowpolicy: flat observations and one success signal.

**Dict observations** (Fetch, FrankaKitchen, robosuite, …) are flattened into one float vector by
:class:`FlattenDictObservation`. The order is documented and configurable with ``obs_keys``:

- ``obs_keys = None`` (default): all keys, in the order of the ``Dict`` space's keys, each value flattened
  with :func:`gymnasium.spaces.flatten` — exactly what gymnasium's ``FlattenObservation`` (and so Minari's
  dataset loader, which flattens stored Dict observations the same way) produces. gymnasium sorts the keys of
  a ``Dict`` space built from a plain dict, so for Fetch the order is ``achieved_goal, desired_goal,
  observation``.
- ``obs_keys = ["observation", "desired_goal"]``: only those top-level keys, in that order.

**Success** (:class:`SuccessInfo`): the env's own success flag is read from ``info`` — ``success_key`` if
given, else the first of ``is_success`` (gymnasium-robotics Fetch, gym-pusht), ``success`` (Meta-World,
OCBench) and ``tasks_to_complete`` (FrankaKitchen: success = the list is empty, all its tasks done) that the
env reports — and written to ``info["success"]`` as a bool on every step. An episode
*succeeds* when the flag is true at **any** step of it (robomimic's convention: a task that was solved
counts, even if the object is later knocked over); on the step that ends an episode the wrapper adds
``info["episode_success"]``. An env that never puts the key in ``info`` reports no success at all (then no
``success_rate`` appears anywhere — never a misleading 0).

Options (:class:`EnvOptions`): ``terminate_on_success`` ends the episode (``terminated``) at the first
success step; ``success_reward = "sparse"`` replaces the env's reward by 1 on success steps and 0 otherwise
— robosuite's ``reward_shaping=False`` reward, the sparse success reward DPPO's robomimic runs fine-tune on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np

from envs.registry import EnvError

SUCCESS_KEYS = ("is_success", "success", "tasks_to_complete")
# how an info value becomes a success flag: a number/bool is true when > 0, except for these keys
SUCCESS_RULES = {"tasks_to_complete": lambda value: len(value) == 0}  # FrankaKitchen: no task left


def _doc(doc: str) -> dict:
    # the metadata flowpolicy.config.param gives a field (envs does not import the policy core)
    return {"doc": doc, "bounds": {}, "renamed_from": None}


@dataclass
class EnvOptions:
    """How flowpolicy adapts an env beyond its own kwargs (config section ``env_options``)."""

    obs_keys: list[str] | None = field(default=None, metadata=_doc(
        "Dict observation keys to flatten, in this order (null: all keys, gymnasium FlattenObservation order)"))
    success_key: str | None = field(default=None, metadata=_doc(
        "info key of the success flag (null: is_success, success or tasks_to_complete, whichever the env reports)"))
    terminate_on_success: bool = field(default=False, metadata=_doc(
        "end the episode (terminated) at the first step with success"))
    success_reward: Literal["env", "sparse"] = field(default="env", metadata=_doc(
        "env: the env's reward; sparse: 1 on success steps, else 0 (robosuite reward_shaping=False, as in DPPO)"))

    def __post_init__(self):
        if self.obs_keys is not None:
            self.obs_keys = list(self.obs_keys)
        if self.success_reward not in ("env", "sparse"):
            raise EnvError(f"success_reward: expected env or sparse, got {self.success_reward!r}")


def as_options(options: EnvOptions | dict | None) -> EnvOptions:
    if options is None:
        return EnvOptions()
    if isinstance(options, dict):
        return EnvOptions(**options)
    return options


class FlattenDictObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """A ``Dict`` observation as one flat float vector; the key order is described in the module docstring."""

    def __init__(self, env: gym.Env, obs_keys: list[str] | None = None):
        gym.utils.RecordConstructorArgs.__init__(self, obs_keys=obs_keys)
        gym.ObservationWrapper.__init__(self, env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict):
            raise EnvError(f"obs_keys applies to Dict observations; this env's observation space is {space}")
        keys = list(space.spaces) if obs_keys is None else list(obs_keys)
        missing = [k for k in keys if k not in space.spaces]
        if missing or not keys:
            raise EnvError(f"obs_keys: {missing or keys} not among the observation's keys {list(space.spaces)}")
        self.obs_keys = keys
        self._subspaces = [space.spaces[k] for k in keys]
        flat = [gym.spaces.flatten_space(s) for s in self._subspaces]
        if not all(isinstance(s, gym.spaces.Box) for s in flat):
            raise EnvError(f"observation keys {keys} do not flatten to a vector: {space}")
        self.observation_space = gym.spaces.Box(np.concatenate([s.low for s in flat]).astype(np.float32),
                                                np.concatenate([s.high for s in flat]).astype(np.float32),
                                                dtype=np.float32)

    def observation(self, observation):
        return np.concatenate([np.asarray(gym.spaces.flatten(s, observation[k]), dtype=np.float32)
                               for k, s in zip(self.obs_keys, self._subspaces, strict=True)])


class SuccessInfo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """``info["success"]`` (bool) on every step and ``info["episode_success"]`` on the last step of an episode,
    when the env reports success; optional termination at success and sparse success reward."""

    def __init__(self, env: gym.Env, success_key: str | None = None, terminate_on_success: bool = False,
                 success_reward: str = "env"):
        gym.utils.RecordConstructorArgs.__init__(self, success_key=success_key,
                                                 terminate_on_success=terminate_on_success,
                                                 success_reward=success_reward)
        gym.Wrapper.__init__(self, env)
        self.keys = (success_key,) if success_key else SUCCESS_KEYS
        self.terminate_on_success, self.success_reward = terminate_on_success, success_reward
        self._key: str | None = None  # the first of ``keys`` the env reports, found once
        self._episode_success = False

    def _read(self, info: dict) -> bool | None:
        if self._key is None or self._key not in info:
            self._key = next((key for key in self.keys if key in info), None)
            if self._key is None:
                return None
        value = info[self._key]
        rule = SUCCESS_RULES.get(self._key)
        return bool(rule(value)) if rule is not None else bool(np.any(np.asarray(value) > 0))

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._episode_success = False
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = self._read(info)
        if success is None:
            if self.success_reward != "env" or self.terminate_on_success:
                raise EnvError(f"{self.spec.id if self.spec else self.env}: success options are set but the env "
                               f"reports none of the info keys {list(self.keys)}")
            return obs, reward, terminated, truncated, info
        info["success"] = success
        self._episode_success |= success
        if self.success_reward == "sparse":
            reward = float(success)
        if success and self.terminate_on_success:
            terminated = True
        if terminated or truncated:
            info["episode_success"] = self._episode_success
        return obs, reward, terminated, truncated, info


def has_wrapper(env: gym.Env, wrapper_cls: type) -> bool:
    """Whether ``wrapper_cls`` is anywhere in ``env``'s wrapper stack (e.g. a suite's own
    ``RecordEpisodeStatistics``: a second one fails gymnasium's assertion at the first episode end)."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, wrapper_cls):
            return True
        env = env.env
    return False


def adapt_env(env: gym.Env, options: EnvOptions | dict | None = None) -> gym.Env:
    """Flatten a Dict observation (``options.obs_keys``) and add :class:`SuccessInfo`."""
    options = as_options(options)
    if isinstance(env.observation_space, gym.spaces.Dict):
        env = FlattenDictObservation(env, options.obs_keys)
    elif options.obs_keys is not None:
        raise EnvError(f"obs_keys applies to Dict observations; this env's observation space is "
                       f"{env.observation_space}")
    return SuccessInfo(env, options.success_key, options.terminate_on_success, options.success_reward)
