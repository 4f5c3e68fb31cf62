"""Env stepping: the raw library loop vs the same task through ``harness.backends.make_env``.

One case per registered ``backend/task`` and ``num_envs`` in {1, 8}. Both sides step the task
with uniformly random actions for ``STEPS`` batched steps from a fresh reset, restarting finished
episodes, in the same process; the ratio of the two is what the torchrl wrapper costs.

- ``raw``: the library's own loop. gymnasium: ``env.step`` (``num_envs=1``) or a
  ``gymnasium.vector.SyncVectorEnv`` with its default auto-reset (``num_envs=8``); dm_control:
  ``suite`` envs' ``step`` (a Python loop over the 8 envs: the suite has no vector env); envpool:
  the pool's batched ``step`` (auto-resets natively). The probe backend has no raw library: its
  ``raw`` cases are skipped and it is recorded through torchrl only.
- ``torchrl``: ``make_env(...).rollout(STEPS, break_when_any_done=False)`` with random actions
  (the env exactly as algorithms get it: batching chosen per backend, float32 observations).

``time_steps`` is the gate metric (one call = ``STEPS`` batched steps, device synchronised
inside the call); ``track_us_per_step`` is microseconds per *env* step (per transition, so
``num_envs`` cases compare), lower is better, median of 3 calls; steps/s = 1e6 / value.

Cost: ~80 runnable CPU cases; envs are built and warmed up in ``setup``, one call takes
20-300 ms, ``rounds = 1`` and a short ``repeat`` keep the module to a few minutes on 2 cores.
CPU simulators on a ``cuda`` device measure the host-to-device hand-over as well (the raw side
has no device and is skipped there).
"""

from __future__ import annotations

import functools
import statistics
import time

import torch  # noqa: F401 -- imported once by asv's forkserver, not per benchmark process

from bench import raw
from bench.common import RLBenchmark, require_backend
from harness import backends
from harness.devices import synchronize

STEPS = 100  # batched steps per timed call
NUM_ENVS = [1, 8]
CASES = [f"{backend}/{task}" for backend, task in backends.pairs(available_only=False)]


#: backend -> its raw library loop (``bench.raw``): ``(spec, num_envs, seed) -> (run, close)``
RAW = {backend: functools.partial(random_steps, steps=STEPS)
       for backend, random_steps in raw.RANDOM_STEPS.items()}

#: torchrl stepping -> its floor, the raw library loop: the ``impl=raw`` point of the same
#: benchmark (``harness.asv_results``' selector syntax); rows pair up on device, case, num_envs
FLOORS = {
    "EnvStep.time_steps[impl=torchrl]": "EnvStep.time_steps[impl=raw]",
    "EnvStep.track_us_per_step[impl=torchrl]": "EnvStep.track_us_per_step[impl=raw]",
}


def _torchrl(backend: str, task: str, num_envs: int, seed: int, device):
    env = backends.make_env(backend, task, num_envs=num_envs, seed=seed, device=device)

    def run():
        env.rollout(STEPS, break_when_any_done=False)
        synchronize(device)

    return run, env.close


class EnvStep(RLBenchmark):
    """Random-action stepping of every backend/task: raw library loop vs torchrl's env."""

    param_names = (*RLBenchmark.param_names, "case", "num_envs", "impl")
    params = (*RLBenchmark.params, CASES, NUM_ENVS, ["raw", "torchrl"])
    number = 1  # a call consumes env state
    repeat = (3, 5, 2.0)
    rounds = 1
    warmup_time = 0.0  # setup warms up
    timeout = 120

    def setup(self, device, case, num_envs, impl):
        super().setup(device)
        backend, task = case.split("/", 1)
        require_backend(backend)
        if task not in backends.available_tasks(backend):
            raise NotImplementedError(f"{case}: a library of the task is missing here")
        if impl == "raw":
            if backend not in RAW:
                raise NotImplementedError(f"{backend} has no raw library (torchrl only)")
            if self.device.type != "cpu":
                raise NotImplementedError("the raw libraries step on the CPU only")
            spec = backends.get_task(backend, task)
            self.run, close = RAW[backend](spec, num_envs, 0)
        else:
            self.run, close = _torchrl(backend, task, num_envs, 0, self.device)
        self.on_teardown(close)
        self.frames = STEPS * num_envs
        self.run()  # warm-up outside the timer

    def time_steps(self, device, case, num_envs, impl):
        self.run()

    def track_us_per_step(self, device, case, num_envs, impl):
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            self.run()
            samples.append(time.perf_counter() - start)
        return 1e6 * statistics.median(samples) / self.frames

    track_us_per_step.unit = "us/step"
