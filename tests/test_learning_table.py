"""``nox -s learning``'s table from hand-made records (no training): rlgauge and SB3 lines per
target, the wall-time ratio, the SB3 cases and their skips. The learning runs themselves are
in test_learning.py (slow)."""

from __future__ import annotations

import pandas as pd
import pytest

from harness import learning, peers, results
from harness.training import LearningTarget

CARTPOLE = LearningTarget("gymnasium", "cartpole", frames=100_000, threshold=475.0)


def _runs(impl: str, returns, walls, fps):
    """(seed, records, file) per seed, as ``learning._run_seeds`` returns them."""
    return [(seed, results.make_records(
        [{"metric": "train_fps", "value": f, "unit": "frames/s"},
         {"metric": "wall_time_s", "value": w, "unit": "s"},
         {"metric": "final_return", "value": r, "unit": "return"}],
        algorithm="ppo", impl=impl, backend="gymnasium", task="cartpole", device="cpu",
        seed=seed), f"{impl}-s{seed}.csv")
        for seed, (r, w, f) in enumerate(zip(returns, walls, fps, strict=True))]


def _rows() -> pd.DataFrame:
    ours = learning.target_rows("ppo", CARTPOLE, _runs(
        "rlgauge", (500.0, 480.0, 500.0), (300.0, 310.0, 320.0), (333.0, 322.0, 312.0)))
    theirs = learning.target_rows("ppo", CARTPOLE, _runs(
        "sb3", (500.0, 200.0, 300.0), (100.0, 110.0, 120.0), (1000.0, 909.0, 833.0)), "sb3")
    return pd.concat([theirs, ours], ignore_index=True)  # SB3's first: the table reorders


def test_learning_table_has_a_line_per_impl_and_the_wall_ratio():
    table = learning.table(_rows()).set_index("impl")
    assert list(table.index) == ["rlgauge", "sb3"]  # rlgauge's line first
    assert table.loc["rlgauge", "per seed"] == "500.0, 480.0, 500.0"
    assert table.loc["sb3", "per seed"] == "500.0, 200.0, 300.0"
    # SB3's verdict is reported (median 300 < 475), rlgauge's is its own (median 500)
    assert table.loc["rlgauge", "met"] == "yes" and table.loc["sb3", "met"] == "NO"
    assert table.loc["rlgauge", "wall s (per seed, median)"] == 310.0
    assert table.loc["sb3", "wall s (per seed, median)"] == 110.0
    assert table.loc["rlgauge", "frames/s (median)"] == 322
    assert table.loc["sb3", "frames/s (median)"] == 909
    # 310 / 110 = 2.82; change (310 - 110) / 110 = +181.8%; Welch: difference of means 200,
    # standard error sqrt(100/3 + 100/3) = 8.165 on 4 degrees of freedom (t = 2.776): 200 +- 22.67,
    # over SB3's mean 110: [+161.2%, +202.4%]
    assert table.loc["rlgauge", learning.WALL_RATIO] == "2.82 (+181.8% [+161.2%, +202.4%])"
    assert table.loc["sb3", learning.WALL_RATIO] == ""


def test_learning_wall_ratio_needs_both_impls_and_has_no_interval_for_one_seed():
    rows = _rows()
    ours, theirs = rows[rows["impl"] == "rlgauge"], rows[rows["impl"] == "sb3"]
    assert learning.table(ours)[learning.WALL_RATIO].tolist() == [""]
    # one seed a side: the ratio, no interval
    assert learning.wall_ratio(ours[ours["seed"] == 0], theirs[theirs["seed"] == 0]) \
        == "3.00 (+200.0%)"
    assert learning.wall_ratio(ours, theirs.assign(wall_time_s=float("nan"))) == ""


def test_learning_sb3_cases_are_the_targets_with_an_sb3_counterpart(monkeypatch):
    ids = [f"{a}-{t.backend}-{t.task}" for a, t in learning.sb3_targets()]
    assert ids == ["ppo-gymnasium-cartpole", "ppo-gymnasium-pendulum", "dqn-gymnasium-cartpole",
                   "ddpg-gymnasium-pendulum", "recurrent_ppo-gymnasium-cartpole-novel"]
    # recurrent_dqn has no SB3 counterpart; SB3 runs gymnasium tasks only
    swingup = LearningTarget("dm_control", "cartpole-swingup", frames=1_000, threshold=0.0)
    novel = LearningTarget("gymnasium", "cartpole-novel", frames=1_000, threshold=0.0)
    monkeypatch.setattr(learning, "targets", lambda: [("ppo", swingup), ("ppo", CARTPOLE),
                                                      ("recurrent_dqn", novel)])
    assert learning.sb3_targets() == [("ppo", CARTPOLE)]


def test_learning_unavailable_names_why_sb3_cannot_run_a_target(monkeypatch):
    assert learning.unavailable("ppo", CARTPOLE) is None
    assert learning.unavailable("ppo", CARTPOLE, "rlgauge") is None
    prioritized = LearningTarget("gymnasium", "cartpole", frames=50_000, threshold=475.0,
                                 overrides={"prioritized": True})
    assert "cannot follow prioritized=True" in learning.unavailable("dqn", prioritized)
    assert learning.unavailable("dqn", prioritized, "rlgauge") is None
    monkeypatch.setitem(peers.SB3_CLASSES, "ppo", ("rlgauge_no_such_module", "PPO"))
    assert "(not installed)" in learning.unavailable("ppo", CARTPOLE)
    with pytest.raises(Exception, match="not installed"):  # before any work
        learning.run_target("ppo", CARTPOLE, impl="sb3", out_dir="/nonexistent/never-written")


def test_learning_table_keeps_other_impls_lines_and_drops_a_stale_ratio(tmp_path):
    """A session that reran only SB3 on a target replaces SB3's line, keeps rlgauge's (with its
    date) without its ratio; a table written before the impl column reads as rlgauge's."""
    old = pd.DataFrame([{"algorithm": a, "task": "gymnasium/cartpole", "frames": 100_000,
                         "threshold": 475.0, "source": "RL Zoo", "criterion": "final_return >= 475",
                         "per seed": "500.0, 500.0, 500.0", "median": 500.0, "met": "yes",
                         "wall s (per seed, median)": 151.8, "date": "2026-11-20"}
                        for a in ("dqn", "ppo")])
    old.to_csv(tmp_path / "learning-m.csv", index=False)
    rows = _rows()
    learning.write_table(rows, tmp_path, "m")  # both impls: ppo's rlgauge line is replaced
    table = pd.read_csv(tmp_path / "learning-m.csv")
    assert list(zip(table["algorithm"], table["impl"], table["date"], strict=True))[:2] == [
        ("dqn", "rlgauge", "2026-11-20"), ("ppo", "rlgauge", table["date"].iloc[2])]
    assert list(table["impl"]) == ["rlgauge", "rlgauge", "sb3"]
    assert table[learning.WALL_RATIO].fillna("").tolist() == [
        "", "2.82 (+181.8% [+161.2%, +202.4%])", ""]
    learning.write_table(rows[rows["impl"] == "sb3"], tmp_path, "m")  # SB3 alone
    table = pd.read_csv(tmp_path / "learning-m.csv").astype(object).fillna("")
    assert list(zip(table["algorithm"], table["impl"], strict=True)) == [
        ("dqn", "rlgauge"), ("ppo", "rlgauge"), ("ppo", "sb3")]
    assert table["per seed"].tolist()[1:] == ["500.0, 480.0, 500.0", "500.0, 200.0, 300.0"]
    assert table[learning.WALL_RATIO].tolist() == ["", "", ""]
    learning.write_table(rows[rows["impl"] == "rlgauge"], tmp_path, "m")  # rlgauge alone
    table = pd.read_csv(tmp_path / "learning-m.csv").astype(object).fillna("")
    assert list(table["impl"]) == ["rlgauge", "rlgauge", "sb3"]  # still rlgauge's line first
    assert table[learning.WALL_RATIO].tolist() == ["", "", ""]  # SB3's line is not this session's
    text = (tmp_path / "learning-m.md").read_text()
    assert "nan" not in text and "| sb3 " in text
