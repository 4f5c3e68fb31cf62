"""asv's result database as tidy tables.

asv keeps one JSON file per (machine, commit, environment) under ``results/asv/<machine>/``; its
``benchmarks.json`` holds each benchmark's parameter names and unit. ``load`` flattens them into
one row per (benchmark, parameter point, commit, environment) with the median and the quartiles
asv recorded, so that ``nox -s bench`` can end with a plain table beside asv's HTML dashboard.

Floors. A bench module may declare ``FLOORS: dict[str, str]``, mapping ``"Class.method"`` to
the ``"Class.method"`` of its bare floor in the same module (``bench/bench_buffers.py``:
``"Sample.time_sample": "SampleFloor.time_sample"``). A row is paired with the floor row whose
values agree on every parameter name the two benchmarks share (the floor's parameters should
be a subset of the benchmark's, so that the pair is unique). A name may carry a selector,
``"EnvStep.time_steps[impl=torchrl]": "EnvStep.time_steps[impl=raw]"``, for a floor that is
a parameter value of the same benchmark: only rows with those values take part, and the
selected names are left out of the matching. The ratio, "× floor", reads "how many times
slower than the floor": value / floor for times, memory and lower-is-better tracks, and
floor / value for rates (a unit ending in ``/s``, e.g. ``frames/s``: higher is better).
``floors`` imports the bench modules by name (``bench.<module>``, the repository root being
the working directory of ``nox -s bench`` and ``python -m harness asv-table``); a module that
is missing or fails to import contributes no floors.

Cost and spread. ``suite_cost`` reads, from the newest result file per machine, the seconds
asv recorded for each benchmark (all its parameter points, setup included) and for each
module's ``setup_cache``, and the IQR/median spread of every ``time_*`` point; ``cost_markdown``
prints them per module with the suite's median spread (the asv suite's own budget: issue 6).
"""

from __future__ import annotations

import importlib
import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from harness import comparison
from harness.errors import UsageError

SKIP = {"machine.json", "benchmarks.json"}


def _columns(doc: dict, entry: list) -> dict:
    return dict(zip(doc.get("result_columns", []), entry, strict=False))


#: the columns of ``load``'s rows
_ROW_COLUMNS = ["benchmark", "params", "value", "unit", "q25", "q75", "spread", "commit", "env",
               "machine", "date", "param_values"]


def _open(results_dir: str | Path, machine: str | None) -> tuple[dict, list[Path]]:
    """asv's benchmark metadata (``benchmarks.json``; {} without it) and the machine folders
    of ``results_dir`` (only ``machine``'s when given); UsageError when it does not exist."""
    root = Path(results_dir)
    if not root.is_dir():
        raise UsageError(f"asv results directory {str(root)!r} does not exist (run `nox -s "
                         f"bench` first)")
    meta_path = root / "benchmarks.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return meta, [root / machine] if machine else [p for p in root.iterdir() if p.is_dir()]


def _result_docs(mdir: Path) -> list[dict]:
    """The parsed result files of one machine folder, in file-name order."""
    return [json.loads(p.read_text()) for p in sorted(mdir.glob("*.json")) if p.name not in SKIP]


def _doc_rows(doc: dict, meta: dict, machine: str) -> list[dict]:
    """``load``'s rows of one result file."""
    return [row for name, entry in doc.get("results", {}).items()
            for row in _rows(name, _columns(doc, entry), meta.get(name, {}), doc, machine)]


def load(results_dir: str | Path = "results/asv", *, machine: str | None = None,
         commit: str | None = None) -> pd.DataFrame:
    """Rows: benchmark, params, value, unit, q25, q75, spread, commit, env, machine, date."""
    meta, machines = _open(results_dir, machine)
    rows = [row for mdir in machines for doc in _result_docs(mdir)
            if not commit or doc.get("commit_hash", "").startswith(commit)
            for row in _doc_rows(doc, meta, mdir.name)]
    return pd.DataFrame(rows, columns=_ROW_COLUMNS)


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
                    "machine": machine, "date": doc.get("date"),
                    "param_values": {n: _unquote(v) for n, v in
                                     zip(names, combo, strict=False)}})
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
    return comparison.fmt_value(value, unit)


def markdown(frame: pd.DataFrame, floor_map: dict[str, str] | None = None) -> str:
    """One table: benchmark, params, median, IQR/median spread, × floor (``with_floors``),
    then the component table (``components_markdown``) when some rows have a floor."""
    if frame.empty:
        return "(no asv results)"
    frame = with_floors(frame, floor_map)
    skipped = int(frame["value"].isna().sum())
    frame = frame[frame["value"].notna()]
    view = pd.DataFrame({
        "benchmark": frame["benchmark"],
        "params": frame["params"],
        "median": [human(v, u) for v, u in zip(frame["value"], frame["unit"], strict=True)],
        "spread (IQR/median)": [f"{s:.1%}" if s is not None and pd.notna(s) else ""
                                for s in frame["spread"]],
        "× floor": [_ratio(r) for r in frame["x_floor"]],
    })
    note = (f"\n\n{skipped} parameter point(s) skipped or failed here (e.g. CUDA without a GPU); "
            f"see the asv dashboard for them.") if skipped else ""
    components = components_markdown(frame, floor_map={})
    tail = f"\n\n## Components beside their floors\n\n{components}" if components else ""
    return view.to_markdown(index=False) + note + tail


# --------------------------------------------------------------------------- floors

_SELECTOR = re.compile(r"^(?P<name>[^\[\]]+)(?:\[(?P<sel>[^\]]*)\])?$")


def parse_floor_name(name: str) -> tuple[str, dict[str, str]]:
    """``"Class.method[k=v, ...]"`` -> ``("Class.method", {k: v})`` (no selector: ``{}``)."""
    match = _SELECTOR.match(name.strip())
    if not match:
        raise ValueError(f"bad FLOORS name {name!r}: expected 'Class.method' or "
                         f"'Class.method[param=value, ...]'")
    selector = {}
    for part in filter(None, (p.strip() for p in (match["sel"] or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"bad selector {part!r} in FLOORS name {name!r}: expected "
                             f"param=value")
        selector[key.strip()] = value.strip()
    return match["name"].strip(), selector


def floors(modules: Iterable[str], *, package: str = "bench") -> dict[str, str]:
    """Full benchmark name -> full floor name, from the ``FLOORS`` of each bench module.

    ``modules`` are asv module names (``bench_buffers``; full benchmark names are accepted
    too and cut at the first dot). Keys and values are prefixed with the module, selectors
    kept: ``"bench_envs.EnvStep.time_steps[impl=torchrl]"``.
    """
    out: dict[str, str] = {}
    for module in sorted({m.split(".", 1)[0] for m in modules}):
        try:
            mod = importlib.import_module(f"{package}.{module}")
        except Exception:  # a missing or broken bench module contributes no floors
            continue
        for bench, floor in (getattr(mod, "FLOORS", None) or {}).items():
            out[f"{module}.{bench}"] = f"{module}.{floor}"
    return out


def with_floors(frame: pd.DataFrame, floor_map: dict[str, str] | None = None) -> pd.DataFrame:
    """``frame`` plus ``floor`` (the floor's value), ``floor_benchmark`` and ``x_floor`` (how
    many times slower than the floor; NaN without a floor). ``floor_map`` defaults to
    ``floors(...)`` of the benchmarks in ``frame``; ``{}`` keeps the columns already there.
    ``floor_benchmark`` is the floor's name as ``FLOORS`` gives it (selector included)."""
    frame = frame.copy()
    if floor_map is not None and not floor_map and "x_floor" in frame:
        return frame
    if floor_map is None:
        floor_map = floors(frame["benchmark"].unique()) if not frame.empty else {}
    frame["floor"] = float("nan")
    frame["floor_benchmark"] = None
    frame["x_floor"] = float("nan")
    if frame.empty or not floor_map or "param_values" not in frame:
        return frame
    group_keys = ["machine", "commit", "env"]
    for bench_name, floor_name in floor_map.items():
        bench, bench_sel = parse_floor_name(bench_name)
        floor, floor_sel = parse_floor_name(floor_name)
        benches = frame[(frame["benchmark"] == bench)
                        & frame["param_values"].map(lambda p, s=bench_sel: _selected(p, s))]
        floor_rows = frame[(frame["benchmark"] == floor)
                           & frame["param_values"].map(lambda p, s=floor_sel: _selected(p, s))]
        if benches.empty or floor_rows.empty:
            continue
        ignore = set(bench_sel) | set(floor_sel)
        for idx, row in benches.iterrows():
            same_run = floor_rows
            for key in group_keys:
                same_run = same_run[same_run[key] == row[key]]
            shared = [n for n in row["param_values"]
                      if n not in ignore and n in _names(same_run)]
            match = same_run[same_run["param_values"].map(
                lambda p, r=row["param_values"], k=shared: all(p.get(n) == r[n] for n in k))]
            if len(match) != 1:
                continue  # no floor point here, or an ambiguous pairing
            floor_value = match["value"].iloc[0]
            frame.at[idx, "floor"] = floor_value
            frame.at[idx, "floor_benchmark"] = floor_name
            frame.at[idx, "x_floor"] = _x_floor(row["value"], floor_value, row["unit"])
    return frame


def _selected(values: dict, selector: dict) -> bool:
    return all(values.get(k) == v for k, v in selector.items())


def _names(rows: pd.DataFrame) -> set[str]:
    return set(rows["param_values"].iloc[0]) if len(rows) else set()


def _x_floor(value, floor, unit: str) -> float:
    if value is None or floor is None or pd.isna(value) or pd.isna(floor) or not value \
            or not floor:
        return float("nan")
    return floor / value if comparison.higher_is_better(unit=unit) else value / floor


def _ratio(x) -> str:
    return "" if x is None or pd.isna(x) else f"{x:.3g}×"


def components_markdown(frame: pd.DataFrame, floor_map: dict[str, str] | None = None) -> str:
    """The rows that have a floor, grouped by topic (bench module): median, the floor's
    median, and × floor. Empty string when no row has one."""
    frame = with_floors(frame, floor_map)
    frame = frame[frame["x_floor"].notna()]
    if frame.empty:
        return ""
    parts = []
    for module, rows in frame.groupby(frame["benchmark"].str.split(".", n=1).str[0],
                                      sort=True):
        view = pd.DataFrame({
            "benchmark": rows["benchmark"].str.split(".", n=1).str[1],
            "params": rows["params"],
            "median": [human(v, u) for v, u in zip(rows["value"], rows["unit"], strict=True)],
            "floor": rows["floor_benchmark"].str.split(".", n=1).str[1],
            "floor median": [human(v, u) for v, u in
                             zip(rows["floor"], rows["unit"], strict=True)],
            "× floor": [_ratio(x) for x in rows["x_floor"]],
        })
        topic = module.removeprefix("bench_")
        parts.append(f"### {topic}\n\n{view.to_markdown(index=False)}")
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- cost and spread

#: the spread a benchmark's samples should stay within (IQR / median), issue 6
SPREAD_GOAL = 0.05
_SETUP_CACHE = re.compile(r"^<setup_cache (?P<module>[^:>]+)")


def suite_cost(results_dir: str | Path = "results/asv", *,
               machine: str | None = None) -> pd.DataFrame:
    """One row per (machine, module) of the newest run: ``seconds`` (benchmarks' recorded
    durations plus ``setup_cache``), ``setup_cache_s``, ``points`` (time_* points measured),
    ``median_spread``, ``within_goal`` (share of points with spread <= ``SPREAD_GOAL``) and
    ``worst`` (the three widest points)."""
    meta, machines = _open(results_dir, machine)
    rows = []
    for mdir in machines:
        docs = _result_docs(mdir)
        if not docs:
            continue
        mname, doc = mdir.name, max(docs, key=lambda d: d.get("date") or 0)  # the newest run
        seconds: dict[str, float] = {}
        setup: dict[str, float] = {}
        for name, entry in doc.get("results", {}).items():
            module = name.split(".", 1)[0]
            duration = _columns(doc, entry).get("duration") or 0.0
            seconds[module] = seconds.get(module, 0.0) + float(duration)
        frame = pd.DataFrame(_doc_rows(doc, meta, mname), columns=_ROW_COLUMNS)
        for key, duration in (doc.get("durations") or {}).items():
            m = _SETUP_CACHE.match(key)
            if m:
                setup[m["module"]] = setup.get(m["module"], 0.0) + float(duration)
        points = frame[frame["spread"].notna()
                       & frame["benchmark"].str.split(".").str[-1].str.startswith("time_")]
        for module in sorted(set(seconds) | set(setup)):
            mine = points[points["benchmark"].str.split(".", n=1).str[0] == module]
            worst = mine.nlargest(3, "spread")
            rows.append({
                "machine": mname, "module": module,
                "seconds": seconds.get(module, 0.0) + setup.get(module, 0.0),
                "setup_cache_s": setup.get(module, 0.0), "points": len(mine),
                "median_spread": float(mine["spread"].median()) if len(mine) else None,
                "within_goal": float((mine["spread"] <= SPREAD_GOAL).mean()) if len(mine)
                else None,
                "worst": "; ".join(
                    f"{b.split('.', 1)[1]}[{', '.join(v.values())}] {s:.0%}" for b, v, s in
                    zip(worst["benchmark"], worst["param_values"], worst["spread"],
                        strict=True)),
                "spreads": list(mine["spread"]),
            })
    return pd.DataFrame(rows, columns=["machine", "module", "seconds", "setup_cache_s",
                                       "points", "median_spread", "within_goal", "worst",
                                       "spreads"])


def cost_markdown(cost: pd.DataFrame) -> str:
    """``suite_cost`` as a table per module plus an "all" row (median over every point)."""
    if cost.empty:
        return ""

    def pct(x):
        return "" if x is None or pd.isna(x) else f"{x:.1%}"

    view = []
    several = cost["machine"].nunique() > 1
    for _, row in cost.iterrows():
        module = f"{row['machine']}: {row['module']}" if several else row["module"]
        view.append({"module": module, "asv time": f"{row['seconds'] / 60:.1f} min",
                     "of which setup_cache": f"{row['setup_cache_s']:.0f} s",
                     "time_* points": row["points"], "median spread": pct(row["median_spread"]),
                     f"points <= {SPREAD_GOAL:.0%}": pct(row["within_goal"]),
                     "widest": row["worst"]})
    spreads = pd.Series([s for ss in cost["spreads"] for s in ss], dtype=float)
    view.append({"module": "**all**", "asv time": f"{cost['seconds'].sum() / 60:.1f} min",
                 "of which setup_cache": f"{cost['setup_cache_s'].sum():.0f} s",
                 "time_* points": len(spreads),
                 "median spread": pct(spreads.median() if len(spreads) else None),
                 f"points <= {SPREAD_GOAL:.0%}": pct((spreads <= SPREAD_GOAL).mean()
                                                     if len(spreads) else None),
                 "widest": ""})
    return pd.DataFrame(view).to_markdown(index=False)
