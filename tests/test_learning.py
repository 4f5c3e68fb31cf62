"""Published-threshold learning tests (marker ``slow``; ``nox -s learning``, not in CI).

Every registered algorithm's ``LEARNING_TARGETS`` -- RL Zoo returns at RL Zoo budgets -- is
trained with 3 seeds; the median deterministic-policy return must reach the threshold. The
session writes the table (algorithm, task, budget, threshold, per-seed and median return, wall
time) to ``results/learning/learning-<machine>.md`` whether or not the thresholds are met.

Every recipe (``harness.recipes``: torchrl's tutorial pipelines) is trained the same way at its
tutorial's budget, and the median of its success criterion's value (e.g. the longest episode,
``max_step_count``) must meet the tutorial's criterion; the table adds when each seed first met
it. A recipe whose ``learning_device`` is ``cuda`` is marked ``gpu`` and skipped where there
is no GPU.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from harness import learning, provenance

pytestmark = pytest.mark.slow

OUT = os.environ.get("RLGAUGE_LEARNING_OUT", "results/learning")
MACHINE = provenance.machine_name()
CASES = learning.targets()
RECIPE_CASES = learning.recipe_targets()
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


def _recipe_param(recipe: str, target):
    """A recipe case, marked ``gpu`` too where its learning run is GPU-sized
    (``learning_device`` cuda, e.g. tutorial-recurrent-dqn), so ``-m "slow and not gpu"``
    deselects what would skip."""
    from harness import recipes

    gpu = recipes.get(recipe).learning_device.startswith("cuda")
    return pytest.param(recipe, target, id=f"recipe-{recipe}",
                        marks=(pytest.mark.gpu,) if gpu else ())


@pytest.mark.parametrize(("recipe", "target"), [_recipe_param(r, t) for r, t in RECIPE_CASES])
def test_recipe_meets_its_tutorial_criterion(recipe, target):
    """Fails if a recipe no longer learns within its tutorial's budget, e.g. ``lr=0`` in its
    ``overrides`` (not tried: each case is a long learning run; ``nox -s learning``)."""
    import torch

    from harness import recipes

    spec = recipes.get(recipe)
    if spec.learning_device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip(f"{recipe}: its {spec.frames:,}-frame learning run is GPU-sized (see its "
                    f"deviations in harness/recipes.py); no GPU here")
    rows = learning.run_recipe(recipe, seeds=3, device=spec.learning_device, out_dir=OUT)
    ROWS.append(rows)
    assert learning.met(rows), (
        f"{recipe}: median {spec.success.metric} {rows['value'].median():g} over seeds "
        f"{rows['value'].round(1).tolist()} does not meet {spec.success.text()} within "
        f"{spec.frames} frames ({spec.tutorial})")
