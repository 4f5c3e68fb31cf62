"""The gate's default selection (``GATE_CASES``, harness/gate/cases.py) covers the suite: a case
from every ``bench/bench_*.py`` module, every loss, env backend, sampler family and reference
algorithm; every id resolves to a real benchmark and parameter combination in this checkout
(the worker's own discovery, as ``python -m harness.gate list`` runs it); ``list`` shows each
case's family; a benchmark that skips itself (a backend not installed) is a ``skipped: reason``
row, not a failure, and one measured once per run is shown but not gated; a benchmark's own
``gate_warmup`` / ``gate_samples`` set its sampling."""

from __future__ import annotations

import os
import shutil

import pytest

from harness import gate
from harness.gate import cli
from harness.gate.cases import case_family, case_params

ROOT = gate.ROOT
MODULES = sorted(p.stem for p in (ROOT / "bench").glob("bench_*.py"))


@pytest.fixture(scope="module")
def suite() -> list[str]:
    """Every case id of this checkout's suite (the worker's discovery, a fresh interpreter)."""
    ids, errors = cli.list_cases(gate.WORKTREE, regex=".")
    assert errors == {}
    return ids


def _values(ids, benchmark: str, key: str) -> set[str]:
    return {case_params(c)[key] for c in ids if c.startswith(benchmark + "(")}


def test_default_selection_has_a_case_from_every_bench_module():
    covered = {cid.split(".", 1)[0] for cid in gate.GATE_CASES}
    assert MODULES and sorted(set(MODULES) - covered) == []
    assert gate.VALIDITY_CASES is gate.GATE_CASES  # the validity study measures this selection


def test_every_default_case_is_a_real_benchmark_and_parameter_combination(suite):
    assert len(set(gate.GATE_CASES)) == len(gate.GATE_CASES)
    assert sorted(set(gate.GATE_CASES) - set(suite)) == []
    found, errors = cli.list_cases(gate.WORKTREE, gate.GATE_CASES)  # what `regress` selects
    assert errors == {} and sorted(found) == sorted(gate.GATE_CASES)


def test_default_selection_has_every_loss_backend_sampler_and_algorithm(suite):
    chosen = gate.GATE_CASES
    for benchmark, key in [("bench_losses.Loss.time_update", "algorithm"),
                           ("bench_training.TrainingRun.time_run", "algorithm")]:
        assert _values(suite, benchmark, key) == _values(chosen, benchmark, key), benchmark

    def backends(ids):
        return {v.split("/", 1)[0]
                for v in _values(ids, "bench_envs.EnvStep.time_steps", "case")}

    assert backends(suite) == backends(chosen) == {"gymnasium", "dm_control", "envpool",
                                                   "probe"}
    families = {case_family(c) for c in chosen}
    for family in ("replay buffer: Sample tensor/random",
                   "replay buffer: Sample tensor/without_replacement",
                   "replay buffer: UpdatePriority tensor/prioritized",
                   "replay buffer: Sample tensor/slice", "replay buffer: Extend memmap/random",
                   "GAE / TD(λ): GAE rlgauge", "GAE / TD(λ): TDLambda rlgauge",
                   "collector: Collect 8 envs/mlp", "collector: Collect 1 env/random"):
        assert family in families
    for estimator in ("GAE", "TDLambda"):  # torchrl's too
        assert any(f.startswith(f"GAE / TD(λ): {estimator} torchrl") for f in families)


def test_case_family_names_the_module_class_and_family_parameters():
    assert case_family("bench_envs.EnvStep.time_steps(device=cpu, case=envpool/cartpole, "
                       "num_envs=8, impl=torchrl)") == "env backend: EnvStep envpool"
    assert case_family("bench_buffers.UpdatePriority.time_sample_update(device=cpu, "
                       "storage=tensor, size=10000)") == \
        "replay buffer: UpdatePriority tensor/prioritized"
    assert case_family("bench_collectors.MultiCollect.track_s_per_frame(device=cpu, "
                       "case=probe/constant-truncated, num_envs=8, policy=mlp, "
                       "collector=multiasync)") == "collector: MultiCollect 8 envs/mlp/multiasync"
    assert case_family("bench_new.Thing.time_it(n=1)") == "bench_new: Thing"


def test_list_shows_the_default_selection_in_order_with_families(capsys):
    assert gate.main(["list"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert [line.split("  ")[-1].strip() for line in lines] == list(gate.GATE_CASES)
    for line, cid in zip(lines, gate.GATE_CASES, strict=True):
        assert line.startswith(case_family(cid) + " ")
    assert f"{len(gate.GATE_CASES)} case(s) in working tree, from {len(MODULES)} module(s)" \
        in err


SKIPPING_BENCH = '''
import time


class Missing:
    def setup(self):
        raise NotImplementedError("backend nope unavailable: No module named 'nope'")

    def time_step(self):
        pass


class Once:
    def setup_cache(self):
        t0 = time.perf_counter()
        sum(x * x for x in range(50000))
        return time.perf_counter() - t0

    def track_us(self, seconds):
        return seconds * 1e6

    track_us.unit = "us/call"


class Plain:
    def time_sum(self):
        sum(x * x for x in range(2000))


class Costly:
    gate_warmup = 0
    gate_samples = 2

    def time_run(self):
        sum(x * x for x in range(2000))
'''


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the gate's workers fork per round")
def test_skipped_and_once_per_run_cases_are_rows_that_do_not_fail_the_gate(tmp_path):
    """A benchmark that raises NotImplementedError in setup (as every bench module does for a
    backend or device that is missing) is a ``skipped: reason`` row; one measured in
    setup_cache repeats one value a side: shown, not gated. Neither changes the exit code."""
    trees = []
    for name in ("base", "head"):  # two checkouts: setup_cache is computed per checkout
        tree = tmp_path / name
        (tree / "bench").mkdir(parents=True)
        (tree / "bench" / "__init__.py").write_text("")
        (tree / "bench" / "bench_skips.py").write_text(SKIPPING_BENCH)
        trees.append(tree)
    fast = gate.Settings(budget_s=0.02, warmup=1, min_samples=5, max_samples=8)
    result = gate.run([gate.Side(n, t, settings=fast) for n, t in zip(("base", "head"), trees,
                                                                       strict=True)],
                      regex="bench_skips", rounds=6, workdir=tmp_path / "work")
    rows = {r.case: r for r in gate.compare(result, "base", "head")}
    assert rows["bench_skips.Missing.time_step"].verdict == (
        "skipped: backend nope unavailable: No module named 'nope'")
    once = rows["bench_skips.Once.track_us"]
    assert once.verdict == "not gated: measured once per run" and once.low is None
    assert once.ratio == pytest.approx(once.head / once.base)
    plain = rows["bench_skips.Plain.time_sum"]  # timed and gated: a ratio and an interval
    assert plain.pairs == 6 and plain.low is not None and plain.low <= plain.ratio <= plain.high
    # a benchmark's own gate_warmup / gate_samples (bench_training.TrainingRun's) win over the
    # settings: no warm-up call, exactly 2 samples a round, whatever the budget
    costly = [r[side]["cases"]["bench_skips.Costly.time_run"] for r in result.rounds
              for side in ("base", "head")]
    assert all(c["warmup"] == [] and len(c["cpu"]) == 2 for c in costly), costly[0]
    assert all(len(r["base"]["cases"]["bench_skips.Plain.time_sum"]["cpu"]) >= 5
               for r in result.rounds)
    # neither a skip nor a once-per-run value fails the gate; the two timed rows are identical
    # code measured for 6 rounds, so their verdicts are chance here and stay out of the exit code
    # (an A/A REGRESSION of the 2-sample `Costly` failed this test once on CI)
    assert gate.gate_exit_code([rows["bench_skips.Missing.time_step"], once]) == 0
    table = gate.markdown(list(rows.values()))
    assert "skipped: backend nope unavailable" in table and "measured once per run" in table
    shutil.rmtree(tmp_path / "work", ignore_errors=True)


WARMING_BENCH = '''
class SetupWarms:
    warmup_time = 0.0  # asv: "setup warms up"

    def time_a(self):
        pass


class SetupWarmsButAsks:
    warmup_time = 0
    gate_warmup = 2

    def time_b(self):
        pass


class AsvWarms:
    warmup_time = 0.1

    def time_c(self):
        pass


def time_plain():
    pass
'''


def test_a_benchmark_whose_setup_warms_up_gets_no_warm_up_call(tmp_path, monkeypatch):
    """asv's ``warmup_time = 0`` (most bench classes: "setup warms up") means no warm-up call in
    the gate's rounds either; a ``gate_warmup`` of the benchmark's own still wins, and anything
    else takes ``Settings.warmup``."""
    import sys
    import types

    from harness.gate import worker

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_warming.py").write_text(WARMING_BENCH)
    package = types.ModuleType("bench")
    package.__path__ = [str(tmp_path / "bench")]
    monkeypatch.setitem(sys.modules, "bench", package)
    try:
        cases, errors = worker.discover(tmp_path, lambda cid: True, modules=["bench_warming"])
    finally:
        sys.modules.pop("bench.bench_warming", None)
    assert errors == {}
    warmups = {c.id: c.warmup for c in cases}
    assert warmups == {"bench_warming.SetupWarms.time_a": 0,
                       "bench_warming.SetupWarmsButAsks.time_b": 2,
                       "bench_warming.AsvWarms.time_c": None,  # Settings.warmup
                       "bench_warming.time_plain": None}
