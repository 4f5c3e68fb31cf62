"""Self-check of the asv suite in bench/: it imports, its params are well-formed, every backend
is benchmarked, every floor exists, and every benchmark runs once (an in-process dry run).

The dry run mimics what ``asv run --quick`` does for one parameter point of each class, in this
process: ``setup_cache`` (or the class's cheaper ``smoke_cache`` when it declares one),
``setup`` (a ``NotImplementedError`` is asv's skip: the next point is tried), one call of every
benchmark method, ``teardown``. ``asv run --quick --dry-run`` of the whole suite took ~9 min
on the shared 2-core machine (a fresh process and ``setup`` for each of ~700 points, every
``setup_cache`` in full); this module took 1.5-2 min there, a third of it spawning one
multi-process collector, ``asv check`` and bench_training's PPOCollection. ``asv check``
(asv's own discovery and signature check) runs where asv is installed.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a directory of the checkout, not an installed package
    sys.path.insert(0, str(ROOT))

MODULES = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))
BENCH_PREFIX = re.compile(r"^(time|timeraw|track|peakmem|mem)_")
#: classes whose setup_cache is too slow for the fast suite, and what covers them instead
SLOW_CACHE: dict[str, str] = {}


def _module(name: str):
    return importlib.import_module(f"bench.{name}")


def _classes(module) -> list[type]:
    """Benchmark classes as asv discovers them: public classes with benchmark methods."""
    return [obj for name, obj in vars(module).items()
            if not name.startswith("_") and inspect.isclass(obj)
            and any(BENCH_PREFIX.match(m) for m, _ in inspect.getmembers(obj))]


def _params(cls) -> tuple[tuple, tuple]:
    """(param_names, params); both empty for a benchmark without parameters."""
    return tuple(getattr(cls, "param_names", ())), tuple(getattr(cls, "params", ()))


def _methods(cls) -> list[str]:
    return [m for m, f in inspect.getmembers(cls) if BENCH_PREFIX.match(m) and callable(f)]


def _all_classes():
    for name in MODULES:
        try:
            module = _module(name)
        except Exception:  # reported by test_bench_module_imports
            continue
        for cls in _classes(module):
            yield pytest.param(cls, id=f"{name}.{cls.__name__}")


CLASSES = list(_all_classes())


# --------------------------------------------------------------------------- structure


def test_bench_modules_found():
    assert {"bench_buffers", "bench_collectors", "bench_envs", "bench_losses"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_bench_module_imports(name):
    module = _module(name)
    assert _classes(module), f"bench/{name}.py defines no benchmark class"


@pytest.mark.parametrize("cls", CLASSES)
def test_params_match_param_names(cls):
    names, params = _params(cls)
    assert len(names) == len(params), f"{len(names)} param_names for {len(params)} params"
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == len(names), f"repeated param name in {names}"
    for name, values in zip(names, params, strict=True):
        assert isinstance(values, list | tuple) and values, f"{name}: empty or not a list"
        types = {type(v) for v in values}
        assert len(types) == 1, f"{name}: mixed value types {types}"
        assert types <= {str, int, float, bool}, f"{name}: values must be plain scalars"
        assert len({repr(v) for v in values}) == len(values), f"{name}: repeated values"


@pytest.mark.parametrize("cls", CLASSES)
def test_method_signatures_take_the_params(cls):
    """asv calls setup and every benchmark with (cache,) + one value per param."""
    arity = len(_params(cls)[0]) + (1 if hasattr(cls, "setup_cache") else 0)
    for name in [*_methods(cls), "setup"]:
        if not hasattr(cls, name):
            continue
        sig = inspect.signature(getattr(cls, name))
        positional = [p for p in sig.parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        varargs = any(p.kind == p.VAR_POSITIONAL for p in sig.parameters.values())
        required = [p for p in positional if p.default is p.empty]
        assert len(required) - 1 <= arity, f"{name} needs more arguments than asv passes"
        assert varargs or len(positional) - 1 >= arity, \
            f"{name}{sig} cannot take the {arity} arguments asv passes"


def _backends_of(cases) -> set[str]:
    return {case.split("/", 1)[0] for case in cases}


@pytest.mark.parametrize("name", ["bench_envs", "bench_collectors"])
def test_every_registered_backend_is_benchmarked(name):
    from harness import registry

    registry.load_builtins()
    registered = {entry.name for entry in registry.BACKENDS}
    assert {"gymnasium", "dm_control", "envpool", "probe"} <= registered
    assert _backends_of(_module(name).CASES) == registered


def _floor_entries():
    for name in MODULES:
        try:
            floors = getattr(_module(name), "FLOORS", None) or {}
        except Exception:
            continue
        for bench, floor in floors.items():
            yield pytest.param(name, bench, floor, id=f"{name}:{bench}")


@pytest.mark.parametrize(("name", "bench", "floor"), list(_floor_entries()))
def test_floor_names_an_existing_benchmark_with_shared_params(name, bench, floor):
    from harness.asv_results import parse_floor_name

    module = _module(name)
    sides = []
    for spec in (bench, floor):
        target, selector = parse_floor_name(spec)
        cls_name, _, method = target.partition(".")
        cls = getattr(module, cls_name, None)
        assert cls is not None and cls in _classes(module), f"{cls_name} is not a benchmark"
        assert method in _methods(cls), f"{cls_name} has no benchmark {method}"
        values = dict(zip(*_params(cls), strict=True))
        for key, value in selector.items():
            assert key in values, f"selector {key} is not a param of {cls_name}"
            assert value in {str(v) for v in values[key]}, f"{key}={value} is not a value"
        sides.append((set(_params(cls)[0]) - set(selector), selector))
    (bench_names, _), (floor_names, _) = sides
    assert bench_names & floor_names, f"{bench} and {floor} share no parameter"
    # every floor parameter is one of the benchmark's: each row has exactly one floor row
    assert floor_names <= bench_names, f"{floor} has params {floor_names - bench_names} " \
                                       f"that {bench} lacks: the pairing would be ambiguous"


def test_floor_ratio_reads_times_slower_than_the_floor():
    import pandas as pd

    from harness.asv_results import with_floors

    def row(benchmark, value, unit, **params):
        return {"benchmark": benchmark, "params": "", "value": value, "unit": unit,
                "machine": "m", "commit": "c", "env": "e", "param_values": params}

    frame = pd.DataFrame([
        row("b.A.time_x", 3e-3, "seconds", device="cpu", size="1"),
        row("b.A.time_x", 8e-3, "seconds", device="cpu", size="2"),
        row("b.F.time_x", 1e-3, "seconds", device="cpu"),
        row("b.A.track_fps", 100.0, "frames/s", device="cpu", impl="torchrl"),
        row("b.A.track_fps", 400.0, "frames/s", device="cpu", impl="raw"),
    ])
    out = with_floors(frame, {"b.A.time_x": "b.F.time_x",
                              "b.A.track_fps[impl=torchrl]": "b.A.track_fps[impl=raw]"})
    assert out["x_floor"].round(6).tolist()[:2] == [3.0, 8.0]  # value / floor for times
    assert out["x_floor"].iloc[3] == 4.0  # floor / value for a rate: 4x slower
    assert out["x_floor"].iloc[[2, 4]].isna().all()  # floors have no floor


def test_asv_table_prints_times_floor_from_an_asv_results_dir(tmp_path):
    """load -> markdown on a minimal asv results directory: the × floor column and the
    component table, rows paired on the shared ``device`` parameter."""
    import json

    from harness.asv_results import load, markdown

    meta = {"bench_x.A.time_x": {"param_names": ["device", "size"], "unit": "seconds"},
            "bench_x.F.time_x": {"param_names": ["device"], "unit": "seconds"}}
    (tmp_path / "benchmarks.json").write_text(json.dumps(meta))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "machine.json").write_text("{}")
    doc = {"commit_hash": "abcdef12", "env_name": "e", "date": 1,
           "result_columns": ["result", "params", "stats_q_25", "stats_q_75"],
           "results": {
               "bench_x.A.time_x": [[3e-3, 8e-3], [["'cpu'"], ["1", "2"]], [2.9e-3, 7.9e-3],
                                    [3.1e-3, 8.1e-3]],
               "bench_x.F.time_x": [[1e-3], [["'cpu'"]], [0.9e-3], [1.1e-3]]}}
    (tmp_path / "m" / "abcdef12-e.json").write_text(json.dumps(doc))
    text = markdown(load(tmp_path), {"bench_x.A.time_x": "bench_x.F.time_x"})
    assert "× floor" in text and "## Components beside their floors" in text
    assert "| 3×" in text and "| 8×" in text  # 3 ms and 8 ms against a 1 ms floor


def test_suite_cost_sums_durations_and_spreads_per_module(tmp_path):
    """suite_cost: seconds = benchmarks' durations + the module's setup_cache, spreads of the
    time_* points only (not track_*), the newest file per machine."""
    import json

    from harness.asv_results import cost_markdown, suite_cost

    meta = {"bench_x.A.time_x": {"param_names": ["size"], "unit": "seconds"},
            "bench_x.A.track_y": {"param_names": [], "unit": "frames/s"}}
    (tmp_path / "benchmarks.json").write_text(json.dumps(meta))
    (tmp_path / "m").mkdir()
    cols = ["result", "params", "stats_q_25", "stats_q_75", "duration"]
    old = {"commit_hash": "00000000", "env_name": "e", "date": 1, "result_columns": cols,
           "results": {"bench_x.A.time_x": [[1.0], [["1"]], [0.0], [9.0], 1000.0]}}
    new = {"commit_hash": "abcdef12", "env_name": "e", "date": 2, "result_columns": cols,
           "durations": {"<setup_cache bench_x:12>": 30.0, "<build>": 5.0},
           "results": {"bench_x.A.time_x": [[1.0, 2.0], [["1", "2"]], [0.99, 1.9], [1.01, 2.1],
                                            60.0],
                       "bench_x.A.track_y": [[5.0], [], None, None, 30.0]}}
    (tmp_path / "m" / "00000000-e.json").write_text(json.dumps(old))
    (tmp_path / "m" / "abcdef12-e.json").write_text(json.dumps(new))
    cost = suite_cost(tmp_path)
    assert len(cost) == 1
    row = cost.iloc[0]
    assert row["module"] == "bench_x" and row["seconds"] == 120.0 and row["setup_cache_s"] == 30
    assert row["points"] == 2 and row["median_spread"] == pytest.approx(0.06)  # 2% and 10%
    assert row["within_goal"] == 0.5 and "time_x[2] 10%" in row["worst"]
    text = cost_markdown(cost)
    assert "2.0 min" in text and "**all**" in text and "6.0%" in text


@pytest.mark.skipif(importlib.util.find_spec("asv") is None, reason="asv is not installed")
def test_asv_discovers_the_suite():
    """``asv check``: asv's own import of every benchmark and its signature checks."""
    proc = subprocess.run([sys.executable, "-m", "asv", "check", "--python=same"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


# --------------------------------------------------------------------------- floors are fair


@pytest.fixture(scope="module")
def loss_batches():
    return _module("bench_losses").make_batches(frames=256)


#: hard target-update interval of the compared DQN configs: the defaults (128 gradient steps)
#: lie far beyond the compared updates, which would leave the floor's target copy unchecked
COMPARED_TARGET_INTERVAL = 2
COMPARED_UPDATES = 6  # 3 target copies at interval 2


@pytest.mark.parametrize("algorithm", ["ppo", "dqn", "ddpg", "recurrent_dqn", "recurrent_ppo"])
def test_hand_loss_floor_computes_the_reference_loss(algorithm, loss_batches, monkeypatch):
    """The losses' floor is the same computation: equal loss before and after each of 6 updates
    from the same initial weights, the DQNs' hard target update shrunk to every 2 gradient
    steps so that 3 target copies (DDPG: a soft update per step) happen inside the compared
    updates. Recurrent PPO's floor does not restart its LSTMs at episode starts inside a chunk
    (a documented lower bound), so it only agrees to ~1%. Fails if the floor's target update
    drifts from the reference's: ``hand_case``'s ``hard_update`` copying one step late
    (``steps[0] % (period + 1)``), never, or at every step (each tried: DQN and recurrent DQN
    fail after 1-3 updates). It found the recurrent DQN floor copying every 2 steps where the
    reference's ``HardUpdate(interval)`` copies every 3 (``bench_losses._hard_update_interval``)."""
    import torch

    bench = _module("bench_losses")
    config_of = bench._config

    def compared_config(algorithm, device="cpu"):
        config = config_of(algorithm, device)
        if hasattr(config, "target_update_interval"):
            config = config.replace(target_update_interval=COMPARED_TARGET_INTERVAL)
        return config

    monkeypatch.setattr(bench, "_config", compared_config)
    data = bench.rows(loss_batches[algorithm], 256)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    reference = bench.torchrl_case(algorithm, data, cpu)
    torch.manual_seed(0)
    floor = bench.hand_case(algorithm, data, cpu)
    rel = 1e-2 if algorithm == "recurrent_ppo" else 1e-5
    for update in range(COMPARED_UPDATES + 1):
        if update:
            reference.update()
            floor.update()
        want, got = float(reference.forward()), float(floor.forward())
        assert got == pytest.approx(want, rel=rel), (
            f"after {update} updates: floor {got} vs torchrl {want}")


def test_slice_floor_draws_whole_slices_within_one_episode():
    """The episode-table floor of the slice samplers draws what SliceSampler draws: 8 slices
    of 32 consecutive steps, each inside one episode."""
    import torch

    bench = _module("bench_buffers")
    cache = {"data": _module("common").transitions(10_000)}
    floor = bench.SampleFloor()
    floor.setup(cache, "cpu", "slice", 10_000)
    try:
        for _ in range(20):
            index = floor.draw().reshape(8, 32)
            assert torch.equal(index.diff(dim=1), torch.ones(8, 31, dtype=index.dtype))
            traj = cache["data"][bench.TRAJ_KEY][index]
            assert (traj == traj[:, :1]).all()
    finally:
        floor.teardown()


# --------------------------------------------------------------------------- dry run


@pytest.mark.parametrize("cls", CLASSES)
def test_dry_run(cls):
    """Setup + one call of every benchmark method at the first parameter point that runs
    here (asv --quick's work for one point), each in a fresh setup, teardown after each."""
    key = f"{cls.__module__.removeprefix('bench.')}.{cls.__name__}"
    if key in SLOW_CACHE:
        pytest.skip(SLOW_CACHE[key])
    cache = ()
    if hasattr(cls, "setup_cache"):
        owner = cls()  # setup_cache / smoke_cache may be methods or staticmethods
        cache = ((getattr(owner, "smoke_cache", None) or owner.setup_cache)(),)
    skips = []
    for point in itertools.product(*_params(cls)[1]):
        args = (*cache, *point)
        ran = []
        for method in _methods(cls):
            bench = cls()
            setup = getattr(bench, "setup", lambda *a: None)
            teardown = getattr(bench, "teardown", lambda *a: None)
            try:
                setup(*args)
            except NotImplementedError as err:  # asv's skip: try the next point
                teardown(*args)
                assert not ran, f"setup skipped {method} after running {ran} at {point}"
                skips.append(str(err))
                break
            try:
                result = getattr(bench, method)(*args)
            finally:
                teardown(*args)
            if method.startswith("track_"):
                assert isinstance(result, int | float) and result == result, \
                    f"{method} returned {result!r}"
            ran.append(method)
        if ran:
            return
    pytest.skip(f"no point of {key} runs here: {sorted(set(skips))[:3]}")
