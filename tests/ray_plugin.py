"""A test-only env backend for the Ray tests (``tests/test_matrix_ray.py``), loaded through
``RLGAUGE_PLUGINS``: the constant probe env (discrete actions), built at once (``quick``) or
after sleeping ``SLOW_S`` seconds in the cell's worker (``slow``: a cell that is still running
when a node or the driver is killed)."""

from __future__ import annotations

import time

from harness import probes, registry
from harness.backends import Backend, TaskSpec

SLOW_S = 5.0


def _build(spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    if spec.id == "slow":
        time.sleep(SLOW_S)
    return probes.make("constant-truncated", num_envs=num_envs, device=device, seed=seed)


TASKS = {t: TaskSpec(t, "discrete", f"constant probe, {t}") for t in ("quick", "slow")}

if "raytest" not in registry.BACKENDS:
    registry.BACKENDS.register(
        "raytest", Backend(_build, TASKS, batching="native", batchings=("native",),
                           device_native=True),
        description="test-only: constant probe env, quick or slow to build",
        requires=("torch", "torchrl"))
