"""The matrix on Ray: the same cells, files and resume rules as ``harness.matrix``, with each
cell a Ray task, for grids that outgrow one machine.

``ray.init(address=$RAY_ADDRESS)`` joins a running cluster when ``RAY_ADDRESS`` is set (``ray
start --head`` on one node, ``ray start --address=...`` on the others), else starts a local
one. Every node needs the same install (``pip install -c constraints.txt -e .[run,ray]``); the
results are written by the driver, so ``--out`` only has to exist where the command runs.

A task asks for ``threads`` CPUs and, with a memory cap, that much memory (Ray's scheduler
reserves it; a task past it is killed by Ray's memory monitor). Ray reuses its worker processes,
so torchrl is imported once per worker, as with the local forkserver. A crash kills only that
task's worker (``WorkerCrashedError``: a failed row); a task past the time limit is cancelled
with ``force=True`` (a timeout row). ``max_retries=0``: a failing cell is recorded, never
silently re-run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from harness import matrix
from harness.errors import UsageError


def check() -> None:
    """UsageError unless ``ray`` can be imported here."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install -c constraints.txt -e '.[ray]' "
                         "(or use --executor local)") from None


def _warm() -> None:
    import importlib

    for module in matrix.PRELOAD:
        try:
            importlib.import_module(module)
        except ImportError:
            pass


def _cell(spec, threads: int, plugins: str | None) -> tuple:
    return matrix.cell_message(spec, threads, plugins)


def run_grid(specs: Sequence[matrix.RunSpec], skips: Iterable[matrix.Skip], out: Path, *,
             workers: int = 1, timeout_s: float = 600.0, mem_limit_mb: float | None = None,
             threads: int = 1, retry_failed: bool = False,
             progress: Callable | None = None) -> matrix.Outcome:
    """``harness.matrix.run_grid`` with Ray tasks; ``workers`` cells in flight at once."""
    check()
    import ray
    from ray.exceptions import GetTimeoutError, RayError, TaskCancelledError

    out = Path(out)
    outcome = matrix.Outcome()
    todo = matrix.prepare(specs, skips, out, outcome, retry_failed=retry_failed)
    if not todo:
        return outcome
    if progress:
        progress("warm-up", None, 0, len(todo))
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", **({} if address else {"num_cpus": workers * threads}))
    options = {"num_cpus": threads, "max_retries": 0}
    if mem_limit_mb:
        options["memory"] = int(mem_limit_mb * 2**20)
    task = ray.remote(**options)(_cell)
    # import torchrl once in each worker before any cell's clock starts (Ray reuses them)
    warm = ray.remote(num_cpus=threads)(_warm)
    ray.get([warm.remote() for _ in range(workers)])
    plugins = os.environ.get("RLGAUGE_PLUGINS")
    queue = list(todo)
    running: dict = {}  # ObjectRef -> (spec, start)
    finished = 0
    try:
        while queue or running:
            while queue and len(running) < workers:
                spec = queue.pop(0)
                running[task.remote(spec, threads, plugins)] = (spec, time.perf_counter())
                if progress:
                    progress("start", spec, finished, len(todo))
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            now = time.perf_counter()
            for ref in list(running):
                spec, start = running[ref]
                status = None
                if ref in ready:
                    try:
                        message = ray.get(ref)
                        status = matrix.record_message(out, spec, outcome, message, now - start)
                    except (RayError, GetTimeoutError) as exc:
                        why = str(exc).strip().splitlines()[0][:300] if str(exc) else repr(exc)
                        status = matrix.record_failure(out, spec, outcome, "failed",
                                                       f"{type(exc).__name__}: {why}")
                elif now - start > timeout_s:
                    ray.cancel(ref, force=True)
                    status = matrix.record_failure(out, spec, outcome, "timeout",
                                                   f"timed out after {timeout_s:g} s "
                                                   f"(cancelled)")
                if status is not None:
                    del running[ref]
                    finished += 1
                    if progress:
                        progress(status, spec, finished, len(todo))
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        for ref in running:
            try:
                ray.cancel(ref, force=True)
            except (RayError, TaskCancelledError):
                pass
    return outcome
