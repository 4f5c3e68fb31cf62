"""rlgauge's GPU GAE / TD(λ) kernel, in Triton: one fused pass, each input read once and each
output written once.

Drop-in signatures and semantics as ``harness.estimators.gae`` / ``td_lambda_return`` (γ, λ as
floats, one-element tensors or per-step tensors; ``done`` vs ``terminated``; any leading batch
dims; ``time_dim``; float32 and float64). ``harness.estimators`` dispatches here for CUDA tensors
without autograd (float32/float64, triton importable); call ``gae_triton`` /
``td_lambda_return_triton`` directly to run the kernel on any tensors Triton can take: CUDA, or
CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` in the environment before this
module is imported), which is how the tests run it without a GPU (``nox -s kernels``).

The kernel: the reverse linear recurrence x_t = b_t + c_t x_{t+1} (x_T = 0; b and c as in
``csrc/gae_kernel.h``, computed on the fly from step t's inputs). The data are seen as contiguous
``[O, T, I]`` blocks (O: product of the dims before time, I: after it), as the CPU kernel sees
them, and each program owns one row (o, i): its T steps at stride I (contiguous when I = 1, the
usual ``[*B, T, 1]``). A row is processed in chunks of ``BLOCK`` steps from the last chunk to the
first: within a chunk ``tl.associative_scan(..., reverse=True)`` composes the affine maps
x -> b_t + c_t x into (B_t, C_t) with x_t = B_t + C_t x_end, where x_end is the carry (x at the
first step of the next chunk, 0 after the window's end); the chunk's outputs are B + C · carry,
and the new carry is the chunk's first x. Float32 inputs are computed in float32, float64 in
float64, with γ and λ passed as the bits of a Python float (a float argument would reach Triton
as float32) and rounded to float32 only for float32 data; per-step γ/λ are broadcast to the data
and converted to its dtype first, as the CPU kernel does.

No backward: ``harness.estimators`` sends inputs that require grad to ``gae_scan``.
"""

from __future__ import annotations

import operator
import struct

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from harness.estimators import SHAPE_ERR, _check_time_dim

__all__ = ["gae_triton", "td_lambda_return_triton", "check_inputs", "INTERPRET"]

_F32, _F64, _BOOL, _STRIDED = torch.float32, torch.float64, torch.bool, torch.strided
MAX_BLOCK = 1024  # steps per chunk; longer rows loop over chunks with a carry


@triton.jit
def _compose(b_later, c_later, b_earlier, c_earlier):
    """(b, c) of x -> b_e + c_e (b_l + c_l x): the earlier step's map after the later one's
    (reverse scan: the first argument is the accumulated later part)."""
    return b_earlier + c_earlier * b_later, c_earlier * c_later


@triton.jit
def _coefficient(bits, ptr, offs, mask, PER_STEP: tl.constexpr, DTYPE: tl.constexpr):
    if PER_STEP:
        return tl.load(ptr + offs, mask=mask, other=0.0)
    return bits.to(tl.int64).to(tl.float64, bitcast=True).to(DTYPE)


@triton.jit
def _rlgauge_gae_kernel(v_ptr, nv_ptr, r_ptr, done_ptr, term_ptr, g_ptr, l_ptr, g_bits, l_bits,
                        adv_ptr, target_ptr, T, inner,
                        G_PER_STEP: tl.constexpr, L_PER_STEP: tl.constexpr,
                        TD_LAMBDA: tl.constexpr, BLOCK: tl.constexpr):
    """One row (o, i) of [O, T, I]. GAE: adv = x, target = x + V with b = r + γ(1-term)V' - V,
    c = γλ(1-done). TD(λ) (TD_LAMBDA; v_ptr, target_ptr unused): out = x with V'' = (1-term)V',
    cont = 1-done (0 at t = T-1), b = r + γ V'' (1 - λ cont), c = γλ cont."""
    row = tl.program_id(0).to(tl.int64)
    base = (row // inner) * T * inner + row % inner
    DTYPE = r_ptr.dtype.element_ty
    carry = tl.zeros([], dtype=DTYPE)
    n_chunks = tl.cdiv(T, BLOCK)
    for k in range(n_chunks):
        t = (n_chunks - 1 - k) * BLOCK + tl.arange(0, BLOCK)
        mask = t < T
        offs = base + t.to(tl.int64) * inner
        nv = tl.load(nv_ptr + offs, mask=mask, other=0.0)
        r = tl.load(r_ptr + offs, mask=mask, other=0.0)
        done = tl.load(done_ptr + offs, mask=mask, other=1).to(tl.int1)
        term = tl.load(term_ptr + offs, mask=mask, other=1).to(tl.int1)
        g = _coefficient(g_bits, g_ptr, offs, mask, G_PER_STEP, DTYPE)
        lam = _coefficient(l_bits, l_ptr, offs, mask, L_PER_STEP, DTYPE)
        zero = tl.zeros([BLOCK], dtype=DTYPE)
        nv = tl.where(term, zero, nv)
        if TD_LAMBDA:
            gl = tl.where(done | (t == T - 1), zero, g * lam)  # the window's end ends episodes
            b = r + g * nv - gl * nv
        else:
            v = tl.load(v_ptr + offs, mask=mask, other=0.0)
            gl = tl.where(done, zero, g * lam)
            b = r + g * nv - v
        b = tl.where(mask, b, zero)  # past the end: x = 0
        x_b, x_c = tl.associative_scan((b, gl), 0, _compose, reverse=True)
        x = x_b + x_c * carry
        tl.store(adv_ptr + offs, x, mask=mask)
        if not TD_LAMBDA:
            tl.store(target_ptr + offs, x + v, mask=mask)
        carry = tl.sum(tl.where(t == (n_chunks - 1 - k) * BLOCK, x, zero), axis=0)


# True when kernels run in Triton's interpreter (TRITON_INTERPRET=1 at import): on CPU tensors too
INTERPRET = isinstance(_rlgauge_gae_kernel, InterpretedFunction)


def _bits(value: float) -> int:
    """The IEEE-754 bits of a float64 as a signed int64 (the kernel bitcasts them back)."""
    return struct.unpack("<q", struct.pack("<d", float(value)))[0]


def _flag(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype is _BOOL else x != 0


def check_inputs(values: tuple[torch.Tensor, ...], flags: tuple[torch.Tensor, ...],
                 time_dim) -> int:
    """Everything the kernel relies on, checked in Python before it is launched: one shape
    (torchrl's message), float32/float64 values of one dtype on one device, bool flags there
    too, dense layouts, an integer ``time_dim`` in range. RuntimeError (TypeError for a
    non-integer ``time_dim``); returns ``time_dim`` normalised to >= 0."""
    ref = values[0]
    dtype, device, shape = ref.dtype, ref.device, ref.shape
    if dtype is not _F32 and dtype is not _F64:
        raise RuntimeError(f"rlgauge gae (triton): float32 or float64 values only, got {dtype}")
    for x in (*values, *flags):
        if x.shape != shape:
            raise RuntimeError(SHAPE_ERR.format(list(shape), list(x.shape)))
        if x.layout is not _STRIDED:
            raise RuntimeError(f"rlgauge gae (triton): dense tensors only, got {x.layout}")
        if x.device != device:
            raise RuntimeError(f"rlgauge gae (triton): all tensors must be on {device}, got "
                               f"{x.device}")
    for x in values:
        if x.dtype is not dtype:
            raise RuntimeError("rlgauge gae (triton): values and rewards must share one dtype")
    for f in flags:
        if f.dtype is not _BOOL:
            raise RuntimeError(f"rlgauge gae (triton): done/terminated must be bool, got "
                               f"{f.dtype}")
    if device.type == "cpu" and not INTERPRET:
        raise RuntimeError("rlgauge gae (triton): CPU tensors need Triton's interpreter "
                           "(TRITON_INTERPRET=1 before harness.gae_triton is imported)")
    return _check_time_dim(shape, operator.index(time_dim))


def _coefficient_arg(c, like: torch.Tensor):
    """γ or λ for the kernel: (bits, None) for a number or a one-element tensor, or
    (0, a contiguous per-step tensor shaped and typed like ``like``)."""
    if isinstance(c, torch.Tensor):
        if c.layout is not _STRIDED:
            raise RuntimeError(f"rlgauge gae (triton): dense tensors only, got {c.layout}")
        if c.numel() != 1:
            return 0, torch.broadcast_to(c.to(device=like.device, dtype=like.dtype),
                                         like.shape).contiguous()
        return _bits(c.item()), None
    return _bits(c), None


def _launch(gamma, lmbda, v, nv, r, done, terminated, time_dim: int, td_lambda: bool):
    shape = r.shape
    T = shape[time_dim]
    inner = 1  # I of the [O, T, I] split, as in csrc/gae_kernel.h
    for n in shape[time_dim + 1:]:
        inner *= n
    rows = r.numel() // T if T else 0
    g_bits, g_t = _coefficient_arg(gamma, r)
    l_bits, l_t = _coefficient_arg(lmbda, r)
    nv, r, done, terminated = (x.contiguous() for x in (nv, r, done, terminated))
    v = nv if td_lambda else v.contiguous()
    out = torch.empty(shape, dtype=r.dtype, device=r.device)
    target = out if td_lambda else torch.empty_like(out)
    if rows:
        block = min(triton.next_power_of_2(T), MAX_BLOCK)
        _rlgauge_gae_kernel[(rows,)](
            v, nv, r, done, terminated, r if g_t is None else g_t, r if l_t is None else l_t,
            g_bits, l_bits, out, target, T, inner,
            G_PER_STEP=g_t is not None, L_PER_STEP=l_t is not None, TD_LAMBDA=td_lambda,
            BLOCK=block, num_warps=4 if block >= 512 else 1)
    return out if td_lambda else (out, target)


def gae_triton(gamma, lmbda, state_value: torch.Tensor, next_state_value: torch.Tensor,
               reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor | None = None,
               *, time_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE ``(advantage, value_target)`` by the Triton kernel: arguments and results as
    ``harness.estimators.gae``. Needs float32/float64 values of one dtype on one device (CUDA,
    or CPU under ``TRITON_INTERPRET=1``); no autograd (the results carry no gradient)."""
    if terminated is None:
        terminated = done
    values = (state_value, next_state_value, reward)
    flags = (_flag(done), _flag(terminated))
    time_dim = check_inputs(values, flags, time_dim)
    return _launch(gamma, lmbda, *values, *flags, time_dim, td_lambda=False)


def td_lambda_return_triton(gamma, lmbda, next_state_value: torch.Tensor, reward: torch.Tensor,
                            done: torch.Tensor, terminated: torch.Tensor | None = None, *,
                            time_dim: int = -2) -> torch.Tensor:
    """TD(λ) return by the Triton kernel: arguments and results as
    ``harness.estimators.td_lambda_return`` with ``rolling_gamma`` None/True; the same
    requirements as ``gae_triton``."""
    if terminated is None:
        terminated = done
    values = (next_state_value, reward)
    flags = (_flag(done), _flag(terminated))
    time_dim = check_inputs(values, flags, time_dim)
    return _launch(gamma, lmbda, None, *values, *flags, time_dim, td_lambda=True)
