"""The builds of torchrl that ``nox -s versions -- A B ...`` compares ("sides"): what a side is,
its resolution against the registry, its own cached environment, and its learning check.

A side is one argument (``SYNTAX``; ``parse_side`` checks it without network or building):

- ``torchrl==0.13.3`` -- a release. Its tensordict is the newest the release's own requirement
  allows (``tensordict<0.14,>=0.13``: uv's resolver), unless given: ``torchrl==0.13.3,
  tensordict==0.13.0``.
- ``nightly`` (or ``nightly==2026.10.27``) -- ``torchrl-nightly`` with ``tensordict-nightly``
  from the registry (the newest of both unless pinned).
- ``PATH`` -- a torchrl source checkout (a directory with ``setup.py`` or ``pyproject.toml``
  and ``torchrl/__init__.py``), built here with its C++ extension against the pinned torch
  (``--no-build-isolation``); ``PATH,tensordict=TD_PATH`` builds a tensordict checkout with
  it, ``PATH,tensordict==V`` pins a release.
- ``FILE.whl`` -- a torchrl wheel (``torchrl-*.whl`` or ``torchrl_nightly-*.whl``); its
  tensordict from the wheel's requirement unless given.
- ``LABEL=PYTHON`` -- an existing environment's interpreter, used as it is.

Every side's environment has the pinned set (constraints.txt) with torch exactly as pinned
(``torch==2.13.0``, the local CPU wheel; or ``$RLGAUGE_TORCH``): a build whose requirements
need another torch is refused in one line (``SideError``, exit 2) before anything is built,
never installed with a 3 GB CUDA torch. So is a release that does not exist, a path that is
not a torchrl checkout, a wheel that is not there, and a build whose import of what rlgauge
uses fails even with ``harness.compat`` (an API rlgauge cannot adapt to).

Cache policy (``ensure_env``): one environment per side under ``.nox/versions-sides/<slug>/``
(``--envs``), reused while its key is unchanged and rebuilt in place when it changes. The key
is what was resolved (the exact torchrl / tensordict versions uv picked: a new nightly is a
new key), the torch requirement, constraints.txt and the project's extras, the Python version,
and for a wheel its bytes' hash, for a checkout its state: ``git`` HEAD plus a hash of ``git
status`` and ``git diff HEAD`` in a git checkout, else a hash of every source file's path,
size and modification time (build outputs, ``.so`` files and caches left out). The state
after the build is stored too, so files the build writes into the checkout do not force a
second build. A checkout builds in ~1-3 min on 2 cores (its C++ extension); a release or
nightly environment installs in ~30-60 s from uv's cache.

Learning check (``learning_check``): in each side's environment, the probe learning tests
(``pytest -m probe_learning``: closed-form answers, ~40 s) and one short real run per
reference algorithm (``LEARNING_RUNS``: a budget where the pinned torchrl's seed 0 is well
past its threshold and an untrained policy far below it); a side with a failed test, a failed
run or a return under its threshold is BROKEN. The jobs of all sides run in parallel, one per
CPU, before any timing.

This module imports only the standard library at import time (``packaging`` where a version
is checked); ``python -m harness.sides ext|probe`` are the steps run inside a side's
environment.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness import atomic, installs
from harness.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
#: where side environments live (one directory per side: ``slug``)
ENVS_DIR = ROOT / ".nox" / "versions-sides"
#: the sides ``nox -s versions`` compares when none is given
DEFAULT_SIDES = ("torchrl==0.13.3", "torchrl==0.14.1")
KINDS = ("release", "nightly", "checkout", "wheel", "python")
SYNTAX = ("torchrl==VERSION[,tensordict==VERSION] (a release), nightly[==DATE] (torchrl-nightly "
          "with tensordict-nightly), PATH[,tensordict=PATH|==VERSION] (a torchrl source "
          "checkout), FILE.whl (a torchrl wheel) or LABEL=PYTHON (an existing interpreter)")
#: bump to rebuild every cached side environment (what an environment holds changed)
ENV_FORMAT = 1
MARKER = "rlgauge-side.json"
_VERSION_RE = re.compile(r"^[0-9][0-9A-Za-z.+!_-]*$")
_WHEEL_RE = re.compile(r"^(?P<dist>torchrl(?:[_-]nightly)?)-(?P<version>[^-]+)-.+\.whl$")


class SideError(UsageError):
    """A side that cannot be compared here, in one line naming it and why (CLI exit 2)."""

    def __init__(self, side: str, why: str):
        self.side, self.why = side, " ".join(str(why).split())
        super().__init__(f"side {side!r}: {self.why}")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Spec:
    """One side as given: ``kind`` (``KINDS``), ``value`` (a version, "" for the newest nightly,
    an absolute path, or an interpreter), ``tensordict`` ("" = from torchrl's requirement,
    ``==V``, or an absolute checkout path) and the ``label`` of an ``LABEL=PYTHON`` side."""

    text: str
    kind: str
    value: str
    tensordict: str = ""
    label: str = ""

    @property
    def slug(self) -> str:
        """The environment directory's name (a changed key rebuilds it in place)."""
        td = ("" if not self.tensordict else
              f"-td{self.tensordict[2:]}" if self.tensordict.startswith("==") else
              f"-td-{_path_tag(self.tensordict)}")
        if self.kind == "release":
            base = f"torchrl-{self.value}"
        elif self.kind == "nightly":
            base = f"nightly-{self.value}" if self.value else "nightly"
        elif self.kind == "checkout":
            base = f"checkout-{_path_tag(self.value)}"
        elif self.kind == "wheel":
            base = f"wheel-{Path(self.value).name.split('-')[1]}-{_digest(self.value)[:8]}"
        else:
            base = f"python-{self.label}"
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", base + td)


def _path_tag(path: str) -> str:
    return f"{Path(path).name}-{_digest(str(Path(path).resolve()))[:8]}"


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()


def is_checkout(path: Path, package: str = "torchrl") -> bool:
    """A source checkout of ``package``: ``setup.py`` or ``pyproject.toml`` beside
    ``<package>/__init__.py``."""
    return ((path / "setup.py").is_file() or (path / "pyproject.toml").is_file()) and \
        (path / package / "__init__.py").is_file()


def _tensordict_option(text: str, opt: str, nightly: bool) -> str:
    """``tensordict==V`` -> ``==V``; ``tensordict=PATH`` -> the checkout's absolute path."""
    if opt.startswith("tensordict=="):
        version = opt.split("==", 1)[1].strip()
        if not _VERSION_RE.match(version):
            raise SideError(text, f"tensordict version {version!r} is not a version")
        return f"=={version}"
    if opt.startswith("tensordict=") and not nightly:
        path = Path(os.path.expanduser(opt.split("=", 1)[1].strip())).resolve()
        if not path.is_dir() or not is_checkout(path, "tensordict"):
            raise SideError(text, f"{path} is not a tensordict checkout (a directory with "
                                  "setup.py or pyproject.toml and tensordict/__init__.py)")
        return str(path)
    raise SideError(text, f"unknown option {opt!r}: after the build comes "
                          f"tensordict==VERSION{'' if nightly else ' or tensordict=PATH'}; a "
                          f"side is {SYNTAX}")


def parse_side(text: str) -> Spec:
    """``text`` as a ``Spec``, checked without network: SideError naming the side and the
    valid forms (``SYNTAX``) when it is none of them, a path is not a torchrl checkout, a
    wheel file is missing, or an interpreter does not exist."""
    text = text.strip()
    main, *opts = [p.strip() for p in text.split(",")]
    if not main:
        raise SideError(text, f"empty; a side is {SYNTAX}")
    low = main.lower()
    if low.startswith("torchrl=="):
        version = main.split("==", 1)[1].strip()
        if not _VERSION_RE.match(version):
            raise SideError(text, f"{version!r} is not a version; a side is {SYNTAX}")
        kind, value = "release", version
    elif low in ("nightly", "torchrl-nightly") or low.startswith(("nightly==",
                                                                   "torchrl-nightly==")):
        value = main.split("==", 1)[1].strip() if "==" in main else ""
        if value and not _VERSION_RE.match(value):
            raise SideError(text, f"{value!r} is not a nightly version (e.g. 2026.10.27)")
        kind = "nightly"
    elif low.endswith(".whl"):
        path = Path(os.path.expanduser(main)).resolve()
        if not path.is_file():
            raise SideError(text, f"no wheel file at {path}")
        if not _WHEEL_RE.match(path.name):
            raise SideError(text, f"{path.name} is not a torchrl wheel (torchrl-VERSION-...whl "
                                  "or torchrl_nightly-...whl)")
        kind, value = "wheel", str(path)
    elif "=" in main and "==" not in main and not Path(os.path.expanduser(main)).exists():
        label, _, python = main.partition("=")
        python_path = Path(os.path.expanduser(python.strip()))
        if not label.strip() or not python.strip():
            raise SideError(text, f"expected LABEL=PYTHON; a side is {SYNTAX}")
        if not python_path.is_file() or not os.access(python_path, os.X_OK):
            raise SideError(text, f"no interpreter at {python.strip()!r}")
        if opts:
            raise SideError(text, "LABEL=PYTHON takes no options: the interpreter's "
                                  "environment is used as it is")
        # the path as given: a venv's bin/python is a link whose target is the base Python
        return Spec(text, "python", str(python_path.absolute()), label=label.strip())
    else:
        path = Path(os.path.expanduser(main)).resolve()
        if not path.exists():
            raise SideError(text, f"not a side: no such path, and not a {SYNTAX}")
        if not path.is_dir() or not is_checkout(path):
            raise SideError(text, f"{path} is not a torchrl checkout (a directory with setup.py "
                                  "or pyproject.toml and torchrl/__init__.py)")
        kind, value = "checkout", str(path)
    tensordict = ""
    for opt in opts:
        if tensordict:
            raise SideError(text, "tensordict given twice")
        tensordict = _tensordict_option(text, opt, kind == "nightly")
    return Spec(text, kind, value, tensordict)


def parse_sides(texts: Sequence[str]) -> list[Spec]:
    """Every side parsed (``parse_side``), at least two of them, none given twice."""
    specs = [parse_side(t) for t in texts]
    if len(specs) < 2:
        raise SideError(" ".join(texts) or "(none)", f"versions compares two or more sides "
                        f"(the first is the baseline), got {len(specs)}; a side is {SYNTAX}")
    seen = {}
    for spec in specs:
        key = (spec.kind, spec.value, spec.tensordict)
        if key in seen:
            raise SideError(spec.text, f"given twice (also as {seen[key]!r})")
        seen[key] = spec.text
    return specs


# --------------------------------------------------------------------------- uv and pins


def uv() -> str:
    path = shutil.which("uv")
    if not path:
        raise SideError("(all)", "building side environments needs `uv` on PATH "
                                 "(pip install uv)")
    return path


def uv_env() -> dict:
    """The environment uv runs in: ``installs.uv_environ`` (pip's wheelhouse, byte-compiled
    installs), outside any venv."""
    env = installs.uv_environ()
    env.pop("VIRTUAL_ENV", None)  # uv would install into the calling venv otherwise
    return env


def torch_requirement() -> str:
    """The torch every side gets: ``$RLGAUGE_TORCH`` or constraints.txt's pin."""
    try:
        return installs.torch_requirement()
    except LookupError as exc:
        raise SideError("(all)", str(exc)) from None


def constraints_text() -> str:
    """constraints.txt without its torchrl and tensordict pins (and without its torch pin when
    ``$RLGAUGE_TORCH`` names another torch): what every side is installed with."""
    return installs.constraints_text(drop=("torchrl", "tensordict"))


def extras_requirements(extras: Sequence[str] = ("run", "test")) -> list[str]:
    """The project's extras (pyproject.toml) without torch, torchrl and tensordict: what a
    side's environment needs besides its build."""
    import tomllib

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out = []
    for extra in extras:
        for req in data["project"]["optional-dependencies"][extra]:
            name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()
            if name not in {"torch", "torchrl", "tensordict"} and req not in out:
                out.append(req)
    return out


def _uv_error(text: str) -> str:
    """uv's explanation in one line: its "Because ..." sentence, else its last line."""
    flat = " ".join(text.split())
    m = re.search(r"(Because .*?)(?: And because|$)", flat)
    why = m.group(1) if m else (text.strip().splitlines() or ["no output"])[-1]
    why = re.sub(r"^[\s╰─▶x×]+", "", why).strip()
    return why if len(why) <= 400 else why[:397] + "..."


def explain_resolution(side: str, text: str) -> SideError:
    """A failed resolution as a SideError: another torch (the pin cannot move), a version the
    registry does not have, an unreachable registry, or uv's own reason."""
    flat = " ".join(text.split())
    torch = next((m for m in re.finditer(r"depends on (torch(?![-_a-z])[^,\s]*)", flat)
                  if not _pinned_torch_satisfies(m.group(1)[len("torch"):])), None)
    if torch:
        return SideError(side, f"incompatible: it needs {torch.group(1)}, and every side runs "
                               f"the pinned {torch_requirement()} (another torch would mean "
                               "another ~3 GB build; see README, \"your own torch\")")
    missing = re.search(r"there is no version of ([A-Za-z0-9_.-]+==[^\s,]+)", flat)
    if missing:
        return SideError(side, f"no {missing.group(1)} on the package registry (`pip index "
                               f"versions {missing.group(1).split('==')[0]}` lists them); a "
                               f"side is {SYNTAX}")
    if re.search(r"(?i)(failed to fetch|connect|dns|network|timed out)", flat):
        return SideError(side, f"could not reach the package registry: {_uv_error(text)}")
    return SideError(side, f"cannot be installed with the pinned set: {_uv_error(text)}")


def _pinned_torch_satisfies(spec: str) -> bool:
    """Does the pinned torch meet ``spec`` (``>=2.99``)? False when unknown: a requirement on
    torch in a failed resolution is then taken for its cause."""
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version

        pinned = re.split(r"==", torch_requirement(), maxsplit=1)[1].split("+")[0]
        return SpecifierSet(spec, prereleases=True).contains(Version(pinned))
    except Exception:
        return False


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _requirements(spec: Spec) -> list[str]:
    """What uv resolves for a registry or wheel side (besides torch)."""
    td_name = "tensordict-nightly" if spec.kind == "nightly" else "tensordict"
    if spec.kind == "release":
        reqs = [f"torchrl=={spec.value}"]
    elif spec.kind == "nightly":
        reqs = [f"torchrl-nightly=={spec.value}" if spec.value else "torchrl-nightly"]
    else:  # wheel
        dist = _WHEEL_RE.match(Path(spec.value).name).group("dist").replace("_", "-")
        reqs = [f"{dist} @ {Path(spec.value).as_uri()}"]
    if spec.tensordict.startswith("=="):
        reqs.append(f"{td_name}{spec.tensordict}")
    return reqs


def resolve(spec: Spec, *, workdir: Path) -> dict[str, str]:
    """The exact versions (``{"torchrl": ..., "tensordict": ..., "torch": ...}``, plus the
    distribution names) uv resolves for a release, nightly or wheel side with the pinned torch
    and constraints; SideError (``explain_resolution``) when it cannot. Needs the registry,
    builds nothing (``--no-build``)."""
    cons = workdir / "constraints.txt"
    cons.write_text(constraints_text())
    reqs = [torch_requirement(), *_requirements(spec)]
    index = os.environ.get("RLGAUGE_TORCH_INDEX")
    cmd = [uv(), "pip", "compile", "--python-version", python_version(), "--no-header",
           "--no-annotate", "--no-build", "--quiet", "-c", str(cons),
           *(["--extra-index-url", index] if index else []), "-"]
    try:
        proc = subprocess.run(cmd, input="\n".join(reqs) + "\n", capture_output=True,
                              text=True, env=uv_env(), timeout=600)
    except subprocess.TimeoutExpired:
        raise SideError(spec.text, "resolving it with uv took over 10 min (registry "
                                   "unreachable?)") from None
    if proc.returncode != 0:
        raise explain_resolution(spec.text, proc.stderr or proc.stdout)
    pins = {}
    for line in proc.stdout.splitlines():
        name, sep, version = line.strip().partition("==")
        if sep:
            pins[name.lower()] = version.split(";")[0].strip()
        elif " @ " in line:  # the wheel itself: name @ file:///...
            name = line.split(" @ ", 1)[0].strip().lower()
            pins[name] = _WHEEL_RE.match(Path(spec.value).name).group("version")
    out = {"torch": pins.get("torch", "")}
    for dist in ("torchrl", "tensordict"):
        for name in (dist, f"{dist}-nightly"):
            if name in pins:
                out[dist], out[f"{dist}_dist"] = pins[name], name
    if "torchrl" not in out or "tensordict" not in out:
        raise SideError(spec.text, f"uv resolved no torchrl/tensordict pair: {sorted(pins)}")
    return out


# --------------------------------------------------------------------------- checkouts


_SKIP_DIRS = {".git", "build", "dist", "__pycache__", ".nox", ".venv", ".eggs", ".tox",
              ".pytest_cache", ".mypy_cache", "node_modules"}
_SKIP_SUFFIXES = (".so", ".pyd", ".pyc", ".o")


def fingerprint(path: Path) -> str:
    """A checkout's state: ``git:<HEAD>:<hash of git status and git diff HEAD>`` in a git
    checkout, else ``stat:<hash of every source file's path, size and mtime>``."""
    path = Path(path)
    if (path / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            def git(*args: str) -> bytes:
                return subprocess.run(["git", "-C", str(path), *args], capture_output=True,
                                      check=True, timeout=120).stdout

            head = git("rev-parse", "HEAD").decode().strip()
            status = git("status", "--porcelain=v1", "-z")
            untracked = [n[3:] for n in status.decode(errors="replace").split("\0")
                         if n.startswith("??")]
            stats = [(n, *_stat(path / n)) for n in untracked]
            return f"git:{head}:{_digest(status, git('diff', 'HEAD'), stats)[:16]}"
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS
                             and not d.endswith(".egg-info"))
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            full = Path(dirpath) / name
            h.update(f"{full.relative_to(path)}\0{_stat(full)}\0".encode())
    return f"stat:{h.hexdigest()[:16]}"


def _stat(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _checkout_build_requires(path: Path) -> list[str]:
    """A checkout's ``[build-system] requires`` without torch (already installed, pinned) and
    cmake (torchrl's setup.py builds with torch's cpp_extension), plus setuptools and wheel."""
    import tomllib

    reqs = ["setuptools", "wheel"]
    with contextlib.suppress(OSError, ValueError, KeyError):
        data = tomllib.loads((path / "pyproject.toml").read_text())
        for req in data["build-system"]["requires"]:
            name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()
            if name not in {"torch", "cmake"} and req not in reqs:
                reqs.append(req)
    return reqs


# --------------------------------------------------------------------------- environments


@dataclass
class Build:
    """A side ready to measure: its interpreter and what is installed there."""

    spec: Spec
    name: str  # the report's column name and the runner's side name (unique)
    python: str
    versions: dict = field(default_factory=dict)  # torchrl, tensordict, torch, python (+ dists)
    env: str = ""  # the environment's directory ("" for an interpreter used as it is)
    how: str = ""  # "built in 75 s" / "reused (cached)" / ...
    ext: str = ""  # the C++ extension's state (harness.torchrl_ext.ensure's line)
    adaptations: list = field(default_factory=list)  # harness.compat's, at import

    def describe(self) -> str:
        v = self.versions
        return (f"torchrl {v.get('torchrl', '?')} (tensordict {v.get('tensordict', '?')}), "
                f"torch {v.get('torch', '?')}")


def _run_step(side: str, what: str, cmd: Sequence[str], *, env: dict | None = None,
              cwd: Path = ROOT, timeout: float = 3600, log: Path | None = None
              ) -> subprocess.CompletedProcess:
    """Run one build step; SideError naming the side, the step and the output's last line
    when it fails (the whole output is in ``log``)."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SideError(side, f"could not {what}: timed out after {timeout:.0f} s") from None
    except OSError as exc:
        raise SideError(side, f"could not {what}: {exc}") from None
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(map(str, cmd))}\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        out = proc.stderr.strip() or proc.stdout.strip() or "no output"
        if "pip" in cmd and ("Because" in out or "No solution" in out):
            raise explain_resolution(side, out)
        last = [ln for ln in out.splitlines() if ln.strip()][-1]
        hint = f" (log: {log})" if log else ""
        raise SideError(side, f"could not {what}: {last.strip()[:400]}{hint}")
    return proc


def side_env(extra: dict | None = None) -> dict:
    """The environment of a process in a side's interpreter: this checkout first on the path
    (its harness/, bench/, reference_impls/, tests/), one thread, quiet torchrl."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("RL_LOGGING_LEVEL", "WARNING")
    env.update(extra or {})
    return env


def _env_key(spec: Spec, pins: dict, states: dict) -> str:
    wheel = ""
    if spec.kind == "wheel":
        wheel = hashlib.sha256(Path(spec.value).read_bytes()).hexdigest()
    return _digest(ENV_FORMAT, spec.kind, spec.value, spec.tensordict, json.dumps(pins,
                   sort_keys=True), torch_requirement(), os.environ.get("RLGAUGE_TORCH_INDEX", ""),
                   constraints_text(), json.dumps(extras_requirements()), python_version(),
                   wheel, json.dumps(states, sort_keys=True))[:20]


def _read_marker(env: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((env / MARKER).read_text())
    return {}


def _checkout_states(spec: Spec) -> dict:
    states = {}
    if spec.kind == "checkout":
        states["torchrl"] = fingerprint(Path(spec.value))
    if spec.tensordict and not spec.tensordict.startswith("=="):
        states["tensordict"] = fingerprint(Path(spec.tensordict))
    return states


def ensure_env(spec: Spec, pins: dict, *, envs_dir: Path = ENVS_DIR, rebuild: bool = False,
               progress: Callable[[str], None] | None = None) -> tuple[Path, str]:
    """The side's environment (its directory, and how it was had: built or reused): reused
    when its marker holds this key (``_env_key``; for a checkout, the state before or after
    its last build), else built afresh in place. SideError when a step fails."""
    say = progress or (lambda _m: None)
    env = envs_dir / spec.slug
    states = _checkout_states(spec)
    key = _env_key(spec, pins, states)
    with atomic.locked(envs_dir / f".{spec.slug}.lock"):
        marker = _read_marker(env)
        python = env / "bin" / "python"
        if not rebuild and python.exists() and key in marker.get("keys", ()):
            return env, "reused (cached)"
        say(f"{spec.text}: building its environment in {env}" + (
            " (compiling its C++ extension: 1-3 min)" if spec.kind == "checkout" else ""))
        t0 = time.perf_counter()
        if env.exists():
            shutil.rmtree(env)
        log = envs_dir / f"{spec.slug}.build.log"  # every step's output (beside: uv venv
        log.write_text("")  # wants an empty directory)
        _build(spec, pins, env, log=log)
        keys = [key]
        if states:  # the build may have written into the checkout: its state now counts too
            keys.append(_env_key(spec, pins, _checkout_states(spec)))
        atomic.write_json(env / MARKER, {
            "keys": keys, "side": spec.text, "kind": spec.kind, "pins": pins,
            "states": states, "built": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=1)
        return env, f"built in {time.perf_counter() - t0:.0f} s"


def _build(spec: Spec, pins: dict, env: Path, *, log: Path) -> None:
    python = str(env / "bin" / "python")
    cons = log.with_name(f"{env.name}.constraints.txt")
    cons.write_text(constraints_text())
    index = os.environ.get("RLGAUGE_TORCH_INDEX")
    idx = ["--extra-index-url", index] if index else []
    u, uenv = uv(), uv_env()
    pip = [u, "pip", "install", "--quiet", "--python", python, "-c", str(cons), *idx]
    step = lambda what, cmd, **kw: _run_step(spec.text, what, cmd, env=uenv,  # noqa: E731
                                             log=log, **kw)
    step("create its virtual environment",
         [u, "venv", "--quiet", "--python", sys.executable, str(env)])
    # torch first, on its own, so that nothing later can re-resolve it
    step("install the pinned torch", [*pip, torch_requirement()])
    deps = extras_requirements()
    if spec.kind in ("release", "nightly", "wheel"):
        build = [f"{pins['torchrl_dist']}=={pins['torchrl']}" if spec.kind != "wheel"
                 else f"{pins['torchrl_dist']} @ {Path(spec.value).as_uri()}",
                 f"{pins['tensordict_dist']}=={pins['tensordict']}"]
        step("install it with the pinned set", [*pip, "--no-build", *deps, *build])
    else:  # checkout: compiled here against the installed torch, no build isolation
        paths = [Path(spec.value)]
        tensordict = []
        if spec.tensordict.startswith("=="):
            tensordict = [f"tensordict{spec.tensordict}"]
        elif spec.tensordict:
            paths.insert(0, Path(spec.tensordict))
        build_reqs = [r for p in paths for r in _checkout_build_requires(p)]
        step("install the pinned set and the checkout's build requirements",
             [*pip, *deps, *dict.fromkeys(build_reqs)])
        jobs = str(max(1, len(os.sched_getaffinity(0))))
        benv = {**uenv, "MAX_JOBS": uenv.get("MAX_JOBS", jobs), "USE_CUDA": "0",
                "BUILD_WITH_CUDA": "0"}
        # --no-cache: uv would reuse a wheel built from an older state of the directory;
        # --no-sources: a checkout's [tool.uv.sources] (torchrl's points tensordict at its git
        # main) must not replace the registry's release its requirement names
        _run_step(spec.text, "build and install the checkout",
                  [*pip, "--no-build-isolation", "--no-cache", "--no-sources",
                   *map(str, paths), *tensordict], env=benv, log=log, timeout=5400)


def probe(spec: Spec, python: str, modules: Sequence[str] = ()) -> dict:
    """In the side's interpreter: make torchrl's C++ extension load (``ext``), then import
    what rlgauge uses with ``harness.compat`` applied (``probe``). The versions, the
    extension's line and the adaptations at import; SideError (an API rlgauge cannot adapt
    to, an extension that cannot be built against this torch) otherwise."""
    env = side_env()
    ext = _run_step(spec.text, "make torchrl's C++ extension load against this torch",
                    [python, "-m", "harness.sides", "ext"], env=env, timeout=1800)
    try:
        proc = subprocess.run([python, "-m", "harness.sides", "probe", *modules],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SideError(spec.text, f"could not import what rlgauge uses: {exc}") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = [ln for ln in (proc.stderr.strip() or "no output").splitlines() if ln.strip()]
        raise SideError(spec.text, f"an API rlgauge cannot adapt to (harness/compat.py): "
                                   f"importing what rlgauge uses fails: {err[-1].strip()}")
    info = json.loads(lines[-1])
    info["ext"] = (ext.stdout.strip().splitlines() or [""])[-1]
    return info


def _unique_name(spec: Spec, versions: dict, taken: set) -> str:
    tv = versions.get("torchrl", "?")
    if spec.kind == "release":
        name = f"torchrl {tv}"
    elif spec.kind == "nightly":
        name = f"nightly {tv}"
    elif spec.kind == "checkout":
        state = _checkout_states(spec).get("torchrl", "")
        tag = state.split(":")[1][:8] if state.startswith("git:") else state[5:13]
        name = f"checkout {Path(spec.value).name}@{tag}"
    elif spec.kind == "wheel":
        name = f"wheel {tv}"
    else:
        name = spec.label
    if spec.tensordict:
        td = spec.tensordict[2:] if spec.tensordict.startswith("==") else Path(
            spec.tensordict).name
        name += f" + tensordict {td}"
    base, n = name, 2
    while name in taken:
        name, n = f"{base} #{n}", n + 1
    taken.add(name)
    return name


def prepare(texts: Sequence[str], *, envs_dir: Path = ENVS_DIR, rebuild: bool = False,
            modules: Sequence[str] = (), progress: Callable[[str], None] | None = None
            ) -> list[Build]:
    """Every side ready to measure, or SideError for the first that cannot be (in order:
    parsed, all; resolved against the registry, all; then each environment built or reused
    and probed). A release side identical to this interpreter's installed pair (the nox
    session's pinned set) uses this interpreter."""
    import tempfile

    say = progress or (lambda _m: None)
    specs = parse_sides(texts)
    resolved: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="rlgauge-sides-") as tmp:
        for spec in specs:
            if spec.kind in ("release", "nightly", "wheel"):
                resolved[spec.text] = resolve(spec, workdir=Path(tmp))
    for text, pins in resolved.items():  # said once every side resolved: a bad one is 1 line
        say(f"{text}: torchrl {pins['torchrl']}, tensordict {pins['tensordict']}")
    builds, taken = [], set()
    for spec in specs:
        pins = resolved.get(spec.text, {})
        if spec.kind == "python":
            python, env_dir, how = spec.value, "", "used as it is"
        elif spec.kind == "release" and _is_here(pins):
            python, env_dir, how = sys.executable, "", "this session's environment"
        else:
            env_path, how = ensure_env(spec, pins, envs_dir=envs_dir, rebuild=rebuild,
                                       progress=say)
            python, env_dir = str(env_path / "bin" / "python"), str(env_path)
        info = probe(spec, python, modules)
        versions = {k: info.get(k, "") for k in ("torchrl", "tensordict", "torch", "python")}
        build = Build(spec, _unique_name(spec, versions, taken), python, versions, env_dir, how,
                      info.get("ext", ""), info.get("adaptations", []))
        say(f"{spec.text}: {build.name}: {build.describe()}; env {how}")
        builds.append(build)
    return builds


def _is_here(pins: dict) -> bool:
    """Does this interpreter hold exactly ``pins``' torchrl and tensordict (as releases)?"""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return (pins.get("torchrl_dist") == "torchrl" and pins.get("tensordict_dist") ==
                "tensordict" and version("torchrl") == pins["torchrl"] and
                version("tensordict") == pins["tensordict"])
    except (PackageNotFoundError, KeyError):
        return False


# --------------------------------------------------------------------------- learning check


@dataclass(frozen=True)
class LearningRun:
    """One short real training run and the return that says it learned: seed 0 of the
    pinned torchrl reaches ``typical`` (measured), an untrained policy ``untrained``."""

    algorithm: str
    backend: str
    task: str
    frames: int
    threshold: float
    typical: str
    untrained: str


#: one per reference algorithm, 10-50 s each on one core of the 2-core VM. Measured with
#: torchrl 0.14.1 (``python -m harness train ALGORITHM --frames N --seed S``, the deterministic
#: policy's final return): ``typical`` over seeds 0, 1, 2, ``untrained`` after 1000 frames
#: (seed 0); each threshold sits under the worst seed and well over the untrained policy
LEARNING_RUNS = (
    LearningRun("ppo", "gymnasium", "cartpole", 20_000, 100.0, "404, 179, 485", "16"),
    LearningRun("dqn", "gymnasium", "cartpole", 15_000, 50.0, "103, 171, 182", "11"),
    LearningRun("ddpg", "gymnasium", "pendulum", 4_000, -1000.0, "-685, -254, -691", "-1464"),
    LearningRun("recurrent_dqn", "gymnasium", "cartpole-novel", 30_000, 40.0, "195, 73, 275",
                "10"),
    LearningRun("recurrent_ppo", "gymnasium", "cartpole-novel", 16_000, 70.0, "235, 144, 287",
                "24"),
)
#: code run in a side's interpreter: harness.compat applied, then the rest of argv
_WITH_COMPAT = ("import runpy, sys; from harness import compat; compat.apply(); "
                "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', "
                "alter_sys=True)")


def probe_test_files(root: Path = ROOT) -> list[str]:
    """The test files that hold probe learning tests (collecting only those: another file's
    import failing on an old torchrl must not hide them)."""
    return sorted(str(p.relative_to(root)) for p in (root / "tests").glob("test_*.py")
                  if "mark.probe_learning" in p.read_text())


@dataclass
class Learning:
    """A side's learning check: probe tests and runs; ``broken`` with the reasons."""

    probe: dict = field(default_factory=dict)  # passed, failed [names], skipped, error
    runs: list = field(default_factory=list)  # per LearningRun: final_return, ok, error, s
    broken: bool = False
    why: list = field(default_factory=list)
    seconds: float = 0.0


def _junit(path: Path) -> dict:
    import xml.etree.ElementTree as ET

    out = {"passed": 0, "failed": [], "skipped": 0, "error": ""}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        out["error"] = f"no test report ({exc})"
        return out
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        if bad is not None:
            why = " ".join((bad.get("message") or "").split())
            out["failed"].append(f"{name} ({why[:160]})" if why else name)
        elif case.find("skipped") is not None:
            out["skipped"] += 1
        else:
            out["passed"] += 1
    return out


def _final_return(results_dir: Path) -> tuple[float | None, str]:
    """(the run's ``final_return``, "") from the results files under ``results_dir`` (the
    results store's own reader, ``harness.results.load_many``), else (None, why)."""
    from harness import results

    frame, errors = results.load_many(results_dir)
    rows = frame[(frame["metric"] == "final_return") & (frame["status"] == "ok")]
    if len(rows):
        return float(rows["value"].iloc[-1]), ""
    why = "no final_return recorded"
    return None, f"{why} ({errors[0]})" if errors else why


def learning_check(builds: Sequence[Build], workdir: Path, *,
                   runs: Sequence[LearningRun] = LEARNING_RUNS, probe_tests: bool = True,
                   workers: int | None = None, timeout: float = 1200.0,
                   compat_logs: dict[str, Path] | None = None,
                   progress: Callable[[str], None] | None = None) -> dict[str, Learning]:
    """Every side's learning check (``Learning`` per build name), its jobs (the probe tests,
    each run) in parallel, one per CPU; ``compat_logs``: per build name, the file its
    ``harness.compat`` adaptations are recorded in (``$RLGAUGE_COMPAT_LOG``)."""
    from concurrent.futures import ThreadPoolExecutor

    say = progress or (lambda _m: None)
    jobs = []
    for i, b in enumerate(builds):
        base = workdir / f"side{i}"
        base.mkdir(parents=True, exist_ok=True)
        if probe_tests:
            xml = base / "probe.xml"
            jobs.append((b.name, "probe", xml, [
                b.python, "-c", _WITH_COMPAT, "pytest", "-m", "probe_learning",
                "--benchmark-disable", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
                *probe_test_files()]))
        for r in runs:
            out = base / r.algorithm
            jobs.append((b.name, r, out, [
                b.python, "-c", _WITH_COMPAT, "harness", "train", r.algorithm, "--backend",
                r.backend, "--task", r.task, "--frames", str(r.frames), "--seed", "0",
                "--threads", "1", "--out", str(out)]))

    def work(job):
        name, what, out, cmd = job
        t0 = time.perf_counter()
        try:
            log = (compat_logs or {}).get(name)
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                                  env=side_env({"RLGAUGE_COMPAT_LOG": str(log)} if log else {}),
                                  timeout=timeout)
            tail = (proc.stderr.strip() or proc.stdout.strip() or "").splitlines()
            err = "" if proc.returncode == 0 else (tail[-1] if tail else f"exit "
                                                   f"{proc.returncode}")
            if proc.returncode != 0 and not isinstance(what, str):
                (out.parent / f"{what.algorithm}.log").write_text(proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired:
            err = f"timed out after {timeout:.0f} s"
        return job, err, time.perf_counter() - t0

    workers = workers or max(1, min(len(jobs), len(os.sched_getaffinity(0))))
    say(f"learning check: {len(jobs)} jobs over {len(builds)} side(s), {workers} at a time")
    results = {b.name: Learning() for b in builds}
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (name, what, out, _cmd), err, seconds in pool.map(work, jobs):
            res = results[name]
            if what == "probe":
                res.probe = _junit(out)
                if err and not res.probe["failed"] and not res.probe["passed"]:
                    res.probe["error"] = err
                res.probe["seconds"] = seconds
                say(f"{name}: probe tests: {res.probe['passed']} passed, "
                    f"{len(res.probe['failed'])} failed")
            else:
                value, missing = _final_return(out) if not err else (None, "")
                ok = value is not None and value >= what.threshold
                res.runs.append({**asdict(what), "final_return": value, "ok": ok,
                                 "error": err or missing, "seconds": seconds})
                got = f"error: {err}" if err else (
                    f"return {value:.1f}" if value is not None else "no final_return")
                say(f"{name}: {what.algorithm} on {what.backend}/{what.task}: {got}")
    for res in results.values():
        res.seconds = time.perf_counter() - t0
        if res.probe:
            if res.probe.get("error"):
                res.why.append(f"probe tests did not run: {res.probe['error']}")
            elif res.probe["failed"]:
                res.why.append(f"{len(res.probe['failed'])} probe test(s) failed: "
                               f"{', '.join(res.probe['failed'])}")
        for r in res.runs:
            if r["error"]:
                res.why.append(f"{r['algorithm']} run failed: {r['error']}")
            elif not r["ok"]:
                res.why.append(f"{r['algorithm']} returned {r['final_return']:.1f} < "
                               f"{r['threshold']:g} on {r['backend']}/{r['task']}")
        res.broken = bool(res.why)
    return results


# --------------------------------------------------------------------------- in a side's env


def _ext_main() -> int:
    """``python -m harness.sides ext``: ``harness.torchrl_ext.ensure`` in a side's
    environment; a nightly build's distribution is ``torchrl-nightly``, which the extension's
    cache key reads under the release's name."""
    import importlib.metadata as md

    original = md.version

    def version(name: str) -> str:
        try:
            return original(name)
        except md.PackageNotFoundError:
            if name in ("torchrl", "tensordict"):
                return original(f"{name}-nightly")
            raise

    md.version = version
    from harness import torchrl_ext

    try:
        print(torchrl_ext.ensure())
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


#: what ``probe`` imports besides the bench modules: every reference algorithm, the matrix
PROBE_MODULES = ("reference_impls.ppo", "reference_impls.dqn", "reference_impls.ddpg",
                 "reference_impls.recurrent_dqn", "reference_impls.recurrent_ppo",
                 "harness.training", "harness.runs")


def _probe_main(modules: Sequence[str]) -> int:
    """``python -m harness.sides probe [MODULE...]``: apply harness.compat, import torchrl,
    tensordict, the reference algorithms and ``MODULE``s (bench modules); print one JSON line
    (versions, adaptations). A failed import exits 1 with its error as the last line."""
    import importlib
    import platform

    from harness import compat

    try:
        compat.apply()
        import tensordict  # noqa: F401
        import torch
        import torchrl  # noqa: F401

        for module in (*PROBE_MODULES, *modules):
            importlib.import_module(module)
        compat.collector_class("sync")
    except Exception as exc:
        print(f"{type(exc).__name__}: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(json.dumps({**compat.versions(), "torch": str(torch.__version__),
                      "python": platform.python_version(),
                      "adaptations": compat.adaptations()}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ext"]:
        return _ext_main()
    if argv[:1] == ["probe"]:
        return _probe_main(argv[1:])
    print("usage: python -m harness.sides ext | probe [MODULE...]  (steps run inside a side's "
          "environment by `python -m harness.gate versions`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
