"""Published-threshold learning checks (``nox -s learning``): does each reference algorithm reach
the return the literature reports, within the literature's frame budget?

Each algorithm module lists its ``LEARNING_TARGETS`` (``harness.training.LearningTarget``). For a
target, ``run_target`` trains one run per seed through the matrix's executor
(``harness.matrix.run_grid``: a worker process per run, one per core, each run's records written
atomically as it finishes under ``results/learning/runs/<commit>/<target>/cells/``, so an
interrupted session resumes), evaluates the deterministic policy (``final_return``) and returns
one row per seed. ``table`` reduces the rows to the
published-threshold table (per-seed and median return, pass/fail, wall time) that the session
writes to ``results/learning/``.

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


def _frame(name: str, target, rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame.insert(0, "algorithm", name)
    for col in ("backend", "task", "frames", "threshold", "source"):
        frame[col] = getattr(target, col)
    return frame


def _last(records: pd.DataFrame | None, metric: str) -> float:
    if records is None:
        return float("nan")
    ok = records[(records["metric"] == metric) & (records["status"] == "ok")]
    return float(ok["value"].iloc[-1]) if len(ok) else float("nan")


def run_target(algorithm: str, target, *, seeds: int = 3, workers: int | None = None,
               out_dir: str | Path = "results/learning") -> pd.DataFrame:
    """Train ``seeds`` runs of ``algorithm`` on ``target``; one row per seed."""
    from harness import runs

    overrides = tuple(runs.parse_overrides(algorithm, target.overrides).items())
    specs = [runs.RunSpec(algorithm, target.backend, target.task, "cpu", seed,
                          frames=target.frames, overrides=overrides) for seed in range(seeds)]
    name = f"{algorithm}-{target.backend}-{target.task}"
    rows = [{"seed": seed, "final_return": _last(records, "final_return"),
             "wall_time_s": _last(records, "wall_time_s"), "file": str(path)}
            for seed, records, path in _run_seeds(name, target, specs, workers, out_dir)]
    return _frame(algorithm, target, rows)


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
                     "wall_time_s": _last(records, "wall_time_s"), "file": str(path)})
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


def _first_met(g: pd.DataFrame) -> str:
    """Per seed, the frame count at which a recipe's curve criterion (e.g. the longest episode)
    was first met, "not met" where it never was; "" where the criterion is one number at the
    end of the run (``final_return``) or the rows predate the column."""
    if "frames_to_success" not in g or not g["curve"].fillna(False).astype(bool).all():
        return ""
    return ", ".join("not met" if pd.isna(f) else f"{int(f):,}"
                     for f in g.sort_values("seed")["frames_to_success"])


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per (algorithm, task): budget, threshold, the criterion, per-seed and median
    value (``final_return``; a recipe's: its criterion's metric), when a recipe's criterion
    was first met (per seed), verdict, wall time."""
    out = []
    for (algo, backend, task), g in rows.groupby(["algorithm", "backend", "task"], sort=False):
        recipe = "metric" in g and isinstance(g["metric"].iloc[0], str)
        returns = g.sort_values("seed")["value" if recipe else "final_return"].tolist()
        median = statistics.median(returns)
        threshold = g["threshold"].iloc[0]
        out.append({
            "algorithm": algo, "task": f"{backend}/{task}", "frames": int(g["frames"].iloc[0]),
            "threshold": threshold, "source": g["source"].iloc[0],
            "criterion": g["criterion"].iloc[0] if recipe else f"final_return >= {threshold:g}",
            "per seed": ", ".join(f"{r:.1f}" for r in returns),
            "median": round(median, 1), "met": "yes" if met(g) else "NO",
            FIRST_MET: _first_met(g) if recipe else "",
            "wall s (per seed, median)": round(statistics.median(g["wall_time_s"]), 1),
        })
    return pd.DataFrame(out)


def write_table(rows: pd.DataFrame, out_dir: str | Path, machine: str) -> Path:
    """Markdown + CSV of ``table(rows)`` under ``out_dir`` (atomic writes).

    The table accumulates: rows of targets this session did not run (``nox -s learning -- -k
    dqn``) are kept from the machine's previous table, each with the date it was measured."""
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
        old[FIRST_MET] = old.get(FIRST_MET, pd.Series("", index=old.index)).fillna("")
        keep = ~old.set_index(["algorithm", "task"]).index.isin(
            summary.set_index(["algorithm", "task"]).index)
        summary = pd.concat([old[keep], summary], ignore_index=True)[list(summary.columns)]
    md = out_dir / f"learning-{machine}.md"
    atomic.write_text(md, "# Published-threshold learning results\n\n"
                              + summary.to_markdown(index=False) + "\n")
    atomic.write_text(out_dir / f"learning-{machine}.csv", summary.to_csv(index=False))
    return md
