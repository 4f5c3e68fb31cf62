"""Build, cache and load rlgauge's fused CPU GAE / TD(λ) kernel (``harness/csrc/gae*.{cpp,h}``).

The kernel is a C++ torch extension compiled with ``torch.utils.cpp_extension`` on first use,
for this machine's CPU (``-O3 -march=native``: AVX-512 where the CPU has it, see
``csrc/gae_kernel.h``). Like torchrl's extension (``harness/torchrl_ext.py``) the build is cached
under ``$RLGAUGE_CACHE_DIR`` (default ``~/.cache/rlgauge``) in ``gae-native/<key>/``, the key
naming the torch build, its C++ ABI, the Python ABI, the CPU (model and instruction-set flags:
a ``-march=native`` binary is only safe on the CPU it was built for), the flags and a hash of
the sources; it is written to a temp file and renamed into place, under a file lock.

Costs (2-core Xeon VM with AVX-512, torch 2.13.0+cpu, g++ 12, other jobs on the box):

- cold build: 27-42 s over seven builds (``torch/extension.h`` dominates: the kernel header
  alone compiles in ~1 s, see tests/test_gae_kernel.py);
- cached: loading the ``.so`` takes 0.004-0.008 s, once per process;
- ``load()`` measures both into ``status()`` (the compile time is also written next to the
  cached build, ``build.json``); ``bench/bench_gae.py::KernelBuild`` tracks the cached load
  under asv. The compile time is information, not a gated cost (one build per torch, CPU and
  sources): ``describe_cache()`` reports it for ``python -m harness doctor``.

A build is trusted only after a SELF-TEST in a child process (``selftest()``: a fresh
interpreter, with a timeout) has passed: it imports the ``.so`` by path, compares ``gae`` and
``td_lambda`` on small random float32 and float64 inputs (dones, terminations, per-step γ and λ)
with the pure-torch scan, and makes a call with mismatched shapes that must raise RuntimeError.
A build whose C++ exceptions do not cross the extension boundary (seen with torch 2.11+cu130 and
another compiler: a TORCH_CHECK became a segfault) fails it by dying. The verdict is written
next to the cached build (``selftest.json``, with the ``.so``'s size and mtime, so a rebuild
is tested again), so only the first process after a build pays for the child (~2-5 s here);
``recorded_selftest()`` reads it without building or testing anything.

When the build fails (no compiler, no ninja, an unsupported platform) or the self-test fails
or its child dies, ``load()`` warns once (``RuntimeWarning``) and returns None, ``status()``
says why (e.g. "self-test failed: child died with SIGSEGV during the bad-shape call"), and
``harness.estimators`` falls back to its pure-torch parallel scan. A failed verdict stays
recorded: delete ``selftest.json`` (or the build's directory) to test (or build) again.
``RLGAUGE_GAE_NATIVE=0`` skips the native kernel altogether (no build, no warning).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from harness import atomic
from harness.torchrl_ext import SELFTEST_FILE, SelfTest, recorded_verdict, verdict_for

__all__ = ["SELFTEST_FILE", "SelfTest", "Status", "cached_path", "describe_cache", "enabled",
           "load", "recorded_build_seconds", "recorded_selftest", "selftest", "status"]

MODULE = "_rlgauge_gae"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("gae.cpp",)
HEADERS = ("gae_kernel.h",)
ENV_SWITCH = "RLGAUGE_GAE_NATIVE"
SELFTEST_TIMEOUT_S = 180.0  # the child imports torch (1-3 s here) and runs ~30 small calls


@dataclass(frozen=True)
class Status:
    """What ``load()`` found or did in this process."""

    ok: bool
    detail: str  # why not, or how it was obtained
    path: Path | None  # the cached .so
    build_seconds: float | None = None  # the compile time recorded when the cache was made
    load_seconds: float | None = None  # this process: loading (and building, if it did)
    selftest: SelfTest | None = None  # the build's self-test verdict (None: none was made)


_lock = threading.Lock()
_module = None
_status: Status | None = None


def enabled() -> bool:
    """False when ``RLGAUGE_GAE_NATIVE=0`` asks for the pure-torch path only."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in {"0", "false", "no", "off"}


def compile_flags() -> list[str]:
    if os.name == "nt":  # MSVC: no -march=native equivalent worth the trouble
        return ["/O2"]
    return ["-O3", "-march=native"]


def _cpu_fingerprint() -> str:
    """CPU model and instruction-set flags (Linux: /proc/cpuinfo), else platform's view."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return f"{platform.machine()}|{platform.processor()}"
    keep = [ln for ln in lines if ln.split(":")[0].strip() in {"model name", "flags", "Features",
                                                              "CPU part", "CPU implementer"}]
    return "\n".join(sorted(set(keep)))


def cache_key() -> str:
    """One build's directory name: torch build and ABI, Python ABI, CPU, flags, sources."""
    import torch

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode())
        h.update((CSRC / name).read_bytes())
    h.update(" ".join(compile_flags()).encode())
    h.update(_cpu_fingerprint().encode())
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 0))
    return (f"torch-{torch.__version__}-abi{abi}_{sys.implementation.cache_tag}-"
            f"{platform.machine()}_{h.hexdigest()[:16]}")


def cached_path() -> Path:
    from harness.torchrl_ext import cache_root

    return cache_root() / "gae-native" / cache_key() / f"{MODULE}.so"


def _import_from(path: Path):
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    spec = importlib.util.spec_from_loader(MODULE, loader, origin=str(path))
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def build(dest: Path, *, verbose: bool = False):
    """Compile the extension into ``dest`` (atomically); returns (module, seconds)."""
    import torch  # noqa: F401  (the extension links against the loaded torch)
    from torch.utils import cpp_extension

    flags = compile_flags()
    # torch finds ninja on PATH only; a venv's python run without activating the venv has the
    # pip-installed ninja next to it but not on PATH
    bindir = str(Path(sys.executable).parent)
    if shutil.which("ninja") is None and shutil.which("ninja", path=bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlgauge-gae-native-") as build_dir:
        # a failed compile raises RuntimeError (or OSError without a compiler / ninja)
        module = cpp_extension.load(
            name=MODULE, sources=[str(CSRC / s) for s in SOURCES], build_directory=build_dir,
            extra_cflags=flags, extra_include_paths=[str(CSRC)], verbose=verbose)
        seconds = time.perf_counter() - t0
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic.copy(Path(build_dir) / f"{MODULE}.so", dest)
    meta = {"build_seconds": round(seconds, 2), "flags": flags,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__}
    atomic.write_json(dest.with_name("build.json"), meta)
    return module, seconds


def recorded_build_seconds(path: Path | None = None) -> float | None:
    """The compile time written next to a cached build when it was made (None: unknown)."""
    meta = (path or cached_path()).with_name("build.json")
    try:
        return float(json.loads(meta.read_text())["build_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class SelfTestFailed(RuntimeError):
    """The build's self-test failed: the module is not loaded (``status().detail`` says why)."""


def load(*, verbose: bool = False):
    """The extension module, building it on first use; None (and one warning) if it cannot be
    built or its self-test fails.

    A build (new, or cached without a recorded verdict) is self-tested in a child process first,
    under the build's file lock; the module is imported here only once the verdict is a pass.
    Thread-safe; the outcome is remembered for the life of the process.
    """
    global _module, _status
    if _status is not None:
        return _module
    with _lock:
        if _status is not None:
            return _module
        if not enabled():
            _status = Status(False, f"disabled by {ENV_SWITCH}=0", None)
            return None
        t0 = time.perf_counter()
        path = None
        verdict = None
        try:
            from harness import atomic

            path = cached_path()
            with atomic.locked(path.with_name(".lock")):
                built = None
                if path.exists():
                    how = f"loaded from cache {path}"
                else:
                    # cpp_extension.load imports the fresh build here; it is not used (nor
                    # returned) unless the self-test below passes
                    built, seconds = build(path, verbose=verbose)
                    how = f"built in {seconds:.1f} s, cached at {path}"
                verdict, fresh = verdict_for(path, selftest)
                how += "; self-test passed" if fresh and verdict.ok else ""
                if not verdict.ok:
                    raise SelfTestFailed(f"self-test failed: {verdict.detail}")
                _module = built if built is not None else _import_from(path)
            _status = Status(True, how, path, recorded_build_seconds(path),
                             time.perf_counter() - t0, verdict)
        except Exception as exc:  # no compiler, ninja, headers; a failed self-test: fall back
            if isinstance(exc, SelfTestFailed):
                reason = str(exc)
            else:
                last = (str(exc).strip().splitlines() or [""])[-1]
                reason = f"{type(exc).__name__}: {last}"
            _status = Status(False, reason[:300], path, None, time.perf_counter() - t0,
                             verdict)
            _module = None
            warnings.warn(f"rlgauge GAE: the native CPU kernel is unavailable ({_status.detail}); "
                          "using the pure-torch parallel scan, which is slower",
                          RuntimeWarning, stacklevel=3)
        return _module


def status() -> Status:
    """What ``load()`` did in this process (calls it if nobody has yet): ``ok``, and in
    ``detail`` why not ("self-test failed: child died with SIGSEGV during the bad-shape call",
    a build error, ``RLGAUGE_GAE_NATIVE=0``) or how the module was obtained."""
    load()
    assert _status is not None
    return _status


# --------------------------------------------------------------------------- the self-test


def recorded_selftest(path: Path | None = None) -> SelfTest | None:
    """The self-test verdict recorded next to a cached build (default: this machine's), or None
    when there is none for the ``.so`` now there (never tested, or rebuilt since). Builds and
    runs nothing: what ``python -m harness doctor`` should show."""
    return recorded_verdict(path or cached_path())


def describe_cache() -> tuple[bool, str]:
    """(usable, one line) on this machine's cached build, for ``python -m harness doctor``:
    built or not, the compile time recorded then (information, not a measurement), and the
    recorded self-test verdict. Reads files only: never builds, loads or tests. ``usable`` is
    False only when a recorded self-test failed (then the scan is used)."""
    if not enabled():
        return True, f"disabled ({ENV_SWITCH}=0): the pure-torch scan is used"
    path = cached_path()
    if not path.exists():
        return True, ("not built yet: compiles on first use (~30-40 s, needs a C++ compiler and "
                      "ninja), then self-tests in a child process")
    seconds = recorded_build_seconds(path)
    line = f"cached build {path.parent.name}"
    if seconds:
        line += f", compiled in {seconds:.0f} s"
    verdict = recorded_selftest(path)
    if verdict is None:
        return True, f"{line}; not self-tested yet (the first use does it)"
    if not verdict.ok:
        return False, (f"{line}; self-test failed ({verdict.detail}): the pure-torch scan is "
                       f"used (delete {path.with_name(SELFTEST_FILE)} to test again)")
    return True, f"{line}; self-test passed"


def selftest(path: Path, *, timeout: float | None = None) -> SelfTest:
    """Run the self-test of the extension at ``path`` in a fresh interpreter (``sys.executable``)
    and return its verdict; never raises for what the child does (dies, hangs, fails).

    The child (``_selftest_child``) imports the module by path -- a ``.so``, or for tests any
    file ``importlib`` can load -- and checks it against the pure-torch scan, then makes a call
    with mismatched shapes that must raise RuntimeError.
    """
    from harness.torchrl_ext import child_env, run_selftest_child

    code = ("import sys; from harness.gae_native import _selftest_child; "
            "_selftest_child(sys.argv[1])")
    ok, detail = run_selftest_child([sys.executable, "-c", code, str(path)],
                                    timeout=timeout or SELFTEST_TIMEOUT_S,
                                    env=child_env(**{ENV_SWITCH: "0"}))  # no load() in there
    return SelfTest(ok, detail, time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _selftest_child(path: str) -> None:
    """The self-test's child process (see ``selftest``): "@stage" lines say what it is doing,
    "@fail" why it failed (exit 1), "@ok" that all passed. Its parent names the stage a death
    happened in."""
    from harness.torchrl_ext import selftest_fail as fail
    from harness.torchrl_ext import selftest_must_raise
    from harness.torchrl_ext import selftest_stage as stage

    stage("importing torch")
    import torch

    from harness.estimators import gae_scan, td_lambda_return_scan

    stage(f"loading {Path(path).name}")
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        fail(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def compare(what, got, want, dtype):
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for a, b in zip(got, want, strict=True):
            if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
                fail(f"{what}: got {getattr(a, 'dtype', type(a))} {tuple(getattr(a, 'shape', ()))}"
                     f", expected {b.dtype} {tuple(b.shape)}")
            tol = (1e-4 if dtype == torch.float32 else 1e-10) * (1 + b.abs().max().item())
            err = (a.double() - b.double()).abs().max().item() if b.numel() else 0.0
            if not err <= tol:  # NaN fails too
                fail(f"{what} differs from the torch scan by {err:.3g} (> {tol:.1g})")

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        for shape, time_dim in (((3, 37, 1), -2), ((2, 5, 4, 3), 1)):
            v, nv, r = (3 * torch.randn(shape, generator=g, dtype=dtype) for _ in range(3))
            u = torch.rand(shape, generator=g)
            done, term = u < 0.15, u < 0.07
            gamma_t = (0.5 + 0.5 * torch.rand(shape, generator=g)).to(dtype)
            lmbda_t = torch.rand(shape, generator=g).to(dtype)
            for label, args, scan_args in (("float gamma", (0.95, 0.9, None, None), (0.95, 0.9)),
                                           ("per-step gamma", (0.0, 0.9, gamma_t, None),
                                            (gamma_t, 0.9)),
                                           ("per-step gamma and lambda",
                                            (0.0, 0.0, gamma_t, lmbda_t), (gamma_t, lmbda_t))):
                what = f"gae {name} {label} {list(shape)}"
                stage(what)
                compare(what, module.gae(*args, v, nv, r, done, term, time_dim),
                        gae_scan(*scan_args, v, nv, r, done, term, time_dim=time_dim), dtype)
                what = f"td_lambda {name} {label} {list(shape)}"
                stage(what)
                compare(what, module.td_lambda(*args, nv, r, done, term, time_dim),
                        td_lambda_return_scan(*scan_args, nv, r, done, term,
                                              time_dim=time_dim), dtype)
    v = torch.zeros(2, 10, 1)
    d = torch.zeros(2, 10, 1, dtype=torch.bool)
    selftest_must_raise("the bad-shape call",
                        lambda: module.gae(0.9, 0.8, None, None, v, v[:, :5], v, d, d, -2),
                        "must share a unique shape")
    stage("exiting")
    print("@ok", flush=True)
