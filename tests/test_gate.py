"""The regression gate (harness/gate/): its statistics (checked against scipy) and verdicts,
baselines and run files (format versions), the worker protocol end to end on a toy checkout,
the torchrl compatibility module and the worker's test-only slowdown knob. Everything here
runs in seconds; measuring the gate itself is ``nox -s gate_validity``."""

from __future__ import annotations

import ast
import csv
import dataclasses
import gzip
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from harness import compat, gate
from harness.gate import worker

ROOT = Path(__file__).resolve().parents[1]

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



# The Hodges-Lehmann interval and the signed-rank distribution are written here (scipy has no
# HL interval); these check them against scipy.stats.wilcoxon.


def _walsh_t_plus(d, mu: float = 0.0) -> float:
    """The signed-rank statistic T+ of ``d - mu`` as the gate's interval counts it: the Walsh
    averages above ``mu``, a Walsh average equal to ``mu`` counting one half."""
    walsh = [(d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d))]
    return sum(w > mu for w in walsh) + 0.5 * sum(w == mu for w in walsh)


@pytest.mark.parametrize("n", [1, 5, 6, 9, 10, 15, 25, 40, 60])
def test_signed_rank_cdf_and_statistic_match_scipy_wilcoxon_exact(n):
    d = np.random.default_rng(n).normal(0.01, 0.02, n)
    res = sps.wilcoxon(d, alternative="less", method="exact")  # statistic: T+; p: P(T+ <= t)
    t_plus = int(res.statistic)
    assert _walsh_t_plus(d) == t_plus  # Tukey: T+ = number of positive Walsh averages
    assert gate.signed_rank_cdf(n)[t_plus] == pytest.approx(res.pvalue, rel=1e-12, abs=0)
    two_sided = sps.wilcoxon(d, method="exact").pvalue
    cdf = gate.signed_rank_cdf(n)
    expected = min(1.0, 2 * min(cdf[t_plus], 1 - (cdf[t_plus - 1] if t_plus else 0.0)))
    assert expected == pytest.approx(two_sided, rel=1e-12)


@pytest.mark.parametrize("n, confidence", [(6, 0.95), (8, 0.99), (10, 0.95), (15, 0.95),
                                           (15, 0.99), (30, 0.95), (60, 0.95)])
def test_hodges_lehmann_interval_inverts_scipys_exact_signed_rank_test(n, confidence):
    """The interval holds exactly the shifts mu that the two-sided exact signed-rank test of
    ``d - mu`` does not reject at 1 - confidence: just inside a bound scipy's p > alpha, just
    outside p <= alpha; the estimate is the median of the Walsh averages."""
    d = np.random.default_rng(100 + n).normal(0.01, 0.02, n)
    est, lo, hi = gate.hodges_lehmann(list(d), confidence)
    walsh = np.sort([(d[i] + d[j]) / 2 for i in range(n) for j in range(i, n)])
    assert est == pytest.approx(float(np.median(walsh)), abs=1e-15)
    eps = float(np.diff(walsh).min()) / 4
    alpha = 1 - confidence

    def p(mu: float) -> float:
        return sps.wilcoxon(d - mu, method="exact").pvalue

    assert p(lo + eps) > alpha and p(hi - eps) > alpha
    assert p(lo - eps) <= alpha and p(hi + eps) <= alpha


@pytest.mark.parametrize("n", [61, 80, 120])
def test_hodges_lehmann_normal_approximation_beyond_60_pairs(n):
    """Beyond 60 pairs the interval comes from the normal approximation of T+: outside it
    scipy's normal-approximation test (no continuity correction) rejects, and its bounds are
    within one Walsh average of the exact ones."""
    d = np.random.default_rng(n).normal(0.01, 0.02, n)
    est, lo, hi = gate.hodges_lehmann(list(d), 0.95)
    walsh = np.sort([(d[i] + d[j]) / 2 for i in range(n) for j in range(i, n)])
    eps = float(np.diff(walsh).min()) / 4
    for mu in (lo - eps, hi + eps):
        assert sps.wilcoxon(d - mu, method="approx", correction=False).pvalue < 0.05
    cdf = gate.signed_rank_cdf(n)
    k_exact = next(k for k, c in enumerate(cdf) if c > 0.025)
    k = int(np.searchsorted(walsh, lo)) + 1  # lo is the k-th smallest Walsh average
    assert abs(k - k_exact) <= 1 and hi == walsh[len(walsh) - k]


@pytest.mark.parametrize("d", [
    [0.0, 0.25, -0.25, 0.5, 0.5, -0.75, 0.0, 1.0],  # zeros and tied |d|
    [0.0, 0.0, 0.0, 0.125, -0.125, 0.25, 0.25, 0.25, -0.5, 0.0],
    [0.5, 0.5, 0.5, -0.5, 0.25, 0.75, 0.75, 0.0, 1.0, 1.0, -0.25, 0.5],
])
def test_signed_rank_statistic_with_ties_and_zeros_is_scipys_zsplit(d):
    """With zeros and ties the gate makes no correction: its interval inverts the Walsh-average
    count, which is scipy's T+ with zero ranks split between the signs (``zero_method=
    "zsplit"``, tied |d| at their mean rank), for every shift mu tried."""
    d = np.array(d)
    for mu in (0.0, 0.125, -0.25, 0.5):
        shifted = d - mu
        res = sps.wilcoxon(shifted, alternative="greater", zero_method="zsplit",
                           method="approx")
        assert _walsh_t_plus(d, mu) == pytest.approx(float(res.statistic))


def test_hodges_lehmann_of_constant_or_mostly_zero_differences():
    """As the code defines it: constant differences are a certain shift (a zero-width
    interval); mostly-zero differences give an estimate of 0 and an interval holding 0."""
    assert gate.hodges_lehmann([0.1] * 10, 0.95) == (0.1, 0.1, 0.1)
    est, lo, hi = gate.hodges_lehmann([0.0] * 8 + [0.02, -0.01], 0.95)
    assert est == 0.0 and lo <= 0.0 <= hi
    assert gate.verdict(est, lo, hi, 0.05, "lower") == "no change"


def _hand_quantile(values, p):
    """The gate's quantile before it used numpy: linear between the order statistics."""
    v = sorted(values)
    k = (len(v) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 25])
def test_quantile_is_numpy_linear_and_the_former_hand_formula(n):
    values = list(np.random.default_rng(n).lognormal(-9, 0.3, n))
    for p in gate.STATS.values():
        q = gate.quantile(values, p)
        assert q == float(np.quantile(values, p, method="linear"))
        # numpy's lerp rounds from the upper neighbour past the midpoint: 1 ulp at most
        assert q == pytest.approx(_hand_quantile(values, p), rel=4e-16, abs=0)
    assert gate.quantile(values, 0.0) == min(values)


def test_robust_sd_wilson_and_welch_match_their_textbook_formulas():
    values = list(np.random.default_rng(3).normal(0, 0.02, 31))
    m = statistics.median(values)
    mad = statistics.median(abs(v - m) for v in values)
    # scipy's normal scale is 1 / Phi^-1(3/4) = 1.482602..., the former constant 1.4826
    assert gate.robust_sd(values) == pytest.approx(1.482602218505602 * mad, rel=1e-12)
    assert gate.robust_sd(values) == pytest.approx(1.4826 * mad, rel=2e-6)
    z = statistics.NormalDist().inv_cdf(0.975)
    for k, n in [(0, 6), (1, 6), (29, 30), (30, 30), (14, 2000), (12, 12)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        lo, hi = gate.wilson(k, n)
        assert lo == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert hi == pytest.approx(min(1.0, centre + half), abs=1e-12)
    assert gate.wilson(0, 0) == (0.0, 1.0)
    diff, lo, hi = gate.welch_interval(0.10, 0.05, 10, 0.15, 0.07, 8, 0.95)
    assert diff == pytest.approx(0.05) and lo < diff < hi
    for bound in (lo, hi):  # at a bound Welch's test of the shifted means has p = 5%
        res = sps.ttest_ind_from_stats(0.15 - bound, 0.07, 8, 0.10, 0.05, 10, equal_var=False)
        assert res.pvalue == pytest.approx(0.05, rel=1e-9)
    assert gate.welch_interval(1.0, 0.0, 5, 1.0, 0.0, 5) == (0.0, 0.0, 0.0)


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
    assert gate.case_direction(method, unit, declared) == expected


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


def test_a_case_listed_not_gated_is_shown_with_its_verdict_and_never_fails():
    r = _run({"base": {"a": NOISE, "b": NOISE},
              "head": {"a": [1.2 * x for x in reversed(NOISE)], "b": list(reversed(NOISE))}})
    rows = {row.case: row for row in gate.compare(r, "base", "head", threshold=0.05,
                                                   not_gated={"a": "too noisy here"})}
    assert rows["a"].verdict == "not gated (too noisy here): REGRESSION"
    assert rows["a"].ratio == pytest.approx(1.2, rel=0.03)
    assert rows["b"].verdict == "no change"
    assert gate.gate_exit_code(rows.values()) == 0
    assert set(gate.NOT_GATED) <= set(gate.GATE_CASES)  # the list names default cases


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


def test_a_value_repeated_every_round_is_shown_but_not_gated():
    """A case whose rounds all repeat one value per side (measured once per run, in
    setup_cache) gives a zero-width interval that would make a 30% difference a REGRESSION;
    it is reported with its ratio and "not gated: measured once per run" instead, in the A/B
    gate, against a baseline, and left out of the validity study's gated cases."""
    r = _run({"base": {"once": [1.0] * 10, "timed": NOISE},
              "head": {"once": [1.3] * 10, "timed": list(reversed(NOISE))}})
    rows = {row.case: row for row in gate.compare(r, "base", "head")}
    assert rows["once"].verdict == gate.ONCE_PER_RUN == "not gated: measured once per run"
    assert rows["once"].ratio == pytest.approx(1.3) and rows["once"].low is None
    assert rows["timed"].verdict == "no change" and gate.gate_exit_code(rows.values()) == 0
    assert gate.once_per_run([2.0, 2.0]) and not gate.once_per_run([2.0])
    assert not gate.once_per_run([2.0, 2.0 + 1e-12])
    stored = gate.baseline_rows(_run({"head": {"once": [1.0] * 10}}), "head", "abc")
    later = gate.compare_baseline(_run({"head": {"once": [1.3] * 10}}), "head", stored)
    assert [(row.verdict, round(row.ratio, 6)) for row in later] == [(gate.ONCE_PER_RUN, 1.3)]
    aa = _run({"A": {"once": [1.0] * 10, "timed": NOISE}, "A'": {"once": [1.0] * 10,
                                                                 "timed": NOISE}})
    assert gate.validity.gated_cases(aa) == ["timed"]


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

    t = timing.measure(lambda: worker._spin(20_000), repeat=5, warmup=2, cpu=True,
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


def test_baseline_csv_has_a_format_and_a_newer_one_is_refused(tmp_path):
    """Saved baselines carry ``format`` = 1; a file without the column (the committed
    results/baseline/vm.csv) is format 1; a newer format stops with one ValueError naming the
    file and the formats this code reads."""
    path = tmp_path / "vm.csv"
    gate.save_baseline(gate.baseline_rows(_run({"head": {"a": NOISE}}), "head", "abc"), path)
    with open(path, newline="") as f:
        saved = list(csv.DictReader(f))
    assert [row["format"] for row in saved] == [str(gate.BASELINE_FORMAT)] == ["1"]
    assert "format" not in gate.load_baseline(path)[0]
    legacy = gate.load_baseline(gate.ROOT / "results" / "baseline" / "vm.csv")
    assert legacy and "format" not in legacy[0]
    with open(path, "w", newline="") as f:  # as a newer rlgauge might write it
        writer = csv.DictWriter(f, fieldnames=list(saved[0]))
        writer.writeheader()
        writer.writerows({**row, "format": "2"} for row in saved)
    with pytest.raises(ValueError, match=r"baseline '.*vm\.csv' has format 2; this rlgauge "
                                         r"reads format 1"):
        gate.load_baseline(path)


def test_run_file_has_a_format_and_a_newer_one_is_refused(tmp_path):
    r = _run({"base": {"a": NOISE}, "head": {"a": NOISE}})
    path = tmp_path / "run.json"
    r.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == gate.RUN_FORMAT == 1
    assert gate.Run.load(path) == r
    del data["format"]  # a run saved before formats existed: format 1
    path.write_text(json.dumps(data))
    assert gate.Run.load(path) == r
    path.write_text(json.dumps({**data, "format": 2}))
    with pytest.raises(ValueError, match=r"gate run '.*run\.json' has format 2; this rlgauge "
                                         r"reads format 1"):
        gate.Run.load(path)
    gz = tmp_path / "run.json.gz"  # how the committed validity runs are kept
    gz.write_bytes(gzip.compress(path.read_bytes().replace(b'"format": 2', b'"format": 1')))
    assert gate.Run.load(gz) == r


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
    injection knob on one side for one benchmark: the gate names it and exits 1. The knob is
    the worker's own: the checkout's bench/common.py has none."""
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


ORDER_BENCH = '''
import os


class Order:
    params = [["a", "b", "c"]]
    param_names = ["name"]

    def setup(self, name):
        with open(os.environ["ORDER_LOG"], "a") as log:
            log.write(f"{os.environ['ORDER_SIDE']} {name} {os.getpid()}\\n")
        if name == "b" and os.environ.get("ORDER_CRASH"):  # a counter file: dies on call 3
            with open(os.environ["ORDER_CRASH"], "a") as calls:
                calls.write("x")
            if os.path.getsize(os.environ["ORDER_CRASH"]) == 3:
                os._exit(3)  # the round's process dies in the middle of the round

    def time_x(self, name):
        if os.environ.get("ORDER_CALLS"):  # every call: which side took it, in what order
            with open(os.environ["ORDER_CALLS"], "a") as log:
                log.write(f"{os.environ['ORDER_SIDE']} {name}\\n")
        sum(range(100))
'''


def _order_run(tmp_path, interleave, calls=None, samples=(3, 3)):
    """Sides A and B measuring ``ORDER_BENCH`` in 3 rounds: the run, and the order of the
    setups after the servers' warm-up (side, case); with ``calls``, every call is logged there.
    ``samples``: (min_samples, max_samples) of B (A takes 3)."""
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "__init__.py").write_text("")
    (tree / "bench" / "bench_order.py").write_text(ORDER_BENCH)
    log = tmp_path / "order.log"
    fast = gate.Settings(budget_s=0.001, warmup=1, min_samples=3, max_samples=3,
                         calibration_calls=0)
    env = {"ORDER_LOG": str(log), **({"ORDER_CALLS": str(calls)} if calls else {})}
    b = dataclasses.replace(fast, min_samples=samples[0], max_samples=samples[1])
    sides = [gate.Side(name, tree, settings=settings, env={**env, "ORDER_SIDE": name})
             for name, settings in (("A", fast), ("B", b))]
    result = gate.run(sides, regex="bench_order", rounds=3, workdir=tmp_path / "work",
                      interleave=interleave)
    lines = [ln.split() for ln in log.read_text().splitlines()]
    return result, [(side, name) for side, name, _ in lines[6:]]  # after the warm-up calls


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_case_by_case_rounds_measure_each_case_on_both_sides_back_to_back(tmp_path):
    """interleave="case": within a round, case after case, both sides measure the case one
    after the other, the side that goes first alternating; "round": each side measures its
    whole round in turn. Both give the same round files."""
    result, order = _order_run(tmp_path / "case", "case")
    assert len(order) == 3 * 3 * 2
    pairs = [order[i:i + 2] for i in range(0, len(order), 2)]
    assert all(p[0][1] == p[1][1] and {p[0][0], p[1][0]} == {"A", "B"} for p in pairs), order
    firsts = [p[0][0] for p in pairs]
    assert all(x != y for x, y in itertools.pairwise(firsts)), firsts  # A B, B A, A B ...
    assert [p[0][1] for p in pairs[:3]] == ["a", "b", "c"]  # round 0: unrotated
    assert [p[0][1] for p in pairs[3:6]] == ["b", "c", "a"]  # round 1: rotated by one
    assert result.interleave == "case"
    result_r, order_r = _order_run(tmp_path / "round", "round")
    assert [side for side, _ in order_r[:6]] == ["A"] * 3 + ["B"] * 3, order_r
    assert result_r.interleave == "round"
    for res in (result, result_r):
        for row in res.rounds:
            assert set(row) == {"A", "B"}
            for side in row.values():
                assert set(side["cases"]) == {f"bench_order.Order.time_x(name={n})"
                                              for n in "abc"}
                assert all(len(v["cpu"]) == 3 for v in side["cases"].values())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_sample_by_sample_rounds_alternate_the_sides_samples_of_each_case(tmp_path):
    """interleave="sample" (the default): case by case, both sides set the case up and take
    their warm-up call, then their samples alternate, the side that goes first alternating
    every pass (A B, B A, ...); a side that wants more samples (B: 5, A: 3) goes on alone.
    The round files are those the other modes write."""
    calls = tmp_path / "calls.log"
    result, order = _order_run(tmp_path, "sample", calls=calls, samples=(5, 5))
    assert result.interleave == "sample" == gate.cases.DEFAULT_INTERLEAVE
    assert len(order) == 3 * 3 * 2  # a setup per case, side and round
    logged = [tuple(ln.split()) for ln in calls.read_text().splitlines()][6:]  # after warm-up
    per_case = [logged[i:i + 10] for i in range(0, len(logged), 10)]  # 2 warm-ups + 3 + 5
    assert len(per_case) == 9 and all(len(c) == 10 for c in per_case), logged
    for k, case in enumerate(per_case):
        assert len({name for _, name in case}) == 1, case  # one case at a time
        first = case[0][0]
        assert [side for side, _ in case[:2]] == [first, "B" if first == "A" else "A"]
        sampled = [side for side, _ in case[2:]]  # A B | B A | A B, then B's last two alone
        assert sampled[:6] == (list("ABBAAB") if first == "A" else list("BAABBA")), (k, sampled)
        assert sampled[6:] == ["B", "B"], (k, sampled)
    for row in result.rounds:
        for name, side in row.items():
            assert set(side["cases"]) == {f"bench_order.Order.time_x(name={n})" for n in "abc"}
            for value in side["cases"].values():
                assert len(value["cpu"]) == len(value["samples"]) == (3 if name == "A" else 5)
                assert len(value["warmup"]) == 1 and value["seconds"] > 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_a_round_process_that_dies_mid_round_fails_that_round_only(tmp_path):
    """A benchmark that kills the round's process: that side's round is an error naming the
    exit, the other side's round is whole, and the next rounds still run (the server lives)."""
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "__init__.py").write_text("")
    (tree / "bench" / "bench_order.py").write_text(ORDER_BENCH)
    fast = gate.Settings(budget_s=0.001, warmup=1, min_samples=3, max_samples=3,
                         calibration_calls=0)
    log = tmp_path / "order.log"
    sides = [gate.Side("A", tree, settings=fast, env={"ORDER_LOG": str(log),
                                                      "ORDER_SIDE": "A"}),
             gate.Side("B", tree, settings=fast, env={
                 "ORDER_LOG": str(log), "ORDER_SIDE": "B",
                 "ORDER_CRASH": str(tmp_path / "calls")})]  # warm-up, round 0, dies in round 1
    result = gate.run(sides, regex="bench_order", rounds=3, workdir=tmp_path / "work")
    errors = [i for i, row in enumerate(result.rounds) if "error" in row["B"]]
    assert errors == [1], [list(r["B"]) for r in result.rounds]
    assert "exited with 3" in result.rounds[errors[0]]["B"]["error"]
    assert all("error" not in row["A"] for row in result.rounds)
    assert all(len(row["B"]["cases"]) == 3 for i, row in enumerate(result.rounds)
               if i not in errors)


HEAP_BENCH = '''
import gc


class Heap:
    def setup(self):
        self.garbage = [[i] for i in range(1000)]  # the round's own objects

    def track_frozen(self):
        return gc.get_freeze_count()

    def track_collected_objects(self):
        return len(gc.get_objects())  # what a full collection in the round walks
'''


def _heap_run(tmp_path, **run_kw) -> gate.Run:
    """One side measuring ``HEAP_BENCH`` once a round (one sample, no warm-up or calibration)
    in ``tmp_path / "work"``."""
    tree = tmp_path / "tree"
    (tree / "bench").mkdir(parents=True)
    (tree / "bench" / "__init__.py").write_text("")
    (tree / "bench" / "bench_heap.py").write_text(HEAP_BENCH)
    fast = gate.Settings(budget_s=0.001, warmup=0, min_samples=1, max_samples=1,
                         calibration_calls=0, track_calls=1)
    return gate.run([gate.Side("A", tree, settings=fast)], regex="bench_heap",
                    workdir=tmp_path / "work", **run_kw)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
@pytest.mark.parametrize("rounds, restart_every, block, generations", [
    (5, 2, None, 3),  # rounds 0, 2, 4
    (6, 2, 3, 4),  # each block of 3 starts fresh: rounds 0, 2 | 3, 5
    (4, 0, None, 1),  # never
    (6, 0, 3, 2),  # at every block only: rounds 0 | 3
])
def test_servers_restart_every_so_many_rounds_and_at_every_block(tmp_path, rounds,
                                                                  restart_every, block,
                                                                  generations):
    """Fresh servers every ``restart_every`` rounds (each server can carry an offset of its
    own) and, for the validity study, at the start of every block (its independent runs),
    counted within the block; one log per server generation and side."""
    result = _heap_run(tmp_path, rounds=rounds, restart_every=restart_every, block=block)
    assert len(result.rounds) == rounds and result.restart_every == restart_every
    logs = sorted(p.name for p in (tmp_path / "work" / "logs").iterdir())
    assert logs == [f"A-{g}.log" for g in range(generations)]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_rounds_start_from_a_frozen_heap_whatever_the_servers_history(tmp_path):
    """The server freezes its heap once warm (``worker.freeze_heap``): a round's garbage
    collections walk the round's own objects, not the warm server's half million (whose
    collector state, inherited by every round, gave one server generation in three one full
    collection per round). The ready message says how many objects were frozen."""
    result = _heap_run(tmp_path, rounds=2)
    frozen = result.info["A"]["gc_frozen"]
    assert frozen > 10_000  # torch alone is more
    for row in result.rounds:
        cases = row["A"]["cases"]
        # less a few frozen objects freed since (a frozen object can still die)
        assert 0.99 * frozen <= cases["bench_heap.Heap.track_frozen"]["samples"][0] <= frozen
        walked = cases["bench_heap.Heap.track_collected_objects"]["samples"][0]
        assert 1000 <= walked < frozen / 10


def test_cli_bad_revision_is_one_line_and_exit_2(capsys):
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert gate.main(["regress", "no-such-rev-xyz", "HEAD"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown git revision 'no-such-rev-xyz'"]


@pytest.mark.parametrize("command", ["regress", "validity", "noise", "versions"])
def test_cli_negative_restart_every_is_one_line_and_exit_2(capsys, command):
    with pytest.raises(ValueError, match="got -1"):  # the runner's own check, which main calls
        gate.run([], restart_every=-1)
    assert gate.main([command, "--restart-every", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --restart-every must be >= 0 (0: never), got -1"]


@pytest.mark.parametrize("command", ["regress", "validity", "noise", "versions"])
def test_cli_unknown_interleave_is_refused_naming_the_choices(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        gate.main([command, "--interleave", "pairs"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    # argparse quotes the choices up to Python 3.11 and not from 3.12.8 on: either way one
    # line naming the bad value and every valid choice
    assert re.search(r"argument --interleave: invalid choice: 'pairs' \(choose from "
                     r"'?sample'?, '?case'?, '?round'?\)$", err), err
    with pytest.raises(ValueError, match="interleave must be one of sample, case, round"):
        gate.run([], interleave="pairs")


def test_versions_refuses_a_side_that_is_no_build(capsys):
    assert gate.main(["versions", "torchrl==0.14.1", "0.13.3"]) == 2
    assert capsys.readouterr().err.startswith("error: side '0.13.3': not a side")


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
    assert worker.injected_slowdown("bench_gae.GAE.time_gae(device=cpu, impl=x)", spec) == 0.10
    assert worker.injected_slowdown("bench_buffers.Sample.time_sample(size=10)", spec) == 0.05
    assert worker.injected_slowdown("bench_envs.EnvStep.time_steps()", spec) == 0.0
    assert worker.injected_slowdown("anything", "") == 0.0
    with pytest.raises(ValueError, match="'GAE' is not REGEX=FRACTION"):
        worker.injected_slowdown("x", "GAE")


def test_slowed_down_spins_the_fraction_of_the_calls_recent_fastest_cpu_cost(monkeypatch):
    """The injected work, exactly, on a fake clock: after each call, ``fraction`` x the 10th
    percentile of the last 15 calls' CPU seconds x the spin rate."""
    clock = [0.0]
    costs = [0.004, 0.002, 0.008, 0.003, 0.006] * 5
    spun = []
    monkeypatch.setattr(worker, "time", types.SimpleNamespace(process_time=lambda: clock[0]))
    monkeypatch.setattr(worker, "spin_rate", lambda: 1e6)
    monkeypatch.setattr(worker, "_spin", spun.append)

    def call():
        clock[0] += costs[len(spun)]
        return "result"

    assert worker.slowed_down("Toy", call, "") is call
    slowed = worker.slowed_down("Toy", call, "Toy=0.5")
    assert [slowed() for _ in costs] == ["result"] * len(costs)
    expected = []
    for k in range(len(costs)):
        recent = sorted(costs[max(0, k - 14):k + 1])
        expected.append(round(0.5 * recent[(len(recent) - 1) // 10] * 1e6))
    assert spun == slowed.iterations == expected
    assert expected[:2] == [2000, 1000] and min(expected) == 1000


def test_slowed_down_adds_the_asked_fraction_of_cpu_work():
    """The same on the real clock: the wrapped call costs ~1.5x. CPU time on a shared VM counts
    time stolen by the hypervisor, so one of three attempts must land in range (a wrapper that
    adds nothing, or twice too much, misses all three)."""
    def call():
        worker._spin(50_000)

    ratios = []
    for _attempt in range(3):
        slowed = worker.slowed_down("Toy", call, "Toy=0.5")
        plain, wrapped = [], []
        for _ in range(7):
            t0 = time.thread_time()
            call()
            plain.append(time.thread_time() - t0)
            t0 = time.thread_time()
            slowed()
            wrapped.append(time.thread_time() - t0)
        ratios.append(sorted(wrapped)[3] / sorted(plain)[3])
        if 1.25 < ratios[-1] < 1.9:  # 1.5 expected: half the call's own CPU time added
            break
    assert 1.25 < ratios[-1] < 1.9, ratios
    assert len(slowed.iterations) == 7 and min(slowed.iterations) > 0


def test_validity_report_gives_the_shipped_defaults_over_the_gated_cases_only():
    """The section the README quotes: the shipped method/threshold over the cases ``regress``
    gates; a not-gated case that misses every slowdown is listed but counts in no rate."""
    noise = NOISE * 2
    r = _run({"A": {"a": noise, "b": noise},
              "A'": {"a": list(reversed(noise)), "b": list(reversed(noise))},
              "+10%": {"a": [1.1 * x for x in noise], "b": list(noise)}})
    text = "\n".join(gate.validity.shipped_defaults_section(
        r, block=10, sizes=(0.10,), resamples=200, not_gated={"b": "misses it"}))
    assert "**1 gated cases** (1 measured but not gated" in text
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
            for ln in text.splitlines() if ln.startswith("| ")}
    assert rows["+10% detected"] == ["2/2", "100.0%", "100.0%"]
    assert rows["A/A gate runs with any false alarm"][0] == "0/2"
    assert rows["gated cases under 95%"][1:] == ["0", "0"]
    assert rows["a"][-1] == "gated" and rows["b"][-1] == "not gated"
    assert rows["b"][2] == "0/2 / 0.0%"  # shown, but not in the rates above


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


# --------------------------------------------------------------------------- structure


def _imports(path: Path) -> set[str]:
    """Every module a file imports (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module)
    return out


def test_worker_is_stdlib_only():
    """worker.py is booted by path inside old commits: only the stdlib, plus what it imports
    from the measured checkout itself (torch, that checkout's harness.compat)."""
    foreign = {m for m in _imports(ROOT / "harness" / "gate" / "worker.py")
               if m.split(".")[0] not in sys.stdlib_module_names}
    assert foreign <= {"torch", "harness"}, foreign  # `from harness import compat`


def test_harness_never_imports_bench():
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "harness").rglob("*.py")
             if any(m == "bench" or m.startswith("bench.") for m in _imports(p))]
    assert users == []


def test_case_meta_turns_the_workers_report_into_a_direction():
    meta = {"unit": "points", "kind": "track", "version": "v", "declared": True}
    assert gate.cases.case_meta("bench_x.X.track_score(n=1)", meta) == {
        "unit": "points", "direction": "higher", "kind": "track", "version": "v"}
    assert gate.cases.case_meta("bench_x.time_y", {**meta, "unit": "seconds",
                                                   "declared": None})["direction"] == "lower"
    assert gate.cases.case_meta("m.X.track_share", {**meta, "unit": "fraction",
                                                    "declared": None})["direction"] == "info"


def test_markdown_table_columns_and_order():
    r = _run({"base": {"a": NOISE, "b": NOISE},
              "head": {"a": [1.2 * x for x in reversed(NOISE)], "b": list(reversed(NOISE))}})
    text = gate.markdown(gate.compare(r, "base", "head"), title="## T", base_label="old",
                         head_label="new")
    lines = text.splitlines()
    assert lines[:2] == ["## T", ""]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert cells[0] == ["benchmark", "params", "old", "new", "ratio", "95% interval", "verdict"]
    assert [c[-1] for c in cells[2:]] == ["**REGRESSION**", "no change"]
    assert cells[2][2] == "1 s" and cells[2][4].startswith("1.2")
