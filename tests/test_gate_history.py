"""The gate's step history (``regress --history N``, harness/gate/history.py): on a tiny git
repository whose third commit makes one benchmark's library call three times the work, the
history names that commit; a rerun measures only the pairs not stored yet, and a second one
nothing; bad input is one line and exit 2 before anything is measured."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import GIT_ENV, git_repo

from harness import gate
from harness.errors import UsageError
from harness.gate import history

ROOT = Path(__file__).resolve().parents[1]

BENCH = '''
from toylib import work


class Toy:
    params = [[20000]]
    param_names = ["n"]

    def setup(self, n):
        self.data = list(range(n))

    def time_work(self, n):
        work(self.data)

    def time_plain(self, n):
        sum(x * x for x in self.data)
'''
WORK = "def work(data):\n    return sum(x * x for x in data)\n"
SLOW = "def work(data):\n    return sum(sum(x * x for x in data) for _ in range(3))\n"
CASES = ("bench_toy.Toy.time_work(n=20000)", "bench_toy.Toy.time_plain(n=20000)")
#: seconds of samples and their number per case and round: enough for a 3x step
FAST = gate.Settings(budget_s=0.02, warmup=1, min_samples=5, max_samples=8)


def _toy_repo(root: Path) -> list[str]:
    """Four commits, oldest first: the benchmark, a README, the slowdown (in the library the
    benchmark calls: the benchmark's own source, hence its version, is unchanged), a README."""
    return git_repo(root, [
        ("toy benchmark", {"bench/__init__.py": "", "bench/bench_toy.py": BENCH,
                           "toylib.py": WORK}),
        ("readme", {"README.md": "toy\n"}),
        ("work: three passes", {"toylib.py": SLOW}),
        ("readme again", {"README.md": "toy, again\n"}),
    ])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_history_names_the_slow_commit_and_reuses_stored_pairs(tmp_path, monkeypatch):
    repo, store = tmp_path / "repo", tmp_path / "store"
    shas = _toy_repo(repo)
    calls = []

    def counting_run(sides, **kw):
        calls.append([s.label for s in sides])
        return gate.run(sides, **kw)

    monkeypatch.setattr(history, "run", counting_run)
    kw = {"cases": CASES, "settings": FAST, "rounds": 6, "machine": "toy-vm", "store": store,
          "repo": repo, "threshold": 0.25}

    first = history.history(2, **kw)  # the newest two: readme again, the slowdown
    assert [p.commit for p in first.pairs] == [shas[3], shas[2]]
    assert [p.parent for p in first.pairs] == [shas[2], shas[1]]
    assert len(calls) == 2 and first.measured_pairs == 2
    steps = [(p.commit, r.case, r.verdict) for p, r in first.steps()]
    assert steps == [(shas[2], CASES[0], "REGRESSION")], first.markdown()
    step = first.steps()[0][1]
    assert 2.0 < step.ratio < 4.0  # three passes instead of one
    assert first.exit_code() == 1
    text = first.markdown()
    assert text.splitlines()[-1] == (f"Step(s) at 1 of the last 2 commit(s) of main: "
                                     f"{shas[2][:10]} \"work: three passes\" (1 slower).")
    assert text.count("**REGRESSION**") == 1 and "time_plain" not in text

    # each pair is stored under <machine>/<commit>/<settings key>/, the gate's run format
    files = sorted((store / "toy-vm" / shas[2] / first.key).glob("*.json"))
    assert [f.name for f in files][-1] == "settings.json" and len(files) == 2
    stored = gate.Run.load(files[0])
    assert [s["commit"] for s in stored.sides] == [shas[1], shas[2]]
    assert set(stored.info["head"]["cases"]) == set(CASES)

    calls.clear()
    longer = history.history(3, **kw)  # one more commit: only its pair is measured
    assert calls == [[shas[0][:10], shas[1][:10]]]
    assert [p.measured for p in longer.pairs] == [False, False, True]
    assert [(p.commit, r.case) for p, r in longer.steps()] == [(shas[2], CASES[0])]

    calls.clear()
    again = history.history(3, **kw)  # everything stored: nothing measured
    assert calls == [] and again.measured_pairs == 0
    assert again.markdown().splitlines()[-1] == longer.markdown().splitlines()[-1]

    calls.clear()  # the same commits under other settings are measured anew
    other = history.history(1, **{**kw, "rounds": 7})
    assert len(calls) == 1 and other.key != first.key


def test_history_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch,
                                                                   capsys):
    def no_measuring(*args, **kwargs):
        raise AssertionError("measured despite bad input")

    monkeypatch.setattr(history, "run", no_measuring)
    for n, message in [("0", "error: --history must be >= 1, got 0"),
                       ("100000", "error: --history 100000: main has ")]:
        if n == "100000" and not (ROOT / ".git").exists():
            continue
        assert gate.main(["regress", "--history", n]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    assert gate.main(["regress", "--history", "2", "."]) == 2
    assert "'.' (the working tree) is not one" in capsys.readouterr().err

    repo = tmp_path / "repo"
    shas = _toy_repo(repo)
    with pytest.raises(UsageError, match=r"--history 4: main has 3 commit\(s\) with a parent"):
        history.history(4, repo=repo, store=tmp_path / "store")
    shallow = tmp_path / "shallow"
    subprocess.run(["git", "clone", "-q", "--depth", "2", f"file://{repo}", str(shallow)],
                   check=True, env={**os.environ, **GIT_ENV})
    with pytest.raises(UsageError, match=r"--history 2: this clone is shallow \(2 commit\(s\) "
                                         r"of main here, so 1 with a parent\): fetch full"):
        history.history(2, repo=shallow, store=tmp_path / "store")
    # as deep as needed: a shallow clone's last commit still has its files
    assert history.first_parent_pairs(1, "main", shallow) == [
        (shas[3], shas[2], "readme again")]
    assert not (tmp_path / "store").exists()


def test_settings_key_changes_with_what_shapes_the_measurements():
    key, described = history.settings_key(gate.Settings(), 10)
    assert history.settings_key(gate.Settings(), 10) == (key, described)
    assert history.settings_key(gate.Settings(budget_s=0.1), 10)[0] != key
    assert history.settings_key(gate.Settings(), 15)[0] != key
    assert history.settings_key(gate.Settings(), 10, restart_every=0)[0] != key
    assert history.settings_key(gate.Settings(), 10, restart_every=0) == \
        history.settings_key(gate.Settings(), 10, restart_every=None)  # both: never
    assert history.settings_key(gate.Settings(), 10, interleave="case")[0] != key
    assert set(described) == {"settings", "rounds", "restart_every", "interleave", "python",
                              "torch", "torchrl", "tensordict", "worker"}
    assert described["interleave"] == "sample"
