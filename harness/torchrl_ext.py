"""torchrl's C++ extension: detect whether it loads, and rebuild it against the installed torch.

The torchrl 0.14.1 wheel ships ``torchrl/_torchrl.*.so`` compiled against another torch; under
torch 2.13 it fails to load (undefined symbol). torchrl then only warns, and every prioritized
replay buffer raises "SumSegmentTreeFp32 is not available". The wheel also ships the C++ sources
(``torchrl/csrc``), so ``ensure()`` compiles them with ``torch.utils.cpp_extension`` against the
torch that is installed and puts the result in place of the shipped binary.

The build (~40-70 s on 2 cores) is cached per (torch build, torchrl version, Python ABI, source
hash) under ``$RLGAUGE_CACHE_DIR`` (default ``~/.cache/rlgauge``), so a fresh virtual environment
with the same pair only copies the cached file. The CUDA segment trees are compiled too when torch
is a CUDA build and ``nvcc`` is found; otherwise the CPU ones only.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SOURCES_CPU = ("pybind.cpp", "utils.cpp")
SOURCES_CUDA = ("cuda_segment_tree.cu",)
PROBE = ("import torch; from torchrl._torchrl import SumSegmentTreeFp32, MinSegmentTreeFp32; "
         "t = SumSegmentTreeFp32(8); t[0] = 1.0; assert t.query(0, 8) == 1.0")


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: str  # why not, or what loaded
    path: Path | None
    cuda: bool = False  # the CUDA segment trees are present


def torchrl_dir() -> Path | None:
    """torchrl's package directory, found without importing torchrl."""
    spec = importlib.util.find_spec("torchrl")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def extension_path() -> Path | None:
    d = torchrl_dir()
    return None if d is None else d / f"_torchrl{sysconfig.get_config_var('EXT_SUFFIX')}"


def status() -> Status:
    """Import ``torchrl._torchrl`` in this process and report whether its segment trees work."""
    path = extension_path()
    if path is None:
        return Status(False, "torchrl is not installed", None)
    if not path.exists():
        return Status(False, f"{path.name} is missing from {path.parent}", path)
    try:
        import torchrl._torchrl as ext
    except ImportError as exc:
        return Status(False, _short(str(exc).splitlines()[0]), path)
    try:
        tree = ext.SumSegmentTreeFp32(8)
        tree[0] = 1.0
        ok = tree.query(0, 8) == 1.0
    except Exception as exc:  # loads, but broken
        return Status(False, f"loads but fails: {type(exc).__name__}: {exc}", path)
    cuda = hasattr(ext, "CudaSumSegmentTreeFp32")
    return Status(ok, "loads" + (" (with CUDA segment trees)" if cuda else ""), path, cuda)


def _short(msg: str, limit: int = 160) -> str:
    """Mangled C++ symbols run to hundreds of characters: keep the start."""
    return msg if len(msg) <= limit else msg[: limit - 3] + "..."


def probe_subprocess(python: str = sys.executable) -> tuple[bool, str]:
    """Check the extension in a fresh interpreter (a failed import is not retried in-process)."""
    proc = subprocess.run([python, "-c", PROBE], capture_output=True, text=True)
    err = (proc.stderr.strip().splitlines() or [""])[-1]
    return proc.returncode == 0, err


# --------------------------------------------------------------------------- building


def _want_cuda() -> bool:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def cache_root() -> Path:
    root = os.environ.get("RLGAUGE_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlgauge"


def cache_key() -> str:
    """One build's name: torch build, torchrl version, Python ABI, arch, hash of the sources."""
    import torch

    src = torchrl_dir() / "csrc"
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.suffix in {".cpp", ".cu", ".h"}:
            h.update(f.name.encode())
            h.update(f.read_bytes())
    from importlib.metadata import version

    cuda = f"cu{torch.version.cuda}" if _want_cuda() else "cpuonly"
    return (f"torch-{torch.__version__}_torchrl-{version('torchrl')}_"
            f"{sys.implementation.cache_tag}-{platform.machine()}_{cuda}_{h.hexdigest()[:12]}")


def cached_build() -> Path:
    return cache_root() / "torchrl-ext" / cache_key() / "_torchrl.so"


def build(dest: Path, *, verbose: bool = False) -> float:
    """Compile torchrl/csrc against the installed torch into ``dest``; returns seconds taken."""
    from torch.utils import cpp_extension

    src = torchrl_dir() / "csrc"
    if not src.is_dir():
        raise RuntimeError(f"torchrl ships no C++ sources at {src}; cannot rebuild the extension")
    cuda = _want_cuda()
    sources = [str(src / s) for s in SOURCES_CPU + (SOURCES_CUDA if cuda else ())]
    flags = ["-O3"] + (["-DWITH_CUDA"] if cuda else [])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlgauge-torchrl-ext-") as build_dir:
        # a failed compile raises RuntimeError carrying the compiler's output
        cpp_extension.load(
            name="_torchrl", sources=sources, build_directory=build_dir,
            extra_cflags=flags, extra_cuda_cflags=flags if cuda else None,
            extra_include_paths=[str(src)], with_cuda=cuda, verbose=verbose,
        )
        built = Path(build_dir) / "_torchrl.so"
        dest.parent.mkdir(parents=True, exist_ok=True)
        _atomic_copy(built, dest)
    return time.perf_counter() - t0


def _atomic_copy(src: Path, dest: Path) -> None:
    """Copy to a temp file, then rename: ``dest`` gets a new inode. Never write through an
    existing file: uv hard-links site-packages files to its cache, and writing into one would
    change every venv made from that cache."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _lock(path: Path):
    """Serialise concurrent builds of one key (two nox sessions starting at once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure(*, force: bool = False, verbose: bool = False) -> str:
    """Make ``torchrl._torchrl`` load in this environment. Returns what was done, in one line.

    Raises RuntimeError when the extension cannot be made to work (no compiler, no sources...).
    """
    if not force:
        st = status()
        if st.ok:
            return f"torchrl extension OK ({st.detail}): {st.path}"
        why = st.detail
    else:
        why = "rebuild forced"
    target = extension_path()
    if target is None:
        raise RuntimeError("torchrl is not installed")
    cached = cached_build()
    with _lock(cached.with_name(".lock")):
        if force or not cached.exists():
            seconds = build(cached, verbose=verbose)
            how = f"built in {seconds:.0f} s (cached at {cached})"
        else:
            how = f"copied from cache {cached}"
    _atomic_copy(cached, target)
    ok, err = probe_subprocess()
    if not ok:
        raise RuntimeError(f"rebuilt torchrl extension still fails to load: {err}")
    return f"torchrl extension was broken ({why}); {how}; installed at {target}"
