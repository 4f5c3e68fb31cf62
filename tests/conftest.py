"""Shared fixtures: devices (CUDA skips cleanly where absent), headless MuJoCo, one thread."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("rlgauge")
    group.addoption("--learn-seeds", default="0",
                    help="seeds of the probe learning tests (marker probe_learning): N, A-B or "
                         "A,B,C (default 0; the sweep of `nox -s seeds`: 0-9)")
    group.addoption("--margins-out", default=None,
                    help="write every probe learning check (value, bound, slack) per seed to "
                         "this JSON-lines file, and their table beside it (.md)")


def pytest_configure(config):
    from margins import parse_seeds

    try:
        config._rlgauge_seeds = parse_seeds(config.getoption("--learn-seeds"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    config._rlgauge_checks = []


def pytest_generate_tests(metafunc):
    """``learn_seed``: one case per seed of ``--learn-seeds`` (seed 0 by default)."""
    if "learn_seed" in metafunc.fixturenames:
        seeds = metafunc.config._rlgauge_seeds
        metafunc.parametrize("learn_seed", seeds, ids=[f"seed{s}" for s in seeds])


def pytest_sessionfinish(session, exitstatus):
    out = session.config.getoption("--margins-out")
    if out and session.config._rlgauge_checks:
        from margins import write

        write(session.config._rlgauge_checks, Path(out), session.config._rlgauge_seeds)


@pytest.fixture
def margin(request):
    """Assertions of a probe learning test that also record how far they pass by
    (``tests/margins.py``)."""
    import re

    from margins import Margins

    seed = request.node.callspec.params.get("learn_seed", 0) if hasattr(
        request.node, "callspec") else 0
    # the test's id without its seed: test[cpu-seed3-rlgauge] -> test[cpu-rlgauge]
    test = re.sub(rf"(?<=[\[-])seed{seed}(?:-|(?=\]))", "", request.node.nodeid)
    test = test.replace("-]", "]").replace("[]", "")
    return Margins(test, seed, request.config._rlgauge_checks)


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


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.gpu)])
def cuda_device(request):
    """The CUDA device only, for device-parity tests: against the CPU, run on the CPU, they
    would compare the CPU with itself, so where there is no GPU they skip (with that reason)."""
    if not _cuda():
        pytest.skip("device parity needs a GPU: on the CPU it would compare the CPU with itself")
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
