"""The regression gate (harness/gate.py): its statistics and verdicts, baselines, the worker
protocol end to end on a toy checkout, the torchrl compatibility module and the test-only
slowdown knob. Everything here runs in seconds; measuring the gate itself is
``nox -s gate_validity``."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import pytest

from harness import compat, gate

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a directory of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

# --------------------------------------------------------------------------- statistics


def test_signed_rank_cdf_matches_the_table():
    cdf = gate.signed_rank_cdf(10)
    # 25 of the 2^10 sign patterns of ranks 1..10 have a positive-rank sum <= 8
    assert cdf[8] == pytest.approx(25 / 1024)
    assert cdf[-1] == pytest.approx(1.0)
    assert cdf[27] == pytest.approx(0.5, abs=0.03)  # symmetric around n(n+1)/4 = 27.5


def test_hodges_lehmann_interval_uses_the_9th_walsh_averages_for_n10():
    d = [float(i) for i in range(1, 11)]
    est, lo, hi = gate.hodges_lehmann(d, 0.95)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(10) for j in range(i, 10))
    assert est == pytest.approx(5.5)  # symmetric data: the centre
    # Hollander & Wolfe: n = 10, 95% -> C = 9: the 9th smallest and 9th largest of 55
    assert (lo, hi) == (walsh[8], walsh[46])


def test_hodges_lehmann_is_unbounded_when_too_few_rounds():
    # 5 pairs: the most extreme sign pattern has probability 2^-5 = 3.1% > 2.5%
    assert gate.hodges_lehmann([0.1] * 5, 0.95)[1:] == (-math.inf, math.inf)
    assert math.isfinite(gate.hodges_lehmann([0.1] * 6, 0.95)[1])


LOG = math.log


@pytest.mark.parametrize("est, lo, hi, direction, expected", [
    (LOG(1.20), LOG(1.10), LOG(1.30), "lower", "REGRESSION"),  # slower, beyond 5%, significant
    (LOG(1.03), LOG(1.01), LOG(1.05), "lower", "slower"),  # significant, within the threshold
    (LOG(1.20), LOG(0.98), LOG(1.40), "lower", "no change"),  # big but not significant
    (LOG(0.80), LOG(0.70), LOG(0.90), "lower", "improved"),
    (LOG(0.98), LOG(0.97), LOG(0.99), "lower", "faster"),
    (LOG(0.80), LOG(0.70), LOG(0.90), "higher", "REGRESSION"),  # throughput fell by 20%
    (LOG(1.20), LOG(1.10), LOG(1.30), "higher", "improved"),  # throughput rose: not a failure
    (LOG(1.20), LOG(1.10), LOG(1.30), "info", "not gated"),
], ids=["slower", "slower-within", "not-significant", "improved", "faster-within",
        "throughput-fell", "throughput-rose", "info"])
def test_verdict_needs_threshold_and_significance_in_the_right_direction(est, lo, hi,
                                                                         direction, expected):
    assert gate.verdict(est, lo, hi, 0.05, direction) == expected


@pytest.mark.parametrize("method, unit, declared, expected", [
    ("time_gae", "seconds", None, "lower"),
    ("track_frames_per_s", "frames/s", None, "higher"),
    ("track_us_per_step", "us/step", None, "lower"),
    ("track_s_per_frame", "seconds", None, "lower"),
    ("track_env_share", "fraction", None, "info"),
    ("track_max_abs_error", "abs err", None, "info"),
    ("track_score", "points", True, "higher"),
])
def test_direction_from_prefix_unit_or_declaration(method, unit, declared, expected):
    assert gate.direction(method, unit, declared) == expected


# --------------------------------------------------------------------------- comparison


def _run(values: dict[str, dict[str, list[float]]], *, meta=None, versions=None) -> gate.Run:
    """A Run whose sides' cases have one sample list per round (values[side][case])."""
    sides = list(values)
    cases = {c for side in values.values() for c in side}
    meta = meta or {}
    info = {}
    for side in sides:
        info[side] = {"cases": {c: {"unit": "seconds", "direction": "lower", "kind": "time",
                                    "version": (versions or {}).get((side, c), "v1"),
                                    **meta.get(c, {})} for c in values[side]},
                      "skipped": {}, "errors": {}, "versions": {"torch": "x"}}
    n = max(len(v) for side in values.values() for v in side.values())
    rounds = []
    for i in range(n):
        rounds.append({side: {"cases": {c: {"samples": [v[i]] * 3, "cpu": [v[i]] * 3,
                                            "warmup": [v[i]]} for c, v in values[side].items()},
                              "calibration": [1.0], "calibration_cpu": [1.0]}
                       for side in sides})
    del cases
    return gate.Run([{"name": s} for s in sides], rounds, info)


NOISE = [1.00, 1.02, 0.99, 1.01, 0.98, 1.03, 1.00, 0.97, 1.02, 1.01]


def test_compare_flags_a_20_percent_slowdown_and_exits_1():
    r = _run({"base": {"a": NOISE, "b": NOISE},
              "head": {"a": [1.2 * x for x in reversed(NOISE)], "b": list(reversed(NOISE))}})
    rows = {row.case: row for row in gate.compare(r, "base", "head", threshold=0.05)}
    assert rows["a"].verdict == "REGRESSION"
    assert rows["a"].ratio == pytest.approx(1.2, rel=0.03)
    assert rows["b"].verdict == "no change"
    assert gate.gate_exit_code(rows.values()) == 1
    assert "**REGRESSION**" in gate.markdown(list(rows.values()))


def test_compare_reads_throughput_the_right_way_round():
    meta = {"fps": {"unit": "frames/s", "direction": "higher", "kind": "track"}}
    faster = _run({"base": {"fps": NOISE}, "head": {"fps": [1.3 * x for x in NOISE]}},
                  meta=meta)
    slower = _run({"base": {"fps": NOISE}, "head": {"fps": [0.7 * x for x in NOISE]}},
                  meta=meta)
    assert gate.compare(faster, "base", "head")[0].verdict == "improved"
    assert gate.compare(slower, "base", "head")[0].verdict == "REGRESSION"


def test_compare_new_removed_changed_and_errors():
    r = _run({"base": {"old": NOISE, "same": NOISE},
              "head": {"new": NOISE, "same": [1.5 * x for x in NOISE]}},
             versions={("head", "same"): "v2"})
    r.info["head"]["errors"]["old"] = "setup: KeyError: 'x'"
    rows = {row.case: row.verdict for row in gate.compare(r, "base", "head")}
    assert rows["new"] == "new"
    assert rows["old"] == "error: setup: KeyError: 'x'"
    # the benchmark's own code changed between the sides: reported, never fails the gate
    assert rows["same"] == "REGRESSION (benchmark code changed: not gated)"
    assert gate.gate_exit_code(gate.compare(r, "base", "head")) == 2


def test_side_order_alternates_and_rotates():
    assert [gate.side_order(2, i) for i in range(3)] == [[0, 1], [1, 0], [0, 1]]
    assert sorted(tuple(gate.side_order(3, i)) for i in range(3)) == [
        (0, 1, 2), (1, 2, 0), (2, 0, 1)]


def test_round_value_statistics_clock_and_calibration():
    result = {"cases": {"c": {"samples": [4.0, 1.0, 2.0, 3.0], "cpu": [2.0, 0.5, 1.0, 1.5],
                              "warmup": [10.0]}},
              "calibration": [2.0], "calibration_cpu": [0.5]}
    kw = {"direction_": "lower"}
    assert gate.round_value(result, "c", normalise=False, clock="wall", stat="median",
                            **kw) == 2.5
    assert gate.round_value(result, "c", normalise=False, clock="cpu", stat="min", **kw) == 0.5
    assert gate.round_value(result, "c", normalise=True, clock="wall", stat="min", **kw) == 0.5
    assert gate.round_value(result, "c", normalise=False, clock="wall", stat="median",
                            warmup=True, **kw) == 3.0
    assert gate.round_value(result, "missing", normalise=False, **kw) is None


def test_measure_scales_cpu_time_like_the_benchmark_timer():
    from harness import timing

    t = timing.measure(lambda: common._spin(20_000), repeat=5, warmup=2, cpu=True,
                       timer=lambda: time.perf_counter() / 10)
    assert len(t.samples) == len(t.cpu_samples) == 5 and len(t.warmup) == 2
    # a busy loop: CPU time ~ wall time, both per "operation" (the timer divides by 10)
    assert 0.3 < statistics.median(t.cpu_samples) / t.median < 1.2


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_pin_process_pins_one_thread_and_the_last_cpu():
    import torch

    from harness import timing

    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        applied = timing.pin_process(threads=1, cpu=-1)
        assert applied == {"threads": 1, "cpu": max(before)}
        assert os.sched_getaffinity(0) == {max(before)} and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="CPU 4096 is not available"):
            timing.pin_process(threads=None, cpu=4096)
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- baselines


def test_baseline_round_trip(tmp_path):
    r = _run({"head": {"a": NOISE, "b": NOISE}})
    path = tmp_path / "baseline" / "vm.csv"
    gate.save_baseline(gate.baseline_rows(r, "head", "abc123"), path)
    stored = gate.load_baseline(path)
    assert [row["benchmark"] for row in stored] == ["a", "b"]
    assert stored[0]["median"] == pytest.approx(1.005)
    assert stored[0]["commit"] == "abc123" and stored[0]["rounds"] == 10
    same = gate.compare_baseline(r, "head", stored)
    assert {row.verdict for row in same} == {"no change"}
    slower = _run({"head": {"a": [1.25 * x for x in NOISE], "b": NOISE}})
    rows = {row.case: row for row in gate.compare_baseline(slower, "head", stored)}
    assert rows["a"].verdict == "REGRESSION"
    assert rows["a"].ratio == pytest.approx(1.25, rel=0.01)


def test_stored_baseline_from_another_cpu_model_is_refused(tmp_path):
    """A baseline records its CPU model; measuring against one from another CPU model stops
    with one line (exit 2) instead of reading the hardware difference as a regression, and an
    old baseline without the column is accepted with a note. Fails if the hardware check is
    dropped (a committed baseline measured on a Xeon would then judge an EPYC's run)."""
    from harness import devices

    r = _run({"head": {"a": NOISE}})
    rows = gate.baseline_rows(r, "head", "abc123")
    assert {row["cpu"] for row in rows} == {devices.cpu_model()}
    path = tmp_path / "vm.csv"
    gate.save_baseline(rows, path)
    stored = gate.load_baseline(path)
    assert "Baseline and this run" in gate.check_baseline_hardware(stored, path,
                                                                   devices.cpu_model())
    with pytest.raises(ValueError, match="was measured on .*this machine is Other CPU 9000"):
        gate.check_baseline_hardware(stored, path, "Other CPU 9000")
    old = [{k: v for k, v in row.items() if k != "cpu"} for row in stored]
    assert "does not record its CPU" in gate.check_baseline_hardware(old, path, "Other")
    # the committed baseline (saved before the column existed) still loads
    committed = gate.load_baseline(gate.ROOT / "results" / "baseline" / "vm.csv")
    assert committed and "cpu" not in committed[0]


def test_load_baseline_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read baseline .*nope.csv"):
        gate.load_baseline(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- end to end

TOY_BENCH = '''
class Toy:
    params = [[20000]]
    param_names = ["n"]

    def setup(self, n):
        self.data = list(range(n))

    def time_sum(self, n):
        sum(x * x for x in self.data)

    def time_plain(self, n):
        sum(x * x for x in self.data)

    def track_items_per_s(self, n):
        return 1000.0
    track_items_per_s.unit = "items/s"
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_gate_end_to_end_detects_injected_slowdown(tmp_path):
    """Two workers on a toy checkout (a copy of bench/common.py plus one benchmark), the
    injection knob on one side for one benchmark: the gate names it and exits 1."""
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "__init__.py").write_text("")
    shutil.copy(ROOT / "bench" / "common.py", tree / "bench" / "common.py")
    (tree / "bench" / "bench_toy.py").write_text(TOY_BENCH)
    fast = gate.Settings(budget_s=0.02, warmup=1, min_samples=5, max_samples=8)
    sides = [gate.Side("base", tree, settings=fast),
             gate.Side("head", tree, settings=fast,
                       env={gate.INJECT_ENV: r"Toy\.time_sum=1.0"})]
    t0 = time.perf_counter()
    result = gate.run(sides, regex="bench_toy", rounds=8, workdir=tmp_path / "work")
    assert time.perf_counter() - t0 < 120
    assert set(result.info["head"]["cases"]) == {
        "bench_toy.Toy.time_sum(n=20000)", "bench_toy.Toy.time_plain(n=20000)",
        "bench_toy.Toy.track_items_per_s(n=20000)"}
    rows = {r.case: r for r in gate.compare(result, "base", "head", threshold=0.25)}
    slowed = rows["bench_toy.Toy.time_sum(n=20000)"]
    assert slowed.verdict == "REGRESSION", gate.markdown(list(rows.values()))
    assert 1.5 < slowed.ratio < 2.6  # +100% of the call's CPU time
    assert rows["bench_toy.Toy.time_plain(n=20000)"].verdict != "REGRESSION"
    assert rows["bench_toy.Toy.track_items_per_s(n=20000)"].direction == "higher"
    assert gate.gate_exit_code(rows.values()) == 1


def test_cli_bad_revision_is_one_line_and_exit_2(capsys):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert gate.main(["regress", "no-such-rev-xyz", "HEAD"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown git revision 'no-such-rev-xyz'"]


def test_versions_needs_label_and_python(capsys):
    assert gate.main(["versions", "0.13.3"]) == 2
    assert "expected LABEL=PYTHON" in capsys.readouterr().err


# --------------------------------------------------------------------------- compat


def _old_style(name: str):
    """A stand-in for a torchrl 0.13 class: same name, no 0.14 keywords."""

    def __init__(self, num_slices=None, cache_values=False):
        self.num_slices, self.cache_values = num_slices, cache_values

    return type(name, (), {"__init__": __init__, "__module__": "torchrl.data.fake"})


def test_compat_drops_0_14_keywords_that_mean_the_0_13_behaviour():
    cls = _old_style("SliceSampler")
    assert set(compat.missing_kwargs(cls)) == {"init_key", "end_keys", "step_key", "fragmented"}
    obj = compat.construct(cls, num_slices=4, init_key=None, cache_values=True)
    assert (obj.num_slices, obj.cache_values) == (4, True)
    with pytest.raises(TypeError, match=r"init_key='is_init'\) needs torchrl >= 0.14"):
        compat.construct(cls, num_slices=4, init_key="is_init")


def test_compat_adapt_patches_the_class_once():
    cls = _old_style("ClipPPOLoss")
    assert compat._adapt(cls) and not compat._adapt(cls)
    assert cls(num_slices=2, delay_actor=False).num_slices == 2
    with pytest.raises(TypeError, match="delay_actor"):
        cls(delay_actor=True)


def test_compat_on_the_pinned_torchrl_needs_no_patch():
    if compat.versions()["torchrl"] != "0.14.1":
        pytest.skip("checks the pinned torchrl 0.14.1")
    assert compat.apply() == []
    from torchrl.collectors import Collector

    assert compat.collector_class("sync") is Collector
    with pytest.raises(ValueError, match="unknown collector role 'nope'"):
        compat.collector_class("nope")


# --------------------------------------------------------------------------- slowdown knob


def test_injected_slowdown_parses_the_variable():
    spec = r"GAE\.time_gae\(device=cpu=0.10; Sample=0.05"
    assert common.injected_slowdown("bench_gae.GAE.time_gae(device=cpu, impl=x)", spec) == 0.10
    assert common.injected_slowdown("bench_buffers.Sample.time_sample(size=10)", spec) == 0.05
    assert common.injected_slowdown("bench_envs.EnvStep.time_steps()", spec) == 0.0
    assert common.injected_slowdown("anything", "") == 0.0
    with pytest.raises(ValueError, match="'GAE' is not REGEX=FRACTION"):
        common.injected_slowdown("x", "GAE")


def test_slowed_down_adds_the_asked_fraction_of_cpu_work():
    def call():
        common._spin(50_000)

    assert common.slowed_down("Toy", call, "") is call
    slowed = common.slowed_down("Toy", call, "Toy=0.5")
    plain, wrapped = [], []
    for _ in range(7):
        t0 = time.process_time()
        call()
        plain.append(time.process_time() - t0)
        t0 = time.process_time()
        slowed()
        wrapped.append(time.process_time() - t0)
    ratio = sorted(wrapped)[3] / sorted(plain)[3]
    assert 1.25 < ratio < 1.9  # 1.5 expected: half the call's own CPU time added
    assert len(slowed.iterations) == 7 and min(slowed.iterations) > 0


def test_choose_defaults_holds_candidates_to_the_block_trials_false_alarms():
    """A setting whose resampled trials look clean but whose independent blocks alarmed is not
    chosen (resampling assumes exchangeable rounds; fresh workers per block break that)."""
    def rates(trials, runs_alarmed, detected):
        return gate.Rates(trials=trials, aa_runs_alarmed=runs_alarmed,
                          detected={0.05: [detected[0], 100], 0.10: [detected[1], 100]})

    sharp, plain = ("cal", 0.95, 0.02), ("raw", 0.95, 0.05)
    table = {("resampled", *sharp): rates(2000, 18, (88, 97)),   # 0.9%: looks fine
             ("blocks", *sharp): rates(12, 3, (80, 95)),          # but 3 of 12 runs alarmed
             ("resampled", *plain): rates(2000, 18, (78, 97)),
             ("blocks", *plain): rates(12, 0, (70, 95))}
    assert gate.chosen_false_alarms(table, sharp) == pytest.approx(0.25)
    assert gate.chosen_false_alarms(table, plain) == pytest.approx(0.009)
    assert gate.choose_defaults(table, (0.05, 0.10)) == (plain, True)
    # without block trials the resampled rate decides, and the sharper setting wins
    resampled_only = {k: v for k, v in table.items() if k[0] == "resampled"}
    assert gate.choose_defaults(resampled_only, (0.05, 0.10)) == (sharp, True)
