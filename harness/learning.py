"""Published-threshold learning checks (``nox -s learning``): does each reference algorithm reach
the return the literature reports, within the literature's frame budget?

Each algorithm module lists its ``LEARNING_TARGETS`` (``harness.training.LearningTarget``). For a
target, ``run_target`` trains one run per seed -- in parallel worker processes, one per core --
evaluates the deterministic policy (``final_return``), saves every run's records atomically under
``results/learning/runs/`` and returns one row per seed. ``table`` reduces the rows to the
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

import concurrent.futures as cf
import multiprocessing as mp
import os
import statistics
from pathlib import Path

import pandas as pd

from harness import atomic, results


def targets() -> list[tuple[str, object]]:
    """(algorithm, LearningTarget) for every registered algorithm available here."""
    from harness import registry
    from harness.training import algorithm_module

    registry.load_builtins()
    out = []
    for name in registry.ALGORITHMS.available():
        for target in getattr(algorithm_module(name), "LEARNING_TARGETS", ()):
            out.append((name, target))
    return out


def recipe_targets() -> list[tuple[str, object]]:
    """(recipe name, LearningTarget) for every recipe available here."""
    from harness import recipes

    return [(r.name, recipes.learning_target(r)) for r in recipes.available()]


def _one_seed(algorithm: str, target, seed: int, runs_dir: str) -> dict:
    import torch

    from harness.training import algorithm_module

    torch.set_num_threads(1)
    module = algorithm_module(algorithm)
    config = module.config_for(target.backend, target.task, frames=target.frames, seed=seed,
                               **target.overrides)
    run = module.train(config)
    records = run.records
    path = Path(runs_dir) / (f"{algorithm}-{target.backend}-{target.task}-s{seed}-"
                             f"{records['run_id'].iloc[0]}.csv")
    results.save(records, path)
    values = records.groupby("metric")["value"].last()
    return {"seed": seed, "final_return": float(values.get("final_return", float("nan"))),
            "wall_time_s": float(values.get("wall_time_s", float("nan"))), "file": str(path)}


def run_target(algorithm: str, target, *, seeds: int = 3, workers: int | None = None,
               out_dir: str | Path = "results/learning") -> pd.DataFrame:
    """Train ``seeds`` runs of ``algorithm`` on ``target``; one row per seed."""
    return _seeds(algorithm, target, seeds, workers, out_dir,
                  lambda s, runs_dir: (_one_seed, algorithm, target, s, runs_dir))


def _seeds(name: str, target, seeds: int, workers: int | None, out_dir, job) -> pd.DataFrame:
    """Run ``job(seed, runs_dir) -> (fn, *args)`` for each seed in spawned worker processes
    (fresh interpreters: no state shared with the caller); one row per seed plus the
    target's columns."""
    runs_dir = Path(out_dir) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or min(seeds, len(os.sched_getaffinity(0)))
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [pool.submit(*job(s, str(runs_dir))) for s in range(seeds)]
        rows = [f.result() for f in futures]
    frame = pd.DataFrame(rows)
    frame.insert(0, "algorithm", name)
    for col in ("backend", "task", "frames", "threshold", "source"):
        frame[col] = getattr(target, col)
    return frame


def _one_recipe_seed(name: str, seed: int, runs_dir: str, device: str) -> dict:
    import torch

    from harness import recipes

    torch.set_num_threads(1)
    run = recipes.run(name, seed=seed, device=device)
    records = run.records
    path = Path(runs_dir) / f"{name}-s{seed}-{records['run_id'].iloc[0]}.csv"
    results.save(records, path)
    values = records.groupby("metric")["value"].last()
    recipe = recipes.get(name)
    return {"seed": seed, "metric": recipe.success.metric,
            "value": recipes.value_of(recipe, records),
            "criterion": recipe.success.text(), "strict": recipe.success.strict,
            "frames_to_success": float(values.get("frames_to_success", float("nan"))),
            "curve": recipe.success.curve is not None,
            "final_return": float(values.get("final_return", float("nan"))),
            "wall_time_s": float(values.get("wall_time_s", float("nan"))), "file": str(path)}


def run_recipe(name: str, *, seeds: int = 3, workers: int | None = None, device: str = "cpu",
               out_dir: str | Path = "results/learning") -> pd.DataFrame:
    """Train ``seeds`` runs of recipe ``name`` at its budget; one row per seed with its
    success criterion's ``metric`` and ``value`` (and ``final_return``)."""
    from harness import recipes

    target = recipes.learning_target(recipes.get(name))
    return _seeds(name, target, seeds, workers, out_dir,
                  lambda s, runs_dir: (_one_recipe_seed, name, s, runs_dir, device))


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
