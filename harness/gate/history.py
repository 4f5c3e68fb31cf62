"""Step history: the gate over the last N commits of main, each commit against its parent.

    nox -s regress -- --history N [TIP]      python -m harness.gate regress --history N [TIP]

The commits are TIP's first-parent chain (TIP: ``main``, else the first of ``origin/main``,
``master``, ``origin/master``), newest first. Each is measured against its first parent as
``regress`` measures BASE and HEAD (one server per side, interleaved rounds, the default
selection or ``-b REGEX``), and the table names every (commit, case) whose verdict is a step:
``REGRESSION`` or ``improved`` (beyond the threshold and significant). Exit 1 when a step is a
slowdown, else 0; bad input (N < 1, N beyond the history, a shallow clone without the commits)
is one line and exit 2 before anything is measured.

Measurements are kept. Each pair's raw rounds are a run file (``runner.Run``, ``RUN_FORMAT``,
as ``regress --raw`` writes; both side dicts also carry ``commit`` and ``history``: machine,
settings key, requested selection) under

    results/gate/history/<machine>/<commit sha>/<settings key>/<time>-<selection hash>.json

with ``settings.json`` beside naming what the key hashes (``settings_key``): the worker's
``Settings``, the rounds, Python and the torch/torchrl/tensordict versions, and the gate's
measuring code (``worker.py``, ``timing.py``). A rerun measures only what is not stored for
(commit, case, machine, settings): pairs not yet measured, or the cases a new selection adds
(a ``-b REGEX`` selection is stored as such: a rerun with the same regex reuses it). Verdicts
are recomputed from the stored rounds on every run (threshold, confidence and round value are
analysis choices, not part of the key). Delete a commit's directory to measure it again.

Many tests: N commits x C cases, each at the gate's per-case A/A false-alarm rate (0.1-0.2%
at the defaults, README), so a long history of a large selection can show a step that is
noise; confirm a named commit with ``nox -s regress -- PARENT COMMIT``.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from harness import atomic
from harness.errors import UsageError
from harness.gate.cases import (
    DEFAULT_CONFIDENCE,
    DEFAULT_INTERLEAVE,
    DEFAULT_RESTART_EVERY,
    DEFAULT_ROUNDS,
    DEFAULT_THRESHOLD,
    GATE_CASES,
    NOT_GATED,
    ROOT,
    Settings,
)
from harness.gate.compare import (
    IMPROVED,
    MISSING,
    REGRESSION,
    Method,
    Row,
    compare,
    fmt_value,
    md_table,
)
from harness.gate.runner import (
    INTERLEAVE_WORDS,
    MAIN_REFS,
    TIMING_PY,
    WORKER_PY,
    WORKTREE,
    Run,
    Side,
    export_tree,
    git,
    is_shallow,
    resolve,
    run,
)
from harness.provenance import machine_name

#: where the pairs' run files are kept (``<machine>/<commit>/<settings key>/``)
STORE = ROOT / "results" / "gate" / "history"
#: the verdicts that make a step
STEPS = (REGRESSION, IMPROVED)


def main_ref(repo: Path = ROOT) -> str:
    """The main branch of ``repo``: the first of ``MAIN_REFS`` that exists."""
    for ref in MAIN_REFS:
        try:
            resolve(ref, repo)
            return ref
        except ValueError:
            continue
    raise UsageError(f"--history: no main branch here (tried {', '.join(MAIN_REFS)}); name "
                     f"the newest commit: --history N REV")


def first_parent_pairs(n: int, tip: str, repo: Path = ROOT) -> list[tuple[str, str, str]]:
    """(commit, its first parent, subject) of the newest ``n`` commits of ``tip``'s
    first-parent chain, newest first. UsageError (exit 2) naming the bad value: ``n`` < 1,
    ``tip`` the working tree, fewer than ``n`` commits with a parent (a shallow clone says so);
    ValueError for an unknown ``tip``."""
    if n < 1:
        raise UsageError(f"--history must be >= 1, got {n}")
    if tip == WORKTREE:
        raise UsageError("--history measures commits: '.' (the working tree) is not one; give "
                         "the newest commit or branch, or nothing for main")
    sha = resolve(tip, repo)
    log = git("log", "--first-parent", f"--max-count={n + 1}", "--format=%H%x00%s", sha,
              cwd=repo)
    entries = [line.split("\0", 1) for line in log.splitlines()]
    if len(entries) < n + 1:
        have = len(entries) - 1
        if is_shallow(repo):
            raise UsageError(f"--history {n}: this clone is shallow ({len(entries)} commit(s) "
                             f"of {tip} here, so {have} with a parent): fetch full history, "
                             f"e.g. `git fetch --unshallow`")
        raise UsageError(f"--history {n}: {tip} has {have} commit(s) with a parent "
                         f"(first-parent); give at most {have}")
    return [(entries[i][0], entries[i + 1][0], entries[i][1]) for i in range(n)]


def settings_key(settings: Settings, rounds: int,
                 restart_every: int | None = DEFAULT_RESTART_EVERY,
                 interleave: str = DEFAULT_INTERLEAVE) -> tuple[str, dict]:
    """(key, what it hashes): what shapes the raw measurements besides the commit, the case
    and the machine -- the worker's ``Settings``, the rounds and server restarts, this
    interpreter's Python and
    torch/torchrl/tensordict versions (the sides run under it), how the rounds interleave the
    sides, and the gate's measuring code (``worker.py``, ``timing.py``: both sides run this
    checkout's copy)."""
    versions = {}
    for dist in ("torch", "torchrl", "tensordict"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    code = hashlib.sha256(WORKER_PY.read_bytes() + TIMING_PY.read_bytes()).hexdigest()[:12]
    described = {"settings": asdict(settings), "rounds": rounds,
                 "restart_every": restart_every or None,
                 "interleave": interleave, "python": platform.python_version(),
                 **versions, "worker": code}
    text = json.dumps(described, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12], described


def _short(subject: str, width: int = 60) -> str:
    return subject if len(subject) <= width else subject[:width - 1].rstrip() + "…"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "_"


@dataclass
class Stored:
    """One stored run file of a pair."""

    path: Path
    run: Run
    answers: set[str]  # case ids it settles: measured, skipped or failed, or asked for and absent
    regex: str | None  # the -b REGEX it was measured with (None: a list of cases)


def load_pair(directory: Path) -> list[Stored]:
    """The run files stored for one (machine, commit, settings key), oldest first."""
    out = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        if path.name == "settings.json":
            continue
        stored = Run.load(path)
        requested = (stored.sides[-1].get("history") or {}).get("requested") or {}
        answers = set(requested.get("cases") or ())
        for info in stored.info.values():
            for kind in ("cases", "skipped", "errors"):
                answers |= set(info.get(kind) or ())
        out.append(Stored(path, stored, answers, requested.get("regex")))
    return out


@dataclass
class Pair:
    """One commit against its parent: the rows of the cases asked for."""

    commit: str
    parent: str
    subject: str
    rows: list[Row]
    measured: bool = False  # did this run measure (some of) its cases, or all from the store

    @property
    def steps(self) -> list[Row]:
        return [r for r in self.rows if r.verdict in STEPS]


@dataclass
class History:
    """The pairs of a history run, newest first, and how they were compared."""

    tip: str
    pairs: list[Pair]
    machine: str
    key: str
    store: Path
    rounds: int
    method: Method = field(default_factory=Method)
    threshold: float = DEFAULT_THRESHOLD
    confidence: float = DEFAULT_CONFIDENCE
    seconds: float = 0.0
    interleave: str = DEFAULT_INTERLEAVE

    @property
    def measured_pairs(self) -> int:
        return sum(1 for p in self.pairs if p.measured)

    def steps(self) -> list[tuple[Pair, Row]]:
        return [(p, r) for p in self.pairs for r in p.steps]

    def exit_code(self) -> int:
        """1 when a step is a slowdown (REGRESSION), else 0."""
        return 1 if any(r.verdict == REGRESSION for _, r in self.steps()) else 0

    def summary(self) -> str:
        """The line that names the commit(s) with a step."""
        n = len(self.pairs)
        stepped = [p for p in self.pairs if p.steps]
        if not stepped:
            return (f"No step in the last {n} commit(s) of {self.tip}: every case within "
                    f"{self.threshold:.0%} or not significant.")

        def counts(p: Pair) -> str:
            slower = sum(r.verdict == REGRESSION for r in p.steps)
            faster = len(p.steps) - slower
            return ", ".join(s for s in (f"{slower} slower" if slower else "",
                                         f"{faster} faster" if faster else "") if s)

        named = "; ".join(f"{p.commit[:10]} \"{_short(p.subject)}\" ({counts(p)})"
                          for p in stepped)
        return f"Step(s) at {len(stepped)} of the last {n} commit(s) of {self.tip}: {named}."

    def markdown(self) -> str:
        """The step table (a row per (commit, case) with a step), then errors, then the
        summary line."""
        reused = len(self.pairs) - self.measured_pairs
        lines = [f"## Step history: the last {len(self.pairs)} commit(s) of {self.tip} "
                 f"(first-parent), each against its parent", "",
                 f"{self.rounds} rounds per pair, {INTERLEAVE_WORDS[self.interleave]}, "
                 f"round value {self.method}, "
                 f"Hodges-Lehmann {self.confidence:.0%} interval; a step is a significant "
                 f"change beyond {self.threshold:.0%} (REGRESSION or improved). Machine "
                 f"`{self.machine}`, settings key `{self.key}`: {self.measured_pairs} pair(s) "
                 f"measured now, {reused} entirely from `{_display(self.store)}`; "
                 f"{self.seconds / 60:.1f} min.", ""]
        cells = []
        for p, r in self.steps():
            interval = (f"{r.low:.3f} – {r.high:.3f}" if r.low is not None else MISSING)
            verdict = f"**{r.verdict}**" if r.verdict == REGRESSION else r.verdict
            cells.append([f"`{p.commit[:10]}`", _short(p.subject, 40), r.benchmark, r.params,
                          fmt_value(r.base, r.unit), fmt_value(r.head, r.unit),
                          MISSING if r.ratio is None else f"{r.ratio:.3f}", interval, verdict])
        if cells:
            lines.append(md_table(["commit", "subject", "benchmark", "params", "parent",
                                   "commit value", "ratio", f"{self.confidence:.0%} interval",
                                   "verdict"], cells, "llllrrrll"))
        errors = [(p, r) for p in self.pairs for r in p.rows if r.verdict.startswith("error")]
        if errors:
            lines += ["", "No verdict (the case failed at that commit or its parent):", ""]
            lines += [f"- `{p.commit[:10]}` {r.case}: {r.verdict}" for p, r in errors]
        lines += ["", self.summary()]
        return "\n".join(lines) + "\n"


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def _rows(stored: Sequence[Stored], cases: Sequence[str] | None, regex: str | None,
          compare_kw: dict) -> list[Row]:
    """The pair's rows of the wanted cases, each from the newest stored file that settles
    it (a -b REGEX: the newest file measured with that regex)."""
    if regex:
        hits = [s for s in stored if s.regex == regex]
        return compare(hits[-1].run, "base", "head", **compare_kw) if hits else []
    sources: dict[int, tuple[Stored, set[str]]] = {}
    for cid in cases or ():
        src = next((s for s in reversed(stored) if cid in s.answers), None)
        if src is not None:
            sources.setdefault(id(src), (src, set()))[1].add(cid)
    rows = [r for src, wanted in sources.values()
            for r in compare(src.run, "base", "head", **compare_kw) if r.case in wanted]
    return sorted(rows, key=lambda r: r.case)


def _measure_pair(parent: str, commit: str, *, cases, regex, settings: Settings, rounds: int,
                  restart_every: int | None, interleave: str, repo: Path, progress) -> Run:
    with tempfile.TemporaryDirectory(prefix="rlgauge-gate-history-") as tmp:
        work = Path(tmp)
        sides = [Side("base", export_tree(parent, work / "base", repo), label=parent[:10],
                      settings=settings),
                 Side("head", export_tree(commit, work / "head", repo), label=commit[:10],
                      settings=settings)]
        return run(sides, cases=cases, regex=regex, rounds=rounds,
                   restart_every=restart_every, interleave=interleave, progress=progress,
                   workdir=work)


def history(n: int, *, tip: str | None = None, cases: Sequence[str] | None = GATE_CASES,
            regex: str | None = None, settings: Settings | None = None,
            rounds: int = DEFAULT_ROUNDS, restart_every: int | None = DEFAULT_RESTART_EVERY,
            interleave: str = DEFAULT_INTERLEAVE, machine: str | None = None, store: Path = STORE,
            repo: Path = ROOT, method: Method | None = None,
            threshold: float = DEFAULT_THRESHOLD, confidence: float = DEFAULT_CONFIDENCE,
            progress: Callable[[str], None] | None = None) -> History:
    """The last ``n`` commits of ``tip`` (default: the main branch), each against its first
    parent, from the store where measured before (``load_pair``), measured and stored
    otherwise. Validates everything (``first_parent_pairs``) before measuring anything."""
    say = progress or (lambda _msg: None)
    settings = settings or Settings()
    method = method or Method()
    tip = tip or main_ref(repo)
    pairs = first_parent_pairs(n, tip, repo)
    if rounds < 1:
        raise UsageError(f"--rounds must be >= 1, got {rounds}")
    key, described = settings_key(settings, rounds, restart_every, interleave)
    machine = machine or machine_name()
    requested = {"regex": regex} if regex else {"cases": list(cases or ())}
    selection = hashlib.sha256(json.dumps(requested, sort_keys=True).encode()).hexdigest()[:8]
    compare_kw = {"threshold": threshold, "confidence": confidence, **method.kw(),
                  "not_gated": None if regex else NOT_GATED}
    t0 = time.perf_counter()
    out = History(tip, [], machine, key, store, rounds, method, threshold, confidence,
                  interleave=interleave)
    for i, (commit, parent, subject) in enumerate(pairs, 1):
        directory = store / _safe(machine) / commit / key
        stored = load_pair(directory)
        settled = set().union(*(s.answers for s in stored)) if stored else set()
        if regex:
            todo = None if any(s.regex == regex for s in stored) else regex
        else:
            todo = [c for c in cases or () if c not in settled] or None
        head = f"{i}/{len(pairs)} {commit[:10]} ({subject[:60]})"
        if todo:
            say(f"{head}: measuring {'-b ' + regex if regex else f'{len(todo)} case(s)'} "
                f"against its parent {parent[:10]}")
            result = _measure_pair(parent, commit, cases=None if regex else todo,
                                   regex=regex, settings=settings, rounds=rounds,
                                   restart_every=restart_every, interleave=interleave,
                                   repo=repo,
                                   progress=say)
            for side, sha in zip(result.sides, (parent, commit), strict=True):
                side["commit"] = sha
                side["history"] = {"machine": machine, "key": key, "requested": (
                    requested if regex else {"cases": todo})}
            atomic.write_json(directory / "settings.json", described)
            path = directory / f"{time.strftime('%Y%m%d-%H%M%S')}-{selection}.json"
            result.save(path)
            stored = load_pair(directory)
        else:
            say(f"{head}: stored, not measured again")
        out.pairs.append(Pair(commit, parent, subject, _rows(stored, cases, regex, compare_kw),
                              measured=bool(todo)))
    out.seconds = time.perf_counter() - t0
    return out
