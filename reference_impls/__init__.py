"""Reference RL algorithms built from torchrl parts: one readable module per algorithm.

Each module registers itself in ``harness.registry.ALGORITHMS`` with one call; this package's
import registers the built-in ones (none yet: PPO, DQN, DDPG and the recurrent variants arrive
with issue 4).
"""
