"""The compile axis (issue 17): a run's compile mode travels from the command line through
``RunSpec`` into the Config, the matrix makes a cell per mode (skipping the ones a cell cannot
use, with the reason), and the report puts compiled runs beside eager ones. No compiling here:
the specs are resolved, not trained, and the report's inputs are made by hand."""

from __future__ import annotations

import subprocess
import sys
import types

import pandas as pd
import pytest

from harness import cli, matrix, report, results, runs
from harness.errors import UsageError
from harness.training import COMPILE_MODES


def _spec(**kwargs):
    return runs.spec_for(algorithm="ppo", backend="gymnasium", task="cartpole", **kwargs)


# --------------------------------------------------------------------------- RunSpec


def test_spec_key_label_and_context_carry_the_mode():
    """An eager run keeps the key it had before the axis (old results resume); a compiled run
    is a cell of its own, named by its mode."""
    assert _spec().key == "ppo-gymnasium-cartpole-cpu-nD-fD-s0"
    compiled = _spec(compile="compile", seed=2)
    assert compiled.key == "ppo+compile-gymnasium-cartpole-cpu-nD-fD-s2"
    graphs = runs.RunSpec("ppo", "gymnasium", "cartpole", "cuda:0", 0, compile="compile+cudagraphs")
    assert graphs.key == "ppo+compile+cudagraphs-gymnasium-cartpole-cuda0-nD-fD-s0"
    assert runs.RunSpec("ppo", "gymnasium", "cartpole", "cpu", 0, impl="sb3",
                        compile="compile").key.startswith("ppo@sb3+compile-")
    assert compiled.label() == "ppo [compile] gymnasium/cartpole cpu n=default seed 2"
    assert _spec().label() == "ppo gymnasium/cartpole cpu n=default seed 0"
    assert compiled.context()["compile"] == "compile" and _spec().context()["compile"] == "eager"


def test_resolve_puts_the_mode_into_the_config():
    resolved = runs.resolve(_spec(compile="compile"))
    assert resolved.config.compile == "compile"
    assert resolved.config.context("ppo")["compile"] == "compile"  # every record's column
    assert runs.resolve(_spec()).config.compile == "eager"


@pytest.mark.parametrize("kwargs, message", [
    (dict(compile="jit"), "unknown compile mode 'jit'; valid: eager, compile, compile+cudagraphs"),
    (dict(compile="compile+cudagraphs"),
     "compile mode 'compile+cudagraphs' needs a CUDA device (CUDA graphs), not 'cpu'; valid "
     "there: eager, compile"),
], ids=["unknown", "cudagraphs-on-cpu"])
def test_resolve_refuses_a_mode_the_run_cannot_use(kwargs, message):
    with pytest.raises(UsageError) as info:
        runs.resolve(_spec(**kwargs))
    assert str(info.value) == message


def test_resolve_refuses_a_compiled_peer():
    pytest.importorskip("stable_baselines3", reason="the peers extra: pip install -e .[peers]")
    with pytest.raises(UsageError) as info:
        runs.resolve(_spec(impl="sb3", compile="compile"))
    assert str(info.value) == ("impl sb3 runs eager only, not compile mode 'compile' (the "
                               "compile modes are rlgauge's); valid for sb3: eager")
    assert runs.resolve(_spec(impl="sb3")).config.compile == "eager"


@pytest.mark.parametrize("overrides", [["compile=compile"], {"compile": "compile"}],
                         ids=["text", "typed"])
def test_compile_is_an_axis_not_an_override(overrides):
    with pytest.raises(UsageError, match=r"compile is an axis of the run, not a Config override "
                                         r"\(compile=compile\): give it with --compile MODE"):
        _spec(overrides=overrides)
    assert "compile" not in runs.config_fields("ppo")


def test_compile_modes_agree_with_the_config():
    """The command line's help and the modes the matrix and ``check_compile`` know are the
    Config's (``harness.training.COMPILE_MODES``)."""
    assert COMPILE_MODES == ("eager", "compile", "compile+cudagraphs")
    assert matrix._compile_modes(["all"], ["cpu"]) == ["eager", "compile"]
    assert matrix._compile_modes(["all"], ["cpu", "cuda:0"]) == list(COMPILE_MODES)
    assert matrix._compile_modes(["compile", "eager", "compile"], ["cpu"]) == ["eager",
                                                                               "compile"]


# --------------------------------------------------------------------------- the matrix


def test_matrix_makes_a_cell_per_mode_and_skips_what_cannot_run():
    specs, skips = matrix.expand(matrix.Grid(
        ("ppo",), ("gymnasium",), tasks=("cartpole",), seeds=2,
        compile_modes=("eager", "compile", "compile+cudagraphs")))
    assert sorted((s.compile, s.seed) for s in specs) == [
        ("compile", 0), ("compile", 1), ("eager", 0), ("eager", 1)]
    assert [(s.spec.compile, s.spec.seed) for s in skips] == [("compile+cudagraphs", 0),
                                                              ("compile+cudagraphs", 1)]
    assert "needs a CUDA device" in skips[0].reason
    assert len({s.key for s in specs} | {s.spec.key for s in skips}) == 6  # one file each


def test_matrix_compile_modes_reach_recipe_cells():
    specs, skips = matrix.expand(matrix.Grid((), (), recipes=("tutorial-ppo",),
                                             compile_modes=("eager", "compile")))
    assert [(s.recipe, s.compile) for s in specs] == [("tutorial-ppo", "eager"),
                                                      ("tutorial-ppo", "compile")]
    assert not skips


def test_matrix_gives_a_peer_the_eager_mode_only():
    pytest.importorskip("stable_baselines3", reason="the peers extra: pip install -e .[peers]")
    specs, skips = matrix.expand(matrix.Grid(
        ("ppo",), ("gymnasium",), tasks=("cartpole",), impls=("rlgauge", "sb3"),
        compile_modes=("eager", "compile")))
    assert sorted((s.impl, s.compile) for s in specs) == [
        ("rlgauge", "compile"), ("rlgauge", "eager"), ("sb3", "eager")]
    assert [(s.spec.impl, s.spec.compile) for s in skips] == [("sb3", "compile")]
    assert skips[0].reason.startswith("impl sb3 runs eager only")


@pytest.mark.parametrize("modes, message", [
    (("eager", "jit"), "unknown compile mode 'jit'; valid: eager, compile, compile+cudagraphs, "
                       "or all"),
    ((), "--compile is empty"),
    (("compile+cudagraphs",), "the grid has no cell that can run here: compile mode "
                              "'compile+cudagraphs' needs a CUDA device"),
], ids=["unknown", "empty", "nothing-runs"])
def test_matrix_refuses_bad_modes_before_any_work(modes, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("+", r"\+")):
        matrix.expand(matrix.Grid(("ppo",), ("gymnasium",), tasks=("cartpole",),
                                  compile_modes=modes))


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, needles", [
    (["train", "ppo", "--compile", "jit"], ["unknown compile mode 'jit'",
                                            "valid: eager, compile, compile+cudagraphs"]),
    (["train", "ppo", "--compile", "compile+cudagraphs"], ["needs a CUDA device", "'cpu'"]),
    (["train", "ppo", "--set", "compile=compile"], ["not a Config override", "--compile"]),
    (["run", "--algorithms", "ppo", "--backends", "gymnasium", "--compile", "eager,jit"],
     ["unknown compile mode 'jit'", "or all"]),
    (["run", "--algorithms", "ppo", "--backends", "gymnasium", "--compile", ","],
     ["--compile is empty"]),
    (["run", "--algorithms", "ppo", "--backends", "gymnasium", "--devices", "cpu",
      "--compile", "compile+cudagraphs"], ["no cell that can run here", "needs a CUDA device"]),
], ids=["train-unknown", "train-cudagraphs-cpu", "train-set", "run-unknown", "run-empty",
        "run-cudagraphs-cpu"])
def test_cli_bad_compile_is_one_line_and_exit_2(argv, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUJOCO_GL", raising=False)  # cmd_run sets it for its workers
    out = tmp_path / "out"
    assert cli.main([*argv, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlgauge: error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("command", ["train", "run"])
def test_cli_help_lists_every_compile_mode(command):
    proc = subprocess.run([sys.executable, "-m", "harness", command, "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "--compile" in text
    for mode in COMPILE_MODES:
        assert f"{mode} (" in text, mode  # each mode named, with what it does
    if command == "run":
        assert "or all (" in text


# --------------------------------------------------------------------------- report


def _run(mode, seed, *, steady=None, train=None, compile_s=None, task="cartpole", impl="rlgauge"):
    rows = [{"metric": "final_return", "value": 500.0, "unit": "return"}]
    if train is not None:
        rows.append({"metric": "train_fps", "value": train, "unit": "frames/s"})
    if steady is not None:
        rows.append({"metric": "steady_fps", "value": steady, "unit": "frames/s"})
    if compile_s is not None:
        rows.append({"metric": "compile_time_s", "value": compile_s, "unit": "s"})
    return results.make_records(rows, algorithm="ppo", impl=impl, compile=mode,
                                backend="gymnasium", task=task, device="cpu", num_envs=8,
                                seed=seed)


def _frame():
    """Eager runs from before the axis (train_fps only) and compiled runs whose train_fps
    includes compiling: the table must read the compiled runs' steady_fps, and the eager
    runs' train_fps."""
    eager = [_run("eager", s, train=f) for s, f in enumerate((1000.0, 1100.0, 900.0))]
    compiled = [_run("compile", s, steady=f, train=f * 0.75, compile_s=c)
                for s, (f, c) in enumerate(((2000.0, 10.0), (2300.0, 14.0), (1900.0, 12.0)))]
    lonely = [_run("eager", 0, train=50.0, steady=50.0, task="pendulum")]  # no compiled pair
    return pd.concat(eager + compiled + lonely, ignore_index=True)


def test_compile_table_ratio_interval_and_compile_time():
    from scipy import stats

    table = report.compile_table(_frame())
    assert len(table) == 1  # the pendulum cell has no compiled run
    row = table.iloc[0]
    assert table.index[0] == "gymnasium/cartpole cpu x8"
    assert (row["algorithm"], row["mode"], row["n eager/compiled"]) == ("ppo", "compile", "3/3")
    assert (row["eager frames/s"], row["compiled frames/s"]) == ("1000", "2000")  # medians
    # the ratio of the medians, then Welch's 95% interval of the difference of the means over
    # the eager mean, as a ratio (1 + change)
    ci = stats.ttest_ind([2000.0, 2300.0, 1900.0], [1000.0, 1100.0, 900.0],
                         equal_var=False).confidence_interval(0.95)
    assert row["compiled / eager [95% CI]"] == (
        f"2.000 [{1 + ci.low / 1000:.3f}, {1 + ci.high / 1000:.3f}]")
    assert row["verdict"] == "faster"
    assert row["compile time (s)"] == "12.0"  # median of 10, 14, 12


def test_compile_table_is_empty_without_a_pair():
    frame = _frame()
    assert report.compile_table(frame[frame["compile"] == "eager"]).empty
    assert report.compile_table(frame[frame["compile"] == "compile"]).empty


def test_report_shows_compiled_runs_as_their_own_columns():
    frame = _frame()
    cells = report.cell_table(frame)
    compiled = cells[cells["compile"] == "compile"].iloc[0]
    assert compiled["steady_fps"] == 2000.0 and compiled["compile_time_s"] == 12.0
    assert compiled["train_fps"] == 1500.0
    throughput = next(t for name, t in report.report_tables(frame).items()
                      if name.startswith("Throughput"))
    assert list(throughput.columns) == ["ppo", "ppo (compile)"]
    assert throughput.loc["gymnasium/cartpole cpu x8", "ppo (compile)"].startswith("1,500")
    text = report.markdown_report(frame)
    assert "## Compile modes side by side" in text and "2.000 [" in text


def test_train_summary_names_the_mode_and_its_compile_time():
    records = _run("compile", 0, steady=2000.0, train=1500.0, compile_s=12.5)
    config = types.SimpleNamespace(backend="gymnasium", task="cartpole", device="cpu",
                                   num_envs=8, seed=0, frames=4096)
    text = runs.summary(records, config)
    assert text.splitlines()[0] == "ppo (compile) on gymnasium/cartpole, cpu, 8 env(s), seed 0"
    assert "1,500 overall, 2,000 steady (after the compiling warm-up)" in text
    assert "compile time    12.5 s" in text
    eager = runs.summary(_run("eager", 0, steady=1000.0, train=1000.0, compile_s=0.0), config)
    assert "compile time" not in eager and "steady" not in eager
