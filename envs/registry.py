"""Task registry: env id, dimensions, episode length and reference scores of the tasks we ship.

Reference scores make returns comparable across tasks as a normalized score
``100·(R − R_random)/(R_expert − R_random)`` (D4RL's convention): 0 is a uniform-random policy, 100 our
own SAC expert (``flowpolicy collect``). Any other gymnasium env id works without an entry — it simply
has no normalized score.

Where the numbers come from: ``random_score`` is the mean return of uniform-random actions over 100
episodes (``python benchmarks/reference_scores.py``); ``expert_score`` is the mean return of the expert
in ``data/experts/<env_id>/expert.json`` over 10 episodes. ``None`` means not measured yet.

Env ids (everywhere an env id is accepted: :func:`get_task`, :func:`envs.vector.make_env`,
:class:`envs.vector.VecEnv`, evaluation, videos) are one of

- a registered gymnasium id, e.g. ``Hopper-v5`` (``Robomimic*`` ids — the robomimic tasks on robosuite — are
  registered on first use by :mod:`envs.robosuite_tasks`);
- ``module:EnvId``: ``module`` is imported first (it registers ``EnvId``), then ``gym.make(EnvId)``;
- ``module:Class``: ``module`` is imported and ``Class`` (a ``gym.Env`` subclass, or any callable returning
  one) is made through ``gym.make`` with an :class:`~gymnasium.envs.registration.EnvSpec` whose id is the
  full ``module:Class`` string, so the env gets gymnasium's usual wrappers; when the class has an integer
  ``max_episode_steps`` attribute, episodes are cut there by ``TimeLimit``.

``module:Name`` is read as an env id when importing ``module`` registers ``Name`` with gymnasium, as a class
otherwise. A bad id is an :class:`EnvError` in one line.

Suites that register their envs on import need no ``module:`` prefix: an id that gymnasium does not know yet
and that starts with a prefix of :data:`SUITE_MODULES` imports that module first (lazily, only then), so
``FetchReach-v4`` works as it is. A missing suite is a one-line error naming the pip extra that installs it.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

import gymnasium as gym


class EnvError(gym.error.Error, ValueError):
    """An env id that cannot be made, or an env that flowpolicy cannot use; phrased for the user in one line.
    A gymnasium error (what the CLI prints as one line) and a ``ValueError``."""


@dataclass(frozen=True)
class TaskSpec:
    env_id: str
    obs_dim: int
    action_dim: int
    max_episode_steps: int
    random_score: float | None = None
    expert_score: float | None = None
    short_name: str = ""  # the configs/ directory name

    @property
    def has_reference_scores(self) -> bool:
        return self.random_score is not None and self.expert_score is not None

    def normalized_score(self, episode_return: float) -> float | None:
        if not self.has_reference_scores:
            return None
        return 100.0 * (episode_return - self.random_score) / (self.expert_score - self.random_score)


TASKS: dict[str, TaskSpec] = {
    spec.env_id: spec
    for spec in [
        TaskSpec("Hopper-v5", 11, 3, 1000, random_score=16.7, expert_score=3154.8, short_name="hopper"),
        TaskSpec("Walker2d-v5", 17, 6, 1000, random_score=1.8, expert_score=3504.4, short_name="walker2d"),
        TaskSpec("HalfCheetah-v5", 17, 6, 1000, random_score=-277.9, expert_score=5905.6, short_name="halfcheetah"),
        TaskSpec("Ant-v5", 105, 8, 1000, random_score=-67.5, expert_score=854.4, short_name="ant"),
        TaskSpec("Humanoid-v5", 348, 17, 1000, random_score=112.6, expert_score=None, short_name="humanoid"),
    ]
}


# id prefix → (module that registers the ids on import, the pip command that installs it); first match wins
SUITE_MODULES: dict[str, tuple[str, str]] = {
    # our own robosuite adapter: importing it registers the ids; robosuite itself loads when an env is made
    "Robomimic": ("envs.robosuite_tasks", "pip install 'flowpolicy[manipulation]'"),
    "Fetch": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "FrankaKitchen": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "HandManipulate": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "HandReach": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "AdroitHand": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "PointMaze": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "AntMaze": ("gymnasium_robotics", "pip install 'flowpolicy[manipulation]'"),
    "Meta-World/": ("metaworld", "pip install --no-deps metaworld==3.1.1"),  # (it pins mujoco 3.3.0; runs on 3.9)
    "gym_pusht/": ("gym_pusht", "pip install 'flowpolicy[manipulation]'"),
    # OCBench: block-cpu-single-task1-v0, chamber-cpu-lite-easy-task1-v0, visual-block-cpu-…, …
    **{prefix: ("ocbench", "pip install 'flowpolicy[manipulation]'")
       for prefix in ("block-", "chamber-", "switch-", "hanoi-", "bowling-", "visual-")},
}


def _import_suite(env_id: str) -> None:
    """Import the suite that registers ``env_id`` (see :data:`SUITE_MODULES`) if gymnasium does not know it."""
    if env_id in gym.registry:
        return
    for prefix, (module_name, install) in SUITE_MODULES.items():
        if env_id.startswith(prefix):
            try:
                importlib.import_module(module_name)
            except ImportError as err:
                raise EnvError(f"env id {env_id!r} needs the {module_name!r} package, which is not installed "
                               f"({_one_line(err)}): {install}") from None
            return


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _env_creator(env_id: str):
    """What ``gym.make`` should be given for ``env_id``: a registered id or an :class:`EnvSpec`."""
    if not isinstance(env_id, str) or not env_id.strip():
        raise EnvError(f"an env id must be a non-empty string, got {env_id!r}")
    if ":" not in env_id:
        _import_suite(env_id)
        return env_id
    module_name, _, name = env_id.partition(":")
    if not module_name or not name:
        raise EnvError(f"env id {env_id!r}: expected module:EnvId or module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise EnvError(f"env id {env_id!r}: cannot import module {module_name!r} ({_one_line(err)})") from None
    if name in gym.registry:
        return name
    target = getattr(module, name, None)
    if target is None:
        raise EnvError(f"env id {env_id!r}: module {module_name!r} neither registers a gymnasium env {name!r} "
                       f"nor defines {name!r}")
    if not callable(target):
        raise EnvError(f"env id {env_id!r}: {module_name}.{name} is not an env class or factory")
    steps = getattr(target, "max_episode_steps", None)
    steps = steps if isinstance(steps, int) and not isinstance(steps, bool) and steps > 0 else None
    return gym.envs.registration.EnvSpec(id=env_id, entry_point=target, max_episode_steps=steps)


def make_gym_env(env_id: str, **env_kwargs) -> gym.Env:
    """``gym.make`` for any env id this project accepts (see the module docstring); bad ids and gymnasium's
    own errors become a one-line :class:`EnvError`."""
    creator = _env_creator(env_id)
    try:
        return gym.make(creator, **env_kwargs)
    except (gym.error.NameNotFound, gym.error.NamespaceNotFound, gym.error.VersionNotFound) as err:
        raise EnvError(f"unknown environment {env_id!r}: {_one_line(err)}") from None
    except gym.error.Error as err:
        raise EnvError(f"cannot make environment {env_id!r}: {_one_line(err)}") from None
    except TypeError as err:
        if "raised from the environment creator" not in str(err):
            raise  # a bug, not a kwarg the user can fix: keep the traceback
        given = f" with kwargs {env_kwargs}" if env_kwargs else ""
        raise EnvError(f"cannot make environment {env_id!r}{given}: {_one_line(err)} (env kwargs come from "
                       "env_kwargs.KEY=VALUE in a config or --env-kwarg KEY=VALUE)") from None


def with_reference_scores(task: TaskSpec, metadata: dict | None) -> TaskSpec:
    """``task`` with the reference scores a policy's metadata carries (``reference_scores``: the random and
    expert returns of the dataset it was trained on, written by ``flowpolicy pretrain``; a fine-tuned
    policy carries its BC policy's under ``pretrained_metadata``) when the registry
    has none for it: an unregistered task gets normalized scores from its own data."""
    metadata = metadata or {}
    scores = metadata.get("reference_scores") or (metadata.get("pretrained_metadata") or {}).get(
        "reference_scores") or {}
    if task.has_reference_scores or scores.get("random") is None or scores.get("expert") is None \
            or scores["expert"] == scores["random"]:
        return task
    return dataclasses.replace(task, random_score=float(scores["random"]), expert_score=float(scores["expert"]))


def get_task(env_id: str, options=None, **env_kwargs) -> TaskSpec:
    """The registered spec, or one read off the gymnasium env (no reference scores) for any other id. The
    dimensions are those flowpolicy sees: a Dict observation flattened as ``options.obs_keys`` says
    (:class:`envs.wrappers.EnvOptions`); ``env_kwargs`` go to ``gym.make``."""
    from envs.wrappers import EnvOptions, adapt_env, as_options  # (wrappers imports this module)

    if env_id in TASKS and not env_kwargs and as_options(options) == EnvOptions():
        return TASKS[env_id]  # kwargs or options may change the reward: then no reference scores

    env = adapt_env(make_gym_env(env_id, **env_kwargs), options)
    try:
        obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
        if obs_shape is None or len(obs_shape) != 1 or act_shape is None or len(act_shape) != 1:
            raise EnvError(f"{env_id}: flowpolicy needs flat Box observations and actions, got "
                           f"{env.observation_space} and {env.action_space}")
        steps = env.spec.max_episode_steps if env.spec is not None else None
        return TaskSpec(env_id, obs_shape[0], act_shape[0], steps or 0)
    finally:
        env.close()
