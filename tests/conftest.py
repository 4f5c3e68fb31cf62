"""Shared fixtures: devices (CUDA skips cleanly where absent), headless MuJoCo, one thread."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Each test that takes ``device`` runs on CPU and, where a GPU is present, on CUDA: the
    device by its canonical name (``harness.devices``: ``cuda`` is ``cuda:0``), as envs,
    modules and records name it."""
    if request.param == "cuda" and not _cuda():
        pytest.skip("no CUDA device on this machine")
    from harness.devices import check_device

    return check_device(request.param)


@pytest.fixture(params=["cpu", "crossing", pytest.param("cuda", marks=pytest.mark.gpu)])
def sim_device(request, monkeypatch):
    """For tests of envs with CPU simulators (gymnasium, dm_control, envpool) and what runs on
    them: ``cpu``; ``crossing``, the CPU *through* the device crossing a CUDA run gets
    (``harness.backends.SimulatorOnDevice``; ``to_device`` skips it on the CPU), so that the
    structure of a CUDA run is tested without a GPU; and ``cuda`` where a GPU is present."""
    if request.param == "cuda" and not _cuda():
        pytest.skip("no CUDA device on this machine")
    from harness import backends
    from harness.devices import check_device

    if request.param == "crossing":
        monkeypatch.setattr(backends, "to_device", backends.on_device)
        return check_device("cpu")
    return check_device(request.param)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in every test: closing a torchrl SerialEnv (dm_control envs) resets the
    count to its value at torchrl's import, and two threads on a busy 2-core machine make the
    following tests 5-7x slower."""
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def fault_plugin():
    """Registers the test-only ``fault`` backend (``tests/plugins/fault_backend.py``) here and,
    through ``RLGAUGE_PLUGINS``, in every process the matrix starts. Returns the plugin path."""
    from harness import registry

    path = str(Path(__file__).resolve().parent / "plugins" / "fault_backend.py")
    old = os.environ.get(registry.PLUGINS_ENV)
    os.environ[registry.PLUGINS_ENV] = path
    registry.load_builtins()
    yield path
    if old is None:
        os.environ.pop(registry.PLUGINS_ENV, None)
    else:
        os.environ[registry.PLUGINS_ENV] = old
