"""The matrix's Ray executor (``nox -s ray``; skipped where Ray is not installed): the same
cells, files and failure rows as the local executor, on a local Ray and on a multi-node Ray
cluster on this host (``tests/ray_cluster.py``: several raylets, every process on 127.0.0.1,
checked socket by socket): cells spread over the nodes and written once by the driver, a node
killed mid-grid, a driver killed mid-grid and resumed, nodes with other versions, and the
one-line errors (unreachable address, too few CPUs, no ``ray``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray_cluster  # before ray is imported: keeps Ray on 127.0.0.1

from harness import cli, matrix, registry, results
from harness.errors import UsageError

ray = pytest.importorskip("ray")
from harness import matrix_ray  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL = ("num_envs=2", "frames_per_batch=64", "minibatch_size=32", "num_epochs=1",
         "eval_episodes=1")
CLI_SMALL = [a for s in SMALL for a in ("--set", s)]


@pytest.fixture(autouse=True)
def _plugins(fault_plugin, monkeypatch):
    """The fault backend and ``raytest`` (quick and slow cells) here and in every worker."""
    monkeypatch.setenv(registry.PLUGINS_ENV, f"{fault_plugin},{ray_cluster.PLUGIN}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    registry.load_builtins()
    yield
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def cluster():
    """Three 1-CPU nodes (the head and two more) on 127.0.0.1, shared by this module's tests;
    a test that adds nodes removes them."""
    c = ray_cluster.start(nodes=3)
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


@pytest.fixture
def on_cluster(cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    return cluster


@pytest.fixture
def saves(monkeypatch):
    """Every results file this process (the driver) writes: path -> times written."""
    written: dict[str, int] = {}
    save = results.save

    def counting(frame, path):
        written[str(path)] = written.get(str(path), 0) + 1
        return save(frame, path)

    monkeypatch.setattr(results, "save", counting)
    return written


def _grid(task: str, seeds: int, backend: str = "raytest"):
    return matrix.expand(matrix.Grid(("ppo",), (backend,), tasks=(task,), seeds=seeds,
                                     frames=64, overrides=SMALL))


def _rows(out: Path) -> dict[str, tuple[set, str, int]]:
    """cell file name -> (statuses, errors, distinct run ids)."""
    rows = {}
    for path in sorted((out / "cells").glob("*.csv")):
        frame = results.load(path)
        rows[path.name] = (set(frame["status"]), " ".join(frame["error"].astype(str)),
                           frame["run_id"].nunique())
    return rows


def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.csv")}


def _alive_labels() -> set[str]:
    return {f"{n['NodeManagerAddress']}:{n['NodeManagerPort']}" for n in ray.nodes()
            if n["Alive"]}


def _harness(args, env=None, **kw) -> subprocess.CompletedProcess:
    """``python -m harness ARGS``; without the tests' loopback switch, which the executor must
    set itself for a loopback address."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items()
           if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, text=True,
                          capture_output=True, env=env, **kw)


def test_local_ray_records_results_and_faults(tmp_path):
    specs, skips = matrix.expand(matrix.Grid(("ppo",), ("fault",),
                                             tasks=("ok", "raise", "segfault", "hang"),
                                             frames=256, overrides=SMALL))
    by_task = {s.task: s for s in specs}
    start = time.perf_counter()
    outcome = matrix_ray.run_grid(specs, skips, tmp_path, workers=2, timeout_s=20)
    assert time.perf_counter() - start < 240
    assert sum(outcome.done.values()) == 4
    assert ray_cluster.non_loopback_sockets() == []

    def status(task):
        frame = results.load(matrix.cell_path(tmp_path, by_task[task]))
        return set(frame["status"]), " ".join(frame["error"])

    ok, _ = status("ok")
    assert ok == {"ok"}
    assert status("raise") == ({"failed"}, "RuntimeError: injected fault")
    failed, why = status("segfault")
    assert failed == {"failed"} and ("died" in why.lower() or "crash" in why.lower()), why
    assert status("hang") == ({"timeout"}, "timed out after 20 s (cancelled)")
    assert matrix.pending(specs, tmp_path, retry_failed=False) == []


def test_cells_spread_over_the_nodes_and_are_written_once_by_the_driver(on_cluster, tmp_path,
                                                                         saves):
    specs, skips = _grid("quick", seeds=6)
    outcome = matrix_ray.run_grid(specs, skips, tmp_path, workers=2, timeout_s=120)
    assert outcome.done == {"ok": 6}
    # every node took cells, even with fewer cells in flight than nodes; the driver knows which
    assert set(outcome.nodes.values()) == _alive_labels() and len(_alive_labels()) == 3
    # each cell file written once, all of them by this process (the driver): the tasks never
    # see --out, and a file written elsewhere would be missing from `saves`
    cells = {str(matrix.cell_path(tmp_path, s)) for s in specs}
    assert saves == dict.fromkeys(cells, 1)
    assert {str(p) for p in (tmp_path / "cells").glob("*")} == cells
    assert all(n == 1 for _, _, n in _rows(tmp_path).values())
    assert outcome.notes[0].startswith("ray: runs per node: ")
    assert ray_cluster.non_loopback_sockets() == []

    @ray.remote(num_cpus=0)
    def imported():
        import harness

        return harness.__file__

    # the workers run the shipped snapshot, not the checkout at the driver's path (same host)
    shipped = ray.get(imported.remote())
    assert "runtime_resources" in shipped and not shipped.startswith(str(ROOT)), shipped


def test_a_node_lost_mid_grid_is_a_failed_row_naming_it_and_retry_reruns_it(on_cluster,
                                                                         tmp_path, saves):
    doomed = ray_cluster.add_node(on_cluster)
    try:
        specs, skips = _grid("slow", seeds=6)
        started = []

        def progress(event, spec, finished, total):
            started.append(event)
            if event == "start" and started.count("start") == 4:  # a cell on each node
                threading.Timer(2.0, on_cluster.remove_node, (doomed,),
                                {"allow_graceful": False}).start()

        outcome = matrix_ray.run_grid(specs, skips, tmp_path, timeout_s=120, progress=progress)
    finally:
        if doomed in on_cluster.worker_nodes:
            on_cluster.remove_node(doomed)
    rows = _rows(tmp_path)
    failed = {name: why for name, (status, why, _) in rows.items() if status == {"failed"}}
    assert outcome.done == {"ok": 5, "failed": 1}, rows
    (why,) = failed.values()
    assert f"({doomed.node_id[:8]}) lost while the run ran" in why and "NodeDiedError" in why
    assert len(rows) == 6 and all(n == 1 for _, _, n in rows.values())  # nothing duplicated
    assert set(saves.values()) == {1}
    assert any("was lost mid-grid with 1 run(s)" in n for n in outcome.notes), outcome.notes
    kept = {k: v for k, v in _stamps(tmp_path).items() if k not in failed}

    saves.clear()
    again = matrix_ray.run_grid(specs, skips, tmp_path, timeout_s=120, retry_failed=True)
    assert again.done == {"ok": 1} and again.reused == 5
    assert [Path(p).name for p in saves] == list(failed)
    assert {k: v for k, v in _stamps(tmp_path).items() if k in kept} == kept
    assert all(s == {"ok"} and n == 1 for s, _, n in _rows(tmp_path).values())


def test_resume_after_the_driver_is_killed_runs_only_the_missing_cells(on_cluster, tmp_path):
    args = ["run", "--algorithms", "ppo", "--backends", "raytest", "--tasks", "slow",
            "--seeds", "6", "--frames", "64", *CLI_SMALL, "--executor", "ray",
            "--out", str(tmp_path), "--no-report"]
    driver = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cells = tmp_path / "cells"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if len(list(cells.glob("*.csv"))) >= 3:  # the first round done, the second running
            break
        time.sleep(0.1)
    assert driver.poll() is None, driver.communicate()[1]
    assert ray_cluster.non_loopback_sockets() == []  # the driver subprocess included
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    before = _stamps(tmp_path)
    assert 3 <= len(before) < 6

    done = _harness(args, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (f"{6 - len(before)} to run, {len(before)} already in" in done.stderr), done.stderr
    assert f"runs: {6 - len(before)} ok; {len(before)} reused" in done.stderr, done.stderr
    assert {k: v for k, v in _stamps(tmp_path).items() if k in before} == before
    rows = _rows(tmp_path)
    assert len(rows) == 6 and all(s == {"ok"} and n == 1 for s, _, n in rows.values())


def test_nodes_with_another_install_stop_the_run_with_one_line_each(on_cluster, tmp_path):
    other = tmp_path / "other-torchrl"  # another torchrl's metadata ahead of the real one
    (other / "torchrl-0.0.1.dist-info").mkdir(parents=True)
    (other / "torchrl-0.0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: torchrl\nVersion: 0.0.1\n")
    broken = tmp_path / "broken-torch"  # a torch that does not import
    (broken / "torch").mkdir(parents=True)
    (broken / "torch" / "__init__.py").write_text("raise ImportError('libtorch.so missing')\n")
    bad = [ray_cluster.add_node(on_cluster, env={"PYTHONPATH": str(other)}),
           ray_cluster.add_node(on_cluster, env={"PYTHONPATH": str(broken)})]
    try:
        specs, skips = _grid("quick", seeds=2)
        with pytest.raises(UsageError) as raised:
            matrix_ray.run_grid(specs, skips, tmp_path / "out", timeout_s=60)
    finally:
        for node in bad:
            on_cluster.remove_node(node)
    lines = str(raised.value).splitlines()
    assert len(lines) == 3 and lines[0].startswith("2 node(s) of the Ray cluster at"), lines
    torchrl = matrix_ray.fingerprint()["torchrl"]
    assert f"({bad[0].node_id[:8]}): torchrl 0.0.1 (driver {torchrl})" in lines[1] + lines[2]
    assert (f"({bad[1].node_id[:8]}): cannot import torch (ImportError: libtorch.so missing)"
            in lines[1] + lines[2])
    assert list((tmp_path / "out" / "cells").glob("*")) == []  # no cell ran


def test_each_task_checks_its_versions_against_the_drivers(on_cluster, tmp_path):
    (spec,), _ = _grid("slow", seeds=1)
    other = {**matrix_ray.fingerprint(), "torchrl": "0.0.1"}
    start = time.perf_counter()
    theirs, message = matrix_ray._cell(spec, 1, None, other)  # in this process: not run
    assert message is None and theirs == matrix_ray.fingerprint()
    assert time.perf_counter() - start < 2  # the slow task sleeps 5 s when it runs
    # the driver records a task's results only when the versions it reports are the driver's
    node = matrix_ray.Node("f" * 56, "127.0.0.1:7", 1, 1)
    status = matrix_ray.record(tmp_path / "unit", spec, matrix.Outcome(), node, theirs, other,
                               ("ok", None, 0.0), 1.0)
    frame = results.load(matrix.cell_path(tmp_path / "unit", spec))
    assert status == "failed" and list(frame["error"]) == [
        f"not run: node 127.0.0.1:7 (ffffffff) differs from the driver: torchrl 0.0.1 (driver "
        f"{theirs['torchrl']})"]

    # on the cluster: a driver whose versions the nodes do not have records failed rows
    specs, skips = _grid("quick", seeds=2)
    session = matrix_ray.connect(1)
    session.fingerprint["torchrl"] = "0.0.1"
    try:
        outcome = matrix_ray.run_grid(specs, skips, tmp_path, timeout_s=60)
    finally:
        ray.shutdown()
    assert outcome.done == {"failed": 2}
    for status, why, _ in _rows(tmp_path).values():
        assert status == {"failed"} and why.startswith("not run: node 127.0.0.1:"), why
        assert f"differs from the driver: torchrl {matrix_ray.fingerprint()['torchrl']} " \
               f"(driver 0.0.1)" in why


def test_too_few_cpus_for_threads_is_one_line_and_exit_2(on_cluster, tmp_path):
    run = _harness(["run", "--algorithms", "ppo", "--backends", "probe", "--devices", "cpu",
                    "--quick", "--executor", "ray", "--threads", "2", "--out", str(tmp_path)],
                   timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith("rlgauge: error: --threads 2: no node of the Ray cluster at "
                                 f"{on_cluster.address} has 2 CPU(s) for one cell (CPUs per "
                                 "node: 1, 1, 1); use --threads 1 or less"), run.stderr
    assert list((tmp_path / "cells").glob("*")) == []


def test_unreachable_or_malformed_ray_address_is_one_line_and_exit_2(tmp_path, monkeypatch):
    out = tmp_path / "D"
    start = time.perf_counter()
    run = _harness(["run", "--algorithms", "ppo", "--backends", "probe", "--devices", "cpu",
                    "--quick", "--executor", "ray", "--out", str(out)],
                   env={"RAY_ADDRESS": "127.0.0.1:1"}, timeout=60)
    assert time.perf_counter() - start < 30
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == ("rlgauge: error: RAY_ADDRESS='127.0.0.1:1': no Ray head answers "
                          "there (Connection refused); start one with 'ray start --head' and "
                          "set RAY_ADDRESS to the HOST:PORT it prints, or unset RAY_ADDRESS "
                          "for a local Ray\n")
    assert not out.exists()  # nothing done
    for bad in ("head-node", "ray://127.0.0.1:10001", "127.0.0.1:99999"):
        monkeypatch.setenv("RAY_ADDRESS", bad)
        with pytest.raises(UsageError, match="is not a Ray head's address; valid: HOST:PORT"):
            matrix_ray.check()
    with socket.create_server((ray_cluster.LOOPBACK, 0)) as server:  # listens, never answers
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{server.getsockname()[1]}")
        start = time.perf_counter()
        with pytest.raises(UsageError, match="something listens there but it is not a Ray head"):
            matrix_ray.check()
        assert time.perf_counter() - start < 10  # ray.init alone: ~35 s, or minutes


def test_no_ray_module_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = cli.main(["run", "--algorithms", "ppo", "--backends", "probe", "--quick",
                     "--executor", "ray", "--out", str(tmp_path / "D")])
    err = capsys.readouterr().err
    assert code == 2 and err == ("rlgauge: error: --executor ray needs Ray: pip install -c "
                                 "constraints.txt -e '.[ray]' (or use --executor local)\n")
