"""rlgauge's GAE / TD(λ) kernels (``harness.estimators.gae`` / ``td_lambda_return``) against
torchrl's functions, each other, and the float64 oracle.

The closed-form checks live in tests/test_analytical.py (the kernels are in its ``IMPLS``);
here: drop-in agreement with torchrl 0.14.1 over random shapes, dtypes, done/terminated
patterns, tensor γ/λ and ``time_dim`` (hypothesis); the native kernel's SIMD edge cases (row
lengths around the vector width, misaligned rows, I > 1 layouts, non-contiguous inputs) against
the independent torch scan; each compiled code path of ``csrc/gae_kernel.h`` (scalar, GCC vectors,
AVX-512) built standalone; autograd; the build cache and the fallback when the build fails;
bad input rejected in Python before the native kernel is called; a build's self-test in a child
process, and the fallback when it fails or its child dies.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchrl.objectives.value.functional import (
    generalized_advantage_estimate,
    td_lambda_return_estimate,
)
from tritonkit import TRITON, gae_triton, td_lambda_return_triton, triton_test

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
    """The kernel is built, cached, self-tested and loaded here. Fails if the build breaks, if
    the compile time is not recorded, or if load() uses a build without a passing self-test
    verdict recorded next to it."""
    assert estimators.native_available(), gae_native.status().detail
    st_ = gae_native.status()
    assert st_.ok and st_.path is not None and st_.path.exists()
    # the compile time is recorded with the cached build: > 0 s, and a build is not instant
    assert st_.build_seconds is not None and st_.build_seconds > 1.0
    # and it was self-tested before use, the verdict recorded next to it
    assert st_.selftest is not None and st_.selftest.ok, st_.selftest
    assert (st_.path.parent / gae_native.SELFTEST_FILE).exists()


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


# --- a build is used only after its self-test in a child process has passed ---------------

# A stand-in for the compiled module, loaded by the self-test's child from a .py file: correct
# results (the torch scan) except where MODE says otherwise. "segfault" and "abort" die on the
# bad-shape call, like a build whose C++ exceptions do not cross the extension boundary (the
# bug report: torch 2.11+cu130, another compiler); "silent" returns from it without raising;
# "wrong" gets the advantage wrong by 1.
FAKE_NATIVE = """
import os, signal
from harness.estimators import gae_scan, td_lambda_return_scan

MODE = {mode!r}


def _bad_shapes(*xs):
    if all(x.shape == xs[0].shape for x in xs):
        return False
    if MODE == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if MODE == "abort":
        os.abort()
    if MODE == "silent":
        return True
    raise RuntimeError("All input tensors (value, reward and done states) must share a unique "
                       "shape")


def gae(gamma, lmbda, gamma_t, lmbda_t, v, nv, r, done, terminated, time_dim):
    if _bad_shapes(v, nv, r, done, terminated):
        return v, v
    adv, target = gae_scan(gamma if gamma_t is None else gamma_t,
                           lmbda if lmbda_t is None else lmbda_t, v, nv, r, done, terminated,
                           time_dim=time_dim)
    return (adv + 1 if MODE == "wrong" else adv), target


def td_lambda(gamma, lmbda, gamma_t, lmbda_t, nv, r, done, terminated, time_dim):
    if _bad_shapes(nv, r, done, terminated):
        return nv
    return td_lambda_return_scan(gamma if gamma_t is None else gamma_t,
                                 lmbda if lmbda_t is None else lmbda_t, nv, r, done, terminated,
                                 time_dim=time_dim)
"""


def fake_native(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"fake_native_{mode}.py"
    path.write_text(FAKE_NATIVE.format(mode=mode))
    return path


@pytest.fixture
def fresh_native_state(monkeypatch, tmp_path):
    """An empty cache (``RLGAUGE_CACHE_DIR``) and no load() outcome yet in this process;
    monkeypatch puts the module-level state back afterwards, so other tests keep the real
    kernel."""
    monkeypatch.setenv("RLGAUGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(gae_native.ENV_SWITCH, raising=False)
    monkeypatch.setattr(gae_native, "_status", None)
    monkeypatch.setattr(gae_native, "_module", None)
    monkeypatch.setattr(estimators, "_native", None)
    return monkeypatch


@pytest.mark.parametrize(("mode", "reason"), [
    ("segfault", "child died with SIGSEGV during the bad-shape call"),
    ("silent", "the bad-shape call did not raise"),
    ("wrong", "gae float32 float gamma [3, 37, 1] differs from the torch scan by 1 "),
])
def test_selftest_rejects_a_broken_build(mode, reason, tmp_path):
    """The self-test's verdict on builds that die on bad input, let it pass, or compute wrong
    results. Fails if the self-test stops making the bad-shape call, stops checking that it
    raises, stops comparing results with the scan, or stops naming the stage a child died in
    (or if ``gae_native.selftest`` is removed: today's code has none)."""
    verdict = gae_native.selftest(fake_native(tmp_path, mode))
    assert not verdict.ok
    assert verdict.detail.startswith(reason), verdict.detail


def test_selftest_passes_a_correct_module(tmp_path):
    """The control for the test above: a module that is right and raises on bad shapes
    passes. Fails if the self-test rejects correct modules (then no build would ever be used)."""
    verdict = gae_native.selftest(fake_native(tmp_path, "good"))
    assert verdict.ok and verdict.detail == "passed", verdict.detail


@NATIVE
def test_selftest_passes_the_real_build():
    """The compiled kernel passes its own self-test, here. Fails if the self-test's child
    breaks (an import, a comparison, a tolerance) while an old passing verdict hides it in the
    cache."""
    assert estimators.native_available(), gae_native.status().detail
    verdict = gae_native.selftest(gae_native.cached_path())
    assert verdict.ok, verdict.detail
    recorded = gae_native.recorded_selftest()
    assert recorded is not None and recorded.ok
    assert gae_native.status().selftest is not None and gae_native.status().selftest.ok


def test_build_failing_its_selftest_is_not_used(fresh_native_state, tmp_path):
    """A cached build whose self-test child dies (SIGSEGV on the bad-shape call) is never
    imported: load() returns None with one RuntimeWarning, status() names the reason, the
    verdict is recorded next to the build and reused by the next process (no second child),
    and gae() gives the right answer through the scan.

    Fails if load() imports a cached build without self-testing it (today's code), if it uses
    a build whose verdict failed, if it warns more than once, or if the verdict is not
    recorded (the "next process" would run the self-test again)."""
    monkeypatch = fresh_native_state
    so = gae_native.cached_path()
    so.parent.mkdir(parents=True)
    so.write_bytes(b"\x7fELF stand-in for a build")  # the cache is warm: no compile

    def must_not_build(dest, *, verbose=False):
        raise AssertionError("a cached build was rebuilt")

    def must_not_import(path):
        raise AssertionError(f"{path} was imported before its self-test passed")

    real_selftest = getattr(gae_native, "selftest", None)  # None in today's code
    tested = []

    def selftest_of_a_crashing_build(path, **kw):
        tested.append(path)
        return real_selftest(fake_native(tmp_path, "segfault"), **kw)

    monkeypatch.setattr(gae_native, "build", must_not_build)
    monkeypatch.setattr(gae_native, "_import_from", must_not_import)
    # raising=False: today's code has no selftest() (and imports the build untested)
    monkeypatch.setattr(gae_native, "selftest", selftest_of_a_crashing_build, raising=False)
    reason = "self-test failed: child died with SIGSEGV during the bad-shape call"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not estimators.native_available()
        assert gae_native.load() is None
        v, nv, r, d, term = inputs(11, (2, 9, 1))
        adv, _ = gae(0.9, 0.8, v, nv, r, d, term)
    assert [str(w.message) for w in caught if w.category is RuntimeWarning] == [
        f"rlgauge GAE: the native CPU kernel is unavailable ({reason}); using the pure-torch "
        "parallel scan, which is slower"]
    assert tested == [so]
    st_ = gae_native.status()
    assert not st_.ok and st_.detail == reason
    assert st_.selftest is not None and not st_.selftest.ok
    assert_close(adv, oracle_gae(0.9, 0.8, v, nv, r, d, term)[0], 1e-4, "fallback")
    recorded = gae_native.recorded_selftest(so)
    assert recorded is not None and not recorded.ok and reason.endswith(recorded.detail)
    assert (so.parent / gae_native.SELFTEST_FILE).exists()

    # the next process reads the verdict: no child, still not imported, one warning again
    monkeypatch.setattr(gae_native, "_status", None)
    monkeypatch.setattr(gae_native, "_module", None)
    monkeypatch.setattr(estimators, "_native", None)
    with pytest.warns(RuntimeWarning, match="child died with SIGSEGV during the bad-shape call"):
        assert gae_native.load() is None
    assert tested == [so] and gae_native.status().detail == reason

    # a rebuild (another .so at the same key) is not judged by the old verdict
    so.write_bytes(b"\x7fELF another stand-in, another size")
    assert gae_native.recorded_selftest(so) is None


def test_disabled_native_kernel_skips_the_selftest(fresh_native_state):
    """``RLGAUGE_GAE_NATIVE=0``: no build, no self-test, no warning. Fails if the switch stops
    short-circuiting load()."""
    monkeypatch = fresh_native_state
    monkeypatch.setenv(gae_native.ENV_SWITCH, "0")

    def boom(*a, **k):
        raise AssertionError("called with the native kernel disabled")

    monkeypatch.setattr(gae_native, "build", boom)
    monkeypatch.setattr(gae_native, "selftest", boom, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert gae_native.load() is None
    assert gae_native.status().detail == f"disabled by {gae_native.ENV_SWITCH}=0"


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
    """Fails if a shape or ``time_dim`` error stops being a RuntimeError (torchrl's type), on
    whichever path runs here (the native kernel where a compiler is, else the scan)."""
    v, nv, r, d, term = inputs(3, (2, 10, 1))
    with pytest.raises(RuntimeError, match="must share a unique shape"):
        gae(0.9, 0.8, v, nv[:, :5], r, d, term)
    with pytest.raises(RuntimeError, match="must share a unique shape"):
        td_lambda_return(0.9, 0.8, nv, r, d[:1], term)
    with pytest.raises(RuntimeError, match="out of range"):
        gae(0.9, 0.8, v, nv, r, d, term, time_dim=3)


class NativeCalled(Exception):
    """Raised by the stand-in native module: the kernel was called. Not a RuntimeError, so a
    test expecting the Python check's RuntimeError cannot mistake one for the other."""


class RecordingNative:
    """Stands in for the compiled module in ``estimators._native``: records each call and
    raises ``NativeCalled`` (a real kernel might not survive the bad input)."""

    def __init__(self):
        self.calls = []

    def gae(self, *args):
        self.calls.append(("gae", args))
        raise NativeCalled("the native gae was called")

    def td_lambda(self, *args):
        self.calls.append(("td_lambda", args))
        raise NativeCalled("the native td_lambda was called")


@pytest.fixture
def recording_native(monkeypatch):
    fake = RecordingNative()
    monkeypatch.setattr(estimators, "_native", fake)
    return fake


def _bad_input_cases():
    """(id, fn, args, kwargs, message regex) for bad calls of gae / td_lambda_return."""
    v, nv, r, d, term = inputs(12, (2, 10, 1))
    shape = r"must share a unique shape; got \[2, 10, 1\] and "
    scalar = [torch.tensor(1.0)] * 3 + [torch.tensor(False)] * 2
    meta = torch.device("meta")
    return [
        ("gae-values", gae, (v, nv[:, :5], r, d, term), {}, shape + r"\[2, 5, 1\]$"),
        ("gae-done", gae, (v, nv, r, d[:1], term), {}, shape + r"\[1, 10, 1\]$"),
        ("gae-terminated", gae, (v, nv, r, d, term[:, :, :0]), {}, shape + r"\[2, 10, 0\]$"),
        ("td-reward", td_lambda_return, (nv, r[:, 1:], d, term), {}, shape + r"\[2, 9, 1\]$"),
        ("td-terminated", td_lambda_return, (nv, r, d, term[:1]), {}, shape + r"\[1, 10, 1\]$"),
        ("gae-time_dim", gae, (v, nv, r, d, term), {"time_dim": 3},
         r"^rlgauge gae: time_dim=3 is out of range for shape \[2, 10, 1\]$"),
        ("td-time_dim", td_lambda_return, (nv, r, d, term), {"time_dim": -4},
         r"^rlgauge gae: time_dim=-4 is out of range for shape \[2, 10, 1\]$"),
        ("gae-0d", gae, tuple(scalar), {},
         r"^rlgauge gae: inputs must have a time dimension; got a 0-d tensor$"),
        ("td-0d", td_lambda_return, tuple(scalar[1:]), {},
         r"^rlgauge gae: inputs must have a time dimension; got a 0-d tensor$"),
        # not checked by gae.cpp before this change: the CPU kernel would read device memory
        ("gae-done-device", gae, (v, nv, r, d.to(meta), term), {},
         r"done/terminated must be on the values' device \(cpu\), got meta"),
        ("gae-value-device", gae, (v, nv.to(meta), r, d, term), {},
         r"values and rewards must share one dtype and device"),
        ("td-sparse", td_lambda_return, (nv.to_sparse(), r.to_sparse(), d, term), {},
         r"dense tensors only"),
    ]


BAD_INPUT_CASES = _bad_input_cases()


@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize(("fn", "args", "kwargs", "message"),
                         [case[1:] for case in BAD_INPUT_CASES],
                         ids=[case[0] for case in BAD_INPUT_CASES])
def test_bad_input_is_rejected_before_the_native_kernel(recording_native, path, fn, args,
                                                        kwargs, message):
    """Bad shapes, ``time_dim``, 0-d inputs, devices and layouts raise RuntimeError with
    gae.cpp's (torchrl-like) messages in Python, and the native module is never called, on the
    fast path (float γ, λ: ``_plain_cpu_call``) and the general path (a tensor γ:
    ``_native_for`` and ``_check_native_inputs``). A C++ exception that does not cross the
    extension boundary (the bug report's segfault) can then not be triggered by bad input.

    Fails if the Python shape / time_dim / 0-d / device / layout checks are removed from
    ``_plain_cpu_call`` (the call reaches the kernel: NativeCalled) or from
    ``_check_native_inputs`` (the general path), or if their messages change."""
    gamma = 0.9 if path == "fast" else torch.tensor(0.9)
    with pytest.raises(RuntimeError, match=message):
        fn(gamma, 0.8, *args, **kwargs)
    assert recording_native.calls == []


@pytest.mark.parametrize("path", ["fast", "general"])
def test_good_input_reaches_the_native_kernel(recording_native, path):
    """The control for the test above: with good input both paths call the kernel (so that
    test cannot pass by never calling it). Fails if the fast or general path stops dispatching
    to the native module."""
    v, nv, r, d, term = inputs(13, (2, 10, 1))
    gamma = 0.9 if path == "fast" else torch.tensor(0.9)
    with pytest.raises(NativeCalled):
        gae(gamma, 0.8, v, nv, r, d, term)
    with pytest.raises(NativeCalled):
        td_lambda_return(gamma, 0.8, nv, r, d, term, time_dim=1)
    assert [name for name, _ in recording_native.calls] == ["gae", "td_lambda"]


@NATIVE
@pytest.mark.parametrize(("fn", "args", "kwargs", "message"),
                         [case[1:] for case in BAD_INPUT_CASES if "sparse" not in case[0]],
                         ids=[case[0] for case in BAD_INPUT_CASES if "sparse" not in case[0]])
def test_python_checks_say_what_the_kernel_says(fn, args, kwargs, message):
    """The Python checks raise gae.cpp's messages word for word: the same bad call straight
    into the compiled module (its TORCH_CHECKs, the second line of defence) raises the same
    text. Fails if a message drifts on either side, or if a TORCH_CHECK is removed from
    gae.cpp (the direct call then does not raise)."""
    native = gae_native.load()
    assert native is not None, gae_native.status().detail
    with pytest.raises(RuntimeError, match=message) as in_python:
        fn(0.9, 0.8, *args, **kwargs)
    time_dim = kwargs.get("time_dim", -2)
    with pytest.raises(RuntimeError) as in_cpp:
        if fn is gae:
            native.gae(0.9, 0.8, None, None, *args, time_dim)
        else:
            native.td_lambda(0.9, 0.8, None, None, *args, time_dim)
    assert str(in_python.value) == str(in_cpp.value)


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


WHICH = ["dispatch", "scan", pytest.param("triton", marks=TRITON)]  # + the Triton kernel
GAE_FNS = {"dispatch": gae, "scan": gae_scan, "triton": gae_triton}
TD_FNS = {"dispatch": td_lambda_return, "scan": td_lambda_return_scan,
          "triton": td_lambda_return_triton}


@pytest.mark.parametrize("which", WHICH)
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=drop_in_cases())
def test_property_gae_agrees_with_torchrl(which, case):
    (v, nv, r, d, term), gamma, lmbda, time_dim = case
    fn = GAE_FNS[which]
    adv, target = fn(gamma, lmbda, v, nv, r, d, term, time_dim=time_dim)
    ref_adv, ref_target = generalized_advantage_estimate(gamma, lmbda, v, nv, r, d, term,
                                                         time_dim=time_dim)
    atol = torchrl_tolerance((v, nv, r), v.dtype)
    assert adv.dtype == ref_adv.dtype and target.dtype == ref_target.dtype
    assert_close(adv, ref_adv, atol, "advantage")
    assert_close(target, ref_target, atol, "value target")


@pytest.mark.parametrize("which", WHICH)
@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(case=drop_in_cases())
def test_property_td_lambda_agrees_with_torchrl(which, case):
    (_, nv, r, d, term), gamma, lmbda, time_dim = case
    fn = TD_FNS[which]
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
    _matches_scan(gae, td_lambda_return, shape, time_dim, dtype)


def _matches_scan(gae_fn, td_lambda_fn, shape, time_dim, dtype):
    """``gae_fn`` / ``td_lambda_fn`` (a kernel's) against the independent torch scan on random
    inputs of ``shape``, with a float γ and a per-step one."""
    v, nv, r, d, term = inputs(6, shape, dtype=dtype)
    gamma = torch.rand(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    for g in (0.99, gamma):
        for got, scan in [(gae_fn(g, 0.95, v, nv, r, d, term, time_dim=time_dim),
                           gae_scan(g, 0.95, v, nv, r, d, term, time_dim=time_dim)),
                          (td_lambda_fn(g, 0.95, nv, r, d, term, time_dim=time_dim),
                           td_lambda_return_scan(g, 0.95, nv, r, d, term, time_dim=time_dim))]:
            for a, b in zip(got if isinstance(got, tuple) else (got,),
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


def _placed(x: torch.Tensor, offset: int, keep: list) -> torch.Tensor:
    """A copy of ``x`` whose data starts ``offset`` bytes past a 4 KiB boundary."""
    nbytes = x.numel() * x.element_size()
    buf = torch.empty(nbytes + 2 * 4096, dtype=torch.uint8)
    keep.append(buf)
    start = (offset - buf.data_ptr()) % 4096
    out = buf[start:start + nbytes].view(x.dtype).view(x.shape)
    out.copy_(x)
    return out


def _gap(a: torch.Tensor, b: torch.Tensor) -> int:
    d = (a.data_ptr() - b.data_ptr()) % 4096
    return min(d, 4096 - d)


@NATIVE
@pytest.mark.parametrize("offset", range(0, 4096, 64))
def test_native_outputs_are_placed_clear_of_their_inputs_modulo_4k(offset):
    """Pooled outputs (>= 64 KiB) start >= 512 bytes from every input modulo 4 KiB, wherever the
    inputs lie: an output 64-128 bytes before an input modulo 4 KiB (4K aliasing) made TD(λ) at
    64x1000 up to a third slower (harness/csrc/gae.cpp). The values are unchanged by it."""
    if not estimators.native_available():
        pytest.skip("the native kernel is unavailable here")
    keep: list = []
    v, nv, r, d, term = inputs(3, (64, 1000, 1))
    placed = [_placed(x, offset, keep) for x in (v, nv, r, d, term)]
    adv, target = gae(0.99, 0.95, *placed)
    ret = td_lambda_return(0.99, 0.95, *placed[1:])
    for out in (adv, target, ret):
        assert out.numel() * out.element_size() >= 1 << 16  # the pooled path
        assert min(_gap(out, x) for x in placed) >= 512, offset
    assert _gap(adv, target) >= 512
    assert_close(adv, gae_scan(0.99, 0.95, *placed)[0], 1e-4, "advantage")
    assert_close(ret, td_lambda_return_scan(0.99, 0.95, *placed[1:]), 1e-4, "td(λ)")


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


# --- the Triton kernel (harness/gae_triton.py): CUDA; here under its interpreter on CPU ----------

TRITON_LAYOUTS = [*LAYOUTS, ((3, 1024, 1), -2), ((3, 1025, 1), -2),  # one chunk, one step over
                  ((2, 2500, 1), -2), ((2, 1100, 2), 1)]  # three chunks: the carry between them


@triton_test
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize(("shape", "time_dim"), TRITON_LAYOUTS,
                         ids=[str(s) for s, _ in TRITON_LAYOUTS])
def test_triton_matches_scan_on_awkward_layouts(shape, time_dim, dtype):
    """The Triton kernel against the independent torch scan: rows shorter than a chunk, one
    chunk exactly, chunks with a carry, I > 1, time first/last, empty; float and per-step γ."""
    _matches_scan(gae_triton, td_lambda_return_triton, shape, time_dim, dtype)


@triton_test
def test_triton_handles_non_contiguous_inputs_and_integer_flags():
    v, nv, r, d, term = inputs(7, (40, 6, 1))  # [T, B, 1] seen as [B, T, 1]: strided
    args = [x.transpose(0, 1) for x in (v, nv, r, d, term)]
    assert not args[0].is_contiguous()
    for case, xs in [("transposed", args), ("sliced", [x[:, 1:] for x in args]),
                     ("expanded", [x[:1].expand(5, 6, 1).transpose(0, 1)
                                   for x in (v, nv, r, d, term)])]:
        want = gae_scan(0.9, 0.8, *xs)
        for a, b in zip(gae_triton(0.9, 0.8, *xs), want, strict=True):
            assert_close(a, b, 1e-4, case)
    ints = (*args[:3], args[3].to(torch.uint8), args[4].to(torch.int64))
    assert_close(td_lambda_return_triton(0.9, 0.8, *ints[1:]),
                 td_lambda_return_scan(0.9, 0.8, *args[1:]), 1e-4, "integer flags")


@triton_test
def test_triton_large_batch_matches_torchrl_loop_and_oracle():
    v, nv, r, d, term = inputs(8, (64, 300, 1), p_term=0.005, p_trunc=0.005, scale=1.0)
    rows = [x[:4] for x in (v, nv, r, d, term)]
    for got, ref, exact in [
            (gae_triton(0.99, 0.95, v, nv, r, d, term)[0],
             generalized_advantage_estimate(0.99, 0.95, v, nv, r, d, term)[0],
             oracle_gae(0.99, 0.95, *rows)[0]),
            (td_lambda_return_triton(0.99, 0.95, nv, r, d, term),
             td_lambda_return_estimate(0.99, 0.95, nv, r, d, term),
             oracle_td_lambda_return(0.99, 0.95, *rows[1:]))]:
        assert_close(got, ref, 1e-4, "vs torchrl loop")
        # float32 against the float64 oracle: at least as accurate as torchrl's loop
        err = (got[:4].double() - exact).abs().max().item()
        assert err <= 2 * (ref[:4].double() - exact).abs().max().item() + 1e-6, err


class KernelLaunched(Exception):
    """Raised by the stand-in for the Triton kernel: it was launched."""


@pytest.fixture
def no_triton_launch(monkeypatch):
    from harness import gae_triton as module

    class Launch:
        def __getitem__(self, grid):
            raise KernelLaunched(grid)

    monkeypatch.setattr(module, "_rlgauge_gae_kernel", Launch())
    return module


def _triton_bad_input_cases():
    v, nv, r, d, term = inputs(12, (2, 10, 1))
    meta = torch.device("meta")
    cases = [(name, fn, args, kwargs, message) for name, fn, args, kwargs, message
             in BAD_INPUT_CASES if "device" not in name]
    return [*cases,
            ("gae-done-device", gae, (v, nv, r, d.to(meta), term), {},
             r"must be on cpu, got meta"),
            ("gae-value-device", gae, (v, nv.to(meta), r, d, term), {},
             r"must be on cpu, got meta"),
            ("gae-int-values", gae, (v.int(), nv.int(), r.int(), d, term), {},
             r"float32 or float64 values only"),
            ("td-mixed-dtypes", td_lambda_return, (nv.double(), r, d, term), {},
             r"values and rewards must share one dtype")]


TRITON_BAD_INPUT_CASES = _triton_bad_input_cases()


@triton_test
@pytest.mark.parametrize(("fn", "args", "kwargs", "message"),
                         [case[1:] for case in TRITON_BAD_INPUT_CASES],
                         ids=[case[0] for case in TRITON_BAD_INPUT_CASES])
def test_bad_input_is_rejected_before_the_triton_kernel(no_triton_launch, fn, args, kwargs,
                                                        message):
    """``gae_triton`` / ``td_lambda_return_triton`` check shapes, ``time_dim``, 0-d inputs,
    dtypes, devices and layouts in Python (``check_inputs``) and never launch the kernel on
    them. Fails if a check is removed (KernelLaunched) or its message changes."""
    kernel = no_triton_launch.gae_triton if fn is gae else no_triton_launch.td_lambda_return_triton
    with pytest.raises(RuntimeError, match=message):
        kernel(0.9, 0.8, *args, **kwargs)


@triton_test
def test_good_input_launches_the_triton_kernel(no_triton_launch):
    """The control for the test above."""
    v, nv, r, d, term = inputs(13, (2, 10, 1))
    with pytest.raises(KernelLaunched):
        no_triton_launch.gae_triton(torch.tensor(0.9), 0.8, v, nv, r, d, term)
    with pytest.raises(KernelLaunched):
        no_triton_launch.td_lambda_return_triton(0.9, 0.8, nv, r, d, term, time_dim=1)


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """``harness.estimators`` dispatching CPU tensors to the Triton kernel as it does CUDA ones
    (the native kernel off), with the calls recorded: the dispatch rule checked without a GPU."""
    from harness import gae_triton as module

    if not module.INTERPRET:
        pytest.skip("CPU tensors reach the Triton kernel only under its interpreter")
    calls = []
    for name in ("gae_triton", "td_lambda_return_triton"):
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    monkeypatch.setattr(estimators, "_TRITON_DEVICES", ("cpu",))
    monkeypatch.setattr(estimators, "_native", False)
    monkeypatch.setattr(estimators, "_triton", None)
    monkeypatch.delenv("RLGAUGE_GAE_TRITON", raising=False)
    return calls


@triton_test
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
def test_dispatch_sends_plain_calls_to_triton(triton_on_cpu, dtype):
    """float32/float64 without autograd go to the Triton kernel, with its results; float16,
    mixed dtypes and inputs that require grad go to the scan. Fails if the dispatch rule
    (``estimators._triton_for``) changes."""
    v, nv, r, d, term = inputs(14, (3, 20, 1), dtype=dtype)
    adv, target = gae(0.9, 0.8, v, nv, r, d, term)
    td = td_lambda_return(torch.tensor(0.9), 0.8, nv, r, d, term)
    assert triton_on_cpu == ["gae_triton", "td_lambda_return_triton"]
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    assert_close(adv, gae_scan(0.9, 0.8, v, nv, r, d, term)[0], atol, "gae")
    assert_close(td, td_lambda_return_scan(torch.tensor(0.9), 0.8, nv, r, d, term), atol,
                 "td(λ)")
    triton_on_cpu.clear()
    gae(0.9, 0.8, v.half(), nv.half(), r.half(), d, term)
    td_lambda_return(0.9, 0.8, nv.float(), r.double(), d, term)
    leaf = v.clone().requires_grad_()
    adv = gae(0.9, 0.8, leaf, nv, r, d, term)[0]
    adv.sum().backward()
    assert leaf.grad is not None
    assert triton_on_cpu == []


@triton_test
def test_triton_switch_turns_it_off(triton_on_cpu, monkeypatch):
    monkeypatch.setenv("RLGAUGE_GAE_TRITON", "0")
    v, nv, r, d, term = inputs(15, (2, 9, 1))
    gae(0.9, 0.8, v, nv, r, d, term)
    assert triton_on_cpu == [] and not estimators.triton_available()
    assert estimators.triton_status() == "disabled by RLGAUGE_GAE_TRITON=0"


@triton_test
def test_kernel_gae_uses_the_triton_kernel(triton_on_cpu):
    """``KernelGAE`` (PPO's advantage="rlgauge") goes through the same dispatch: where the
    Triton kernel applies (CUDA; here the CPU under its interpreter) it runs, and writes what
    torchrl's ``GAE`` writes."""
    from tensordict.nn import TensorDictModule
    from torchrl.objectives.value import GAE

    from harness import probes
    from harness.gae_estimator import KernelGAE

    env = probes.make("constant-truncated", num_envs=3, seed=0, horizon=5)
    data = env.rollout(23, lambda td: td.set("action", torch.zeros(3, dtype=torch.int64)),
                       break_when_any_done=False)
    torch.manual_seed(0)
    net = TensorDictModule(torch.nn.LazyLinear(1), in_keys=["observation"],
                           out_keys=["state_value"])
    net(data.clone())  # materialise the lazy layer
    ours = KernelGAE(gamma=0.9, lmbda=0.8, value_network=net)(data.clone())
    assert triton_on_cpu == ["gae_triton"]
    theirs = GAE(gamma=0.9, lmbda=0.8, value_network=net, vectorized=False)(data.clone())
    for key in ("advantage", "value_target"):
        assert_close(ours[key], theirs[key], 1e-5, key)


def test_cuda_dispatches_to_triton(device, monkeypatch):
    """On CUDA, with triton installed, ``gae`` / ``td_lambda_return`` run the Triton kernel
    (compiled, not interpreted) and agree with the scan there. CUDA only."""
    if device.type != "cuda":
        pytest.skip("the Triton dispatch applies to CUDA tensors")
    if not estimators.triton_available():
        pytest.skip(f"no Triton kernel: {estimators.triton_status()}")
    from harness import gae_triton as module

    calls = []
    for name in ("gae_triton", "td_lambda_return_triton"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _r=real, _n=name, **k: (calls.append(_n),
                                                                            _r(*a, **k))[1])
    v, nv, r, d, term = (x.to(device) for x in inputs(16, (4, 3000, 1)))
    adv = gae(0.99, 0.95, v, nv, r, d, term)[0]
    td = td_lambda_return(0.99, 0.95, nv, r, d, term)
    assert calls == ["gae_triton", "td_lambda_return_triton"]
    assert_close(adv, gae_scan(0.99, 0.95, v, nv, r, d, term)[0], 1e-3, "gae")
    assert_close(td, td_lambda_return_scan(0.99, 0.95, nv, r, d, term), 1e-3, "td(λ)")


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
    """rlgauge's kernels on an accelerator (the torch scan) against the CPU (the native kernel
    where a compiler is). Only CUDA has something to compare: the CPU case would compare the CPU
    with itself, so it skips. Fails on CUDA if the scan there drifts from the CPU result."""
    if device.type == "cpu":
        pytest.skip("device parity: CPU against CPU compares nothing; this runs on CUDA only")
    v, nv, r, d, term = inputs(10, (4, 129, 1))
    cpu = gae(0.99, 0.95, v, nv, r, d, term)
    on = gae(0.99, 0.95, *(x.to(device) for x in (v, nv, r, d, term)))
    assert on[0].device.type == device.type
    # float32 on both sides, different summation orders (the native kernel's in-register scan,
    # the torch scan's log2(T) rounds): measured on the CPU, native against the torch scan on
    # these inputs (seeds 10-13): 0.5-1.1e-5, where |A| reaches 70-120 and a float32 ulp is
    # 7.6e-6 (values <= 10, γλ = 0.94); 1e-4 leaves ~10x room for CUDA's own rounding (FMA)
    for a, b in zip(on, cpu, strict=True):
        assert_close(a.cpu(), b, 1e-4, str(device))
    td = td_lambda_return(torch.tensor(0.99, device=device), 0.95,
                          *(x.to(device) for x in (nv, r, d, term)))
    assert_close(td.cpu(), td_lambda_return(0.99, 0.95, nv, r, d, term), 1e-4, "td(λ)")
