"""Published-threshold learning tests (marker ``slow``; ``nox -s learning``, not in CI).

Every registered algorithm's ``LEARNING_TARGETS`` -- RL Zoo returns at RL Zoo budgets -- is
trained with 3 seeds; the median deterministic-policy return must reach the threshold. The
session writes the table (algorithm, task, budget, threshold, per-seed and median return, wall
time) to ``results/learning/learning-<machine>.md`` whether or not the thresholds are met.
"""

from __future__ import annotations

import os
import platform

import pandas as pd
import pytest

from harness import learning

pytestmark = pytest.mark.slow

OUT = os.environ.get("RLGAUGE_LEARNING_OUT", "results/learning")
MACHINE = os.environ.get("RLGAUGE_MACHINE") or platform.node() or "local"
CASES = learning.targets()
ROWS: list[pd.DataFrame] = []


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    if ROWS:
        path = learning.write_table(pd.concat(ROWS, ignore_index=True), OUT, MACHINE)
        print(f"\nlearning table: {path}")


@pytest.mark.parametrize(("algorithm", "target"), CASES,
                         ids=[f"{a}-{t.backend}-{t.task}" for a, t in CASES])
def test_learning_reaches_published_threshold(algorithm, target):
    rows = learning.run_target(algorithm, target, seeds=3, out_dir=OUT)
    ROWS.append(rows)
    median = rows["final_return"].median()
    assert median >= target.threshold, (
        f"{algorithm} on {target.backend}/{target.task}: median return {median:.1f} over seeds "
        f"{rows['final_return'].round(1).tolist()} < {target.threshold} ({target.source}) "
        f"within {target.frames} frames")
