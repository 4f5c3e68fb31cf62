"""Per-cell overhead of the matrix's Ray executor against the local forkserver, on this host.

The same grid -- ``--cells`` PPO cells on the probe backend's bandit task at 256 frames, the
tests' small settings -- runs with the local executor (``--nodes`` workers) and on a loopback
Ray cluster of ``--nodes`` 1-CPU nodes (``tests/ray_cluster.py``: every process on 127.0.0.1),
so both keep the same number of cells in flight. Prints, per executor: the median and max
``worker_overhead_s`` (launch or submission to records received, minus the cell's own work),
the cells' wall time per cell (first start to last finish, / cells) and the whole call's wall
time (warm-up included), with the load average before and after::

    .nox/ray/bin/python tests/ray_overhead.py --cells 8 --nodes 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray_cluster  # before ray: keeps Ray on 127.0.0.1

os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")  # as the command line sets it

SMALL = ("num_envs=2", "frames_per_batch=64", "minibatch_size=32", "num_epochs=1",
         "eval_episodes=1")


def _measure(run_grid, specs, skips, **kw) -> dict:
    marks: list[float] = []

    def progress(event, spec, finished, total):
        if spec is not None:
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        outcome = run_grid(specs, skips, Path(out), progress=progress, timeout_s=300, **kw)
        wall = time.perf_counter() - start
    assert outcome.done == {"ok": len(specs)}, outcome.done
    return {"median overhead s": statistics.median(outcome.overheads),
            "max overhead s": max(outcome.overheads),
            "cells wall / cell s": (marks[-1] - marks[0]) / len(specs),
            "call wall s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()
    from harness import matrix, matrix_ray, registry

    registry.load_builtins()
    specs, skips = matrix.expand(matrix.Grid(("ppo",), ("probe",), tasks=("bandit",),
                                             seeds=args.cells, frames=256, overrides=SMALL))
    load = os.getloadavg()
    rows = {"local": _measure(matrix.run_grid, specs, skips, workers=args.nodes)}
    cluster = ray_cluster.start(nodes=args.nodes)
    try:
        os.environ["RAY_ADDRESS"] = cluster.address
        rows[f"ray ({args.nodes} nodes)"] = _measure(matrix_ray.run_grid, specs, skips)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    print(f"{args.cells} cells, {args.nodes} in flight; load average (1, 5, 15 min) before "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after "
          + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    for name, row in rows.items():
        print(f"{name:>14}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
