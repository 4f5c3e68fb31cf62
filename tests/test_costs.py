"""The cost ladder (``python -m harness.costs``): its rows, and the tables made from them."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness import costs


def test_ladder_is_cumulative_from_the_faithful_variant_to_the_defaults():
    from reference_impls import ppo

    rows = costs.steps("ppo")
    assert [r[2:] for r in rows[-2:]] == [("rlgauge", "compile"), ("sb3", "eager")]
    first, last_eager = rows[0][1], rows[-3][1]
    assert first == dict(advantage_every_epoch=True, functional_loss=True, fused_adam=False)
    # the last eager row is the defaults: every setting the ladder changed is back at its default
    defaults = ppo.Config()
    assert all(getattr(defaults, k) == v for k, v in last_eager.items())
    # each row keeps the settings above it
    for above, below in zip(rows[:-3], rows[1:-2], strict=True):
        assert set(above[1]) <= set(below[1])


@pytest.mark.parametrize("algorithm", sorted(costs.LADDERS))
def test_every_ladder_ends_at_the_algorithm_defaults(algorithm):
    """... except DQN's, whose defaults keep torch's default Adam: its ladder's first row is
    its defaults and its last one adds the fused kernel."""
    import importlib

    config = importlib.import_module(f"reference_impls.{algorithm}").Config()
    rows = costs.steps(algorithm)
    settings = rows[0 if algorithm == "dqn" else -3][1]
    assert all(getattr(config, k) == v for k, v in settings.items()), settings
    assert rows[-2][1] == rows[-3][1]  # the compiled row runs the last eager row's settings


def test_unknown_algorithm_is_one_line_exit_2(capsys, tmp_path):
    assert costs.main(["recurrent_dqn", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'recurrent_dqn'" in err and "ppo" in err
    assert not (tmp_path / "x").exists()


def _table() -> pd.DataFrame:
    nan = math.nan
    base = dict(compile_time_s=0.0, collect_fps=10_000.0, train_fps=nan, steady_fps=nan,
                final_return=500.0)
    return pd.DataFrame([
        dict(step="faithful", impl="rlgauge", compile="eager", wall_time_s=50.0, env_time_s=5.0,
             policy_time_s=4.0, update_time_s=40.0, **base),
        dict(step="once", impl="rlgauge", compile="eager", wall_time_s=30.0, env_time_s=5.0,
             policy_time_s=4.0, update_time_s=20.0, **base),
        dict(step="compiled", impl="rlgauge", compile="compile", wall_time_s=35.0,
             env_time_s=5.0, policy_time_s=4.0, update_time_s=15.0,
             **{**base, "compile_time_s": 10.0}),
        dict(step="sb3", impl="sb3", compile="eager", wall_time_s=20.0, env_time_s=nan,
             policy_time_s=nan, update_time_s=15.0, **{**base, "collect_fps": 20_000.0}),
    ])


def test_ladder_table_shows_what_each_step_removed_and_the_ratio_to_sb3():
    shown = costs.ladder_table(_table()).set_index("step")
    assert shown.loc["once", "removed (s)"] == "+20.0"
    assert shown.loc["once", "share of faithful wall"] == "+40%"
    assert shown.loc["once", "wall / SB3 wall"] == "1.50x"
    assert shown.loc["faithful", "wall / SB3 wall"] == "2.50x"
    # the compiled row is compared with the eager defaults above it: it cost 5 s
    assert shown.loc["compiled", "removed (s)"] == "-5.0"
    assert shown.loc["compiled", "compile (s)"] == "10.0"
    assert shown.loc["sb3", "removed (s)"] == "" and shown.loc["sb3", "wall / SB3 wall"] == ""


def test_floors_table_compares_per_frame_costs_with_sb3():
    shown = costs.floors_table(_table(), frames=100_000).set_index("phase")
    # rlgauge's eager defaults: (5 + 4) s of collection over 1e5 frames = 90 us/frame;
    # SB3 collected at 20k frames/s = 50 us/frame
    assert shown.loc["collect", "rlgauge (us/frame)"] == "90"
    assert shown.loc["collect", "SB3 (us/frame)"] == "50"
    assert shown.loc["collect", "rlgauge / SB3"] == "1.80x"
    assert shown.loc["update", "rlgauge / SB3"] == "1.33x"
