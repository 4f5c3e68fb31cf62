"""The results store: round-trip, validation, atomic writes, provenance, damaged files."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from harness import results
from harness.errors import ResultsError

CONTEXT = dict(algorithm="ppo", backend="probe", task="constant", device="cpu", num_envs=4,
               seed=1)


def _frame(n: int = 3, **context) -> pd.DataFrame:
    rows = [{"metric": "episode_return", "value": float(i), "frames": 100 * i, "unit": "return"}
            for i in range(n)]
    rows.append({"metric": "collect_fps", "value": 1234.5, "unit": "frames/s"})
    return results.make_records(rows, **{**CONTEXT, **context})


def test_results_round_trip_keeps_values_and_dtypes(tmp_path):
    frame = _frame()
    path = results.save(frame, tmp_path / "run.csv")
    back = results.load(path)
    pd.testing.assert_frame_equal(back, frame)
    assert list(back.columns) == list(results.COLUMNS)
    assert back["num_envs"].dtype == "Int64" and back["value"].dtype == "float64"
    assert back["frames"].isna().sum() == 1  # the end-of-run scalar has no frame count


def test_results_provenance_is_filled_in_automatically():
    frame = _frame()
    for col in results.PROVENANCE:
        assert (frame[col].str.len() > 0).all(), col
    import torch

    assert frame["torch"].iloc[0] == torch.__version__
    assert frame["run_id"].nunique() == 1  # one run, one id
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         cwd=os.path.dirname(results.__file__))
    if git.returncode == 0:
        assert frame["git_sha"].iloc[0].startswith(git.stdout.strip())


def test_results_record_the_full_torch_build_and_the_hardware(monkeypatch):
    """The torch column is ``torch.__version__`` with its build tag, and every record names the
    CPU model, the CUDA version (``none`` for a CPU build) and, on a GPU, the GPU. Fails if
    provenance reads torch's version from the distribution metadata (on a CUDA machine it said
    ``2.11.0`` for ``2.11.0+cu130``) or leaves the hardware out."""
    import torch

    from harness import devices

    monkeypatch.setattr(torch, "__version__", "2.11.0+cu130")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(devices, "cuda_count", lambda: 2)
    monkeypatch.setattr(devices, "gpu_name", lambda i: ["NVIDIA H200", "NVIDIA A100"][i])
    cpu = _frame()
    assert set(cpu["torch"]) == {"2.11.0+cu130"} and set(cpu["cuda"]) == {"13.0"}
    assert set(cpu["cpu"]) == {devices.cpu_model()} and cpu["cpu"].iloc[0] not in ("", "unknown")
    assert set(cpu["gpu"]) == {""}  # a CPU run used no GPU
    gpu = _frame(device="cuda")
    assert set(gpu["device"]) == {"cuda:0"}  # one name per device (harness.devices)
    assert set(gpu["gpu"]) == {"NVIDIA H200"}
    assert set(_frame(device="cuda:1")["gpu"]) == {"NVIDIA A100"}


@pytest.mark.parametrize(("version", "added"), [
    (1, ["cpu", "gpu", "cuda", "impl", "compile"]), (2, ["impl", "compile"])])
def test_results_older_files_load_with_what_they_lacked(tmp_path, version, added):
    """Files of older schema versions still load: hardware blank (unknown), ``impl`` rlgauge
    and ``compile`` eager (all there was). Fails if the loader refuses them or invents
    hardware."""
    frame = _frame()
    old = frame.drop(columns=added)
    body = old.to_csv(index=False, lineterminator="\n")
    path = tmp_path / f"v{version}.csv"
    path.write_text(f"# rlgauge-results schema_version={version}\n{body}# end rows={len(old)}\n")
    back = results.load(path)
    assert list(back.columns) == list(results.COLUMNS)
    assert (back[[c for c in added if c in ("cpu", "gpu", "cuda")]] == "").all().all()
    assert set(back["impl"]) == {"rlgauge"} and set(back["compile"]) == {"eager"}
    pd.testing.assert_frame_equal(back.drop(columns=added), frame.drop(columns=added))


def test_results_failure_record_is_a_row_with_reason(tmp_path):
    row = results.failure_record("ValueError: boom", **CONTEXT)
    assert len(row) == 1 and row["status"].iloc[0] == "failed"
    assert math.isnan(row["value"].iloc[0])
    back = results.load(results.save(row, tmp_path / "f.csv"))
    assert back["error"].iloc[0] == "ValueError: boom"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns="metric"), "missing columns ['metric']"),
        (lambda f: f.assign(colour="red"), "unknown columns ['colour']"),
        (lambda f: f.assign(status="great"), "status 'great' is not one of"),
        (lambda f: f.assign(value=math.nan), "status 'ok' but value is nan"),
        (lambda f: f.assign(status="failed", error=""), "needs a reason in 'error'"),
        (lambda f: f.assign(num_envs=0), "num_envs must be >= 1"),
        (lambda f: f.assign(seed="x"), "column 'seed' is not a number: 'x'"),
        (lambda f: f.assign(seed=1.5), "column 'seed' must be an integer"),
        (lambda f: f.assign(timestamp="yesterday"), "timestamp 'yesterday' is not ISO 8601"),
        (lambda f: f.assign(run_id=""), "column 'run_id' is empty"),
    ],
    ids=["missing-col", "unknown-col", "bad-status", "ok-nan", "failed-no-reason", "num-envs-0",
         "seed-not-number", "seed-fraction", "bad-timestamp", "empty-run-id"],
)
def test_results_validate_rejects(change, message):
    with pytest.raises(ResultsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        results.validate(change(_frame()))


def test_results_save_validates_before_writing(tmp_path):
    path = tmp_path / "run.csv"
    with pytest.raises(ResultsError):
        results.save(_frame().assign(status="great"), path)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_results_crash_mid_write_leaves_previous_file_intact(tmp_path):
    """A writer killed (SIGKILL-like os._exit) half-way through the temp file changes nothing."""
    path = results.save(_frame(2), tmp_path / "run.csv")
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os
        from harness import results
        frame = results.make_records([{{"metric": "m", "value": float(i)}} for i in range(5000)])
        import builtins
        orig = builtins.open
        def dying_open(file, mode="r", *a, **k):
            f = orig(file, mode, *a, **k)
            if "w" not in mode or not os.path.basename(str(file)).startswith(".run.csv."):
                return f
            w = f.write
            def write(data):
                w(data[: len(data) // 2])
                f.flush()
                os._exit(9)  # die with half the bytes in the temp file
            f.write = write
            return f
        builtins.open = dying_open
        results.save(frame, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert path.read_bytes() == before  # the destination was never touched
    pd.testing.assert_frame_equal(results.load(path), results.loads(before.decode()))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "run.csv"]
    assert all(n.startswith(".run.csv.") for n in leftovers)  # only the dead writer's temp file
    frame, errors = results.load_many(tmp_path)  # hidden temp files are not results
    assert errors == [] and len(frame) == 3


def test_results_failed_write_removes_temp_file(tmp_path, monkeypatch):
    path = results.save(_frame(2), tmp_path / "run.csv")
    before = path.read_bytes()

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        results.save(_frame(5), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.csv"]


def test_results_append_adds_rows(tmp_path):
    path = tmp_path / "all.csv"
    results.append(_frame(2, seed=0), path)
    results.append(_frame(2, seed=1), path)
    assert sorted(results.load(path)["seed"].unique()) == [0, 1]


def _truncate(path, keep):
    data = path.read_bytes()
    path.write_bytes(data[:keep(len(data))])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _truncate(p, lambda n: n - 5), "truncated"),
        (lambda p: _truncate(p, lambda n: n // 2), "truncated"),
        (lambda p: _truncate(p, lambda n: 0), "empty file"),
        (lambda p: p.write_text(p.read_text().replace("# end rows=4", "# end rows=9")),
         "4 rows, the closing line says 9"),
        (lambda p: p.write_text("a,b\n1,2\n"), "not an rlgauge results file"),
        (lambda p: p.write_text(p.read_text().replace("schema_version=3", "schema_version=99")),
         "schema_version 99 is not supported"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00binary"), "not a text file"),
    ],
    ids=["cut-footer", "cut-mid-line", "empty", "row-count", "foreign-csv", "future-schema",
         "binary"],
)
def test_results_damaged_file_error_names_file_and_problem(tmp_path, damage, message):
    path = results.save(_frame(), tmp_path / "bad.csv")
    damage(path)
    with pytest.raises(ResultsError, match=message) as info:
        results.load(path)
    assert str(path) in str(info.value)


def test_results_directory_loads_good_files_and_reports_bad_one(tmp_path):
    results.save(_frame(seed=0), tmp_path / "a.csv")
    results.save(_frame(seed=1), tmp_path / "sub" / "b.csv")
    bad = results.save(_frame(seed=2), tmp_path / "c.csv")
    _truncate(bad, lambda n: n // 2)
    (tmp_path / "table.csv").write_text("x,y\n1,2\n")  # an exported table, not ours: ignored
    frame, errors = results.load_many(tmp_path)
    assert sorted(frame["seed"].unique()) == [0, 1]
    assert len(errors) == 1 and errors[0].path == str(bad) and "truncated" in errors[0].problem
    with pytest.raises(ResultsError, match="c.csv"):
        results.load(tmp_path)


def test_results_missing_path_is_an_error(tmp_path):
    with pytest.raises(ResultsError, match="no such file"):
        results.load(tmp_path / "nope.csv")
