"""The matrix's Ray executor (``nox -s ray``; skipped where Ray is not installed): the same
cells, files and failure rows as the local executor, on a local Ray instance."""

from __future__ import annotations

import time

import pytest

from harness import matrix, results

ray = pytest.importorskip("ray")

SMALL = ("num_envs=2", "frames_per_batch=64", "minibatch_size=32", "num_epochs=1",
         "eval_episodes=1")


@pytest.fixture(autouse=True)
def _plugin(fault_plugin):
    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_executor_records_results_and_faults(tmp_path):
    from harness import matrix_ray

    specs, skips = matrix.expand(matrix.Grid(("ppo",), ("fault",),
                                             tasks=("ok", "raise", "segfault", "hang"),
                                             frames=256, overrides=SMALL))
    by_task = {s.task: s for s in specs}
    start = time.perf_counter()
    outcome = matrix_ray.run_grid(specs, skips, tmp_path, workers=2, timeout_s=20)
    assert time.perf_counter() - start < 240
    assert sum(outcome.done.values()) == 4

    def status(task):
        frame = results.load(matrix.cell_path(tmp_path, by_task[task]))
        return set(frame["status"]), " ".join(frame["error"])

    ok, _ = status("ok")
    assert ok == {"ok"}
    assert status("raise") == ({"failed"}, "RuntimeError: injected fault")
    failed, why = status("segfault")
    assert failed == {"failed"} and ("died" in why.lower() or "crash" in why.lower()), why
    assert status("hang") == ({"timeout"}, "timed out after 20 s (cancelled)")
    assert matrix.pending(specs, tmp_path, retry_failed=False) == []
