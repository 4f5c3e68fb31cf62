"""The results store: one tidy schema, validated on every save and load, written atomically.

Every measured value is one row (long form). A results file is CSV framed by two comment lines::

    # rlgauge-results schema_version=3
    run_id,timestamp,git_sha,...            <- header: exactly ``COLUMNS``
    ...                                     <- one row per (run, metric[, frames])
    # end rows=N

The frame lines make damage detectable: a file cut short loses its ``# end`` line (or its row
count no longer matches), and a file that is not ours lacks the first line. Errors name the file
and the problem (``ResultsError``); when a directory is loaded, a bad file is reported and the
other files still load.

Writes are atomic: the frame goes to a temporary file in the destination directory, is flushed
and fsynced, then ``os.replace``-d over the destination, so a crash mid-write leaves the previous
file intact.

SCHEMA_VERSION history:
    1 -- initial schema (DESIGN.md columns plus ``frames``: the frame count at which a value was
         measured, empty for end-of-run scalars).
    2 -- hardware: ``cpu`` (CPU model), ``gpu`` (the GPU the run used, empty on the CPU) and
         ``cuda`` (the CUDA version torch was built with, ``none`` for a CPU build); ``torch``
         is ``torch.__version__`` with its build tag (``2.11.0+cu130``), not the distribution's
         version. Version-1 files still load: their hardware columns are empty (unknown).
    3 -- ``impl`` (whose implementation ran: ``rlgauge``, or a peer such as ``sb3``,
         ``harness.peers``) and ``compile`` (``eager``, ``compile`` or ``compile+cudagraphs``:
         ``harness.training.COMPILE_MODES``). Files of
         versions 1 and 2 load with ``rlgauge`` / ``eager``: the only ones there were.
"""

from __future__ import annotations

import io
import math
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from harness import atomic, provenance
from harness.errors import ResultsError

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MAGIC = "# rlgauge-results"
FOOTER = "# end rows="
SUFFIX = ".csv"

#: column -> kind. ``str`` columns may be empty unless listed in REQUIRED; ``int`` columns are
#: nullable integers; ``float`` is the measured value.
COLUMNS: dict[str, str] = {
    "run_id": "str",
    "timestamp": "str",
    "git_sha": "str",
    "machine": "str",
    "torch": "str",
    "torchrl": "str",
    "tensordict": "str",
    "cpu": "str",
    "gpu": "str",
    "cuda": "str",
    "algorithm": "str",
    "impl": "str",
    "compile": "str",
    "backend": "str",
    "task": "str",
    "device": "str",
    "num_envs": "int",
    "seed": "int",
    "metric": "str",
    "frames": "int",
    "value": "float",
    "unit": "str",
    "status": "str",
    "error": "str",
}
REQUIRED = ("run_id", "timestamp", "metric", "status")
STATUSES = ("ok", "failed", "timeout", "diverged", "skipped")
PROVENANCE = ("timestamp", "git_sha", "machine", "torch", "torchrl", "tensordict", "cpu", "cuda")
#: columns that say what hardware a value was measured on (``gpu`` only for runs on a GPU)
HARDWARE = ("cpu", "gpu")
#: columns added after version 1, and their value in files that predate them
_ADDED = {"cpu": "", "gpu": "", "cuda": "", "impl": "rlgauge", "compile": "eager"}
#: what a run's ``impl`` and ``compile`` are unless it says otherwise
DEFAULT_IMPL, DEFAULT_COMPILE = "rlgauge", "eager"


# --------------------------------------------------------------------------- provenance


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def make_records(rows: Iterable[Mapping], **context) -> pd.DataFrame:
    """Tidy frame from metric rows plus shared context; provenance and defaults filled in.

    ``rows`` are mappings with at least ``metric`` and ``value`` (optionally ``unit``, ``frames``,
    ``status``, ``error``); ``context`` holds the columns shared by the run (``algorithm``,
    ``backend``, ``task``, ``device``, ``num_envs``, ``seed``, ``run_id``...). Unknown keys raise.
    """
    from harness.devices import canonical

    if context.get("device"):  # one name per device (harness.devices): cuda -> cuda:0
        context = {**context, "device": canonical(context["device"])}
    base = {"run_id": new_run_id(), **provenance.record(context.get("device")), "status": "ok",
            "error": "", "unit": "", "impl": DEFAULT_IMPL, "compile": DEFAULT_COMPILE}
    base.update(context)
    frame = pd.DataFrame([{**base, **row} for row in rows], columns=list(COLUMNS))
    extra = set(base) - set(COLUMNS)
    if extra:
        raise ValueError(f"unknown result columns {sorted(extra)}; valid: {', '.join(COLUMNS)}")
    return validate(frame)


def failure_record(error: str, *, status: str = "failed", metric: str = "run", **context):
    """One row that records a run that did not produce its metrics (never a missing row)."""
    return make_records([{"metric": metric, "value": math.nan, "status": status,
                          "error": error or status}], **context)


# --------------------------------------------------------------------------- validation


def validate(frame: pd.DataFrame, *, source: str | os.PathLike = "<frame>") -> pd.DataFrame:
    """Check ``frame`` against the schema and return it with canonical dtypes and column order.

    Raises ResultsError naming ``source`` and the first problem found.
    """
    cols = list(frame.columns)
    missing = [c for c in COLUMNS if c not in cols]
    unknown = [c for c in cols if c not in COLUMNS]
    if missing or unknown:
        parts = ([f"missing columns {missing}"] if missing else []) + (
            [f"unknown columns {unknown}"] if unknown else [])
        raise ResultsError(source, "; ".join(parts) + f" (schema v{SCHEMA_VERSION})")
    out = pd.DataFrame(index=frame.index)
    for col, kind in COLUMNS.items():
        s = frame[col]
        if kind == "str":
            out[col] = s.astype(object).where(s.notna(), "").astype(str)
            continue
        num = pd.to_numeric(s.replace("", None), errors="coerce")
        blank = s.isna() | s.astype(str).str.strip().str.lower().isin(["", "nan", "none", "<na>"])
        bad = num.isna() & ~blank
        if bad.any():
            i = bad.idxmax()
            raise ResultsError(source, f"row {_row(frame, i)}: column {col!r} is not a number: "
                                       f"{s[i]!r}")
        if kind == "int":
            frac = num.notna() & (num != num.round())
            if frac.any():
                i = frac.idxmax()
                raise ResultsError(source, f"row {_row(frame, i)}: column {col!r} must be an "
                                           f"integer, got {s[i]!r}")
            out[col] = num.astype("Int64")
        else:
            out[col] = num.astype("float64")
    for col in REQUIRED:
        empty = out[col].str.strip() == ""
        if empty.any():
            raise ResultsError(source, f"row {_row(frame, empty.idxmax())}: column {col!r} is "
                                       f"empty")
    bad_status = ~out["status"].isin(STATUSES)
    if bad_status.any():
        i = bad_status.idxmax()
        raise ResultsError(source, f"row {_row(frame, i)}: status {out['status'][i]!r} is not "
                                   f"one of {', '.join(STATUSES)}")
    ok = out["status"] == "ok"
    nonfinite = ok & ~out["value"].map(math.isfinite)
    if nonfinite.any():
        i = nonfinite.idxmax()
        raise ResultsError(source, f"row {_row(frame, i)}: status 'ok' but value is "
                                   f"{float(out['value'][i])} (a failed measurement must say so "
                                   f"in 'status' and 'error')")
    silent = ~ok & (out["error"].str.strip() == "")
    if silent.any():
        i = silent.idxmax()
        raise ResultsError(source, f"row {_row(frame, i)}: status {out['status'][i]!r} needs a "
                                   f"reason in 'error'")
    for col, low in (("num_envs", 1), ("seed", 0), ("frames", 0)):
        below = out[col].notna() & (out[col] < low)
        if below.any():
            i = below.idxmax()
            raise ResultsError(source, f"row {_row(frame, i)}: {col} must be >= {low}, got "
                                       f"{out[col][i]}")
    stamps = pd.to_datetime(out["timestamp"], errors="coerce", utc=True, format="ISO8601")
    if stamps.isna().any():
        i = stamps.isna().idxmax()
        raise ResultsError(source, f"row {_row(frame, i)}: timestamp {out['timestamp'][i]!r} is "
                                   f"not ISO 8601")
    return out.reset_index(drop=True)


def _row(frame: pd.DataFrame, label) -> int:
    """1-based data row number of index ``label`` (what a user sees counting CSV rows)."""
    return int(frame.index.get_loc(label)) + 1


# --------------------------------------------------------------------------- files


def dumps(frame: pd.DataFrame) -> str:
    """The framed CSV text of a validated frame."""
    frame = validate(frame)
    body = frame.to_csv(index=False, lineterminator="\n")
    return f"{MAGIC} schema_version={SCHEMA_VERSION}\n{body}{FOOTER}{len(frame)}\n"


def save(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and atomically write ``frame`` to ``path`` (parent directories are created)."""
    return atomic.write_text(path, dumps(frame))


def append(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Atomically add ``frame``'s rows to the results file at ``path`` (created if missing)."""
    path = Path(path)
    if path.exists():
        frame = pd.concat([load(path), validate(frame)], ignore_index=True)
    return save(frame, path)


def loads(text: str, *, source: str | os.PathLike = "<string>") -> pd.DataFrame:
    """Parse and validate the framed CSV ``text``."""
    lines = text.splitlines(keepends=True)
    if not lines:
        raise ResultsError(source, "empty file (truncated, or not an rlgauge results file)")
    if not lines[0].startswith(MAGIC):
        first = lines[0].strip()[:60]
        raise ResultsError(source, f"not an rlgauge results file (first line {first!r}, expected "
                                   f"{MAGIC!r})")
    header = lines[0].strip()
    try:
        version = int(header.split("schema_version=", 1)[1])
    except (IndexError, ValueError):
        raise ResultsError(source, f"malformed first line {header!r}") from None
    if version not in READABLE_VERSIONS:
        raise ResultsError(source, f"schema_version {version} is not supported (this rlgauge "
                                   f"reads {', '.join(map(str, READABLE_VERSIONS))})")
    last = lines[-1] if len(lines) > 1 else ""
    if not last.startswith(FOOTER) or not last.endswith("\n"):
        raise ResultsError(source, f"truncated: the closing {FOOTER!r}N line is missing "
                                   f"({len(lines)} lines read)")
    try:
        expected = int(last[len(FOOTER):])
    except ValueError:
        raise ResultsError(source, f"malformed closing line {last.strip()!r}") from None
    body = "".join(lines[1:-1])
    if not body.strip():
        raise ResultsError(source, "no header line")
    try:
        frame = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False,
                            na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ResultsError(source, f"malformed CSV: {str(exc).strip()}") from None
    if len(frame) != expected:
        raise ResultsError(source, f"truncated or damaged: {len(frame)} rows, the closing line "
                                   f"says {expected}")
    if version < SCHEMA_VERSION:  # columns added since: unknown hardware, rlgauge, eager
        for col, value in _ADDED.items():
            if col not in frame.columns:
                frame[col] = value
        frame = frame[[c for c in COLUMNS if c in frame.columns]
                      + [c for c in frame.columns if c not in COLUMNS]]
    return validate(frame, source=source)


def load(path: str | os.PathLike) -> pd.DataFrame:
    """Load one results file, or every ``*.csv`` results file below a directory.

    A single bad file raises ResultsError. For a directory, use ``load_many`` to get the good
    files' rows plus the errors; ``load`` raises on the first bad file.
    """
    path = Path(path)
    if path.is_dir():
        frame, errors = load_many(path)
        if errors:
            raise errors[0]
        return frame
    if not path.exists():
        raise ResultsError(path, "no such file or directory")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsError(path, "not a text file (not an rlgauge results file)") from None
    except OSError as exc:
        raise ResultsError(path, f"cannot read: {exc.strerror or exc}") from None
    return loads(text, source=path)


def result_files(path: str | os.PathLike) -> list[Path]:
    """The results files under ``path`` (a file, or ``*.csv`` below a directory, sorted)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob(f"*{SUFFIX}") if not p.name.startswith("."))
    return [path]


def load_many(*paths: str | os.PathLike) -> tuple[pd.DataFrame, list[ResultsError]]:
    """Rows of every readable results file under ``paths``, and one error per unreadable file.

    CSV files without the rlgauge first line (e.g. exported tables) under a directory are
    skipped silently; a file named explicitly must be a results file.
    """
    frames, errors = [], []
    for root in paths:
        root = Path(root)
        if not root.exists():
            errors.append(ResultsError(root, "no such file or directory"))
            continue
        for f in result_files(root):
            if root.is_dir() and not _has_magic(f):
                continue
            try:
                frames.append(load(f))
            except ResultsError as exc:
                errors.append(exc)
    frame = (pd.concat(frames, ignore_index=True) if frames
             else validate(pd.DataFrame(columns=list(COLUMNS))))
    return frame, errors


def _has_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError:
        return True  # unreadable: let load() report it
    return head == MAGIC.encode() or head == b""  # an empty .csv is a truncated results file
