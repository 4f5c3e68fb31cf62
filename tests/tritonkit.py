"""The Triton GAE / TD(λ) kernel (``harness.gae_triton``) for the tests: its two functions, and
the ``TRITON`` marks (marker ``triton``, and a skip with the reason where it cannot run).

Where it runs: under Triton's interpreter (``TRITON_INTERPRET=1``, set by ``nox -s kernels``) on
the tests' CPU tensors, or on a GPU without the interpreter (the inputs are moved to CUDA and
the results back, so the same cases then check the compiled kernel). Without triton installed
(``nox -s tests``), or with neither a GPU nor the interpreter, the marked cases skip.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _skip_reason() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (the `kernels` extra: nox -s kernels runs these)"
    if not INTERPRET and not torch.cuda.is_available():
        return ("no GPU and TRITON_INTERPRET is not 1: the Triton kernel cannot run here "
                "(nox -s kernels sets it)")
    return None


SKIP_REASON = _skip_reason()
SKIP_UNLESS_RUNNABLE = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")
TRITON = [pytest.mark.triton, SKIP_UNLESS_RUNNABLE]  # the marks of a parameter (pytest.param)


def triton_test(fn):
    """Decorator: the ``TRITON`` marks on a whole test."""
    return pytest.mark.triton(SKIP_UNLESS_RUNNABLE(fn))


def _moved(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_moved(y, device) for y in x)
    return x


def _kernel(name: str):
    def call(*args, **kwargs):
        from harness import gae_triton  # imported late: TRITON_INTERPRET is read at import

        fn = getattr(gae_triton, name)
        if gae_triton.INTERPRET:
            return fn(*args, **kwargs)
        # a GPU and the compiled kernel: CPU test data go there, results come back
        device = next((a.device for a in args if isinstance(a, torch.Tensor)),
                      torch.device("cpu"))
        out = fn(*_moved(args, "cuda"), **{k: _moved(v, "cuda") for k, v in kwargs.items()})
        return _moved(out, device)

    call.__name__ = call.__qualname__ = name
    return call


gae_triton = _kernel("gae_triton")
td_lambda_return_triton = _kernel("td_lambda_return_triton")
