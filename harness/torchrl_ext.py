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

A rebuilt extension is installed only after a SELF-TEST in a child process has passed
(``selftest()``): a fresh interpreter imports the built ``.so`` by path, exercises the CPU segment
trees prioritized replay uses (``Sum``/``MinSegmentTreeFp32``/``Fp64``: set, query, at,
scan_lower_bound, against plain Python sums) and makes one call into torchrl's C++ that must
raise (a sparse index tensor: ``contiguous()`` throws a c10::Error inside ``at``), so a build
whose C++ exceptions do not cross the extension boundary fails by dying instead of killing a
training run later. The verdict is recorded next to the cached build (``selftest.json``);
``ensure()`` raises with it in one line, and ``status()`` adds it to its detail (doctor). A
rebuild installed before rebuilds were self-tested (the installed file has the cached build's size
and mtime, and no verdict) is self-tested once by ``ensure()``.

torchrl 0.14.1 has no pure-Python fallback for prioritized replay: without ``torchrl._torchrl``
its ``PrioritizedSampler`` raises "SumSegmentTreeFp32 is not available" (the segment trees exist
only in C++). So where the self-test fails there is nothing to fall back to: ``build-ext`` fails.

The ``.so``-level helpers for child-process self-tests (``run_selftest_child``, the verdict
record) are shared with ``harness.gae_native``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import atomic

SOURCES_CPU = ("pybind.cpp", "utils.cpp")
SOURCES_CUDA = ("cuda_segment_tree.cu",)
PROBE = ("import torch; from torchrl._torchrl import SumSegmentTreeFp32, MinSegmentTreeFp32; "
         "t = SumSegmentTreeFp32(8); t[0] = 1.0; assert t.query(0, 8) == 1.0")


SELFTEST_FILE = "selftest.json"  # a build's self-test verdict, next to the cached build
SELFTEST_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class SelfTest:
    """A build's self-test verdict, as recorded next to it."""

    ok: bool
    detail: str  # "passed", or why not in one line ("child died with SIGABRT during ...")
    tested_at: str | None = None


@dataclass(frozen=True)
class Status:
    ok: bool
    detail: str  # why not, or what loaded
    path: Path | None
    cuda: bool = False  # the CUDA segment trees are present
    selftest: SelfTest | None = None  # the cached rebuild's recorded verdict, when it failed


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
    """Import ``torchrl._torchrl`` in this process and report whether its segment trees work.

    When it does not and the cached rebuild has a recorded failed self-test, ``detail`` ends
    with that reason (and ``selftest`` holds the verdict): why ``build-ext`` will not install it.
    """
    st = _status_in_process()
    if st.ok:
        return st
    verdict = _recorded_failure()
    if verdict is None:
        return st
    return Status(False, f"{st.detail}; the rebuilt extension is not installed: its self-test "
                  f"failed ({verdict.detail})", st.path, st.cuda, verdict)


def _status_in_process() -> Status:
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


def _recorded_failure() -> SelfTest | None:
    """The cached rebuild's recorded verdict if it is a failure; None otherwise or if unknown."""
    try:
        verdict = recorded_verdict(cached_build())
    except Exception:  # no torchrl sources, no torch...: nothing recorded to report
        return None
    return verdict if verdict is not None and not verdict.ok else None


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
        atomic.copy(built, dest)
    return time.perf_counter() - t0


def ensure(*, force: bool = False, verbose: bool = False) -> str:
    """Make ``torchrl._torchrl`` load in this environment. Returns what was done, in one line.

    A rebuild (new, or cached without a recorded verdict) is installed only once its self-test
    (``selftest()``, in a child process) has passed. Raises RuntimeError, with the reason in one
    line, when the extension cannot be made to work (no compiler, no sources, a failed
    self-test: then nothing is installed; ``force`` rebuilds and tests again).
    """
    if not force:
        st = status()
        if st.ok:
            tested = _test_installed_rebuild(st.path)
            return f"torchrl extension OK ({st.detail}{tested}): {st.path}"
        why = st.detail
    else:
        why = "rebuild forced"
    target = extension_path()
    if target is None:
        raise RuntimeError("torchrl is not installed")
    cached = cached_build()
    with atomic.locked(cached.with_name(".lock")):
        if force or not cached.exists():
            seconds = build(cached, verbose=verbose)
            how = f"built in {seconds:.0f} s (cached at {cached})"
        else:
            how = f"copied from cache {cached}"
        verdict, fresh = verdict_for(cached, selftest)
        how += "; self-test passed" if fresh and verdict.ok else ""
    if not verdict.ok:
        raise RuntimeError(f"rebuilt torchrl extension failed its self-test ({verdict.detail}); "
                           f"not installed (build cached at {cached}; --force rebuilds and tests "
                           "again)")
    atomic.copy(cached, target)
    ok, err = probe_subprocess()
    if not ok:
        raise RuntimeError(f"rebuilt torchrl extension still fails to load: {err}")
    return f"torchrl extension was broken ({why}); {how}; installed at {target}"


def _test_installed_rebuild(installed: Path | None) -> str:
    """An installed extension that is rlgauge's cached rebuild (same size and mtime: installed
    before rebuilds were self-tested) is self-tested once, its verdict recorded with the cached
    build: "" if it is not one (the wheel's own binary), "; self-test passed" if it passes, and
    RuntimeError if it fails. A working import in this process says nothing about how the
    build handles a C++ exception."""
    try:
        cached = cached_build()
        if installed is None or _so_identity(installed) != _so_identity(cached):
            return ""
    except OSError:  # no cached build
        return ""
    with atomic.locked(cached.with_name(".lock")):
        verdict, _ = verdict_for(cached, selftest)
    if not verdict.ok:
        raise RuntimeError(f"the installed torchrl extension (rlgauge's rebuild, cached at "
                           f"{cached}) fails its self-test ({verdict.detail}); reinstall torchrl "
                           "or run build-ext --force")
    return "; self-test passed"


# --------------------------------------------------------------------------- self-tests
#
# A self-test runs in a child process (a fresh ``sys.executable``) so that a build that crashes
# (a C++ exception that does not cross the extension boundary becomes a segfault or an abort)
# takes down the child only. The child prints "@stage <what>" before each step, "@fail <why>"
# (then exits 1) on a wrong result, and "@ok" at the end; the parent names the stage a death
# happened in. Shared with ``harness.gae_native``.


def selftest_stage(what: str) -> None:
    """In a self-test child: announce the next step (named in the verdict if the child dies)."""
    print(f"@stage {what}", flush=True)


def selftest_fail(why: str) -> None:
    """In a self-test child: fail with ``why`` (one line) and exit 1."""
    print(f"@fail {' '.join(str(why).split())}", flush=True)
    raise SystemExit(1)


def selftest_must_raise(what: str, call, needle: str | None = None, *,
                        detail: str = "") -> None:
    """In a self-test child: ``call()`` must raise RuntimeError (whose text holds ``needle``,
    if given): a C++ exception crossing the extension boundary. Anything else fails the test;
    a crash kills the child (named by the stage announced here: ``what`` and ``detail``)."""
    selftest_stage(f"{what} ({detail})" if detail else what)
    try:
        call()
    except RuntimeError as exc:
        if needle is not None and needle not in str(exc):
            selftest_fail(f"{what} raised RuntimeError({str(exc)[:100]!r}), not the one expected")
    except Exception as exc:  # any other outcome is a failure to report
        selftest_fail(f"{what} raised {type(exc).__name__}, not RuntimeError")
    else:
        selftest_fail(f"{what} did not raise")


def _text(out) -> str:
    if out is None:
        return ""
    return out.decode(errors="replace") if isinstance(out, bytes) else out


def run_selftest_child(argv: list[str], *, timeout: float, env: dict | None = None
                       ) -> tuple[bool, str]:
    """Run a self-test child (see above); (True, "passed") or (False, why in one line): a
    ``@fail`` reason, "child died with SIGSEGV during <stage>", "child timed out after N s
    during <stage>", or the last line of its stderr."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:  # run() has killed it
        out, err, rc = _text(exc.stdout), _text(exc.stderr), None
    except OSError as exc:
        return False, f"cannot start the child: {exc}"
    lines = out.splitlines()
    stages = [ln[len("@stage "):] for ln in lines if ln.startswith("@stage ")]
    during = f" during {stages[-1]}" if stages else ""
    if rc is None:
        return False, f"child timed out after {timeout:.0f} s{during}"
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return False, f"child died with {name}{during}"
    fails = [ln[len("@fail "):] for ln in lines if ln.startswith("@fail ")]
    if fails:
        return False, fails[-1]
    if rc != 0:
        last = (err.strip().splitlines() or [f"exit status {rc}"])[-1]
        return False, _short(f"child exited with status {rc}{during}: {last}", 300)
    if "@ok" not in lines:
        return False, f"child exited without finishing{during}"
    return True, "passed"


def _so_identity(so: Path) -> dict:
    st = so.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def recorded_verdict(so: Path) -> SelfTest | None:
    """The verdict recorded next to the build ``so`` for that very file (size and mtime), or
    None: never tested, or rebuilt since. Reads a file; runs nothing."""
    try:
        data = json.loads(so.with_name(SELFTEST_FILE).read_text())
        if data.get("so") != _so_identity(so):
            return None
        return SelfTest(bool(data["ok"]), str(data["detail"]), data.get("tested_at"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def verdict_for(so: Path, test) -> tuple[SelfTest, bool]:
    """``(verdict, fresh)``: the verdict recorded for the build ``so``, else ``test(so)`` run now
    and recorded (a read-only cache: not recorded, tested again next time); ``fresh`` says the
    test ran now. Call it under the build's lock."""
    verdict = recorded_verdict(so)
    if verdict is not None:
        return verdict, False
    verdict = test(so)
    with contextlib.suppress(OSError):
        record_verdict(so, verdict)
    return verdict, True


def record_verdict(so: Path, verdict: SelfTest) -> None:
    """Write ``verdict`` next to the build ``so`` (atomically)."""
    atomic.write_json(so.with_name(SELFTEST_FILE), {
        "ok": verdict.ok, "detail": verdict.detail,
        "tested_at": verdict.tested_at or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "so": _so_identity(so), "python": sys.version.split()[0]})


def child_env(**extra: str) -> dict:
    """The environment for a self-test child: this one, with rlgauge's source root on
    PYTHONPATH (the child imports ``harness``) and ``extra`` set."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def selftest(so: Path, *, timeout: float | None = None) -> SelfTest:
    """Self-test the torchrl extension built at ``so`` in a child process; never raises for
    what the child does. See ``_selftest_child``."""
    code = ("import sys; from harness.torchrl_ext import _selftest_child; "
            "_selftest_child(sys.argv[1])")
    ok, detail = run_selftest_child([sys.executable, "-c", code, str(so)],
                                    timeout=timeout or SELFTEST_TIMEOUT_S, env=child_env())
    return SelfTest(ok, detail, time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def _selftest_child(so: str) -> None:
    """The child: load ``so`` as ``_torchrl`` (any file importlib loads, for tests), check the
    CPU segment trees against plain Python, then one call that must raise."""
    stage, fail = selftest_stage, selftest_fail
    stage("importing torch")
    import torch

    stage(f"loading {Path(so).name}")
    spec = importlib.util.spec_from_file_location("_torchrl", so)
    if spec is None or spec.loader is None:
        fail(f"cannot load {so}")
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)

    def expect(what, got, want):
        if isinstance(got, torch.Tensor):
            got = got.tolist()
        if isinstance(want, float) and isinstance(got, float):
            good = abs(got - want) <= 1e-5 * max(1.0, abs(want))
        elif isinstance(want, list) and isinstance(got, list) and len(got) == len(want):
            good = all(abs(g - w) <= 1e-5 * max(1.0, abs(w))
                       for g, w in zip(got, want, strict=True))
        else:
            good = got == want
        if not good:
            fail(f"{what}: got {got!r}, expected {want!r}")

    values = [1.0, 2.0, 3.0, 0.5, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    n = len(values)
    prefix = [sum(values[: i + 1]) for i in range(n)]
    for kind, dtype in (("Fp32", torch.float32), ("Fp64", torch.float64)):
        name = f"SumSegmentTree{kind}"
        stage(f"{name}: set, query, at, scan_lower_bound")
        tree = getattr(ext, name)(n)
        expect(f"len({name}(10))", len(tree), n)
        tree[torch.arange(n)] = torch.arange(1, n + 1, dtype=dtype)  # tensor index and values
        tree[3] = 0.5  # one item
        expect(f"{name}.query(0, 10)", tree.query(0, n), sum(values))
        expect(f"{name}.query(2, 5)", tree.query(2, 5), sum(values[2:5]))
        expect(f"{name}[3]", tree[3], 0.5)
        expect(f"{name}.at(tensor)", tree.at(torch.tensor([0, 3, 9])), [1.0, 0.5, 10.0])
        expect(f"{name}.query(tensor, tensor)",
               tree.query(torch.tensor([0, 2]), torch.tensor([10, 5])),
               [sum(values), sum(values[2:5])])
        # the first index whose prefix sum reaches x: how prioritized replay samples
        xs = [0.5, prefix[2] + 0.25, prefix[-1] - 0.25, prefix[-1] + 1.0]
        want = [next((i for i, p in enumerate(prefix) if p >= x), n) for x in xs]
        expect(f"{name}.scan_lower_bound(float)", [tree.scan_lower_bound(x) for x in xs], want)
        expect(f"{name}.scan_lower_bound(tensor)",
               tree.scan_lower_bound(torch.tensor(xs, dtype=dtype)), want)
        name = f"MinSegmentTree{kind}"
        stage(f"{name}: set, query")
        tree = getattr(ext, name)(n)
        tree[torch.arange(n)] = torch.tensor(values[::-1], dtype=dtype)
        expect(f"{name}.query(0, 10)", tree.query(0, n), min(values))
        expect(f"{name}.query(0, 3)", tree.query(0, 3), min(values[::-1][:3]))
        tree[4] = -1.0
        expect(f"{name}.query(0, 10) after an update", tree.query(0, n), -1.0)
    # bad input: a sparse index makes ``index.contiguous()`` inside ``at`` throw a c10::Error,
    # which must reach Python as RuntimeError. (Wrong dtypes or sizes do not: the CPU trees
    # check those with assert(), which aborts in this build, as cpp_extension leaves NDEBUG
    # unset.)
    tree = ext.SumSegmentTreeFp32(8)
    selftest_must_raise("the bad-input call", lambda: tree.at(torch.tensor([0, 1]).to_sparse()),
                        detail="a sparse index into SumSegmentTreeFp32.at")
    stage("exiting")
    print("@ok", flush=True)
