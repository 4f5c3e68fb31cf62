"""A stored baseline: one revision measured on one machine (``results/baseline/<machine>.csv``),
for ``regress --against-baseline``: advisory, since it was measured on another day; the
same-job A/B run is the gate.

Per case the CSV keeps the median and relative IQR of the raw round values and the mean and SD
of the log of the calibration-normalised ones (calibration divides out the machine's speed on
the day); the comparison is Welch's interval on that log scale. The CPU model is recorded and
checked (``check_baseline_hardware``): a ratio across CPU models would measure the hardware.

Format: a ``format`` column (``BASELINE_FORMAT``); a file without it (saved before formats
existed, e.g. the committed ``results/baseline/vm.csv``) is format 1. ``load_baseline`` refuses
a format it does not know with one ValueError naming the file.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness import atomic, comparison
from harness.gate.cases import (
    DEFAULT_CLOCK,
    DEFAULT_CONFIDENCE,
    DEFAULT_STAT,
    DEFAULT_THRESHOLD,
    split_case,
)
from harness.gate.compare import (
    CODE_CHANGED,
    ONCE_PER_RUN,
    Row,
    case_status,
    round_value,
    verdict,
)
from harness.gate.stats import STATS, quantile, welch_interval

if TYPE_CHECKING:
    from harness.gate.runner import Run

#: the CSV's format; a file without a ``format`` column is format 1
BASELINE_FORMAT = 1
BASELINE_FORMATS_READ = (1,)
BASELINE_COLUMNS = ("benchmark", "params", "unit", "direction", "median", "spread",
                    "norm_log_mean", "norm_log_sd", "rounds", "calibration_s", "commit", "date",
                    "torch", "torchrl", "tensordict", "version", "cpu", "format")
#: columns a baseline saved before they existed may lack (``cpu``: the hardware is unknown;
#: ``format``: format 1)
OPTIONAL_BASELINE_COLUMNS = ("cpu", "format")


def cpu_model() -> str:
    from harness import devices

    return devices.cpu_model()


def check_baseline_hardware(baseline: Sequence[dict], path: Path, cpu: str) -> str:
    """A note on the baseline's hardware, or ValueError (exit 2) when it was measured on
    another CPU model than ``cpu``: calibration divides out the machine's speed on the day,
    not a different micro-architecture, so a ratio against it would measure the CPUs."""
    stored = sorted({r.get("cpu") or "" for r in baseline} - {""})
    if not stored:
        return (f"The baseline does not record its CPU (saved before rlgauge recorded "
                f"hardware); this machine: {cpu}.")
    if stored != [cpu]:
        raise ValueError(f"baseline {str(path)!r} was measured on {', '.join(stored)}; this "
                         f"machine is {cpu}: a comparison across CPU models would measure the "
                         f"hardware; save one here with `nox -s regress -- --save-baseline "
                         f"--baseline PATH`")
    return f"Baseline and this run: {cpu}."


def baseline_rows(run_: Run, side: str, commit: str) -> list[dict]:
    """Per case: median and relative IQR of the raw round values; mean and SD of the log of
    the calibration-normalised ones (what ``compare_baseline`` tests)."""
    info = run_.info[side]
    cal_key = "calibration_cpu" if DEFAULT_CLOCK == "cpu" else "calibration"
    cal = [quantile(r[side][cal_key], STATS[DEFAULT_STAT]) for r in run_.rounds
           if side in r and r[side].get(cal_key)]
    rows = []
    for case, meta in sorted(info["cases"].items()):
        dir_ = meta["direction"]
        kw = {"direction_": dir_, "clock": DEFAULT_CLOCK, "stat": DEFAULT_STAT}
        raw = [v for r in run_.rounds if side in r and (v := round_value(
            r[side], case, normalise=False, **kw)) is not None]
        norm = [math.log(v) for r in run_.rounds if side in r and (v := round_value(
            r[side], case, normalise=True, **kw)) is not None and v > 0]
        if len(raw) < 2 or len(norm) < 2:
            continue
        q = statistics.quantiles(raw, n=4, method="inclusive")
        name, params = split_case(case)
        rows.append({
            "benchmark": name, "params": params, "unit": meta["unit"], "direction": dir_,
            "median": statistics.median(raw), "spread": (q[2] - q[0]) / statistics.median(raw),
            "norm_log_mean": statistics.fmean(norm), "norm_log_sd": statistics.stdev(norm),
            "rounds": len(norm), "calibration_s": statistics.median(cal) if cal else "",
            "commit": commit, "date": time.strftime("%Y-%m-%d"),
            "torch": info["versions"].get("torch", ""),
            "torchrl": info["versions"].get("torchrl", ""),
            "tensordict": info["versions"].get("tensordict", ""), "version": meta["version"],
            "cpu": cpu_model()})
    return rows


def save_baseline(rows: Sequence[dict], path: Path) -> None:
    """Write ``rows`` (``baseline_rows``) as the baseline CSV, format ``BASELINE_FORMAT``."""
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=BASELINE_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                         for k, v in {**row, "format": BASELINE_FORMAT}.items()})
    atomic.write_text(path, buf.getvalue())


def load_baseline(path: Path) -> list[dict]:
    """The rows of a baseline CSV, numbers as floats; ValueError naming a bad file (missing,
    columns missing, or a format this code does not read)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read baseline {str(path)!r}: {exc.strerror}; make one with "
                         f"`nox -s regress -- --save-baseline`") from None
    formats = {row.pop("format", None) or "1" for row in rows}
    unknown = sorted(f for f in formats
                     if not f.strip().isdigit() or int(f) not in BASELINE_FORMATS_READ)
    if unknown:
        raise ValueError(f"baseline {str(path)!r} has format {', '.join(unknown)}; this rlgauge "
                         f"reads format {', '.join(map(str, BASELINE_FORMATS_READ))} (files "
                         f"without a format column are format 1): update rlgauge or save a "
                         f"new baseline")
    missing = (set(BASELINE_COLUMNS) - set(OPTIONAL_BASELINE_COLUMNS)
               - set(rows[0] if rows else BASELINE_COLUMNS))
    if missing:
        raise ValueError(f"baseline {str(path)!r} lacks columns {sorted(missing)}")
    for row in rows:
        for key in ("median", "spread", "norm_log_mean", "norm_log_sd"):
            row[key] = float(row[key])
        row["rounds"] = int(row["rounds"])
    return rows


def compare_baseline(run_: Run, side: str, baseline: Sequence[dict], *,
                     threshold: float = DEFAULT_THRESHOLD,
                     confidence: float = DEFAULT_CONFIDENCE) -> list[Row]:
    """Rows for ``side`` of ``run_`` against a stored baseline: calibration-normalised values
    (machine speed on the day divides out), Welch's interval on the log scale; a case whose
    raw rounds repeat one value on both sides (spread 0: measured once per run) is not
    gated."""
    current = {f"{r['benchmark']}({r['params']})" if r["params"] else r["benchmark"]: r
               for r in baseline_rows(run_, side, "")}
    stored = {f"{r['benchmark']}({r['params']})" if r["params"] else r["benchmark"]: r
              for r in baseline}
    rows = []
    for case in sorted(set(current) | set(stored)):
        b, h = stored.get(case), current.get(case)
        ref = h or b
        if b is None or h is None:
            status = case_status(run_, side, case) if h is None else None
            text = "new" if b is None else (status if status and status != "absent"
                                            else "removed")
            rows.append(Row(case, ref["unit"], ref["direction"], b and b["median"],
                            h and h["median"], None, None, None, 0, text))
            continue
        if b["spread"] == 0 and h["spread"] == 0:  # every round repeated one value each
            rows.append(Row(case, h["unit"], h["direction"], b["median"], h["median"],
                            h["median"] / b["median"] if b["median"] else None, None, None, 1,
                            ONCE_PER_RUN))
            continue
        est, lo, hi = welch_interval(b["norm_log_mean"], b["norm_log_sd"], b["rounds"],
                                     h["norm_log_mean"], h["norm_log_sd"], h["rounds"],
                                     confidence)
        text = verdict(est, lo, hi, threshold, h["direction"])
        if b["version"] and b["version"] != h["version"] and h["direction"] != comparison.INFO:
            text += CODE_CHANGED
        rows.append(Row(case, h["unit"], h["direction"], b["median"], h["median"],
                        math.exp(est), math.exp(lo), math.exp(hi), h["rounds"], text))
    return rows
