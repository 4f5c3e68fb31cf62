"""rlgauge's GAE / TD(λ) kernels (``harness.estimators.gae`` / ``td_lambda_return``) against
torchrl's functions, each other, and the float64 oracle.

The closed-form checks live in tests/test_analytical.py (the kernels are in its ``IMPLS``);
here: drop-in agreement with torchrl 0.14.1 over random shapes, dtypes, done/terminated
patterns, tensor γ/λ and ``time_dim`` (hypothesis); the native kernel's SIMD edge cases (row
lengths around the vector width, misaligned rows, I > 1 layouts, non-contiguous inputs) against
the independent torch scan; each compiled code path of ``csrc/gae_kernel.h`` (scalar, GCC vectors,
AVX-512) built standalone; autograd; the build cache and the fallback when the build fails.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchrl.objectives.value.functional import (
    generalized_advantage_estimate,
    td_lambda_return_estimate,
)

from harness import estimators, gae_native
from harness.estimators import (
    gae,
    gae_scan,
    oracle_gae,
    oracle_td_lambda_return,
    td_lambda_return,
    td_lambda_return_scan,
)

F64 = torch.float64
HAVE_COMPILER = shutil.which(os.environ.get("CXX", "c++")) is not None
NATIVE = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler: no native kernel")


def inputs(seed: int, shape, *, dtype=torch.float32, p_term=0.05, p_trunc=0.05, scale=10.0):
    """(state_value, next_state_value, reward, done, terminated), uniform in ±scale."""
    g = torch.Generator().manual_seed(seed)
    v, nv, r = (torch.empty(shape, dtype=F64).uniform_(-scale, scale, generator=g).to(dtype)
                for _ in range(3))
    u = torch.rand(shape, generator=g)
    return v, nv, r, u < p_term + p_trunc, u < p_term


def assert_close(actual, expected, atol, what=""):
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    err = (actual.to(F64) - expected.to(F64)).abs().max().item() if actual.numel() else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:.1g}"


# --- the native kernel is there (where a compiler is) -----------------------------------------


@NATIVE
def test_native_kernel_builds_and_loads():
    assert estimators.native_available(), gae_native.status().detail
    st_ = gae_native.status()
    assert st_.ok and st_.path is not None and st_.path.exists()
    # the compile time is recorded with the cached build: > 0 s, and a build is not instant
    assert st_.build_seconds is not None and st_.build_seconds > 1.0


@NATIVE
def test_native_cache_is_reused_by_a_fresh_process():
    estimators.native_available()  # make sure the cache exists
    code = ("import time, torch; t = time.perf_counter(); from harness import gae_native; "
            "s = gae_native.status(); print(s.ok, round(time.perf_counter() - t, 3), s.detail)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True).stdout.split(maxsplit=2)
    # loaded from the cache, not rebuilt: well under the ~30-40 s a compile takes
    assert out[0] == "True" and "loaded from cache" in out[2], out
    assert float(out[1]) < 5.0, out


def test_disabled_native_kernel_falls_back_quietly():
    code = textwrap.dedent("""
        import warnings, torch
        warnings.simplefilter("error")
        from harness import estimators
        assert not estimators.native_available()
        v = torch.zeros(2, 5, 1); d = torch.zeros(2, 5, 1, dtype=torch.bool)
        adv, target = estimators.gae(0.9, 0.8, v, v, v + 1, d)
        print(float(adv[0, 0, 0]))
    """)
    env = {**os.environ, "RLGAUGE_GAE_NATIVE": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    # reward 1, V ≡ 0, 5 steps, no end: A_0 = Σ_{k<5} (γλ)^k = (1 - 0.72^5) / (1 - 0.72)
    assert float(out.stdout) == pytest.approx((1 - 0.72**5) / (1 - 0.72), rel=1e-6)


def test_failed_build_warns_once_and_falls_back(monkeypatch, tmp_path):
    def broken_build(dest, *, verbose=False):
        raise RuntimeError("Error building extension '_rlgauge_gae'")

    monkeypatch.setenv("RLGAUGE_CACHE_DIR", str(tmp_path))  # an empty cache: must build
    monkeypatch.setattr(gae_native, "build", broken_build)
    monkeypatch.setattr(gae_native, "_status", None)
    monkeypatch.setattr(gae_native, "_module", None)
    monkeypatch.setattr(estimators, "_native", None)
    with pytest.warns(RuntimeWarning, match="pure-torch parallel scan"):
        assert not estimators.native_available()
    assert "Error building extension" in gae_native.status().detail
    v, nv, r, d, term = inputs(0, (2, 9, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once above: not again
        adv, _ = gae(0.9, 0.8, v, nv, r, d, term)
    assert_close(adv, oracle_gae(0.9, 0.8, v, nv, r, d, term)[0], 1e-4, "fallback")


# --- each compiled path of gae_kernel.h, built standalone --------------------------------------

DRIVER = r"""
#include "gae_kernel.h"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace rlgauge;

static unsigned long long state = 12345;
static double uniform() {  // a fixed LCG: the same data on every compiler
  state = state * 6364136223846793005ULL + 1442695040888963407ULL;
  return (state >> 11) * (1.0 / 9007199254740992.0);
}

template <typename S, bool GAE, bool SG, bool SL>
static double check(int64_t O, int64_t T, int64_t I, int64_t offset) {
  const int64_t N = O * T * I, P = N + offset;  // offset: misalign every array
  std::vector<S> v(P), nv(P), r(P), g(P), l(P), out0(P), out1(P);
  std::vector<unsigned char> d(P), te(P);
  for (int64_t k = 0; k < P; ++k) {
    v[k] = S(20 * uniform() - 10); nv[k] = S(20 * uniform() - 10); r[k] = S(20 * uniform() - 10);
    g[k] = S(0.5 + 0.5 * uniform()); l[k] = S(uniform());
    const double u = uniform();
    d[k] = u < 0.1; te[k] = u < 0.05;
  }
  Inputs<S> in{GAE ? v.data() + offset : nullptr, nv.data() + offset, r.data() + offset,
               reinterpret_cast<const bool*>(d.data() + offset),
               reinterpret_cast<const bool*>(te.data() + offset),
               SG ? g.data() + offset : nullptr, SL ? l.data() + offset : nullptr,
               S(0.875), S(0.75), out0.data() + offset, GAE ? out1.data() + offset : nullptr, T};
  if (I == 1) run_rows<S, GAE, SG, SL>(in, 0, O); else run_inner<S, GAE, SG, SL>(in, I, 0, O);
  double err = 0;
  for (int64_t o = 0; o < O; ++o)
    for (int64_t i = 0; i < I; ++i) {
      double x = 0;
      for (int64_t t = T - 1; t >= 0; --t) {  // the recurrence in double, written out plainly
        const int64_t k = offset + (o * T + t) * I + i;
        const double gg = SG ? double(g[k]) : 0.875, ll = SL ? double(l[k]) : 0.75;
        const double nvk = te[k] ? 0.0 : double(nv[k]);
        if (GAE) {
          x = double(r[k]) + gg * nvk - double(v[k]) + gg * ll * (d[k] ? 0.0 : 1.0) * x;
          err = std::fmax(err, std::fabs(double(out1[k]) - (x + double(v[k]))));
        } else {
          const double cont = (d[k] || t == T - 1) ? 0.0 : 1.0;
          x = double(r[k]) + gg * nvk * (1 - ll * cont) + gg * ll * cont * x;
        }
        err = std::fmax(err, std::fabs(double(out0[k]) - x) / (1 + std::fabs(x)));
      }
    }
  return err;
}

int main() {
  double worst32 = 0, worst64 = 0;
  const int64_t shapes[][3] = {{1, 1, 1}, {1, 2, 1}, {3, 15, 1}, {3, 16, 1}, {3, 17, 1},
                               {2, 33, 1}, {5, 100, 1}, {1, 1000, 1}, {2, 7, 3}, {1, 50, 19}};
  for (const auto& s : shapes)
    for (int64_t offset : {0, 1, 3}) {
      worst32 = std::fmax(worst32, check<float, true, false, false>(s[0], s[1], s[2], offset));
      worst32 = std::fmax(worst32, check<float, false, false, false>(s[0], s[1], s[2], offset));
      worst32 = std::fmax(worst32, check<float, true, true, true>(s[0], s[1], s[2], offset));
      worst32 = std::fmax(worst32, check<float, false, true, false>(s[0], s[1], s[2], offset));
      worst64 = std::fmax(worst64, check<double, true, false, false>(s[0], s[1], s[2], offset));
      worst64 = std::fmax(worst64, check<double, false, false, true>(s[0], s[1], s[2], offset));
      worst64 = std::fmax(worst64, check<double, true, true, true>(s[0], s[1], s[2], offset));
    }
  std::printf("%d %.3e %.3e\n", RLGAUGE_GAE_PATH, worst32, worst64);
  return 0;
}
"""


def _cpu_has_avx512() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl"))


@pytest.fixture(scope="module")
def driver_source(tmp_path_factory):
    d = tmp_path_factory.mktemp("gae-kernel")
    (d / "driver.cpp").write_text(DRIVER)
    return d


@pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler")
@pytest.mark.parametrize(("path", "march"), [(0, "native"), (1, "native"), (1, "x86-64"),
                                            (2, "native")],
                         ids=["scalar", "gcc-vectors", "gcc-vectors-sse2", "avx512"])
def test_kernel_code_path_matches_plain_recurrence(path, march, driver_source):
    """Each path against the plain recurrence in double; "sse2" builds the GCC-vector path for
    baseline x86-64 (128-bit vectors: 4 floats, 2 doubles), the other widths of its scans."""
    if march != "native" and platform.machine() not in {"x86_64", "AMD64"}:
        pytest.skip("the sse2 variant targets x86-64")
    if path == 2 and not _cpu_has_avx512():
        pytest.skip("this CPU has no AVX-512 (F, BW, VL)")
    cxx = os.environ.get("CXX", "c++")
    if path == 1 and "clang" in subprocess.run([cxx, "--version"], capture_output=True,
                                               text=True).stdout:
        pytest.skip("the GCC vector path needs g++ (__builtin_shuffle)")
    exe = driver_source / f"driver{path}-{march}"
    subprocess.run([cxx, "-std=c++17", "-O2", f"-march={march}", f"-DRLGAUGE_GAE_PATH={path}",
                    f"-I{gae_native.CSRC}", str(driver_source / "driver.cpp"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)
    got_path, err32, err64 = subprocess.run([str(exe)], capture_output=True, text=True,
                                            check=True, timeout=60).stdout.split()
    assert int(got_path) == path
    # relative to 1 + |x|: float32 rounding over ≤ 1000 steps of a contraction, float64 ~1e-15
    assert float(err32) < 1e-5, err32
    assert float(err64) < 1e-12, err64


# --- drop-in: torchrl's semantics ----------------------------------------------------------


def test_return_types_shapes_and_dtypes():
    for dtype in (torch.float32, torch.float64):
        v, nv, r, d, term = inputs(1, (4, 20, 1), dtype=dtype)
        out = gae(0.99, 0.95, v, nv, r, d, term)
        ref = generalized_advantage_estimate(0.99, 0.95, v, nv, r, d, term)
        assert isinstance(out, tuple) and len(out) == 2
        assert [(x.shape, x.dtype, x.device) for x in out] == \
               [(x.shape, x.dtype, x.device) for x in ref]
        ret = td_lambda_return(0.99, 0.95, nv, r, d, term)
        assert isinstance(ret, torch.Tensor) and ret.shape == v.shape and ret.dtype == dtype


def test_terminated_defaults_to_done():
    v, nv, r, d, _ = inputs(2, (3, 25, 1))
    assert_close(gae(0.9, 0.8, v, nv, r, d)[0], gae(0.9, 0.8, v, nv, r, d, d.clone())[0], 0.0)
    assert_close(td_lambda_return(0.9, 0.8, nv, r, d), td_lambda_return(0.9, 0.8, nv, r, d, d),
                 0.0)


def test_bad_shapes_raise_like_torchrl():
    v, nv, r, d, term = inputs(3, (2, 10, 1))
    with pytest.raises(RuntimeError, match="must share a unique shape"):
        gae(0.9, 0.8, v, nv[:, :5], r, d, term)
    with pytest.raises(RuntimeError, match="must share a unique shape"):
        td_lambda_return(0.9, 0.8, nv, r, d[:1], term)
    with pytest.raises(RuntimeError, match="out of range"):
        gae(0.9, 0.8, v, nv, r, d, term, time_dim=3)


def test_integer_flags_count_as_bool():
    v, nv, r, d, term = inputs(4, (2, 30, 1))
    want = gae(0.9, 0.8, v, nv, r, d, term)[0]
    assert_close(gae(0.9, 0.8, v, nv, r, d.to(torch.uint8), term.to(torch.int64))[0], want, 0.0)


def test_rolling_gamma_false_is_torchrl_s():
    _, nv, r, d, term = inputs(5, (2, 12, 1), dtype=F64)
    gamma = torch.linspace(0.5, 1.0, 12, dtype=F64).view(1, 12, 1).expand(2, 12, 1)
    got = td_lambda_return(gamma, 0.75, nv, r, d, term, False)
    want = td_lambda_return_estimate(gamma, 0.75, nv, r, d, term, False)
    assert_close(got, want, 0.0, "rolling_gamma=False")
    # and it is a different quantity from the rolling one (γ_k for the whole future of k)
    assert (got - td_lambda_return(gamma, 0.75, nv, r, d, term)).abs().max() > 1e-3


DYADIC = st.integers(0, 64).map(lambda k: k / 64)  # exact in float32: torchrl's float32 γ too


@st.composite
def drop_in_cases(draw):
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    T = draw(st.integers(1, 40))
    pos = draw(st.integers(0, len(batch)))
    shape = (*batch[:pos], T, *batch[pos:], draw(st.integers(1, 2)))
    time_dim = pos if draw(st.booleans()) else pos - len(shape)
    dtype = draw(st.sampled_from([torch.float32, F64]))
    p_term, p_trunc = draw(st.sampled_from([0.0, 0.05, 0.3])), draw(st.sampled_from([0.0, 0.3]))
    data = inputs(draw(st.integers(0, 2**31 - 1)), shape, dtype=dtype, p_term=p_term,
                  p_trunc=p_trunc)

    def coefficient():
        kind = draw(st.sampled_from(["float", "0-d tensor", "per-step"]))
        if kind == "float":
            return draw(DYADIC)
        if kind == "0-d tensor":
            return torch.tensor(draw(DYADIC), dtype=dtype)
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        return (torch.randint(0, 65, shape, generator=g) / 64).to(dtype)

    terminated = data[4] if draw(st.booleans()) else None
    return data[:4] + (terminated,), coefficient(), coefficient(), time_dim


def torchrl_tolerance(data, dtype) -> float:
    T_max = max(data[0].shape)
    scale = sum(x.abs().max().item() for x in data[:3])
    # float64: order of summation only; float32: both sides round, over ≤ 40 steps
    return (1e-12 if dtype == F64 else 2e-6) * scale * T_max


@pytest.mark.parametrize("which", ["dispatch", "scan"])
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=drop_in_cases())
def test_property_gae_agrees_with_torchrl(which, case):
    (v, nv, r, d, term), gamma, lmbda, time_dim = case
    fn = gae if which == "dispatch" else gae_scan
    adv, target = fn(gamma, lmbda, v, nv, r, d, term, time_dim=time_dim)
    ref_adv, ref_target = generalized_advantage_estimate(gamma, lmbda, v, nv, r, d, term,
                                                         time_dim=time_dim)
    atol = torchrl_tolerance((v, nv, r), v.dtype)
    assert adv.dtype == ref_adv.dtype and target.dtype == ref_target.dtype
    assert_close(adv, ref_adv, atol, "advantage")
    assert_close(target, ref_target, atol, "value target")


@pytest.mark.parametrize("which", ["dispatch", "scan"])
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=drop_in_cases())
def test_property_td_lambda_agrees_with_torchrl(which, case):
    (_, nv, r, d, term), gamma, lmbda, time_dim = case
    fn = td_lambda_return if which == "dispatch" else td_lambda_return_scan
    got = fn(gamma, lmbda, nv, r, d, term, time_dim=time_dim)
    want = td_lambda_return_estimate(gamma, lmbda, nv, r, d, term, time_dim=time_dim)
    assert got.dtype == want.dtype
    assert_close(got, want, torchrl_tolerance((nv, r, r), nv.dtype), "td(λ)")


# --- the native kernel's edge cases against the independent torch scan -----------------------

LAYOUTS = [  # (shape, time_dim): rows shorter than, equal to, around one vector; I > 1; odd rows
    ((1, 1, 1), -2), ((3, 2, 1), -2), ((3, 15, 1), -2), ((3, 16, 1), -2), ((3, 17, 1), -2),
    ((5, 33, 1), -2), ((7, 101, 1), -2), ((2, 1000, 1), -2), ((4, 37, 3), -2),
    ((50, 6), 0), ((9, 2, 3, 1), 0), ((2, 64, 5, 1), 1), ((1000,), -1), ((3, 0, 1), -2),
]


@NATIVE
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("shape", "time_dim"), LAYOUTS, ids=[str(s) for s, _ in LAYOUTS])
def test_native_matches_scan_on_awkward_layouts(shape, time_dim, dtype):
    assert estimators.native_available()
    v, nv, r, d, term = inputs(6, shape, dtype=dtype)
    gamma = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    for g in (0.99, gamma):
        for native, scan in [(gae(g, 0.95, v, nv, r, d, term, time_dim=time_dim),
                              gae_scan(g, 0.95, v, nv, r, d, term, time_dim=time_dim)),
                             (td_lambda_return(g, 0.95, nv, r, d, term, time_dim=time_dim),
                              td_lambda_return_scan(g, 0.95, nv, r, d, term,
                                                    time_dim=time_dim))]:
            for a, b in zip(native if isinstance(native, tuple) else (native,),
                            scan if isinstance(scan, tuple) else (scan,), strict=True):
                assert a.dtype == dtype and a.shape == torch.Size(shape)
                assert_close(a, b, atol * (1 + b.abs().max().item() if b.numel() else 1),
                             f"{shape} γ={'tensor' if g is gamma else g}")


@NATIVE
def test_native_handles_non_contiguous_and_offset_inputs():
    v, nv, r, d, term = inputs(7, (40, 6, 1))  # [T, B, 1] seen as [B, T, 1]: strided
    args = [x.transpose(0, 1) for x in (v, nv, r, d, term)]
    assert not args[0].is_contiguous()
    want = gae_scan(0.9, 0.8, *args)[0]
    assert_close(gae(0.9, 0.8, *args)[0], want, 1e-4, "transposed")
    sliced = [x[:, 1:] for x in args]  # a storage offset: misaligned rows
    assert_close(gae(0.9, 0.8, *sliced)[0], gae_scan(0.9, 0.8, *sliced)[0], 1e-4, "sliced")
    expanded = [x[:1].expand(5, 6, 1).transpose(0, 1) for x in (v, nv, r, d, term)]
    assert_close(gae(0.9, 0.8, *expanded)[0], gae_scan(0.9, 0.8, *expanded)[0], 1e-4,
                 "expanded")


def test_large_batch_matches_torchrl_loop_and_oracle():
    v, nv, r, d, term = inputs(8, (64, 300, 1), p_term=0.005, p_trunc=0.005, scale=1.0)
    ref = generalized_advantage_estimate(0.99, 0.95, v, nv, r, d, term)[0]
    got = gae(0.99, 0.95, v, nv, r, d, term)[0]
    assert_close(got, ref, 1e-4, "vs torchrl loop")
    # float32 against the float64 oracle on a few rows: at least as accurate as torchrl's loop
    rows = [x[:4] for x in (v, nv, r, d, term)]
    exact = oracle_gae(0.99, 0.95, *rows)[0]
    err = (got[:4].double() - exact).abs().max().item()
    assert err <= 2 * (ref[:4].double() - exact).abs().max().item() + 1e-6, err
    # the same for TD(λ)
    ref = td_lambda_return_estimate(0.99, 0.95, nv, r, d, term)
    got = td_lambda_return(0.99, 0.95, nv, r, d, term)
    assert_close(got, ref, 1e-4, "td(λ) vs torchrl loop")
    exact = oracle_td_lambda_return(0.99, 0.95, *rows[1:])
    err = (got[:4].double() - exact).abs().max().item()
    assert err <= 2 * (ref[:4].double() - exact).abs().max().item() + 1e-6, err


# --- autograd and devices ----------------------------------------------------------------


def test_gradients_flow_and_match_torchrl():
    v, nv, r, d, term = inputs(9, (2, 20, 1), dtype=F64)
    grads = {}
    for name, fn in [("rlgauge", gae), ("torchrl", generalized_advantage_estimate)]:
        leaves = [x.clone().requires_grad_() for x in (v, nv, r)]
        # dyadic γ, λ: torchrl rounds a float γ to float32 even for float64 inputs
        adv, target = fn(0.875, 0.75, *leaves, d, term)
        (adv.square().sum() + target.sum()).backward()
        grads[name] = [x.grad for x in leaves]
    for a, b in zip(grads["rlgauge"], grads["torchrl"], strict=True):
        assert_close(a, b, 1e-9, "gradient")


def test_device_results_match_cpu(device):
    v, nv, r, d, term = inputs(10, (4, 129, 1))
    cpu = gae(0.99, 0.95, v, nv, r, d, term)
    on = gae(0.99, 0.95, *(x.to(device) for x in (v, nv, r, d, term)))
    assert on[0].device.type == device.type
    # float32 on both sides, different summation order: within 1e-4 (values ≤ 10, γλ = 0.94)
    for a, b in zip(on, cpu, strict=True):
        assert_close(a.cpu(), b, 1e-3, str(device))
    td = td_lambda_return(torch.tensor(0.99, device=device), 0.95,
                          *(x.to(device) for x in (nv, r, d, term)))
    assert_close(td.cpu(), td_lambda_return(0.99, 0.95, nv, r, d, term), 1e-3, "td(λ)")
