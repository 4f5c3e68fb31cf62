"""Tables from tidy results: pivots of ``harness.results`` frames, rendered as text.

``summary`` reduces each run to its end-of-run value per metric (the value at the largest
``frames`` where a metric is a curve), then takes the median over runs (seeds) of each
algorithm x backend x task x device x num_envs cell; failed runs are counted, never dropped.
"""

from __future__ import annotations

import pandas as pd

CELL = ["algorithm", "backend", "task", "device", "num_envs"]
FORMATS = ("markdown", "csv", "html")


def final_values(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, metric): the last measured value of that metric in that run."""
    ok = frame[frame["status"] == "ok"].copy()
    ok["_order"] = ok["frames"].fillna(-1)
    ok = ok.sort_values(["run_id", "metric", "_order"], kind="stable")
    return ok.groupby(["run_id", "metric"], as_index=False).tail(1).drop(columns="_order")


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells x metrics: median over runs of each run's final value, plus run/failure counts."""
    keys = [c for c in CELL if frame[c].astype(str).str.len().gt(0).any()] or ["metric"]
    finals = final_values(frame)
    table = finals.pivot_table(index=keys, columns="metric", values="value",
                               aggfunc="median", dropna=False) if len(finals) else pd.DataFrame()
    runs = frame.groupby(keys)["run_id"].nunique().rename("runs")
    failed = (frame[frame["status"] != "ok"].groupby(keys)["run_id"].nunique()
              .rename("failed"))
    out = pd.concat([table, runs, failed], axis=1)
    out["failed"] = out["failed"].fillna(0).astype(int)
    out.columns.name = None
    return out.sort_index()


def render(table: pd.DataFrame, fmt: str = "markdown") -> str:
    if fmt == "markdown":
        return table.to_markdown(floatfmt=".4g")
    if fmt == "csv":
        return table.to_csv()
    if fmt == "html":
        return table.to_html(float_format=lambda v: f"{v:.4g}")
    raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
