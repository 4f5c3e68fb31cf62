"""asv's result database as tidy tables.

asv keeps one JSON file per (machine, commit, environment) under ``results/asv/<machine>/``; its
``benchmarks.json`` holds each benchmark's parameter names and unit. ``load`` flattens them into
one row per (benchmark, parameter point, commit, environment) with the median and the quartiles
asv recorded, so that ``nox -s bench`` can end with a plain table beside asv's HTML dashboard.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd

from harness.errors import UsageError

SKIP = {"machine.json", "benchmarks.json"}


def _columns(doc: dict, entry: list) -> dict:
    return dict(zip(doc.get("result_columns", []), entry, strict=False))


def load(results_dir: str | Path = "results/asv", *, machine: str | None = None,
         commit: str | None = None) -> pd.DataFrame:
    """Rows: benchmark, params, value, unit, q25, q75, spread, commit, env, machine, date."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UsageError(f"asv results directory {str(root)!r} does not exist (run `nox -s "
                         f"bench` first)")
    meta_path = root / "benchmarks.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    rows = []
    machines = [root / machine] if machine else [p for p in root.iterdir() if p.is_dir()]
    for mdir in machines:
        for path in sorted(mdir.glob("*.json")):
            if path.name in SKIP:
                continue
            doc = json.loads(path.read_text())
            if commit and not doc.get("commit_hash", "").startswith(commit):
                continue
            for name, entry in doc.get("results", {}).items():
                rows.extend(_rows(name, _columns(doc, entry), meta.get(name, {}), doc, mdir.name))
    frame = pd.DataFrame(rows, columns=["benchmark", "params", "value", "unit", "q25", "q75",
                                        "spread", "commit", "env", "machine", "date"])
    return frame


def _rows(name: str, rec: dict, meta: dict, doc: dict, machine: str) -> list[dict]:
    params = rec.get("params") or []
    names = meta.get("param_names") or [f"p{i}" for i in range(len(params))]
    combos = list(itertools.product(*params)) if params else [()]
    values = rec.get("result")
    if not params:
        values = [values[0] if isinstance(values, list) else values]
    q25 = rec.get("stats_q_25") or [None] * len(combos)
    q75 = rec.get("stats_q_75") or [None] * len(combos)
    out = []
    for combo, value, lo, hi in zip(combos, values or [None] * len(combos), q25, q75,
                                    strict=False):
        label = ", ".join(f"{n}={_unquote(v)}" for n, v in zip(names, combo, strict=False))
        spread = (hi - lo) / value if value and lo is not None and hi is not None else None
        out.append({"benchmark": name, "params": label, "value": value,
                    "unit": meta.get("unit", ""), "q25": lo, "q75": hi, "spread": spread,
                    "commit": doc.get("commit_hash", "")[:8], "env": doc.get("env_name", ""),
                    "machine": machine, "date": doc.get("date")})
    return out


def _unquote(v) -> str:
    s = str(v)
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"" else s


def latest(frame: pd.DataFrame) -> pd.DataFrame:
    """Only the newest result file's rows per machine (by asv's recorded date)."""
    if frame.empty:
        return frame
    newest = frame.groupby("machine")["date"].transform("max")
    return frame[frame["date"] == newest].reset_index(drop=True)


def human(value, unit: str) -> str:
    """asv-style value: seconds in s/ms/us/ns, bytes in k/M/G, others with their unit."""
    if value is None or pd.isna(value):
        return "n/a (skipped or failed)"
    if unit == "seconds":
        for scale, suffix in ((1, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
            if abs(value) >= scale or suffix == "ns":
                return f"{value / scale:.3g} {suffix}"
    if unit == "bytes":
        for scale, suffix in ((2**30, "G"), (2**20, "M"), (2**10, "k"), (1, "")):
            if abs(value) >= scale or suffix == "":
                return f"{value / scale:.3g}{suffix}"
    return f"{value:.4g} {unit}".strip()


def markdown(frame: pd.DataFrame) -> str:
    """One table: benchmark, params, median, IQR/median spread."""
    if frame.empty:
        return "(no asv results)"
    skipped = int(frame["value"].isna().sum())
    frame = frame[frame["value"].notna()]
    view = pd.DataFrame({
        "benchmark": frame["benchmark"],
        "params": frame["params"],
        "median": [human(v, u) for v, u in zip(frame["value"], frame["unit"], strict=True)],
        "spread (IQR/median)": [f"{s:.1%}" if s is not None and pd.notna(s) else ""
                                for s in frame["spread"]],
    })
    note = (f"\n\n{skipped} parameter point(s) skipped or failed here (e.g. CUDA without a GPU); "
            f"see the asv dashboard for them.") if skipped else ""
    return view.to_markdown(index=False) + note
