"""The backend registry: bad names and devices are one clear line, missing libraries are reported
instead of crashing, the CLI's ``env`` and ``list`` commands show what is there."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness import backends, cli, registry
from harness.backends import Backend, TaskSpec
from harness.errors import UsageError

BUILTIN = ("gymnasium", "dm_control", "envpool", "probe")


def rlgauge(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout)


def _usage_error(fn, *needles) -> str:
    with pytest.raises(UsageError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message, message  # one line
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def _never_built(*args, **kwargs):
    raise AssertionError("the builder ran although the input was bad")


@pytest.fixture
def fresh_registry(monkeypatch):
    """An empty BACKENDS registry in place of the real one, for throwaway backends. The
    built-in modules are imported first: one imported for the first time under the swap would
    register into the throwaway registry and never into the real one (later tests would then
    find 'gymnasium' unregistered). The recipes' cached availability is swapped too: a reason
    computed against the throwaway registry ("backend gymnasium: not registered") must not
    outlive the test."""
    from harness import recipes

    registry.load_builtins()
    fresh = registry.Registry("backend")
    monkeypatch.setattr(registry, "BACKENDS", fresh)
    monkeypatch.setattr(recipes.RECIPES, "_reasons", {})
    return fresh


# --------------------------------------------------------------------------- bad input


def test_backends_unknown_backend_names_the_valid_ones():
    _usage_error(lambda: backends.make_env("nope", "cartpole"), "'nope'", *BUILTIN)


def test_backends_unknown_task_names_the_backend_and_its_tasks():
    _usage_error(lambda: backends.make_env("gymnasium", "nope"), "'nope'", "'gymnasium'",
                 *backends.GYMNASIUM_TASKS)


@pytest.mark.parametrize("device,needle", [("cuda:7", "not present"), ("tpu", "unknown device"),
                                           ("cpu:x", "unknown device")])
def test_backends_bad_device_names_the_available_ones(device, needle):
    _usage_error(lambda: backends.make_env("gymnasium", "cartpole", device=device),
                 repr(device), needle, "cpu")


@pytest.mark.parametrize("num_envs", [0, -2, 1.5, True])
def test_backends_bad_num_envs(num_envs):
    _usage_error(lambda: backends.make_env("gymnasium", "cartpole", num_envs=num_envs),
                 "num_envs", repr(num_envs))


def test_backends_unknown_batching_names_the_valid_ones():
    _usage_error(lambda: backends.make_env("dm_control", "cartpole-balance", batching="gpu"),
                 "'gpu'", "serial", "parallel")


def test_backends_unknown_action_kind():
    _usage_error(lambda: backends.tasks_for("hybrid"), "'hybrid'", "discrete", "continuous")


def test_backends_bad_input_stops_before_building(fresh_registry):
    fresh_registry.register("fake", Backend(_never_built, {"t": TaskSpec("T", "discrete", "t")},
                                            batching="native", batchings=("native",)))
    _usage_error(lambda: backends.make_env("fake", "t", device="cuda:7"), "cuda:7")
    _usage_error(lambda: backends.make_env("fake", "u"), "'u'", "t")
    _usage_error(lambda: backends.make_env("fake", "t", num_envs=0), "num_envs")


def test_backends_taskspec_rejects_unknown_action_kind():
    with pytest.raises(ValueError, match="hybrid"):
        TaskSpec("X-v0", "hybrid", "neither")


# --------------------------------------------------------------------------- availability


def test_backends_missing_library_is_a_reason_not_a_crash(fresh_registry):
    fresh_registry.register(
        "ghost", Backend(_never_built, {"haunt": TaskSpec("Haunt-v0", "discrete", "boo")},
                         batching="native", batchings=("native",)),
        description="needs a library that does not exist", requires=("not_a_real_module",))
    reason = fresh_registry.unavailable_reason("ghost")
    assert reason is not None and "not_a_real_module" in reason
    _usage_error(lambda: backends.make_env("ghost", "haunt"), "'ghost'", "unavailable",
                 "not_a_real_module")
    assert backends.available_tasks("ghost") == [] and backends.pairs() == []
    [row] = backends.describe()
    assert row["backend"] == "ghost" and row["task"] == "haunt" and not row["available"]
    assert "not_a_real_module" in row["reason"]


def test_backends_failing_check_and_unreadable_tasks_are_reasons(fresh_registry):
    def broken_tasks():
        raise ImportError("module harness.nowhere is absent")

    fresh_registry.register("broken", Backend(_never_built, broken_tasks, batching="native",
                                              batchings=("native",)),
                            check=lambda: 1 / 0)
    assert fresh_registry.get("broken").value.tasks == {}
    assert fresh_registry.unavailable_reason("broken").startswith("ZeroDivisionError")
    [row] = backends.describe()
    assert row["task"] is None and not row["available"]


def test_backends_dm_control_needs_mujoco_3(monkeypatch):
    """dm_control 1.0.x breaks on mujoco 4: the check says so instead of a crash later."""
    mujoco = pytest.importorskip("mujoco")
    monkeypatch.setattr(mujoco, "__version__", "4.0.1")
    reason = backends._check_dm_control()
    assert reason is not None and "mujoco 3" in reason and "4.0.1" in reason
    monkeypatch.setattr(mujoco, "__version__", "3.17.0")
    assert backends._check_dm_control() is None


def test_backends_list_shows_unavailable_backend(fresh_registry, capsys):
    """`list` prints a backend whose library is missing as UNAVAILABLE with the reason."""
    fresh_registry.register(
        "ghost", Backend(_never_built, {"haunt": TaskSpec("Haunt-v0", "discrete", "boo")},
                         batching="native", batchings=("native",)),
        requires=("not_a_real_module",))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("ghost"))
    assert "UNAVAILABLE" in line and "not_a_real_module" in line
    assert "haunt" in out


def test_backends_one_registration_adds_a_backend(fresh_registry):
    """A new backend is one register() call; make_env, pairs and tasks_for then know it."""
    from harness import probes

    fresh_registry.register(
        "mine", Backend(lambda spec, **kw: probes.make(spec.id, num_envs=kw["num_envs"],
                                                       device=kw["device"], seed=kw["seed"]),
                        {"coin": TaskSpec("bandit", "discrete", "a two-armed bandit")},
                        batching="native", batchings=("native",), device_native=True))
    env = backends.make_env("mine", "coin", num_envs=3)
    assert tuple(env.batch_size) == (3,)
    assert backends.pairs() == [("mine", "coin")]
    assert backends.tasks_for("discrete") == [("mine", "coin")]
    assert backends.tasks_for("continuous") == []


# --------------------------------------------------------------------------- built-ins


def test_backends_builtins_are_registered():
    for name in BUILTIN:
        assert name in registry.BACKENDS
        assert registry.BACKENDS.get(name).value.tasks, name


def test_backends_required_tasks():
    tasks = {b: set(registry.BACKENDS.get(b).value.tasks) for b in BUILTIN}
    assert {"cartpole", "pendulum", "cartpole-novel", "mountaincar-continuous",
            "inverted-double-pendulum", "halfcheetah"} <= tasks["gymnasium"]
    assert {"cartpole-balance", "cartpole-swingup", "pendulum-swingup", "cheetah-run",
            "walker-walk"} <= tasks["dm_control"]
    assert {"cartpole", "pendulum"} <= tasks["envpool"]


def test_backends_task_specs_are_complete():
    for backend, task in backends.pairs(available_only=False):
        spec = backends.get_task(backend, task)
        assert spec.action_kind in backends.ACTION_KINDS
        assert spec.description and "\n" not in spec.description, (backend, task)
        be = registry.BACKENDS.get(backend).value
        assert be.batching in be.batchings


def test_backends_tasks_for_splits_by_action_kind():
    discrete = set(backends.tasks_for("discrete", available_only=False))
    continuous = set(backends.tasks_for("continuous", available_only=False))
    assert not discrete & continuous
    assert discrete | continuous == set(backends.pairs(available_only=False))
    assert {("gymnasium", "cartpole"), ("gymnasium", "cartpole-novel"),
            ("envpool", "cartpole")} <= discrete
    assert {("gymnasium", "pendulum"), ("dm_control", "walker-walk")} <= continuous


def test_backends_describe_has_a_row_per_task():
    rows = backends.describe()
    pairs = [(r["backend"], r["task"]) for r in rows]
    assert pairs == backends.pairs(available_only=False)
    for row in rows:
        assert row["available"] == (row["reason"] is None)
        assert {"id", "action_kind", "description", "batching", "device_native"} <= set(row)
    assert all(r["device_native"] == (r["backend"] == "probe") for r in rows)


def test_backends_cartpole_novel_hides_velocities():
    if ("gymnasium", "cartpole-novel") not in backends.pairs():
        pytest.skip("gymnasium unavailable here")
    import torch

    full = backends.make_env("gymnasium", "cartpole", seed=4)
    novel = backends.make_env("gymnasium", "cartpole-novel", seed=4)
    try:
        assert novel.observation_spec["observation"].shape == (1, 2)  # [x, theta]
        a, b = full.reset(), novel.reset()
        assert torch.equal(b["observation"], a["observation"][..., [0, 2]])
        low = full.observation_spec["observation"].space.low[..., [0, 2]]
        assert torch.equal(novel.observation_spec["observation"].space.low, low)
    finally:
        full.close()
        novel.close()


# --------------------------------------------------------------------------- CLI


def _one_line_exit_2(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_cli_env_unknown_backend_exits_2():
    _one_line_exit_2(rlgauge("env", "nope", "cartpole"), "'nope'", *BUILTIN)


def test_cli_env_bad_task_and_device_exit_2():
    _one_line_exit_2(rlgauge("env", "probe", "nope"), "'nope'", "'probe'")
    _one_line_exit_2(rlgauge("env", "gymnasium", "cartpole", "--device", "cuda:7"),
                     "'cuda:7'", "cpu")


def test_cli_env_reports_specs_and_speed():
    proc = rlgauge("env", "probe", "bandit", "--num-envs", "3", "--steps", "30")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("probe/bandit", "[3]", "observation  float32 [3, 1]", "Categorical",
                   "check_env_specs ok", "30 steps x 3 envs", "env-steps/s"):
        assert needle in out, (needle, out)


def test_cli_list_shows_backends_and_tasks():
    proc = rlgauge("list")
    assert proc.returncode == 0, proc.stderr
    section = proc.stdout.split("backends:")[1].split("devices:")[0]
    for name in BUILTIN:
        assert any(line.strip().startswith(name) for line in section.splitlines()), name
    for backend, task in backends.pairs(available_only=False):
        assert task in section, (backend, task)
