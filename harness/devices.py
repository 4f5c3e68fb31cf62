"""Which devices exist here, what they are called, and device synchronisation for honest timing.

This is the one module of rlgauge that touches ``torch.cuda``.

Device names. A device has one name inside rlgauge, its *canonical* name: ``cpu`` or
``cuda:N`` (always with the ordinal). ``canonical()`` turns what a user typed into it at the
boundary (the CLI, a Config, a grid, a benchmark parameter, a test fixture): ``cuda`` means the
current CUDA device (``cuda:0`` unless the process chose another), as it does in torch. Envs,
modules, buffers, records, reports and tests then all carry that one name. The ordinal form is
the only one that can be the same everywhere: a tensor made on ``"cuda"`` reports ``cuda:0`` as
its device, and torchrl envs and transforms store ordinal devices too
(``torchrl._utils._make_ordinal_device``), so an env asked for ``cuda`` says ``cuda:0``.

Hardware. ``cpu_model()``, ``gpu_name()`` and ``cuda_version()`` name what a result ran on;
``harness.results`` puts them in every record.
"""

from __future__ import annotations

import functools
import platform

from harness.errors import UsageError

DEVICE_TYPES = ("cpu", "cuda")


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _current_cuda_index() -> int:
    """torch's current CUDA device, without initialising CUDA (0 until a process picks one:
    reading it through ``torch.cuda.current_device()`` would initialise CUDA, which a process
    that forks workers must not do; a process that has not imported torch has not picked)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return 0
    return torch.cuda.current_device()


def canonical(name) -> str:
    """The canonical name of ``name`` (a string or ``torch.device``): ``cpu`` or ``cuda:N``.

    Pure naming (no torch import for a string): it says nothing about whether the device exists
    here (``check_device`` does). UsageError for a name that is no device rlgauge runs on.
    """
    text = str(name).strip()
    kind, sep, index = text.partition(":")
    if kind in DEVICE_TYPES and (not sep or index.isdigit()):
        if kind == "cpu":
            return "cpu"
        return f"cuda:{int(index) if sep else _current_cuda_index()}"
    raise UsageError(f"unknown device {text!r}; valid: cpu, cuda, cuda:N")


def available_devices() -> list[str]:
    """Canonical names of the devices present: ``cpu`` always, ``cuda:N`` for each GPU."""
    return ["cpu"] + [f"cuda:{i}" for i in range(cuda_count())]


def check_device(name):
    """The canonical ``torch.device`` of ``name`` if it exists here; UsageError naming the
    devices present otherwise."""
    import torch

    valid = ", ".join(available_devices()) + (" (cuda = cuda:0)" if cuda_count() else "")
    try:
        canon = canonical(name)
    except UsageError:
        raise UsageError(f"unknown device {str(name)!r}; available here: {valid}") from None
    if canon == "cpu" or int(canon.split(":")[1]) < cuda_count():
        return torch.device(canon)
    raise UsageError(f"device {str(name)!r} is not present on this machine; available here: "
                     f"{valid}")


def is_cuda(name) -> bool:
    return str(name).startswith("cuda")


def synchronize(device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU) so that host timers see finished work."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- hardware


@functools.cache
def cpu_model() -> str:
    """The CPU's model name (Linux: ``/proc/cpuinfo``; elsewhere what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


@functools.cache
def gpu_name(index: int) -> str:
    """The name of GPU ``index`` (e.g. ``NVIDIA H200``)."""
    import torch

    return torch.cuda.get_device_name(index)


def gpu_names() -> list[str]:
    return [gpu_name(i) for i in range(cuda_count())]


def device_gpu(name) -> str:
    """The GPU a run on device ``name`` used, or "" for the CPU (and for an absent GPU)."""
    if not is_cuda(name):
        return ""
    index = int(canonical(name).split(":")[1])
    return gpu_name(index) if index < cuda_count() else ""


def cuda_version() -> str:
    """The CUDA version torch was built with (``torch.version.cuda``), or ``none``."""
    import torch

    return torch.version.cuda or "none"
