"""A test-only env backend whose tasks fail on purpose: fault injection for the matrix.

Loaded through ``RLGAUGE_PLUGINS=tests/plugins/fault_backend.py``. Each task is the constant
probe env (discrete actions, so PPO and DQN run on it) with one fault, triggered when the cell's
worker process builds the env:

- ``ok``: no fault (the cells around the faulty ones must complete);
- ``raise``: raises ``RuntimeError("injected fault")``;
- ``segfault``: ``os.abort()`` (SIGABRT: the process dies without Python unwinding);
- ``hang``: sleeps far past any cell time limit;
- ``nan``: rewards are NaN, so the losses are NaN (a diverged run);
- ``memory``: allocates 64 MiB per 20 ms until the runner's memory cap kills it (or 6 GiB).
"""

from __future__ import annotations

import os
import time

from harness import probes, registry
from harness.backends import Backend, TaskSpec

FAULTS = ("ok", "raise", "segfault", "hang", "nan", "memory")


def _build(spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    fault = spec.id
    if fault == "raise":
        raise RuntimeError("injected fault")
    if fault == "segfault":
        os.abort()
    if fault == "hang":
        time.sleep(3600)
    if fault == "memory":
        hog = []
        for _ in range(96):
            hog.append(bytearray(64 * 2**20))  # bytearray pages are written: resident
            time.sleep(0.02)
        raise MemoryError("the memory cap did not stop the hog")
    env = probes.make("constant-truncated", num_envs=num_envs, device=device, seed=seed)
    if fault == "nan":
        from torchrl.envs import RewardScaling, TransformedEnv

        env = TransformedEnv(env, RewardScaling(loc=float("nan"), scale=1.0))
    return env


TASKS = {f: TaskSpec(f, "discrete", f"constant probe with fault {f!r}") for f in FAULTS}

if "fault" not in registry.BACKENDS:
    registry.BACKENDS.register(
        "fault", Backend(_build, TASKS, batching="native", batchings=("native",),
                         device_native=True),
        description="test-only: probe env with injected faults", requires=("torch", "torchrl"))
