"""Env stepping: the raw library loop vs the same env through torchrl's wrapper.

Both sides step the same task with uniformly random actions for ``STEPS`` steps, resetting
finished episodes, in the same process; the ratio of the two is torchrl's wrapper overhead.
``time_*`` is the gate metric; ``track_us_per_step`` is lower-is-better (asv reads bigger as
worse), steps/s = 1e6 / value.
"""

from __future__ import annotations

import statistics
import time

from bench.common import RLBenchmark, require_backend

STEPS = 500


def _raw_gymnasium():
    import gymnasium as gym
    import numpy as np

    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 2, size=STEPS)

    def run():
        for a in actions:
            _, _, term, trunc, _ = env.step(int(a))
            if term or trunc:
                env.reset()

    return run, env.close


def _raw_dm_control():
    import numpy as np
    from dm_control import suite

    env = suite.load("cartpole", "balance", task_kwargs={"random": 0})
    env.reset()
    spec = env.action_spec()
    actions = np.random.default_rng(0).uniform(spec.minimum, spec.maximum,
                                               size=(STEPS, *spec.shape))

    def run():
        for a in actions:
            if env.step(a).last():
                env.reset()

    return run, lambda: None


def _torchrl(backend: str):
    if backend == "gymnasium":
        from torchrl.envs import GymEnv

        env = GymEnv("CartPole-v1")
    else:
        from torchrl.envs import DMControlEnv

        env = DMControlEnv("cartpole", "balance")
    env.set_seed(0)

    def run():
        env.rollout(STEPS, break_when_any_done=False)

    return run, env.close


class EnvStep(RLBenchmark):
    """CartPole stepping, raw library loop vs torchrl wrapper (CPU: these simulators are CPU)."""

    param_names = ("backend", "impl")
    params = (["gymnasium", "dm_control"], ["raw", "torchrl"])
    number = 1
    repeat = (5, 20, 10.0)
    warmup_time = 0.2

    def setup(self, backend, impl):
        super().setup("cpu")
        require_backend(backend)
        if impl == "raw":
            self.run, self.close = _raw_gymnasium() if backend == "gymnasium" else _raw_dm_control()
        else:
            self.run, self.close = _torchrl(backend)
        self.run()  # warm-up outside the timer

    def teardown(self, backend, impl):
        self.close()

    def time_steps(self, backend, impl):
        self.run()

    def track_us_per_step(self, backend, impl):
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            self.run()
            samples.append(time.perf_counter() - t0)
        return 1e6 * statistics.median(samples) / STEPS

    track_us_per_step.unit = "us/step"
