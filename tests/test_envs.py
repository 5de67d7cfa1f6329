"""Environment layer: chunk execution, NEXT_STEP autoreset handling, history, registry."""

import gymnasium as gym
import numpy as np
import pytest

from envs.registry import TASKS, get_task
from envs.vector import ActionChunk, make_env, make_vec_env


class StepCounterEnv(gym.Env):
    """obs = [steps so far], reward of step t = t + 1; terminates after `length` steps if `terminates`
    (otherwise the TimeLimit registered with it truncates at the same point)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def __init__(self, length=5, terminates=True):
        self.length, self.terminates = length, terminates

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0]), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)]), float(self.t), self.terminates and self.t >= self.length, False, {}


gym.register("StepCounterTerm-v0", entry_point=StepCounterEnv, kwargs={"length": 5, "terminates": True})
gym.register("StepCounterTrunc-v0", entry_point=StepCounterEnv, kwargs={"length": 5, "terminates": False},
             max_episode_steps=5)


def test_chunk_sums_rewards_and_stops_at_episode_end():
    env = make_env("StepCounterTerm-v0", act_steps=3)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 2)))
    assert reward == 1 + 2 + 3 and info["chunk_steps"] == 3 and obs[0] == 3 and not terminated
    obs, reward, terminated, truncated, info = env.step(np.zeros((3, 2)))
    assert reward == 4 + 5 and info["chunk_steps"] == 2 and obs[0] == 5  # stopped at the end, not 6
    assert terminated and not truncated
    assert info["episode"]["l"] == 5 and info["episode"]["r"] == 15  # stats count env steps


def test_chunk_reward_discount_inside_chunk():
    env = ActionChunk(gym.make("StepCounterTerm-v0"), act_steps=2, reward_gamma=0.5)
    env.reset()
    assert env.step(np.zeros((2, 2)))[1] == 1 + 0.5 * 2


@pytest.mark.parametrize("env_id,term,trunc", [("StepCounterTerm-v0", True, False),
                                               ("StepCounterTrunc-v0", False, True)])
def test_vec_env_reports_final_obs_and_keeps_terminated_and_truncated_apart(env_id, term, trunc):
    vec, obs = make_vec_env(env_id, num_envs=2, act_steps=2, seed=0)
    steps = [vec.step(np.zeros((2, 2, 2))) for _ in range(4)]
    # decisions cover env steps (1,2), (3,4), (5) -> episode ends; then the next episode starts at once
    ending = steps[2]
    assert np.all(ending.terminated == term) and np.all(ending.truncated == trunc)
    assert np.all(ending.final_obs[:, 0] == 5) and np.all(ending.obs[:, 0] == 0)  # true final vs reset obs
    assert ending.reward.tolist() == [5.0, 5.0] and ending.env_steps.tolist() == [1, 1]
    assert ending.episode_returns == [15.0, 15.0] and ending.episode_lengths == [5, 5]
    # no reset step is ever returned: the next decision is a real transition of the new episode
    after = steps[3]
    assert after.reward.tolist() == [3.0, 3.0] and after.obs[:, 0].tolist() == [2.0, 2.0]
    assert not after.done.any() and vec.total_env_steps == 2 * (2 + 2 + 1 + 2)
    vec.close()


def test_vec_env_with_uneven_episode_ends():
    """Envs ending at different decisions reset individually; the others are untouched."""
    vec, _ = make_vec_env("StepCounterTerm-v0", num_envs=2, act_steps=1, seed=0)
    vec.step(np.zeros((2, 2)))  # both at t=1
    vec.envs.envs[1].unwrapped.t = 3  # env 1 jumps ahead: it reaches t = 5 two decisions later, env 0 does not
    out = [vec.step(np.zeros((2, 2))) for _ in range(2)]
    assert out[1].done.tolist() == [False, True] and out[1].obs[:, 0].tolist() == [3.0, 0.0]
    assert out[1].final_obs[:, 0].tolist() == [3.0, 5.0]
    vec.close()


def test_observation_history_is_padded_with_the_reset_observation():
    vec, obs = make_vec_env("StepCounterTerm-v0", num_envs=1, n_obs_steps=3, seed=0)
    assert obs.shape == (1, 3, 1) and obs[0, :, 0].tolist() == [0, 0, 0]
    out = vec.step(np.zeros((1, 2)))
    assert out.obs[0, :, 0].tolist() == [0, 0, 1]
    vec.close()


def test_seeding_reproduces_mujoco_rollouts():
    def rollout():
        vec, obs = make_vec_env("Hopper-v5", num_envs=2, act_steps=4, seed=3)
        rng = np.random.default_rng(0)
        rewards = [vec.step(rng.uniform(-1, 1, (2, 4, 3))).reward for _ in range(5)]
        vec.close()
        return obs, np.array(rewards)

    (o1, r1), (o2, r2) = rollout(), rollout()
    assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and not np.array_equal(o1[0], o1[1])


def test_registry_and_normalized_score():
    hopper = get_task("Hopper-v5")
    assert (hopper.obs_dim, hopper.action_dim, hopper.max_episode_steps) == (11, 3, 1000)
    for spec in TASKS.values():  # the registry's dimensions are the envs' own
        env = gym.make(spec.env_id)
        assert env.observation_space.shape == (spec.obs_dim,) and env.action_space.shape == (spec.action_dim,)
        env.close()
    other = get_task("Pendulum-v1")  # unregistered ids still work, without a normalized score
    assert (other.obs_dim, other.action_dim, other.normalized_score(-100.0)) == (3, 1, None)
    with pytest.raises(ValueError, match="unknown environment"):
        get_task("NoSuchEnv-v0")
