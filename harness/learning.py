"""Published-threshold learning checks (``nox -s learning``): does each reference algorithm reach
the return the literature reports, within the literature's frame budget?

Each algorithm module lists its ``LEARNING_TARGETS`` (``harness.training.LearningTarget``). For a
target, ``run_target`` trains one run per seed through the matrix's executor
(``harness.matrix.run_grid``: a worker process per run, one per core, each run's records written
atomically as it finishes under ``results/learning/runs/<commit>/<target>/cells/``, so an
interrupted session resumes), evaluates the deterministic policy (``final_return``) and returns
one row per seed (``final_return``, ``wall_time_s``, ``train_fps``).

The same seeds of a target also run with Stable-Baselines3 (``impl="sb3"``, ``harness.peers``)
at the same budget and overrides where the algorithm has an SB3 counterpart on the target's
backend: ``sb3_targets`` lists those targets, ``unavailable`` says why one cannot run here (SB3
not installed, an override SB3 cannot follow: ``peers.check_config``).

``table`` reduces the rows to the published-threshold table that the session writes to
``results/learning/``: one line per (algorithm, task, impl) with the budget, threshold and
criterion, per-seed and median return, pass/fail (``met``: an SB3 line's verdict is reported,
never asserted), median wall time and frames/s over seeds, and on rlgauge's line of a target SB3
also ran in the same session, rlgauge's wall time over SB3's (``WALL_RATIO``: the ratio of the
medians and the Welch 95% interval of the change, from ``harness.report.compare`` as the
report's ``peers_table`` computes it).

Recipes (``harness.recipes``: torchrl's tutorial pipelines) are checked the same way against
their tutorial's own success criterion (e.g. ``max_step_count >= 1000``) within the tutorial's
budget: ``recipe_targets`` lists them, ``run_recipe`` trains the seeds, and their rows carry the
criterion's ``metric`` and ``value`` (``table`` shows them in the same columns, with a
``criterion`` column saying what was measured and, for a criterion on a curve such as the longest
episode so far, the frame count at which each seed first met it).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pandas as pd

from harness import atomic, results


def targets() -> list[tuple[str, object]]:
    """(algorithm, LearningTarget) for every registered algorithm available here."""
    from harness import registry, runs

    registry.load_builtins()
    out = []
    for name in registry.ALGORITHMS.available():
        for target in getattr(runs.algorithm_module(name), "LEARNING_TARGETS", ()):
            out.append((name, target))
    return out


#: the peer implementation ``nox -s learning`` runs on the targets it can follow
PEER = "sb3"


def sb3_targets() -> list[tuple[str, object]]:
    """The targets of ``targets()`` whose algorithm has a Stable-Baselines3 counterpart on the
    target's backend (``harness.peers``: gymnasium only), installed here or not."""
    from harness import peers

    return [(name, target) for name, target in targets()
            if PEER in peers.implementations(name) and target.backend in peers.SB3_BACKENDS]


def unavailable(algorithm: str, target, impl: str = PEER) -> str | None:
    """Why ``impl`` cannot run ``algorithm`` on ``target`` here (the UsageError's line: no
    counterpart, not installed, an override it cannot follow), or None."""
    from harness import runs
    from harness.errors import UsageError

    try:
        runs.resolve(_specs(algorithm, target, 1, impl)[0])
    except UsageError as e:
        return str(e)
    return None


def recipe_targets() -> list[tuple[str, object]]:
    """(recipe name, LearningTarget) for every recipe available here."""
    from harness import recipes

    return [(r.name, recipes.learning_target(r)) for r in recipes.available()]


_SESSION = time.strftime("%Y%m%d-%H%M%S")  # names this session's runs of a dirty checkout
#: a learning run's time limit in the matrix's executor (the longest, tutorial-ppo's 1M frames,
#: took 46 min per seed here)
TIMEOUT_S = 6 * 3600.0


def runs_dir(out_dir: str | Path, name: str) -> Path:
    """Where the runs of one target go: ``OUT/runs/<commit>/<name>/`` (the matrix's ``cells/``
    and ``logs/``). A clean checkout's commit names it, so an interrupted ``nox -s learning``
    resumes; uncommitted changes get a directory of their own per session (never the results
    of other code)."""

    from harness import provenance

    sha = provenance.git_sha()
    tag = sha[:12] + (f"-dirty-{_SESSION}" if sha.endswith("-dirty") else "")
    return Path(out_dir) / "runs" / tag / name


def _run_seeds(name: str, target, specs: list, workers: int | None,
               out_dir) -> list[tuple[int, pd.DataFrame | None, Path]]:
    """Train ``specs`` (one per seed) through the matrix's executor (each run in its own
    worker process, results written as it finishes, resumable): (seed, records or None for a
    run that produced none, its file) per spec."""
    from harness import matrix

    out = runs_dir(out_dir, name)
    workers = workers or min(len(specs), len(os.sched_getaffinity(0)))
    matrix.run_grid(specs, [], out, workers=workers, timeout_s=TIMEOUT_S, threads=1,
                    retry_failed=True)
    rows = []
    for spec in specs:
        path = matrix.cell_path(out, spec)
        try:
            records = results.load(path)
        except results.ResultsError:
            records = None
        rows.append((spec.seed, records, path))
    return rows


def _frame(name: str, target, rows: list[dict], impl: str = "rlgauge") -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(0, "algorithm", name)
    frame.insert(1, "impl", impl)
    for col in ("backend", "task", "frames", "threshold", "source"):
        frame[col] = getattr(target, col)
    return frame


def _last(records: pd.DataFrame | None, metric: str) -> float:
    if records is None:
        return float("nan")
    ok = records[(records["metric"] == metric) & (records["status"] == "ok")]
    return float(ok["value"].iloc[-1]) if len(ok) else float("nan")


def _specs(algorithm: str, target, seeds: int, impl: str) -> list:
    from harness import runs

    overrides = tuple(runs.parse_overrides(algorithm, target.overrides).items())
    return [runs.RunSpec(algorithm, target.backend, target.task, "cpu", seed,
                         frames=target.frames, overrides=overrides, impl=impl)
            for seed in range(seeds)]


def target_rows(algorithm: str, target, runs: list[tuple[int, pd.DataFrame | None, object]],
                impl: str = "rlgauge") -> pd.DataFrame:
    """``run_target``'s rows from its runs' ``(seed, records or None, file)``: per seed the
    last ``final_return``, ``wall_time_s`` and ``train_fps`` (NaN where a run recorded none)."""
    rows = [{"seed": seed, "final_return": _last(records, "final_return"),
             "wall_time_s": _last(records, "wall_time_s"),
             "train_fps": _last(records, "train_fps"), "file": str(path)}
            for seed, records, path in runs]
    return _frame(algorithm, target, rows, impl)


def run_target(algorithm: str, target, *, seeds: int = 3, workers: int | None = None,
               out_dir: str | Path = "results/learning", impl: str = "rlgauge") -> pd.DataFrame:
    """Train ``seeds`` runs of ``algorithm`` on ``target`` with implementation ``impl``
    (``harness.peers``: the same budget, overrides and seeds); one row per seed. UsageError
    before any work where ``impl`` cannot run it (``unavailable``)."""
    from harness import runs

    specs = _specs(algorithm, target, seeds, impl)
    runs.resolve(specs[0])
    name = f"{algorithm}-{target.backend}-{target.task}"
    return target_rows(algorithm, target, _run_seeds(name, target, specs, workers, out_dir),
                       impl)


def run_recipe(name: str, *, seeds: int = 3, workers: int | None = None, device: str = "cpu",
               out_dir: str | Path = "results/learning") -> pd.DataFrame:
    """Train ``seeds`` runs of recipe ``name`` at its budget; one row per seed with its
    success criterion's ``metric`` and ``value`` (and ``final_return``)."""
    from harness import recipes, runs

    recipe = recipes.get(name)
    target = recipes.learning_target(recipe)
    specs = [runs.spec_for(recipe=name, device=device, seed=seed) for seed in range(seeds)]
    rows = []
    for seed, records, path in _run_seeds(name, target, specs, workers, out_dir):
        value = recipes.value_of(recipe, records) if records is not None else float("nan")
        rows.append({"seed": seed, "metric": recipe.success.metric, "value": value,
                     "criterion": recipe.success.text(), "strict": recipe.success.strict,
                     "frames_to_success": _last(records, "frames_to_success"),
                     "curve": recipe.success.curve is not None,
                     "final_return": _last(records, "final_return"),
                     "wall_time_s": _last(records, "wall_time_s"),
                     "train_fps": _last(records, "train_fps"), "file": str(path)})
    return _frame(name, target, rows)


def met(rows: pd.DataFrame) -> bool:
    """Whether the median over seeds meets the rows' criterion (a recipe's, or
    ``final_return >= threshold``)."""
    recipe = "metric" in rows and isinstance(rows["metric"].iloc[0], str)
    median = statistics.median(rows["value" if recipe else "final_return"])
    threshold = rows["threshold"].iloc[0]
    strict = recipe and bool(rows["strict"].iloc[0])
    return median > threshold if strict else median >= threshold


#: the learning table's column of when a recipe's curve criterion was first met
FIRST_MET = "first met at (frames, per seed)"
#: the learning table's column of rlgauge's wall time over SB3's on the same target
WALL_RATIO = "wall rlgauge / sb3 (change [95% CI])"
#: the learning table's key: one line per (algorithm, task, impl)
KEY = ["algorithm", "task", "impl"]


def _first_met(g: pd.DataFrame) -> str:
    """Per seed, the frame count at which a recipe's curve criterion (e.g. the longest episode)
    was first met, "not met" where it never was; "" where the criterion is one number at the
    end of the run (``final_return``) or the rows predate the column."""
    if "frames_to_success" not in g or not g["curve"].fillna(False).astype(bool).all():
        return ""
    return ", ".join("not met" if pd.isna(f) else f"{int(f):,}"
                     for f in g.sort_values("seed")["frames_to_success"])


def _median(values) -> float:
    """Median of the values that are not NaN (NaN if none)."""
    values = [float(v) for v in values if not pd.isna(v)]
    return statistics.median(values) if values else float("nan")


def wall_ratio(ours: pd.DataFrame, theirs: pd.DataFrame) -> str:
    """rlgauge's wall time over a peer's on one target, from their rows' per-seed
    ``wall_time_s``: ``harness.report.compare`` with the peer as the base, as the report's
    ``peers_table``: the ratio of the medians over seeds, then the relative change with its
    Welch 95% interval (no interval with fewer than 2 seeds a side); "" without both."""
    from harness import comparison, report

    def records(g: pd.DataFrame) -> pd.DataFrame | None:
        ok = g[g["wall_time_s"].notna()]
        if ok.empty:
            return None
        first = g.iloc[0]
        # one cell for both sides (impl is the axis compared), one run per seed
        return results.make_records(
            [{"metric": "wall_time_s", "value": float(w), "unit": "s", "seed": int(s),
              "run_id": f"seed{int(s)}"} for s, w in zip(ok["seed"], ok["wall_time_s"],
                                                         strict=True)],
            algorithm=first["algorithm"], backend=first["backend"], task=first["task"],
            device="cpu")

    base, head = records(theirs), records(ours)
    if base is None or head is None:
        return ""
    row = report.compare(base, head, metrics=("wall_time_s",), across_hardware=True).iloc[0]
    if pd.isna(row["ratio"]):
        return ""
    change = comparison.fmt_change(row["change"], row["ci_low"], row["ci_high"])
    return f"{row['ratio']:.2f} ({change})"


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (algorithm, task, impl), a target's lines together, rlgauge's first:
    budget, threshold, the criterion, per-seed and median value (``final_return``; a recipe's:
    its criterion's metric), when a recipe's criterion was first met (per seed), verdict,
    median wall time and frames/s over seeds, and on rlgauge's line of a target whose SB3 rows
    are in ``rows`` too, ``WALL_RATIO`` (``wall_ratio``). Rows without ``impl`` are
    rlgauge's."""
    if "impl" not in rows:
        rows = rows.assign(impl="rlgauge")
    if "train_fps" not in rows:
        rows = rows.assign(train_fps=float("nan"))
    keys = ["algorithm", "backend", "task"]
    order = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, rows[keys].to_numpy())))}
    groups = sorted(rows.groupby([*keys, "impl"], sort=False),
                    key=lambda kg: (order[kg[0][:3]], kg[0][3] != "rlgauge", kg[0][3]))
    by_key = dict(groups)
    out = []
    for (algo, backend, task, impl), g in groups:
        recipe = "metric" in g and isinstance(g["metric"].iloc[0], str)
        returns = g.sort_values("seed")["value" if recipe else "final_return"].tolist()
        median = statistics.median(returns)
        threshold = g["threshold"].iloc[0]
        peer = by_key.get((algo, backend, task, PEER))
        fps = _median(g["train_fps"])
        out.append({
            "algorithm": algo, "impl": impl, "task": f"{backend}/{task}",
            "frames": int(g["frames"].iloc[0]),
            "threshold": threshold, "source": g["source"].iloc[0],
            "criterion": g["criterion"].iloc[0] if recipe else f"final_return >= {threshold:g}",
            "per seed": ", ".join(f"{r:.1f}" for r in returns),
            "median": round(median, 1), "met": "yes" if met(g) else "NO",
            FIRST_MET: _first_met(g) if recipe else "",
            "wall s (per seed, median)": round(_median(g["wall_time_s"]), 1),
            "frames/s (median)": round(fps) if not pd.isna(fps) else float("nan"),
            WALL_RATIO: wall_ratio(g, peer) if impl == "rlgauge" and peer is not None else "",
        })
    return pd.DataFrame(out)


def write_table(rows: pd.DataFrame, out_dir: str | Path, machine: str) -> Path:
    """Markdown + CSV of ``table(rows)`` under ``out_dir`` (atomic writes).

    The table accumulates: lines (algorithm, task, impl) this session did not run (``nox -s
    learning -- -k dqn``) are kept from the machine's previous table, each with the date it was
    measured; a kept rlgauge line loses its ``WALL_RATIO`` when this session ran SB3 on its
    target (the ratio compares runs of one session). Tables written before the ``impl`` column
    are read as rlgauge's lines."""
    import datetime

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = table(rows)
    summary.insert(len(summary.columns), "date", datetime.date.today().isoformat())
    previous = out_dir / f"learning-{machine}.csv"
    if previous.exists():
        old = pd.read_csv(previous).rename(columns={"returns (per seed)": "per seed"})
        if "date" not in old:
            old["date"] = ""
        if "criterion" not in old:  # tables written before recipes had a criterion column
            old["criterion"] = None
        old["criterion"] = old["criterion"].where(
            old["criterion"].notna(), "final_return >= " + old["threshold"].map("{:g}".format))

        def text(column: str, default: str = "") -> pd.Series:  # a read-back text column
            return old.get(column, pd.Series(default, index=old.index)).astype(object) \
                .fillna(default)

        old[FIRST_MET], old[WALL_RATIO], old["impl"] = (text(FIRST_MET), text(WALL_RATIO),
                                                        text("impl", "rlgauge"))
        old["frames/s (median)"] = old.get("frames/s (median)",
                                           pd.Series(float("nan"), index=old.index))
        new_peer = summary.loc[summary["impl"] == PEER, ["algorithm", "task"]]
        stale = (old["impl"] == "rlgauge") & old.set_index(["algorithm", "task"]).index.isin(
            new_peer.set_index(["algorithm", "task"]).index)
        old.loc[stale, WALL_RATIO] = ""
        keep = ~old.set_index(KEY).index.isin(summary.set_index(KEY).index)
        summary = pd.concat([old[keep], summary], ignore_index=True)[list(summary.columns)]
        # a target's lines together (where it first appears), rlgauge's first
        target = list(zip(summary["algorithm"], summary["task"], strict=True))
        first = {t: i for i, t in enumerate(dict.fromkeys(target))}
        order = sorted(range(len(summary)), key=lambda i: (first[target[i]],
                                                           summary["impl"].iloc[i] != "rlgauge"))
        summary = summary.iloc[order].reset_index(drop=True)
    md = out_dir / f"learning-{machine}.md"
    shown = summary.astype(object).where(summary.notna(), "")
    atomic.write_text(md, "# Published-threshold learning results\n\n"
                              + shown.to_markdown(index=False) + "\n")
    atomic.write_text(out_dir / f"learning-{machine}.csv", summary.to_csv(index=False))
    return md
