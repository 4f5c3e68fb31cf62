"""Tables, plots and comparisons from tidy results: pivots of ``harness.results`` frames.

``final_values`` reduces each run to its end-of-run value per metric (the value at the largest
``frames`` where a metric is a curve). On top of it:

- ``summary``: cells x metrics, median over runs (seeds), with run and failure counts -- the
  generic table of any results (``python -m harness table DIR --format csv``).
- ``cell_table``: one row per algorithm x impl x compile x backend x task x device x num_envs
  cell of a matrix: frames/s overall, while collecting and after the compiling warm-up
  (``steady_fps``), the compile time (median over seeds), the wall-time split env / policy
  / update (median shares), the final return as IQM with a 95% stratified-bootstrap interval
  (``iqm_interval``: ``scipy.stats.bootstrap``, percentile method, each stratum resampled on
  its own), time to the task's solved return (median over the runs that reached it, and how
  many did), how many runs of a tutorial recipe met its success criterion, failures.
- ``report_tables``: the pivots a person reads, (backend/task, device) x algorithm or recipe
  (a peer's implementation and a compile mode other than eager are columns of their own,
  ``ppo (sb3)``, ``ppo (compile)``): throughput, time split, final return, recipes' success,
  time to threshold; the implementations side by side (``peers_table``) and the compile modes
  side by side (``compile_table``); and the runs that did not finish.
- ``plots``: learning curves per task (IQM over seeds of the training return on a common frame
  grid, with the 95% interval as a band) and a throughput bar chart per backend/device (PNG).
- ``write_report``: Markdown, CSV and one self-contained HTML page (tables and PNGs inlined).
- ``compare``: two result sets side by side, per (cell, metric): medians, relative change with
  Welch's 95% interval, and a verdict; ``regressions`` are the rows significantly worse beyond
  a threshold.

The bootstrap of ``rliable`` was the first choice; its ``arch`` dependency (7.2, the newest
below 8) does not import with pandas 3, so the same stratified percentile bootstrap comes from
scipy.
"""

from __future__ import annotations

import base64
import html
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from harness import comparison

CELL = ["algorithm", "impl", "compile", "backend", "task", "device", "num_envs"]
FORMATS = ("markdown", "csv", "html")
#: metrics a comparison can look at (which direction is better: ``harness.comparison``)
COMPARABLE = ("train_fps", "collect_fps", "steady_fps", "final_return", "time_to_threshold_s",
              "wall_time_s", "compile_time_s", "env_time_s", "policy_time_s", "update_time_s",
              "peak_rss_mb")
FAILED = ("failed", "timeout")
#: metrics whose value does not depend on the machine's speed: compared across hardware
HARDWARE_FREE = frozenset({"final_return"})


# --------------------------------------------------------------------------- reductions


def final_values(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, metric): the last measured value of that metric in that run."""
    ok = frame[frame["status"] == "ok"].copy()
    ok["_order"] = ok["frames"].fillna(-1)
    ok = ok.sort_values(["run_id", "metric", "_order"], kind="stable")
    return ok.groupby(["run_id", "metric"], as_index=False).tail(1).drop(columns="_order")


def _keys(frame: pd.DataFrame) -> list[str]:
    return [c for c in CELL if frame[c].astype(str).str.len().gt(0).any()] or ["metric"]


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells x metrics: median over runs of each run's final value, plus run/failure counts."""
    keys = _keys(frame)
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


# --------------------------------------------------------------------------- statistics


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50% (``scipy.stats.trim_mean(x, 0.25)``)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    return float(stats.trim_mean(values, 0.25)) if values.size else math.nan


def iqm_interval(*strata, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float]:
    """95% stratified-bootstrap interval of the IQM of the pooled ``strata`` (one array of runs
    per task, say): each stratum is resampled on its own, as rliable's
    ``StratifiedBootstrap``; percentile method. NaNs when every stratum has fewer than 2 runs
    (no spread to resample)."""
    from scipy import stats

    strata = [np.asarray(s, dtype=float) for s in strata if len(s)]
    if not strata or max(len(s) for s in strata) < 2:
        return math.nan, math.nan
    if len(set(np.concatenate(strata))) == 1:
        v = float(strata[0][0])
        return v, v

    def statistic(*samples, axis=-1):
        return stats.trim_mean(np.concatenate(samples, axis=axis), 0.25, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples of 2-3 seeds warn
        res = stats.bootstrap(tuple(strata), statistic, n_resamples=n_resamples,
                              confidence_level=confidence, method="percentile",
                              vectorized=True, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def hardware_label(cpu: str, gpu: str) -> str:
    """What a run ran on, in words: the GPU where it used one, else the CPU model."""
    return gpu or cpu or "unknown hardware"


def _hardware(frame: pd.DataFrame) -> pd.Series:
    """Per row: ``hardware_label`` of its ``cpu`` and ``gpu`` (blank in version-1 files)."""
    return pd.Series([hardware_label(c, g) if c or g else ""
                      for c, g in zip(frame["cpu"], frame["gpu"], strict=True)],
                     index=frame.index, dtype=object)


def _per_run(frame: pd.DataFrame) -> pd.DataFrame:
    """Runs x metrics (final values), with the cell columns, the hardware and the run's
    status."""
    finals = final_values(frame)
    wide = finals.pivot_table(index="run_id", columns="metric", values="value", aggfunc="last")
    frame = frame.assign(hardware=_hardware(frame))
    meta = frame.groupby("run_id")[CELL + ["seed", "hardware"]].first()
    status = frame.groupby("run_id")["status"].agg(_worst).rename("status")
    error = frame.groupby("run_id")["error"].agg(lambda s: next((e for e in s if e), ""))
    return meta.join(wide).join(status).join(error.rename("error")).reset_index()


def _worst(statuses) -> str:
    order = ("failed", "timeout", "diverged", "skipped", "ok")
    present = set(statuses)
    return next((s for s in order if s in present), "ok")


def cell_table(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (see the module docstring); cells are never dropped for failing."""
    runs = _per_run(frame)
    rows = []
    for key, g in runs.groupby(CELL, dropna=False, sort=True):
        ok = g[g["status"] == "ok"]
        row = dict(zip(CELL, key, strict=True))
        row.update(runs=len(g), ok=len(ok), failed=int(g["status"].isin(FAILED).sum()),
                   diverged=int((g["status"] == "diverged").sum()),
                   skipped=int((g["status"] == "skipped").sum()))
        for metric in ("train_fps", "collect_fps", "steady_fps", "compile_time_s",
                       "wall_time_s", "peak_rss_mb", "worker_overhead_s"):
            row[metric] = _median(ok, metric)
        parts = {k: ok.get(f"{k}_time_s") for k in ("env", "policy", "update")}
        if all(p is not None for p in parts.values()) and len(ok):
            total = sum(parts.values())
            for k, p in parts.items():  # a peer's runs have no env / policy split: NaN
                shares = (p / total).dropna()
                row[f"{k}_share"] = float(np.median(shares)) if len(shares) else math.nan
        returns = _values(ok, "final_return")
        row["final_return_iqm"] = iqm(returns) if len(returns) else math.nan
        row["final_return_lo"], row["final_return_hi"] = iqm_interval(returns)
        row["threshold"] = _median(ok, "threshold")
        reached = _values(ok, "time_to_threshold_s")
        row["reached"] = len(reached)
        row["time_to_threshold_s"] = float(np.median(reached)) if len(reached) else math.nan
        met = _values(ok, "success")  # recipes: the tutorial's success criterion (1/0)
        row["success_met"], row["success_runs"] = int(met.sum()), len(met)
        errors = sorted({e for e in g["error"] if e})
        row["errors"] = "; ".join(errors)[:300]
        rows.append(row)
    return pd.DataFrame(rows)


def _values(g: pd.DataFrame, metric: str) -> np.ndarray:
    if metric not in g:
        return np.array([])
    v = g[metric].to_numpy(dtype=float)
    return v[~np.isnan(v)]


def _median(g: pd.DataFrame, metric: str) -> float:
    v = _values(g, metric)
    return float(np.median(v)) if len(v) else math.nan


# --------------------------------------------------------------------------- tables


def _column(row) -> str:
    n = "" if pd.isna(row["num_envs"]) or row["num_envs"] == "" else f" x{int(row['num_envs'])}"
    return f"{row['backend']}/{row['task']} {row['device']}{n}"


def label(row) -> str:
    """An algorithm column's name: ``ppo``, ``ppo (sb3)`` for a peer's implementation, with
    the compile mode where it is not eager."""
    impl, mode = row.get("impl", "rlgauge"), row.get("compile", "eager")
    extra = ", ".join(x for x in (impl if impl not in ("", "rlgauge") else "",
                                  mode if mode not in ("", "eager") else "") if x)
    return f"{row['algorithm']} ({extra})" if extra else str(row["algorithm"])


def _pivot(cells: pd.DataFrame, text) -> pd.DataFrame:
    cells = cells.assign(_col=[_column(r) for _, r in cells.iterrows()],
                         _label=[label(r) for _, r in cells.iterrows()],
                         _text=[text(r) for _, r in cells.iterrows()])
    table = cells.pivot_table(index="_col", columns="_label", values="_text",
                              aggfunc="first", sort=True).fillna("")
    table.columns.name = None
    table.index.name = "backend/task device"
    return table


def _num(v, fmt="{:,.0f}") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _status_text(r) -> str | None:
    if r["ok"] == 0:
        if r["skipped"] == r["runs"]:
            return "skipped"
        return "FAILED" if r["failed"] else "diverged"
    return None


def report_tables(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Title -> table: the pivots of ``cell_table`` a person reads (module docstring), then
    the runs that did not finish (failed, timed out, diverged, skipped) with the reason."""
    cells = cell_table(frame)
    cells = cells[cells["skipped"] < cells["runs"]]  # skipped cells: listed at the end only
    out: dict[str, pd.DataFrame] = {}
    if not cells.empty:
        _cell_pivots(cells, out)
    peers = peers_table(frame)
    if not peers.empty:
        out["Implementations side by side: rlgauge against its peers on the same cells "
            "(ratio rlgauge / peer, Welch 95% interval over seeds)"] = peers
    compiled = compile_table(frame)
    if not compiled.empty:
        out["Compile modes side by side: steady-state frames/s (frames / (wall time - compile "
            "time)), compiled / eager with its Welch 95% interval over seeds, median compile "
            "time"] = compiled
    runs = _per_run(frame)
    bad = runs[runs["status"] != "ok"]
    if len(bad):
        out["Runs that did not finish"] = bad[CELL + ["seed", "status", "error"]] \
            .sort_values(CELL + ["seed"]).reset_index(drop=True)
    return out


def _cell_pivots(cells: pd.DataFrame, out: dict) -> None:
    def note(r):
        bad = r["runs"] - r["ok"]
        return f" ({bad}/{r['runs']} failed)" if bad and r["ok"] else ""

    out["Throughput: frames/s overall (while collecting), median over seeds"] = _pivot(
        cells, lambda r: _status_text(r) or f"{_num(r['train_fps'])} "
                                            f"({_num(r['collect_fps'])}){note(r)}")
    if "env_share" in cells:
        out["Wall-time split: env / policy / update, % of their sum (median over seeds)"] = \
            _pivot(cells, lambda r: _status_text(r) or (
                "/".join(_num(100 * r[f"{k}_share"], "{:.0f}")
                         for k in ("env", "policy", "update"))
                if not math.isnan(r.get("env_share", math.nan)) else ""))
    out["Final return (deterministic policy): IQM [95% bootstrap CI], n seeds"] = _pivot(
        cells, lambda r: _status_text(r) or _return_text(r))
    if cells["success_runs"].gt(0).any():
        out["Tutorial recipes: runs that met the tutorial's success criterion"] = _pivot(
            cells[cells["success_runs"] > 0], lambda r: _status_text(r) or
            f"{r['success_met']}/{r['success_runs']}")
    if cells["threshold"].notna().any():
        out["Time to the solved return (training episodes): median s over the runs that "
            "reached it (reached/runs)"] = _pivot(cells, lambda r: _status_text(r) or (
                f"{_num(r['time_to_threshold_s'], '{:.1f}')} ({r['reached']}/{r['ok']})"
                if r["reached"] else
                (f"not reached (0/{r['ok']}, >= {r['threshold']:g})"
                 if not math.isnan(r["threshold"]) else "no threshold")))


def peers_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell that rlgauge and a peer implementation (``harness.peers``) both ran: frames/s,
    wall time and final return of each, the ratio rlgauge / peer and its Welch 95% interval
    over seeds (``compare`` with the peer as the base). Empty without a peer."""
    impls = set(frame["impl"]) - {"", "rlgauge"}
    if not impls or "rlgauge" not in set(frame["impl"]):
        return pd.DataFrame()
    ours = frame[frame["impl"] == "rlgauge"]
    rows = []
    for impl in sorted(impls):
        theirs = frame[frame["impl"] == impl].assign(impl="rlgauge")  # same cells
        table = compare(theirs, ours, metrics=("train_fps", "wall_time_s", "final_return"),
                        across_hardware=True)
        for _, r in table.iterrows():
            rows.append({"cell": _column(r), "algorithm": r["algorithm"], "metric": r["metric"],
                         impl: comparison.fmt_value(r["base"]),
                         "rlgauge": comparison.fmt_value(r["head"]), "n": r["n"],
                         "rlgauge / peer": _num(r["ratio"], "{:.3f}"),
                         "change [95% CI]": comparison.fmt_change(r["change"], r["ci_low"],
                                                                  r["ci_high"]),
                         "verdict": r["verdict"]})
    return pd.DataFrame(rows).fillna("").set_index("cell")


def compile_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per cell run both eager and in a compile mode (same algorithm, implementation, backend,
    task, device, num_envs): the median steady-state frames/s of each (``steady_fps``: frames
    / (wall time - compile time); ``train_fps`` for runs that predate it), the speed-up
    compiled / eager -- the ratio of the medians, and in brackets the Welch 95% interval over
    seeds of the ratio of the means (``compare`` with eager as the base) -- its verdict, and
    the median ``compile_time_s`` of the compiled runs (the warm-up calls that compile, kept
    out of ``steady_fps``). Cells whose two sides ran on different hardware get no ratio.
    Empty without such a pair."""
    modes = set(frame["compile"]) - {"", "eager"}
    if not modes or "eager" not in set(frame["compile"]):
        return pd.DataFrame()
    frame = _with_steady_fps(frame)
    eager = frame[frame["compile"] == "eager"]
    order = {m: i for i, m in enumerate(("compile", "compile+cudagraphs"))}
    rows = []
    for mode in sorted(modes, key=lambda m: (order.get(m, len(order)), m)):
        compiled = frame[frame["compile"] == mode]
        table = compare(eager, compiled.assign(compile="eager"), metrics=("steady_fps",))
        if table.empty:
            continue
        times = _per_run(compiled)
        times = times[times["status"] == "ok"].assign(compile="eager")
        for _, r in table.iterrows():
            mask = (times[CELL] == r[CELL]).all(axis=1)
            ratio = r["ratio"]
            interval = ("" if math.isnan(r["ci_low"]) else
                        f" [{1 + r['ci_low']:.3f}, {1 + r['ci_high']:.3f}]")
            rows.append({"cell": _column(r), "algorithm": label(r), "mode": mode,
                         "n eager/compiled": r["n"],
                         "eager frames/s": comparison.fmt_value(r["base"]),
                         "compiled frames/s": comparison.fmt_value(r["head"]),
                         "compiled / eager [95% CI]": (_num(ratio, "{:.3f}") + interval
                                                       if not math.isnan(ratio) else ""),
                         "verdict": r["verdict"],
                         "compile time (s)": _num(_median(times[mask], "compile_time_s"),
                                                  "{:.1f}")})
    return pd.DataFrame(rows).set_index("cell") if rows else pd.DataFrame()


def _with_steady_fps(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``steady_fps`` row copied from ``train_fps`` for every run that has
    none (results from before the compile axis: eager, no compile time to take out)."""
    have = set(frame.loc[frame["metric"] == "steady_fps", "run_id"])
    old = frame[(frame["metric"] == "train_fps") & ~frame["run_id"].isin(have)]
    return pd.concat([frame, old.assign(metric="steady_fps")], ignore_index=True) \
        if len(old) else frame


def _return_text(r) -> str:
    if math.isnan(r["final_return_iqm"]):
        return "n/a"
    if math.isnan(r["final_return_lo"]):
        return f"{r['final_return_iqm']:.1f} (n={r['ok']})"
    return (f"{r['final_return_iqm']:.1f} [{r['final_return_lo']:.1f}, "
            f"{r['final_return_hi']:.1f}] n={r['ok']}")


def markdown_report(frame: pd.DataFrame, title: str = "rlgauge results") -> str:
    parts = [f"# {title}", "", _provenance(frame)]
    for name, table in report_tables(frame).items():
        parts += ["", f"## {name}", "", table.to_markdown(index=not name.startswith("Runs"))]
    return "\n".join(parts) + "\n"


def _provenance(frame: pd.DataFrame) -> str:
    def uniq(col):
        vals = sorted({str(v) for v in frame[col] if str(v)})
        return ", ".join(vals[:3]) + (f" (+{len(vals) - 3})" if len(vals) > 3 else "")

    hardware = sorted({h for h in _hardware(frame) if h})
    line = (f"{frame['run_id'].nunique()} runs; machine {uniq('machine')}; git "
            f"{uniq('git_sha')[:40]}; torch {uniq('torch')} (CUDA {uniq('cuda') or '?'}), "
            f"torchrl {uniq('torchrl')}, tensordict {uniq('tensordict')}; hardware: "
            f"{'; '.join(hardware) or 'not recorded'}")
    if len(hardware) > 1:
        line += (f". These results come from {len(hardware)} different hardware: throughput "
                 f"and times of cells that ran on different hardware are not comparable")
    return line


# --------------------------------------------------------------------------- plots


def _curve_grid(frame: pd.DataFrame, points: int = 50):
    """(cell key, frame grid, runs x grid returns) per cell with a training-return curve."""
    curves = frame[(frame["metric"] == "episode_return") & (frame["status"] == "ok")]
    for key, g in curves.groupby(CELL, dropna=False, sort=True):
        runs = [r.sort_values("frames") for _, r in g.groupby("run_id")]
        top = min(float(r["frames"].max()) for r in runs)
        low = max(float(r["frames"].min()) for r in runs)
        if not top > low:
            continue
        grid = np.linspace(low, top, points)
        ys = np.stack([np.interp(grid, r["frames"].to_numpy(float), r["value"].to_numpy(float))
                       for r in runs])
        yield key, grid, ys


def plots(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Learning curves per (backend, task, device) and throughput bars per (backend, device),
    as PNG files under ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    by_task: dict[tuple, list] = {}
    for key, grid, ys in _curve_grid(frame):
        cell = dict(zip(CELL, key, strict=True))
        by_task.setdefault((cell["backend"], cell["task"], cell["device"]), []).append(
            (cell, grid, ys))
    for (backend, task, device), items in sorted(by_task.items()):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for cell, grid, ys in items:
            center = stats.trim_mean(ys, 0.25, axis=0)
            (line,) = ax.plot(grid, center, label=f"{label(cell)} (n={len(ys)})")
            if len(ys) >= 2:
                lo, hi = zip(*(iqm_interval(ys[:, i]) for i in range(ys.shape[1])),
                             strict=True)
                ax.fill_between(grid, lo, hi, alpha=0.2, color=line.get_color())
        ax.set_title(f"{backend}/{task} ({device}): training return, IQM and 95% CI",
                     fontsize=9)
        ax.set(xlabel="env frames", ylabel="episode return")
        ax.grid(alpha=0.3)
        written.append(_save(fig, ax, out_dir / f"curves-{backend}-{task}-{device}.png"))
    cells = cell_table(frame)
    cells = cells[cells["ok"] > 0]
    runs = _per_run(frame)
    runs = runs[runs["status"] == "ok"]
    for (backend, device), g in cells.groupby(["backend", "device"], sort=True):
        g = g.sort_values(["task", "algorithm", "impl", "compile"])
        labels = [f"{label(r)}\n{r['task']}" for _, r in g.iterrows()]
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(g) + 1), 4), dpi=100)
        x = np.arange(len(g))
        seeds = [runs.merge(pd.DataFrame([r[CELL].to_dict()]), on=CELL)
                 for _, r in g.iterrows()]
        for offset, metric, name in ((-0.2, "train_fps", "overall"),
                                     (0.2, "collect_fps", "collecting")):
            med = g[metric].to_numpy(float)
            spread = np.array([[m - _values(s, metric).min(), _values(s, metric).max() - m]
                               if len(_values(s, metric)) else [0.0, 0.0]
                               for m, s in zip(med, seeds, strict=True)]).T
            ax.bar(x + offset, med, width=0.4, label=name, yerr=spread, capsize=3)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_title(f"{backend} ({device}): frames/s, median (min-max over seeds)",
                     fontsize=9)
        ax.set_ylabel("frames/s")
        written.append(_save(fig, ax, out_dir / f"throughput-{backend}-{device}.png"))
    return written


def _save(fig, ax, path: Path) -> Path:
    """Legend, tight layout, write the PNG (``cuda:0`` -> ``cuda0`` in the name), close."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    path = path.with_name(path.name.replace(":", ""))
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- files


def html_report(frame: pd.DataFrame, pngs: list[Path], title: str = "rlgauge results") -> str:
    """One self-contained page: the tables and the PNGs (inlined as data URIs)."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
             "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:"
             "right}th{background:#f3f3f3}img{max-width:48%;margin:4px}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(_provenance(frame))}</p>"]
    for name, table in report_tables(frame).items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(table.to_html(index=not name.startswith("Runs"), escape=True))
    if pngs:
        parts.append("<h2>Plots</h2>")
    for png in pngs:
        data = base64.b64encode(Path(png).read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(Path(png).stem)}' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(frame: pd.DataFrame, out_dir: Path, title: str = "rlgauge results") -> dict:
    """``report.md``, ``report.csv`` (``cell_table``), ``report.html`` and ``plots/*.png``
    under ``out_dir`` (atomic writes). Returns {kind: path}."""
    from harness import atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plots(frame, out_dir / "plots")
    paths = {"markdown": out_dir / "report.md", "csv": out_dir / "report.csv",
             "html": out_dir / "report.html"}
    atomic.write_text(paths["markdown"], markdown_report(frame, title))
    atomic.write_text(paths["csv"], cell_table(frame).to_csv(index=False))
    atomic.write_text(paths["html"], html_report(frame, pngs, title))
    return {**paths, "plots": pngs}


# --------------------------------------------------------------------------- compare


def compare(base: pd.DataFrame, head: pd.DataFrame, *, threshold: float = 0.10,
            metrics: tuple[str, ...] = ("train_fps", "collect_fps", "final_return",
                                        "time_to_threshold_s"),
            across_hardware: bool = False) -> pd.DataFrame:
    """Per (cell, metric) in both sets: median base/head, relative change (head - base) /
    |base|, its 95% interval (Welch's t interval of the difference of means, over |base|
    mean), and a verdict. A row is significantly worse when the change is worse than
    ``threshold`` in the metric's bad direction and the whole interval is on that side of 0.
    With a single run on either side the interval cannot be computed: the verdict says so and
    the row never counts as a regression.

    Hardware (``cpu``, and ``gpu`` for GPU runs): the ``hardware`` column names each side's;
    where they differ, a ratio of speeds measures the machines, not the change: such rows are
    not compared (verdict ``not compared: different hardware``, no ratio, never a regression)
    unless ``across_hardware``, and only ``HARDWARE_FREE`` metrics (the final return) keep
    their verdict. Rows from files without hardware (schema version 1) are compared."""
    from scipy import stats

    b, h = _per_run(base), _per_run(head)
    b, h = b[b["status"] == "ok"], h[h["status"] == "ok"]
    rows = []
    for key, gb in b.groupby(CELL, dropna=False, sort=True):
        mask = (h[CELL] == pd.Series(dict(zip(CELL, key, strict=True)))).all(axis=1)
        gh = h[mask]
        if gh.empty:
            continue
        hw_b = sorted({x for x in gb["hardware"] if x})
        hw_h = sorted({x for x in gh["hardware"] if x})
        differs = bool(hw_b and hw_h and hw_b != hw_h)
        for metric in metrics:
            vb, vh = _values(gb, metric), _values(gh, metric)
            if not len(vb) or not len(vh):
                continue
            cell = {**dict(zip(CELL, key, strict=True)), "metric": metric,
                    "base": float(np.median(vb)), "head": float(np.median(vh)),
                    "n": f"{len(vb)}/{len(vh)}", "hardware_base": "; ".join(hw_b),
                    "hardware_head": "; ".join(hw_h), "different_hardware": differs}
            if differs and metric not in HARDWARE_FREE and not across_hardware:
                rows.append({**cell, "ratio": math.nan, "change": math.nan,
                             "ci_low": math.nan, "ci_high": math.nan,
                             "verdict": comparison.DIFFERENT_HARDWARE,
                             "regression": False})
                continue
            higher = comparison.direction(metric=metric) == comparison.HIGHER
            mb, mh = float(np.median(vb)), float(np.median(vh))
            scale = abs(float(np.mean(vb))) or 1.0
            change = (mh - mb) / (abs(mb) or 1.0)
            lo = hi = math.nan
            if len(vb) >= 2 and len(vh) >= 2:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ci = stats.ttest_ind(vh, vb, equal_var=False).confidence_interval(0.95)
                lo, hi = ci.low / scale, ci.high / scale
                if np.allclose(vb, vb[0]) and np.allclose(vh, vh[0]):  # no spread at all
                    lo = hi = (float(np.mean(vh)) - float(np.mean(vb))) / scale
            worse_change = -change if higher else change
            good, bad = comparison.words(metric=metric)
            if math.isnan(lo):
                word = (bad if worse_change > threshold else
                        good if -worse_change > threshold else "within threshold")
                verdict = f"{word} (n={len(vb)}/{len(vh)}: untested)"
                regression = False
            else:
                worse_ci = (-hi, -lo) if higher else (lo, hi)  # interval of the "worse" change
                if worse_ci[0] > 0:
                    verdict = bad
                elif worse_ci[1] < 0:
                    verdict = good
                else:
                    verdict = "no significant change"
                regression = verdict == bad and worse_change > threshold
            if differs:
                verdict += " (different hardware)"
            rows.append({**cell, "ratio": mh / mb if mb > 0 and mh > 0 else math.nan,
                         "change": change, "ci_low": lo, "ci_high": hi,
                         "verdict": verdict, "regression": regression})
    return pd.DataFrame(rows)


def hardware_note(table: pd.DataFrame) -> str:
    """One sentence when the two sides of a ``compare`` table ran on different hardware
    (empty otherwise)."""
    if table.empty or not table["different_hardware"].any():
        return ""
    diff = table[table["different_hardware"]]
    base = "; ".join(sorted(set(diff["hardware_base"])))
    head = "; ".join(sorted(set(diff["hardware_head"])))
    refused = diff["verdict"].str.startswith("not compared").any()
    tail = (" Speeds and times of those cells are not compared (their ratio would measure the "
            "machines); pass --across-hardware to compare them anyway." if refused else
            " Their speeds and times are compared anyway (--across-hardware): the ratios "
            "include the difference between the machines.")
    return f"Different hardware: BASE ran on {base}, HEAD on {head}.{tail}"


def compare_markdown(table: pd.DataFrame, threshold: float) -> str:
    if table.empty:
        return "(no cell and metric measured in both result sets)"
    view = pd.DataFrame({
        "cell": [_column(r) + f" {label(r)}" for _, r in table.iterrows()],
        "metric": table["metric"],
        "base": [comparison.fmt_value(v) for v in table["base"]],
        "head": [comparison.fmt_value(v) for v in table["head"]],
        "n base/head": table["n"],
        "ratio": [_num(v, "{:.3f}") for v in table["ratio"]],
        "change [95% CI]": [comparison.fmt_change(c, lo, hi)
                            for c, lo, hi in zip(table["change"], table["ci_low"],
                                                 table["ci_high"], strict=True)],
        "verdict": [v + (" **REGRESSION**" if r else "")
                    for v, r in zip(table["verdict"], table["regression"], strict=True)],
    })
    n = int(table["regression"].sum())
    note = hardware_note(table)
    return ((f"{note}\n\n" if note else "") + view.to_markdown(index=False)
            + f"\n\n{n} row(s) significantly worse by more than {threshold:.0%}.")
