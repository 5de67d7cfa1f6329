"""Stands in for a suite that registers its env ids on import (gymnasium_robotics, metaworld, gym_pusht, …)."""

import gymnasium as gym

gym.register("ManipAutoTiny-v0", entry_point="manip_envs:ScriptedSuccessEnv")
