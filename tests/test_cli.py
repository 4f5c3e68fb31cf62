"""The command line: bad input is one line + exit 2; doctor, list and table work end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import results


def rlgauge(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout)


def _one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one clear line ...
    assert "Traceback" not in proc.stderr  # ... and no traceback
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_cli_unknown_subcommand_names_valid_ones():
    _one_line_exit_2(rlgauge("frobnicate"), "'frobnicate'", "doctor", "list", "table")


def test_cli_unknown_option_is_named():
    _one_line_exit_2(rlgauge("list", "--colour"), "--colour")


def test_cli_no_subcommand_is_usage_error():
    _one_line_exit_2(rlgauge(), "COMMAND")


def test_cli_bad_format_names_choices(tmp_path):
    _one_line_exit_2(rlgauge("table", str(tmp_path), "--format", "xml"), "'xml'", "markdown")


def test_cli_table_missing_path(tmp_path):
    _one_line_exit_2(rlgauge("table", str(tmp_path / "nowhere")), "nowhere", "does not exist")


def test_cli_table_not_a_results_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    _one_line_exit_2(rlgauge("table", str(path)), str(path), "not an rlgauge results file")


def test_cli_table_empty_directory(tmp_path):
    _one_line_exit_2(rlgauge("table", str(tmp_path)), "no rlgauge results files")


def test_cli_table_renders_and_reports_damaged_file(tmp_path):
    for seed, fps in ((0, 100.0), (1, 300.0)):
        results.save(results.make_records(
            [{"metric": "collect_fps", "value": fps, "unit": "frames/s"}], algorithm="ppo",
            backend="probe", task="constant", device="cpu", num_envs=1, seed=seed),
            tmp_path / f"run{seed}.csv")
    proc = rlgauge("table", str(tmp_path), "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert "collect_fps" in proc.stdout and "200" in proc.stdout  # median of 100 and 300
    bad = tmp_path / "run1.csv"
    bad.write_text(bad.read_text()[:-10])
    proc = rlgauge("table", str(tmp_path))
    assert proc.returncode == 1  # partial: the table of the good file, and the bad one named
    assert "100" in proc.stdout and str(bad) in proc.stderr and "truncated" in proc.stderr


def test_cli_list_shows_registries_and_devices():
    proc = rlgauge("list")
    assert proc.returncode == 0, proc.stderr
    for section in ("algorithms:", "backends:", "devices:"):
        assert section in proc.stdout
    assert "cpu" in proc.stdout.split("devices:")[1]


def test_cli_doctor_reports_working_environment():
    """In the nox test venv everything the default run needs works, the extension included."""
    proc = rlgauge("doctor")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ext = next(ln for ln in proc.stdout.splitlines() if "torchrl extension" in ln)
    assert ext.startswith("ok") and "PrioritizedReplayBuffer samples and updates" in ext
    for name in ("python", "torch", "tensordict", "torchrl", "gymnasium", "dm_control",
                 "mujoco", "envpool", "MUJOCO_GL", "GPUs", "machine", "pixel rendering", "CPU",
                 "CUDA", "GAE on CUDA", "gymnasium on CUDA", "provenance"):
        assert any(ln[5:].startswith(name) for ln in proc.stdout.splitlines()), name
    from harness import devices

    prov = next(ln for ln in proc.stdout.splitlines() if ln[5:].startswith("provenance"))
    assert f"cpu={devices.cpu_model()}" in prov and "torch=" in prov and "cuda=" in prov


def test_doctor_device_checks_run_through_the_device_crossing(monkeypatch):
    """doctor's "GAE on CUDA" and "gymnasium on CUDA" rows, run on the CPU through the same
    path (the gymnasium env behind SimulatorOnDevice): they pass here and name the device.
    Fails if the checks themselves are broken, which a GPU-less CI would otherwise never see."""
    from harness import backends, doctor

    monkeypatch.setattr(backends, "to_device", backends.on_device)
    assert "on cpu matches the float64 oracle" in doctor.device_gae("cpu")
    text = doctor.device_gymnasium("cpu")
    assert "partial reset, data on cpu" in text


def test_cli_doctor_fails_with_reason_when_a_requirement_breaks(tmp_path):
    """A broken required library makes doctor exit non-zero and name the problem."""
    (tmp_path / "gymnasium").mkdir()
    (tmp_path / "gymnasium" / "__init__.py").write_text("raise ImportError('planted breakage')")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "harness", "doctor"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 1
    assert "gymnasium: ImportError: planted breakage" in proc.stdout


@pytest.mark.parametrize("argv", [["--help"], ["table", "--help"], ["build-ext", "--help"]])
def test_cli_help_exits_zero(argv):
    proc = rlgauge(*argv)
    assert proc.returncode == 0 and "usage:" in proc.stdout


def _stderr_on_a_terminal(argv, timeout=300) -> str:
    """What ``argv`` writes to stderr when stderr is a terminal (a pseudo-terminal here)."""
    import fcntl
    import os
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    # a terminal of 24 x 120 (a new pseudo-terminal is 0 x 0: tqdm would draw an empty bar)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 1.0)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=60)
    os.close(master)
    assert proc.returncode == 0
    return b"".join(chunks).decode(errors="replace")


def test_cli_train_progress_is_a_bar_on_a_terminal_and_a_few_lines_in_a_log(tmp_path):
    """Fails if the progress bar is redrawn into a log that is not a terminal (tqdm's ``\\r``
    redraws: ~650 lines in the log of one 100k-frame train) or if a terminal loses the bar."""
    import re

    argv = [sys.executable, "-m", "harness", "train", "ppo", "--backend", "probe", "--task",
            "bandit", "--frames", "8192", "--set", "eval_episodes=0", "--out", str(tmp_path)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [s for s in re.split(r"[\r\n]", proc.stderr) if s.strip()]
    assert 1 <= len(lines) <= 11, lines  # one per tenth of the budget at most
    assert "\r" not in proc.stderr and lines[-1].startswith("ppo probe/bandit cpu seed 0: 8,192/")
    terminal = _stderr_on_a_terminal(argv)
    assert "\r" in terminal and "8.19k/8.19k" in terminal, terminal[-500:]  # tqdm's bar


def test_cli_gate_is_a_subcommand():
    """``rlgauge gate ...`` is the gate's own command line (``python -m harness.gate``), listed
    in ``rlgauge --help``; bad gate input is its one-line usage error, exit 2."""
    assert "gate" in rlgauge("--help").stdout
    listed = rlgauge("gate", "list")
    assert listed.returncode == 0 and "bench_gae.GAE.time_gae" in listed.stdout
    bad = rlgauge("gate", "nonsense")
    assert bad.returncode == 2 and "invalid choice: 'nonsense'" in bad.stderr
