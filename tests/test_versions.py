"""``nox -s versions``: sides (parsing, refusal in one line, resolution, the environment
cache), the learning check's verdicts, harness.compat's record of what it adapted, the
report (BROKEN marking, reproductions) and the reproduction snippet run for real.

No network: the registry is only reached by a wheel side's offline resolution (uv with the
local wheelhouse), skipped where uv or the wheelhouse is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from harness import compat, gate, sides
from harness.gate import versions as vreport

ROOT = Path(__file__).resolve().parents[1]


def _checkout(path: Path, package: str = "torchrl") -> Path:
    (path / package).mkdir(parents=True)
    (path / package / "__init__.py").write_text("")
    (path / "setup.py").write_text("from setuptools import setup\nsetup()\n")
    return path


def _wheel(path: Path, name: str = "torchrl-0.0.1-py3-none-any.whl",
           requires: tuple[str, ...] = ("torch>=3.0",)) -> Path:
    dist, version = name.split("-")[:2]
    whl = path / name
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr(f"{dist}/__init__.py", "")
        z.writestr(f"{dist}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
        z.writestr(f"{dist}-{version}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                   "Tag: py3-none-any\n")
        z.writestr(f"{dist}-{version}.dist-info/RECORD", "")
    return whl


# --------------------------------------------------------------------------- parsing


def test_sides_parse_every_form(tmp_path):
    rl = _checkout(tmp_path / "rl")
    td = _checkout(tmp_path / "td", "tensordict")
    whl = _wheel(tmp_path, "torchrl_nightly-2026.10.27-cp311-cp311-manylinux1_x86_64.whl")
    got = {t: sides.parse_side(t) for t in (
        "torchrl==0.13.3", "torchrl==0.13.3,tensordict==0.13.0", "nightly",
        "nightly==2026.10.27", str(rl), f"{rl},tensordict={td}", f"{rl},tensordict==0.14.3",
        str(whl), f"mine={sys.executable}")}
    assert [(s.kind, s.value, s.tensordict) for s in got.values()] == [
        ("release", "0.13.3", ""), ("release", "0.13.3", "==0.13.0"), ("nightly", "", ""),
        ("nightly", "2026.10.27", ""), ("checkout", str(rl), ""),
        ("checkout", str(rl), str(td)), ("checkout", str(rl), "==0.14.3"),
        ("wheel", str(whl), ""), ("python", str(Path(sys.executable).absolute()), "")]
    assert got[f"mine={sys.executable}"].label == "mine"
    # every side has its own environment directory
    slugs = [s.slug for s in got.values()]
    assert len(set(slugs)) == len(slugs)
    assert all("/" not in s for s in slugs)


@pytest.mark.parametrize("text, needle", [
    ("0.13.3", "not a side"),
    ("torchrl==not a version", "is not a version"),
    ("torchrl==0.13.3,foo", "unknown option 'foo'"),
    ("torchrl==0.13.3,tensordict==0.13,tensordict==0.13", "tensordict given twice"),
    ("nightly,tensordict=/tmp", "unknown option"),
    ("missing.whl", "no wheel file at"),
    ("x=/no/such/python", "no interpreter at"),
    ("", "empty"),
])
def test_sides_bad_forms_are_one_line_naming_the_side(text, needle):
    with pytest.raises(sides.SideError) as exc:
        sides.parse_side(text)
    msg = str(exc.value)
    assert msg.startswith(f"side {text.strip()!r}: ") and needle in msg
    assert "\n" not in msg


def test_sides_a_directory_that_is_not_a_torchrl_checkout_is_refused(tmp_path):
    (tmp_path / "setup.py").write_text("")  # a project, but no torchrl/ package
    with pytest.raises(sides.SideError, match="is not a torchrl checkout"):
        sides.parse_side(str(tmp_path))
    with pytest.raises(sides.SideError, match="is not a tensordict checkout"):
        sides.parse_side(f"{_checkout(tmp_path / 'rl')},tensordict={tmp_path}")
    other = _wheel(tmp_path, "numpy-1.0-py3-none-any.whl")
    with pytest.raises(sides.SideError, match="is not a torchrl wheel"):
        sides.parse_side(str(other))


def test_sides_need_two_distinct_sides():
    with pytest.raises(sides.SideError, match="two or more sides"):
        sides.parse_sides(["torchrl==0.13.3"])
    with pytest.raises(sides.SideError, match="given twice"):
        sides.parse_sides(["torchrl==0.13.3", " torchrl==0.13.3"])


def test_versions_cli_bad_side_is_exit_2_and_one_line(tmp_path):
    """The CLI entry, as nox runs it: a path that is not a torchrl checkout is refused
    before anything is resolved, built or timed -- one line on stderr, nothing on stdout."""
    for bad in (str(tmp_path), str(tmp_path / "absent"), "torchrl==0.14.1,tensordict=.."):
        proc = subprocess.run([sys.executable, "-m", "harness.gate", "versions",
                               "torchrl==0.14.1", bad], capture_output=True, text=True,
                              cwd=ROOT, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: side "), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_versions_main_bad_side_returns_2(capsys, tmp_path):
    assert gate.main(["versions", "torchrl==0.14.1", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: side {str(tmp_path)!r}: {tmp_path} is not a torchrl checkout (a "
                   "directory with setup.py or pyproject.toml and torchrl/__init__.py)"]


# --------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("uv_says, needle", [
    ("  × No solution found when resolving dependencies:\n  ╰─▶ Because torchrl==0.99.0 "
     "depends on torch>=2.99 and you require torch==2.13.0, we can conclude that your "
     "requirements are unsatisfiable.", "incompatible: it needs torch>=2.99,"),
    ("error: No solution found when resolving dependencies\n  cause: Because there is no "
     "version of torchrl==9.9.9 and you require torchrl==9.9.9, we can conclude that your "
     "requirements are unsatisfiable.", "no torchrl==9.9.9 on the package registry"),
    ("error: Failed to fetch: `https://pypi.org/simple/torchrl/`\n  Caused by: dns error",
     "could not reach the package registry"),
    ("error: Because torchrl depends on tensordict>=0.99 and tensordict>=0.99 depends on "
     "torchvision, we can conclude ...", "cannot be installed with the pinned set: Because "
     "torchrl depends on tensordict>=0.99"),
    # a torch requirement the pin meets is not the cause
    ("error: Because torchrl==0.5 depends on torch>=2.1 and tensordict>=0.99 depends on "
     "numpy<1, we can conclude ...", "cannot be installed with the pinned set"),
])
def test_sides_resolution_failures_say_why(uv_says, needle):
    err = sides.explain_resolution("S", uv_says)
    assert needle in str(err) and "\n" not in str(err)
    assert "torchrl-nightly" not in str(err) or "torch" in needle


def _uv_offline_ready() -> bool:
    import shutil

    return bool(shutil.which("uv") and sides.uv_env().get("UV_FIND_LINKS"))


@pytest.mark.skipif(not _uv_offline_ready(), reason="needs uv and a local wheelhouse")
def test_sides_a_wheel_that_needs_another_torch_is_refused_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("UV_OFFLINE", "1")  # only the wheelhouse (the pinned CPU torch)
    spec = sides.parse_side(str(_wheel(tmp_path)))
    with pytest.raises(sides.SideError, match=r"incompatible: it needs torch>=3\.0"):
        sides.resolve(spec, workdir=tmp_path)


def test_sides_constraints_drop_only_torchrl_and_tensordict(monkeypatch):
    monkeypatch.delenv("RLGAUGE_TORCH", raising=False)
    text = sides.constraints_text()
    assert "torch==2.13.0" in text.splitlines()
    assert not any(ln.startswith(("torchrl==", "tensordict==")) for ln in text.splitlines())
    assert sides.torch_requirement() == "torch==2.13.0"
    reqs = sides.extras_requirements()
    assert "pytest" in reqs and not {"torch", "torchrl", "tensordict"} & set(reqs)


# --------------------------------------------------------------------------- env cache


def test_sides_fingerprint_follows_sources_not_build_outputs(tmp_path):
    rl = _checkout(tmp_path / "rl")
    before = sides.fingerprint(rl)
    (rl / "build" / "lib" / "torchrl").mkdir(parents=True)
    (rl / "build" / "lib" / "torchrl" / "__init__.py").write_text("copied by the build")
    (rl / "torchrl.egg-info").mkdir()
    (rl / "torchrl.egg-info" / "PKG-INFO").write_text("Name: torchrl")
    (rl / "torchrl" / "_torchrl.so").write_text("binary")
    assert sides.fingerprint(rl) == before
    (rl / "torchrl" / "__init__.py").write_text("x = 1\n")
    assert sides.fingerprint(rl) != before


def test_sides_fingerprint_of_a_git_checkout_is_its_commit_and_changes(tmp_path):
    rl = _checkout(tmp_path / "rl")
    git = ["git", "-C", str(rl), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    clean = sides.fingerprint(rl)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert clean.startswith(f"git:{head}:")
    (rl / "torchrl" / "__init__.py").write_text("x = 1\n")  # uncommitted edit
    edited = sides.fingerprint(rl)
    assert edited != clean
    subprocess.run([*git, "commit", "-qam", "two"], check=True)
    assert sides.fingerprint(rl) not in (clean, edited)


def test_sides_env_is_reused_until_its_key_changes(tmp_path, monkeypatch):
    built = []

    def fake_build(spec, pins, env, *, log):
        built.append(dict(pins))
        (env / "bin").mkdir(parents=True)
        (env / "bin" / "python").write_text("")

    monkeypatch.setattr(sides, "_build", fake_build)
    spec = sides.parse_side("torchrl==0.13.3")
    pins = {"torchrl": "0.13.3", "tensordict": "0.13.0"}
    env, how = sides.ensure_env(spec, pins, envs_dir=tmp_path)
    assert how.startswith("built") and env == tmp_path / "torchrl-0.13.3"
    assert sides.ensure_env(spec, pins, envs_dir=tmp_path)[1] == "reused (cached)"
    assert len(built) == 1
    # a new tensordict resolved (or a new nightly): rebuilt in place
    assert sides.ensure_env(spec, {**pins, "tensordict": "0.13.1"},
                            envs_dir=tmp_path)[1].startswith("built")
    assert sides.ensure_env(spec, pins, envs_dir=tmp_path, rebuild=True)[1].startswith("built")
    assert len(built) == 3


def test_sides_checkout_env_survives_what_its_build_writes(tmp_path, monkeypatch):
    rl = _checkout(tmp_path / "rl")

    def fake_build(spec, pins, env, *, log):  # setup.py writes into the checkout
        (rl / "torchrl" / "version.py").write_text("__version__ = '0.0.1+gabc'\n")
        (env / "bin").mkdir(parents=True)
        (env / "bin" / "python").write_text("")

    monkeypatch.setattr(sides, "_build", fake_build)
    spec = sides.parse_side(str(rl))
    assert sides.ensure_env(spec, {}, envs_dir=tmp_path / "envs")[1].startswith("built")
    assert sides.ensure_env(spec, {}, envs_dir=tmp_path / "envs")[1] == "reused (cached)"
    (rl / "torchrl" / "losses.py").write_text("# a change\n")
    assert sides.ensure_env(spec, {}, envs_dir=tmp_path / "envs")[1].startswith("built")


# --------------------------------------------------------------------------- learning check


FAKE_PYTHON = """\
#!{python}
import os, sys
argv = sys.argv[3:]  # -c CODE then the module's arguments
if argv[0] == "pytest":
    xml = next(a.split("=", 1)[1] for a in argv if a.startswith("--junitxml="))
    failed = os.environ.get("FAKE_PROBE_FAIL") == "1"
    body = "<failure message='AssertionError: V(3) off by 9%'/>" if failed else ""
    open(xml, "w").write("<testsuites><testsuite><testcase classname='tests.test_ppo' "
                         "name='test_a'/><testcase classname='tests.test_dqn' name='test_b'>"
                         + body + "</testcase></testsuite></testsuites>")
    sys.exit(1 if failed else 0)
out = argv[argv.index("--out") + 1]
algorithm = argv[2]
if os.environ.get("FAKE_CRASH") == algorithm:
    sys.exit("RuntimeError: boom")
os.makedirs(out, exist_ok=True)
value = os.environ.get("FAKE_RETURN_" + algorithm, "500")
text = {results!r}.replace("{sentinel}", value)
if os.environ.get("FAKE_CUT_SHORT") == algorithm:  # a damaged file: no footer line
    text = text[:text.index("# end")]
open(os.path.join(out, "r.csv"), "w").write(text)
"""
#: the value the fake's results file carries until it writes the asked one
SENTINEL = 424242.5


def _fake_results() -> str:
    """A schema-valid results file (what a run writes): an episode return and a final return
    of ``SENTINEL``."""
    from harness import results

    return results.dumps(results.make_records(
        [{"metric": "episode_return", "value": 1.0}, {"metric": "final_return",
                                                       "value": SENTINEL}],
        algorithm="ppo", backend="gymnasium", task="cartpole", device="cpu"))


def _fake_build(tmp_path: Path, name: str) -> sides.Build:
    python = tmp_path / f"python-{name}"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, results=_fake_results(),
                                         sentinel=SENTINEL))
    python.chmod(0o755)
    return sides.Build(sides.Spec(name, "python", str(python), label=name), name, str(python),
                       {"torchrl": "0.0", "tensordict": "0.0", "torch": "2.13.0+cpu"})


def test_learning_check_marks_a_side_broken(tmp_path, monkeypatch):
    runs = [r for r in sides.LEARNING_RUNS if r.algorithm in ("ppo", "ddpg")]
    good, bad = _fake_build(tmp_path, "good"), _fake_build(tmp_path, "bad")
    monkeypatch.setenv("FAKE_RETURN_ddpg", "-300")
    res = sides.learning_check([good], tmp_path / "a", runs=runs)
    assert not res["good"].broken and res["good"].probe["passed"] == 2
    assert [r["final_return"] for r in res["good"].runs] == [500.0, -300.0]
    # a return under the threshold: broken, and it says which and by how much
    monkeypatch.setenv("FAKE_RETURN_ddpg", "-1400")
    res = sides.learning_check([bad], tmp_path / "b", runs=runs)
    assert res["bad"].broken
    assert res["bad"].why == ["ddpg returned -1400.0 < -1000 on gymnasium/pendulum"]
    # a failed probe test, a crashed run
    monkeypatch.setenv("FAKE_RETURN_ddpg", "-300")
    monkeypatch.setenv("FAKE_PROBE_FAIL", "1")
    monkeypatch.setenv("FAKE_CRASH", "ppo")
    res = sides.learning_check([bad], tmp_path / "c", runs=runs)["bad"]
    assert res.broken and res.probe["failed"] == ["test_dqn::test_b (AssertionError: V(3) off "
                                                  "by 9%)"]
    assert any("ppo run failed: RuntimeError: boom" in w for w in res.why)
    # a results file that does not load: no return, and the reader's reason
    monkeypatch.setenv("FAKE_CUT_SHORT", "ddpg")
    res = sides.learning_check([bad], tmp_path / "d", runs=runs)["bad"]
    why = [w for w in res.why if w.startswith("ddpg run failed: no final_return recorded (")]
    assert why and "r.csv" in why[0], res.why


def test_learning_runs_thresholds_sit_between_untrained_and_trained():
    for r in sides.LEARNING_RUNS:
        worst = min(float(v) for v in r.typical.split(","))
        assert float(r.untrained) < r.threshold < worst, r


def test_probe_test_files_are_the_probe_learning_modules():
    files = sides.probe_test_files()
    assert {"tests/test_ppo.py", "tests/test_dqn.py", "tests/test_ddpg.py",
            "tests/test_recurrent.py"} <= set(files)
    assert "tests/test_versions.py" not in files


# --------------------------------------------------------------------------- compat record


def _old_style(name: str):
    def __init__(self, num_slices=None):
        self.num_slices = num_slices

    return type(name, (), {"__init__": __init__, "__module__": "torchrl.data.fake"})


def test_compat_records_what_it_adapted_across_processes(tmp_path, monkeypatch):
    log = tmp_path / "compat.jsonl"
    monkeypatch.setenv(compat.LOG_ENV, str(log))
    monkeypatch.setattr(compat, "_FIRED", {})
    cls = _old_style("SliceSampler")
    compat.construct(cls, num_slices=2, init_key=None)
    compat.construct(cls, num_slices=3, init_key=None)  # once per process
    assert compat.adaptations() == [{"kind": "dropped", "target": "torchrl.data.fake."
                                     "SliceSampler", "detail": "init_key=None",
                                     "torchrl": compat.versions()["torchrl"]}]
    pid = os.fork()  # the gate's rounds run in forked children: the file outlives them
    if pid == 0:
        try:
            compat.record("patched", "torchrl.X", "accepts y=")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    with open(log, "a") as f:
        f.write('{"kind": "torn')  # a half-written line is skipped
    assert [(a["kind"], a["target"]) for a in compat.read_log(log)] == [
        ("dropped", "torchrl.data.fake.SliceSampler"), ("patched", "torchrl.X")]
    assert compat.read_log(tmp_path / "absent") == []


def test_compat_emulates_init_key_none_on_an_old_slice_sampler(monkeypatch):
    """torchrl 0.13.3 marks slice starts whatever rlgauge asks (and crashes doing so with
    variable-length slices): ``init_key=None`` is dropped *and* its meaning reproduced."""
    monkeypatch.setattr(compat, "_FIRED", {})
    marks = []

    def __init__(self, num_slices=None):
        self.num_slices = num_slices

    def _maybe_emit_init_marker(self, info, *args):
        marks.append(1)
        info["is_init"] = True

    cls = type("SliceSampler", (), {"__init__": __init__, "__module__": "torchrl.data.fake",
                                    "_maybe_emit_init_marker": _maybe_emit_init_marker})
    info = {}
    cls(2)._maybe_emit_init_marker(info)
    assert marks and info  # as built without compat: marks
    marks.clear()
    obj = compat.construct(cls, num_slices=2, init_key=None)
    info = {}
    obj._maybe_emit_init_marker(info, None, 2, 8, None)
    assert not marks and info == {}
    assert [a["kind"] for a in compat.adaptations()] == ["dropped", "emulated"]
    assert compat._adapt(cls)  # the patched class does the same
    info = {}
    cls(num_slices=2, init_key=None)._maybe_emit_init_marker(info)
    assert not marks and info == {}


def test_compat_versions_reads_nightly_distributions(monkeypatch):
    import importlib.metadata as md

    def version(name):
        if name in ("torchrl-nightly", "tensordict-nightly"):
            return "2026.10.27"
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "version", version)
    assert compat.versions() == {"torchrl": "2026.10.27", "tensordict": "2026.10.27"}


# --------------------------------------------------------------------------- report


NOISE = [1.00, 1.02, 0.99, 1.01, 0.98, 1.03, 1.00, 0.97, 1.02, 1.01]
EXTEND = "bench_buffers.Extend.time_extend(device=cpu, storage=tensor, sampler=random, " \
         "size=10000)"
GAE = "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=8x1000)"


def _run(values):
    info = {s: {"cases": {c: {"unit": "seconds", "direction": "lower", "kind": "time",
                              "version": "v1"} for c in cases}, "skipped": {}, "errors": {},
                "versions": {}} for s, cases in values.items()}
    rounds = [{s: {"cases": {c: {"samples": [v[i]] * 3, "cpu": [v[i]] * 3} for c, v in
                             cases.items()}} for s, cases in values.items()}
              for i in range(len(NOISE))]
    return gate.Run([{"name": s} for s in values], rounds, info, seconds=60.0)


def _builds():
    def build(name, text, version):
        return sides.Build(sides.parse_side(text), name, f"/envs/{name}/bin/python",
                           {"torchrl": version, "tensordict": "0.x", "torch": "2.13.0+cpu",
                            "python": "3.11"}, how="reused (cached)")

    return [build("torchrl 0.13.3", "torchrl==0.13.3", "0.13.3"),
            build("nightly 2026.10.27", "nightly", "2026.10.27")]


def test_report_marks_a_broken_side_and_reproduces_each_regression():
    base, head = _builds()
    run_ = _run({base.name: {EXTEND: [1e-4 * x for x in NOISE], GAE: [3e-3 * x for x in NOISE]},
                 head.name: {EXTEND: [1.2e-4 * x for x in reversed(NOISE)],
                             GAE: [2e-3 * x for x in reversed(NOISE)]}})
    learning = {base.name: sides.Learning(), head.name: sides.Learning(
        broken=True, why=["ppo returned 12.0 < 100 on gymnasium/cartpole"])}
    rows = vreport.mark_broken(gate.compare(run_, base.name, head.name), base.name, head.name,
                               learning)
    verdicts = {r.case: r.verdict for r in rows}
    assert verdicts[GAE] == "improved (learning BROKEN: nightly 2026.10.27)"
    assert verdicts[EXTEND].startswith("REGRESSION")
    adaptations = {base.name: [{"kind": "dropped", "target": "torchrl.objectives.ClipPPOLoss",
                                "detail": "delay_actor=False"}], head.name: []}
    text = vreport.report(builds=[base, head], run_=run_, comparisons=[(base, head, rows)],
                          learning=learning, adaptations=adaptations,
                          side_texts=["torchrl==0.13.3", "nightly"],
                          command="nox -s versions -- torchrl==0.13.3 nightly", rounds=10,
                          confidence=0.95, threshold=0.05, method="cpu/q10")
    assert "**learning BROKEN: nightly 2026.10.27**" in text
    assert "ppo returned 12.0 < 100" in text
    assert "## API differences (harness/compat.py)" in text
    assert "dropped `delay_actor=False` from `torchrl.objectives.ClipPPOLoss`" in text
    assert "**nightly 2026.10.27**: none" in text
    repro = text.split("## Reproductions", 1)[1]
    assert repro.count("```python") == 1  # one per REGRESSION row, none for the improvement
    assert f"### {EXTEND}: nightly 2026.10.27 vs torchrl 0.13.3" in repro
    assert re.search(r"\*\*torchrl 0\.13\.3\*\* \(torchrl 0\.13\.3, .*\): 10\d µs", repro)
    assert re.search(r"\*\*nightly 2026\.10\.27\*\* \(.*\): 12\d µs per call", repro)
    assert "ratio 1.2" in repro
    assert "nox -s versions -- torchrl==0.13.3 nightly -b" in repro
    assert "/envs/torchrl 0.13.3/bin/python repro.py" in repro
    assert "machine `" in repro


def test_report_without_regressions_or_learning_says_so():
    base, head = _builds()
    run_ = _run({base.name: {GAE: NOISE}, head.name: {GAE: list(reversed(NOISE))}})
    rows = gate.compare(run_, base.name, head.name)
    text = vreport.report(builds=[base, head], run_=run_, comparisons=[(base, head, rows)],
                          learning=None, adaptations={}, side_texts=["a", "b"], command="c",
                          rounds=10, confidence=0.95, threshold=0.05, method="cpu/q10")
    assert "Not run (`--no-learning`)" in text
    assert "No REGRESSION: nothing to reproduce." in text


def test_versions_selection_is_the_gate_then_the_version_cases():
    sel = vreport.selection(gate.GATE_CASES, gate.VERSION_CASES)
    assert sel[:len(gate.GATE_CASES)] == tuple(gate.GATE_CASES)
    assert set(gate.VERSION_CASES) <= set(sel) and len(set(sel)) == len(sel)


@pytest.mark.parametrize("case", [EXTEND, GAE])
def test_reproduction_snippet_runs_standalone(case, tmp_path):
    """The snippet of a report runs by itself (a fresh interpreter, from the checkout): it
    builds the benchmark's setup and times its call."""
    script = tmp_path / "repro.py"
    script.write_text(vreport.snippet(case, repeat=2))
    compile(script.read_text(), str(script), "exec")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300,
                          env={**os.environ, "REPEAT": "2", "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    assert line.startswith("torchrl ") and "per call (2 samples" in line, line
    assert "What it times" in script.read_text()


def test_reproduction_snippet_names_its_parameters_exactly():
    text = vreport.snippet(EXTEND, source=False)
    assert "from bench.bench_buffers import Extend as Bench" in text
    assert "{'device': 'cpu', 'storage': 'tensor', 'sampler': 'random', 'size': '10000'}" \
        in text
    assert 'getattr(bench, "time_extend")' in text
    cmd = vreport.rerun_command(["torchrl==0.13.3", "/src/my rl"], EXTEND)
    assert cmd.startswith("nox -s versions -- torchrl==0.13.3 '/src/my rl' -b '^bench_buffers")
    regex = shlex.split(cmd)[-1]
    assert re.search(regex, EXTEND) and not re.search(regex, EXTEND.replace("10000", "1000000"))
    assert "\n" not in cmd
    assert textwrap.dedent(text) == text
