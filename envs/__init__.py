"""Environment factory for flowpolicy: task registry, vector envs, action-chunk execution, seeding and
episode statistics. Knows nothing of learners. (Built in issue #3.)"""
