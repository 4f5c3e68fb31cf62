"""``python -m harness`` / ``rlgauge``: the command line. The only module that prints or exits.

Subcommands::

    doctor      versions, torchrl extension, MuJoCo, envpool, GPUs: paste into bug reports
    list        registered algorithms, backends (with their tasks) and devices available here
    table DIR   a results directory (or file) as a table: markdown, csv or html
    train ALGO  train one reference algorithm on one backend/task/device, with a progress bar
    env B T     build one env, check its specs and time a random rollout
    asv-table   the latest asv results as a Markdown table
    build-ext   make torchrl's C++ extension load (rebuilds it against the installed torch)

Bad input (unknown subcommand or option, a path that is not a results file...) prints one line
naming the bad value and what is valid, and exits 2 before any work starts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import ResultsError, UsageError

PROG = "rlgauge"


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
    sub.add_parser("list", help="algorithms, backends, tasks and devices available here")

    t = sub.add_parser("table", help="show a results directory or file as a table")
    t.add_argument("path", type=Path, help="results directory (every *.csv results file below "
                                            "it) or one results file")
    t.add_argument("--format", choices=("markdown", "csv", "html"), default="markdown")
    t.add_argument("--out", type=Path, help="also write the table to this file (atomically)")

    b = sub.add_parser("build-ext", help="make torchrl's C++ extension load (prioritized replay "
                                         "buffers): rebuild it against the installed torch, "
                                         "cached per (torch, torchrl)")
    b.add_argument("--force", action="store_true", help="rebuild even if it loads")
    b.add_argument("--verbose", action="store_true", help="show the compiler commands")

    a = sub.add_parser("asv-table", help="latest asv results of a machine as a Markdown table")
    a.add_argument("results", nargs="?", type=Path, default=Path("results/asv"),
                   help="asv results directory (default: results/asv)")
    a.add_argument("--machine", help="asv machine name (default: every machine)")
    a.add_argument("--out", type=Path, help="also write the table to this file (atomically)")

    r = sub.add_parser("train", help="train one reference algorithm on one backend/task")
    r.add_argument("algorithm", help="reference implementation (see 'list'): ppo, dqn, ...")
    r.add_argument("--backend", default="gymnasium", help="env backend (default: gymnasium)")
    r.add_argument("--task", default="cartpole", help="task of that backend (default: cartpole)")
    r.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    r.add_argument("--frames", type=int, help="env frames to train for (default: the "
                                               "algorithm's budget for the task)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--num-envs", type=int, help="envs stepped as one batch (default: the "
                                                 "algorithm's)")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: comparable, reproducible timings)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a Config field, e.g. --set lr=3e-4 --set hidden=128,128")
    r.add_argument("--out", type=Path, default=Path("results/runs"),
                   help="directory for the run's results file (default: results/runs)")

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
    from harness import devices, registry

    registry.load_builtins()
    print("algorithms:")
    _print_entries(registry.ALGORITHMS)
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
    text = report.render(report.summary(frame), args.format)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        results.atomic_write_text(args.out, text + "\n")
    return 1 if errors else 0


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
    from harness import asv_results, results

    frame = asv_results.latest(asv_results.load(args.results, machine=args.machine))
    if frame.empty:
        raise UsageError(f"no asv results under {str(args.results)!r}"
                         + (f" for machine {args.machine!r}" if args.machine else ""))
    text = asv_results.markdown(frame)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = (f"# asv results: machine {', '.join(sorted(frame['machine'].unique()))}, "
                  f"commit {', '.join(sorted(frame['commit'].unique()))}\n\n")
        results.atomic_write_text(args.out, header + text + "\n")
    return 0


def cmd_train(args) -> int:
    from harness import results, training

    spec = training.resolve_run(args.algorithm, backend=args.backend, task=args.task,
                                device=args.device, frames=args.frames, seed=args.seed,
                                num_envs=args.num_envs, overrides=args.set)
    out = _writable_dir(args.out)
    module, config = spec
    if args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    from tqdm import tqdm


    label = f"{args.algorithm} {config.backend}/{config.task} {config.device} seed {config.seed}"
    with tqdm(total=config.frames, desc=label, unit="frame", unit_scale=True,
              dynamic_ncols=True, file=sys.stderr) as bar:
        def progress(done, total, info):
            bar.total = total
            bar.update(done - bar.n)
            ret = info.get("return")
            if ret is not None and ret == ret:
                bar.set_postfix_str(f"return {ret:.1f}")

        run = module.train(config, progress=progress)
    path = out / f"{args.algorithm}-{config.backend}-{config.task}-{config.device}-" \
                 f"s{config.seed}-{run.records['run_id'].iloc[0]}.csv"
    results.save(run.records, path)
    print(training.summary(run.records, config))
    print(f"results: {path}")
    return 0


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


COMMANDS = {"doctor": cmd_doctor, "list": cmd_list, "table": cmd_table,
            "build-ext": cmd_build_ext, "env": cmd_env, "asv-table": cmd_asv_table,
            "train": cmd_train}


def main(argv: Sequence[str] | None = None) -> int:
    import os

    # torchrl logs every buffer initialisation at INFO; read once, at torchrl's import
    os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ResultsError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
