"""The gate's worker: one side's server, run inside that side's interpreter and checkout.

STDLIB ONLY, self-contained. The runner (``harness.gate.runner``) copies this file and
``harness/timing.py`` into the run's directory and boots them by path (``runner.BOOT``) under
private module names, while ``harness``, ``bench`` and ``reference_impls`` come from the side's
checkout (``PYTHONPATH``): the checkout may be an old commit without ``harness.gate`` (or with
another one), so nothing here may import rlgauge code, numpy, scipy or pandas. The worker talks
to the runner over a pipe (one JSON line per event) and writes each round to a JSON file.

- ``prepare``: set the torch threads (``timing.pin_process``), import the selected benchmarks
  once (``discover``), warm every case, then pin the server to its CPU (the servers of a run
  prepare side by side on every CPU; the rounds, forked from the pinned server, run pinned)
  and freeze its heap (``freeze_heap``: the rounds' garbage collections see their own objects
  only, whatever the server's history); reply ``ready`` with the cases' metadata (unit, kind,
  source hash and a declared ``higher_is_better``; the runner turns that into a direction).
- ``round``: per command, a child forked from the server measures every case once: ``setup``,
  timed warm-up calls, samples for the budget, ``teardown``; the calibration workload runs
  between cases; the cases' order rotates with the round.
- ``open`` / ``case`` / ``close``: the same round driven case by case (``interleave="case"``):
  ``open`` forks the round's child, each ``case`` (relayed by the server, which answers for a
  child that died) measures one case, ``close`` writes the round file in the format ``round``
  writes. ``begin`` / ``sample`` / ``end`` split a case into its stages (``_Measurement``:
  setup and warm-up, one sample, teardown) so the runner can alternate the sides' samples (the
  default, ``interleave="sample"``); each side still stops at its own budget.
- A benchmark may set ``gate_warmup`` (warm-up calls per round) and ``gate_samples`` (exactly
  that many samples per round, whatever the budget) on its class or method: for a call too
  costly for the defaults (``bench_training.TrainingRun``: one training run per round). One
  that sets asv's ``warmup_time = 0`` (its ``setup`` warms up, as most bench classes do) gets
  no warm-up call here either unless it sets ``gate_warmup``.
- The test-only slowdown knob lives here (``RLGAUGE_INJECT_SLOWDOWN``, ``slowed_down``): the
  validity study and the tests inject known slowdowns into one side; asv runs never read it.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import itertools
import json
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SUPPORTED = ("time_", "track_")  # peakmem_/mem_/timeraw_ need asv's process model: not gated
#: the commands of an open round, which the server relays to the round's child
ROUND_OPS = ("case", "begin", "sample", "end", "close")
#: TEST ONLY: ``REGEX=FRACTION;...`` injects extra CPU work per call into the matching cases
INJECT_SLOWDOWN_ENV = "RLGAUGE_INJECT_SLOWDOWN"


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


# --------------------------------------------------------------------------- slowdown knob


def injected_slowdown(benchmark: str, spec: str | None = None) -> float:
    """The fraction of extra work ``RLGAUGE_INJECT_SLOWDOWN`` (or ``spec``) asks for on
    ``benchmark`` (a gate case id such as ``bench_gae.GAE.time_gae(device=cpu, ...)``).

    The value is ``REGEX=FRACTION`` items separated by ``;``; the first item whose regex
    ``re.search``-es the id wins (the split is on the item's last ``=``, so a regex may contain
    ``=``). 0.0 when the variable is unset or nothing matches. Example: ``GAE=0.10;Sample=0.05``.
    """
    spec = os.environ.get(INJECT_SLOWDOWN_ENV, "") if spec is None else spec
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        pattern, sep, value = item.rpartition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not pattern or not fraction >= 0:
            raise ValueError(f"{INJECT_SLOWDOWN_ENV} item {item!r} is not REGEX=FRACTION with a "
                             f"fraction >= 0 (e.g. 'GAE=0.10')")
        if re.search(pattern, benchmark):
            return fraction
    return 0.0


def _spin(iterations: int) -> int:
    """The injected work: a pure-Python integer loop (slows down with the machine, as the
    benchmark does, unlike a sleep)."""
    total = 0
    for i in range(iterations):
        total += i % 7
    return total


def spin_rate(probe: int = 20_000, repeat: int = 5) -> float:
    """Iterations of ``_spin`` per CPU second of this process, now: the fastest of ``repeat``
    timings (``time.process_time``: time spent waiting for a CPU is not counted)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        _spin(probe)
        times.append(time.process_time() - t0)
    return probe / max(min(times), 1e-9)


def slowed_down(benchmark: str, call, spec: str | None = None):
    """``call`` itself when nothing is injected into ``benchmark``; otherwise ``call`` wrapped
    so that each call is followed by ``fraction`` x (the call's own uncontended CPU cost) of
    extra CPU work, measured as it runs: the 10th percentile of the CPU seconds of its last 15
    calls, as ``spin_rate`` takes the fastest probe (``fraction`` from
    ``injected_slowdown``). ``wrapped.iterations`` lists the work done per call."""
    fraction = injected_slowdown(benchmark, spec)
    if fraction <= 0:
        return call
    rate = spin_rate()
    durations: list[float] = []

    def wrapped():
        t0 = time.process_time()
        result = call()
        durations.append(time.process_time() - t0)
        recent = sorted(durations[-15:])
        iterations = round(fraction * recent[(len(recent) - 1) // 10] * rate)
        wrapped.iterations.append(iterations)
        _spin(iterations)
        return result

    wrapped.iterations = []
    return wrapped


# --------------------------------------------------------------------------- cases


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
    declared: bool | None  # the benchmark's own ``higher_is_better``, if it sets one
    version: str
    timer: Callable[[], float]
    number: int
    warmup: int | None = None  # ``gate_warmup`` (else 0 if ``warmup_time = 0``): wins over
    #: Settings.warmup
    samples: int | None = None  # its ``gate_samples``: exactly that many, whatever the budget

    def meta(self) -> dict:
        """What the runner learns of the case (it derives the direction from these)."""
        return {"unit": self.unit, "kind": self.kind, "version": self.version,
                "declared": self.declared}


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


def warmup_calls(func, owner) -> int | None:
    """The warm-up calls a benchmark asks for in each round: its own ``gate_warmup`` (on the
    method, else on its class), else 0 when it sets asv's ``warmup_time = 0`` (its setup warms
    up); None: ``Settings.warmup``. ``versions.SNIPPET`` loads this file to warm up the same."""
    asked = getattr(func, "gate_warmup", getattr(owner, "gate_warmup", None))
    if asked is None and getattr(owner, "warmup_time", None) == 0:
        return 0
    return asked


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
                gate_warmup = warmup_calls(func, owner)
                gate_samples = getattr(func, "gate_samples",
                                       getattr(owner, "gate_samples", None))
                version = _source_hash(func, getattr(cls, "setup", None),
                                       getattr(owner, "version", None))
                for combo in combos:
                    cid = case_id(modname, qual, names, combo)
                    if wanted(cid):
                        cases.append(_Case(
                            cid, modname, cls, meth, func, tuple(combo),
                            "time" if meth.startswith("time_") else "track", unit,
                            getattr(func, "higher_is_better", None), version, timer, number,
                            gate_warmup, gate_samples))
    return cases, errors


def freeze_heap() -> int:
    """Collect, then move every object of the warm server into the garbage collector's
    permanent generation (``gc.freeze``); returns how many. Every round is forked from the
    server and inherits its collector state, and how close that state sits to a full
    collection depends on the server's history. Measured with the default cases (the real
    worker, 2026-12-05): in 1 server of 3 every round ran exactly one full
    (generation-2) collection of the server's ~0.53 M objects, in whichever case crossed the
    threshold; in a forked child that also copies every page it touches (a full collection in
    a child of a 0.4 M-object process: 230 ms). A one-sample training run took the whole
    ~0.3 s: the one-spike-per-round server generations behind the TrainingRun A/A offsets
    of validity runs 2, 3, 5 and 6. Frozen (3 servers of 3), no round ran one: each round's
    collections walk its own objects only, as in a process running the benchmark alone.
    ``versions.SNIPPET`` calls it too."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def selector(cases: Sequence[str] | None, regex: str | None) -> Callable[[str], bool]:
    """Accepts a case id matched by ``regex`` (``re.search``), else one listed in ``cases``."""
    if regex:
        pattern = re.compile(regex)
        return lambda cid: bool(pattern.search(cid))
    chosen = set(cases or ())
    return lambda cid: cid in chosen


# --------------------------------------------------------------------------- the server


class _Worker:
    """One side's server: imports its checkout once, then measures rounds (forked children)."""

    def __init__(self, cfg: dict, timing):
        self.cfg = cfg
        self.timing = timing
        self.settings = Settings(**cfg["settings"])
        self.tree = Path(cfg["tree"])

    def prepare(self) -> dict:
        # threads now; the CPU once warm: the servers of a run prepare at the same time (imports,
        # setup_cache, warm-up), on every CPU, and the rounds, forked from the pinned server,
        # run pinned (a fork copies the forking thread only: every thread of a round is new)
        applied = self.timing.pin_process(self.settings.threads, None)
        if self.cfg.get("compat"):
            from harness import compat  # the measured checkout's compat module

            compat.apply()
        import torch

        cases = self.cfg.get("cases")
        modules = sorted({c.split(".", 1)[0] for c in cases}) if cases and not \
            self.cfg.get("regex") else None
        self.cases, module_errors = discover(self.tree, selector(cases, self.cfg.get("regex")),
                                             modules)
        self.errors = {c: f"module: {module_errors[c.split('.', 1)[0]]}" for c in cases or ()
                       if c.split(".", 1)[0] in module_errors}
        self.skipped: dict[str, str] = {}
        self.caches: dict = {}
        self.inject = bool(os.environ.get(INJECT_SLOWDOWN_ENV))
        for case in list(self.cases):  # warm the server: lazy imports, kernels, caches
            warm = _Measurement(self, case)
            warm.start(warm_only=True)
            outcome = warm.finish()
            if "skipped" in outcome or "error" in outcome:
                self.cases.remove(case)
                (self.skipped if "skipped" in outcome else self.errors)[case.id] = \
                    outcome.get("skipped") or outcome["error"]
        applied["cpu"] = self.timing.pin_process(None, self.settings.cpu)["cpu"]
        frozen = freeze_heap()
        versions = {"python": sys.version.split()[0], "torch": torch.__version__}
        for dist in ("torchrl", "tensordict"):
            with contextlib.suppress(Exception):
                from importlib.metadata import version

                versions[dist] = version(dist)
        return {"cases": {c.id: c.meta() for c in self.cases}, "skipped": self.skipped,
                "errors": self.errors, "versions": versions, "pinned": applied,
                "module_errors": module_errors, "pid": os.getpid(), "gc_frozen": frozen}

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

    def _start_round(self, index: int) -> tuple[dict, list[float], list[float]]:
        if self.settings.threads is not None:  # closing a SerialEnv resets torch's count
            import torch

            torch.set_num_threads(self.settings.threads)
        return ({"round": index, "started": time.time(), "loadavg": os.getloadavg(),
                 "cases": {}}, [], [])

    def _begin(self, wall: list, cpu: list, case: _Case) -> _Measurement:
        """The calibration workload, then ``case``'s setup and warm-up."""
        self._calibrate(wall, cpu)
        measurement = _Measurement(self, case)
        measurement.start()
        return measurement

    @staticmethod
    def _end(result: dict, measurement: _Measurement) -> None:
        """teardown; the case's result into the round's, with the seconds its stages took."""
        out = measurement.finish()
        result["cases"][measurement.case.id] = {**out, "seconds": measurement.seconds}

    def _measure_into(self, result: dict, wall: list, cpu: list, case: _Case) -> None:
        """``case`` measured whole: setup, warm-up, samples for the budget, teardown."""
        measurement = self._begin(wall, cpu, case)
        while not measurement.sample():
            pass
        self._end(result, measurement)

    def _finish_round(self, result: dict, wall: list, cpu: list) -> dict:
        self._calibrate(wall, cpu)
        result["calibration"], result["calibration_cpu"] = wall, cpu
        result["finished"] = time.time()
        return result

    def round(self, index: int) -> dict:
        """Every case once, in an order rotated by ``index`` (the ``round`` command)."""
        result, wall, cpu = self._start_round(index)
        shift = index % max(1, len(self.cases))
        for case in self.cases[shift:] + self.cases[:shift]:  # no case always first after fork
            self._measure_into(result, wall, cpu, case)
        return self._finish_round(result, wall, cpu)

    def serve_round(self, index: int, commands, answers) -> None:
        """A round driven case by case (``open`` .. ``case`` .. ``close``): the runner asks each
        side for one case in turn, so both sides of a pair are measured seconds apart rather
        than a whole round apart. Runs in the round's forked child; ``close`` writes the round
        file, in the format ``round`` writes."""
        by_id = {c.id: c for c in self.cases}
        result, wall, cpu = self._start_round(index)
        started: dict[str, _Measurement] = {}  # cases begun, sample by sample
        for line in commands:
            cmd = json.loads(line)
            if cmd["op"] == "case":
                case = by_id.get(cmd["case"])
                if case is not None:
                    self._measure_into(result, wall, cpu, case)
                answers.write(json.dumps({"event": "case", "ok": True,
                                          "measured": case is not None}) + "\n")
            elif cmd["op"] == "begin":
                case = by_id.get(cmd["case"])
                if case is not None:
                    started[case.id] = self._begin(wall, cpu, case)
                answers.write(json.dumps({"event": "begin", "ok": True,
                                          "measured": case is not None,
                                          "done": case is None or started[case.id].done()})
                              + "\n")
            elif cmd["op"] == "sample":
                measurement = started.get(cmd["case"])
                done = measurement is None or measurement.sample()
                answers.write(json.dumps({"event": "sample", "ok": True, "done": done}) + "\n")
            elif cmd["op"] == "end":
                if cmd["case"] in started:
                    self._end(result, started.pop(cmd["case"]))
                answers.write(json.dumps({"event": "end", "ok": True}) + "\n")
            elif cmd["op"] == "close":
                _write_json(Path(cmd["out"]), self._finish_round(result, wall, cpu))
                answers.write(json.dumps({"event": "done", "ok": True}) + "\n")
                answers.flush()
                return
            answers.flush()

    def _fork_round(self, index: int) -> tuple[int, object, object]:
        """(pid, commands to the child, its answers): the child of a case-by-case round."""
        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()

        def serve() -> None:
            os.close(down_w)
            os.close(up_r)
            with os.fdopen(down_r) as commands, os.fdopen(up_w, "w") as answers:
                self.serve_round(index, commands, answers)

        pid = _fork(serve)
        os.close(down_r)
        os.close(up_w)
        return pid, os.fdopen(down_w, "w", buffering=1), os.fdopen(up_r)

    def serve(self, reply) -> None:
        child = None  # (pid, commands, answers) of an open case-by-case round

        def end_child() -> str:
            pid, commands, answers = child
            with contextlib.suppress(OSError):
                commands.close()
            answers.close()
            code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            return f"the round's process exited with {code}"

        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                if child:
                    end_child()
                return
            if cmd["op"] in ROUND_OPS:  # relayed to the round's child
                answer = None
                if child:
                    with contextlib.suppress(OSError):
                        child[1].write(line if line.endswith("\n") else line + "\n")
                        child[1].flush()
                    answer = child[2].readline()
                if not answer:  # no round open, or its child died (a crash in a benchmark)
                    why = end_child() if child else "no round open"
                    child = None
                    event = "done" if cmd["op"] == "close" else cmd["op"]
                    answer = json.dumps({"event": event, "ok": False, "error": why}) + "\n"
                elif cmd["op"] == "close":
                    end_child()
                    child = None
                reply.write(answer)
                reply.flush()
                continue
            if cmd["op"] == "open":
                if child:
                    end_child()
                if self.settings.fork and hasattr(os, "fork"):
                    child = self._fork_round(cmd["round"])
                    reply.write(json.dumps({"event": "opened", "ok": True}) + "\n")
                else:
                    reply.write(json.dumps({"event": "opened", "ok": False,
                                            "error": "case-by-case rounds need fork"}) + "\n")
                reply.flush()
                continue
            out = Path(cmd["out"])
            if self.settings.fork and hasattr(os, "fork"):
                pid = _fork(lambda out=out, index=cmd["round"]: _write_json(out, self.round(index)))
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


class _Measurement:
    """One case measured in one round, in stages: ``start`` (setup, timed warm-up calls),
    ``sample`` (one sample; True once the case has its samples: ``gate_samples``, else the
    budget of the side's own sample time, between ``min_samples`` and ``max_samples``),
    ``finish`` (teardown; the case's result). ``_Worker._measure_into`` runs the stages back
    to back; a round interleaved sample by sample (``interleave="sample"``) runs them on the
    runner's command, so the sides' samples of a case alternate."""

    def __init__(self, worker: _Worker, case: _Case):
        self.worker, self.case = worker, case
        self.inst, self.args, self.call = None, case.params, None
        self.out: dict = {}
        self.samples: list[float] = []
        self.cpu: list[float] = []
        self.sampled_s = 0.0  # wall time of this side's own samples (the budget)
        self.seconds = 0.0  # wall time of every stage, setup and teardown included

    @contextlib.contextmanager
    def _stage(self):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - t0

    def start(self, warm_only: bool = False) -> bool:
        """setup and warm-up; False (the result says why) when the case cannot be measured."""
        with self._stage():
            return self._start(warm_only)

    def _start(self, warm_only: bool) -> bool:
        case = self.case
        try:
            cache = self.worker._cache(case)
            self.args = ((cache,) if cache is not None else ()) + case.params
            self.inst = case.cls() if case.cls is not None else None
            if self.inst is not None and hasattr(self.inst, "setup"):
                self.inst.setup(*self.args)
            elif case.cls is None and hasattr(case.func, "setup"):
                case.func.setup(*self.args)
        except NotImplementedError as exc:
            self._teardown()
            self.inst = None
            self.out = {"skipped": str(exc) or "NotImplementedError in setup"}
            return False
        except Exception as exc:
            self.inst = None  # no teardown after a failed setup (asv's rule too)
            self.out = {"error": f"setup: {type(exc).__name__}: {exc}"}
            return False
        fn = getattr(self.inst, case.method) if self.inst is not None else case.func
        self.call = lambda: fn(*self.args)
        return self._guard(lambda: self._warm(warm_only))

    def _warm(self, warm_only: bool) -> None:
        case, s = self.case, self.worker.settings
        if warm_only:
            self.call()
            return
        if case.kind == "track":
            self.out = {"samples": self.samples, "track": True}
            return
        warm, warm_cpu = [], []
        for _ in range(s.warmup if case.warmup is None else case.warmup):
            w0, c0, p0 = time.perf_counter(), case.timer(), time.process_time()
            self.call()
            p1, c1, w1 = time.process_time(), case.timer(), time.perf_counter()
            warm.append(c1 - c0)
            warm_cpu.append((p1 - p0) * (c1 - c0) / (w1 - w0) if w1 > w0 else 0.0)
        if self.worker.inject:  # the test-only knob (RLGAUGE_INJECT_SLOWDOWN)
            self.call = slowed_down(case.id, self.call)
        self.out = {"samples": self.samples, "cpu": self.cpu, "warmup": warm,
                    "warmup_cpu": warm_cpu}

    def _guard(self, stage: Callable[[], None]) -> bool:
        """Run ``stage``; False, with the error as the case's result, when it raised."""
        try:
            stage()
            return True
        except Exception as exc:
            self.out = {"error": f"{type(exc).__name__}: {exc}"}
            self.call = None
            return False

    def done(self) -> bool:
        """Whether the case has all its samples (or cannot take more)."""
        s, n = self.worker.settings, len(self.samples)
        if self.call is None:  # setup skipped or failed, or a call raised (``_guard``)
            return True
        if self.case.kind == "track":
            return n >= s.track_calls
        if self.case.samples:  # the benchmark's own count (a costly call: a training run)
            return n >= self.case.samples
        return n >= s.max_samples or (n >= s.min_samples and self.sampled_s > s.budget_s)

    def sample(self) -> bool:
        """One more sample (a track_* call's value, or a timed sample of ``number`` calls, with
        its process CPU time, by ``harness.timing.measure``); whether the case is now done."""
        if not self.done():
            with self._stage():
                self._guard(self._one)
        return self.done()

    def _one(self) -> None:
        if self.case.kind == "track":
            self.samples.append(float(self.call()))
            return
        w0 = time.perf_counter()
        t = self.worker.timing.measure(self.call, number=self.case.number, warmup=0,
                                       timer=self.case.timer, cpu=True, repeat=1)
        self.sampled_s += time.perf_counter() - w0
        self.samples.extend(t.samples)
        self.cpu.extend(t.cpu_samples)

    def finish(self) -> dict:
        """teardown; the case's result (``samples`` and ``cpu`` per sample, ``warmup`` and
        ``warmup_cpu``; a track_* case's values; or ``skipped`` / ``error``)."""
        with self._stage():
            self._teardown()
        iterations = getattr(self.call, "iterations", None)  # the slowdown knob's, if any
        if iterations:  # no call after an error: nothing injected to report
            self.out["injected_iterations"] = statistics.median(iterations)
        return self.out

    def _teardown(self) -> None:
        with contextlib.suppress(Exception):
            if self.inst is not None and hasattr(self.inst, "teardown"):
                self.inst.teardown(*self.args)


def _fork(work: Callable[[], None]) -> int:
    """The pid of a forked child that runs ``work`` and leaves without running atexit hooks:
    exit 0 when ``work`` returned, 1 when it raised (the traceback goes to the log)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def _write_json(path: Path, data) -> None:
    """tmp + rename (``harness.atomic`` is not importable here: see the module docstring)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def worker_main(argv: Sequence[str]) -> int:
    """Entry point inside a side's interpreter (see ``harness.gate.runner.BOOT``)."""
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
