"""CI regression gate: BASE and HEAD measured in one job, interleaved, with error rates measured.

    nox -s regress [-- BASE HEAD]       python -m harness.gate regress [BASE] [HEAD] [-b REGEX]
    nox -s regress -- --save-baseline   results/baseline/<machine>.csv (then --against-baseline)
    nox -s gate_validity                noise controls, A/A false alarms, injected slowdowns
    nox -s versions                     the same benchmarks on torchrl 0.13.3 and 0.14.1

BASE defaults to the merge base of HEAD with main (HEAD's parent when HEAD is on main); a rev
of ``.`` is the working tree with its uncommitted changes. Exit 1 only when a benchmark got
slower by more than the threshold AND the slowdown is significant; exit 2 when HEAD could not
run a benchmark; the Markdown table lists every benchmark with its ratio, interval and verdict.

How a run works
---------------
- Each side is a checkout: ``git archive`` of the commit into a temporary directory (no
  worktree, nothing written into .git). Both sides run under the same interpreter (the nox
  venv) with ``PYTHONPATH`` pointing at their checkout, so each commit's own ``harness/``,
  ``reference_impls/`` *and* ``bench/`` are measured.
- One server process per side imports torch/torchrl and the benchmarks once, computes each
  class's ``setup_cache`` once (pickled and shared by the run's servers, as asv shares it per
  environment and commit) and warms every case. The server boots this file and ``timing.py``
  by path (``_BOOT``), so a commit without the gate can still be measured.
- Rounds are interleaved: A B, B A, A B, ... Each round is a child forked from the side's
  server: per case ``setup``, 3 timed warm-up calls, then samples for 0.3 s (5 to 25 of them),
  ``teardown``; the same-round calibration workload (``timing.calibrate``'s) runs between
  cases. The fork costs milliseconds where a fresh interpreter costs ~4 s of imports.
- Noise controls in every worker: 1 torch thread (and OMP/MKL), pinned to one CPU
  (``os.sched_setaffinity``), warm-up, many samples, interleaving; the round's value of a case
  is the 10th percentile of its samples' **process CPU time** (``time.process_time``, scaled
  by the benchmark's own ``timer``, e.g. per operation).
- Verdict per case: the paired log ratios head/base of the rounds, their Hodges-Lehmann
  estimate and the distribution-free interval that inverts Wilcoxon's signed-rank test
  (exact up to 60 rounds). REGRESSION = ratio > 1 + threshold and the 95% interval above 1.
  track_* throughput (``.../s``, fps, returns) is higher-is-better, so a *drop* fails; units
  like fractions, ratios and errors are "not gated". A benchmark whose own source differs
  between the sides is reported but not gated (as asv starts a new series).

Measured on this machine (2-core shared VM, other jobs running: load 3-6)
------------------------------------------------------------------------
``nox -s gate_validity`` -> results/gate/validity-vm.md (19 min): 60 interleaved rounds of
A, A' (the same checkout) and A with 5/10/20% extra CPU work injected per call
(``RLGAUGE_INJECT_SLOWDOWN``, bench/common.py), workers restarted every 10 rounds.
With the defaults (CPU time, 10th percentile, 10 rounds, 95%, threshold 5%), over 2000
resampled 10-round gate runs of the 5 default cases: A/A runs with any false alarm **0.7%**
(0/6 independent blocks), 10% slowdowns detected **96.4%** (29/30 blocks), 5%: 66%,
20%: 100%. The threshold is the smallest that keeps suite-wide A/A alarms at <= 1% of runs
(4%: 2.1%, 3%: 4.8%); 6 rounds would alarm in 1.8% of A/A runs and catch 86% of 10%
slowdowns, 15 rounds 0.2% and 100%.

Idle VM (load 1.0-2.0, ours included), ``nox -s gate_validity -- validity --blocks 12`` ->
results/gate/validity-vm-idle.md (26 min, 120 rounds): the same defaults alarm in **0/12**
independent A/A runs (0.85% of resampled runs) and catch **57/60** 10% slowdowns (97.5%),
5%: 78.5%, 20%: 100%. The same data showed why ``choose_defaults`` counts the block trials'
false alarms too: calibrated q10 at 2% looked best on the resampled trials (0.9% A/A runs
alarmed) but alarmed in 3 of the 12 blocks.

``nox -s gate_validity -- noise`` -> results/gate/noise-vm.md (4 min, load 2-4; in brackets
an earlier run at load 6-7 that also had Extend.time_extend): SD of the A/A log ratio per
round pair, median over the cases, with one control removed at a time --

    as shipped (CPU time, 10th percentile, up to 25 samples)    1.8%   (6.4% at load 6-7)
    wall clock instead of CPU time                              2.1%  (47.6%)
    median of the samples instead of the 10th percentile        2.2%   (8.6%)
    5 samples per round instead of up to 25                     3.5%   (8.4%)
    blocked (the sides measured 10 rounds apart)                2.1%   (7.6%)
    + same-round calibration normalisation                      3.4%   (6.4%): off
    warm-up calls counted in the samples                        1.8%   (6.2%)

  Warm-up: the first call after setup is 13-15% slower for the GAE kernels, the third is
  steady; the 10th percentile ignores such calls anyway. Threads and CPU affinity: the
  between-round spread of each configuration (1.3-1.6%; 3.8-6.1% at load 6-7) differs no
  more than that of two identical pinned sides: not measurable here, kept as cheap insurance.

Why not ``asv continuous``
--------------------------
- Its test works on samples: a sample-level test in its manner (every wall-clock sample of
  the A/A rounds pooled per side, Mann-Whitney p < 0.05, ratio > 1.05) alarms in 12% of A/A
  runs (17% of the independent blocks), against 0.7% for one value per round
  (validity-vm.md): samples of one process are not independent draws.
- It takes ``bench/`` from the working tree for every commit, times the wall clock unless a
  benchmark sets its own ``timer`` (the spread above), and has no higher-is-better metric
  (an fps gain fails it).
- Cost: asv builds and installs the project per commit (5-9 s) into its own environments
  (55 s each to create, 1.4 GB) and runs every parameter point in a fresh process with setup
  per sample; ``asv continuous`` of ``GAE.time_gae`` alone took 105-180 s here
  (/work/shared/notes/asv_nox_recipe.md). This gate: 62 s (load ~3) to ~2.5 min (load 5-7) for
  5 cases x 10 rounds x 2 sides, in the nox venv, history-free.

Limits: the CPU clock leaves out work done in other processes (multi-process collectors,
``ParallelEnv``): select such benchmarks with ``--clock wall``. The 10th percentile sees work
added to every call; a slowdown of a few calls only (an occasional reallocation) moves the
median but not the 10th percentile (``--stat median``). track_* values are timed by the
benchmark itself on the wall clock (median of 3 calls per round), far noisier than time_*.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import os
import random
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GATE_PY = Path(__file__).resolve()
TIMING_PY = GATE_PY.with_name("timing.py")

# --------------------------------------------------------------------------- what runs

#: the default gate, one or two fast CPU cases per component (GAE, env step, replay buffer,
#: loss update): ~4 s per round and side on the loaded 2-core VM; the cases whose error rates
#: ``nox -s gate_validity`` measures. All time_*: track_* values are timed by the benchmark
#: itself on the wall clock (Collect.track_frames_per_s: A/A interval ±20% in 10 rounds here).
GATE_CASES = (
    "bench_gae.GAE.time_gae(device=cpu, impl=rlgauge, shape=64x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=8x1000)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "impl=torchrl)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=ppo, batch=256)",
)
#: the cross-version table: GAE (torchrl's kernels), env step, replay buffer, loss update
VERSION_CASES = (
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_loop, shape=1x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=8x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=256x2048)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "impl=torchrl)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=8, "
    "impl=torchrl)",
    "bench_buffers.Extend.time_extend(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=prioritized, "
    "size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=slice, size=10000)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=ppo, batch=256)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=dqn, batch=256)",
    "bench_collectors.Collect.time_frame(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "policy=mlp)",
)

#: the validity study runs the gate's own cases (5 sides x 60 rounds: ~25 min here)
VALIDITY_CASES = GATE_CASES

# The defaults are what `nox -s gate_validity` chose (results/gate/validity-vm.md): the smallest
# threshold whose suite-wide A/A false alarms stay <= 1% of gate runs while 10% slowdowns are
# caught in >= 95%; 10 rounds (6: 1.8% false alarms; 15: 0.2%, at 1.5x the time).
DEFAULT_ROUNDS = 10
DEFAULT_THRESHOLD = 0.05
DEFAULT_CONFIDENCE = 0.95
DEFAULT_NORMALISE = False  # calibration widened the A/A spread (1.8% -> 3.4% per round pair)
DEFAULT_CLOCK = "cpu"  # wall clock: 47.6% A/A spread per round pair under load 6-7, CPU: 6.4%
DEFAULT_STAT = "q10"  # of the round's samples; the median: 2.2% vs 1.8% (8.6% vs 6.4% loaded)
INJECT_ENV = "RLGAUGE_INJECT_SLOWDOWN"  # bench.common.INJECT_SLOWDOWN_ENV (test-only knob)
SUPPORTED = ("time_", "track_")  # peakmem_/mem_/timeraw_ need asv's process model: not gated


@dataclass(frozen=True)
class Settings:
    """How each side's worker measures (the noise controls); every side of a run uses one."""

    threads: int | None = 1  # torch threads (and OMP/MKL); None: torch's default
    cpu: int | None = -1  # pin to this CPU (-1: the last one allowed); None: no affinity
    warmup: int = 3  # timed warm-up calls per case and round (kept apart from the samples)
    budget_s: float = 0.3  # seconds of samples per case and round ...
    min_samples: int = 5  # ... but at least this many
    max_samples: int = 25  # ... and at most this many
    track_calls: int = 3  # calls of a track_* method per round (median taken)
    calibration_calls: int = 2  # reference-workload calls before each case and at the end
    fork: bool = True  # each round in a forked child of the side's server (False: in-process)


# --------------------------------------------------------------------------- direction


TIME_UNITS = {"s", "sec", "seconds", "ms", "us", "µs", "ns"}
MEMORY_UNITS = {"b", "bytes", "kb", "mb", "gb", "kib", "mib", "gib"}


def direction(method: str, unit: str | None, declared: bool | None = None) -> str:
    """"lower" (a cost: time, memory), "higher" (a throughput: frames/s, return) or "info"
    (not gated: fractions, ratios, errors, unknown units). A benchmark function can declare
    ``higher_is_better = True/False``; otherwise ``time_*`` is lower and ``track_*`` goes by
    its ``unit``: ``.../s``, fps, Hz and returns are higher; times (``s``, ``us/step``,
    ``ms/frame``...) and sizes are lower."""
    if declared is not None:
        return "higher" if declared else "lower"
    if method.startswith("time_"):
        return "lower"
    u = (unit or "").strip().lower()
    if u.endswith("/s") or u in {"fps", "hz", "return", "returns", "1/s"}:
        return "higher"
    head = u.split("/", 1)[0]
    if u in TIME_UNITS or u in MEMORY_UNITS or (head in TIME_UNITS and "/" in u):
        return "lower"
    return "info"


# --------------------------------------------------------------------------- statistics


_CDF_CACHE: dict[int, list[float]] = {}


def signed_rank_cdf(n: int) -> list[float]:
    """P(T+ <= k), k = 0 .. n(n+1)/2, for Wilcoxon's signed-rank statistic of n untied pairs
    under "no difference" (exact, by counting rank subsets)."""
    if n not in _CDF_CACHE:
        top = n * (n + 1) // 2
        counts = [1] + [0] * top
        for i in range(1, n + 1):
            for k in range(top, i - 1, -1):
                counts[k] += counts[k - i]
        total = 2 ** n
        _CDF_CACHE[n] = list(itertools.accumulate(c / total for c in counts))
    return _CDF_CACHE[n]


def hodges_lehmann(d: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
                   ) -> tuple[float, float, float]:
    """(estimate, low, high) of the centre of paired differences ``d``: the Hodges-Lehmann
    estimate (median of the Walsh averages) and its distribution-free interval, the one that
    inverts Wilcoxon's signed-rank test (Hollander & Wolfe). ±inf bounds when ``d`` is too
    short for that confidence (n = 5 at 95%: 2^-5 > 2.5%)."""
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences")
    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    estimate = statistics.median(walsh)
    if n > 60:  # normal approximation of T+ (exact table grows as n^3)
        z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        top = n * (n + 1) / 2
        k = int(math.floor(top / 2 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    else:
        cdf = signed_rank_cdf(n)
        half = (1 - confidence) / 2
        k = 0
        while k + 1 <= len(cdf) and cdf[k] <= half:  # cdf[k] = P(T+ <= k)
            k += 1
    if k < 1:
        return estimate, -math.inf, math.inf
    return estimate, walsh[k - 1], walsh[len(walsh) - k]


def welch_interval(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                   confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """(b - a, low, high): Welch's t interval for the difference of two means."""
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    se = math.sqrt(va + vb)
    diff = mean_b - mean_a
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / ((va ** 2 / (n_a - 1) if n_a > 1 else 0) +
                           (vb ** 2 / (n_b - 1) if n_b > 1 else 0) or 1e-300)
    try:
        from scipy.stats import t as student_t

        q = float(student_t.ppf(1 - (1 - confidence) / 2, df))
    except ImportError:  # normal quantile: slightly narrow for small samples
        q = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    return diff, diff - q * se, diff + q * se


def verdict(log_ratio: float, low: float, high: float, threshold: float, direction_: str
            ) -> str:
    """The gate's decision on a log ratio head/base of the metric and its interval.

    "REGRESSION" (fails the gate) only when the metric got worse by more than ``threshold``
    (cost x (1 + threshold), throughput / (1 + threshold)) AND the interval excludes "no
    change". Otherwise: "improved" (the mirror image), "slower"/"faster" (significant but
    within the threshold), "no change" (not significant); info metrics are "not gated".
    """
    if direction_ == "info":
        return "not gated"
    sign = 1.0 if direction_ == "lower" else -1.0  # worse = positive
    worse, lo, hi = sign * log_ratio, *sorted((sign * low, sign * high))
    limit = math.log1p(threshold)
    if lo > 0:
        return "REGRESSION" if worse > limit else "slower"
    if hi < 0:
        return "improved" if worse < -limit else "faster"
    return "no change"


# --------------------------------------------------------------------------- cases (worker)


def case_id(module: str, qualname: str, names: Sequence[str], values: Sequence) -> str:
    """``bench_gae.GAE.time_gae(device=cpu, impl=rlgauge, shape=64x1000)``."""
    if not names:
        return f"{module}.{qualname}"
    pairs = ", ".join(f"{n}={v}" for n, v in zip(names, values, strict=True))
    return f"{module}.{qualname}({pairs})"


def split_case(cid: str) -> tuple[str, str]:
    """(benchmark, params): ``("bench_gae.GAE.time_gae", "device=cpu, impl=...")``."""
    name, _, params = cid.partition("(")
    return name, params[:-1] if params else ""


@dataclass
class _Case:
    id: str
    module: str
    cls: type | None
    method: str
    func: Callable
    params: tuple
    kind: str  # time | track
    unit: str
    direction: str
    version: str
    timer: Callable[[], float]
    number: int

    def meta(self) -> dict:
        return {"unit": self.unit, "direction": self.direction, "kind": self.kind,
                "version": self.version}


def _source_hash(*objs) -> str:
    import hashlib

    h = hashlib.sha256()
    for obj in objs:
        if obj is None:
            continue
        try:
            h.update(inspect.getsource(obj).encode())
        except (OSError, TypeError):
            h.update(repr(obj).encode())
    return h.hexdigest()[:12]


def _grid(obj) -> tuple[tuple[str, ...], list[tuple]]:
    params = getattr(obj, "params", None) or ()
    if params and not isinstance(params[0], list | tuple):
        params = (params,)  # asv: a flat list is one parameter
    names = tuple(getattr(obj, "param_names", None) or
                  (f"param{i + 1}" for i in range(len(params))))
    return names, list(itertools.product(*params)) if params else [()]


def discover(tree: Path, wanted: Callable[[str], bool], modules: Iterable[str] | None = None
             ) -> tuple[list[_Case], dict[str, str]]:
    """Benchmarks of ``tree/bench`` (imported from the interpreter's path) whose case id
    ``wanted`` accepts, and {module: import error}."""
    import importlib

    if modules is None:
        modules = sorted(p.stem for p in (tree / "bench").glob("bench_*.py"))
    cases, errors = [], {}
    for modname in modules:
        if not (tree / "bench" / f"{modname}.py").is_file():
            continue  # a checkout that predates (or dropped) the module: its cases are absent
        try:
            mod = importlib.import_module(f"bench.{modname}")
        except Exception as exc:  # a module that does not import is every one of its cases
            errors[modname] = f"{type(exc).__name__}: {exc}"
            continue
        holders = [(name, obj) for name, obj in vars(mod).items() if not name.startswith("_")
                   and inspect.isclass(obj) and obj.__module__ == mod.__name__]
        for cls_name, cls in [*holders, (None, None)]:
            members = (inspect.getmembers(cls, callable) if cls is not None else
                       [(n, f) for n, f in vars(mod).items() if inspect.isfunction(f)])
            for meth, func in members:
                if not meth.startswith(SUPPORTED):
                    continue
                owner = cls if cls is not None else func  # asv reads attributes from there
                names, combos = _grid(func if cls is None else cls)
                qual = meth if cls is None else f"{cls_name}.{meth}"
                unit = "seconds" if meth.startswith("time_") else getattr(func, "unit", "unit")
                timer = getattr(owner, "timer", None) or time.perf_counter
                number = getattr(owner, "number", 0) or 1
                version = _source_hash(func, getattr(cls, "setup", None),
                                       getattr(owner, "version", None))
                for combo in combos:
                    cid = case_id(modname, qual, names, combo)
                    if wanted(cid):
                        cases.append(_Case(
                            cid, modname, cls, meth, func, tuple(combo),
                            "time" if meth.startswith("time_") else "track", unit,
                            direction(meth, unit, getattr(func, "higher_is_better", None)),
                            version, timer, number))
    return cases, errors


def _selector(cases: Sequence[str] | None, regex: str | None) -> Callable[[str], bool]:
    if regex:
        pattern = re.compile(regex)
        return lambda cid: bool(pattern.search(cid))
    chosen = set(cases or ())
    return lambda cid: cid in chosen


class _Worker:
    """One side's server: imports its checkout once, then measures rounds (forked children)."""

    def __init__(self, cfg: dict, timing):
        self.cfg = cfg
        self.timing = timing
        self.settings = Settings(**cfg["settings"])
        self.tree = Path(cfg["tree"])

    def prepare(self) -> dict:
        applied = self.timing.pin_process(self.settings.threads, self.settings.cpu)
        if self.cfg.get("compat"):
            from harness import compat  # the measured checkout's compat module

            compat.apply()
        import torch

        cases = self.cfg.get("cases")
        modules = sorted({c.split(".", 1)[0] for c in cases}) if cases and not \
            self.cfg.get("regex") else None
        self.cases, module_errors = discover(self.tree, _selector(cases, self.cfg.get("regex")),
                                             modules)
        self.errors = {c: f"module: {module_errors[c.split('.', 1)[0]]}" for c in cases or ()
                       if c.split(".", 1)[0] in module_errors}
        self.skipped: dict[str, str] = {}
        self.caches: dict = {}
        self.inject = None
        if os.environ.get(INJECT_ENV):
            from bench import common

            self.inject = getattr(common, "slowed_down", None)
            if self.inject is None:
                raise RuntimeError(f"{INJECT_ENV} is set but {self.tree}/bench/common.py has no "
                                   f"slowed_down (the test-only slowdown knob)")
        for case in list(self.cases):  # warm the server: lazy imports, kernels, caches
            outcome = self._measure(case, warm_only=True)
            if "skipped" in outcome or "error" in outcome:
                self.cases.remove(case)
                (self.skipped if "skipped" in outcome else self.errors)[case.id] = \
                    outcome.get("skipped") or outcome["error"]
        versions = {"python": sys.version.split()[0], "torch": torch.__version__}
        for dist in ("torchrl", "tensordict"):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions[dist] = version(dist)
        return {"cases": {c.id: c.meta() for c in self.cases}, "skipped": self.skipped,
                "errors": self.errors, "versions": versions, "pinned": applied,
                "module_errors": module_errors, "pid": os.getpid()}

    def _cache(self, case: _Case):
        """setup_cache's value, computed once per (checkout, interpreter, class) and pickled
        into the run's directory: the servers of one run share it, as asv shares it per
        environment and commit."""
        import fcntl
        import pickle

        if case.cls is None or not hasattr(case.cls, "setup_cache"):
            return None
        key = f"{case.module}.{case.cls.__name__}"
        if key not in self.caches:
            path = Path(self.cfg["cache_dir"]) / f"{key}.pkl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if path.exists():
                    self.caches[key] = pickle.loads(path.read_bytes())
                else:
                    self.caches[key] = case.cls().setup_cache()
                    tmp = path.with_suffix(".tmp")
                    tmp.write_bytes(pickle.dumps(self.caches[key]))
                    os.replace(tmp, path)
        return self.caches[key]

    def _calibrate(self, wall: list, cpu: list) -> None:
        for _ in range(self.settings.calibration_calls):
            t0, p0 = time.perf_counter(), time.process_time()
            self.timing._reference_workload()
            cpu.append(time.process_time() - p0)
            wall.append(time.perf_counter() - t0)

    def _measure(self, case: _Case, warm_only: bool = False) -> dict:
        s = self.settings
        inst, args = None, case.params
        try:
            cache = self._cache(case)
            args = ((cache,) if cache is not None else ()) + case.params
            inst = case.cls() if case.cls is not None else None
            if inst is not None and hasattr(inst, "setup"):
                inst.setup(*args)
            elif case.cls is None and hasattr(case.func, "setup"):
                case.func.setup(*args)
        except NotImplementedError as exc:
            with contextlib.suppress(Exception):
                inst.teardown(*args)
            return {"skipped": str(exc) or "NotImplementedError in setup"}
        except Exception as exc:
            return {"error": f"setup: {type(exc).__name__}: {exc}"}
        fn = getattr(inst, case.method) if inst is not None else case.func
        call = lambda: fn(*args)  # noqa: E731
        try:
            if warm_only:
                call()
                return {}
            if case.kind == "track":
                values = [float(call()) for _ in range(s.track_calls)]
                return {"samples": values, "track": True}
            warm, warm_cpu = [], []
            for _ in range(s.warmup):
                w0, c0, p0 = time.perf_counter(), case.timer(), time.process_time()
                call()
                p1, c1, w1 = time.process_time(), case.timer(), time.perf_counter()
                warm.append(c1 - c0)
                warm_cpu.append((p1 - p0) * (c1 - c0) / (w1 - w0) if w1 > w0 else 0.0)
            if self.inject is not None:  # the test-only knob (bench.common.slowed_down)
                call = self.inject(case.id, call)
            t = self.timing.measure(call, repeat=s.max_samples, number=case.number, warmup=0,
                                    timer=case.timer, max_time=s.budget_s,
                                    min_repeat=s.min_samples, cpu=True)
            out = {"samples": list(t.samples), "cpu": list(t.cpu_samples), "warmup": warm,
                   "warmup_cpu": warm_cpu}
            if hasattr(call, "iterations"):
                out["injected_iterations"] = statistics.median(call.iterations)
            return out
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            with contextlib.suppress(Exception):
                if inst is not None and hasattr(inst, "teardown"):
                    inst.teardown(*args)

    def round(self, index: int) -> dict:
        if self.settings.threads is not None:  # closing a SerialEnv resets torch's count
            import torch

            torch.set_num_threads(self.settings.threads)
        shift = index % max(1, len(self.cases))
        order = self.cases[shift:] + self.cases[:shift]  # no case always first after the fork
        wall: list[float] = []
        cpu: list[float] = []
        result = {"round": index, "started": time.time(), "loadavg": os.getloadavg(),
                  "cases": {}}
        for case in order:
            self._calibrate(wall, cpu)
            t0 = time.perf_counter()
            result["cases"][case.id] = self._measure(case)
            result["cases"][case.id]["seconds"] = time.perf_counter() - t0  # setup included
        self._calibrate(wall, cpu)
        result["calibration"], result["calibration_cpu"] = wall, cpu
        result["finished"] = time.time()
        return result

    def serve(self, reply) -> None:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                return
            out = Path(cmd["out"])
            if self.settings.fork and hasattr(os, "fork"):
                pid = os.fork()
                if pid == 0:  # the child: measure, write, leave without running atexit hooks
                    code = 1
                    try:
                        _write_json(out, self.round(cmd["round"]))
                        code = 0
                    except BaseException:
                        traceback.print_exc()
                    finally:
                        sys.stdout.flush()
                        sys.stderr.flush()
                        os._exit(code)
                _, status = os.waitpid(pid, 0)
                ok = os.waitstatus_to_exitcode(status) == 0
            else:
                try:
                    _write_json(out, self.round(cmd["round"]))
                    ok = True
                except Exception:
                    traceback.print_exc()
                    ok = False
            reply.write(json.dumps({"event": "done", "ok": ok}) + "\n")
            reply.flush()


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def worker_main(argv: Sequence[str]) -> int:
    """Entry point inside a side's interpreter (see ``_BOOT``)."""
    cfg = json.loads(argv[0])
    reply = os.fdopen(cfg["reply_fd"], "w", buffering=1)
    try:
        worker = _Worker(cfg, sys.modules["_rlgauge_timing"])
        info = worker.prepare()
    except BaseException as exc:
        traceback.print_exc()
        reply.write(json.dumps({"event": "failed",
                                "error": f"{type(exc).__name__}: {exc}"}) + "\n")
        return 1
    reply.write(json.dumps({"event": "ready", **info}) + "\n")
    reply.flush()
    worker.serve(reply)
    return 0


# The worker runs THIS file and timing.py (loaded by path under private names), while
# `harness`, `bench` and `reference_impls` come from the side's checkout (PYTHONPATH): a
# commit without harness/gate.py can still be measured.
_BOOT = """\
import importlib.util, sys
def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
_load('_rlgauge_timing', sys.argv[2])
sys.exit(_load('_rlgauge_gate', sys.argv[1]).worker_main(sys.argv[3:]))
"""


# --------------------------------------------------------------------------- runner


@dataclass
class Side:
    """One column of a run: a checkout measured by an interpreter with extra environment."""

    name: str
    tree: Path
    python: str = sys.executable
    env: dict = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    compat: bool = False  # apply the checkout's harness.compat before importing benchmarks
    label: str = ""  # what the report calls it (commit, torchrl version...)


class _Server:
    def __init__(self, side: Side, cases, regex, workdir: Path, generation: int, boot: Path):
        self.side = side
        tag = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', side.name)}-{generation}"
        self.log_path = workdir / "logs" / f"{tag}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.out_dir = workdir / "rounds" / tag
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cache_key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{side.tree}-{side.python}")[-120:]
        read_fd, write_fd = os.pipe()
        cfg = {"tree": str(side.tree), "cases": list(cases) if cases else None, "regex": regex,
               "settings": asdict(side.settings), "reply_fd": write_fd, "compat": side.compat,
               "cache_dir": str(workdir / "cache" / cache_key)}
        env = {k: v for k, v in os.environ.items() if k not in {INJECT_ENV, "PYTHONPATH"}}
        env.update({"PYTHONPATH": str(side.tree), "MUJOCO_GL": env.get("MUJOCO_GL", "egl"),
                    "RL_LOGGING_LEVEL": env.get("RL_LOGGING_LEVEL", "WARNING")})
        if side.settings.threads is not None:
            env.update(OMP_NUM_THREADS=str(side.settings.threads),
                       MKL_NUM_THREADS=str(side.settings.threads))
        else:
            env.pop("OMP_NUM_THREADS", None)
            env.pop("MKL_NUM_THREADS", None)
        env.update(side.env)
        self.log = open(self.log_path, "w")  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(
            [side.python, "-c", _BOOT, str(boot / "gate.py"), str(boot / "timing.py"),
             json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT, env=env,
            pass_fds=(write_fd,), cwd=workdir, text=True)
        os.close(write_fd)
        self.reply = os.fdopen(read_fd, "r")
        self.info: dict = {}

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.reply], [], [], timeout)
        line = self.reply.readline() if ready else ""
        if not line:
            self.proc.kill()
            why = "timed out" if not ready else f"exited with {self.proc.wait()}"
            raise RuntimeError(f"side {self.side.name}: worker {why}; log: {self.log_path}\n"
                               + _tail(self.log_path))
        return json.loads(line)

    def wait_ready(self, timeout: float) -> dict:
        msg = self._read(timeout)
        if msg["event"] != "ready":
            raise RuntimeError(f"side {self.side.name}: worker failed: {msg.get('error')}; "
                               f"log: {self.log_path}\n" + _tail(self.log_path))
        self.info = msg
        return msg

    def round(self, index: int, timeout: float) -> dict:
        out = self.out_dir / f"round-{index:04d}.json"
        self.proc.stdin.write(json.dumps({"op": "round", "round": index, "out": str(out)}) + "\n")
        self.proc.stdin.flush()
        msg = self._read(timeout)
        if not msg.get("ok") or not out.exists():
            return {"round": index, "error": f"round failed; log: {self.log_path}\n"
                    + _tail(self.log_path)}
        return json.loads(out.read_text())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reply.close()
        self.log.close()


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def side_order(n_sides: int, index: int) -> list[int]:
    """Round ``index``'s order of the sides: rotated each round (two sides: A B, B A, A B...),
    so every side takes every position equally often and a linear drift cancels in pairs."""
    return [(j + index) % n_sides for j in range(n_sides)]


@dataclass
class Run:
    """Everything measured: per round, per side, the worker's round result. JSON-friendly."""

    sides: list[dict]
    rounds: list[dict]
    info: dict  # side name -> the worker's ready message (last generation)
    seconds: float = 0.0
    started: str = ""
    restart_every: int | None = None

    def save(self, path: Path) -> None:
        _write_json(Path(path), asdict(self))

    @classmethod
    def load(cls, path: Path) -> Run:
        return cls(**json.loads(Path(path).read_text()))

    def side_names(self) -> list[str]:
        return [s["name"] for s in self.sides]


def run(sides: Sequence[Side], *, cases: Sequence[str] | None = None, regex: str | None = None,
        rounds: int = DEFAULT_ROUNDS, restart_every: int | None = None,
        progress: Callable[[str], None] | None = None, workdir: Path | None = None,
        ready_timeout: float = 900.0, round_timeout: float = 600.0) -> Run:
    """Measure ``sides`` in ``rounds`` interleaved rounds (``side_order``); every side's
    servers are restarted every ``restart_every`` rounds (a fresh process, as a new job)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must differ, got {names}")
    say = progress or (lambda _msg: None)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rlgauge-gate-")) if own else Path(workdir)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Run([{"name": s.name, "label": s.label or s.name, "tree": str(s.tree),
                "python": s.python, "env": s.env, "settings": asdict(s.settings)}
               for s in sides], [], {}, started=started, restart_every=restart_every)
    # the workers boot from copies: editing the checkout during a long run cannot reach them
    boot = workdir / "runner"
    boot.mkdir(parents=True, exist_ok=True)
    shutil.copy2(GATE_PY, boot / "gate.py")
    shutil.copy2(TIMING_PY, boot / "timing.py")
    servers: list[_Server] = []
    try:
        generation = 0
        for index in range(rounds):
            if not servers or (restart_every and index % restart_every == 0):
                for server in servers:
                    server.close()
                say(f"starting {len(sides)} worker(s) (generation {generation})")
                servers = [_Server(s, cases, regex, workdir, generation, boot) for s in sides]
                for server in servers:  # started together: they import in parallel
                    out.info[server.side.name] = server.wait_ready(ready_timeout)
                generation += 1
            row = {}
            for j in side_order(len(sides), index):
                row[sides[j].name] = servers[j].round(index, round_timeout)
            out.rounds.append(row)
            say(f"round {index + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)")
    finally:
        for server in servers:
            server.close()
        out.seconds = time.perf_counter() - t0
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- comparison


STATS = {"median": 0.5, "q25": 0.25, "q10": 0.10, "min": 0.0}


def quantile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile of ``values`` (linear interpolation; p=0: the minimum)."""
    v = sorted(values)
    k = (len(v) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def round_value(result: dict, case: str, *, normalise: bool, direction_: str,
                clock: str = "wall", stat: str = "median", warmup: bool = False,
                samples: int | None = None) -> float | None:
    """One side's value of ``case`` in one round: a statistic (``STATS``: median, lower
    quartile, 10th percentile, minimum) of its samples -- wall time (``clock="wall"``, the
    benchmark's own timer) or process CPU time (``"cpu"``); track_* values have one kind only
    and always take the median -- optionally of the first ``samples`` only, optionally with
    the warm-up calls; divided by (throughput: multiplied by) the same statistic of the
    round's calibration workload when ``normalise``."""
    entry = (result.get("cases") or {}).get(case)
    if not entry or not entry.get("samples"):
        return None
    cpu = clock == "cpu" and bool(entry.get("cpu"))
    values = entry["cpu"] if cpu else entry["samples"]
    values = list(values[:samples] if samples else values)
    if warmup:
        values = list(entry.get("warmup_cpu" if cpu else "warmup", [])) + values
    value = quantile(values, 0.5 if entry.get("track") else STATS[stat])
    calibration = result.get("calibration_cpu" if cpu else "calibration")
    if normalise and direction_ != "info" and calibration:
        cal = quantile(calibration, STATS[stat])
        value = value / cal if direction_ == "lower" else value * cal
    return value


@dataclass
class Row:
    """One line of the gate's table."""

    case: str
    unit: str
    direction: str
    base: float | None  # median over rounds of the raw round values
    head: float | None
    ratio: float | None  # head / base of the metric (normalised if the run was)
    low: float | None
    high: float | None
    pairs: int
    verdict: str

    @property
    def benchmark(self) -> str:
        return split_case(self.case)[0]

    @property
    def params(self) -> str:
        return split_case(self.case)[1]


def _case_status(run_: Run, side: str, case: str) -> str | None:
    info = run_.info.get(side, {})
    if case in info.get("cases", {}):
        return None
    if case in info.get("skipped", {}):
        return f"skipped: {info['skipped'][case]}"
    if case in info.get("errors", {}):
        return f"error: {info['errors'][case]}"
    return "absent"


def paired_log_ratios(run_: Run, base: str, head: str, case: str, *, normalise: bool,
                      direction_: str, rounds: Iterable[int] | None = None, **value_kw
                      ) -> list[float]:
    """log(head / base) of ``case``'s round values, round by round (interleaved pairs)."""
    out = []
    for i in range(len(run_.rounds)) if rounds is None else rounds:
        row = run_.rounds[i]
        if base not in row or head not in row:
            continue
        a = round_value(row[base], case, normalise=normalise, direction_=direction_, **value_kw)
        b = round_value(row[head], case, normalise=normalise, direction_=direction_, **value_kw)
        if a and b and a > 0 and b > 0:
            out.append(math.log(b / a))
    return out


def compare(run_: Run, base: str, head: str, *, threshold: float = DEFAULT_THRESHOLD,
            confidence: float = DEFAULT_CONFIDENCE, normalise: bool = DEFAULT_NORMALISE,
            clock: str = DEFAULT_CLOCK, stat: str = DEFAULT_STAT,
            rounds: Iterable[int] | None = None) -> list[Row]:
    """One Row per case of either side: ratio head/base, interval, verdict."""
    rounds = None if rounds is None else list(rounds)
    binfo, hinfo = run_.info.get(base, {}), run_.info.get(head, {})
    every = sorted(set(binfo.get("cases", {})) | set(hinfo.get("cases", {})) |
                   set(binfo.get("skipped", {})) | set(hinfo.get("skipped", {})) |
                   set(binfo.get("errors", {})) | set(hinfo.get("errors", {})))
    rows = []
    for case in every:
        meta = hinfo.get("cases", {}).get(case) or binfo.get("cases", {}).get(case) or {}
        unit, dir_ = meta.get("unit", ""), meta.get("direction", "info")
        bstat, hstat = _case_status(run_, base, case), _case_status(run_, head, case)
        medians = []
        for side in (base, head):
            vals = [v for i, r in enumerate(run_.rounds) if (rounds is None or i in rounds)
                    and side in r and (v := round_value(r[side], case, normalise=False,
                                                        direction_=dir_, clock=clock,
                                                        stat=stat)) is not None]
            medians.append(statistics.median(vals) if vals else None)
        if hstat or bstat:
            status = hstat if hstat and hstat != "absent" else bstat
            text = {"absent": "new" if hstat is None else "removed"}.get(status, status)
            if hstat is None and bstat and bstat.startswith(("skipped", "error")):
                text = f"base {bstat}"
            rows.append(Row(case, unit, dir_, *medians, None, None, None, 0, text))
            continue
        d = paired_log_ratios(run_, base, head, case, normalise=normalise, direction_=dir_,
                              rounds=rounds, clock=clock, stat=stat)
        if len(d) < 3:
            rows.append(Row(case, unit, dir_, *medians, None, None, None, len(d),
                            "error: fewer than 3 rounds measured"))
            continue
        est, lo, hi = hodges_lehmann(d, confidence)
        text = verdict(est, lo, hi, threshold, dir_)
        bver = binfo["cases"][case].get("version")
        if bver and bver != hinfo["cases"][case].get("version") and dir_ != "info":
            text = f"{text} (benchmark code changed: not gated)"
        rows.append(Row(case, unit, dir_, *medians, math.exp(est), math.exp(lo), math.exp(hi),
                        len(d), text))
    return rows


def gate_exit_code(rows: Iterable[Row]) -> int:
    """1 when a row is a REGRESSION; 2 when HEAD could not measure a benchmark; 0 otherwise."""
    rows = list(rows)
    if any(r.verdict == "REGRESSION" for r in rows):
        return 1
    if any(r.verdict.startswith("error") for r in rows):
        return 2
    return 0


def fmt_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if unit == "seconds":
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g} {name}"
    return f"{value:.4g} {unit}"


def markdown(rows: Sequence[Row], *, title: str = "", confidence: float = DEFAULT_CONFIDENCE,
             base_label: str = "base", head_label: str = "head") -> str:
    pct = f"{confidence:.0%}"
    lines = [title, ""] if title else []
    lines += [f"| benchmark | params | {base_label} | {head_label} | ratio | {pct} interval | "
              f"verdict |", "|---|---|---:|---:|---:|---|---|"]
    order = {"REGRESSION": 0, "error": 1}
    for r in sorted(rows, key=lambda r: (order.get(r.verdict.split(":")[0], 2), r.case)):
        arrow = " (higher is better)" if r.direction == "higher" else ""
        interval = (f"{r.low:.3f} – {r.high:.3f}" if r.low is not None and
                    math.isfinite(r.low) and math.isfinite(r.high) else
                    "–" if r.low is None else "unbounded")
        ratio = "–" if r.ratio is None else f"{r.ratio:.3f}"
        verdict_ = f"**{r.verdict}**" if r.verdict == "REGRESSION" else r.verdict
        lines.append(f"| {r.benchmark}{arrow} | {r.params} | {fmt_value(r.base, r.unit)} | "
                     f"{fmt_value(r.head, r.unit)} | {ratio} | {interval} | {verdict_} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- git checkouts


WORKTREE = "."  # a rev of "." means the checkout as it is, uncommitted changes included


def git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def resolve(rev: str) -> str:
    """The full commit sha of ``rev`` (or WORKTREE); ValueError naming the bad rev."""
    if rev == WORKTREE:
        return WORKTREE
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except ValueError:
        shallow = (ROOT / ".git" / "shallow").exists()
        hint = (" (this clone is shallow: fetch full history, e.g. `git fetch --unshallow`)"
                if shallow else "")
        raise ValueError(f"unknown git revision {rev!r}{hint}") from None


def default_base(head: str = "HEAD") -> tuple[str, str]:
    """(rev, why): the merge base of ``head`` with main (origin/main), or ``head``'s parent
    when ``head`` is on main already."""
    head_sha = resolve("HEAD" if head == WORKTREE else head)
    for main in ("main", "origin/main", "master", "origin/master"):
        with contextlib.suppress(ValueError):
            base = git("merge-base", head_sha, resolve(main))
            if base != head_sha:
                return base, f"merge base of {head} with {main}"
            if head == WORKTREE:
                return base, f"{main} ({head} = the working tree)"
            return resolve(f"{head_sha}~1"), f"{head} is on {main}: its parent"
    return resolve(f"{head_sha}~1"), "no main branch: the parent of HEAD"


def export_tree(rev: str, dest: Path) -> Path:
    """The tracked files of commit ``rev`` under ``dest`` (git archive: no worktree, no index,
    nothing written into .git). WORKTREE: a copy of the checkout's files as they are now
    (tracked and untracked, not ignored), so that edits made while a run goes on do not
    reach it."""
    if rev == WORKTREE:
        listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
        for rel in filter(None, listed.split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return dest
    import io
    import tarfile

    sha = resolve(rev)
    data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=ROOT,
                          capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


# --------------------------------------------------------------------------- baselines


BASELINE_COLUMNS = ("benchmark", "params", "unit", "direction", "median", "spread",
                    "norm_log_mean", "norm_log_sd", "rounds", "calibration_s", "commit", "date",
                    "torch", "torchrl", "tensordict", "version", "cpu")
#: columns a baseline saved before they existed may lack (``cpu``: the hardware is unknown)
OPTIONAL_BASELINE_COLUMNS = ("cpu",)


def check_baseline_hardware(baseline: Sequence[dict], path: Path, cpu: str) -> str:
    """A note on the baseline's hardware, or ValueError (exit 2) when it was measured on
    another CPU model than ``cpu``: calibration divides out the machine's speed on the day,
    not a different micro-architecture, so a ratio against it would measure the CPUs."""
    stored = sorted({r.get("cpu") or "" for r in baseline} - {""})
    if not stored:
        return (f"The baseline does not record its CPU (saved before rlgauge recorded "
                f"hardware); this machine: {cpu}.")
    if stored != [cpu]:
        raise ValueError(f"baseline {str(path)!r} was measured on {', '.join(stored)}; this "
                         f"machine is {cpu}: a comparison across CPU models would measure the "
                         f"hardware; save one here with `nox -s regress -- --save-baseline "
                         f"--baseline PATH`")
    return f"Baseline and this run: {cpu}."


def baseline_rows(run_: Run, side: str, commit: str) -> list[dict]:
    """Per case: median and relative IQR of the raw round values; mean and SD of the log of
    the calibration-normalised ones (what ``compare_baseline`` tests)."""
    info = run_.info[side]
    cal_key = "calibration_cpu" if DEFAULT_CLOCK == "cpu" else "calibration"
    cal = [quantile(r[side][cal_key], STATS[DEFAULT_STAT]) for r in run_.rounds
           if side in r and r[side].get(cal_key)]
    rows = []
    for case, meta in sorted(info["cases"].items()):
        dir_ = meta["direction"]
        kw = {"direction_": dir_, "clock": DEFAULT_CLOCK, "stat": DEFAULT_STAT}
        raw = [v for r in run_.rounds if side in r and (v := round_value(
            r[side], case, normalise=False, **kw)) is not None]
        norm = [math.log(v) for r in run_.rounds if side in r and (v := round_value(
            r[side], case, normalise=True, **kw)) is not None and v > 0]
        if len(raw) < 2 or len(norm) < 2:
            continue
        q = statistics.quantiles(raw, n=4, method="inclusive")
        name, params = split_case(case)
        rows.append({
            "benchmark": name, "params": params, "unit": meta["unit"], "direction": dir_,
            "median": statistics.median(raw), "spread": (q[2] - q[0]) / statistics.median(raw),
            "norm_log_mean": statistics.fmean(norm), "norm_log_sd": statistics.stdev(norm),
            "rounds": len(norm), "calibration_s": statistics.median(cal) if cal else "",
            "commit": commit, "date": time.strftime("%Y-%m-%d"),
            "torch": info["versions"].get("torch", ""),
            "torchrl": info["versions"].get("torchrl", ""),
            "tensordict": info["versions"].get("tensordict", ""), "version": meta["version"],
            "cpu": cpu_model()})
    return rows


def save_baseline(rows: Sequence[dict], path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=BASELINE_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                             for k, v in row.items()})
    os.replace(tmp, path)


def load_baseline(path: Path) -> list[dict]:
    """The rows of a baseline CSV, numbers as floats; ValueError naming a bad file."""
    import csv

    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read baseline {str(path)!r}: {exc.strerror}; make one with "
                         f"`nox -s regress -- --save-baseline`") from None
    missing = (set(BASELINE_COLUMNS) - set(OPTIONAL_BASELINE_COLUMNS)
               - set(rows[0] if rows else BASELINE_COLUMNS))
    if missing:
        raise ValueError(f"baseline {str(path)!r} lacks columns {sorted(missing)}")
    for row in rows:
        for key in ("median", "spread", "norm_log_mean", "norm_log_sd"):
            row[key] = float(row[key])
        row["rounds"] = int(row["rounds"])
    return rows


def compare_baseline(run_: Run, side: str, baseline: Sequence[dict], *,
                     threshold: float = DEFAULT_THRESHOLD,
                     confidence: float = DEFAULT_CONFIDENCE) -> list[Row]:
    """Rows for ``side`` of ``run_`` against a stored baseline: calibration-normalised values
    (machine speed on the day divides out), Welch's interval on the log scale."""
    current = {f"{r['benchmark']}({r['params']})" if r["params"] else r["benchmark"]: r
               for r in baseline_rows(run_, side, "")}
    stored = {f"{r['benchmark']}({r['params']})" if r["params"] else r["benchmark"]: r
              for r in baseline}
    rows = []
    for case in sorted(set(current) | set(stored)):
        b, h = stored.get(case), current.get(case)
        ref = h or b
        if b is None or h is None:
            status = _case_status(run_, side, case) if h is None else None
            text = "new" if b is None else (status if status and status != "absent"
                                            else "removed")
            rows.append(Row(case, ref["unit"], ref["direction"], b and b["median"],
                            h and h["median"], None, None, None, 0, text))
            continue
        est, lo, hi = welch_interval(b["norm_log_mean"], b["norm_log_sd"], b["rounds"],
                                     h["norm_log_mean"], h["norm_log_sd"], h["rounds"],
                                     confidence)
        text = verdict(est, lo, hi, threshold, h["direction"])
        if b["version"] and b["version"] != h["version"] and h["direction"] != "info":
            text = f"{text} (benchmark code changed: not gated)"
        rows.append(Row(case, h["unit"], h["direction"], b["median"], h["median"],
                        math.exp(est), math.exp(lo), math.exp(hi), h["rounds"], text))
    return rows


def machine_name() -> str:
    import platform

    return os.environ.get("RLGAUGE_MACHINE") or platform.node() or "local"


def cpu_model() -> str:
    from harness import devices

    return devices.cpu_model()


# --------------------------------------------------------------------------- validity


@dataclass(frozen=True)
class Method:
    """How a round's value is made: the clock, the statistic of the samples, calibration."""

    clock: str = DEFAULT_CLOCK
    stat: str = DEFAULT_STAT
    normalise: bool = DEFAULT_NORMALISE

    def __str__(self) -> str:
        return f"{self.clock}/{self.stat}{'/calibrated' if self.normalise else ''}"

    def kw(self) -> dict:
        return {"clock": self.clock, "stat": self.stat, "normalise": self.normalise}


METHODS = tuple(Method(c, s, n) for c in ("cpu", "wall") for s in ("median", "q25", "q10", "min")
                for n in (False, True))
VALIDITY_SIZES = (0.05, 0.10, 0.20)
THRESHOLDS = (0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.10)
CONFIDENCES = (0.95, 0.99)
GOAL_FALSE_ALARMS = 0.01  # suite-wide A/A: share of gate runs with any alarm
GOAL_DETECTION = 0.95  # share of 10% slowdowns flagged


def validity_sides(tree: Path, sizes: Sequence[float] = VALIDITY_SIZES, regex: str = ".",
                   settings: Settings | None = None) -> list[Side]:
    """A and A' (the same checkout twice) and one side per injected slowdown."""
    settings = settings or Settings()
    sides = [Side("A", tree, settings=settings), Side("A'", tree, settings=settings)]
    sides += [Side(f"+{s:.0%}", tree, env={INJECT_ENV: f"{regex}={s}"}, settings=settings)
              for s in sizes]
    return sides


def _per_round(run_: Run, base: str, head: str, case: str, direction_: str, method: Method
               ) -> list[float | None]:
    out = []
    for row in run_.rounds:
        a = round_value(row.get(base, {}), case, direction_=direction_, **method.kw())
        b = round_value(row.get(head, {}), case, direction_=direction_, **method.kw())
        out.append(math.log(b / a) if a and b and a > 0 and b > 0 else None)
    return out


def is_alarm(est: float, lo: float, hi: float, threshold: float, direction_: str) -> bool:
    return verdict(est, lo, hi, threshold, direction_) == "REGRESSION"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a rate k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Rates:
    """Alarm counts of one (method, confidence, threshold) over a set of trials."""

    trials: int = 0
    aa_alarms: int = 0  # (trial, case) A/A alarms
    aa_cells: int = 0
    aa_runs_alarmed: int = 0  # trials with any A/A alarm
    detected: dict = field(default_factory=dict)  # size -> [alarms, cells]
    per_case: dict = field(default_factory=dict)  # case -> {"aa": [k, n], size: [k, n]}

    @property
    def fa_case(self) -> float:
        return self.aa_alarms / self.aa_cells if self.aa_cells else float("nan")

    @property
    def fa_suite(self) -> float:
        return self.aa_runs_alarmed / self.trials if self.trials else float("nan")

    def detection(self, size: float) -> float:
        k, n = self.detected.get(size, (0, 0))
        return k / n if n else float("nan")


def trial_sets(n_rounds: int, block: int, resamples: int, seed: int = 0
               ) -> tuple[list[list[int]], list[list[int]]]:
    """(disjoint blocks -- each a fresh set of servers, i.e. an independent gate run --,
    resampled trials: ``block`` rounds drawn without replacement from all of them)."""
    blocks = [list(range(b * block, (b + 1) * block)) for b in range(n_rounds // block)]
    rng = random.Random(seed)
    resampled = [sorted(rng.sample(range(n_rounds), block)) for _ in range(resamples)]
    return blocks, resampled


def validity_rates(run_: Run, *, block: int, sizes: Sequence[float], methods=METHODS,
                   confidences=CONFIDENCES, thresholds=THRESHOLDS, resamples: int = 2000,
                   seed: int = 0) -> dict:
    """{(kind, method, confidence, threshold): Rates}, kind "blocks" or "resampled"."""
    info = run_.info["A"]
    cases = sorted(info["cases"])
    gated = [c for c in cases if info["cases"][c]["direction"] != "info"]
    injectable = [c for c in gated if info["cases"][c]["kind"] == "time"]
    blocks, resampled = trial_sets(len(run_.rounds), block, resamples, seed)
    out: dict = {}
    for method in methods:
        series = {}
        for case in gated:
            dir_ = info["cases"][case]["direction"]
            series[case, "aa"] = _per_round(run_, "A", "A'", case, dir_, method)
            for s in sizes:
                if case in injectable:
                    series[case, s] = _per_round(run_, "A", f"+{s:.0%}", case, dir_, method)
        for conf in confidences:
            for kind, trials in (("blocks", blocks), ("resampled", resampled)):
                rates = {t: Rates() for t in thresholds}
                for trial in trials:
                    alarmed = dict.fromkeys(thresholds, False)
                    for (case, comp), d_all in series.items():
                        d = [d_all[i] for i in trial if d_all[i] is not None]
                        if len(d) < 3:
                            continue
                        est, lo, hi = hodges_lehmann(d, conf)
                        dir_ = info["cases"][case]["direction"]
                        for t in thresholds:
                            alarm = is_alarm(est, lo, hi, t, dir_)
                            r = rates[t]
                            cell = r.per_case.setdefault(case, {}).setdefault(comp, [0, 0])
                            cell[0] += alarm
                            cell[1] += 1
                            if comp == "aa":
                                r.aa_alarms += alarm
                                r.aa_cells += 1
                                alarmed[t] = alarmed[t] or alarm
                            else:
                                det = r.detected.setdefault(comp, [0, 0])
                                det[0] += alarm
                                det[1] += 1
                    for t in thresholds:
                        rates[t].trials += 1
                        rates[t].aa_runs_alarmed += alarmed[t]
                for t in thresholds:
                    out[kind, method, conf, t] = rates[t]
    return out


def chosen_false_alarms(rates: dict, key: tuple) -> float:
    """The suite-wide A/A false-alarm rate that ``choose_defaults`` holds ``key`` (method,
    confidence, threshold) to: the resampled trials' rate, or the block trials' where higher.
    Resampling assumes the rounds are exchangeable; fresh workers per block can make them not:
    on the idle VM (results/gate/validity-vm-idle.md) calibrated q10 at a 2% threshold alarmed
    in 0.9% of resampled trials but in 3 of 12 independent blocks."""
    res = rates["resampled", *key].fa_suite
    blocks = rates.get(("blocks", *key))
    if blocks is None or not blocks.trials:
        return res
    return max(res, blocks.fa_suite)


def choose_defaults(rates: dict, sizes: Sequence[float]) -> tuple[tuple, bool]:
    """The (method, confidence, threshold) to ship, and whether it meets both goals.
    Detection is read from the resampled trials, false alarms from ``chosen_false_alarms``
    (resampled, or the independent blocks where those alarmed more). Among the candidates
    meeting both goals: the best detection of the smallest slowdown, then the fewest false
    alarms, then the largest threshold. Otherwise: the best 10% detection with suite-wide
    false alarms within the goal, else the fewest false alarms."""
    res = {k[1:]: v for k, v in rates.items() if k[0] == "resampled"}
    fa = {k: chosen_false_alarms(rates, k) for k in res}
    ten = 0.10 if 0.10 in sizes else sorted(sizes)[len(sizes) // 2]
    smallest = min(sizes)
    meets = [k for k, r in res.items()
             if fa[k] <= GOAL_FALSE_ALARMS and r.detection(ten) >= GOAL_DETECTION]
    if meets:
        return max(meets, key=lambda k: (round(res[k].detection(smallest), 3), -fa[k],
                                         k[2])), True
    ok_fa = [k for k in res if fa[k] <= GOAL_FALSE_ALARMS]
    if ok_fa:
        return max(ok_fa, key=lambda k: (res[k].detection(ten), k[2])), False
    return min(res, key=lambda k: (fa[k], -res[k].detection(ten))), False


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def _kn(cell) -> str:
    return f"{cell[0]}/{cell[1]}" if cell and cell[1] else "–"


def _conditions(run_: Run) -> list[str]:
    loads = [r.get("loadavg", [float("nan")])[0] for row in run_.rounds for r in row.values()
             if isinstance(r, dict) and r.get("loadavg")]
    a = run_.info.get(run_.side_names()[0], {})
    lines = [f"- machine `{machine_name()}`, {os.cpu_count()} CPUs, started {run_.started}, "
             f"{run_.seconds / 60:.1f} min",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in a.get("versions", {}).items()),
             f"- worker pinning: {a.get('pinned')}"]
    if loads:
        q = statistics.quantiles(loads, n=4) if len(loads) > 1 else [loads[0]] * 3
        lines.append(f"- 1-min load average during the rounds: min {min(loads):.1f}, median "
                     f"{q[1]:.1f}, max {max(loads):.1f} (other jobs were running: the load is "
                     f"theirs plus ours, which keeps at most 1 CPU busy)")
    return lines


def _asv_style_false_alarms(run_: Run, trials: list[list[int]], threshold: float) -> dict:
    """A/A alarms of a sample-level test in asv's manner -- every sample of the trial's
    rounds pooled per side, Mann-Whitney U (p < 0.05, two-sided), median ratio beyond the
    threshold -- wall clock, for comparison with the round-level test."""
    from scipy.stats import mannwhitneyu

    info = run_.info["A"]
    cases = [c for c in sorted(info["cases"]) if info["cases"][c]["kind"] == "time"]
    alarms, cells, runs = 0, 0, 0
    for trial in trials:
        any_alarm = False
        for case in cases:
            a = [x for i in trial for x in run_.rounds[i]["A"]["cases"].get(case, {})
                 .get("samples", [])]
            b = [x for i in trial for x in run_.rounds[i]["A'"]["cases"].get(case, {})
                 .get("samples", [])]
            if len(a) < 3 or len(b) < 3:
                continue
            p = mannwhitneyu(a, b, alternative="two-sided").pvalue
            alarm = p < 0.05 and statistics.median(b) / statistics.median(a) > 1 + threshold
            alarms += alarm
            cells += 1
            any_alarm = any_alarm or alarm
        runs += any_alarm
    return {"fa_case": alarms / cells if cells else float("nan"),
            "fa_suite": runs / len(trials) if trials else float("nan")}


def validity_report(run_: Run, *, block: int, sizes: Sequence[float] = VALIDITY_SIZES,
                    resamples: int = 2000, command: str = "") -> tuple[str, tuple, bool]:
    """The Markdown report of a validity run, and the chosen (method, confidence, threshold)."""
    rates = validity_rates(run_, block=block, sizes=sizes, resamples=resamples)
    (method, conf, thr), met = choose_defaults(rates, sizes)
    info = run_.info["A"]
    blocks_r = rates["blocks", method, conf, thr]
    res_r = rates["resampled", method, conf, thr]
    n_blocks = len(run_.rounds) // block
    L = [f"# Regression gate validity: machine `{machine_name()}`", "",
         f"Measured with `{command}`." if command else "", "",
         "## Conditions", "", *_conditions(run_),
         f"- {len(run_.rounds)} interleaved rounds of the sides "
         f"{', '.join(run_.side_names())} (A and A' are the same checkout; `+x%` injects x% "
         f"extra work per call through `RLGAUGE_INJECT_SLOWDOWN`, bench/common.py); workers "
         f"restarted every {block} rounds, so each block of {block} rounds is an independent "
         f"gate run (fresh processes): **{n_blocks} block trials**; plus {resamples} "
         f"**resampled trials** of {block} rounds drawn from all {len(run_.rounds)} (they "
         f"assume rounds are exchangeable; the block trials check that).", "",
         "## Chosen defaults", "",
         f"- round value: **{method}** (clock / statistic of the round's samples / "
         f"calibration-normalised or not); interval: Hodges-Lehmann, **{conf:.0%}**; "
         f"threshold: **{thr:.1%}**; {block} rounds",
         f"- goals (suite-wide A/A false alarms ≤ {GOAL_FALSE_ALARMS:.0%} of gate runs, 10% "
         f"slowdown detected in ≥ {GOAL_DETECTION:.0%} of trials): "
         f"**{'met' if met else 'NOT met'}** (detection on the resampled trials; false alarms "
         f"on the resampled trials and on the block trials, whichever is higher: resampling "
         f"hides block-to-block effects)", "",
         "| | block trials | 95% (Wilson) | resampled trials |", "|---|---:|---|---:|",
         f"| A/A false alarms per benchmark and run | "
         f"{_kn([blocks_r.aa_alarms, blocks_r.aa_cells])} "
         f"| {_pct(wilson(blocks_r.aa_alarms, blocks_r.aa_cells)[0])} – "
         f"{_pct(wilson(blocks_r.aa_alarms, blocks_r.aa_cells)[1])} | {_pct(res_r.fa_case)} |",
         f"| A/A gate runs with any false alarm (suite-wide) | "
         f"{_kn([blocks_r.aa_runs_alarmed, blocks_r.trials])} | "
         f"{_pct(wilson(blocks_r.aa_runs_alarmed, blocks_r.trials)[0])} – "
         f"{_pct(wilson(blocks_r.aa_runs_alarmed, blocks_r.trials)[1])} | "
         f"{_pct(res_r.fa_suite)} |"]
    for s in sizes:
        k, n = blocks_r.detected.get(s, (0, 0))
        lo, hi = wilson(k, n)
        L.append(f"| +{s:.0%} slowdowns detected | {k}/{n} | {_pct(lo)} – {_pct(hi)} | "
                 f"{_pct(res_r.detection(s))} |")
    L += ["", "### Per benchmark (chosen defaults)", "",
          "Realised effect: the ratio of the injected side to A over all rounds (the knob adds "
          "x% of the call's own CPU time; what the benchmark's clock sees can differ).", "",
          "| benchmark | params | A/A alarms (blocks / resampled) | "
          + " | ".join(f"+{s:.0%} detected (blocks / resampled), realised" for s in sizes)
          + " |", "|---|---|---|" + "---|" * len(sizes)]
    for case in sorted(info["cases"]):
        meta = info["cases"][case]
        if meta["direction"] == "info":
            continue
        name, params = split_case(case)
        bc, rc = blocks_r.per_case.get(case, {}), res_r.per_case.get(case, {})
        aa = _pct(rc["aa"][0] / rc["aa"][1]) if rc.get("aa") else "–"
        cells = [f"{_kn(bc.get('aa'))} / {aa}"]
        for s in sizes:
            if s not in bc:
                cells.append("not injected (track_*: the benchmark times itself)")
                continue
            d = [x for x in _per_round(run_, "A", f"+{s:.0%}", case, meta["direction"], method)
                 if x is not None]
            real = math.exp(hodges_lehmann(d, conf)[0]) if d else float("nan")
            cells.append(f"{_kn(bc[s])} / {_pct(rc[s][0] / rc[s][1])}, ×{real:.3f}")
        L.append(f"| {name} | {params} | " + " | ".join(cells) + " |")
    L += ["", "## Threshold sweep (chosen method and confidence, resampled trials)", "",
          "| threshold | A/A alarms per benchmark | A/A runs with an alarm | "
          + " | ".join(f"+{s:.0%} detected" for s in sizes) + " |",
          "|---:|---:|---:|" + "---:|" * len(sizes)]
    for t in THRESHOLDS:
        r = rates["resampled", method, conf, t]
        L.append(f"| {t:.1%} | {_pct(r.fa_case)} | {_pct(r.fa_suite)} | "
                 + " | ".join(_pct(r.detection(s)) for s in sizes) + " |")
    L += ["", "## Methods compared (resampled trials; for each, the threshold that the "
          "selection rule picks)", "",
          "Round value = clock (process CPU time or wall time) / statistic of the round's "
          "samples / divided by the same-round calibration workload or not.", "",
          "| method | confidence | threshold | A/A runs with an alarm (resampled) | "
          "(blocks) | " + " | ".join(f"+{s:.0%} detected" for s in sizes) + " |",
          "|---|---:|---:|---:|---:|" + "---:|" * len(sizes)]
    for m in METHODS:
        for c in CONFIDENCES:
            sub = {k: v for k, v in rates.items() if k[1] == m and k[2] == c}
            (mm, cc, tt), _ok = choose_defaults(sub, sizes)
            r = rates["resampled", mm, cc, tt]
            b = rates["blocks", mm, cc, tt]
            L.append(f"| {m} | {c:.0%} | {tt:.1%} | {_pct(r.fa_suite)} | "
                     f"{b.aa_runs_alarmed}/{b.trials} | "
                     + " | ".join(_pct(r.detection(s)) for s in sizes) + " |")
    L += ["", "## Spread of the A/A round-pair log ratio by method (SD over rounds)", "",
          "| benchmark | params | " + " | ".join(str(m) for m in METHODS) + " |",
          "|---|---|" + "---:|" * len(METHODS)]
    for case in sorted(info["cases"]):
        meta = info["cases"][case]
        if meta["direction"] == "info" or meta["kind"] != "time":
            continue
        name, params = split_case(case)
        sds = []
        for m in METHODS:
            d = [x for x in _per_round(run_, "A", "A'", case, meta["direction"], m)
                 if x is not None]
            sds.append(f"{statistics.stdev(d):.3f}" if len(d) > 1 else "–")
        L.append(f"| {name} | {params} | " + " | ".join(sds) + " |")
    L += ["", f"## Rounds per gate run ({method}, {conf:.0%}, resampled trials)", "",
          "How the error rates move with the number of interleaved rounds (each round costs "
          "about one setup plus a few hundred ms of samples per benchmark and side).", "",
          "| rounds | threshold | A/A runs with an alarm | "
          + " | ".join(f"+{s:.0%} detected" for s in sizes) + " |",
          "|---:|---:|---:|" + "---:|" * len(sizes)]
    for size_r in (6, 10, 15, 20):
        if size_r > len(run_.rounds) // 2:
            continue
        sweep = validity_rates(run_, block=size_r, sizes=sizes, methods=(method,),
                               confidences=(conf,), thresholds=(thr,),
                               resamples=min(resamples, 1000), seed=size_r)
        r = sweep["resampled", method, conf, thr]
        L.append(f"| {size_r} | {thr:.1%} | {_pct(r.fa_suite)} | "
                 + " | ".join(_pct(r.detection(s)) for s in sizes) + " |")
    blocks, resampled = trial_sets(len(run_.rounds), block, min(resamples, 500))
    with contextlib.suppress(ImportError):
        asv_b = _asv_style_false_alarms(run_, blocks, thr)
        asv_r = _asv_style_false_alarms(run_, resampled, thr)
        L += ["", "## The same A/A trials under a sample-level test (asv's approach)", "",
              f"All wall-clock samples of a trial's rounds pooled per side, Mann-Whitney U "
              f"p < 0.05 and median ratio > {1 + thr:.3f}: false alarms per benchmark and run "
              f"{_pct(asv_b['fa_case'])} (blocks) / {_pct(asv_r['fa_case'])} (resampled); "
              f"runs with any alarm {_pct(asv_b['fa_suite'])} / {_pct(asv_r['fa_suite'])}. "
              f"Samples within one process are not independent draws, so a test that treats "
              f"them as such over-states significance; the gate tests one value per round."]
    # process-level bias: do block means scatter more than rounds within blocks predict?
    L += ["", "## Between-process bias (chosen method)", "",
          "SD of the A/A block estimates (median log ratio of each block) against what the "
          "within-block scatter predicts (SD of the round log ratios / √rounds, ×1.25 for a "
          "median); a ratio well above 1 means each set of worker processes carries its own "
          "offset, which more rounds in the same processes cannot remove.", "",
          "| benchmark | params | SD of block estimates | predicted | ratio |",
          "|---|---|---:|---:|---:|"]
    for case in sorted(info["cases"]):
        meta = info["cases"][case]
        if meta["direction"] == "info":
            continue
        d_all = _per_round(run_, "A", "A'", case, meta["direction"], method)
        ests, within = [], []
        for blk in blocks:
            d = [d_all[i] for i in blk if d_all[i] is not None]
            if len(d) > 2:
                ests.append(statistics.median(d))
                within.append(statistics.stdev(d))
        if len(ests) > 2:
            name, params = split_case(case)
            pred = 1.25 * statistics.fmean(within) / math.sqrt(block)
            sd = statistics.stdev(ests)
            L.append(f"| {name} | {params} | {sd:.4f} | {pred:.4f} | {sd / pred:.2f} |")
    return "\n".join(L) + "\n", (method, conf, thr), met


# --------------------------------------------------------------------------- noise study


NOISE_SIDES = (("pinned", Settings()), ("pinned'", Settings()),
               ("1 thread, any CPU", Settings(cpu=None)),
               ("default threads, any CPU", Settings(threads=None, cpu=None)))


def robust_sd(values: Sequence[float]) -> float:
    """1.4826 x the median absolute deviation (the SD for normal data, robust to outliers)."""
    m = statistics.median(values)
    return 1.4826 * statistics.median(abs(v - m) for v in values)


def noise_report(run_: Run, *, window: int = DEFAULT_ROUNDS, command: str = "") -> str:
    """Which noise controls reduce the spread: per-side spread across rounds (threads,
    affinity), and the spread of the A/A gate estimate (pinned vs pinned') when one control is
    removed (calibration, clock, statistic, warm-up, repeats, interleaving)."""
    info = run_.info[NOISE_SIDES[0][0]]
    cases = [c for c in sorted(info["cases"]) if info["cases"][c]["kind"] == "time"]
    base = Method()
    L = [f"# Regression gate noise controls: machine `{machine_name()}`", "",
         f"Measured with `{command}`." if command else "", "", "## Conditions", "",
         *_conditions(run_),
         "- sides, interleaved each round: " + "; ".join(
             f"**{n}** (threads {s.threads or 'torch default'}, CPU "
             f"{'pinned' if s.cpu is not None else 'any'})" for n, s in NOISE_SIDES), "",
         f"## Between-round spread per side ({base}; robust SD of log round value, %)", "",
         "Threads and CPU affinity are process settings, so each has its own side; lower is "
         "better. `median` = the side's median round value relative to `pinned`.", "",
         "| benchmark | params | " + " | ".join(n for n, _ in NOISE_SIDES) + " |",
         "|---|---|" + "---:|" * len(NOISE_SIDES)]
    summary: dict[str, list[float]] = {n: [] for n, _ in NOISE_SIDES}
    for case in cases:
        dir_ = info["cases"][case]["direction"]
        cells, ref = [], None
        for name, _ in NOISE_SIDES:
            vals = [v for row in run_.rounds if (v := round_value(
                row.get(name, {}), case, direction_=dir_, **base.kw()))]
            if len(vals) < 3:
                cells.append("–")
                continue
            sd = robust_sd([math.log(v) for v in vals])
            summary[name].append(sd)
            med = statistics.median(vals)
            ref = ref or med
            cells.append(f"{100 * sd:.1f} (median ×{med / ref:.2f})")
        n, p = split_case(case)
        L.append(f"| {n} | {p} | " + " | ".join(cells) + " |")
    L.append("| **median over benchmarks** | | " + " | ".join(
        f"**{100 * statistics.median(v):.1f}**" if v else "–" for v in summary.values()) + " |")
    first = NOISE_SIDES[0][0]
    L += ["", f"## What warm-up protects against ({first}: first warm-up call / median of the "
          f"round's samples, median over rounds)", "",
          "setup() already calls each benchmark once (the suite's convention); these are the "
          "calls after that one.", "",
          "| benchmark | params | 1st call, wall | 1st call, CPU | last warm-up call, wall |",
          "|---|---|---:|---:|---:|"]
    for case in cases:
        r1, r1c, rl = [], [], []
        for row in run_.rounds:
            e = (row.get(first, {}).get("cases") or {}).get(case) or {}
            if e.get("warmup") and e.get("samples"):
                r1.append(e["warmup"][0] / statistics.median(e["samples"]))
                rl.append(e["warmup"][-1] / statistics.median(e["samples"]))
                if e.get("warmup_cpu") and e.get("cpu"):
                    r1c.append(e["warmup_cpu"][0] / statistics.median(e["cpu"]))
        if r1:
            n, p = split_case(case)
            cpu_first = f"×{statistics.median(r1c):.2f}" if r1c else "–"
            L.append(f"| {n} | {p} | ×{statistics.median(r1):.2f} | {cpu_first} | "
                     f"×{statistics.median(rl):.2f} |")
    variants = {
        f"as shipped ({base})": (base, {}, False),
        "+ calibration normalisation": (Method(base.clock, base.stat, True), {}, False),
        "wall clock instead of CPU time": (Method("wall", base.stat, base.normalise), {},
                                           False),
        "median instead of " + base.stat: (Method(base.clock, "median", base.normalise), {},
                                           False),
        "no warm-up (warm-up calls counted)": (base, {"warmup": True}, False),
        "5 samples per round instead of up to 25": (base, {"samples": 5}, False),
        "blocked instead of interleaved": (base, {}, True),
    }
    a, b = NOISE_SIDES[0][0], NOISE_SIDES[1][0]
    L += ["", f"## Spread of the A/A log ratio per round pair ({a} vs {b}; SD over the pairs, "
          f"%)", "",
          "What the gate's interval is built from: one log ratio per round. Each row removes or "
          f"changes one control; lower is better. *Blocked* pairs round i of {a} with round "
          f"i + {window} of {b} (the two sides measured {window} rounds apart, as when all "
          f"BASE rounds run before all HEAD rounds) instead of the same round.", "",
          "| variant | " + " | ".join(f"{split_case(c)[0].split('.', 1)[1]} "
                                     f"({split_case(c)[1]})" for c in cases) + " | median |",
          "|---|" + "---:|" * (len(cases) + 1)]
    for label, (method, extra, blocked) in variants.items():
        cells, sds = [], []
        for case in cases:
            dir_ = info["cases"][case]["direction"]
            va = [round_value(r.get(a, {}), case, direction_=dir_, **method.kw(), **extra)
                  for r in run_.rounds]
            vb = [round_value(r.get(b, {}), case, direction_=dir_, **method.kw(), **extra)
                  for r in run_.rounds]
            if blocked:
                vb = vb[window:]
            d = [math.log(y / x) for x, y in zip(va, vb, strict=False) if x and y]
            sd = statistics.stdev(d) if len(d) > 2 else float("nan")
            sds.append(sd)
            cells.append(f"{100 * sd:.2f}")
        finite = [x for x in sds if x == x]
        L.append(f"| {label} | " + " | ".join(cells) + " | "
                 + (f"**{100 * statistics.median(finite):.2f}**" if finite else "–") + " |")
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- command line


def _short(sha: str) -> str:
    return "working tree" if sha == WORKTREE else sha[:10]


def _say(msg: str) -> None:
    print(f"[gate] {msg}", file=sys.stderr, flush=True)


def _settings(args) -> Settings:
    return Settings(budget_s=args.budget)


def _selection(args, default: Sequence[str] = GATE_CASES) -> dict:
    return {"regex": args.bench} if args.bench else {"cases": default}


def _emit(text: str, out: Path | None) -> None:
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        _say(f"written: {out}")


def cmd_regress(args) -> int:
    """Measure BASE and HEAD interleaved (or HEAD against the stored baseline)."""
    machine = args.machine or machine_name()
    baseline_path = args.baseline or ROOT / "results" / "baseline" / f"{machine}.csv"
    revs = list(args.revs)
    single = args.save_baseline or args.against_baseline
    if single and len(revs) > 1:
        raise ValueError("--save-baseline/--against-baseline measure one revision; got "
                         f"{len(revs)}: {' '.join(revs)}")
    if len(revs) > 2:
        raise ValueError(f"at most BASE and HEAD; got {len(revs)} revisions: {' '.join(revs)}")
    baseline = load_baseline(baseline_path) if args.against_baseline else None
    hardware = (check_baseline_hardware(baseline, baseline_path, cpu_model())
                if baseline is not None else "")
    method = Method(args.clock, args.stat, args.normalise)
    workdir = Path(tempfile.mkdtemp(prefix="rlgauge-gate-"))
    try:
        if single:
            head = resolve(revs[0] if revs else "HEAD")
            sides = [Side("head", export_tree(head, workdir / "head"), label=_short(head),
                          settings=_settings(args))]
        else:
            head_rev = revs[1] if len(revs) == 2 else "HEAD"
            head = resolve(head_rev)
            if revs:
                base, why = resolve(revs[0]), "given"
            else:
                base, why = default_base(head_rev)
            _say(f"BASE {_short(base)} ({why}), HEAD {_short(head)} ({head_rev})")
            sides = [Side("base", export_tree(base, workdir / "base"), label=_short(base),
                          settings=_settings(args)),
                     Side("head", export_tree(head, workdir / "head"), label=_short(head),
                          settings=_settings(args))]
        result = run(sides, **_selection(args), rounds=args.rounds, progress=_say,
                     workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.raw:
        result.save(args.raw)
    if not args.bench:  # a renamed benchmark must not drop out of the gate unnoticed
        info = result.info["head"]
        seen = set(info["cases"]) | set(info["skipped"]) | set(info["errors"])
        for cid in sorted(set(GATE_CASES) - seen):
            _say(f"warning: gate case not found in {_short(head)}: {cid}")
    minutes = f"{result.seconds / 60:.1f} min"
    if args.save_baseline:
        commit = head if head != WORKTREE else resolve("HEAD") + "+dirty"  # uncommitted edits
        rows = baseline_rows(result, "head", commit)
        save_baseline(rows, baseline_path)
        _emit(f"baseline of {_short(head)} on `{machine}`: {len(rows)} benchmarks, "
              f"{args.rounds} rounds, {minutes} -> {baseline_path}", None)
        return 0
    if baseline is not None:
        rows = compare_baseline(result, "head", baseline, threshold=args.threshold,
                                confidence=args.confidence)
        commits = sorted({r["commit"][:10] for r in baseline})
        title = (f"## Regression gate: {_short(head)} against the stored baseline "
                 f"({', '.join(commits)}, {baseline_path.name})\n\n{args.rounds} rounds, "
                 f"calibration-normalised, Welch {args.confidence:.0%} interval, threshold "
                 f"{args.threshold:.0%}; {minutes}. A stored baseline was measured on another "
                 f"day: advisory; the same-job A/B run is the gate. {hardware}")
        _emit(markdown(rows, title=title, confidence=args.confidence, base_label="baseline",
                       head_label=_short(head)), args.out)
        return gate_exit_code(rows)
    rows = compare(result, "base", "head", threshold=args.threshold,
                   confidence=args.confidence, **method.kw())
    title = (f"## Regression gate: {_short(base)} → {_short(head)}\n\n{args.rounds} interleaved "
             f"rounds, round value {method}, Hodges-Lehmann {args.confidence:.0%} interval, "
             f"fails on a significant slowdown > {args.threshold:.0%}; {minutes}.")
    _emit(markdown(rows, title=title, confidence=args.confidence, base_label=_short(base),
                   head_label=_short(head)), args.out)
    failed = [r.case for r in rows if r.verdict == "REGRESSION"]
    if failed:
        _say(f"REGRESSION in {len(failed)} benchmark(s): {'; '.join(failed)}")
    return gate_exit_code(rows)


def _command(part: str, argv: Sequence[str]) -> str:
    """The nox command that reproduces a run (file arguments left out)."""
    keep, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in {"--raw", "--out", "--from"}:
            skip = True
        elif not arg.startswith(("--raw=", "--out=", "--from=")):
            keep.append(arg)
    return f"nox -s gate_validity -- {' '.join([part, *keep])}"


def _raw_path(args, part: str) -> Path:
    """--raw, or a file under the rlgauge cache (re-analyse it with --from)."""
    if args.raw:
        return args.raw
    root = Path(os.environ.get("RLGAUGE_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlgauge")
    return root / "gate" / f"{part}-{machine_name()}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _measured(args, part: str, measure) -> Run:
    """The Run to analyse: loaded from ``--from``, else ``measure(tree, tmpdir)`` on an export
    of the working tree, saved to ``_raw_path`` so that it can be re-analysed."""
    if args.from_raw:
        return Run.load(args.from_raw)
    with tempfile.TemporaryDirectory(prefix="rlgauge-gate-") as tmp:
        result = measure(export_tree(WORKTREE, Path(tmp) / "tree"), Path(tmp))
    raw = _raw_path(args, part)
    result.save(raw)
    _say(f"measurements: {raw} (re-analyse: python -m harness.gate {part} --from it)")
    return result


def cmd_validity(args) -> int:
    """A/A false alarms and detection of injected slowdowns."""
    sizes = tuple(float(s) for s in args.sizes.split(","))
    command = _command("validity", args.argv)
    result = _measured(args, "validity", lambda tree, tmp: run(
        validity_sides(tree, sizes, settings=_settings(args)),
        **_selection(args, VALIDITY_CASES), rounds=args.blocks * args.rounds,
        restart_every=args.rounds, progress=_say, workdir=tmp))
    text, chosen, met = validity_report(result, block=args.rounds, sizes=sizes,
                                        resamples=args.resamples, command=command)
    out = args.out or ROOT / "results" / "gate" / f"validity-{machine_name()}.md"
    _emit(text, out)
    method, conf, thr = chosen
    _say(f"chosen: {method}, {conf:.0%}, threshold {thr:.1%}; goals {'met' if met else 'NOT met'}")
    return 0


def cmd_noise(args) -> int:
    """Which noise controls reduce the spread."""
    command = _command("noise", args.argv)
    result = _measured(args, "noise", lambda tree, tmp: run(
        [Side(n, tree, settings=Settings(threads=s.threads, cpu=s.cpu, budget_s=args.budget))
         for n, s in NOISE_SIDES],
        **_selection(args), rounds=args.rounds, progress=_say, workdir=tmp))
    out = args.out or ROOT / "results" / "gate" / f"noise-{machine_name()}.md"
    _emit(noise_report(result, command=command), out)
    return 0


def cmd_versions(args) -> int:
    """The same checkout under several interpreters (torchrl versions), interleaved."""
    sides = []
    for spec in args.pythons:
        label, sep, python = spec.partition("=")
        if not sep or not label or not python:
            raise ValueError(f"expected LABEL=PYTHON (e.g. 0.13.3=.nox/x/bin/python), got "
                             f"{spec!r}")
        if not Path(python).exists():
            raise ValueError(f"no interpreter at {python!r} (for {label})")
        sides.append(Side(label, ROOT, python=python, compat=True, label=label,
                          settings=_settings(args)))
    if len(sides) != 2:
        raise ValueError(f"give two LABEL=PYTHON pairs (old, new); got {len(sides)}")
    selection = {"regex": args.bench} if args.bench else {"cases": VERSION_CASES}
    with tempfile.TemporaryDirectory(prefix="rlgauge-gate-") as tmp:
        tree = export_tree(WORKTREE, Path(tmp) / "tree")
        for side in sides:
            side.tree = tree
        result = run(sides, **selection, rounds=args.rounds, progress=_say, workdir=Path(tmp))
    if args.raw:
        result.save(args.raw)
    old, new = sides[0].name, sides[1].name
    vo, vn = result.info[old]["versions"], result.info[new]["versions"]
    label = {s: f"torchrl {v.get('torchrl')} (tensordict {v.get('tensordict')})"
             for s, v in ((old, vo), (new, vn))}
    rows = compare(result, old, new, threshold=args.threshold, confidence=args.confidence)
    method = Method()
    title = (f"## Component benchmarks across torchrl versions: machine `{machine_name()}`\n\n"
             f"Measured with `nox -s versions`: both versions in the same job, "
             f"{args.rounds} interleaved rounds, round value {method}; ratio = {new} / {old} "
             f"with its Hodges-Lehmann {args.confidence:.0%} interval; REGRESSION / improved "
             f"= {new} slower / faster by more than {args.threshold:.0%} (significant). "
             f"torch {vn.get('torch')}, Python {vn.get('python')}; {result.seconds / 60:.1f} "
             f"min. API differences absorbed by harness/compat.py.")
    out = args.out or ROOT / "results" / "gate" / f"versions-{machine_name()}.md"
    _emit(markdown(rows, title=title, confidence=args.confidence, base_label=label[old],
                   head_label=label[new]), out)
    return 0


def cmd_list(args) -> int:
    """The cases a selection resolves to, in a checkout (imports it here)."""
    rev = resolve(args.rev)
    with tempfile.TemporaryDirectory(prefix="rlgauge-gate-list-") as tmp:
        tree = export_tree(rev, Path(tmp) / "tree")
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
                "import importlib.util as u; s = u.spec_from_file_location('_g', sys.argv[2]); "
                "m = u.module_from_spec(s); sys.modules['_g'] = m; s.loader.exec_module(m); "
                "cases, err = m.discover(__import__('pathlib').Path(sys.argv[1]), "
                "m._selector(json.loads(sys.argv[3]), sys.argv[4] or None)); "
                "print(json.dumps({'cases': [c.id for c in cases], 'errors': err}))")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop(INJECT_ENV, None)
        proc = subprocess.run([sys.executable, "-c", code, str(tree), str(GATE_PY),
                               json.dumps(list(GATE_CASES)), args.bench or ""],
                              capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for cid in found["cases"]:
        print(cid)
    for module, err in found["errors"].items():
        print(f"# {module}: {err}", file=sys.stderr)
    _say(f"{len(found['cases'])} case(s) in {_short(rev)}")
    return 0


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.gate", description=__doc__.split(
        "\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, rounds: int):
        sp.add_argument("-b", "--bench", metavar="REGEX",
                        help="cases whose id matches (re.search), e.g. 'GAE|Sample'; default: "
                             "the gate subset (GATE_CASES)")
        sp.add_argument("--rounds", type=int, default=rounds, help=f"default {rounds}")
        sp.add_argument("--budget", type=float, default=Settings.budget_s,
                        help="seconds of samples per case and round (default %(default)s)")
        sp.add_argument("--raw", type=Path, help="also save every measurement (JSON)")
        sp.add_argument("--out", type=Path, help="also write the Markdown report here")

    r = sub.add_parser("regress", help="BASE vs HEAD, interleaved; exit 1 on a regression")
    r.add_argument("revs", nargs="*", metavar="REV",
                   help="[BASE] [HEAD] (default: merge base with main, HEAD); '.' = the "
                        "working tree with uncommitted changes")
    common(r, DEFAULT_ROUNDS)
    r.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    r.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    r.add_argument("--clock", choices=("cpu", "wall"), default=DEFAULT_CLOCK)
    r.add_argument("--stat", choices=tuple(STATS), default=DEFAULT_STAT)
    r.add_argument("--normalise", action=argparse.BooleanOptionalAction,
                   default=DEFAULT_NORMALISE, help="divide by the same-round calibration")
    r.add_argument("--save-baseline", action="store_true",
                   help="measure REV (default HEAD) and write results/baseline/<machine>.csv")
    r.add_argument("--against-baseline", action="store_true",
                   help="measure REV (default HEAD) and compare it with the stored baseline")
    r.add_argument("--baseline", type=Path, help="baseline CSV (default: "
                                                 "results/baseline/<machine>.csv)")
    r.add_argument("--machine", help="machine name (default: $RLGAUGE_MACHINE or hostname)")

    v = sub.add_parser("validity", help="A/A false alarms and injected-slowdown detection")
    common(v, DEFAULT_ROUNDS)
    v.add_argument("--blocks", type=int, default=6, help="independent gate runs (default 6)")
    v.add_argument("--sizes", default=",".join(str(s) for s in VALIDITY_SIZES))
    v.add_argument("--resamples", type=int, default=2000)
    v.add_argument("--from", dest="from_raw", type=Path, help="re-analyse a --raw file")

    n = sub.add_parser("noise", help="which noise controls reduce the spread")
    common(n, 30)
    n.add_argument("--from", dest="from_raw", type=Path, help="re-analyse a --raw file")

    vs = sub.add_parser("versions", help="one checkout under two interpreters, side by side")
    vs.add_argument("pythons", nargs="+", metavar="LABEL=PYTHON")
    common(vs, DEFAULT_ROUNDS)
    vs.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    vs.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)

    ls = sub.add_parser("list", help="the cases a selection resolves to")
    ls.add_argument("rev", nargs="?", default=WORKTREE)
    ls.add_argument("-b", "--bench", metavar="REGEX")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv[1:]
    commands = {"regress": cmd_regress, "validity": cmd_validity, "noise": cmd_noise,
                "versions": cmd_versions, "list": cmd_list}
    try:
        return commands[args.command](args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
