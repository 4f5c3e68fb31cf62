"""The one vocabulary of comparisons: which direction is better, verdict words, formatting.

Used by everything that compares two measurements: ``harness.gate`` (commits), ``harness.report``
(``python -m harness compare``: result sets), ``harness.asv_results`` (× floor). One rule
decides "is bigger better?" for a metric, a unit or a benchmark method:

- ``higher``: throughputs and returns -- units ending in ``/s``, ``fps``, ``Hz``, ``return``;
  metrics ending in ``_fps`` or named ``*return*``;
- ``lower``: costs -- ``time_*`` benchmark methods, time units (``s``, ``ms``, ``us/step``...),
  memory units (``MB``...), metrics ending in ``_s`` or ``_mb``;
- ``info``: anything else (fractions, ratios, errors, unknown units): shown, never judged.

Verdicts name the direction in the metric's own words: ``faster``/``slower`` for speeds and
times, ``better``/``worse`` otherwise; ``REGRESSION`` is worse beyond the threshold and
significant (it fails a gate), ``improved`` the mirror image; ``no change`` (not significant),
``untested`` (no interval: one run a side), ``not gated`` (info), ``not compared: different
hardware`` (a ratio would measure the machines, ``harness.report.compare``).
"""

from __future__ import annotations

import math

HIGHER, LOWER, INFO = "higher", "lower", "info"
TIME_UNITS = frozenset({"s", "sec", "seconds", "ms", "us", "µs", "ns"})
MEMORY_UNITS = frozenset({"b", "bytes", "kb", "mb", "gb", "kib", "mib", "gib"})
RATE_UNITS = frozenset({"fps", "hz", "return", "returns", "1/s"})

REGRESSION = "REGRESSION"
IMPROVED = "improved"
NO_CHANGE = "no change"
UNTESTED = "untested"
NOT_GATED = "not gated"
DIFFERENT_HARDWARE = "not compared: different hardware"


def direction(*, metric: str | None = None, unit: str | None = None, method: str | None = None,
              declared: bool | None = None) -> str:
    """``higher``, ``lower`` or ``info`` (module docstring). ``declared`` (a benchmark's
    ``higher_is_better``) wins, then the method (``time_*``), the metric's name, the unit."""
    if declared is not None:
        return HIGHER if declared else LOWER
    if method is not None and method.startswith("time_"):
        return LOWER
    if metric:
        m = metric.lower()
        if m.endswith("_fps") or "return" in m:
            return HIGHER
        if m.endswith(("_s", "_mb")):
            return LOWER
    u = (unit or "").strip().lower()
    if u.endswith("/s") or u in RATE_UNITS:
        return HIGHER
    head = u.split("/", 1)[0]
    if u in TIME_UNITS or u in MEMORY_UNITS or (head in TIME_UNITS and "/" in u):
        return LOWER
    return INFO


def higher_is_better(**kwargs) -> bool:
    """``direction(...) == "higher"`` (an ``info`` quantity counts as a cost)."""
    return direction(**kwargs) == HIGHER


def is_speed(*, metric: str | None = None, unit: str | None = None,
             method: str | None = None) -> bool:
    """A speed or a time (its verdicts say faster/slower), not a return or a size."""
    if method is not None and method.startswith("time_"):
        return True
    text = (metric or "").lower()
    u = (unit or "").strip().lower()
    return (text.endswith(("_fps", "_s")) or u.endswith("/s") or u == "fps"
            or u in TIME_UNITS or u.split("/", 1)[0] in TIME_UNITS)


def words(**kwargs) -> tuple[str, str]:
    """(good, bad): ``("faster", "slower")`` for speeds and times, else ``("better",
    "worse")``."""
    return ("faster", "slower") if is_speed(**kwargs) else ("better", "worse")


def worse_change(change: float, direction_: str) -> float:
    """How much worse a relative change (head - base) / base is: positive = worse."""
    return -change if direction_ == HIGHER else change


def fmt_value(value: float | None, unit: str = "") -> str:
    """``1.23 ms``-style: 4 significant digits and the unit; ``-`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g} {unit}".strip()


def fmt_change(change: float, low: float = math.nan, high: float = math.nan) -> str:
    """``+3.0% [+1.0%, +5.0%]``: a relative change and its interval (omitted where NaN)."""
    if math.isnan(change):
        return ""
    interval = "" if math.isnan(low) or math.isnan(high) else f" [{low:+.1%}, {high:+.1%}]"
    return f"{change:+.1%}{interval}"
