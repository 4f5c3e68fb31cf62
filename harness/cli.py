"""``python -m harness`` / ``rlgauge``: the command line. The only module that prints or exits.

Subcommands::

    doctor      versions, torchrl extension, MuJoCo, envpool, pixels, GPUs: for bug reports
    list        registered algorithms, recipes, backends (with their tasks) and devices here
    table DIR   a results directory (or file) as tables: markdown, csv or html (and with
                --report-dir, every format plus plots)
    train ALGO  train one reference algorithm on one backend/task/device, with a progress bar
                (``train --recipe NAME``: one of torchrl's tutorial pipelines, harness.recipes)
    run         a grid of training runs (algorithms x backends x tasks x devices x seeds, and
                ``--recipes``), each in its own worker process; resumable; ends with the report
    compare     two result sets side by side; exit 1 when a row is significantly worse
    gate ...    the regression gate (``python -m harness.gate``): ``gate regress BASE HEAD``,
                ``gate list``, baselines, its validity and noise studies
    env B T     build one env, check its specs and time a random rollout
    asv-table   the latest asv results as a Markdown table (× floor, cost and spread per module)
    build-ext   make torchrl's C++ extension load (rebuilds it against the installed torch)
    dashboard   asv's dashboard offline (harness.dashboard): ``dashboard localize HTML_DIR``
                points a published dashboard at vendored copies of its CDN assets,
                ``dashboard vendor`` refreshes them (network), ``dashboard screenshot HTML_DIR
                OUT.png`` photographs it in headless Chromium with other hosts blocked

Bad input (unknown subcommand or option, a path that is not a results file...) prints one line
naming the bad value and what is valid, and exits 2 before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness import atomic
from harness.errors import ResultsError, UsageError
from harness.progress import Progress

PROG = "rlgauge"
#: the compile modes as --help names them (harness.training.COMPILE_MODES; not imported here:
#: it would import torch for --help)
COMPILE_MODES_HELP = ("eager (default), compile (torch.compile of the update step and the "
                      "policy), compile+cudagraphs (CUDA devices only: tensordict's "
                      "CudaGraphModule)")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D102 -- argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="rlgauge: benchmark and test harness for RL on torchrl.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("doctor", help="environment report for bug reports; exit 1 if the default "
                                  "run cannot work here")
    sub.add_parser("list", help="algorithms, recipes, backends, tasks and devices available "
                                "here")

    t = sub.add_parser("table", help="show a results directory or file as a table")
    t.add_argument("path", type=Path, help="results directory (every *.csv results file below "
                                            "it) or one results file")
    t.add_argument("--format", choices=("markdown", "csv", "html"), default="markdown")
    t.add_argument("--out", type=Path, help="also write the table to this file (atomically)")
    t.add_argument("--report-dir", type=Path, help="also write report.md, report.csv, "
                                                   "report.html and plots/*.png there")

    m = sub.add_parser("run", help="run a grid of training runs (the matrix), each cell in its "
                                   "own process; re-running resumes")
    m.add_argument("--algorithms", default=None,
                   help="comma-separated algorithms, or 'all' (default: all, or none when "
                        "--recipes is given)")
    m.add_argument("--recipes", default=None,
                   help="comma-separated recipes (torchrl's tutorial pipelines, see 'list'): "
                        "one cell each per device x num_envs x seed, on the recipe's own "
                        "backend/task and budget (--backends/--tasks do not apply to them)")
    m.add_argument("--backends", default="gymnasium,dm_control",
                   help="comma-separated env backends (default: gymnasium,dm_control)")
    m.add_argument("--tasks", help="comma-separated tasks (default: each backend's default "
                                   "tasks that fit the algorithm; --quick: the first one)")
    m.add_argument("--devices", default="cpu",
                   help="comma-separated devices; 'all' = cpu and cuda, cells on an absent "
                        "device recorded as skipped (default: cpu)")
    m.add_argument("--num-envs", help="comma-separated env batch sizes (default: each "
                                      "algorithm's)")
    m.add_argument("--seeds", type=int, default=1, help="seeds per cell: 0..N-1 (default: 1)")
    m.add_argument("--frames", type=int, help="env frames per run (default: each algorithm's "
                                              "budget for the task; --quick: a few thousand)")
    m.add_argument("--quick", action="store_true",
                   help="small budgets and one task per backend: throughput and time split, "
                        "not learning")
    m.add_argument("--impls", default="rlgauge",
                   help="comma-separated implementations: rlgauge, sb3 (Stable-Baselines3 on "
                        "the same cells where it has the algorithm; default: rlgauge)")
    m.add_argument("--compile", default="eager", metavar="MODES",
                   help=f"comma-separated compile modes: {COMPILE_MODES_HELP}, or all (the "
                        "modes valid on --devices); cells a mode cannot run (compile+cudagraphs "
                        "on the CPU, any mode but eager for --impls sb3) are skipped with the "
                        "reason")
    m.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="Config override for every cell, e.g. --set lr=3e-4")
    m.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: forkserver worker processes (default); ray: Ray tasks on "
                        "the cluster at $RAY_ADDRESS, else on a local Ray (extra 'ray')")
    m.add_argument("--workers", type=int, help="cells run at once (default: cores / threads)")
    m.add_argument("--threads", type=int, default=1, help="torch threads per cell (default 1)")
    m.add_argument("--timeout", type=float, help="seconds per cell before it is killed and "
                                                 "recorded as timeout (default: 600 with "
                                                 "--quick, else 7200)")
    m.add_argument("--mem-limit-mb", type=float,
                   help="kill a cell whose resident memory exceeds this (default: the "
                        "machine's memory / workers; with --executor ray: none, and a "
                        "given cap is reserved from each node's Ray memory resource)")
    m.add_argument("--retry-failed", action="store_true",
                   help="also re-run cells recorded as failed or timed out")
    m.add_argument("--out", type=Path, default=Path("results/matrix"),
                   help="directory of the grid: cells/, logs/ and the report "
                        "(default: results/matrix)")
    m.add_argument("--report-dir", type=Path, help="where the report goes (default: --out)")
    m.add_argument("--no-report", action="store_true", help="skip the report at the end")

    c = sub.add_parser("compare", help="two result sets side by side, with ratios, intervals "
                                       "and verdicts; exit 1 on a significant regression")
    c.add_argument("base", type=Path, help="baseline results directory or file")
    c.add_argument("head", type=Path, help="results directory or file to judge")
    c.add_argument("--threshold", type=float, default=0.10,
                   help="relative change that counts as a regression when significant "
                        "(default: 0.10)")
    c.add_argument("--metrics", default="train_fps,collect_fps,final_return,time_to_threshold_s",
                   help="comma-separated metrics to compare")
    c.add_argument("--across-hardware", action="store_true",
                   help="also compare speeds and times of cells whose two sides ran on "
                        "different hardware (CPU model, GPU); by default they are not "
                        "compared, and a comparison with nothing else to compare is refused")
    c.add_argument("--out", type=Path, help="also write the table to this file (atomically)")

    b = sub.add_parser("build-ext", help="make torchrl's C++ extension load (prioritized replay "
                                         "buffers): rebuild it against the installed torch, "
                                         "cached per (torch, torchrl)")
    b.add_argument("--force", action="store_true", help="rebuild even if it loads")
    b.add_argument("--verbose", action="store_true", help="show the compiler commands")

    a = sub.add_parser("asv-table", help="latest asv results of a machine as a Markdown table, "
                       "with × floor and the run's cost and spread per module")
    a.add_argument("results", nargs="?", type=Path, default=Path("results/asv"),
                   help="asv results directory (default: results/asv)")
    a.add_argument("--machine", help="asv machine name (default: every machine)")
    a.add_argument("--out", type=Path, help="also write the table to this file (atomically)")
    a.add_argument("--components-out", type=Path,
                   help="also write the component x floor table to this file (atomically)")

    r = sub.add_parser("train", help="train one reference algorithm on one backend/task, or "
                                     "one recipe (--recipe)")
    r.add_argument("algorithm", nargs="?", help="reference implementation (see 'list'): ppo, "
                                                "dqn, ...")
    r.add_argument("--recipe", help="a recipe instead of an algorithm (see 'list'): torchrl's "
                                    "tutorial pipeline with its backend, task, settings and "
                                    "budget; reports its success criterion")
    r.add_argument("--backend", help="env backend (default: gymnasium)")
    r.add_argument("--task", help="task of that backend (default: cartpole)")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    r.add_argument("--frames", type=int, help="env frames to train for (default: the "
                                               "algorithm's budget for the task)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--num-envs", type=int, help="envs stepped as one batch (default: the "
                                                 "algorithm's)")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: comparable, reproducible timings)")
    r.add_argument("--impl", default="rlgauge",
                   help="whose implementation: rlgauge (default) or sb3 (Stable-Baselines3 / "
                        "sb3-contrib with the same settings; harness/peers.py)")
    r.add_argument("--compile", default="eager", metavar="MODE",
                   help=f"{COMPILE_MODES_HELP}; compile_time_s is recorded apart from "
                        "steady_fps; rlgauge's implementation only")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set lr=3e-4 --set hidden=128,128")
    r.add_argument("--out", type=Path, default=Path("results/runs"),
                   help="directory for the run's results file (default: results/runs)")

    d = sub.add_parser("dashboard", help="asv's dashboard offline: localize a published "
                                         "html_dir, refresh the vendored assets, screenshot it")
    dsub = d.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    dsub.required = True
    dsub.add_parser("vendor", help="re-download the vendored assets (npm; GitHub for "
                                   "stupidtable) and check each against the sha256 in "
                                   "harness/dashboard_assets/manifest.json (network)")
    lo = dsub.add_parser("localize", help="copy the vendored assets into HTML_DIR/vendor and "
                                          "point its pages' CDN URLs at them; fails naming "
                                          "any other URL they would load")
    lo.add_argument("html_dir", nargs="?", type=Path, default=Path("results/html"),
                    help="what `asv publish` wrote (default: results/html)")
    sh = dsub.add_parser("screenshot", help="PNG of a localized dashboard in headless chromium, "
                                            "served from 127.0.0.1 with every other host "
                                            "blocked")
    sh.add_argument("html_dir", type=Path, help="a localized html_dir")
    sh.add_argument("out", type=Path, help="the PNG to write (atomically)")
    sh.add_argument("--page", default="index.html",
                    help="page to show, with asv's #fragment for a view, e.g. "
                         "'index.html#bench_gae.GAE.time_gae' (default: index.html, the grid)")
    sh.add_argument("--window", default="1400x1000", help="WIDTHxHEIGHT (default: 1400x1000)")

    sub.add_parser("gate", add_help=False,
                   help="the regression gate (python -m harness.gate): regress two commits, "
                        "list its cases, save/compare baselines, its validity and noise studies; "
                        "'gate --help' for its subcommands")
    e = sub.add_parser("env", help="build one env, check its specs and time a random rollout")
    e.add_argument("backend", help="env backend (see 'list')")
    e.add_argument("task", help="task of that backend (see 'list')")
    e.add_argument("--device", default="cpu", help="device of the env's tensors (default: cpu)")
    e.add_argument("--num-envs", type=int, default=1, help="batched sub-envs (default: 1)")
    e.add_argument("--steps", type=int, default=200, help="random rollout length (default: 200)")
    e.add_argument("--seed", type=int, default=0, help="env and action seed (default: 0)")
    return p


# --------------------------------------------------------------------------- commands


def cmd_doctor(args) -> int:
    from harness import doctor


    rows = doctor.checks()
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "ok  " if r.ok else ("FAIL" if r.required else "warn")
        print(f"{mark} {r.name:<{width}}  {r.detail}")
    bad = [r for r in rows if r.required and not r.ok]
    if bad:
        print(f"\n{len(bad)} problem(s) stop the default run: "
              + "; ".join(f"{r.name}: {r.detail}" for r in bad))
        return 1
    print("\neverything the default run needs works here")
    return 0


def cmd_list(args) -> int:
    from harness import devices, recipes, registry

    registry.load_builtins()
    print("algorithms:")
    _print_entries(registry.ALGORITHMS)
    print("recipes:  (python -m harness train --recipe NAME)")
    _print_entries(recipes.RECIPES)
    print("backends:")
    _print_entries(registry.BACKENDS)
    print("devices:")
    print("  " + ", ".join(devices.available_devices()))
    return 0


def _print_entries(reg) -> None:
    if not len(reg):
        print("  (none registered yet)")
        return
    width = max(len(e.name) for e in reg)
    for e in reg:
        reason = reg.unavailable_reason(e.name)
        state = "available" if reason is None else f"UNAVAILABLE: {reason}"
        desc = f" -- {e.description}" if e.description else ""
        print(f"  {e.name:<{width}}  {state}{desc}")
        tasks = getattr(e.value, "tasks", None)
        if tasks:
            print(f"  {'':<{width}}  tasks: {', '.join(tasks)}")
        if hasattr(e.value, "success"):  # a recipe
            from harness import recipes

            print(f"  {'':<{width}}  {recipes.describe(e.value)}")


def cmd_table(args) -> int:
    from harness import report, results

    if not args.path.exists():
        raise UsageError(f"results path {str(args.path)!r} does not exist; give a results "
                         f"directory or a results .csv file")
    if args.path.is_file():
        frame, errors = results.load(args.path), []  # a bad file raises: one line, exit 2
    else:
        frame, errors = results.load_many(args.path)
    for err in errors:
        print(f"{PROG}: skipped {err}", file=sys.stderr)
    if frame.empty:
        if errors:  # nothing readable at all: that is the user's error
            raise UsageError(f"no readable results under {str(args.path)!r} ({len(errors)} bad "
                             f"file(s), listed above)")
        raise UsageError(f"no rlgauge results files under {str(args.path)!r}")
    text = _render_report(frame, args.format)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, text + "\n")
    if args.report_dir:
        written = report.write_report(frame, args.report_dir)
        print(f"report: {written['markdown']}, {written['csv'].name}, {written['html'].name}, "
              f"{len(written['plots'])} plot(s)", file=sys.stderr)
    return 1 if errors else 0


def _render_report(frame, fmt: str) -> str:
    """markdown: the report's pivots (throughput, time split, return, time to threshold,
    failures); csv: one row per cell (``report.cell_table``) or, for results without cells,
    the median summary; html: the self-contained page without plots."""
    from harness import report

    if fmt == "markdown":
        return report.markdown_report(frame)
    if fmt == "html":
        return report.html_report(frame, [])
    cells = report.cell_table(frame)
    return cells.to_csv(index=False) if len(cells) else report.render(report.summary(frame),
                                                                      "csv")


def cmd_build_ext(args) -> int:
    from harness import torchrl_ext

    try:
        print(torchrl_ext.ensure(force=args.force, verbose=args.verbose))
    except RuntimeError as exc:
        print(f"{PROG}: build-ext failed: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_env(args) -> int:
    import logging
    import time

    from harness import backends, registry
    from harness.devices import synchronize

    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    registry.load_builtins()
    env = backends.make_env(args.backend, args.task, device=args.device,
                            num_envs=args.num_envs, seed=args.seed)  # bad names: UsageError
    logging.getLogger("torchrl").setLevel(logging.WARNING)  # check_env_specs logs to stdout
    import torch
    from torchrl.envs.utils import check_env_specs

    spec = backends.get_task(args.backend, args.task)
    native = registry.BACKENDS.get(args.backend).value.device_native
    obs, act = env.observation_spec["observation"], env.action_spec
    print(f"env          {args.backend}/{args.task} ({spec.id}, {spec.action_kind} actions)")
    print(f"batch        {list(env.batch_size)} on {env.device} (simulator on "
          f"{env.device if native else 'cpu'})")
    print(f"observation  {str(obs.dtype).removeprefix('torch.')} {list(obs.shape)}")
    bounds = (f" in [{act.space.low.min().item():g}, {act.space.high.max().item():g}]"
              if hasattr(act.space, "low") else f" n={act.space.n}" if hasattr(act.space, "n")
              else "")
    print(f"action       {type(act).__name__} {str(act.dtype).removeprefix('torch.')} "
          f"{list(act.shape)}{bounds}")
    try:
        try:
            check_env_specs(env, seed=args.seed)
        except (AssertionError, RuntimeError, KeyError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"specs        FAILED check_env_specs: {msg}")
            return 1
        print("specs        check_env_specs ok")
        torch.manual_seed(args.seed)
        env.rollout(min(args.steps, 10), break_when_any_done=False)  # warm-up
        synchronize(env.device)
        start = time.perf_counter()
        data = env.rollout(args.steps, break_when_any_done=False)
        synchronize(env.device)
        elapsed = time.perf_counter() - start
    finally:
        env.close()
    frames = args.steps * env.batch_size.numel()
    ended = int(data["next", "done"].sum())
    print(f"rollout      {args.steps} steps x {env.batch_size.numel()} envs in {elapsed:.3f} s: "
          f"{frames / elapsed:,.0f} env-steps/s, {ended} episode(s) ended")
    return 0


def cmd_asv_table(args) -> int:
    from harness import asv_results

    frame = asv_results.latest(asv_results.load(args.results, machine=args.machine))
    if frame.empty:
        raise UsageError(f"no asv results under {str(args.results)!r}"
                         + (f" for machine {args.machine!r}" if args.machine else ""))
    text = asv_results.markdown(frame)
    cost = asv_results.cost_markdown(asv_results.suite_cost(args.results, machine=args.machine))
    if cost:
        text += ("\n\n## Cost and spread of this run\n\nSeconds asv recorded per module "
                 "(benchmarks and setup_cache; process start-up not included) and the "
                 "IQR/median spread of its time_* points.\n\n" + cost)
    print(text)
    header = (f"# asv results: machine {', '.join(sorted(frame['machine'].unique()))}, "
              f"commit {', '.join(sorted(frame['commit'].unique()))}\n\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, header + text + "\n")
    if args.components_out:
        args.components_out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.components_out, header + (
            asv_results.components_markdown(frame) or "(no rows with a floor)") + "\n")
    return 0


def cmd_train(args) -> int:
    from harness import recipes, results, runs

    spec = runs.spec_for(algorithm=args.algorithm, recipe=args.recipe, backend=args.backend,
                         task=args.task, device=args.device, seed=args.seed, frames=args.frames,
                         num_envs=args.num_envs, overrides=args.set, impl=args.impl,
                         compile=args.compile)
    resolved = runs.resolve(spec)
    config, recipe = resolved.config, resolved.recipe
    name = recipe.name if recipe is not None else spec.algorithm
    if spec.impl != "rlgauge":
        name = f"{name}@{spec.impl}"
    if spec.compile != "eager":
        name = f"{name}+{spec.compile}"
    out = _writable_dir(args.out)
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")

    label = f"{name} {config.backend}/{config.task} {config.device} seed {config.seed}"
    with Progress(config.frames, label, "frame") as bar:
        def progress(done, total, info):
            ret = info.get("return")
            bar.advance_to(done, total, f"return {ret:.1f}" if ret is not None and ret == ret
                           else "")

        records = runs.run(resolved, progress=progress, threads=args.threads).records
    path = out / f"{name}-{config.backend}-{config.task}-{config.device}-" \
                 f"s{config.seed}-{records['run_id'].iloc[0]}.csv"
    results.save(records, path)
    print(runs.summary(records, config))
    if recipe is not None:
        value = recipes.value_of(recipe, records)
        verdict = "met" if recipe.success.met(value) else "NOT met"
        first = records.loc[records["metric"] == "frames_to_success", "value"]
        when = f", first at {int(first.iloc[0]):,} frames" if len(first) else ""
        print(f"  success         {recipe.success.text()}: {value:g} -> {verdict}{when} "
              f"(trained {config.frames:,} frames; the recipe's budget is {recipe.frames:,})")
    print(f"results: {path}")
    return 0


def _csv(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def cmd_run(args) -> int:
    import os

    from harness import matrix, registry

    registry.load_builtins()
    os.environ.setdefault("MUJOCO_GL", "egl")  # inherited by the worker processes
    recipes = tuple(_csv(args.recipes))
    if args.recipes is not None and not recipes:
        raise UsageError("--recipes is empty; give at least one recipe (see 'list')")
    if args.algorithms is None:
        args.algorithms = "" if recipes else "all"
    algorithms = (registry.ALGORITHMS.available() if args.algorithms == "all"
                  else _csv(args.algorithms))
    try:
        num_envs = tuple(int(n) for n in _csv(args.num_envs)) or (None,)
    except ValueError:
        raise UsageError(f"--num-envs must be comma-separated integers, got "
                         f"{args.num_envs!r}") from None
    grid = matrix.Grid(algorithms=tuple(algorithms), backends=tuple(_csv(args.backends)),
                       devices=tuple(_csv(args.devices)),
                       tasks=tuple(_csv(args.tasks)) if args.tasks else None,
                       num_envs=num_envs, seeds=args.seeds, frames=args.frames,
                       quick=args.quick, overrides=tuple(args.set), recipes=recipes,
                       impls=tuple(_csv(args.impls)) or ("rlgauge",),
                       compile_modes=tuple(_csv(args.compile)))
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    workers = args.workers if args.workers is not None else matrix.default_workers(args.threads)
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    timeout = args.timeout if args.timeout is not None else (600.0 if args.quick else 7200.0)
    if timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {timeout:g}")
    # on Ray the default is no reservation: this machine's memory says nothing of the nodes'
    mem = args.mem_limit_mb if args.mem_limit_mb is not None else (
        None if args.executor == "ray" else _memory_mb() / workers)
    if mem is not None and mem <= 0:
        raise UsageError(f"--mem-limit-mb must be > 0, got {mem:g}")
    if args.executor == "ray":
        from harness import matrix_ray

        matrix_ray.check()  # no ray module, a bad or unreachable $RAY_ADDRESS: UsageError
    specs, skips = matrix.expand(grid)  # every bad name: UsageError before any work
    out = _writable_dir(args.out)
    if args.report_dir is not None:
        _writable_dir(args.report_dir)
    todo = matrix.pending(specs, out, retry_failed=args.retry_failed)
    where = ""
    if args.executor == "ray" and todo:
        # joins the cluster; nodes too small for --threads, or with other versions: UsageError
        session = matrix_ray.connect(args.threads, mem, local_cpus=workers * args.threads)
        workers = min(args.workers or session.slots, session.slots)
        where = f" on {session.describe()}"
    cap = f"{mem:,.0f} MB" if mem is not None else "no memory reservation"
    print(f"grid: {len(specs)} run(s) + {len(skips)} skipped combination(s); {len(todo)} to run"
          f", {len(specs) - len(todo)} already in {out}; {workers} worker(s){where}, "
          f"{timeout:g} s and {cap} per run", file=sys.stderr)
    outcome = _run_with_progress(args, specs, skips, out, workers, timeout, mem, len(todo))
    done = ", ".join(f"{n} {s}" for s, n in sorted(outcome.done.items())) or "nothing new"
    print(f"runs: {done}; {outcome.reused} reused; {outcome.skipped} skipped combination(s)",
          file=sys.stderr)
    if outcome.overheads:
        import statistics

        print(f"worker overhead per run: median {statistics.median(outcome.overheads):.3f} s "
              f"(launch to results received, minus the run's own work)", file=sys.stderr)
    for label, why in outcome.failures:
        print(f"  FAILED {label}: {why}", file=sys.stderr)
    for note in getattr(outcome, "notes", ()):  # the Ray executor: nodes used, lost, refused
        print(f"  {note}", file=sys.stderr)
    if outcome.interrupted:
        print(f"{PROG}: interrupted; finished runs are kept in {out}: re-run the same command "
              f"to run the rest", file=sys.stderr)
        return 130
    if not args.no_report:
        cmd_table(argparse.Namespace(path=out / "cells", format="markdown", out=None,
                                     report_dir=args.report_dir or out))
    return 0


def _run_with_progress(args, specs, skips, out, workers, timeout, mem, total: int):
    from harness import matrix

    if args.executor == "ray":
        from harness import matrix_ray as runner
    else:
        runner = matrix
    current: dict[str, str] = {}
    with Progress(total, "runs", "run", every_item=True) as bar:
        def progress(event, spec, finished, total):
            if spec is None:
                bar.note("starting workers (importing torchrl once)")
                return
            if event == "start":
                current[spec.key] = spec.label()
            else:
                current.pop(spec.key, None)
                bar.advance_to(bar.n + 1, note=f"{event}: {spec.label()}")
                if event != "ok":
                    bar.write(f"{event}: {spec.label()}")
            bar.note(" | ".join(current.values())[:120])

        return runner.run_grid(specs, skips, out, workers=workers, timeout_s=timeout,
                               mem_limit_mb=mem, threads=args.threads,
                               retry_failed=args.retry_failed, progress=progress)


def _memory_mb() -> float:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def cmd_compare(args) -> int:
    from harness import report, results

    for path in (args.base, args.head):
        if not path.exists():
            raise UsageError(f"results path {str(path)!r} does not exist")
    if not 0 < args.threshold < 10:
        raise UsageError(f"--threshold must be a fraction such as 0.10, got {args.threshold}")
    metrics = tuple(_csv(args.metrics))
    known = set(report.COMPARABLE)
    for m in metrics:
        if m not in known:
            raise UsageError(f"unknown metric {m!r}; valid: {', '.join(sorted(known))}")
    frames = []
    for path in (args.base, args.head):
        frame, errors = results.load_many(path)
        if errors:
            raise errors[0]
        if frame.empty:
            raise UsageError(f"no rlgauge results under {str(path)!r}")
        frames.append(frame)
    table = report.compare(*frames, threshold=args.threshold, metrics=metrics,
                           across_hardware=args.across_hardware)
    if table.empty:
        raise UsageError(f"{args.base} and {args.head} share no cell with the metrics "
                         f"{', '.join(metrics)}")
    if table["verdict"].str.startswith("not compared").all():
        raise UsageError(f"{args.base} and {args.head} ran on different hardware "
                         f"({'; '.join(sorted(set(table['hardware_base'])))} vs "
                         f"{'; '.join(sorted(set(table['hardware_head'])))}): a ratio of their "
                         f"{', '.join(sorted(set(table['metric'])))} would measure the machines; "
                         f"pass --across-hardware to compare them anyway")
    text = report.compare_markdown(table, args.threshold)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.out, text + "\n")
    return 1 if table["regression"].any() else 0


def _writable_dir(path: Path) -> Path:
    """``path`` as an existing writable directory (created), or UsageError before any work."""
    import os

    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {str(path)!r} cannot be created: {exc.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK):
        raise UsageError(f"--out {str(path)!r} is not a writable directory")
    return path


def cmd_dashboard(args) -> int:
    from harness import dashboard

    if args.action == "vendor":
        written = dashboard.vendor()
        print(f"{len(written)} files downloaded to {dashboard.ASSETS}, each matching its sha256 "
              "in manifest.json (pinned there now where it had none)")
    elif args.action == "localize":
        done = dashboard.localize(args.html_dir)
        print(f"{args.html_dir}: {len(done['pages'])} page(s) pointed at "
              f"{args.html_dir / dashboard.VENDOR_DIR}, {len(done['assets'])} asset(s) copied; "
              "it loads nothing from the network")
    else:
        width, _, height = args.window.partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise UsageError(f"--window must be WIDTHxHEIGHT in pixels, e.g. 1400x1000, got "
                             f"{args.window!r}")
        print(dashboard.screenshot(args.html_dir, args.out, page=args.page,
                                   window=(int(width), int(height))))
    return 0


COMMANDS = {"doctor": cmd_doctor, "list": cmd_list, "table": cmd_table,
            "build-ext": cmd_build_ext, "env": cmd_env, "asv-table": cmd_asv_table,
            "train": cmd_train, "run": cmd_run, "compare": cmd_compare,
            "dashboard": cmd_dashboard}


def main(argv: Sequence[str] | None = None) -> int:
    import os

    # torchrl logs every buffer initialisation at INFO; read once, at torchrl's import
    os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["gate"]:  # the gate has its own command line (harness.gate.cli)
        from harness.gate import cli as gate_cli

        return gate_cli.main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ResultsError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
