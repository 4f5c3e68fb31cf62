"""nox sessions: ``nox -l`` lists them. Logic lives in the package; sessions only install and call.

Every session installs the pinned dependency set (names: pyproject extras; versions:
constraints.txt) into its own venv, then makes torchrl's C++ extension load
(``python -m harness build-ext``, cached per torch/torchrl pair).

Environment variables:
    RLGAUGE_TORCH        torch requirement replacing the CPU pin, e.g. ``torch==2.13.0+cu130``,
                         ``torch==2.12.1`` or a path/URL to a wheel (README: "your own torch")
    RLGAUGE_TORCH_INDEX  extra package index for that torch, e.g.
                         https://download.pytorch.org/whl/cu130
    RLGAUGE_MACHINE      machine name recorded with results (default: hostname)
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]

PYTHON = "3.11"
ROOT = Path(__file__).parent


def _load(name: str):
    """harness/<name>.py, loaded by path: nox runs outside the project's venv (provenance and
    installs import nothing but the standard library at import time)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_rlgauge_{name}",
                                                  ROOT / "harness" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ASV_MACHINE = _load("provenance").machine_name()  # the machine name every result is filed under
INSTALLS = _load("installs")  # constraints.txt's pins; pip's wheelhouse handed to uv
CONSTRAINTS = INSTALLS.CONSTRAINTS

# uv gets pip's wheelhouse (else `torch==2.13.0` is the registry's ~3 GB CUDA build) and
# byte-compiles on install (harness/installs.py says why).
os.environ.update(INSTALLS.uv_environ())
os.environ.setdefault("MUJOCO_GL", "egl")  # headless MuJoCo / dm_control (Mesa EGL, no GPU)
os.environ.setdefault("RL_LOGGING_LEVEL", "WARNING")  # torchrl logs each buffer init at INFO


def _constraints(session: nox.Session) -> str:
    """constraints.txt, minus its torch pin when RLGAUGE_TORCH names another torch."""
    if not os.environ.get("RLGAUGE_TORCH"):
        return str(CONSTRAINTS)
    path = Path(session.create_tmp()) / "constraints-own-torch.txt"
    path.write_text(INSTALLS.constraints_text())
    return str(path)


def install(session: nox.Session, *extras: str) -> None:
    """Pinned deps (torch first) + the project editable with its extras + torchrl's extension."""
    constraints = _constraints(session)
    own_torch = os.environ.get("RLGAUGE_TORCH")
    index = os.environ.get("RLGAUGE_TORCH_INDEX")
    torch_args = ["--extra-index-url", index] if index else []
    # torch first, on its own, so that nothing later can re-resolve it
    session.install("-c", constraints, *torch_args, INSTALLS.torch_requirement())
    session.install("-c", constraints, "-e", f".[{','.join(('run', *extras))}]")
    if not own_torch and not index:
        # fail fast (no torch import, ~0.1 s) if a CUDA build slipped in anyway
        session.run("python", "-c", "import importlib.metadata as m; v = m.version('torch'); "
                    "assert v.endswith('+cpu'), f'expected the pinned CPU torch, got {v}; set "
                    "RLGAUGE_TORCH to use your own build'", silent=True)
    session.run("python", "-m", "harness", "build-ext")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Fast test suite (slow learning tests excluded); `-- ARGS` replaces the pytest args."""
    install(session, "test", "peers")
    args = session.posargs or ["-m", "not slow", "--benchmark-disable", "-q"]
    session.run("pytest", *args)


@nox.session(python=PYTHON, default=False)
def kernels(session: nox.Session) -> None:
    """The Triton GAE / TD(λ) kernel's tests (marker triton) under Triton's interpreter on CPU
    tensors (no GPU needed); its own session because triton installs ~1 GB. `-- ARGS` are added
    to pytest's."""
    install(session, "test", "kernels")
    session.run("pytest", "-m", "triton", "--benchmark-disable", "-q", "-p", "no:cacheprovider",
                *session.posargs, env={"TRITON_INTERPRET": "1"})


@nox.session(python=PYTHON, default=False)
def learning(session: nox.Session) -> None:
    """Slow published-threshold learning tests, rlgauge and SB3, 3 seeds; results/learning/."""
    install(session, "test", "peers")
    session.run("pytest", "-m", "slow", "tests/test_learning.py", "-s", "-q", "-rs",
                *session.posargs)


@nox.session(python=PYTHON, default=False)
def seeds(session: nox.Session) -> None:
    """Every probe learning test (marker probe_learning) over seeds 0-9: pass counts and the
    worst slack per check, in results/learning/probe-seeds-<machine>.md (+ .jsonl); `-- ARGS`
    are added to pytest's (`-- --learn-seeds 0-4 -k ppo`)."""
    install(session, "test")
    out = ROOT / "results" / "learning" / f"probe-seeds-{ASV_MACHINE}.jsonl"
    # one token per option: pytest's pre-parse (before conftest.py adds these options) would
    # take an existing path after a separate "--margins-out" for a test path
    session.run("pytest", "-m", "probe_learning", "--learn-seeds=0-9", f"--margins-out={out}",
                "--benchmark-disable", "-q", "-p", "no:cacheprovider", *session.posargs)


def _asv_machine(session: nox.Session) -> None:
    """Non-interactive `asv machine` with real fields (a bare --machine stores only the name)."""
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    session.run("asv", "machine", "--yes", "--machine", ASV_MACHINE,
                "--os", f"{platform.system()} {platform.release()}", "--arch", platform.machine(),
                "--cpu", cpu, "--num_cpu", str(os.cpu_count()), "--ram", str(ram), silent=True)


#: the training grids of `nox -s bench` (quick, the default) and `nox -s bench -- --full`
MATRIX = {
    "quick": ["--algorithms", "all", "--backends", "gymnasium,dm_control", "--quick",
              "--seeds", "2"],
    "full": ["--algorithms", "all", "--backends", "gymnasium,dm_control,envpool",
             "--devices", "all", "--seeds", "3"],
}
#: how the asv suite runs in each grid: quick takes 3 samples of one round per benchmark and
#: leaves out what the quick matrix measures anyway (bench_training, bench_recipes'
#: RecipeTraining: short training runs), the spawn-heavy MultiSync/MultiAsync collectors (~2-4
#: min of worker start-up), the per-unit restatements of timed loops
#: (EnvStep.track_us_per_step, Collect.track_frames_per_s, PixelStep.track_us_per_step: the
#: same loop timed again), the one-off costs (Construct.time_construct) and the GAE kernels'
#: accuracy (track_max_abs_error: no timing; tests/test_gae_kernel.py checks it). Measured on
#: the idle VM: 7 min 7 s with only the first two left out, 6 min 27 s without RecipeTraining.
#: asv matches -b against names with their parameters appended, so no "$" anchors.
#: full runs everything with each benchmark's own repeat/rounds (10 min 52 s, commit 1a21760).
ASV_ARGS = {
    "quick": ["-a", "repeat=3", "-a", "rounds=1",
              "-b", r"^(?!bench_training\.|bench_collectors\.MultiCollect|"
                    r"bench_recipes\.RecipeTraining|bench_collectors\.Construct\.|"
                    r".*\.track_(us_per_step|frames_per_s|max_abs_error))"],
    "full": [],
}


def _localize_dashboard(session: nox.Session) -> None:
    """Point what `asv publish` wrote at the vendored copies of its CDN assets (works offline);
    fails naming any URL on another host that nothing vendored replaces."""
    session.run("python", "-m", "harness", "dashboard", "localize", "results/html")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """asv suite (results/asv, dashboard results/html, table results/bench/<machine>.md), then
    the training matrix (quick grid; `-- --full` for the long one) and its report under
    results/report/<machine>-<grid>/."""
    install(session, "bench")
    _asv_machine(session)
    pos = list(session.posargs)
    if pos and not pos[0].startswith("-"):  # an explicit asv subcommand: `-- compare A B`
        session.run("asv", *pos)
        if pos[0] == "publish":
            _localize_dashboard(session)
        return
    grid = "full" if "--full" in pos else "quick"
    pos = [p for p in pos if p != "--full"]
    # --python=same measures this venv (where the project is installed editable); results of an
    # existing environment are saved only with --set-commit-hash.
    head = session.run("git", "rev-parse", "HEAD", external=True, silent=True).strip()
    session.run("asv", "run", "--python=same", "--set-commit-hash", head,
                "--machine", ASV_MACHINE, "--show-stderr", *ASV_ARGS[grid], *pos)
    session.run("asv", "publish", silent=True)
    _localize_dashboard(session)
    table = ROOT / "results" / "bench" / f"{ASV_MACHINE}.md"
    components = ROOT / "results" / "bench" / f"{ASV_MACHINE}-components.md"
    session.run("python", "-m", "harness", "asv-table", "results/asv", "--machine", ASV_MACHINE,
                "--out", str(table), "--components-out", str(components))
    html = ROOT / "results" / "html" / "index.html"
    # the grid's runs live per commit (re-running at the same commit resumes; a new commit
    # starts afresh); the report has a stable path
    cells = ROOT / "results" / "matrix" / ASV_MACHINE / f"{head[:12]}-{grid}"
    report = ROOT / "results" / "report" / f"{ASV_MACHINE}-{grid}"
    session.run("python", "-m", "harness", "run", *MATRIX[grid], "--out", str(cells),
                "--report-dir", str(report))
    session.log(f"asv dashboard: {html}  (offline too; serve it with `asv preview`: from "
                "file:// browsers refuse its fetch of index.json)")
    session.log(f"asv table of this run: {table}; components beside their floors: "
                f"{components}")
    session.log(f"asv raw results: {ROOT / 'results' / 'asv' / ASV_MACHINE}")
    session.log(f"training matrix report: {report / 'report.md'} (and .csv, .html, plots/)")
    session.log(f"training matrix runs: {cells}")


@nox.session(python=PYTHON, default=False)
def ray(session: nox.Session) -> None:
    """The matrix's Ray executor on a local Ray and on a multi-node Ray cluster on this host,
    every process on 127.0.0.1 (``tests/ray_cluster.py``): cells spread over the nodes, a node
    killed mid-grid, the driver killed and resumed, nodes with another install, the one-line
    errors. Ray is a large optional dependency, so these tests have their own session."""
    install(session, "test", "ray")
    session.run("pytest", "tests/test_matrix_ray.py", "-q", *session.posargs)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff over the package, benchmarks, tests and this file."""
    session.install("-c", str(CONSTRAINTS), "ruff")
    session.run("ruff", "check", "harness", "reference_impls", "bench", "tests", "noxfile.py",
                *session.posargs)


# --------------------------------------------------------------------------- regression gate


@nox.session(python=PYTHON)
def regress(session: nox.Session) -> None:
    """Regression gate: `-- [BASE] [HEAD]` (default: merge base with main, HEAD) measured
    interleaved in this job; exit 1 on a significant slowdown beyond the threshold.
    `-- -b REGEX` selects benchmarks, `-- --save-baseline` / `-- --against-baseline` use
    results/baseline/<machine>.csv, `-- --history N` measures each of the last N commits of
    main against its parent and names those with a step (pairs kept in results/gate/history/,
    reused on reruns). Needs full git history (see README)."""
    install(session)
    session.run("python", "-m", "harness.gate", "regress", *session.posargs)


@nox.session(python=PYTHON, default=False)
def gate_validity(session: nox.Session) -> None:
    """Measure the gate itself (~1.5 h for the default selection on 2 cores, not in CI): noise
    controls, A/A false alarms, injected 5/10/20% slowdowns ->
    results/gate/{noise,validity}-<machine>.md. `-- validity ARGS` or `-- noise ARGS` runs one
    part; `-- validity -b REGEX` measures other cases."""
    install(session)
    pos = list(session.posargs)
    if pos and pos[0] in {"noise", "validity"}:
        session.run("python", "-m", "harness.gate", *pos)
        return
    session.run("python", "-m", "harness.gate", "noise", *pos)
    session.run("python", "-m", "harness.gate", "validity", *pos)


@nox.session(python=PYTHON, default=False)
def versions(session: nox.Session) -> None:
    """torchrl builds side by side: `-- A B [C ...]`, each a release (`torchrl==0.13.3`),
    `nightly`, a torchrl source checkout (PATH) or a wheel (FILE.whl); the first is the
    baseline (default: torchrl==0.13.3 torchrl==0.14.1). Each side gets its own cached venv
    (.nox/versions-sides/) with torch as pinned, a learning check, then the gate's default
    selection timed interleaved -> results/gate/versions-<machine>.md (tables, learning, API
    differences, a reproduction per regression). A side that cannot run here: one line, exit
    2. `-- --help` for the forms and options (`-b REGEX`, `--rounds`, `--no-learning`)."""
    install(session, "test")  # a side equal to this venv's pinned set measures in it
    try:
        session.run("python", "-m", "harness.gate", "versions", *session.posargs)
    except nox.command.CommandFailed as exc:
        # nox exits 1 whatever failed: keep the command's own code (2: a side refused, in one
        # line; 1: --fail-on-regression; 3: a worker failed)
        if exc.return_code in (1, 2, 3):
            raise SystemExit(exc.return_code) from None
        raise
