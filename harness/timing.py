"""Honest timers: they synchronise the device, warm up, repeat, and report median and spread.

- ``Sections`` splits a training loop's wall time into named parts (env stepping, policy
  inference, update), synchronising the device at each boundary so that asynchronous CUDA work
  is charged to the section that queued it.
- ``measure`` times a callable: warm-up calls first, then ``repeat`` samples of ``number`` calls
  each; returns the median and quartiles per call.
- ``calibrate`` times a fixed reference workload, so that timings from one run can be
  normalised by the machine's speed in that same run.
- ``pin_process`` applies the noise controls of the regression gate (``harness.gate``): one
  torch thread, one CPU (``os.sched_setaffinity``) where the platform has it.
- ``measure(..., cpu=True)`` also records each sample's process CPU time: with other jobs
  keeping the 2-core VM at load 6-7, the gate's A/A log ratio per round pair spread 6.4% on
  CPU time and 47.6% on wall time (``nox -s gate_validity -- noise``,
  results/gate/noise-vm.md).

This module imports nothing from ``harness`` at import time (``synchronize`` is looked up on
first use): the regression gate loads it by path inside interpreters whose ``harness`` package
is another commit's checkout.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass


def synchronize(device) -> None:
    """``harness.devices.synchronize``, imported on first use (see the module docstring)."""
    from harness.devices import synchronize as sync

    sync(device)


class Sections:
    """Accumulated seconds per named section; ``with s("update"): ...`` adds to one. Sections
    nest (a ``policy`` inside a ``collect``); ``exclude(seconds)`` takes time spent on something
    else -- compiling -- out of every section open at the moment."""

    def __init__(self, device="cpu"):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = str(device).startswith("cuda")
        self._open: list[str] = []

    @contextmanager
    def __call__(self, name: str):
        if self._sync:
            synchronize(self.device)
        t0 = time.perf_counter()
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()
            if self._sync:
                synchronize(self.device)
            self.seconds[name] += time.perf_counter() - t0

    def exclude(self, seconds: float) -> None:
        for name in self._open:
            self.seconds[name] -= seconds

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
    warmup: tuple[float, ...] = ()  # the warm-up calls' times (not in the statistics)
    cpu_samples: tuple[float, ...] = ()  # process CPU seconds of each sample (``cpu=True``)

    @property
    def spread(self) -> float:
        """Interquartile range over the median (relative spread)."""
        return (self.q75 - self.q25) / self.median if self.median else float("nan")


def measure(fn: Callable[[], object], *, repeat: int = 7, number: int = 1, warmup: int = 1,
            device=None, timer: Callable[[], float] = time.perf_counter,
            max_time: float | None = None, min_repeat: int = 3, cpu: bool = False) -> Timing:
    """Time ``fn``: ``warmup`` calls (timed, kept apart), then ``repeat`` samples of ``number``
    calls.

    ``timer`` is the clock (an asv benchmark's ``timer`` attribute, e.g. one that divides by the
    operations per call). ``max_time``: stop sampling once that many seconds of samples are
    taken, but not before ``min_repeat`` samples. ``cpu``: also record each sample's process
    CPU time (``time.process_time``), scaled as ``timer`` scales wall time -- on a shared
    machine it leaves out the time this process waited for a CPU (it also leaves out work
    done in other processes: use it for single-process benchmarks only).
    """
    if repeat < 1 or number < 1:
        raise ValueError(f"repeat and number must be >= 1, got {repeat}, {number}")
    sync = device is not None and str(device).startswith("cuda")
    cpu_samples: list[float] = []

    def one() -> float:
        if sync:
            synchronize(device)
        w0, t0, p0 = time.perf_counter(), timer(), time.process_time()
        for _ in range(number):
            fn()
        if sync:
            synchronize(device)
        p1, t1, w1 = time.process_time(), timer(), time.perf_counter()
        if cpu:
            scale = (t1 - t0) / (w1 - w0) if w1 > w0 else 1.0
            cpu_samples.append((p1 - p0) * scale / number)
        return (t1 - t0) / number

    warm = tuple(one() for _ in range(warmup))
    del cpu_samples[:]
    samples = []
    start = time.perf_counter()
    for _ in range(repeat):
        samples.append(one())
        if (max_time is not None and len(samples) >= min_repeat
                and time.perf_counter() - start > max_time):
            break
    q = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else \
        [samples[0]] * 3
    return Timing(statistics.median(samples), q[0], q[2], tuple(samples), warm,
                  tuple(cpu_samples))


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


def pin_process(threads: int | None = 1, cpu: int | None = None) -> dict:
    """The gate's noise controls for this process; returns what was applied.

    ``threads``: torch intra- and inter-op threads (and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``
    for processes started from here); None leaves torch's default. ``cpu``: run on that one CPU
    (``os.sched_setaffinity``; Linux only, ignored elsewhere); -1 means the last CPU this
    process may use, None leaves the affinity alone.
    """
    applied: dict = {"threads": None, "cpu": None}
    if threads is not None:
        import torch

        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        torch.set_num_threads(threads)
        try:  # only possible before the first inter-op parallel work of the process
            torch.set_num_interop_threads(threads)
        except RuntimeError:
            pass
        applied["threads"] = threads
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        chosen = allowed[-1] if cpu == -1 else cpu
        if chosen not in allowed:
            raise ValueError(f"CPU {chosen} is not available to this process; allowed: {allowed}")
        os.sched_setaffinity(0, {chosen})
        applied["cpu"] = chosen
    return applied
