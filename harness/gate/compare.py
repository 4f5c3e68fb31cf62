"""From a run to a verdict: the value of a case in a round, the paired log ratios head/base of
the rounds, their Hodges-Lehmann interval, the verdict, the exit code, the Markdown table.

Verdict words (``harness.comparison``'s vocabulary): ``REGRESSION`` (fails the gate),
``improved``, ``slower``/``faster`` (significant but within the threshold), ``no change``,
``not gated`` (an info metric), ``not gated (why): <verdict>`` (a case of the default
selection measured too noisy here to gate: ``cases.NOT_GATED``), ``not gated: measured once
per run`` (every round repeated one
value: ``once_per_run``), ``skipped: ...`` (the benchmark skipped itself, e.g. a backend that
is not installed), ``error: ...``, ``new``/``removed``, and a suffix ``(benchmark code changed:
not gated)`` when the benchmark's own source differs between the sides (as asv starts a new
series).
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from harness import comparison
from harness.gate.cases import (
    DEFAULT_CLOCK,
    DEFAULT_CONFIDENCE,
    DEFAULT_NORMALISE,
    DEFAULT_STAT,
    DEFAULT_THRESHOLD,
    split_case,
)
from harness.gate.stats import STATS, hodges_lehmann, quantile
from harness.provenance import machine_name

if TYPE_CHECKING:
    from harness.gate.runner import Run

REGRESSION, IMPROVED = comparison.REGRESSION, comparison.IMPROVED
NO_CHANGE, NOT_GATED = comparison.NO_CHANGE, comparison.NOT_GATED
SLOWER, FASTER = "slower", "faster"  # significant, within the threshold (speeds or not)
CODE_CHANGED = " (benchmark code changed: not gated)"
ONCE_PER_RUN = f"{NOT_GATED}: measured once per run"
MISSING = "–"  # a table cell without a value


def verdict(log_ratio: float, low: float, high: float, threshold: float, direction_: str
            ) -> str:
    """The gate's decision on a log ratio head/base of the metric and its interval.

    "REGRESSION" (fails the gate) only when the metric got worse by more than ``threshold``
    (cost x (1 + threshold), throughput / (1 + threshold)) AND the interval excludes "no
    change". Otherwise: "improved" (the mirror image), "slower"/"faster" (significant but
    within the threshold), "no change" (not significant); info metrics are "not gated".
    """
    if direction_ == comparison.INFO:
        return NOT_GATED
    sign = 1.0 if direction_ == comparison.LOWER else -1.0  # worse = positive
    worse, lo, hi = sign * log_ratio, *sorted((sign * low, sign * high))
    limit = math.log1p(threshold)
    if lo > 0:
        return REGRESSION if worse > limit else SLOWER
    if hi < 0:
        return IMPROVED if worse < -limit else FASTER
    return NO_CHANGE


@dataclass(frozen=True)
class Method:
    """How a round's value is made: the clock, the statistic of the samples, calibration."""

    clock: str = DEFAULT_CLOCK
    stat: str = DEFAULT_STAT
    normalise: bool = DEFAULT_NORMALISE

    def __str__(self) -> str:
        return f"{self.clock}/{self.stat}{'/calibrated' if self.normalise else ''}"

    def kw(self) -> dict:
        return {"clock": self.clock, "stat": self.stat, "normalise": self.normalise}


def round_value(result: dict, case: str, *, normalise: bool, direction_: str,
                clock: str = "wall", stat: str = "median", warmup: bool = False,
                samples: int | None = None) -> float | None:
    """One side's value of ``case`` in one round: a statistic (``STATS``: median, lower
    quartile, 10th percentile, minimum) of its samples -- wall time (``clock="wall"``, the
    benchmark's own timer) or process CPU time (``"cpu"``); track_* values have one kind only
    and always take the median -- optionally of the first ``samples`` only, optionally with
    the warm-up calls; divided by (throughput: multiplied by) the same statistic of the
    round's calibration workload when ``normalise``."""
    entry = (result.get("cases") or {}).get(case)
    if not entry or not entry.get("samples"):
        return None
    cpu = clock == "cpu" and bool(entry.get("cpu"))
    values = entry["cpu"] if cpu else entry["samples"]
    values = list(values[:samples] if samples else values)
    if warmup:
        values = list(entry.get("warmup_cpu" if cpu else "warmup", [])) + values
    value = quantile(values, 0.5 if entry.get("track") else STATS[stat])
    calibration = result.get("calibration_cpu" if cpu else "calibration")
    if normalise and direction_ != comparison.INFO and calibration:
        cal = quantile(calibration, STATS[stat])
        value = value / cal if direction_ == comparison.LOWER else value * cal
    return value


@dataclass
class Row:
    """One line of the gate's table."""

    case: str
    unit: str
    direction: str
    base: float | None  # median over rounds of the raw round values
    head: float | None
    ratio: float | None  # head / base of the metric (normalised if the run was)
    low: float | None
    high: float | None
    pairs: int
    verdict: str

    @property
    def benchmark(self) -> str:
        return split_case(self.case)[0]

    @property
    def params(self) -> str:
        return split_case(self.case)[1]


def once_per_run(values: Sequence[float]) -> bool:
    """Did every round repeat one value? Then the benchmark measured once per run -- in
    ``setup_cache``, which the worker computes once per side and run (bench_training's
    ``Training``, ``MultiCollect``, ``RecipeTraining``) -- and its rounds are copies, not
    replicates: a zero-width interval that would call any difference significant. (Two
    measurements of a clock are never bit-identical.)"""
    return len(values) >= 2 and len(set(values)) == 1


def side_values(run_: Run, side: str, case: str, *, direction_: str,
                rounds: Iterable[int] | None = None, clock: str = DEFAULT_CLOCK,
                stat: str = DEFAULT_STAT) -> list[float]:
    """``side``'s raw round values of ``case`` (``round_value``, not normalised), in order."""
    rounds = range(len(run_.rounds)) if rounds is None else rounds
    return [v for i in rounds if side in run_.rounds[i] and (v := round_value(
        run_.rounds[i][side], case, normalise=False, direction_=direction_, clock=clock,
        stat=stat)) is not None]


def case_status(run_: Run, side: str, case: str) -> str | None:
    """None when ``side`` measured ``case``; else ``skipped: ...``, ``error: ...`` or
    ``absent``."""
    info = run_.info.get(side, {})
    if case in info.get("cases", {}):
        return None
    if case in info.get("skipped", {}):
        return f"skipped: {info['skipped'][case]}"
    if case in info.get("errors", {}):
        return f"error: {info['errors'][case]}"
    return "absent"


def paired_log_ratios(run_: Run, base: str, head: str, case: str, *, normalise: bool,
                      direction_: str, rounds: Iterable[int] | None = None, **value_kw
                      ) -> list[float]:
    """log(head / base) of ``case``'s round values, round by round (interleaved pairs)."""
    out = []
    for i in range(len(run_.rounds)) if rounds is None else rounds:
        row = run_.rounds[i]
        if base not in row or head not in row:
            continue
        a = round_value(row[base], case, normalise=normalise, direction_=direction_, **value_kw)
        b = round_value(row[head], case, normalise=normalise, direction_=direction_, **value_kw)
        if a and b and a > 0 and b > 0:
            out.append(math.log(b / a))
    return out


def compare(run_: Run, base: str, head: str, *, threshold: float = DEFAULT_THRESHOLD,
            confidence: float = DEFAULT_CONFIDENCE, normalise: bool = DEFAULT_NORMALISE,
            clock: str = DEFAULT_CLOCK, stat: str = DEFAULT_STAT,
            rounds: Iterable[int] | None = None,
            not_gated: Mapping[str, str] | None = None) -> list[Row]:
    """One Row per case of either side: ratio head/base, interval, verdict. A case in
    ``not_gated`` (case -> why; the default selection's ``cases.NOT_GATED``) is measured and
    shown with its verdict, prefixed ``not gated (why):``, and never fails the gate."""
    rounds = None if rounds is None else list(rounds)
    binfo, hinfo = run_.info.get(base, {}), run_.info.get(head, {})
    every = sorted(set(binfo.get("cases", {})) | set(hinfo.get("cases", {})) |
                   set(binfo.get("skipped", {})) | set(hinfo.get("skipped", {})) |
                   set(binfo.get("errors", {})) | set(hinfo.get("errors", {})))
    rows = []
    for case in every:
        meta = hinfo.get("cases", {}).get(case) or binfo.get("cases", {}).get(case) or {}
        unit, dir_ = meta.get("unit", ""), meta.get("direction", comparison.INFO)
        bstat, hstat = case_status(run_, base, case), case_status(run_, head, case)
        values = [side_values(run_, side, case, direction_=dir_, rounds=rounds, clock=clock,
                              stat=stat) for side in (base, head)]
        medians = [statistics.median(vals) if vals else None for vals in values]
        if hstat or bstat:
            status = hstat if hstat and hstat != "absent" else bstat
            text = {"absent": "new" if hstat is None else "removed"}.get(status, status)
            if hstat is None and bstat and bstat.startswith(("skipped", "error")):
                text = f"base {bstat}"
            rows.append(Row(case, unit, dir_, *medians, None, None, None, 0, text))
            continue
        if all(once_per_run(vals) for vals in values):  # one measurement a side: no test
            ratio = medians[1] / medians[0] if medians[0] else None
            rows.append(Row(case, unit, dir_, *medians, ratio, None, None, 1, ONCE_PER_RUN))
            continue
        d = paired_log_ratios(run_, base, head, case, normalise=normalise, direction_=dir_,
                              rounds=rounds, clock=clock, stat=stat)
        if len(d) < 3:
            rows.append(Row(case, unit, dir_, *medians, None, None, None, len(d),
                            "error: fewer than 3 rounds measured"))
            continue
        est, lo, hi = hodges_lehmann(d, confidence)
        text = verdict(est, lo, hi, threshold, dir_)
        bver = binfo["cases"][case].get("version")
        if bver and bver != hinfo["cases"][case].get("version") and dir_ != comparison.INFO:
            text += CODE_CHANGED
        if not_gated and case in not_gated and dir_ != comparison.INFO:
            text = f"{NOT_GATED} ({not_gated[case]}): {text}"
        rows.append(Row(case, unit, dir_, *medians, math.exp(est), math.exp(lo), math.exp(hi),
                        len(d), text))
    return rows


def gate_exit_code(rows: Iterable[Row]) -> int:
    """1 when a row is a REGRESSION; 2 when HEAD could not measure a benchmark; 0 otherwise."""
    rows = list(rows)
    if any(r.verdict == REGRESSION for r in rows):
        return 1
    if any(r.verdict.startswith("error") for r in rows):
        return 2
    return 0


def fmt_value(value: float | None, unit: str) -> str:
    """A table cell: times in seconds scaled to s/ms/µs/ns (3 significant digits), anything
    else as ``harness.comparison.fmt_value`` writes it; ``–`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if unit == "seconds":
        for scale, name in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")):
            if abs(value) >= scale or scale == 1e-9:
                return f"{value / scale:.3g} {name}"
    return comparison.fmt_value(value, unit)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]],
             align: Sequence[str] | str) -> str:
    """A Markdown (pipe) table of preformatted cells (``DataFrame.to_markdown``, as
    ``harness.report``); ``align``: one of l/r per column (a string such as ``"llrr"``)."""
    import pandas as pd

    table = pd.DataFrame([list(r) for r in rows], columns=list(header))
    colalign = tuple({"l": "left", "r": "right"}[a] for a in align)
    return table.to_markdown(index=False, disable_numparse=True, colalign=colalign)


def markdown(rows: Sequence[Row], *, title: str = "", confidence: float = DEFAULT_CONFIDENCE,
             base_label: str = "base", head_label: str = "head") -> str:
    """The gate's table: regressions first, then errors, then by case."""
    order = {REGRESSION: 0, "error": 1}
    cells = []
    for r in sorted(rows, key=lambda r: (order.get(r.verdict.split(":")[0], 2), r.case)):
        arrow = " (higher is better)" if r.direction == comparison.HIGHER else ""
        interval = (f"{r.low:.3f} – {r.high:.3f}" if r.low is not None and
                    math.isfinite(r.low) and math.isfinite(r.high) else
                    MISSING if r.low is None else "unbounded")
        ratio = MISSING if r.ratio is None else f"{r.ratio:.3f}"
        verdict_ = f"**{r.verdict}**" if r.verdict == REGRESSION else r.verdict
        cells.append([f"{r.benchmark}{arrow}", r.params, fmt_value(r.base, r.unit),
                      fmt_value(r.head, r.unit), ratio, interval, verdict_])
    header = ["benchmark", "params", base_label, head_label, "ratio",
              f"{confidence:.0%} interval", "verdict"]
    lines = [title, ""] if title else []
    return "\n".join([*lines, md_table(header, cells, "llrrrll")]) + "\n"


def conditions(run_: Run) -> list[str]:
    """The Markdown bullet list of a study's conditions (machine, versions, pinning, load)."""
    loads = [r.get("loadavg", [float("nan")])[0] for row in run_.rounds for r in row.values()
             if isinstance(r, dict) and r.get("loadavg")]
    a = run_.info.get(run_.side_names()[0], {})
    lines = [f"- machine `{machine_name()}`, {os.cpu_count()} CPUs, started {run_.started}, "
             f"{run_.seconds / 60:.1f} min",
             "- versions: " + ", ".join(f"{k} {v}" for k, v in a.get("versions", {}).items()),
             f"- worker pinning: {a.get('pinned')}"]
    if loads:
        q = statistics.quantiles(loads, n=4) if len(loads) > 1 else [loads[0]] * 3
        lines.append(f"- 1-min load average during the rounds: min {min(loads):.1f}, median "
                     f"{q[1]:.1f}, max {max(loads):.1f} (other jobs were running: the load is "
                     f"theirs plus ours, which keeps at most 1 CPU busy)")
    return lines


def pct(x: float) -> str:
    """``12.3%``; ``–`` for NaN."""
    return MISSING if x != x else f"{100 * x:.1f}%"


def kn(cell) -> str:
    """``k/n`` of a [k, n] cell; ``–`` when there is none."""
    return f"{cell[0]}/{cell[1]}" if cell and cell[1] else MISSING
