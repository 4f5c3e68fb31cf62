"""One training run, resolved and finished in one place.

A ``RunSpec`` names a run: an algorithm (or a tutorial recipe, ``harness.recipes``) on a
backend/task/device with a seed, an optional budget and batch, Config overrides, whose
implementation runs it (``impl``: rlgauge's reference, or a peer such as ``sb3``,
``harness.peers``) and in which compile mode (``compile``: ``harness.training.COMPILE_MODES``;
``eager``, the only mode of a peer). Everything
that trains -- ``python -m harness train``, the matrix's cells (``harness.matrix``, local or
Ray), ``nox -s learning`` (through the matrix's executor) and the benchmarks -- goes through:

- ``resolve(spec) -> Resolved(module, config, finish)``: every input checked (UsageError, one line
  naming the bad value and the valid choices, before any work), the algorithm's Config built from
  its ``config_for(backend, task)`` preset, the recipe's settings, then the spec's overrides;
- ``Resolved.finish(records)``: the one place a run's records grow after training -- the
  recipe's name and success rows, ``peak_rss_mb`` (and ``cuda_peak_mb`` on a GPU), and, where the
  task has a solved return, ``threshold``, ``frames_to_threshold`` and ``time_to_threshold_s``.
  So ``train`` and ``run`` record the same metrics (``run`` adds its executor's
  ``worker_overhead_s``);
- ``train(spec, progress=None, threads=None)``: resolve, train, finish (``run`` for a run
  resolved already).

Overrides are typed end to end: a ``FIELD=VALUE`` string from the command line is parsed once,
at the boundary, against the Config field's type (``parse_overrides``); a recipe's and a
learning target's overrides are values already and are applied as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness import results
from harness.errors import UsageError

#: Config fields a run's overrides may not change (they are the spec's own axes), and the
#: option that sets each instead
_FIXED = {"backend": "--backend (train) / --backends (run)",
          "task": "--task (train) / --tasks (run)",
          "compile": "--compile MODE (train) / --compile MODES (run)"}


@dataclass(frozen=True)
class RunSpec:
    """One run: ``algorithm`` on ``backend``/``task`` on ``device`` with ``seed``.

    ``frames``/``num_envs`` None: the algorithm's own budget / batch for the task (its preset);
    ``overrides``: typed ``(field, value)`` pairs applied on top of the preset (a recipe's
    settings first). ``recipe``: the run is that recipe (``harness.recipes``;
    ``algorithm``/``backend``/``task`` are the recipe's, ``frames`` None is its budget); its
    results' ``algorithm`` column is the recipe's name. ``impl``: whose implementation
    (``harness.peers``); ``compile``: the compile mode (``check_compile``).
    """

    algorithm: str
    backend: str
    task: str
    device: str
    seed: int
    frames: int | None = None
    num_envs: int | None = None
    overrides: tuple[tuple[str, Any], ...] = ()
    recipe: str | None = None
    impl: str = "rlgauge"
    compile: str = "eager"

    @property
    def key(self) -> str:
        """File-name-safe identity of the run (the matrix resumes on it): ``ppo-...``,
        ``ppo@sb3-...`` for a peer's, ``ppo+compile-...`` / ``ppo+compile+cudagraphs-...`` for
        a compile mode (an eager run's key has no mode: results written before the compile
        axis still resume)."""
        name = self.recipe or self.algorithm
        if self.impl != "rlgauge":
            name = f"{name}@{self.impl}"
        if self.compile != "eager":
            name = f"{name}+{self.compile}"
        parts = [name, self.backend, self.task, self.device.replace(":", ""),
                 f"n{self.num_envs or 'D'}", f"f{self.frames or 'D'}", f"s{self.seed}"]
        if self.overrides:
            text = "\0".join(f"{k}={format_value(v)}" for k, v in self.overrides)
            parts.append(hashlib.sha1(text.encode()).hexdigest()[:8])
        return "-".join(parts)

    def label(self) -> str:
        name = f"{self.recipe} ({self.algorithm})" if self.recipe else self.algorithm
        tags = [t for t, plain in ((self.impl, "rlgauge"), (self.compile, "eager")) if t != plain]
        extra = f" [{', '.join(tags)}]" if tags else ""
        return (f"{name}{extra} {self.backend}/{self.task} {self.device} "
                f"n={self.num_envs or 'default'} seed {self.seed}")

    def context(self) -> dict:
        return dict(algorithm=self.recipe or self.algorithm, impl=self.impl,
                    compile=self.compile, backend=self.backend, task=self.task, device=self.device,
                    num_envs=self.num_envs, seed=self.seed)


def spec_for(*, algorithm: str | None = None, recipe: str | None = None,
             backend: str | None = None, task: str | None = None, device: str = "cpu",
             seed: int = 0, frames: int | None = None, num_envs: int | None = None,
             overrides: Mapping[str, Any] | Iterable[str] = (),
             impl: str = "rlgauge", compile: str = "eager") -> RunSpec:
    """A RunSpec from what a caller names: an algorithm (``backend``/``task`` default to
    gymnasium/cartpole) or a recipe (which fixes them); ``overrides`` as typed values or
    ``FIELD=VALUE`` strings (parsed here). UsageError for a bad name or value (``impl`` and
    ``compile`` are checked by ``resolve``)."""
    from harness import registry

    registry.load_builtins()
    if recipe is not None:
        if algorithm is not None or backend is not None or task is not None:
            raise UsageError(f"--recipe {recipe} fixes the algorithm, backend and task; give "
                             f"either --recipe or ALGORITHM [--backend B --task T]")
        r = _recipes().get(recipe)
        algorithm, backend, task = r.algorithm, r.backend, r.task
    elif algorithm is None:
        raise UsageError("train needs an ALGORITHM or --recipe NAME (see 'list')")
    registry.ALGORITHMS.get(algorithm)
    typed = parse_overrides(algorithm, overrides)
    return RunSpec(algorithm, backend or "gymnasium", task or "cartpole", device, seed, frames,
                   num_envs, tuple(typed.items()), recipe, impl, compile)


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Resolved:
    """A checked run: its algorithm module, its Config, and ``finish`` (records -> records)."""

    spec: RunSpec
    module: Any
    config: Any
    recipe: Any = None  # harness.recipes.Recipe, for recipe runs

    def finish(self, records: pd.DataFrame) -> pd.DataFrame:
        """The run's records with what every run records after training (module docstring)."""
        return finish(self, records)


def algorithm_module(name: str):
    """The reference implementation module registered as ``name`` (UsageError otherwise)."""
    import importlib

    from harness import registry

    registry.load_builtins()
    return importlib.import_module(registry.ALGORITHMS.get(name).value)


def check_fits(algorithm: str, backend: str, task: str) -> None:
    """UsageError, naming the tasks that fit, when ``algorithm`` cannot act in ``task``."""
    from harness import backends, registry

    registry.load_builtins()
    kinds = registry.ALGORITHMS.get(algorithm).meta["action_kinds"]
    kind = backends.get_task(backend, task).action_kind
    if kind not in kinds:
        fits = [f"{b}/{t}" for k in kinds for b, t in backends.tasks_for(k)]
        raise UsageError(f"{algorithm} needs {' or '.join(kinds)} actions, but {backend}/{task} "
                         f"has {kind} actions; tasks that fit {algorithm}: {', '.join(fits)}")


def check_compile(mode: str, impl: str = "rlgauge", device: str = "cpu") -> None:
    """``harness.training.check_compile`` (imported when called: torch comes with it)."""
    from harness.training import check_compile as check

    check(mode, impl, device)


def resolve(spec: RunSpec) -> Resolved:
    """Check every input of ``spec``, then build its Config (module docstring).

    UsageError (one line naming the bad value and the valid choices) for an unknown or
    unavailable algorithm, recipe, backend, task or device, a task whose actions do not fit the
    algorithm, a non-positive budget or batch, a negative seed, a compile mode the run cannot
    use (``check_compile``), or an override that is not a Config field or does not fit its
    type.
    """
    from harness import backends, registry
    from harness.devices import check_device

    registry.load_builtins()
    recipe = None
    if spec.recipe is not None:
        recipe = _recipes().get(spec.recipe)
        _recipes().RECIPES.require_available(spec.recipe)
    registry.ALGORITHMS.get(spec.algorithm)
    registry.ALGORITHMS.require_available(spec.algorithm)
    registry.BACKENDS.get(spec.backend)
    backends.get_task(spec.backend, spec.task)
    registry.BACKENDS.require_available(spec.backend)
    check_fits(spec.algorithm, spec.backend, spec.task)
    check_device(spec.device)
    from harness import peers

    peers.check(spec.impl, spec.algorithm, spec.backend)
    check_compile(spec.compile, spec.impl, spec.device)
    frames = recipe.frames if recipe is not None and spec.frames is None else spec.frames
    if frames is not None and frames < 1:
        raise UsageError(f"--frames must be a positive number of env frames, got {frames}")
    if spec.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {spec.seed}")
    if spec.num_envs is not None and spec.num_envs < 1:
        raise UsageError(f"--num-envs must be >= 1, got {spec.num_envs}")
    module = algorithm_module(spec.algorithm)
    changes: dict[str, Any] = dict(recipe.overrides) if recipe is not None else {}
    changes.update(parse_overrides(spec.algorithm, dict(spec.overrides)))
    changes.update(device=spec.device, seed=spec.seed, compile=spec.compile)
    if frames is not None:
        changes["frames"] = frames
    if spec.num_envs is not None:
        changes["num_envs"] = spec.num_envs
    config = module.config_for(spec.backend, spec.task, **changes)
    if spec.impl != "rlgauge":
        peers.check_config(spec.algorithm, config)
    return Resolved(spec, module, config, recipe)


def config_fields(algorithm: str) -> dict[str, dataclasses.Field]:
    """The Config fields of ``algorithm`` that overrides may set."""
    module = algorithm_module(algorithm)
    return {f.name: f for f in dataclasses.fields(module.Config) if f.name not in _FIXED}


def parse_overrides(algorithm: str,
                    overrides: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    """Overrides as typed Config values: ``FIELD=VALUE`` strings are parsed against the field's
    type (``true``/``false``, numbers, comma-separated tuples), values of a mapping are checked
    the same way. UsageError naming the bad item and the valid fields or the expected type."""
    fields = config_fields(algorithm)
    pairs = (overrides.items() if isinstance(overrides, Mapping)
             else (_split(item, algorithm, fields) for item in overrides))
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in _FIXED:
            raise UsageError(f"{name} is an axis of the run, not a Config override "
                             f"({name}={format_value(value)}): give it with {_FIXED[name]}")
        if name not in fields:
            raise UsageError(f"bad override {name}={format_value(value)!s} for {algorithm}: "
                             f"expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
        out[name] = parse_value(name, value, fields[name].default)
    return out


def _split(item: str, algorithm: str, fields) -> tuple[str, str]:
    name, sep, text = str(item).partition("=")
    if sep and name in _FIXED:
        return name, text  # parse_overrides names the option that sets it
    if not sep or name not in fields:
        raise UsageError(f"bad override {item!r} for {algorithm}: expected FIELD=VALUE with "
                         f"FIELD one of {', '.join(fields)}")
    return name, text


def parse_value(name: str, value, default):
    """``value`` (text, or already a value) as the type of the field's ``default``."""
    if not isinstance(value, str):
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        if default is not None and not isinstance(value, type(default)) and not (
                isinstance(default, float) and isinstance(value, int)
                and not isinstance(value, bool)):
            raise UsageError(f"bad value {value!r} for {name} (expected "
                             f"{type(default).__name__}, default {default!r})")
        return float(value) if isinstance(default, float) else value
    try:
        if isinstance(default, bool):
            if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
                raise ValueError
            return value.lower() in {"true", "1", "yes"}
        if isinstance(default, tuple):
            kind = type(default[0]) if default else int
            return tuple(kind(x) for x in value.split(",") if x)
        if default is None:
            return value
        return type(default)(value)
    except ValueError:
        raise UsageError(f"bad value {value!r} for {name} (expected "
                         f"{type(default).__name__}, default {default!r})") from None


def format_value(value) -> str:
    """A Config value as ``--set`` text: ``true``/``false``, comma-separated tuples."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return str(value)


# --------------------------------------------------------------------------- finishing


def finish(resolved: Resolved, records: pd.DataFrame) -> pd.DataFrame:
    """``records`` of the run plus what every run records after training (module
    docstring), in the run's own context."""
    import resource

    from harness import backends, devices

    records = records.copy()
    extra: list[dict] = []
    if resolved.recipe is not None:
        records["algorithm"] = resolved.recipe.name
        extra += _recipes().success_rows(resolved.recipe, records)
    extra.append({"metric": "peak_rss_mb", "unit": "MB",
                  "value": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    device = resolved.config.device
    if devices.is_cuda(device):
        import torch

        extra.append({"metric": "cuda_peak_mb", "unit": "MB",
                      "value": torch.cuda.max_memory_allocated(device) / 2**20})
    solved = backends.get_task(resolved.spec.backend, resolved.spec.task).solved
    if solved is not None:
        extra += threshold_rows(records, solved)
    return extend(records, extra)


def extend(records: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """``records`` plus ``rows`` (metric rows) in the context of the run ``records`` are of."""
    if not rows:
        return records
    first = records.iloc[0]
    context = {c: first[c] for c in ("run_id", "algorithm", "impl", "compile", "backend", "task",
                                     "device", "num_envs", "seed")}
    return pd.concat([records, results.make_records(rows, **context)], ignore_index=True)


def threshold_rows(records: pd.DataFrame, threshold: float) -> list[dict]:
    """``threshold`` (the task's solved return) and, when the training ``episode_return``
    curve reached it, the frames and seconds (``elapsed_s`` at that point) it took."""
    rows = [{"metric": "threshold", "value": threshold, "unit": "return"}]
    curve = records[records["metric"] == "episode_return"]
    hit = curve[curve["value"] >= threshold]
    if len(hit):
        frames = int(hit["frames"].iloc[0])
        elapsed = records[(records["metric"] == "elapsed_s") & (records["frames"] == frames)]
        rows.append({"metric": "frames_to_threshold", "value": frames, "unit": "frames"})
        if len(elapsed):
            rows.append({"metric": "time_to_threshold_s", "unit": "s",
                         "value": float(elapsed["value"].iloc[0])})
    return rows


# --------------------------------------------------------------------------- training


def train(spec: RunSpec, *, progress: Callable | None = None, threads: int | None = None):
    """Resolve, train and finish ``spec`` in this process: ``(Resolved, TrainResult)`` with
    the finished records."""
    resolved = resolve(spec)
    return resolved, run(resolved, progress=progress, threads=threads)


def run(resolved: Resolved, *, progress: Callable | None = None, threads: int | None = None):
    """Train a resolved run in this process and finish its records: its ``TrainResult``."""
    from harness import devices

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if devices.is_cuda(resolved.config.device):
        import torch

        torch.cuda.reset_peak_memory_stats(resolved.config.device)
    if resolved.spec.impl == "rlgauge":
        result = resolved.module.train(resolved.config, progress=progress)
    else:
        from harness import peers

        result = peers.train(resolved.spec.algorithm, resolved.config, progress=progress)
    return dataclasses.replace(result, records=resolved.finish(result.records))


def summary(records: pd.DataFrame, config) -> str:
    """The one-screen end-of-run report of ``python -m harness train``."""
    values = records.groupby("metric")["value"].last()

    def get(metric, fmt="{:.1f}"):
        return fmt.format(values[metric]) if metric in values else "n/a"

    split = {k: values.get(f"{k}_time_s", math.nan) for k in ("env", "policy", "update")}
    if math.isnan(split["env"]) and values.get("collect_fps", 0) > 0:
        # a peer: collection is timed as a whole (no env / policy split)
        split = {"collect": config.frames / values["collect_fps"], "update": split["update"]}
    total = sum(v for v in split.values() if v == v) or math.nan
    share = ", ".join(f"{k} {v:.1f} s ({v / total:.0%})" for k, v in split.items() if v == v)
    curve = records[records["metric"] == "episode_return"]
    last = curve["value"].tail(10).mean() if len(curve) else math.nan
    failed = records[records["status"] != "ok"]
    solved = (f"{get('time_to_threshold_s')} s ({get('frames_to_threshold', '{:,.0f}')} "
              f"frames) to the solved return {get('threshold', '{:g}')}"
              if "time_to_threshold_s" in values else
              f"not reached ({get('threshold', '{:g}')})" if "threshold" in values else "n/a")
    first = records.iloc[0]
    tags = [t for t, plain in ((first["impl"], "rlgauge"), (first["compile"], "eager"))
            if t != plain]
    extra = f" ({', '.join(tags)})" if tags else ""
    steady = (f", {get('steady_fps', '{:,.0f}')} steady (after the compiling warm-up)"
              if "steady_fps" in values and first["compile"] != "eager" else "")
    lines = [
        f"{first['algorithm']}{extra} on "
        f"{config.backend}/{config.task}, {config.device}, "
        f"{config.num_envs} env(s), seed {config.seed}",
        f"  frames          {int(curve['frames'].max()) if len(curve) else config.frames:,}",
        f"  final return    {get('final_return')} (deterministic policy)",
        f"  training return {last:.1f} (mean of the last 10 batches' episodes)",
        f"  solved          {solved}",
        f"  wall time       {get('wall_time_s')} s: {share}",
        f"  frames/s        {get('collect_fps', '{:,.0f}')} collecting, "
        f"{get('train_fps', '{:,.0f}')} overall{steady}",
        *([f"  compile time    {get('compile_time_s')} s (the warm-up calls that compile; "
           f"{first['compile']})"] if first["compile"] != "eager" else []),
        f"  peak memory     {get('peak_rss_mb', '{:,.0f}')} MB RSS"
        + (f", {get('cuda_peak_mb', '{:,.0f}')} MB on the GPU" if "cuda_peak_mb" in values
           else ""),
    ]
    if len(failed):
        lines.append(f"  PROBLEMS        {len(failed)} row(s): "
                     + "; ".join(sorted(set(failed['error'])))[:300])
    return "\n".join(lines)


def _recipes():
    from harness import recipes

    return recipes
