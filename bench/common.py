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
    """torch.device, or NotImplementedError (asv: skipped) when it is not present here."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise NotImplementedError("no CUDA device on this machine")
    return torch.device(device)


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
