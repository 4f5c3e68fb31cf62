"""``python -m harness.gate``: the gate's command line (``main(argv) -> int``).

Subcommands: ``regress`` (BASE vs HEAD, HEAD against a stored baseline, or ``--history N``:
each of the last N commits of main against its parent, ``harness.gate.history``), ``validity``
(A/A false alarms and injected slowdowns), ``noise`` (which noise controls help), ``versions``
(one checkout under two interpreters) and ``list`` (the cases a selection resolves to, with
their families). Exit codes: 0 fine, 1 a regression (``--history``: a commit with a slowdown
step), 2 bad input or a benchmark HEAD could not run (one line naming it), 3 a worker failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from harness import atomic
from harness.errors import UsageError
from harness.gate import history
from harness.gate.baseline import (
    baseline_rows,
    check_baseline_hardware,
    compare_baseline,
    cpu_model,
    load_baseline,
    save_baseline,
)
from harness.gate.cases import (
    DEFAULT_CLOCK,
    DEFAULT_CONFIDENCE,
    DEFAULT_INTERLEAVE,
    DEFAULT_NORMALISE,
    DEFAULT_RESTART_EVERY,
    DEFAULT_ROUNDS,
    DEFAULT_STAT,
    DEFAULT_THRESHOLD,
    GATE_CASES,
    INJECT_ENV,
    NOT_GATED,
    ROOT,
    VALIDITY_CASES,
    VERSION_CASES,
    Settings,
    case_family,
)
from harness.gate.compare import REGRESSION, Method, compare, gate_exit_code, markdown
from harness.gate.noise import NOISE_SIDES, noise_report
from harness.gate.runner import (
    INTERLEAVE,
    INTERLEAVE_WORDS,
    WORKER_PY,
    WORKTREE,
    Run,
    Side,
    check_restart_every,
    default_base,
    export_tree,
    resolve,
    run,
)
from harness.gate.stats import STATS
from harness.gate.validity import VALIDITY_SIZES, validity_report, validity_sides
from harness.provenance import machine_name

DESCRIPTION = ("CI regression gate: BASE and HEAD measured in one job, interleaved, with error "
               "rates measured.")


def _short(sha: str) -> str:
    return "working tree" if sha == WORKTREE else sha[:10]


def _say(msg: str) -> None:
    print(f"[gate] {msg}", file=sys.stderr, flush=True)


def _settings(args) -> Settings:
    return Settings(budget_s=args.budget)


def _selection(args, default: Sequence[str] = GATE_CASES) -> dict:
    return {"regex": args.bench} if args.bench else {"cases": default}


def _emit(text: str, out: Path | None) -> None:
    print(text)
    if out:
        atomic.write_text(out, text)
        _say(f"written: {out}")


def cmd_regress(args) -> int:
    """Measure BASE and HEAD interleaved (or HEAD against the stored baseline, or the step
    history: ``cmd_history``)."""
    if args.history is not None:
        return cmd_history(args)
    machine = args.machine or machine_name()
    baseline_path = args.baseline or ROOT / "results" / "baseline" / f"{machine}.csv"
    revs = list(args.revs)
    single = args.save_baseline or args.against_baseline
    if single and len(revs) > 1:
        raise ValueError("--save-baseline/--against-baseline measure one revision; got "
                         f"{len(revs)}: {' '.join(revs)}")
    if len(revs) > 2:
        raise ValueError(f"at most BASE and HEAD; got {len(revs)} revisions: {' '.join(revs)}")
    baseline = load_baseline(baseline_path) if args.against_baseline else None
    hardware = (check_baseline_hardware(baseline, baseline_path, cpu_model())
                if baseline is not None else "")
    method = Method(args.clock, args.stat, args.normalise)
    workdir = Path(tempfile.mkdtemp(prefix="rlgauge-gate-"))
    try:
        if single:
            head = resolve(revs[0] if revs else "HEAD")
            sides = [Side("head", export_tree(head, workdir / "head"), label=_short(head),
                          settings=_settings(args))]
        else:
            head_rev = revs[1] if len(revs) == 2 else "HEAD"
            head = resolve(head_rev)
            if revs:
                base, why = resolve(revs[0]), "given"
            else:
                base, why = default_base(head_rev)
            _say(f"BASE {_short(base)} ({why}), HEAD {_short(head)} ({head_rev})")
            sides = [Side("base", export_tree(base, workdir / "base"), label=_short(base),
                          settings=_settings(args)),
                     Side("head", export_tree(head, workdir / "head"), label=_short(head),
                          settings=_settings(args))]
        result = run(sides, **_selection(args), rounds=args.rounds,
                     restart_every=args.restart_every, interleave=args.interleave,
                     progress=_say, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.raw:
        result.save(args.raw)
    if not args.bench:  # a renamed benchmark must not drop out of the gate unnoticed
        info = result.info["head"]
        seen = set(info["cases"]) | set(info["skipped"]) | set(info["errors"])
        for cid in sorted(set(GATE_CASES) - seen):
            _say(f"warning: gate case not found in {_short(head)}: {cid}")
    minutes = f"{result.seconds / 60:.1f} min"
    if args.save_baseline:
        commit = head if head != WORKTREE else resolve("HEAD") + "+dirty"  # uncommitted edits
        rows = baseline_rows(result, "head", commit)
        save_baseline(rows, baseline_path)
        _emit(f"baseline of {_short(head)} on `{machine}`: {len(rows)} benchmarks, "
              f"{args.rounds} rounds, {minutes} -> {baseline_path}", None)
        return 0
    if baseline is not None:
        rows = compare_baseline(result, "head", baseline, threshold=args.threshold,
                                confidence=args.confidence)
        commits = sorted({r["commit"][:10] for r in baseline})
        title = (f"## Regression gate: {_short(head)} against the stored baseline "
                 f"({', '.join(commits)}, {baseline_path.name})\n\n{args.rounds} rounds, "
                 f"calibration-normalised, Welch {args.confidence:.0%} interval, threshold "
                 f"{args.threshold:.0%}; {minutes}. A stored baseline was measured on another "
                 f"day: advisory; the same-job A/B run is the gate. {hardware}")
        _emit(markdown(rows, title=title, confidence=args.confidence, base_label="baseline",
                       head_label=_short(head)), args.out)
        return gate_exit_code(rows)
    rows = compare(result, "base", "head", threshold=args.threshold,
                   confidence=args.confidence, **method.kw(),
                   not_gated=None if args.bench else NOT_GATED)
    restarts = (f"fresh servers every {args.restart_every} rounds"
                if args.restart_every and args.restart_every < args.rounds else "one server a side")
    title = (f"## Regression gate: {_short(base)} → {_short(head)}\n\n{args.rounds} rounds "
             f"{INTERLEAVE_WORDS[result.interleave]} ({restarts}), round value {method}, "
             f"Hodges-Lehmann "
             f"{args.confidence:.0%} interval, fails on a significant slowdown > "
             f"{args.threshold:.0%}; {minutes}.")
    _emit(markdown(rows, title=title, confidence=args.confidence, base_label=_short(base),
                   head_label=_short(head)), args.out)
    failed = [r.case for r in rows if r.verdict == REGRESSION]
    if failed:
        _say(f"REGRESSION in {len(failed)} benchmark(s): {'; '.join(failed)}")
    return gate_exit_code(rows)


def cmd_history(args) -> int:
    """Each of the last N commits of main (first-parent) against its parent, stored pairs
    reused; the table of steps and the line naming the commits (``harness.gate.history``)."""
    revs = list(args.revs)
    if len(revs) > 1:
        raise UsageError(f"--history takes one REV, the newest commit (default: main); got "
                         f"{len(revs)}: {' '.join(revs)}")
    if args.save_baseline or args.against_baseline:
        raise UsageError("--history compares each commit with its parent; it does not take "
                         "--save-baseline or --against-baseline")
    if args.raw:
        raise UsageError(f"--raw: --history keeps every pair's run file under "
                         f"{history.STORE.relative_to(ROOT)}/")
    result = history.history(
        args.history, tip=revs[0] if revs else None, **_selection(args),
        settings=_settings(args), rounds=args.rounds, restart_every=args.restart_every,
        interleave=args.interleave, machine=args.machine,
        method=Method(args.clock, args.stat, args.normalise), threshold=args.threshold,
        confidence=args.confidence, progress=_say)
    _emit(result.markdown(), args.out)
    return result.exit_code()


def _command(part: str, argv: Sequence[str]) -> str:
    """The nox command that reproduces a run (file arguments left out)."""
    keep, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in {"--raw", "--out", "--from"}:
            skip = True
        elif not arg.startswith(("--raw=", "--out=", "--from=")):
            keep.append(arg)
    return f"nox -s gate_validity -- {' '.join([part, *keep])}"


def _raw_path(args, part: str) -> Path:
    """--raw, or a file under the rlgauge cache (re-analyse it with --from)."""
    if args.raw:
        return args.raw
    root = Path(os.environ.get("RLGAUGE_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlgauge")
    return root / "gate" / f"{part}-{machine_name()}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def _measured(args, part: str, measure) -> Run:
    """The Run to analyse: loaded from ``--from``, else ``measure(tree, tmpdir)`` on an export
    of the working tree, saved to ``_raw_path`` so that it can be re-analysed."""
    if args.from_raw:
        return Run.load(args.from_raw)
    with tempfile.TemporaryDirectory(prefix="rlgauge-gate-") as tmp:
        result = measure(export_tree(WORKTREE, Path(tmp) / "tree"), Path(tmp))
    raw = _raw_path(args, part)
    result.save(raw)
    _say(f"measurements: {raw} (re-analyse: python -m harness.gate {part} --from it)")
    return result


def cmd_validity(args) -> int:
    """A/A false alarms and detection of injected slowdowns."""
    sizes = tuple(float(s) for s in args.sizes.split(","))
    command = _command("validity", args.argv)
    result = _measured(args, "validity", lambda tree, tmp: run(
        validity_sides(tree, sizes, settings=_settings(args)),
        **_selection(args, VALIDITY_CASES), rounds=args.blocks * args.rounds,
        block=args.rounds, restart_every=args.restart_every, interleave=args.interleave,
        progress=_say, workdir=tmp))
    text, chosen, met = validity_report(result, block=args.rounds, sizes=sizes,
                                        resamples=args.resamples, command=command)
    out = args.out or ROOT / "results" / "gate" / f"validity-{machine_name()}.md"
    _emit(text, out)
    method, conf, thr = chosen
    _say(f"chosen: {method}, {conf:.0%}, threshold {thr:.1%}; goals {'met' if met else 'NOT met'}")
    return 0


def cmd_noise(args) -> int:
    """Which noise controls reduce the spread."""
    command = _command("noise", args.argv)
    result = _measured(args, "noise", lambda tree, tmp: run(
        [Side(n, tree, settings=Settings(threads=s.threads, cpu=s.cpu, budget_s=args.budget))
         for n, s in NOISE_SIDES],
        **_selection(args), rounds=args.rounds, restart_every=args.restart_every,
        interleave=args.interleave, progress=_say, workdir=tmp))
    out = args.out or ROOT / "results" / "gate" / f"noise-{machine_name()}.md"
    _emit(noise_report(result, command=command), out)
    return 0


def cmd_versions(args) -> int:
    """torchrl builds side by side (``harness.sides``: releases, nightly, checkouts, wheels,
    interpreters), each in its own cached environment: refused in one line (exit 2) before any
    timing when a side cannot be built or imported here; learning-checked; then timed
    interleaved, each against the first; the report (``harness.gate.versions``) with the API
    differences ``harness.compat`` absorbed and a reproduction per REGRESSION."""
    import shlex

    from harness import compat, sides
    from harness.gate import versions as vreport

    texts = list(args.sides) or list(sides.DEFAULT_SIDES)
    selection = _selection(args, vreport.selection(GATE_CASES, VERSION_CASES))
    builds = sides.prepare(texts, envs_dir=args.envs or sides.ENVS_DIR, rebuild=args.rebuild,
                           progress=_say)
    command = "nox -s versions -- " + " ".join(shlex.quote(a) for a in args.argv)
    with tempfile.TemporaryDirectory(prefix="rlgauge-versions-") as tmp:
        tmp = Path(tmp)
        logs = {b.name: tmp / f"compat-{i}.jsonl" for i, b in enumerate(builds)}
        learning = (sides.learning_check(builds, tmp / "learning", compat_logs=logs,
                                         progress=_say) if args.learning else None)
        tree = export_tree(WORKTREE, tmp / "tree")
        gate_sides = [Side(b.name, tree, python=b.python, compat=True, label=b.name,
                           settings=_settings(args), env={compat.LOG_ENV: str(logs[b.name])})
                      for b in builds]
        result = run(gate_sides, **selection, rounds=args.rounds,
                     restart_every=args.restart_every, interleave=args.interleave,
                     progress=_say, workdir=tmp / "gate")
        adaptations = {b.name: vreport.merge_adaptations(b.adaptations,
                                                         compat.read_log(logs[b.name]))
                       for b in builds}
    if args.raw:
        result.save(args.raw)
    base = builds[0]
    comparisons = [(base, b, vreport.mark_broken(
        compare(result, base.name, b.name, threshold=args.threshold,
                confidence=args.confidence, not_gated=None if args.bench else NOT_GATED),
        base.name, b.name, learning))
        for b in builds[1:]]
    text = vreport.report(builds=builds, run_=result, comparisons=comparisons,
                          learning=learning, adaptations=adaptations, side_texts=texts,
                          command=command, rounds=args.rounds, confidence=args.confidence,
                          threshold=args.threshold, method=str(Method()))
    out = args.out or ROOT / "results" / "gate" / f"versions-{machine_name()}.md"
    _emit(text, out)
    regressions = [f"{r.case} ({b.name})" for _, b, rows in comparisons for r in rows
                   if r.verdict.startswith(REGRESSION)]
    broken = [n for n, res in (learning or {}).items() if res.broken]
    if regressions:
        _say(f"REGRESSION in {len(regressions)} benchmark(s): {'; '.join(regressions)}")
    if broken:
        _say(f"learning BROKEN: {', '.join(broken)}")
    return 1 if args.fail_on_regression and (regressions or broken) else 0


def list_cases(rev: str = WORKTREE, cases: Sequence[str] = GATE_CASES,
               regex: str | None = None) -> tuple[list[str], dict[str, str]]:
    """(case ids, {module: import error}) of a selection in checkout ``rev``: the worker's own
    discovery (``worker.discover``), run in a fresh interpreter on an export of ``rev``."""
    rev = resolve(rev)
    with tempfile.TemporaryDirectory(prefix="rlgauge-gate-list-") as tmp:
        tree = export_tree(rev, Path(tmp) / "tree")
        code = ("import json, sys; sys.path.insert(0, sys.argv[1]); "
                "import importlib.util as u; s = u.spec_from_file_location('_g', sys.argv[2]); "
                "m = u.module_from_spec(s); sys.modules['_g'] = m; s.loader.exec_module(m); "
                "cases, err = m.discover(__import__('pathlib').Path(sys.argv[1]), "
                "m.selector(json.loads(sys.argv[3]), sys.argv[4] or None)); "
                "print(json.dumps({'cases': [c.id for c in cases], 'errors': err}))")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        env.pop(INJECT_ENV, None)
        proc = subprocess.run([sys.executable, "-c", code, str(tree), str(WORKER_PY),
                               json.dumps(list(cases)), regex or ""],
                              capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1])
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return found["cases"], found["errors"]


def cmd_list(args) -> int:
    """The cases a selection resolves to in a checkout (imported in a fresh interpreter), one
    line each: the case's family (``cases.case_family``), then its id; the default selection
    in GATE_CASES' order."""
    rev = resolve(args.rev)
    found, errors = list_cases(rev, GATE_CASES, args.bench)
    if not args.bench:
        order = {cid: i for i, cid in enumerate(GATE_CASES)}
        found = sorted(found, key=order.__getitem__)
        for cid in GATE_CASES:
            if cid not in found:
                print(f"# not found in {_short(rev)}: {cid}", file=sys.stderr)
    width = max((len(case_family(c)) for c in found), default=0)
    for cid in found:
        print(f"{case_family(cid):<{width}}  {cid}")
    for module, err in errors.items():
        print(f"# {module}: {err}", file=sys.stderr)
    modules = sorted({c.split(".", 1)[0] for c in found})
    _say(f"{len(found)} case(s) in {_short(rev)}, from {len(modules)} module(s): "
         f"{', '.join(modules)}")
    return 0


def _parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.gate", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, rounds: int):
        sp.add_argument("-b", "--bench", metavar="REGEX",
                        help="cases whose id matches (re.search), e.g. 'GAE|Sample'; default: "
                             "the gate subset (GATE_CASES)")
        sp.add_argument("--rounds", type=int, default=rounds, help=f"default {rounds}")
        sp.add_argument("--restart-every", type=int, default=DEFAULT_RESTART_EVERY, metavar="N",
                        help="fresh worker processes every N rounds (each process can carry "
                             "an offset of its own; 0: one process per side for the whole "
                             "run; default %(default)s)")
        sp.add_argument("--interleave", choices=INTERLEAVE, default=DEFAULT_INTERLEAVE,
                        help="within a round, the sides take turns sample by sample, case by "
                             "case, or round by round (default %(default)s)")
        sp.add_argument("--budget", type=float, default=Settings.budget_s,
                        help="seconds of samples per case and round (default %(default)s)")
        sp.add_argument("--raw", type=Path, help="also save every measurement (JSON)")
        sp.add_argument("--out", type=Path, help="also write the Markdown report here")

    r = sub.add_parser("regress", help="BASE vs HEAD, interleaved; exit 1 on a regression")
    r.add_argument("revs", nargs="*", metavar="REV",
                   help="[BASE] [HEAD] (default: merge base with main, HEAD); '.' = the "
                        "working tree with uncommitted changes; with --history: [TIP], the "
                        "newest commit (default: main)")
    common(r, DEFAULT_ROUNDS)
    r.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    r.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    r.add_argument("--clock", choices=("cpu", "wall"), default=DEFAULT_CLOCK)
    r.add_argument("--stat", choices=tuple(STATS), default=DEFAULT_STAT)
    r.add_argument("--normalise", action=argparse.BooleanOptionalAction,
                   default=DEFAULT_NORMALISE, help="divide by the same-round calibration")
    r.add_argument("--save-baseline", action="store_true",
                   help="measure REV (default HEAD) and write results/baseline/<machine>.csv")
    r.add_argument("--against-baseline", action="store_true",
                   help="measure REV (default HEAD) and compare it with the stored baseline")
    r.add_argument("--baseline", type=Path, help="baseline CSV (default: "
                                                 "results/baseline/<machine>.csv)")
    r.add_argument("--machine", help="machine name (default: $RLGAUGE_MACHINE or hostname)")
    r.add_argument("--history", type=int, metavar="N",
                   help="step history: each of the last N commits of main (first-parent; REV: "
                        "another newest commit) against its parent, interleaved per pair; "
                        "names the commits with a significant change beyond the threshold "
                        "(exit 1 if one is a slowdown). Each pair's rounds are kept under "
                        "results/gate/history/<machine>/<commit>/<settings>/; a rerun measures "
                        "only what is not stored")

    v = sub.add_parser("validity", help="A/A false alarms and injected-slowdown detection")
    common(v, DEFAULT_ROUNDS)
    v.add_argument("--blocks", type=int, default=6, help="independent gate runs (default 6)")
    v.add_argument("--sizes", default=",".join(str(s) for s in VALIDITY_SIZES))
    v.add_argument("--resamples", type=int, default=2000)
    v.add_argument("--from", dest="from_raw", type=Path, help="re-analyse a --raw file")

    n = sub.add_parser("noise", help="which noise controls reduce the spread")
    common(n, 30)
    n.add_argument("--from", dest="from_raw", type=Path, help="re-analyse a --raw file")

    from harness.gate.versions import HELP as VERSIONS_HELP

    vs = sub.add_parser("versions", help="torchrl builds side by side: releases, nightly, "
                        "source checkouts, wheels", description=VERSIONS_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    vs.add_argument("sides", nargs="*", metavar="SIDE",
                    help="a torchrl build (forms above); the first is the baseline (default: "
                         "torchrl==0.13.3 torchrl==0.14.1)")
    common(vs, DEFAULT_ROUNDS)
    vs.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    vs.add_argument("--confidence", type=float, default=DEFAULT_CONFIDENCE)
    vs.add_argument("--learning", action=argparse.BooleanOptionalAction, default=True,
                    help="the learning check on every side before timing (default: on)")
    vs.add_argument("--envs", type=Path, metavar="DIR",
                    help="where the side environments are cached (default: "
                         ".nox/versions-sides/)")
    vs.add_argument("--rebuild", action="store_true",
                    help="rebuild every side's environment even when its cached one matches")
    vs.add_argument("--fail-on-regression", action="store_true",
                    help="exit 1 when a comparison has a REGRESSION or a side's learning "
                         "broke (default: exit 0 once the report is written)")

    ls = sub.add_parser("list", help="the cases a selection resolves to, with their family")
    ls.add_argument("rev", nargs="?", default=WORKTREE)
    ls.add_argument("-b", "--bench", metavar="REGEX")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    args.argv = argv[1:]
    commands = {"regress": cmd_regress, "validity": cmd_validity, "noise": cmd_noise,
                "versions": cmd_versions, "list": cmd_list}
    try:
        check_restart_every(getattr(args, "restart_every", None))  # before any work
        return commands[args.command](args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
