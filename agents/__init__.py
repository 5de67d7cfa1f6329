"""Online learners for flowpolicy policies (ReinFlow-PPO, QSM, CFGRL, DDPO, Flow-GRPO/CPS, FPO), their
critics and buffers, and the one training runner. (Built from issue #4 on.)"""
