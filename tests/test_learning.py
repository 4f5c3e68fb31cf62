"""Published-threshold learning tests (marker ``slow``; ``nox -s learning``, not in CI).

Every registered algorithm's ``LEARNING_TARGETS`` -- RL Zoo returns at RL Zoo budgets -- is
trained with 3 seeds; the median deterministic-policy return must reach the threshold.

Every target whose algorithm has a Stable-Baselines3 counterpart (``learning.sb3_targets``: PPO,
DQN, DDPG, recurrent PPO on gymnasium) is trained again with ``impl=sb3``: the same 3 seeds,
budget and overrides (cases ``<target>-sb3``, after rlgauge's; ``-k sb3`` / ``-k "not sb3"``
select). SB3 is the yardstick, not the code under test: its threshold verdict is reported in the
table only, and its case fails only when a seed produced no final return (the peer run itself
broke). It is skipped, with the reason printed, where SB3 is not installed or cannot follow the
target's overrides (``learning.unavailable``).

The session writes one table to ``results/learning/learning-<machine>.md`` (+ ``.csv``) whether
or not the thresholds are met: one line per (algorithm, task, impl) with the budget, threshold,
per-seed and median return, verdict, median wall time and frames/s over seeds, and on rlgauge's
line rlgauge's wall time over SB3's on the same target with its 95% interval (``learning.table``).

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
SB3_CASES = learning.sb3_targets()
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


@pytest.mark.parametrize(("algorithm", "target"), SB3_CASES,
                         ids=[f"{a}-{t.backend}-{t.task}-{learning.PEER}" for a, t in SB3_CASES])
def test_sb3_runs_the_same_target(algorithm, target):
    """SB3's rows for the table (module docstring): no threshold assertion."""
    reason = learning.unavailable(algorithm, target, learning.PEER)
    if reason:
        print(f"\n{algorithm} on {target.backend}/{target.task}: {learning.PEER} skipped: {reason}")
        pytest.skip(reason)
    rows = learning.run_target(algorithm, target, seeds=3, out_dir=OUT, impl=learning.PEER)
    ROWS.append(rows)
    broken = rows[rows["final_return"].isna()]
    assert broken.empty, (
        f"{algorithm} ({learning.PEER}) on {target.backend}/{target.task}: seeds "
        f"{broken['seed'].tolist()} recorded no final_return (see {broken['file'].tolist()})")


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
