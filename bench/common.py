"""Shared base class and fixtures of the asv suite.

APPEND ONLY (as numpy's asv suite does with its fixtures): changing what an existing fixture
builds changes every benchmark that uses it and breaks the comparability of its history. Add a
new fixture instead.

Every benchmark class derives from ``RLBenchmark``: its ``setup`` pins torch to one thread, seeds,
and skips (``NotImplementedError``, asv's way) when the device or backend is missing here, so
params never depend on the machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports dm_control
os.environ.setdefault("OMP_NUM_THREADS", "1")

DEVICES = ["cpu", "cuda"]


def pin_threads() -> None:
    import torch

    torch.set_num_threads(1)


def require_device(device: str):
    """The canonical torch.device of the parameter (``harness.devices``: ``cuda`` is
    ``cuda:0``; the parameter keeps its name for the history), or NotImplementedError (asv:
    skipped) when it is not present here."""
    import torch

    from harness.devices import check_device

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device on this machine")
    return check_device(device)


def require_backend(backend: str) -> None:
    """NotImplementedError (asv: skipped) when an env backend's library is unavailable here."""
    from harness import registry

    registry.load_builtins()
    if backend in registry.BACKENDS:
        reason = registry.BACKENDS.unavailable_reason(backend)
        if reason:
            raise NotImplementedError(f"backend {backend} unavailable: {reason}")


class RLBenchmark:
    """Base: ``device`` param; setup pins threads, seeds, skips a missing device.

    Resources that need closing are registered with ``on_teardown`` once they exist: asv's
    forkserver calls ``teardown`` even after ``setup`` raised ``NotImplementedError`` (a skip),
    so teardown must only close what setup actually built.
    """

    param_names = ("device",)
    params = (DEVICES,)
    timeout = 180

    def setup(self, device, *args):
        import torch

        self._closers = []
        pin_threads()
        torch.manual_seed(0)
        self.device = require_device(device)

    def on_teardown(self, close) -> None:
        self._closers.append(close)

    def teardown(self, *args):
        for close in reversed(getattr(self, "_closers", [])):
            close()
        self._closers = []


# --------------------------------------------------------------------------- appended fixtures


class SampleClock:
    """An asv ``timer`` whose readings are seconds / ``units``: asv then records seconds per
    *operation* for a ``time_*`` benchmark whose call does ``units`` operations.

    asv re-runs ``setup`` before every timed sample of a class that has one (asv_runner 0.3.2,
    asv#966), so ``number`` cannot batch sub-millisecond calls, and a one-call sample of a few
    microseconds right after ``setup`` times cold caches and, on a busy machine, whether the
    scheduler happened to preempt it (measured here: 5x outliers in 1 ms samples). A class sets
    ``timer = SampleClock()``, its ``setup`` sets ``self.timer.units`` (e.g. from
    ``calls_for``) and its timed method does that many operations. asv runs one benchmark per
    process, so the class-level clock is not shared between running benchmarks.
    """

    def __init__(self, units: int = 1):
        self.units = units

    def __call__(self) -> float:
        import time

        return time.perf_counter() / self.units


def calls_for(fn, *, sample_s: float = 0.05, max_calls: int = 10_000) -> int:
    """How many calls of ``fn`` fill a timed sample of about ``sample_s`` seconds. ``fn`` runs
    once as a warm-up (timed: if that already takes ``sample_s``, the answer is 1), else three
    more times, the fastest of which sets the count."""
    import time

    start = time.perf_counter()
    fn()
    once = time.perf_counter() - start
    if once >= sample_s:
        return 1
    for _ in range(3):
        start = time.perf_counter()
        fn()
        once = min(once, time.perf_counter() - start)
    return int(max(1, min(max_calls, sample_s // once if once > 0 else max_calls)))


def transitions(n: int, *, obs_dim: int = 4, min_len: int = 32, max_len: int = 200,
                seed: int = 0):
    """``n`` seeded CartPole-sized transitions, cut into episodes, as a ``TensorDict``.

    Keys are those a ``Collector`` writes: ``observation`` float32 [n, obs_dim], ``action``
    int64 [n], ``("collector", "traj_ids")`` int64 [n] and under ``"next"``: ``observation``,
    ``reward`` float32 [n, 1], ``done``/``terminated``/``truncated`` bool [n, 1]. Episode
    lengths are uniform in [min_len, max_len] (mean ~116 steps); every episode ends with
    ``done`` (half of them terminated, half truncated), and the last one is cut at ``n``.
    """
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n // min_len + 1,), generator=g)
    traj = torch.repeat_interleave(torch.arange(len(lengths)), lengths)[:n]
    ends = torch.zeros(n, 1, dtype=torch.bool)
    ends[(lengths.cumsum(0) - 1)[lengths.cumsum(0) <= n]] = True
    terminal = torch.rand(n, 1, generator=g) < 0.5
    return TensorDict({
        "observation": torch.randn(n, obs_dim, generator=g),
        "action": torch.randint(0, 2, (n,), generator=g),
        ("collector", "traj_ids"): traj,
        ("next", "observation"): torch.randn(n, obs_dim, generator=g),
        ("next", "reward"): torch.randn(n, 1, generator=g),
        ("next", "done"): ends,
        ("next", "terminated"): ends & terminal,
        ("next", "truncated"): ends & ~terminal,
    }, batch_size=[n])


# The regression gate's test-only slowdown knob (RLGAUGE_INJECT_SLOWDOWN) lived here until it
# moved into the gate's worker (harness/gate/worker.py), which injects it into any checkout.


# --------------------------------------------------------------------------- report output


def emit(text: str, out: str | None = None) -> None:
    """Print a module's ``python -m bench.<module>`` report and, with ``--out``, write it."""
    print(text, end="")
    if out:
        from pathlib import Path

        Path(out).write_text(text)
