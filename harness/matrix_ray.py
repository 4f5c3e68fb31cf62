"""The matrix on Ray: the same cells, files and resume rules as ``harness.matrix``, with each
cell a Ray task, for grids that outgrow one machine.

Connecting (``check`` then ``connect``; one ``UsageError`` line, exit 2, before any cell). ``ray``
must import; ``$RAY_ADDRESS`` (the head's ``HOST:PORT``, as ``ray start --head`` prints it) must
accept a TCP connection and answer as a gRPC server within 3 s each, and ``ray.init`` gets one
round (~35 s, not Ray's twenty) to join; without it a local Ray is started. A loopback address (or
the local Ray) keeps every Ray process of this driver on 127.0.0.1: Ray otherwise swaps
127.0.0.1 for the machine's own address (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own
switch, turns that off). A cell needs ``threads`` CPUs (and, with a memory cap, that much of a
node's ``memory`` resource) on one node: a cluster whose nodes are all smaller is refused.

Code and versions. The driver ships a snapshot of its own ``harness`` and ``reference_impls``
to every worker as the job's ``runtime_env`` ``working_dir`` (not ``py_modules``: without a
working_dir Ray puts the driver's directory first on the workers' path, where a checkout at the
same path shadows the shipped code), so a node runs the driver's code whatever its checkout
holds; what each node must have installed is everything else, at the driver's versions (``pip
install -c constraints.txt -e '.[run,ray]'``: torch, torchrl, tensordict, the env backends, ray,
with the driver's Python; ``.py`` plugins named in ``$RLGAUGE_PLUGINS`` at the same absolute
path). Before any cell, every node that can take a cell runs one warm-up task per cell slot
(imports torchrl once per Ray worker, outside every cell's clock) that reports its
``fingerprint`` -- Python, ``VERSIONED`` packages, a hash of the shipped code -- and imports
torch/tensordict/torchrl and the plugins. A node that differs from the driver or cannot import
them stops the command: one line per node. Every cell task checks its node's fingerprint against
the driver's again before it runs (a node reinstalled mid-grid: a ``failed`` row, the cell not
run), and the driver compares the fingerprint each task returns before it records anything.

Placement. The driver places each cell itself (``NodeAffinitySchedulingStrategy``, hard), on
the node with the most free slots (CPUs // threads), then the fewest cells so far, so cells
spread over the nodes and the driver knows where each one runs; at most ``workers`` (default:
every slot) at once. Results are written by the driver only (tasks return records; they never
see ``--out``), once per cell, atomically, exactly as the local executor writes them;
``RayOutcome.nodes`` says where each ran. Nodes that join mid-grid are checked the same way,
then used. The head (GCS) must survive the grid.

Failures. A node lost while a cell runs on it (``NodeDiedError``, or any task error on a node
no longer alive): the cell is a ``failed`` row naming the node -- not re-run automatically,
because a cell may be what took its node down and a benchmark cell runs at most once per
command; ``--retry-failed`` re-runs it. A cell placed on a node that died before the cell
started (``TaskUnschedulableError``) never ran: it goes back to the queue. A crash kills only
that task's worker (``WorkerCrashedError``: a failed row); a task past the time limit (counted
from its submission) is cancelled with ``force=True`` (a timeout row); ``max_retries=0``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness import matrix
from harness.errors import UsageError

#: installed packages whose versions must match the driver's on every node (besides Python and
#: the shipped code's hash)
VERSIONED = ("torch", "torchrl", "tensordict", "gymnasium", "dm_control", "numpy", "ray")
#: the project's packages the driver ships to the workers (``runtime_env`` ``working_dir``)
SHIPPED = ("harness", "reference_impls")
#: modules a worker must import; the rest of ``matrix.PRELOAD`` is imported where installed
REQUIRED_IMPORTS = ("torch", "tensordict", "torchrl")
#: Ray's switch that keeps ``get_node_ip_address`` on 127.0.0.1 (set for loopback clusters)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
CONNECT_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 300.0
REFRESH_S = 2.0
INSTALL = "pip install -c constraints.txt -e '.[run,ray]'"


# --------------------------------------------------------------------------- checks


def check() -> None:
    """UsageError unless ``ray`` imports here and ``$RAY_ADDRESS`` (when set) is a ``HOST:PORT``
    that accepts a TCP connection. Fast: nothing is started."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install -c constraints.txt -e '.[ray]' "
                         "(or use --executor local)") from None
    address = _address()
    if address is None:
        return
    host, port = _host_port(address)
    try:
        grpc = _answers_grpc(host, port)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"RAY_ADDRESS={address!r}: no Ray head answers there ({why}); start "
                         f"one with 'ray start --head' and set RAY_ADDRESS to the HOST:PORT it "
                         f"prints, or unset RAY_ADDRESS for a local Ray") from None
    if not grpc:
        raise UsageError(f"RAY_ADDRESS={address!r}: something listens there but it is not a Ray "
                         f"head (no gRPC answer); set RAY_ADDRESS to the HOST:PORT that 'ray "
                         f"start --head' prints, or unset it for a local Ray")


def _answers_grpc(host: str, port: int) -> bool:
    """Whether ``host:port`` accepts a TCP connection (OSError if not) and answers HTTP/2's
    client preface with a SETTINGS frame, as a Ray head's GCS (a gRPC server) does: seconds,
    where ``ray.init`` would retry for ~35 s. True without asking under ``RAY_USE_TLS``."""
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S) as conn:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return True
        conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        head = b""
        try:
            while len(head) < 9 and (chunk := conn.recv(9 - len(head))):
                head += chunk
        except (TimeoutError, ConnectionError):
            pass
    return len(head) == 9 and head[3] == 0x4


def _address() -> str | None:
    """``$RAY_ADDRESS``, or None (start a local Ray)."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    return None if address in ("", "local") else address


def _host_port(address: str) -> tuple[str, int]:
    bad = (f"RAY_ADDRESS={address!r} is not a Ray head's address; valid: HOST:PORT as "
           f"'ray start --head' prints it (e.g. 10.0.0.5:6379), or unset it for a local Ray")
    if "://" in address:  # ray:// (Ray Client) cannot place tasks on nodes
        raise UsageError(bad)
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(bad)
    return host, int(port)


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host == "::1" or host.startswith("127.")


def _keep_on_loopback() -> None:
    """Ray replaces 127.0.0.1 with the machine's address (and starts a local Ray on it); its own
    switch for single-host use keeps it on 127.0.0.1 (here and in the processes started here)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")
    if os.environ[LOOPBACK_ENV] == "0":
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: ray may be imported already


# --------------------------------------------------------------------------- versions


@functools.cache
def _fingerprint() -> tuple[tuple[str, str], ...]:
    import platform
    from importlib import metadata

    out = [("python", platform.python_version())]
    for name in VERSIONED:
        try:
            out.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            out.append((name, "not installed"))
    out.append(("rlgauge code", _code_hash()))
    return tuple(out)


def fingerprint() -> dict[str, str]:
    """What a cell's results depend on here besides its spec: Python, the ``VERSIONED``
    packages' versions and a hash of the ``SHIPPED`` code as this process imports it."""
    return dict(_fingerprint())


def _code_hash(base: Path | None = None) -> str:
    """Hash of the ``SHIPPED`` packages' ``.py`` files: those under ``base``, else the ones
    this process imports."""
    digest = hashlib.sha256()
    for package in SHIPPED:
        root = base / package if base else _package_dir(package)
        files = sorted(root.rglob("*.py")) if root else []
        for path in files:
            if "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def differences(driver: dict[str, str], node: dict[str, str]) -> list[str]:
    """``"torchrl 0.0.1 (driver 0.14.1)"`` for each entry where ``node`` differs."""
    return [f"{key} {node.get(key, 'unknown')} (driver {value})" for key, value in driver.items()
            if node.get(key) != value]


def _probe(driver: dict[str, str], plugins: str | None) -> tuple[dict[str, str], str | None]:
    """Task: this worker's fingerprint and, when it matches the driver's, the warm-up imports
    (torch, tensordict, torchrl required; the rest of ``PRELOAD`` where installed) and the
    plugins; ``(fingerprint, problem or None)``."""
    mine = fingerprint()
    if differences(driver, mine):
        return mine, None
    for module in matrix.PRELOAD:
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 -- a node that cannot import is reported
            if module in REQUIRED_IMPORTS:
                return mine, f"cannot import {module} ({matrix._one_line(exc)})"
    if plugins:
        os.environ["RLGAUGE_PLUGINS"] = plugins
        from harness import registry

        try:
            registry.load_builtins()
        except UsageError as exc:
            return mine, str(exc)
    return mine, None


def _cell(spec, threads: int, plugins: str | None, driver: dict[str, str]) -> tuple:
    """Task: ``(fingerprint, cell message)``; the cell is not run (message None) where this
    node's fingerprint differs from the driver's."""
    mine = fingerprint()
    if differences(driver, mine):
        return mine, None
    return mine, matrix.cell_message(spec, threads, plugins)


# --------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    id: str
    label: str  # NodeManagerAddress:NodeManagerPort
    cpus: float
    memory: float
    slots: int = 0

    def name(self) -> str:
        return f"node {self.label} ({self.id[:8]})"


@dataclass
class Session:
    """A connected cluster: the driver's fingerprint and the checked nodes that take cells."""

    where: str
    threads: int
    mem_bytes: int | None
    fingerprint: dict[str, str]
    nodes: dict[str, Node]

    @property
    def slots(self) -> int:
        return sum(n.slots for n in self.nodes.values())

    def describe(self) -> str:
        return (f"{self.where}: {len(self.nodes)} node(s), {self.slots} slot(s) of "
                f"{self.threads} CPU(s); versions checked")


_session: Session | None = None
_shipped: tuple[str, str] | None = None  # (code hash, job id) of the last snapshot shipped


def connect(threads: int = 1, mem_limit_mb: float | None = None, *,
            local_cpus: int | None = None) -> Session:
    """Join ``$RAY_ADDRESS`` (else start a local Ray with ``local_cpus`` CPUs) with the shipped
    code, check the nodes and warm their workers. UsageError (one line, plus one per bad node)
    for an unreachable address, nodes too small for ``threads``/``mem_limit_mb``, or nodes whose
    versions differ from the driver's or cannot import torchrl; nothing has run then."""
    global _session
    check()
    import ray

    mem_bytes = int(mem_limit_mb * 2**20) if mem_limit_mb else None
    if (_session is not None and ray.is_initialized()
            and (_session.threads, _session.mem_bytes) == (threads, mem_bytes)):
        return _session
    address = _address()
    if address is None or _is_loopback(_host_port(address)[0]):
        _keep_on_loopback()
    where = f"the Ray cluster at {address}" if address else "a local Ray"
    global _shipped
    if not ray.is_initialized():
        _shipped = (_init(ray, address, local_cpus), ray.get_runtime_context().get_job_id())
    driver = fingerprint()
    if _shipped and _shipped[1] == ray.get_runtime_context().get_job_id():
        driver["rlgauge code"] = _shipped[0]  # what this job's workers got
    nodes = _nodes(ray, threads, mem_bytes)
    if not any(n.slots for n in nodes.values()):
        sizes = ", ".join(f"{n.cpus:g}" for n in nodes.values()) or "none"
        most = int(max((n.cpus for n in nodes.values()), default=0))
        need = f"{threads} CPU(s)" + (f" and {mem_limit_mb:g} MB" if mem_bytes else "")
        ray.shutdown()
        raise UsageError(f"--threads {threads}: no node of {where} has {need} for one cell "
                         f"(CPUs per node: {sizes}); use --threads {max(most, 1)} or less"
                         + (" or a smaller --mem-limit-mb" if mem_bytes else "")
                         + ", or add larger nodes")
    bad = _check_nodes(ray, [n for n in nodes.values() if n.slots], driver, threads)
    if bad:
        ray.shutdown()
        raise UsageError(f"{len(bad)} node(s) of {where} cannot run the driver's cells; give "
                         f"them the driver's install ({INSTALL}) or stop them:\n"
                         + "\n".join(f"  {line}" for line in bad))
    _session = Session(where, threads, mem_bytes, driver,
                       {i: n for i, n in nodes.items() if n.slots})
    return _session


def _init(ray, address: str | None, local_cpus: int | None) -> str:
    """``ray.init`` with a snapshot of the ``SHIPPED`` packages as the job's ``working_dir``
    (with a working_dir, Ray does not put the driver's directory on the workers' path, where
    a checkout at the same path would shadow the shipped code); the snapshot's code hash."""
    stage = Path(tempfile.mkdtemp(prefix="rlgauge-ray-"))
    try:
        for package in SHIPPED:
            shutil.copytree(_package_dir(package), stage / package,
                            ignore=shutil.ignore_patterns("__pycache__"))
        options = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                       runtime_env={"working_dir": str(stage)})
        if address is None:
            ray.init(num_cpus=local_cpus or matrix.default_workers(), **options)
        else:
            _join(ray, address, options)
        return _code_hash(stage)
    finally:  # ray.init uploaded it
        shutil.rmtree(stage, ignore_errors=True)


def _join(ray, address: str, options: dict) -> None:
    # Ray retries a head that does not answer for minutes (20 x ~35 s): one round here
    ours = "RAY_gcs_server_port_wait_time_s" not in os.environ
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "1")
    try:
        ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError,
            ray.exceptions.RayError) as exc:
        auth = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                "; a head with token authentication (ray start's 'Token authentication is "
                "enabled') also wants RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<ray "
                "get-auth-token on the head>")
        raise UsageError(f"RAY_ADDRESS={address!r}: cannot join a Ray cluster there "
                         f"({matrix._one_line(exc)}); run the driver with the cluster's Ray "
                         f"and Python versions{auth}") from None
    finally:
        if ours:
            os.environ.pop("RAY_gcs_server_port_wait_time_s", None)


def _nodes(ray, threads: int, mem_bytes: int | None) -> dict[str, Node]:
    """The alive nodes, with how many cells of ``threads`` CPUs (and ``mem_bytes``) each
    takes at once."""
    nodes = {}
    for info in ray.nodes():
        if not info.get("Alive"):
            continue
        resources = info.get("Resources", {})
        node = Node(info["NodeID"], f"{info['NodeManagerAddress']}:{info['NodeManagerPort']}",
                    resources.get("CPU", 0.0), resources.get("memory", float("inf")))
        node.slots = int(node.cpus // threads)
        if mem_bytes:
            node.slots = min(node.slots, int(node.memory // mem_bytes))
        nodes[node.id] = node
    return nodes


def _on(node: Node):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node.id, soft=False)


def _plugins() -> str | None:
    """``$RLGAUGE_PLUGINS`` with its ``.py`` paths made absolute (the workers' directory is
    the shipped snapshot)."""
    items = [p.strip() for p in os.environ.get("RLGAUGE_PLUGINS", "").split(",") if p.strip()]
    return ",".join(os.path.abspath(p) if p.endswith(".py") else p for p in items) or None


def _probe_refs(ray, node: Node, driver: dict, threads: int) -> list:
    probe = ray.remote(num_cpus=threads, max_retries=0)(_probe)
    plugins = _plugins()
    return [probe.options(scheduling_strategy=_on(node)).remote(driver, plugins)
            for _ in range(node.slots)]


def _verdict(ray, node: Node, refs: list, driver: dict) -> str | None:
    """None when every probe of ``node`` (all ready) passed, else the node's one line."""
    for ref in refs:
        try:
            theirs, problem = ray.get(ref)
        except ray.exceptions.RayError as exc:
            return f"{node.name()}: the check task failed ({matrix._one_line(exc)})"
        diff = differences(driver, theirs)
        if diff or problem:
            return f"{node.name()}: {', '.join(diff) if diff else problem}"
    return None


def _check_nodes(ray, nodes: list[Node], driver: dict, threads: int) -> list[str]:
    """Warm one Ray worker per slot of each node; one line per node that fails the check."""
    refs = {n.id: _probe_refs(ray, n, driver, threads) for n in nodes}
    everything = [r for rs in refs.values() for r in rs]
    ready, _ = ray.wait(everything, num_returns=len(everything), timeout=PROBE_TIMEOUT_S)
    ready = set(ready)
    bad = []
    for node in nodes:
        if not all(r in ready for r in refs[node.id]):
            for ref in refs[node.id]:
                ray.cancel(ref, force=True)
            bad.append(f"{node.name()}: did not answer the check within {PROBE_TIMEOUT_S:g} s")
        elif (line := _verdict(ray, node, refs[node.id], driver)) is not None:
            bad.append(line)
    return bad


# --------------------------------------------------------------------------- the runner


def record(out: Path, spec, outcome: matrix.Outcome, node: Node, driver: dict[str, str],
           theirs: dict[str, str], message: tuple | None, wall_s: float) -> str:
    """Write what a cell task returned: its records only when the node's fingerprint
    ``theirs`` is the driver's, else a failed row naming the node and what differs."""
    diff = differences(driver, theirs)
    if diff or message is None:
        return matrix.record_failure(out, spec, outcome, "failed", f"not run: {node.name()} "
                                     f"differs from the driver: {', '.join(diff)}")
    return matrix.record_message(out, spec, outcome, message, wall_s)


@dataclass
class RayOutcome(matrix.Outcome):
    """``matrix.Outcome`` plus where each cell ran and what happened to the nodes."""

    nodes: dict[str, str] = field(default_factory=dict)  # cell key -> node label
    notes: list[str] = field(default_factory=list)


def run_grid(specs: Sequence[matrix.RunSpec], skips: Iterable[matrix.Skip], out: Path, *,
             workers: int | None = None, timeout_s: float = 600.0,
             mem_limit_mb: float | None = None, threads: int = 1, retry_failed: bool = False,
             progress: Callable | None = None) -> RayOutcome:
    """``harness.matrix.run_grid`` with Ray tasks (see the module docstring): at most
    ``workers`` cells in flight (default: every slot of the cluster)."""
    check()
    import ray

    out = Path(out)
    outcome = RayOutcome()
    todo = matrix.prepare(specs, skips, out, outcome, retry_failed=retry_failed)
    if not todo:
        return outcome
    if progress:
        progress("warm-up", None, 0, len(todo))
    session = connect(threads, mem_limit_mb,
                      local_cpus=(workers or matrix.default_workers(threads)) * threads)
    runner = _Runner(ray, session, out, outcome, threads, mem_limit_mb, progress, len(todo))
    try:
        runner.run(list(todo), workers or session.slots, timeout_s)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        runner.cancel_all()
        runner.summarise()
    return outcome


class _Runner:
    def __init__(self, ray, session: Session, out: Path, outcome: RayOutcome, threads: int,
                 mem_limit_mb: float | None, progress: Callable | None, total: int):
        self.ray, self.session, self.out, self.outcome = ray, session, out, outcome
        self.progress, self.total, self.finished = progress, total, 0
        options = {"num_cpus": threads, "max_retries": 0}
        if mem_limit_mb:
            options["memory"] = int(mem_limit_mb * 2**20)
        self.task = ray.remote(**options)(_cell)
        self.plugins = _plugins()
        self.nodes = dict(session.nodes)  # usable now
        self.free = {i: n.slots for i, n in self.nodes.items()}
        self.running: dict = {}  # ObjectRef -> (spec, node, submitted)
        self.joining: dict = {}  # node id -> (Node, probe refs)
        self.known = set(self.nodes)  # every node seen, usable or not
        self.lost: dict[str, int] = {}  # node label -> cells lost with it
        self.placed: dict[str, int] = {}  # node id -> cells placed on it

    def run(self, queue: list, limit: int, timeout_s: float) -> None:
        ray = self.ray
        refreshed = idle_since = time.perf_counter()
        while queue or self.running:
            while queue and len(self.running) < limit and (node := self._freest()):
                spec = queue.pop(0)
                ref = self.task.options(scheduling_strategy=_on(node)).remote(
                    spec, self.session.threads, self.plugins, self.session.fingerprint)
                self.running[ref] = (spec, node, time.perf_counter())
                self.free[node.id] -= 1
                self.placed[node.id] = self.placed.get(node.id, 0) + 1
                self.outcome.nodes[spec.key] = node.label
                if self.progress:
                    self.progress("start", spec, self.finished, self.total)
            if self.running:
                ready, _ = ray.wait(list(self.running), num_returns=1, timeout=0.2)
                idle_since = time.perf_counter()
            else:  # no node to run on: wait for one to join, up to the time limit
                ready = []
                time.sleep(0.2)
                if time.perf_counter() - idle_since > timeout_s:
                    for spec in queue:
                        self._done(spec, matrix.record_failure(
                            self.out, spec, self.outcome, "failed",
                            f"not run: no node of the cluster was left to run it for "
                            f"{timeout_s:g} s"))
                    queue.clear()
            now = time.perf_counter()
            for ref in list(self.running):
                spec, node, start = self.running[ref]
                if ref in ready:
                    requeue = self._collect(ref, spec, node, now - start)
                    if requeue:
                        queue.insert(0, spec)
                elif now - start > timeout_s:
                    ray.cancel(ref, force=True)
                    del self.running[ref]
                    self._release(node)
                    self._done(spec, matrix.record_failure(
                        self.out, spec, self.outcome, "timeout",
                        f"timed out after {timeout_s:g} s (cancelled)"))
            if now - refreshed > REFRESH_S:
                self._refresh()
                refreshed = now

    def _freest(self) -> Node | None:
        """The node with the most free slots, then the fewest cells placed so far (spreads
        the cells even when fewer are in flight than there are slots); None when all are
        busy."""
        nodes = [n for n in self.nodes.values() if self.free[n.id] > 0]
        return max(nodes, key=lambda n: (self.free[n.id], -self.placed.get(n.id, 0), n.label),
                   default=None)

    def _release(self, node: Node) -> None:
        if node.id in self.nodes:
            self.free[node.id] += 1

    def _done(self, spec, status: str) -> None:
        self.finished += 1
        if self.progress:
            self.progress(status, spec, self.finished, self.total)

    def _collect(self, ref, spec, node: Node, wall_s: float) -> bool:
        """Record a finished task; True when its cell never ran and goes back to the queue."""
        ray, out, outcome = self.ray, self.out, self.outcome
        del self.running[ref]
        try:
            theirs, message = ray.get(ref)
        except ray.exceptions.TaskUnschedulableError:  # its node died before it started
            self._lose(node)
            outcome.nodes.pop(spec.key, None)
            return True
        except ray.exceptions.RayError as exc:
            if isinstance(exc, ray.exceptions.NodeDiedError) or not self._alive(node):
                self._lose(node)
                self.lost[node.label] = self.lost.get(node.label, 0) + 1
                why = (f"{node.name()} lost while the run ran ({type(exc).__name__}); not "
                       f"re-run: --retry-failed re-runs it")
            else:
                self._release(node)
                why = matrix._one_line(exc)
            self._done(spec, matrix.record_failure(out, spec, outcome, "failed", why))
            return False
        self._release(node)
        self._done(spec, record(out, spec, outcome, node, self.session.fingerprint, theirs,
                                message, wall_s))
        return False

    def _alive(self, node: Node) -> bool:
        return any(i["NodeID"] == node.id and i.get("Alive") for i in self.ray.nodes())

    def _lose(self, node: Node) -> None:
        self.nodes.pop(node.id, None)
        self.free.pop(node.id, None)

    def _refresh(self) -> None:
        """Drop dead nodes; check the ones that joined, and use those that pass."""
        ray = self.ray
        alive = _nodes(ray, self.session.threads, self.session.mem_bytes)
        for node_id in list(self.nodes):
            if node_id not in alive:
                self._lose(self.nodes[node_id])
        for node_id, node in alive.items():
            if node_id not in self.known and node.slots:
                self.known.add(node_id)
                self.joining[node_id] = (node, _probe_refs(ray, node, self.session.fingerprint,
                                                           self.session.threads))
        for node_id, (node, refs) in list(self.joining.items()):
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < len(refs):
                continue
            del self.joining[node_id]
            line = _verdict(ray, node, refs, self.session.fingerprint)
            if line is None and node_id in alive:
                self.nodes[node_id], self.free[node_id] = node, node.slots
            elif line is not None:
                self.outcome.notes.append(f"ray: not used, joined mid-grid: {line}")

    def cancel_all(self) -> None:
        for ref in list(self.running) + [r for _, rs in self.joining.values() for r in rs]:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 -- best effort at exit
                pass

    def summarise(self) -> None:
        counts: dict[str, int] = {}
        for label in self.outcome.nodes.values():
            counts[label] = counts.get(label, 0) + 1
        if counts:
            self.outcome.notes.insert(0, "ray: runs per node: " + ", ".join(
                f"{label} {n}" for label, n in sorted(counts.items())))
        for label, n in self.lost.items():
            self.outcome.notes.append(f"ray: node {label} was lost mid-grid with {n} run(s) "
                                      f"on it: failed rows; --retry-failed re-runs them")
