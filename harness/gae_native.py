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
  cached build, ``build.json``); ``bench/bench_gae.py::KernelBuild`` tracks them under asv.

When the build fails (no compiler, no ninja, an unsupported platform) ``load()`` warns once
(``RuntimeWarning``) and returns None, and ``harness.estimators`` falls back to its pure-torch
parallel scan. ``RLGAUGE_GAE_NATIVE=0`` skips the native kernel altogether (no build, no
warning).
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

MODULE = "_rlgauge_gae"
CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = ("gae.cpp",)
HEADERS = ("gae_kernel.h",)
ENV_SWITCH = "RLGAUGE_GAE_NATIVE"


@dataclass(frozen=True)
class Status:
    """What ``load()`` found or did in this process."""

    ok: bool
    detail: str  # why not, or how it was obtained
    path: Path | None  # the cached .so
    build_seconds: float | None = None  # the compile time recorded when the cache was made
    load_seconds: float | None = None  # this process: loading (and building, if it did)


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

    from harness.torchrl_ext import _atomic_copy

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
        _atomic_copy(Path(build_dir) / f"{MODULE}.so", dest)
    meta = {"build_seconds": round(seconds, 2), "flags": flags,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "torch": torch.__version__}
    _write_json(dest.with_name("build.json"), meta)
    return module, seconds


def _write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def recorded_build_seconds(path: Path | None = None) -> float | None:
    """The compile time written next to a cached build when it was made (None: unknown)."""
    meta = (path or cached_path()).with_name("build.json")
    try:
        return float(json.loads(meta.read_text())["build_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load(*, verbose: bool = False):
    """The extension module, building it on first use; None (and one warning) if it cannot be.

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
        try:
            from harness.torchrl_ext import _lock as file_lock

            path = cached_path()
            with file_lock(path.with_name(".lock")):
                if path.exists():
                    _module = _import_from(path)
                    how = f"loaded from cache {path}"
                else:
                    _module, seconds = build(path, verbose=verbose)
                    how = f"built in {seconds:.1f} s, cached at {path}"
            _status = Status(True, how, path, recorded_build_seconds(path),
                             time.perf_counter() - t0)
        except Exception as exc:  # no compiler, ninja, headers, ...: fall back, loudly once
            last = (str(exc).strip().splitlines() or [""])[-1]
            reason = f"{type(exc).__name__}: {last}"
            _status = Status(False, reason[:300], path, None, time.perf_counter() - t0)
            _module = None
            warnings.warn(f"rlgauge GAE: the native CPU kernel is unavailable ({_status.detail}); "
                          "using the pure-torch parallel scan, which is slower",
                          RuntimeWarning, stacklevel=3)
        return _module


def status() -> Status:
    """What ``load()`` did in this process (calls it if nobody has yet)."""
    load()
    assert _status is not None
    return _status
