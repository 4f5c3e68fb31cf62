"""The matrix: a grid of training runs (algorithm x implementation x compile mode x backend x
task x device x num_envs x seed), each cell in its own process, results appended cell by cell,
resumable.

Expanding (``expand``). A ``Grid`` becomes ``RunSpec``s; combinations that cannot run are kept
as ``Skip``s with the reason (an algorithm whose action kind no task of a backend has, a task a
backend does not have, a device that is not present when the grid asked for ``all`` devices,
an algorithm a peer implementation does not have, a compile mode a cell cannot use:
``compile+cudagraphs`` off CUDA, any mode but eager for a peer) and written as ``skipped``
rows, so a table shows every cell of the grid. Names are checked before any work: an unknown
algorithm/backend/task/device/implementation/compile mode, a device asked for explicitly but
not present, a budget or seed count below 1, an empty grid -- one ``UsageError`` line each.

Isolation. Every cell is a fresh process forked from a *forkserver* whose interpreter imported
torch, torchrl and the reference implementations once (``PRELOAD``), so a cell starts warm
instead of paying torchrl's ~3 s import, and a crash, a hang or a memory blow-up takes only that
process with it. The runner (``run_grid``) keeps up to ``workers`` cells alive, enforces each
cell's time limit and memory cap (RSS polled from ``/proc``, killed past the cap), and writes
each finished cell's records atomically to ``OUT/cells/<key>.csv``; a cell that failed is a file
too, of ``failed``/``timeout`` rows with the reason (exception text, time limit, signal, memory
cap), and the traceback goes to ``OUT/logs/<key>.log``. Measured per-cell overhead (launch to
records received, minus the cell's own work; ``worker_overhead_s`` of each cell): see the
README's "The matrix" section.

Resuming. A cell whose file exists and reads back is done; re-running the same command runs
only the missing cells (and, with ``retry_failed``, the failed or timed-out ones). Ctrl-C kills
the running cells, keeps every finished one and exits 130; nothing half-written is ever read
back, because every file is written by rename.

Executors: ``local`` (above) and ``ray`` (``harness.matrix_ray``, for a cluster; needs ``ray``).

Recipes (``harness.recipes``: torchrl's tutorial pipelines) are cells too: ``Grid.recipes`` adds
one cell per recipe x device x num_envs x seed on the recipe's own backend/task, settings and
budget (``RunSpec.recipe``); their records carry the recipe's name in the ``algorithm`` column.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import pandas as pd

from harness import atomic, results, runs
from harness.errors import ResultsError, UsageError
from harness.runs import RunSpec

#: tasks a backend runs in the matrix unless ``--tasks`` names them: ``--quick`` takes the first
#: one whose actions fit the algorithm, the full grid every one that fits
DEFAULT_TASKS: dict[str, tuple[str, ...]] = {
    "gymnasium": ("cartpole", "pendulum"),
    "dm_control": ("cartpole-swingup",),
    "envpool": ("cartpole", "pendulum"),
    "probe": ("bandit", "continuous"),
}
#: frames per cell in ``--quick`` grids: each cell runs a few seconds on one core here, enough
#: for throughput and the time split (the learned return is not meaningful at this budget)
QUICK_FRAMES: dict[str, int] = {
    "ppo": 4096, "dqn": 3000, "ddpg": 2000, "recurrent_dqn": 2048, "recurrent_ppo": 2048,
}
QUICK_FRAMES_DEFAULT = 2048
#: Config overrides of ``--quick`` cells (before the user's ``--set``): the deterministic
#: evaluation of the final policy runs 2 episodes instead of 10
QUICK_OVERRIDES: dict[str, object] = {"eval_episodes": 2}
#: the modules every worker process imports once, in the forkserver
PRELOAD = ["torch", "tensordict", "torchrl", "gymnasium", "dm_control.suite", "harness.training",
           "harness.backends", "harness.recipes", "harness.runs",
           "reference_impls.ppo", "reference_impls.dqn", "reference_impls.ddpg",
           "reference_impls.recurrent_dqn", "reference_impls.recurrent_ppo"]
FAILED = ("failed", "timeout")


# --------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Skip:
    """A combination of the grid that cannot run here, and why."""

    spec: RunSpec
    reason: str


@dataclass(frozen=True)
class Grid:
    """What ``python -m harness run`` asks for. ``tasks`` None: ``DEFAULT_TASKS``;
    ``devices`` may contain ``all`` (cpu and every GPU; ``cuda:0`` cells skipped where there is
    none); devices are recorded by their canonical names (``harness.devices``: cuda -> cuda:0);
    ``num_envs`` None entries: the algorithm's default; ``frames`` None: ``QUICK_FRAMES`` when
    ``quick``, else each algorithm's budget for the task (a recipe's: its own). ``recipes``:
    recipe cells besides the algorithm x backend x task ones (``algorithms`` may then be
    empty). ``compile_modes`` may contain ``all``: every mode valid on the grid's devices
    (``compile+cudagraphs`` only when one of them is CUDA)."""

    algorithms: tuple[str, ...]
    backends: tuple[str, ...]
    devices: tuple[str, ...] = ("cpu",)
    tasks: tuple[str, ...] | None = None
    num_envs: tuple[int | None, ...] = (None,)
    seeds: int = 1
    frames: int | None = None
    quick: bool = False
    overrides: tuple[str, ...] = ()
    recipes: tuple[str, ...] = ()
    impls: tuple[str, ...] = ("rlgauge",)
    """Implementations of each algorithm cell (``harness.peers``); recipes are rlgauge's."""
    compile_modes: tuple[str, ...] = ("eager",)
    """Compile modes of each cell (``harness.training.COMPILE_MODES``), recipes' too."""


def expand(grid: Grid) -> tuple[list[RunSpec], list[Skip]]:
    """The grid's cells that can run here, and the ones that cannot (with reasons).

    Raises UsageError, before any work, for an unknown name on any axis (compile modes
    included), a device asked for explicitly but absent, a non-positive budget, seed count or
    num_envs, a bad override, or a grid with nothing to run.
    """
    from harness import backends, devices, registry

    registry.load_builtins()
    if grid.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {grid.seeds}")
    if grid.frames is not None and grid.frames < 1:
        raise UsageError(f"--frames must be a positive number of env frames, got {grid.frames}")
    for n in grid.num_envs:
        if n is not None and n < 1:
            raise UsageError(f"--num-envs must be >= 1, got {n}")
    # a recipes-only grid has no algorithm axis, and its recipes bring their own backends
    algorithm_axes = bool(grid.algorithms) or not grid.recipes
    axes = [("--devices", grid.devices), ("--compile", grid.compile_modes)]
    if algorithm_axes:
        axes[:0] = [("--algorithms", grid.algorithms), ("--backends", grid.backends)]
    for axis, values in axes:
        if not values:
            raise UsageError(f"{axis} is empty; give at least one value")
    for name in grid.algorithms:
        registry.ALGORITHMS.require_available(name)
    if grid.recipes:
        from harness import recipes

        for name in grid.recipes:
            recipes.RECIPES.require_available(name)
    for name in grid.backends if algorithm_axes else ():
        registry.BACKENDS.require_available(name)
    if grid.tasks is not None and algorithm_axes:
        known = {t for b in grid.backends for t in backends.available_tasks(b)}
        for task in grid.tasks:
            if task not in known:
                raise UsageError(f"unknown task {task!r} for backends {', '.join(grid.backends)};"
                                 f" valid: {', '.join(sorted(known))}")
    device_skips: dict[str, str] = {}
    wanted: list[str] = []
    for name in grid.devices:
        if name == "all":  # every device here; a machine without a GPU records its CUDA skip
            present = devices.available_devices()
            if len(present) == 1:
                try:
                    devices.check_device("cuda")
                except UsageError as exc:
                    device_skips["cuda:0"] = str(exc)
            for d in present if len(present) > 1 else [*present, "cuda:0"]:
                if d not in wanted:
                    wanted.append(d)
        else:
            # asked for by name: absent is the user's error; recorded by its canonical name
            d = str(devices.check_device(name))
            if d not in wanted:
                wanted.append(d)
    typed = _typed_overrides(grid)
    from harness import peers

    for impl in grid.impls:
        if impl not in peers.IMPLS:
            raise UsageError(f"unknown implementation {impl!r}; valid: {', '.join(peers.IMPLS)}")
        for algorithm in grid.algorithms:  # a library that is not installed: bad input
            peers.require_installed(impl, algorithm)

    modes = _compile_modes(grid.compile_modes, wanted)

    def compile_skip(mode: str, impl: str, device: str) -> str | None:
        try:
            runs.check_compile(mode, impl, device)
        except UsageError as exc:
            return str(exc)
        return None

    def budget(algorithm: str) -> int | None:
        """The grid's budget for a cell of ``algorithm`` (None: its own for the task)."""
        if grid.frames is None and grid.quick:
            return QUICK_FRAMES.get(algorithm, QUICK_FRAMES_DEFAULT)
        return grid.frames

    specs, skips = [], []
    for algorithm, impl, mode in ((a, i, m) for a in grid.algorithms for i in grid.impls
                                  for m in modes):
        kinds = registry.ALGORITHMS.get(algorithm).meta["action_kinds"]
        for backend in grid.backends:
            tasks, reason = _tasks(grid, algorithm, kinds, backend)
            if not tasks:
                tasks = [grid.tasks[0] if grid.tasks else "-"]
            if reason is None and impl != "rlgauge":
                try:
                    peers.check(impl, algorithm, backend)
                except UsageError as exc:
                    reason = str(exc)
            for task in tasks:
                for device in wanted:
                    for num_envs in grid.num_envs:
                        for seed in range(grid.seeds):
                            spec = RunSpec(algorithm, backend, task, device, seed,
                                           budget(algorithm), num_envs, typed[algorithm],
                                           impl=impl, compile=mode)
                            why = (reason or device_skips.get(device)
                                   or compile_skip(mode, impl, device))
                            if why is None and task not in backends.available_tasks(backend):
                                why = f"backend {backend} has no task {task!r}"
                            if why is None:
                                kind = backends.get_task(backend, task).action_kind
                                if kind not in kinds:
                                    why = (f"{algorithm} needs {' or '.join(kinds)} actions; "
                                           f"{backend}/{task} has {kind} actions")
                            (skips.append(Skip(spec, why)) if why else specs.append(spec))
    for name in grid.recipes:
        from harness import recipes

        recipe = recipes.get(name)
        for mode in modes:
            for device in wanted:
                for num_envs in grid.num_envs:
                    for seed in range(grid.seeds):
                        spec = RunSpec(recipe.algorithm, recipe.backend, recipe.task, device,
                                       seed, budget(recipe.algorithm), num_envs,
                                       typed[recipe.algorithm], recipe=name, compile=mode)
                        why = device_skips.get(device) or compile_skip(mode, "rlgauge", device)
                        (skips.append(Skip(spec, why)) if why else specs.append(spec))
    if not specs:
        reasons = sorted({s.reason for s in skips})
        raise UsageError("the grid has no cell that can run here: " + "; ".join(reasons[:3]))
    return specs, skips


def _compile_modes(asked: Sequence[str], devices_: Sequence[str]) -> list[str]:
    """The grid's compile modes, in ``COMPILE_MODES`` order: ``all`` is every mode valid on
    one of ``devices_`` (``compile+cudagraphs`` needs a CUDA one). UsageError naming an unknown
    mode and the valid ones."""
    from harness.devices import is_cuda
    from harness.training import COMPILE_MODES

    wanted = set()
    for mode in asked:
        if mode == "all":
            wanted.update(m for m in COMPILE_MODES
                          if m != "compile+cudagraphs" or any(is_cuda(d) for d in devices_))
        elif mode in COMPILE_MODES:
            wanted.add(mode)
        else:
            raise UsageError(f"unknown compile mode {mode!r}; valid: "
                             f"{', '.join(COMPILE_MODES)}, or all")
    return [m for m in COMPILE_MODES if m in wanted]


def _tasks(grid: Grid, algorithm: str, kinds, backend: str) -> tuple[list[str], str | None]:
    from harness import backends

    have = backends.available_tasks(backend)
    if grid.tasks is not None:
        return [t for t in grid.tasks if t in have] or [grid.tasks[0]], None
    fits = [t for t in DEFAULT_TASKS.get(backend, tuple(have))
            if t in have and backends.get_task(backend, t).action_kind in kinds]
    if not fits:
        return [], (f"{algorithm} needs {' or '.join(kinds)} actions and no default task of "
                    f"{backend} has them")
    return (fits[:1] if grid.quick else fits), None


def _typed_overrides(grid: Grid) -> dict[str, tuple]:
    """Per algorithm of the grid (its recipes' too): the cells' typed overrides, ``--quick``'s
    then the user's ``FIELD=VALUE`` items parsed against that algorithm's Config
    (``runs.parse_overrides``: UsageError for a field it lacks or a value of the wrong type)."""
    algorithms = list(grid.algorithms)
    if grid.recipes:
        from harness import recipes

        algorithms += [recipes.get(name).algorithm for name in grid.recipes]
    out = {}
    for algorithm in dict.fromkeys(algorithms):
        typed = dict(QUICK_OVERRIDES) if grid.quick else {}
        typed.update(runs.parse_overrides(algorithm, grid.overrides))
        out[algorithm] = tuple(typed.items())
    return out


# --------------------------------------------------------------------------- one cell (worker)


def _cell_main(conn, spec: RunSpec, threads: int, plugins: str | None) -> None:
    """Worker process: train one cell and send ``("ok", records, work_s)`` or
    ``("error", message, traceback)``. SIGINT is the runner's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        conn.send(cell_message(spec, threads, plugins))
    finally:
        conn.close()


def cell_message(spec: RunSpec, threads: int, plugins: str | None) -> tuple:
    """Run one cell here: ``("ok", records, work_s)`` or ``("error", one_line, traceback)``."""
    start = time.perf_counter()
    try:
        if plugins:
            os.environ["RLGAUGE_PLUGINS"] = plugins
        return "ok", run_cell(spec, threads), time.perf_counter() - start
    except BaseException as exc:  # noqa: BLE001 -- everything becomes a failed row
        return "error", _one_line(exc), traceback.format_exc()


def run_cell(spec: RunSpec, threads: int = 1) -> pd.DataFrame:
    """Train ``spec`` in this process: its finished records (``harness.runs``)."""
    return runs.train(spec, threads=threads)[1].records


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:500]


# --------------------------------------------------------------------------- the runner


@dataclass
class _Running:
    spec: RunSpec
    process: mp.Process
    conn: object
    start: float
    deadline: float


@dataclass
class Outcome:
    """What ``run_grid`` did: counts per status, cells it did not have to run, overheads."""

    done: dict[str, int] = field(default_factory=dict)
    reused: int = 0
    skipped: int = 0
    interrupted: bool = False
    overheads: list[float] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def count(self, status: str) -> None:
        self.done[status] = self.done.get(status, 0) + 1


def cell_path(out: Path, spec: RunSpec) -> Path:
    return out / "cells" / f"{spec.key}.csv"


def cell_status(path: Path) -> str | None:
    """The status of a finished cell file (its worst row), or None when it is missing or
    unreadable (then the cell runs again)."""
    try:
        frame = results.load(path)
    except ResultsError:
        return None
    order = ("failed", "timeout", "diverged", "skipped", "ok")
    statuses = set(frame["status"])
    return next((s for s in order if s in statuses), "ok")


def pending(specs: Sequence[RunSpec], out: Path, *, retry_failed: bool) -> list[RunSpec]:
    """The cells still to run: no readable file, or a failed one when ``retry_failed``."""
    todo = []
    for spec in specs:
        status = cell_status(cell_path(out, spec))
        if status is None or (retry_failed and status in FAILED):
            todo.append(spec)
    return todo


def prepare(specs: Sequence[RunSpec], skips: Iterable[Skip], out: Path, outcome: Outcome, *,
            retry_failed: bool) -> list[RunSpec]:
    """Write the skipped combinations' rows (once) and return the cells still to run."""
    (out / "cells").mkdir(parents=True, exist_ok=True)
    for skip in skips:
        path = cell_path(out, skip.spec)
        if cell_status(path) is None:
            results.save(results.failure_record(skip.reason, status="skipped",
                                                **skip.spec.context()), path)
        outcome.skipped += 1
    todo = pending(specs, out, retry_failed=retry_failed)
    outcome.reused = len(specs) - len(todo)
    return todo


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _kill(process: mp.Process) -> None:
    if process.is_alive():
        process.kill()
    process.join(5)


def run_grid(specs: Sequence[RunSpec], skips: Iterable[Skip], out: Path, *, workers: int = 1,
             timeout_s: float = 600.0, mem_limit_mb: float | None = None, threads: int = 1,
             retry_failed: bool = False,
             progress: Callable[[str, RunSpec | None, int, int], None] | None = None) -> Outcome:
    """Run the missing cells of ``specs`` under ``out`` (see the module docstring).

    ``progress(event, spec, finished, total)`` is called when a cell starts ("start") or ends
    (its status). KeyboardInterrupt kills the running cells (their results are not written, so
    a re-run runs them) and returns with ``interrupted`` set.
    """
    outcome = Outcome()
    todo = prepare(specs, skips, Path(out), outcome, retry_failed=retry_failed)
    total, finished = len(todo), 0
    if not todo:
        return outcome
    ctx = _context()
    if progress:
        progress("warm-up", None, 0, total)
    _run_noop(ctx)  # start the forkserver (imports PRELOAD once) outside every cell's clock
    plugins = os.environ.get("RLGAUGE_PLUGINS")
    queue = list(todo)
    running: list[_Running] = []
    try:
        while queue or running:
            while queue and len(running) < workers:
                spec = queue.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                process = ctx.Process(target=_cell_main, args=(child, spec, threads, plugins),
                                      name=f"rlgauge-cell-{spec.key}", daemon=True)
                start = time.perf_counter()
                process.start()
                child.close()
                running.append(_Running(spec, process, parent, start, start + timeout_s))
                if progress:
                    progress("start", spec, finished, total)
            now = time.perf_counter()
            wait_s = max(0.0, min(min(r.deadline for r in running) - now, 0.2))
            ready = set(mp_wait([r.conn for r in running] + [r.process.sentinel
                                                              for r in running], wait_s))
            for r in list(running):
                status = None
                if r.conn in ready or r.process.sentinel in ready:
                    status = _finish(r, out, outcome)
                elif time.perf_counter() > r.deadline:
                    _kill(r.process)
                    status = record_failure(out, r.spec, outcome, "timeout",
                                   f"timed out after {timeout_s:g} s (killed)")
                elif mem_limit_mb and (rss := _rss_mb(r.process.pid)) > mem_limit_mb:
                    _kill(r.process)
                    status = record_failure(out, r.spec, outcome, "failed",
                                   f"exceeded the memory cap of {mem_limit_mb:g} MB "
                                   f"(RSS {rss:.0f} MB; killed)")
                if status is not None:
                    running.remove(r)
                    r.conn.close()
                    finished += 1
                    if progress:
                        progress(status, r.spec, finished, total)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        for r in running:
            _kill(r.process)
            r.conn.close()
    return outcome


def _finish(r: _Running, out: Path, outcome: Outcome) -> str:
    """Collect a cell that sent its result or died."""
    message = None
    try:
        if r.conn.poll():
            message = r.conn.recv()
    except (EOFError, OSError):
        message = None
    r.process.join(10)
    if message is None:
        _kill(r.process)
        code = r.process.exitcode
        if code is not None and code < 0:
            why = f"worker killed by signal {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                why += " (out of memory?)"
        else:
            why = f"worker exited with code {code} without a result"
        return record_failure(out, r.spec, outcome, "failed", why)
    return record_message(out, r.spec, outcome, message, time.perf_counter() - r.start)


def record_message(out: Path, spec: RunSpec, outcome: Outcome, message: tuple,
                   cell_wall_s: float) -> str:
    """Write what a worker sent (``_cell_main``'s message) as the cell's file; its status."""
    if message[0] == "error":
        _, why, tb = message
        _log(out, spec, tb)
        return record_failure(out, spec, outcome, "failed", why)
    _, records, work_s = message
    overhead = max(cell_wall_s - work_s, 0.0)
    outcome.overheads.append(overhead)
    records = runs.extend(records, [{"metric": "worker_overhead_s", "value": overhead,
                                     "unit": "s"}])
    results.save(records, cell_path(out, spec))
    status = cell_status(cell_path(out, spec)) or "ok"
    outcome.count(status)
    return status


def record_failure(out: Path, spec: RunSpec, outcome: Outcome, status: str, why: str) -> str:
    """Write a cell that produced no records as one ``status`` row with the reason."""
    results.save(results.failure_record(why, status=status, **_resolved_context(spec)),
                 cell_path(out, spec))
    outcome.count(status)
    outcome.failures.append((spec.label(), why))
    return status


def _resolved_context(spec: RunSpec) -> dict:
    """``spec.context()`` with the algorithm's own ``num_envs`` filled in where the spec left it
    to the algorithm, so that a failed run sits in the same table cell as its siblings."""
    context = spec.context()
    if spec.num_envs is None:
        try:
            context["num_envs"] = runs.resolve(spec).config.num_envs
        except Exception:  # noqa: BLE001 -- best effort: an unresolvable cell keeps None
            pass
    return context


def _log(out: Path, spec: RunSpec, text: str) -> None:
    path = out / "logs" / f"{spec.key}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, text)


def measure_overhead(n: int = 5) -> float:
    """Median seconds from launching a cell process to receiving its (empty) result, with the
    forkserver already warm: the runner's own cost per cell."""
    import statistics

    ctx = _context()
    _run_noop(ctx)  # starts the forkserver
    return statistics.median(_run_noop(ctx) for _ in range(n))


def _run_noop(ctx) -> float:
    """Seconds to launch a process from the forkserver and receive its reply."""
    parent, child = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    p = ctx.Process(target=_noop, args=(child,), daemon=True)
    p.start()
    child.close()
    parent.recv()
    p.join()
    parent.close()
    return time.perf_counter() - start


def _noop(conn) -> None:
    conn.send(("ok", None, 0.0))
    conn.close()


def default_workers(threads: int = 1) -> int:
    return max(1, len(os.sched_getaffinity(0)) // max(threads, 1))


__all__ = ["DEFAULT_TASKS", "QUICK_FRAMES", "Grid", "Outcome", "RunSpec", "Skip", "expand",
           "cell_message", "measure_overhead", "pending", "record_failure", "record_message",
           "run_cell", "run_grid"]
