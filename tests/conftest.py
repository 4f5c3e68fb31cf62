"""Shared fixtures: devices (CUDA skips cleanly where absent), headless MuJoCo, one thread."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import pytest  # noqa: E402


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request):
    """Each test that takes ``device`` runs on CPU and, where a GPU is present, on CUDA."""
    if request.param == "cuda" and not _cuda():
        pytest.skip("no CUDA device on this machine")
    import torch

    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread in every test: closing a torchrl SerialEnv (dm_control envs) resets the
    count to its value at torchrl's import, and two threads on a busy 2-core machine make the
    following tests 5-7x slower."""
    import torch

    torch.set_num_threads(1)
    yield
