"""Value estimators: rlgauge's fast GAE / TD(λ) kernels and the float64 closed-form oracle.

Kernels (drop-in for torchrl 0.14.1's ``generalized_advantage_estimate`` and
``td_lambda_return_estimate``: same arguments, same results, same dtypes and shapes):

- ``gae(gamma, lmbda, state_value, next_state_value, reward, done, terminated=None, *,
  time_dim=-2)`` -> ``(advantage, value_target)``;
- ``td_lambda_return(gamma, lmbda, next_state_value, reward, done, terminated=None,
  rolling_gamma=None, *, time_dim=-2)`` -> the λ-return.

Both are one reverse linear recurrence over time, x_t = b_t + c_t x_{t+1} (see
``csrc/gae_kernel.h`` for b and c). Which implementation runs:

- CPU, float32/float64, no autograd: a fused C++ pass (``harness.gae_native``; compiled on first
  use, 27-42 s here, then cached) that reads each input once and writes each output once, with
  the recurrence vectorised inside SIMD registers. Measured with ``python -m bench.bench_gae``
  (threads=1, float32, medians of interleaved rounds, 2-core AVX-512 Xeon VM shared with other
  jobs; "floor" = a memory copy moving the same bytes, timed in the same round; three runs):

  ==========  ======================  ======================  ============================
  B×T         GAE                     TD(λ)                   torchrl's fastest over it
  ==========  ======================  ======================  ============================
  1×1000      3.5-3.7 µs              2.7-2.8 µs              190-210× / 350-560× (vec)
  64×1000     1.2-1.6× floor          2.0-3.5× floor          300-430× (loop) / 1200-1600×
  256×2048    1.1× floor (0.5 ms)     1.0× floor (0.4 ms)     40-74× / 330-360× (loop)
  ==========  ======================  ======================  ============================

  The table predates the Python input checks that now run before the kernel (bad input must
  never reach it: ``_check_native_inputs``): ~0.05 µs per tensor attribute read, they add
  ~1.1 µs (GAE) and ~0.8 µs (TD(λ)) per call at 1×1000 (timeit, same machine, 2026-12-04): a
  constant per call, so ~5% of a ~21 µs GAE call at 64×1000 and ~0.2% at 256×2048.

  At 64×1000 the 1.4 MB working set sits in L2, where a copy streams ~85 GB/s and the kernel is
  bound by its in-register scan's shuffles (csrc/gae_kernel.h); at 256×2048 both wait on L3.
  Details and the full tables: ``results/bench/gae.md``.
- CUDA, float32/float64, no autograd, triton importable (the ``kernels`` extra; every CUDA build
  of torch ships it): a Triton kernel (``harness.gae_triton``), one fused pass as on the CPU:
  one program per row of the ``[O, T, I]`` view, the recurrence as a reverse
  ``tl.associative_scan`` over chunks of up to 1024 steps with a carry between chunks. Tested
  on CPU tensors under Triton's interpreter (``nox -s kernels``); not yet timed on a GPU.
  ``RLGAUGE_GAE_TRITON=0`` turns it off.
- everything else (CUDA without triton, other devices and dtypes, inputs that require grad, no
  compiler): ``*_scan``, a Hillis-Steele parallel scan over time in torch ops: ⌈log2 T⌉ rounds
  of a few element-wise kernels, no Python loop over time, differentiable. Also the fallback
  when the native build fails or fails its self-test in a child process (with one
  ``RuntimeWarning``).

Float32 inputs are computed in float32 (as torchrl does), float64 in float64 with γ and λ kept
in float64 (torchrl rounds a Python-float γ to float32 there; see tests/test_analytical.py).

The ORACLE below is written from the textbook definitions, as explicit sums over future steps,
and deliberately NOT as the backward recursion ``A_t = δ_t + γλ A_{t+1}`` or its convolution:
a test that compared an implementation with a transcription of itself would prove nothing. It
is slow (O(T²) work, O(T) Python steps) and exact up to float64 rounding; use it on test-sized
data.

Conventions (torchrl's; see ``torchrl.objectives.value.functional``):

- Tensors are shaped ``[*B, T, *F]`` with time at ``time_dim`` (default -2), usually
  ``[*B, T, 1]``. ``reward[t]``, ``done[t]``, ``terminated[t]`` and ``next_state_value[t]``
  describe the transition *out of* step t (torchrl's ``("next", ...)`` entries).
- ``done[t]`` ends the episode after step t (terminated or truncated): nothing after t is mixed
  into the estimate at t. The end of the window (t = T-1) also ends every sum.
- ``terminated[t]`` removes the bootstrap: ``(1 - terminated[t]) · γ_t · V(s'_t)``. A truncated
  step (``done`` and not ``terminated``) keeps it. ``terminated`` defaults to ``done``.
- ``gamma`` and ``lmbda`` are floats, one-element tensors, or per-step tensors broadcastable to
  the data's shape: ``gamma[t]`` discounts the transition out of step t (torchrl's
  ``rolling_gamma=True``), so a reward k steps ahead is discounted by γ_t γ_{t+1} ⋯ γ_{t+k-1}.
- The oracle's results are float64 on the inputs' device, whatever the input dtype; the
  kernels' have the inputs' dtype.

Definitions, with D_t(k) = Π_{j<k} γ_{t+j} and N_t the number of steps from t to the end of
its episode or of the window, whichever comes first (so step t+N_t-1 is the last one):

- TD error:     δ_s = r_s + γ_s (1 - term_s) V'_s - V_s
- GAE:          A_t = Σ_{l=0}^{N_t-1} [Π_{k=t}^{t+l-1} γ_k λ_k] δ_{t+l};  target = A_t + V_t
- n-step:       G_t^(n) = Σ_{k<n} D_t(k) r_{t+k} + D_t(n) (1 - term_{t+n-1}) V'_{t+n-1}
- TD(λ):        G_t^λ = Σ_{n=1}^{N_t-1} Λ_t(n-1) (1 - λ_{t+n-1}) G_t^(n) + Λ_t(N_t-1) G_t^(N_t),
                with Λ_t(m) = Π_{j<m} λ_{t+j};
                for a constant λ: (1-λ) Σ_{n<N} λ^(n-1) G^(n) + λ^(N-1) G^(N)
- TD(0):        G_t^(1) = r_t + γ_t (1 - term_t) V'_t
- Monte Carlo:  G_t = Σ_{k=0}^{N_t-1} D_t(k) r_{t+k}   (no bootstrap at all)
"""

from __future__ import annotations

import operator

import torch

__all__ = [
    "gae",
    "gae_scan",
    "td_lambda_return",
    "td_lambda_return_scan",
    "native_available",
    "triton_available",
    "triton_status",
    "oracle_gae",
    "oracle_mc_return",
    "oracle_td0_return",
    "oracle_td_lambda_return",
]

F64 = torch.float64


def _time_first(time_dim: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """float64 copies of ``tensors`` (all the same shape) with the time dimension moved to 0."""
    shape = tensors[0].shape
    for x in tensors:
        if x.shape != shape:
            raise ValueError(f"all input tensors must share one shape; got {tuple(shape)} and "
                             f"{tuple(x.shape)}")
    if not -len(shape) <= time_dim < len(shape):
        raise ValueError(f"time_dim={time_dim} is out of range for shape {tuple(shape)}")
    return [x.to(F64).movedim(time_dim, 0) for x in tensors]


def _coefficient(c, like: torch.Tensor, time_dim: int) -> torch.Tensor:
    """γ or λ as a float64 tensor shaped like the time-first data: scalar or per-step."""
    if isinstance(c, torch.Tensor) and c.numel() > 1:
        c = torch.broadcast_to(c.to(device=like.device, dtype=F64), like.shape)
        return c.movedim(time_dim, 0)
    value = float(c.item()) if isinstance(c, torch.Tensor) else float(c)
    return torch.full(like.movedim(time_dim, 0).shape, value, dtype=F64, device=like.device)


def _prefix_products(factors: torch.Tensor) -> torch.Tensor:
    """[1, f_0, f_0 f_1, ..., f_0 ⋯ f_{n-1}]: products of the first k factors, k = 0..n."""
    one = torch.ones((1, *factors.shape[1:]), dtype=factors.dtype, device=factors.device)
    return torch.cat([one, torch.cumprod(factors, dim=0)], dim=0)


def _alive(done: torch.Tensor, t: int) -> torch.Tensor:
    """alive[k] = 1 if no episode end among steps t .. t+k-1 (k = 0 .. T-t-1), else 0."""
    return _prefix_products(1.0 - done[t:-1])


def oracle_td0_return(gamma, next_state_value: torch.Tensor, reward: torch.Tensor,
                      terminated: torch.Tensor | None = None, *, done: torch.Tensor | None = None,
                      time_dim: int = -2) -> torch.Tensor:
    """TD(0) target r_t + γ_t (1 - terminated_t) V(s'_t), in float64.

    Same arguments as torchrl's ``td0_return_estimate`` (``done`` only fills in a missing
    ``terminated``, as there).
    """
    if terminated is None:
        terminated = done
    v_next, r, term = _time_first(time_dim, next_state_value, reward, terminated)
    g = _coefficient(gamma, reward, time_dim)
    out = r + g * (1.0 - term) * v_next
    return out.movedim(0, time_dim)


def oracle_mc_return(gamma, reward: torch.Tensor, done: torch.Tensor, *,
                     time_dim: int = -2) -> torch.Tensor:
    """Discounted Monte-Carlo return G_t = Σ_{k<N_t} D_t(k) r_{t+k} to the episode's end.

    No bootstrap: an episode cut by ``done`` (terminated or truncated) or by the end of the
    window simply stops summing there.
    """
    r, d = _time_first(time_dim, reward, done)
    g = _coefficient(gamma, reward, time_dim)
    T = r.shape[0]
    out = torch.empty_like(r)
    for t in range(T):
        discount = _prefix_products(g[t:-1])  # D_t(k), k = 0 .. T-t-1
        weight = discount * _alive(d, t)  # zero past the end of the episode
        out[t] = (weight * r[t:]).sum(0)
    return out.movedim(0, time_dim)


def oracle_gae(gamma, lmbda, state_value: torch.Tensor, next_state_value: torch.Tensor,
               reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor | None = None,
               *, time_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantage A_t = Σ_{l<N_t} [Π_{k=t}^{t+l-1} γ_k λ_k] δ_{t+l}, and A_t + V_t.

    Arguments as torchrl's ``generalized_advantage_estimate``; returns
    ``(advantage, value_target)`` in float64.
    """
    if terminated is None:
        terminated = done
    v, v_next, r, d, term = _time_first(time_dim, state_value, next_state_value, reward, done,
                                        terminated)
    g = _coefficient(gamma, reward, time_dim)
    lam = _coefficient(lmbda, reward, time_dim)
    delta = r + g * (1.0 - term) * v_next - v  # one-step TD errors
    T = r.shape[0]
    advantage = torch.empty_like(r)
    for t in range(T):
        # weight of δ_{t+l}: Π_{k=t}^{t+l-1} γ_k λ_k, and 0 once an episode end was crossed
        weight = _prefix_products(g[t:-1] * lam[t:-1]) * _alive(d, t)
        advantage[t] = (weight * delta[t:]).sum(0)
    value_target = advantage + v
    return advantage.movedim(0, time_dim), value_target.movedim(0, time_dim)


def oracle_td_lambda_return(gamma, lmbda, next_state_value: torch.Tensor, reward: torch.Tensor,
                            done: torch.Tensor, terminated: torch.Tensor | None = None, *,
                            time_dim: int = -2) -> torch.Tensor:
    """The λ-return: a λ-weighted mixture of the n-step returns G_t^(n), n = 1 .. N_t.

    G_t^λ = Σ_{n<N_t} Λ_t(n-1) (1 - λ_{t+n-1}) G_t^(n) + Λ_t(N_t-1) G_t^(N_t): the last n-step
    return available in the episode (or the window) takes all the remaining weight. Arguments as
    torchrl's ``td_lambda_return_estimate``; float64.
    """
    if terminated is None:
        terminated = done
    v_next, r, d, term = _time_first(time_dim, next_state_value, reward, done, terminated)
    g = _coefficient(gamma, reward, time_dim)
    lam = _coefficient(lmbda, reward, time_dim)
    T = r.shape[0]
    out = torch.empty_like(r)
    for t in range(T):
        steps = T - t  # n = 1 .. steps; index i = n - 1 below
        discount = _prefix_products(g[t:])  # D_t(k), k = 0 .. steps
        rewards_to_n = torch.cumsum(discount[:-1] * r[t:], dim=0)  # Σ_{k<n} D_t(k) r_{t+k}
        bootstrap = discount[1:] * (1.0 - term[t:]) * v_next[t:]  # D_t(n) (1-term) V'_{t+n-1}
        n_step = rewards_to_n + bootstrap  # G_t^(n)
        exists = _alive(d, t)  # G_t^(n) lies inside the episode: no end before step t+n-1
        last = d[t:].clone()  # G_t^(n) is the last one: the episode ends at t+n-1 ...
        last[steps - 1] = 1.0  # ... or the window does
        lam_prefix = _prefix_products(lam[t:-1])  # Λ_t(n-1)
        weight = exists * lam_prefix * torch.where(last > 0, 1.0, 1.0 - lam[t:])
        out[t] = (weight * n_step).sum(0)
    return out.movedim(0, time_dim)


# --------------------------------------------------------------------------- the kernels

_NATIVE_DTYPES = (torch.float32, torch.float64)


_native = None  # the loaded extension module; False once it proved unavailable; None: not tried


def _native_module():
    global _native
    if _native is None:
        from harness import gae_native

        _native = gae_native.load() or False
    return _native


def native_available() -> bool:
    """True when the fused C++ CPU kernel is built and loaded (builds it on first call)."""
    return bool(_native_module())


# The native kernel's argument checks (``csrc/gae.cpp``: ``check_inputs``, ``normalise_time_dim``)
# are all made here first, with the same messages: the kernel is never called with inputs it
# would reject. A C++ exception that does not cross the extension boundary (a build whose
# exception handling is broken: seen as a segfault with torch 2.11+cu130 and another compiler)
# can then not be triggered by bad input. The scan raises the same messages (``_check_shapes``).

SHAPE_ERR = ("All input tensors (value, reward and done states) must share a unique shape; "
             "got {} and {}")
ZERO_D_ERR = "rlgauge gae: inputs must have a time dimension; got a 0-d tensor"
TIME_DIM_ERR = "rlgauge gae: time_dim={} is out of range for shape {}"
_STRIDED = torch.strided
_F32, _F64, _BOOL = torch.float32, torch.float64, torch.bool
_grad_enabled = torch.is_grad_enabled
# c10's names for scalar types, as the C++ messages print them
_SCALAR_NAMES = {torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
                 torch.bfloat16: "BFloat16", torch.bool: "Bool", torch.uint8: "Byte",
                 torch.int8: "Char", torch.int16: "Short", torch.int32: "Int",
                 torch.int64: "Long"}


def _sizes(shape) -> str:
    """A shape as c10 prints ``IntArrayRef``: ``[2, 10, 1]``."""
    return str(list(shape))


def _check_time_dim(shape, time_dim: int) -> int:
    """``time_dim`` normalised to >= 0; RuntimeError (the kernel's messages) if it cannot be."""
    nd = len(shape)
    if nd < 1:
        raise RuntimeError(ZERO_D_ERR)
    if not -nd <= time_dim < nd:
        raise RuntimeError(TIME_DIM_ERR.format(time_dim, _sizes(shape)))
    return time_dim % nd


def _check_shapes(tensors: tuple[torch.Tensor, ...], time_dim: int) -> int:
    """``time_dim`` normalised to >= 0; RuntimeError (torchrl's type) on bad shapes."""
    shape = tensors[0].shape
    for x in tensors[1:]:
        if x.shape != shape:
            raise RuntimeError(SHAPE_ERR.format(_sizes(shape), _sizes(x.shape)))
    return _check_time_dim(shape, time_dim)


def _check_native_inputs(values: tuple[torch.Tensor, ...], flags: tuple[torch.Tensor, ...],
                         time_dim) -> int:
    """Every check ``csrc/gae.cpp`` makes with TORCH_CHECK, in its order and with its messages,
    and those that torch makes inside it (dense layouts, flags on the values' device, an
    integer ``time_dim``): RuntimeError here rather than a C++ exception there. Returns
    ``time_dim`` as an int (TypeError if it is not an integer)."""
    ref = values[0]
    if not ref.is_cpu:
        raise RuntimeError(f"rlgauge gae (native): CPU tensors only, got {ref.device}")
    dtype = ref.dtype
    if dtype is not _F32 and dtype is not _F64:
        raise RuntimeError("rlgauge gae (native): float32 or float64 values only, got "
                           f"{_SCALAR_NAMES.get(dtype, dtype)}")
    shape = ref.shape
    for x in values:
        if x.shape != shape:
            raise RuntimeError(SHAPE_ERR.format(_sizes(shape), _sizes(x.shape)))
        if x.dtype is not dtype or not x.is_cpu:
            raise RuntimeError("rlgauge gae (native): values and rewards must share one dtype "
                               "and device")
        if x.layout is not _STRIDED:
            raise RuntimeError(f"rlgauge gae (native): dense tensors only, got {x.layout}")
    for f in flags:
        if f.shape != shape:
            raise RuntimeError(SHAPE_ERR.format(_sizes(shape), _sizes(f.shape)))
        if f.dtype is not _BOOL:
            raise RuntimeError("rlgauge gae (native): done/terminated must be bool, got "
                               f"{_SCALAR_NAMES.get(f.dtype, f.dtype)}")
        if not f.is_cpu:
            raise RuntimeError("rlgauge gae (native): done/terminated must be on the values' "
                               f"device (cpu), got {f.device}")
        if f.layout is not _STRIDED:
            raise RuntimeError(f"rlgauge gae (native): dense tensors only, got {f.layout}")
    time_dim = operator.index(time_dim)
    _check_time_dim(shape, time_dim)
    return time_dim


def _flag(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.bool else x != 0


def _scan_coefficient(c, dtype, device):
    """γ or λ for the scan: a Python number stays one (no host-to-device copy per call), a
    tensor moves to the data's device and dtype (one element: 0-d, so it broadcasts)."""
    if isinstance(c, torch.Tensor):
        c = c.to(device=device, dtype=dtype)
        return c.reshape(()) if c.numel() == 1 else c
    return float(c)


def _native_for(values: tuple[torch.Tensor, ...], gamma, lmbda):
    """The native module if it applies to these inputs (CPU, float32/64, one dtype, no
    autograd), else None: the scan takes them. What the kernel would reject is then rejected by
    ``_check_native_inputs``, before it is called. Kept lean: at 1x1000 this check costs more
    than the kernel."""
    ref = values[0]
    dtype = ref.dtype
    if not ref.is_cpu or (dtype is not _F32 and dtype is not _F64):
        return None
    for x in values:
        if x.dtype is not dtype:
            return None
    if _grad_enabled():  # the native kernel has no backward; the scan is differentiable
        for x in (*values, gamma, lmbda):
            if isinstance(x, torch.Tensor) and x.requires_grad:
                return None
    return _native_module() or None


# --- the Triton kernel (harness/gae_triton.py): CUDA tensors without autograd

_TRITON_ENV_SWITCH = "RLGAUGE_GAE_TRITON"  # "0": never use the Triton kernel (the scan runs)
_TRITON_DEVICES = ("cuda",)  # device types dispatched to it (the tests add "cpu" under the
#                              interpreter, to check the dispatch without a GPU)
_triton = None  # harness.gae_triton once imported; False once unavailable; None: not tried
_triton_detail = "not tried"


def _triton_module():
    """``harness.gae_triton`` if triton is importable and not disabled, else None (the reason in
    ``triton_status()``). Imported on the first CUDA call only: CPU users never pay for it."""
    global _triton, _triton_detail
    if _triton is None:
        import os

        if os.environ.get(_TRITON_ENV_SWITCH, "1") == "0":
            _triton, _triton_detail = False, f"disabled by {_TRITON_ENV_SWITCH}=0"
        else:
            try:
                from harness import gae_triton
            except ImportError as e:  # triton not installed: the scan, quietly
                _triton, _triton_detail = False, f"triton not importable ({e})"
            except Exception as e:  # noqa: BLE001 -- a broken install: warn once, use the scan
                import warnings

                _triton, _triton_detail = False, f"importing it failed: {e!r}"
                warnings.warn(f"rlgauge GAE: the Triton kernel is unavailable ({_triton_detail});"
                              " using the pure-torch parallel scan on CUDA", RuntimeWarning,
                              stacklevel=3)
            else:
                import triton

                _triton, _triton_detail = gae_triton, f"triton {triton.__version__}"
    return _triton or None


def triton_available() -> bool:
    """True when CUDA tensors get the Triton kernel (triton importable, not disabled)."""
    return _triton_module() is not None


def triton_status() -> str:
    """Why the Triton kernel is (not) used: ``triton 3.9.0``, or the reason it is not."""
    _triton_module()
    return _triton_detail


def _triton_for(values: tuple[torch.Tensor, ...], gamma, lmbda):
    """``harness.gae_triton`` if it applies to these inputs (CUDA, float32/64, one dtype, no
    autograd), else None: the scan takes them. Bad input is rejected by its ``check_inputs``
    before the kernel is launched."""
    ref = values[0]
    dtype = ref.dtype
    if ref.device.type not in _TRITON_DEVICES or (dtype is not _F32 and dtype is not _F64):
        return None
    for x in values:
        if x.dtype is not dtype:
            return None
    if _grad_enabled():  # no backward in the kernel; the scan is differentiable
        for x in (*values, gamma, lmbda):
            if isinstance(x, torch.Tensor) and x.requires_grad:
                return None
    return _triton_module()


def _plain_cpu_call(gamma, lmbda, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                    done: torch.Tensor, terminated: torch.Tensor, time_dim) -> bool:
    """The common call, checked inline: float γ and λ, bool flags, dense CPU float32/64 values
    of one dtype, one shape, an int ``time_dim`` in range, no autograd, the native module
    loaded. That is all of ``_check_native_inputs``: the kernel cannot reject this call. False
    sends it down the general path, which raises on bad input. (~1 µs of attribute reads at
    ~0.05 µs each, of a ~4 µs call at 1x1000; the general path costs ~3 µs more.)"""
    dtype = a.dtype
    shape = a.shape
    return (type(gamma) is float and type(lmbda) is float and bool(_native)
            and (dtype is _F32 or dtype is _F64) and a.is_cpu and a.layout is _STRIDED
            and type(time_dim) is int and -len(shape) <= time_dim < len(shape)
            and (b is a or (b.dtype is dtype and b.shape == shape and b.is_cpu
                            and b.layout is _STRIDED))
            and c.dtype is dtype and c.shape == shape and c.is_cpu and c.layout is _STRIDED
            and done.dtype is _BOOL and done.shape == shape and done.is_cpu
            and done.layout is _STRIDED
            and (terminated is done or (terminated.dtype is _BOOL and terminated.shape == shape
                                        and terminated.is_cpu and terminated.layout is _STRIDED))
            and not (_grad_enabled()
                     and (a.requires_grad or b.requires_grad or c.requires_grad)))


def _native_coefficient(c, like: torch.Tensor):
    """γ or λ for the C++ kernel: (float, None), or (0.0, a dense per-step tensor broadcast to
    ``like`` on its device; RuntimeError from torch if it does not broadcast)."""
    if isinstance(c, torch.Tensor):
        if c.layout is not _STRIDED:
            raise RuntimeError(f"rlgauge gae (native): dense tensors only, got {c.layout}")
        if c.numel() != 1:
            return 0.0, torch.broadcast_to(c.to(like.device), like.shape)
        return float(c), None
    return float(c), None


def reverse_linear_scan(b: torch.Tensor, c: torch.Tensor, dim: int) -> torch.Tensor:
    """x with x_t = b_t + c_t x_{t+1} along ``dim`` (x past the end = 0), in log2(T) rounds.

    Hillis-Steele: after the round with shift s, x_t holds the recurrence over steps
    t .. t+2s-1 and a_t the product c_t ⋯ c_{t+2s-1} (both cut at the end), so combining
    x_t + a_t x_{t+s} doubles the span. O(T log T) work, ⌈log2 T⌉ rounds of element-wise
    kernels, and autograd works through it.
    """
    T = b.shape[dim]
    x, a = b, c
    s = 1
    while s < T:
        x = torch.cat([torch.addcmul(x.narrow(dim, 0, T - s), a.narrow(dim, 0, T - s),
                                     x.narrow(dim, s, T - s)), x.narrow(dim, T - s, s)], dim)
        if 2 * s < T:
            a = torch.cat([a.narrow(dim, 0, T - s) * a.narrow(dim, s, T - s),
                           a.narrow(dim, T - s, s)], dim)
        s *= 2
    return x


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in _NATIVE_DTYPES else torch.promote_types(dtype, torch.float32)


def gae_scan(gamma, lmbda, state_value: torch.Tensor, next_state_value: torch.Tensor,
             reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor | None = None,
             *, time_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE by a parallel scan over time in torch ops: any device, differentiable.

    Same arguments and results as ``gae``; this is what ``gae`` runs off the CPU fast path.
    """
    if terminated is None:
        terminated = done
    dim = _check_shapes((state_value, next_state_value, reward, done, terminated), time_dim)
    dtype = torch.promote_types(torch.promote_types(state_value.dtype, next_state_value.dtype),
                                reward.dtype)
    work = _compute_dtype(dtype)
    v, v_next, r = (x.to(work) for x in (state_value, next_state_value, reward))
    g = _scan_coefficient(gamma, work, v.device)
    lam = _scan_coefficient(lmbda, work, v.device)
    keep = (~_flag(terminated)).to(work)
    cont = (~_flag(done)).to(work)
    delta = r + g * keep * v_next - v  # b_t: the TD error
    advantage = reverse_linear_scan(delta, g * lam * cont, dim)  # c_t = γλ(1 - done)
    value_target = advantage + v
    return advantage.to(dtype), value_target.to(dtype)


def td_lambda_return_scan(gamma, lmbda, next_state_value: torch.Tensor, reward: torch.Tensor,
                          done: torch.Tensor, terminated: torch.Tensor | None = None, *,
                          time_dim: int = -2) -> torch.Tensor:
    """TD(λ) return by a parallel scan over time in torch ops: any device, differentiable.

    torchrl's loop, g = r_t + γ_t((1-λ_t) V'_t + λ_t [(1-d_t) g_{t+1} + d_t V'_t]) with
    V' zeroed where terminated and d_{T-1} = 1, rearranged into x_t = b_t + c_t x_{t+1}:
    b_t = r_t + γ_t V'_t (1 - λ_t (1 - d_t)), c_t = γ_t λ_t (1 - d_t).
    """
    if terminated is None:
        terminated = done
    dim = _check_shapes((next_state_value, reward, done, terminated), time_dim)
    dtype = torch.promote_types(next_state_value.dtype, reward.dtype)
    work = _compute_dtype(dtype)
    v_next, r = next_state_value.to(work), reward.to(work)
    g = _scan_coefficient(gamma, work, r.device)
    lam = _scan_coefficient(lmbda, work, r.device)
    v_next = v_next * (~_flag(terminated)).to(work)
    cont = (~_flag(done)).to(work)
    T = cont.shape[dim]
    if T:
        cont = torch.cat([cont.narrow(dim, 0, T - 1), torch.zeros_like(cont.narrow(dim, 0, 1))],
                         dim)  # the window's end is an episode end
    glc = g * lam * cont
    out = reverse_linear_scan(r + g * v_next - glc * v_next, glc, dim)
    return out.to(dtype)


def gae(gamma, lmbda, state_value: torch.Tensor, next_state_value: torch.Tensor,
        reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor | None = None, *,
        time_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimate: ``(advantage, value_target)``, drop-in for torchrl's
    ``generalized_advantage_estimate``.

    A_t = δ_t + γ_t λ_t (1 - done_t) A_{t+1}, δ_t = r_t + γ_t (1 - terminated_t) V'_t - V_t,
    value_target = A + V. Tensors ``[*B, T, *F]`` with time at ``time_dim``, all one shape;
    ``terminated`` defaults to ``done``; γ and λ are floats, one-element tensors or per-step
    tensors broadcastable to the data. Runs the fused C++ kernel on CPU float32/float64 (no
    autograd), the Triton kernel (``harness.gae_triton``) on CUDA float32/float64 (no autograd,
    triton installed), else ``gae_scan``.
    """
    if terminated is None:
        terminated = done
    if _plain_cpu_call(gamma, lmbda, state_value, next_state_value, reward, done, terminated,
                       time_dim):
        return _native.gae(gamma, lmbda, None, None, state_value, next_state_value, reward, done,
                           terminated, time_dim)
    values = (state_value, next_state_value, reward)
    native = _native_for(values, gamma, lmbda)
    if native is not None:
        flags = (_flag(done), _flag(terminated))
        time_dim = _check_native_inputs(values, flags, time_dim)
        g, g_t = _native_coefficient(gamma, state_value)
        lam, l_t = _native_coefficient(lmbda, state_value)
        return native.gae(g, lam, g_t, l_t, *values, *flags, time_dim)
    kernel = _triton_for(values, gamma, lmbda)
    if kernel is not None:
        return kernel.gae_triton(gamma, lmbda, *values, done, terminated, time_dim=time_dim)
    return gae_scan(gamma, lmbda, state_value, next_state_value, reward, done, terminated,
                    time_dim=time_dim)


def td_lambda_return(gamma, lmbda, next_state_value: torch.Tensor, reward: torch.Tensor,
                     done: torch.Tensor, terminated: torch.Tensor | None = None,
                     rolling_gamma: bool | None = None, *, time_dim: int = -2) -> torch.Tensor:
    """TD(λ) return, drop-in for torchrl's ``td_lambda_return_estimate``.

    The λ-weighted mixture of n-step returns, bootstrapped with V' where an episode is cut by
    truncation or by the window's end, not where it terminated. Arguments as ``gae`` (no
    ``state_value``). ``rolling_gamma``: torchrl's flag; ``None``/``True`` (per-step γ_t
    discounts the transition out of step t) runs here, ``False`` (each step's γ, λ applied to
    its whole future, an O(T²) definition) is passed on to torchrl's function.
    """
    if rolling_gamma is False:
        from torchrl.objectives.value.functional import td_lambda_return_estimate

        return td_lambda_return_estimate(gamma, lmbda, next_state_value, reward, done,
                                         terminated, rolling_gamma, time_dim=time_dim)
    if terminated is None:
        terminated = done
    if _plain_cpu_call(gamma, lmbda, next_state_value, next_state_value, reward, done,
                       terminated, time_dim):
        return _native.td_lambda(gamma, lmbda, None, None, next_state_value, reward, done,
                                 terminated, time_dim)
    values = (next_state_value, reward)
    native = _native_for(values, gamma, lmbda)
    if native is not None:
        flags = (_flag(done), _flag(terminated))
        time_dim = _check_native_inputs(values, flags, time_dim)
        g, g_t = _native_coefficient(gamma, next_state_value)
        lam, l_t = _native_coefficient(lmbda, next_state_value)
        return native.td_lambda(g, lam, g_t, l_t, *values, *flags, time_dim)
    kernel = _triton_for(values, gamma, lmbda)
    if kernel is not None:
        return kernel.td_lambda_return_triton(gamma, lmbda, *values, done, terminated,
                                              time_dim=time_dim)
    return td_lambda_return_scan(gamma, lmbda, next_state_value, reward, done, terminated,
                                 time_dim=time_dim)
