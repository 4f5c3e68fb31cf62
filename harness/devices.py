"""Which devices exist here, and device synchronisation for honest timing.

This is the one module of rlgauge that touches ``torch.cuda``.
"""

from __future__ import annotations

from harness.errors import UsageError


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def available_devices() -> list[str]:
    """``cpu`` always; ``cuda`` and ``cuda:N`` for each visible GPU."""
    n = cuda_count()
    return ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else [])


def gpu_names() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(cuda_count())]


def check_device(name: str):
    """``torch.device(name)`` if it exists here; UsageError naming the valid devices otherwise."""
    import torch

    valid = available_devices()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UsageError(f"unknown device {name!r}; available here: {', '.join(valid)}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and (device.index is None and cuda_count() or
                                  device.index is not None and device.index < cuda_count()):
        return device
    raise UsageError(f"device {name!r} is not present on this machine; available here: "
                     f"{', '.join(valid)}")


def synchronize(device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU) so that host timers see finished work."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
