"""Measuring sides: git checkouts, one server process per side, interleaved rounds, the run file.

- Each side is a checkout: ``git archive`` of the commit into a temporary directory (no
  worktree, nothing written into .git; ``export_tree``). Sides run under an interpreter (the
  nox venv, or another one for ``versions``) with ``PYTHONPATH`` pointing at their checkout, so
  each commit's own ``harness/``, ``reference_impls/`` *and* ``bench/`` are measured.
- One server per side (``harness.gate.worker``, booted by path from copies in the run's
  directory: ``BOOT``) imports torch/torchrl and the benchmarks once, computes each class's
  ``setup_cache`` once (pickled and shared by the run's servers, as asv shares it per
  environment and commit) and warms every case; each round is a child forked from it, which
  costs milliseconds where a fresh interpreter costs seconds of imports.
- Rounds are interleaved sample by sample by default (``_case_round`` with ``_sample_case``:
  within a round, case by case, each side sets the case up and warms it, then the sides take
  one sample each in turn, A B, B A, ..., so a pair's samples are one sample apart), case by
  case (``interleave="case"``: each side measures the whole case in turn, seconds apart), or
  side by side (``interleave="round"``: ``side_order``, A B, B A, ..., each side measuring all
  its cases in turn); either way every side takes every position equally often and a linear
  drift cancels in pairs; ``restart_every`` starts fresh servers (a new job)
  every so many rounds (``DEFAULT_RESTART_EVERY``: a server can carry an offset of its own,
  which fresh generations average out; with the setup_cache pickles a restart of both
  servers takes ~10 s in `nox -s regress`).
- ``Run`` is everything measured, saved as JSON with a format version (``RUN_FORMAT``).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import atomic
from harness.gate.cases import (
    DEFAULT_INTERLEAVE,
    DEFAULT_RESTART_EVERY,
    DEFAULT_ROUNDS,
    INJECT_ENV,
    ROOT,
    Settings,
    case_meta,
)

WORKER_PY = Path(__file__).resolve().with_name("worker.py")
TIMING_PY = ROOT / "harness" / "timing.py"
#: the run file's format; a file without one is format 1 (saved before formats existed)
RUN_FORMAT = 1
RUN_FORMATS_READ = (1,)

# The server runs worker.py and timing.py (loaded by path under private names), while
# `harness`, `bench` and `reference_impls` come from the side's checkout (PYTHONPATH): a
# commit without harness/gate/ can still be measured.
BOOT = """\
import importlib.util, sys
def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
_load('_rlgauge_timing', sys.argv[2])
sys.exit(_load('_rlgauge_gate_worker', sys.argv[1]).worker_main(sys.argv[3:]))
"""


# --------------------------------------------------------------------------- git checkouts


WORKTREE = "."  # a rev of "." means the checkout as it is, uncommitted changes included
MAIN_REFS = ("main", "origin/main", "master", "origin/master")  # the main branch: the first found


def git(*args: str, cwd: Path = ROOT) -> str:
    proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


def is_shallow(repo: Path = ROOT) -> bool:
    """Is ``repo`` a shallow clone (history cut off at some depth)? False when it is not a
    git repository at all."""
    try:
        return git("rev-parse", "--is-shallow-repository", cwd=repo) == "true"
    except ValueError:
        return False


def resolve(rev: str, repo: Path = ROOT) -> str:
    """The full commit sha of ``rev`` (or WORKTREE) in ``repo``; ValueError naming the bad
    rev."""
    if rev == WORKTREE:
        return WORKTREE
    try:
        return git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}", cwd=repo)
    except ValueError:
        hint = (" (this clone is shallow: fetch full history, e.g. `git fetch --unshallow`)"
                if is_shallow(repo) else "")
        raise ValueError(f"unknown git revision {rev!r}{hint}") from None


def default_base(head: str = "HEAD") -> tuple[str, str]:
    """(rev, why): the merge base of ``head`` with main (origin/main), or ``head``'s parent
    when ``head`` is on main already."""
    head_sha = resolve("HEAD" if head == WORKTREE else head)
    for main in MAIN_REFS:
        with contextlib.suppress(ValueError):
            base = git("merge-base", head_sha, resolve(main))
            if base != head_sha:
                return base, f"merge base of {head} with {main}"
            if head == WORKTREE:
                return base, f"{main} ({head} = the working tree)"
            return resolve(f"{head_sha}~1"), f"{head} is on {main}: its parent"
    return resolve(f"{head_sha}~1"), "no main branch: the parent of HEAD"


def export_tree(rev: str, dest: Path, repo: Path = ROOT) -> Path:
    """The tracked files of commit ``rev`` of ``repo`` under ``dest`` (git archive: no
    worktree, no index, nothing written into .git). WORKTREE: a copy of the checkout's files as
    they are now (tracked and untracked, not ignored), so that edits made while a run goes on
    do not reach it."""
    if rev == WORKTREE:
        listed = git("ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=repo)
        for rel in filter(None, listed.split("\0")):
            src = repo / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
        return dest
    import io
    import tarfile

    sha = resolve(rev, repo)
    data = subprocess.run(["git", "archive", "--format=tar", sha], cwd=repo,
                          capture_output=True, check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


# --------------------------------------------------------------------------- sides, servers


@dataclass
class Side:
    """One column of a run: a checkout measured by an interpreter with extra environment."""

    name: str
    tree: Path
    python: str = sys.executable
    env: dict = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    compat: bool = False  # apply the checkout's harness.compat before importing benchmarks
    label: str = ""  # what the report calls it (commit, torchrl version...)


class _Server:
    def __init__(self, side: Side, cases, regex, workdir: Path, generation: int, boot: Path):
        self.side = side
        tag = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', side.name)}-{generation}"
        self.log_path = workdir / "logs" / f"{tag}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.out_dir = workdir / "rounds" / tag
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cache_key = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{side.tree}-{side.python}")[-120:]
        read_fd, write_fd = os.pipe()
        cfg = {"tree": str(side.tree), "cases": list(cases) if cases else None, "regex": regex,
               "settings": asdict(side.settings), "reply_fd": write_fd, "compat": side.compat,
               "cache_dir": str(workdir / "cache" / cache_key)}
        env = {k: v for k, v in os.environ.items() if k not in {INJECT_ENV, "PYTHONPATH"}}
        env.update({"PYTHONPATH": str(side.tree), "MUJOCO_GL": env.get("MUJOCO_GL", "egl"),
                    "RL_LOGGING_LEVEL": env.get("RL_LOGGING_LEVEL", "WARNING")})
        if side.settings.threads is not None:
            env.update(OMP_NUM_THREADS=str(side.settings.threads),
                       MKL_NUM_THREADS=str(side.settings.threads))
        else:
            env.pop("OMP_NUM_THREADS", None)
            env.pop("MKL_NUM_THREADS", None)
        env.update(side.env)
        self.log = open(self.log_path, "w")  # noqa: SIM115 -- closed in close()
        self.proc = subprocess.Popen(
            [side.python, "-c", BOOT, str(boot / "worker.py"), str(boot / "timing.py"),
             json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=self.log, stderr=subprocess.STDOUT, env=env,
            pass_fds=(write_fd,), cwd=workdir, text=True)
        os.close(write_fd)
        self.reply = os.fdopen(read_fd, "r")
        self.info: dict = {}

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.reply], [], [], timeout)
        line = self.reply.readline() if ready else ""
        if not line:
            self.proc.kill()
            why = "timed out" if not ready else f"exited with {self.proc.wait()}"
            raise RuntimeError(f"side {self.side.name}: worker {why}; log: {self.log_path}\n"
                               + _tail(self.log_path))
        return json.loads(line)

    def wait_ready(self, timeout: float) -> dict:
        msg = self._read(timeout)
        if msg["event"] != "ready":
            raise RuntimeError(f"side {self.side.name}: worker failed: {msg.get('error')}; "
                               f"log: {self.log_path}\n" + _tail(self.log_path))
        msg["cases"] = {cid: case_meta(cid, meta) for cid, meta in msg["cases"].items()}
        self.info = msg
        return msg

    def round(self, index: int, timeout: float) -> dict:
        """Every case once, in the server's own order (``interleave="round"``)."""
        out = self.out_dir / f"round-{index:04d}.json"
        msg = self._ask({"op": "round", "round": index, "out": str(out)}, timeout)
        return self._round_file(index, out, msg)

    def _ask(self, cmd: dict, timeout: float) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def open_round(self, index: int, timeout: float) -> str | None:
        """Start a case-by-case round (the server forks its child); None, or why not."""
        msg = self._ask({"op": "open", "round": index}, timeout)
        return None if msg.get("ok") else msg.get("error", "could not open the round")

    def case(self, case: str, timeout: float) -> str | None:
        """Measure ``case`` in the open round; None, or the error (the round's process died)."""
        return self._case_op("case", case, timeout)[0]

    def begin(self, case: str, timeout: float) -> tuple[str | None, bool]:
        """Set ``case`` up and warm it in the open round: (the error or None, whether it needs
        no samples: not a case of this side's, or its setup failed or skipped)."""
        return self._case_op("begin", case, timeout)

    def sample(self, case: str, timeout: float) -> tuple[str | None, bool]:
        """One more sample of the begun ``case``: (the error or None, whether it has all)."""
        return self._case_op("sample", case, timeout)

    def end(self, case: str, timeout: float) -> str | None:
        """teardown of the begun ``case``; its result goes into the round's file."""
        return self._case_op("end", case, timeout)[0]

    def _case_op(self, op: str, case: str, timeout: float) -> tuple[str | None, bool]:
        msg = self._ask({"op": op, "case": case}, timeout)
        if not msg.get("ok"):
            return msg.get("error", f"{op} failed"), True
        return None, bool(msg.get("done", True))

    def close_round(self, index: int, timeout: float, error: str | None = None) -> dict:
        """End the open round: its file, or ``{"round", "error"}`` when it failed."""
        out = self.out_dir / f"round-{index:04d}.json"
        msg = self._ask({"op": "close", "out": str(out)}, timeout)
        return self._round_file(index, out, msg, error)

    def _round_file(self, index: int, out: Path, msg: dict, error: str | None = None) -> dict:
        """The round the server wrote to ``out``, or ``{"round", "error"}`` with its log."""
        error = error or (None if msg.get("ok") and out.exists() else
                          msg.get("error", "round failed"))
        if error:
            return {"round": index, "error": f"{error}; log: {self.log_path}\n"
                    + _tail(self.log_path)}
        return json.loads(out.read_text())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reply.close()
        self.log.close()


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def side_order(n_sides: int, index: int) -> list[int]:
    """Round ``index``'s order of the sides: rotated each round (two sides: A B, B A, A B...),
    so every side takes every position equally often and a linear drift cancels in pairs."""
    return [(j + index) % n_sides for j in range(n_sides)]


INTERLEAVE = ("sample", "case", "round")
#: how a report says it
INTERLEAVE_WORDS = {"sample": "interleaved sample by sample", "case": "interleaved case by case",
                    "round": "interleaved round by round"}


def _case_round(servers: Sequence[_Server], index: int, timeout: float,
                by_sample: bool = False) -> dict:
    """One round driven case by case: every case of the union of the sides' cases, in an
    order rotated by ``index``, each measured by every side in turn (``side_order`` rotated
    by the round and the case's position: A B, B A, ...), so the two values of a pair are
    taken seconds apart. On this VM the machine's speed drifts on that time scale: the A/A
    residuals of different cases correlate 0.46 when measured < 2 s apart, 0.21 at 10-20 s
    (a round apart) and 0 beyond 40 s (results/gate/validity-vm-21cases.md's raw rounds).
    ``by_sample`` (``interleave="sample"``): the sides set the case up and warm it one after
    the other, then take their samples in turn (``_sample_case``), so a pair's samples are
    one sample apart."""
    every = sorted({c for s in servers for c in s.info["cases"]})
    shift = index % max(1, len(every))
    order = every[shift:] + every[:shift]
    errors = {s.side.name: s.open_round(index, timeout) for s in servers}
    for k, case in enumerate(order):
        sides = [servers[j] for j in side_order(len(servers), index + k)
                 if errors[servers[j].side.name] is None and case in servers[j].info["cases"]]
        if by_sample:
            _sample_case(sides, case, errors, timeout)
        else:
            for server in sides:
                errors[server.side.name] = server.case(case, timeout)
    return {s.side.name: s.close_round(index, timeout, errors[s.side.name]) for s in servers}


def _sample_case(sides: Sequence[_Server], case: str, errors: dict, timeout: float) -> None:
    """``case`` measured by ``sides`` sample by sample: each sets it up and warms it (in the
    given order), then one sample each, the order rotating every pass (A B, B A, ...), each
    side until it has its samples (its own budget, as when it measures the case alone), then
    each side's teardown. A side whose round process dies gets its error in ``errors``."""
    sampling = []
    for server in sides:
        errors[server.side.name], done = server.begin(case, timeout)
        if errors[server.side.name] is None and not done:
            sampling.append(server)
    turn = 0
    while sampling:
        for server in [sampling[j] for j in side_order(len(sampling), turn)]:
            errors[server.side.name], done = server.sample(case, timeout)
            if done:
                sampling.remove(server)
        turn += 1
    for server in sides:
        if errors[server.side.name] is None:
            errors[server.side.name] = server.end(case, timeout)


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """Everything measured: per round, per side, the worker's round result. JSON-friendly;
    the file (``save``) carries ``"format": RUN_FORMAT``."""

    sides: list[dict]
    rounds: list[dict]
    info: dict  # side name -> the worker's ready message (last generation)
    seconds: float = 0.0
    started: str = ""
    restart_every: int | None = None
    interleave: str = "round"  # files saved before case-by-case rounds existed: by round

    def save(self, path: Path) -> None:
        atomic.write_json(path, {"format": RUN_FORMAT, **asdict(self)})

    @classmethod
    def load(cls, path: Path) -> Run:
        """The run saved in ``path`` (``.json``, or ``.json.gz`` as the committed validity runs
        are kept); ValueError naming the file when its format is one this code cannot read (a
        newer rlgauge's)."""
        raw = Path(path).read_bytes()
        data = json.loads(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)
        fmt = data.pop("format", 1)  # no format: saved before formats existed (format 1)
        if fmt not in RUN_FORMATS_READ:
            raise ValueError(f"gate run {str(path)!r} has format {fmt!r}; this rlgauge reads "
                             f"format {', '.join(map(str, RUN_FORMATS_READ))} (files without "
                             f"a format are format 1): update rlgauge to read it")
        return cls(**data)

    def side_names(self) -> list[str]:
        return [s["name"] for s in self.sides]


def check_restart_every(restart_every: int | None) -> None:
    """ValueError naming a negative ``--restart-every`` (0 or None: never restart)."""
    if restart_every is not None and restart_every < 0:
        raise ValueError(f"--restart-every must be >= 0 (0: never), got {restart_every}")


def run(sides: Sequence[Side], *, cases: Sequence[str] | None = None, regex: str | None = None,
        rounds: int = DEFAULT_ROUNDS, restart_every: int | None = DEFAULT_RESTART_EVERY,
        block: int | None = None, progress: Callable[[str], None] | None = None,
        workdir: Path | None = None,
        ready_timeout: float = 900.0, round_timeout: float = 600.0,
        interleave: str = DEFAULT_INTERLEAVE) -> Run:
    """Measure ``sides`` in ``rounds`` interleaved rounds; every side's servers are restarted
    every ``restart_every`` rounds (a fresh process, as a new job; 0 or None: never) and, with
    ``block``, at the start of every block of that many rounds (the validity study's
    independent gate runs), counting within the block. ``interleave``: ``sample`` (within
    the round, case by case, the sides' samples of the case in turn: ``_sample_case``),
    ``case`` (each case measured whole by every side in turn: ``_case_round``) or ``round``
    (each side measures the whole round in turn, ``side_order``)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    check_restart_every(restart_every)
    if block is not None and block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if interleave not in INTERLEAVE:
        raise ValueError(f"interleave must be one of {', '.join(INTERLEAVE)}, got "
                         f"{interleave!r}")
    names = [s.name for s in sides]
    if len(set(names)) != len(names):
        raise ValueError(f"side names must differ, got {names}")
    say = progress or (lambda _msg: None)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="rlgauge-gate-")) if own else Path(workdir)
    t0 = time.perf_counter()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    out = Run([{"name": s.name, "label": s.label or s.name, "tree": str(s.tree),
                "python": s.python, "env": s.env, "settings": asdict(s.settings)}
               for s in sides], [], {}, started=started, restart_every=restart_every,
              interleave=interleave)
    # the workers boot from copies: editing the checkout during a long run cannot reach them
    boot = workdir / "runner"
    boot.mkdir(parents=True, exist_ok=True)
    shutil.copy2(WORKER_PY, boot / "worker.py")
    shutil.copy2(TIMING_PY, boot / "timing.py")
    servers: list[_Server] = []
    try:
        generation = 0
        for index in range(rounds):
            at = index % block if block else index  # the round's place in its block
            if at == 0 or (restart_every and at % restart_every == 0):  # round 0 included
                for server in servers:
                    server.close()
                say(f"starting {len(sides)} worker(s) (generation {generation})")
                servers = [_Server(s, cases, regex, workdir, generation, boot) for s in sides]
                for server in servers:  # started together: they import in parallel
                    out.info[server.side.name] = server.wait_ready(ready_timeout)
                generation += 1
            if interleave in ("sample", "case"):
                row = _case_round(servers, index, round_timeout, interleave == "sample")
            else:
                row = {sides[j].name: servers[j].round(index, round_timeout)
                       for j in side_order(len(sides), index)}
            out.rounds.append(row)
            say(f"round {index + 1}/{rounds} done ({time.perf_counter() - t0:.0f} s)")
    finally:
        for server in servers:
            server.close()
        out.seconds = time.perf_counter() - t0
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return out
