"""Honest timers: they synchronise the device, warm up, repeat, and report median and spread.

- ``Sections`` splits a training loop's wall time into named parts (env stepping, policy
  inference, update), synchronising the device at each boundary so that asynchronous CUDA work
  is charged to the section that queued it.
- ``measure`` times a callable: warm-up calls first, then ``repeat`` samples of ``number`` calls
  each; returns the median and quartiles per call.
- ``calibrate`` times a fixed reference workload, so that timings from one run can be
  normalised by the machine's speed in that same run.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

from harness.devices import synchronize


class Sections:
    """Accumulated seconds per named section; ``with s("update"): ...`` adds to one."""

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = str(device).startswith("cuda")

    @contextmanager
    def __call__(self, name: str):
        if self._sync:
            synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                synchronize(self.device)
            self.seconds[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

    def total(self) -> float:
        return sum(self.seconds.values())


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and quartiles over ``samples``."""

    median: float
    q25: float
    q75: float
    samples: tuple[float, ...]

    @property
    def spread(self) -> float:
        """Interquartile range over the median (relative spread)."""
        return (self.q75 - self.q25) / self.median if self.median else float("nan")


def measure(fn: Callable[[], object], *, repeat: int = 7, number: int = 1, warmup: int = 1,
            device=None) -> Timing:
    """Time ``fn``: ``warmup`` untimed calls, then ``repeat`` samples of ``number`` calls."""
    if repeat < 1 or number < 1:
        raise ValueError(f"repeat and number must be >= 1, got {repeat}, {number}")
    sync = device is not None and str(device).startswith("cuda")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        if sync:
            synchronize(device)
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        if sync:
            synchronize(device)
        samples.append((time.perf_counter() - t0) / number)
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else \
        [samples[0]] * 3
    return Timing(statistics.median(samples), q[0], q[2], tuple(samples))


def _reference_workload() -> None:
    """A fixed mix of what RL code does on CPU: small matmuls and Python-level loop overhead."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=g)
    b = torch.randn(64, 64, generator=g)
    for _ in range(50):
        a = torch.tanh(a @ b)
    total = 0
    for i in range(20_000):
        total += i % 7
    return None


def calibrate(repeat: int = 5) -> Timing:
    """Seconds for the reference workload on this machine, now (divide timings by it)."""
    return measure(_reference_workload, repeat=repeat, warmup=1)
