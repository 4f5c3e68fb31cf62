"""Where and with what a value was measured: one helper for every producer of results.

``machine_name()`` is the name results, asv runs, gate reports and tables are filed under
(``RLGAUGE_MACHINE``, else the hostname, else ``local``); the noxfile reads it too. ``git_sha()``
names the checkout (``RLGAUGE_GIT_SHA`` overrides it, ``-dirty`` marks uncommitted changes).
``versions()`` gives torch's full version string (``torch.__version__``, build tag included:
PyPI's CUDA wheels' metadata drop it) and the installed torchrl / tensordict. ``record()`` is all
of it for one results record, with the hardware (``harness.devices``: CPU model, the GPU a run on
a GPU used, the CUDA version torch was built with).

Importing this module imports neither torch nor torchrl (the noxfile imports it).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

MACHINE_ENV = "RLGAUGE_MACHINE"
GIT_SHA_ENV = "RLGAUGE_GIT_SHA"


def machine_name() -> str:
    """The machine's name for results and reports: ``$RLGAUGE_MACHINE``, the hostname, or
    ``local``."""
    return os.environ.get(MACHINE_ENV) or platform.node() or "local"


@functools.cache
def git_sha() -> str:
    """The checkout's commit (``-dirty`` with uncommitted changes below ``harness/``'s parent),
    ``$RLGAUGE_GIT_SHA`` when set, or ``unknown`` outside a git checkout."""
    if sha := os.environ.get(GIT_SHA_ENV):
        return sha
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def dist_version(dist: str) -> str:
    """An installed distribution's version, or ``not installed``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def torch_version() -> str:
    """``torch.__version__`` with its build tag (``2.13.0+cpu``, ``2.11.0+cu130``)."""
    try:
        import torch
    except ImportError:
        return "not installed"
    return str(torch.__version__)


def versions() -> dict[str, str]:
    return {"torch": torch_version(), "torchrl": dist_version("torchrl"),
            "tensordict": dist_version("tensordict")}


def record(device: str | None = None) -> dict[str, str]:
    """The provenance columns of one results record: time (UTC), git sha, machine, versions,
    CPU model, CUDA version, and -- for a value measured on ``device`` a GPU -- that GPU."""
    from harness import devices

    try:
        cuda = devices.cuda_version()
    except ImportError:
        cuda = "none"
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        "machine": machine_name(),
        **versions(),
        "cpu": devices.cpu_model(),
        "gpu": devices.device_gpu(device) if device else "",
        "cuda": cuda,
    }
