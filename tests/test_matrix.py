"""The matrix: grid expansion, bad input, fault injection, resume after Ctrl-C, reports and
comparisons.

Fault injection uses the test-only ``fault`` backend (``tests/plugins/fault_backend.py``,
loaded through ``RLGAUGE_PLUGINS``): each of its tasks breaks the cell's worker process in one
way, and every other cell of the grid must still finish, with the failure recorded as a row.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import matrix, registry, report, results
from harness.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = str(ROOT / "tests" / "plugins" / "fault_backend.py")
#: a few hundred frames of PPO on a probe env: the cell's own work is ~1 s
SMALL = ("num_envs=2", "frames_per_batch=64", "minibatch_size=32", "num_epochs=1",
         "eval_episodes=1")


@pytest.fixture(autouse=True)
def _plugin(fault_plugin):
    yield


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --------------------------------------------------------------------------- expansion


def test_quick_grid_skips_what_does_not_fit_with_the_reason():
    specs, skips = matrix.expand(matrix.Grid(("ppo", "dqn", "ddpg"), ("gymnasium", "dm_control"),
                                             quick=True, seeds=2))
    cells = {(s.algorithm, s.backend, s.task) for s in specs}
    assert cells == {("ppo", "gymnasium", "cartpole"), ("ppo", "dm_control", "cartpole-swingup"),
                     ("dqn", "gymnasium", "cartpole"), ("ddpg", "gymnasium", "pendulum"),
                     ("ddpg", "dm_control", "cartpole-swingup")}
    assert len(specs) == 10 and {s.seed for s in specs} == {0, 1}
    assert all(s.frames == matrix.QUICK_FRAMES[s.algorithm] for s in specs)
    assert len(skips) == 2 and all(s.spec.algorithm == "dqn" and s.spec.backend == "dm_control"
                                   and "discrete" in s.reason for s in skips)
    assert len({s.key for s in specs} | {s.spec.key for s in skips}) == 12  # keys are unique


def test_full_grid_takes_every_default_task_that_fits():
    specs, _ = matrix.expand(matrix.Grid(("ppo",), ("gymnasium",), num_envs=(1, 4)))
    assert {(s.task, s.num_envs) for s in specs} == {
        ("cartpole", 1), ("cartpole", 4), ("pendulum", 1), ("pendulum", 4)}
    assert all(s.frames is None for s in specs)  # the algorithm's own budget


def test_explicit_task_missing_from_one_backend_is_a_skip():
    specs, skips = matrix.expand(matrix.Grid(("ppo",), ("gymnasium", "dm_control"),
                                             tasks=("cartpole",)))
    assert [(s.backend, s.task) for s in specs] == [("gymnasium", "cartpole")]
    assert [s.reason for s in skips] == ["backend dm_control has no task 'cartpole'"]


@pytest.mark.skipif(_cuda(), reason="needs a machine without CUDA")
def test_devices_all_records_the_absent_gpu_as_skipped():
    specs, skips = matrix.expand(matrix.Grid(("ppo",), ("probe",), devices=("all",),
                                             tasks=("bandit",)))
    assert [s.device for s in specs] == ["cpu"]
    # by its canonical name (harness.devices): fails if the grid records the alias "cuda"
    assert [s.spec.device for s in skips] == ["cuda:0"] and "not present" in skips[0].reason


@pytest.mark.parametrize(("grid", "needle"), [
    (dict(algorithms=("nope",)), "unknown algorithm 'nope'"),
    (dict(backends=("nope",)), "unknown backend 'nope'"),
    (dict(tasks=("nope",)), "unknown task 'nope'"),
    (dict(devices=("tpu",)), "unknown device 'tpu'"),
    (dict(seeds=0), "--seeds must be >= 1"),
    (dict(frames=0), "--frames must be a positive"),
    (dict(num_envs=(-1,)), "--num-envs must be >= 1"),
    (dict(algorithms=()), "--algorithms is empty"),
    (dict(overrides=("nope=1",)), "bad override 'nope=1'"),
    (dict(overrides=("lr=fast",)), "bad value 'fast' for lr"),
    (dict(algorithms=("dqn",), backends=("dm_control",)), "no cell that can run here"),
])
def test_bad_grids_raise_one_clear_error(grid, needle):
    base = dict(algorithms=("ppo",), backends=("gymnasium",))
    with pytest.raises(UsageError, match=needle.replace("(", r"\(").replace("'", "'")):
        matrix.expand(matrix.Grid(**{**base, **grid}))


@pytest.mark.skipif(_cuda(), reason="needs a machine without CUDA")
def test_cuda_asked_for_by_name_without_a_gpu_is_bad_input():
    with pytest.raises(UsageError, match="'cuda' is not present"):
        matrix.expand(matrix.Grid(("ppo",), ("gymnasium",), devices=("cuda",)))


def rlgauge(*args, env=None, **kwargs):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **(env or {})}, **kwargs)


@pytest.mark.parametrize("argv, needle", [
    (["--algorithms", "nope"], "unknown algorithm 'nope'"),
    (["--backends", "gymnasium,nope"], "unknown backend 'nope'"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--frames", "-5"], "--frames must be a positive"),
    (["--num-envs", "two"], "--num-envs must be comma-separated integers"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--out", "/proc/rlgauge-nowhere"], "cannot be created"),
])
def test_cli_run_bad_input_is_one_line_and_exit_2(argv, needle, tmp_path):
    out = [] if "--out" in argv else ["--out", str(tmp_path)]
    proc = rlgauge("run", "--algorithms", "ppo", "--backends", "probe", *out, *argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "cells").exists()  # stopped before any work


# --------------------------------------------------------------------------- fault injection


def _status(out: Path, spec) -> tuple[str, str]:
    frame = results.load(matrix.cell_path(out, spec))
    return report._worst(frame["status"]), " ".join(e for e in frame["error"] if e)


def test_faulty_cells_are_recorded_and_the_rest_of_the_grid_completes(tmp_path):
    faults = ("ok", "raise", "segfault", "hang", "nan", "memory")
    specs, skips = matrix.expand(matrix.Grid(("ppo",), ("fault",), tasks=faults, frames=256,
                                             overrides=SMALL))
    by_task = {s.task: s for s in specs}
    start = time.perf_counter()
    outcome = matrix.run_grid(specs, skips, tmp_path, workers=2, timeout_s=15,
                              mem_limit_mb=1500)
    assert time.perf_counter() - start < 120
    assert not outcome.interrupted and sum(outcome.done.values()) == len(faults)

    status, _ = _status(tmp_path, by_task["ok"])
    frame = results.load(matrix.cell_path(tmp_path, by_task["ok"]))
    assert status == "ok" and {"train_fps", "final_return", "peak_rss_mb",
                               "worker_overhead_s"} <= set(frame["metric"])
    expected = {"raise": ("failed", "RuntimeError: injected fault"),
                "segfault": ("failed", "signal SIGABRT"),
                "hang": ("timeout", "timed out after 15 s"),
                "memory": ("failed", "exceeded the memory cap of 1500 MB")}
    for task, (want, needle) in expected.items():
        status, error = _status(tmp_path, by_task[task])
        assert status == want and needle in error, (task, status, error)
    status, error = _status(tmp_path, by_task["nan"])  # NaN rewards -> NaN losses/logits
    assert status in ("failed", "diverged") and "nan" in error.lower(), (status, error)
    assert "injected fault" in (tmp_path / "logs" / f"{by_task['raise'].key}.log").read_text()

    # resume: nothing left; --retry-failed re-runs exactly the failed and timed-out cells
    assert matrix.pending(specs, tmp_path, retry_failed=False) == []
    retry = {s.task for s in matrix.pending(specs, tmp_path, retry_failed=True)}
    assert retry == {"raise", "segfault", "hang", "memory"} | (
        {"nan"} if _status(tmp_path, by_task["nan"])[0] == "failed" else set())
    # a cell file cut short reads as missing: that cell runs again, the others do not
    path = matrix.cell_path(tmp_path, by_task["ok"])
    path.write_text(path.read_text()[:-20])
    assert matrix.pending(specs, tmp_path, retry_failed=False) == [by_task["ok"]]


def test_sigint_keeps_finished_cells_and_a_rerun_completes_exactly_the_rest(tmp_path):
    argv = ["run", "--algorithms", "ppo", "--backends", "fault", "--tasks", "ok", "--seeds", "5",
            "--frames", "512", "--workers", "1", "--out", str(tmp_path), "--no-report",
            *[a for s in SMALL for a in ("--set", s)]]
    env = {**os.environ, registry.PLUGINS_ENV: PLUGIN}
    proc = subprocess.Popen([sys.executable, "-m", "harness", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cells = tmp_path / "cells"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(cells.glob("*.csv"))) < 2:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "re-run the same command" in err
    kept = sorted(cells.glob("*.csv"))
    assert 2 <= len(kept) < 5
    before = {p.name: results.load(p)["run_id"].iloc[0] for p in kept}

    proc = rlgauge(*argv, env={registry.PLUGINS_ENV: PLUGIN}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    after = sorted(cells.glob("*.csv"))
    assert len(after) == 5
    frame = pd.concat([results.load(p) for p in after])
    assert sorted(frame.groupby("run_id")["seed"].first()) == [0, 1, 2, 3, 4]  # no duplicates
    for name, run_id in before.items():  # finished cells were not run again
        assert results.load(cells / name)["run_id"].iloc[0] == run_id


# --------------------------------------------------------------------------- reports


def _records(algorithm, seed, fps, ret, task="cartpole", t_hit=None):
    rows = [{"metric": "train_fps", "value": fps, "unit": "frames/s"},
            {"metric": "collect_fps", "value": 2 * fps, "unit": "frames/s"},
            {"metric": "env_time_s", "value": 6.0}, {"metric": "policy_time_s", "value": 1.0},
            {"metric": "update_time_s", "value": 3.0},
            {"metric": "final_return", "value": ret},
            {"metric": "threshold", "value": 475.0}]
    rows += [{"metric": "episode_return", "value": ret * f / 4000, "frames": f}
             for f in (1000, 2000, 3000, 4000)]
    if t_hit is not None:
        rows.append({"metric": "time_to_threshold_s", "value": t_hit})
    return results.make_records(rows, algorithm=algorithm, backend="gymnasium", task=task,
                                device="cpu", num_envs=8, seed=seed)


def _grid_frame(scale=1.0):
    frames = [_records("ppo", s, scale * f, r, t_hit=t) for s, (f, r, t) in
              enumerate([(1000, 500, 10.0), (1100, 480, 12.0), (900, 300, None)])]
    frames += [_records("dqn", s, scale * 400 + s, 200.0 + s) for s in range(3)]
    frames.append(results.failure_record("RuntimeError: boom", algorithm="dqn",
                                         backend="gymnasium", task="cartpole", device="cpu",
                                         num_envs=8, seed=3))
    return pd.concat(frames, ignore_index=True)


def test_iqm_and_its_stratified_bootstrap_interval():
    assert report.iqm([1, 2, 3, 4, 100, -100, 5, 6]) == pytest.approx(3.5)
    lo, hi = report.iqm_interval([10.0, 11.0, 12.0, 13.0, 30.0])
    assert 10.0 <= lo < report.iqm([10.0, 11.0, 12.0, 13.0, 30.0]) < hi <= 30.0
    assert all(np.isnan(report.iqm_interval([5.0])))  # one run: no interval
    # stratified: resampling within strata never mixes them, so two constant strata give a
    # point interval at their pooled IQM
    assert report.iqm_interval([1.0, 1.0], [3.0, 3.0]) == pytest.approx((2.0, 2.0))


def test_report_tables_and_files(tmp_path):
    frame = _grid_frame()
    tables = report.report_tables(frame)
    text = report.markdown_report(frame)
    throughput = next(t for name, t in tables.items() if name.startswith("Throughput"))
    cell = throughput.loc["gymnasium/cartpole cpu x8"]
    assert cell["ppo"].startswith("1,000 (2,000)")  # median of 900/1000/1100
    assert "1/4 failed" in cell["dqn"]
    split = next(t for name, t in tables.items() if name.startswith("Wall-time"))
    assert split.loc["gymnasium/cartpole cpu x8", "ppo"] == "60/10/30"
    ret = next(t for name, t in tables.items() if name.startswith("Final return"))
    # IQM of 3 runs trims nothing (scipy's and rliable's trim_mean cut int(0.25 n) per side)
    assert ret.loc["gymnasium/cartpole cpu x8", "ppo"] == "426.7 [300.0, 500.0] n=3"
    hit = next(t for name, t in tables.items() if name.startswith("Time to"))
    assert hit.loc["gymnasium/cartpole cpu x8", "ppo"] == "11.0 (2/3)"
    assert hit.loc["gymnasium/cartpole cpu x8", "dqn"].startswith("not reached (0/3")
    assert "RuntimeError: boom" in text
    assert not any(name.startswith("Tutorial") for name in tables)  # no recipe runs here
    recipe = results.make_records([{"metric": "success", "value": v} for v in (1.0,)],
                                  algorithm="tutorial-dqn", backend="gymnasium",
                                  task="cartpole", device="cpu", num_envs=1, seed=0)
    tables = report.report_tables(pd.concat([frame, recipe], ignore_index=True))
    met = next(t for name, t in tables.items() if name.startswith("Tutorial"))
    assert met.loc["gymnasium/cartpole cpu x1", "tutorial-dqn"] == "1/1"
    written = report.write_report(frame, tmp_path)
    page = written["html"].read_text()
    assert "data:image/png;base64," in page and "src='http" not in page
    assert {p.name for p in written["plots"]} == {"curves-gymnasium-cartpole-cpu.png",
                                                  "throughput-gymnasium-cpu.png"}
    assert all(p.stat().st_size > 5000 for p in written["plots"])
    cells = pd.read_csv(written["csv"])
    assert set(cells["algorithm"]) == {"ppo", "dqn"} and cells["failed"].sum() == 1


def test_compare_flags_a_significant_slowdown_only(tmp_path):
    base, same, slow = _grid_frame(), _grid_frame(1.0), _grid_frame(0.7)
    table = report.compare(base, same)
    assert not table["regression"].any()
    table = report.compare(base, slow)
    fps = table[(table["metric"] == "train_fps") & (table["algorithm"] == "dqn")].iloc[0]
    assert fps["verdict"] == "slower" and fps["regression"]
    assert fps["ratio"] == pytest.approx(0.7, rel=0.01)
    ppo = table[(table["metric"] == "train_fps") & (table["algorithm"] == "ppo")].iloc[0]
    assert ppo["ci_low"] < ppo["change"] < ppo["ci_high"]
    one = report.compare(base[base["seed"] == 0], slow[slow["seed"] == 0])
    assert not one["regression"].any() and one["verdict"].str.contains("untested").all()

    for name, frame in (("base", base), ("head", slow)):
        results.save(frame, tmp_path / name / "r.csv")
    proc = rlgauge("compare", str(tmp_path / "base"), str(tmp_path / "head"))
    assert proc.returncode == 1, proc.stderr
    assert "REGRESSION" in proc.stdout and "significantly worse" in proc.stdout
    proc = rlgauge("compare", str(tmp_path / "base"), str(tmp_path / "base"))
    assert proc.returncode == 0, proc.stderr
    proc = rlgauge("compare", str(tmp_path / "base"), str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "nowhere" in proc.stderr


def test_compare_does_not_turn_a_change_of_hardware_into_a_verdict(tmp_path):
    """Two sides on different CPU models: their speeds are not compared (no ratio, never a
    regression) unless --across-hardware; the final return still is; the text says so; a
    comparison of speeds only is refused with one line, exit 2. Fails if compare ignores the
    hardware columns (a 30% slower *machine* then reads as a REGRESSION)."""
    base = _grid_frame().assign(cpu="Intel Xeon Platinum 8375C")
    head = _grid_frame(0.7).assign(cpu="AMD EPYC 9R14")
    table = report.compare(base, head)
    fps = table[table["metric"] == "train_fps"]
    assert (fps["verdict"] == "not compared: different hardware").all()
    assert fps["ratio"].isna().all() and not table["regression"].any()
    ret = table[table["metric"] == "final_return"]
    assert len(ret) and not ret["verdict"].str.startswith("not compared").any()
    assert ret["verdict"].str.endswith("(different hardware)").all()
    assert "BASE ran on Intel Xeon Platinum 8375C, HEAD on AMD EPYC 9R14" in \
        report.compare_markdown(table, 0.1)
    forced = report.compare(base, head, across_hardware=True)
    dqn = forced[(forced["metric"] == "train_fps") & (forced["algorithm"] == "dqn")].iloc[0]
    assert dqn["ratio"] == pytest.approx(0.7, rel=0.01) and dqn["regression"]
    # the same GPU name and CPU on both sides: compared as before
    same = report.compare(base, _grid_frame(0.7).assign(cpu="Intel Xeon Platinum 8375C"))
    assert same["regression"].any()
    # the report names the hardware, and says when there are several
    text = report.markdown_report(pd.concat([base, head], ignore_index=True))
    assert "2 different hardware" in text and "AMD EPYC 9R14" in text

    for name, frame in (("base", base), ("head", head)):
        results.save(frame, tmp_path / name / "r.csv")
    proc = rlgauge("compare", str(tmp_path / "base"), str(tmp_path / "head"))
    assert proc.returncode == 0, proc.stderr  # the final return is compared, nothing worse
    assert "not compared: different hardware" in proc.stdout
    proc = rlgauge("compare", str(tmp_path / "base"), str(tmp_path / "head"),
                   "--metrics", "train_fps")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "different hardware" in lines[0]
    proc = rlgauge("compare", str(tmp_path / "base"), str(tmp_path / "head"),
                   "--metrics", "train_fps", "--across-hardware")
    assert proc.returncode == 1 and "REGRESSION" in proc.stdout


def test_train_and_run_record_the_same_metrics_for_the_same_spec(tmp_path):
    """One resolver and one finisher (``harness.runs``): ``train`` and a ``run`` cell of the
    same spec record the same metric set -- ``peak_rss_mb`` and the task's ``threshold`` rows
    included -- the cell adding only its executor's ``worker_overhead_s``. Fails if either path
    finishes its records on its own (``train`` used to record neither)."""
    args = ["--frames", "512", "--set", "eval_episodes=1", "--set", "num_envs=2"]
    train = rlgauge("train", "ppo", "--backend", "gymnasium", "--task", "cartpole", *args,
                    "--out", str(tmp_path / "train"))
    assert train.returncode == 0, train.stderr
    grid = rlgauge("run", "--algorithms", "ppo", "--backends", "gymnasium", "--tasks",
                   "cartpole", *args, "--no-report", "--out", str(tmp_path / "run"))
    assert grid.returncode == 0, grid.stderr
    trained = set(results.load(tmp_path / "train")["metric"])
    cell = set(results.load(tmp_path / "run" / "cells")["metric"])
    assert {"peak_rss_mb", "threshold", "final_return", "train_fps"} <= trained
    assert cell - trained == {"worker_overhead_s"} and trained <= cell
