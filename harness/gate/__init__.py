"""CI regression gate: BASE and HEAD measured in one job, interleaved, with error rates measured.

    nox -s regress [-- BASE HEAD]       python -m harness.gate regress [BASE] [HEAD] [-b REGEX]
    nox -s regress -- --save-baseline   results/baseline/<machine>.csv (then --against-baseline)
    nox -s regress -- --history N       each of the last N commits of main against its parent
    python -m harness.gate list         the default selection (GATE_CASES), each case's family
    nox -s gate_validity                noise controls, A/A false alarms, injected slowdowns
    nox -s versions -- A B [C ...]      any torchrl builds (releases, nightly, a checkout, a
                                        wheel) side by side, learning-checked (``versions``)

BASE defaults to the merge base of HEAD with main (HEAD's parent when HEAD is on main); a rev
of ``.`` is the working tree with its uncommitted changes. Exit 1 only when a benchmark got
slower by more than the threshold AND the slowdown is significant; exit 2 when HEAD could not
run a benchmark; the Markdown table lists every benchmark with its ratio, interval and verdict.
The default selection (``cases.GATE_CASES``) has a case from every bench module and family; a
benchmark that skips itself (a backend or device missing here) is a ``skipped: reason`` row,
never a failure.
The measurements behind the defaults (error rates, noise, timings) are in the README's
"Regression gate" section and ``results/gate/``; this package describes the design.

How a run works (one module per concern)
----------------------------------------
- ``runner``: each side is a checkout (``git archive`` of the commit, or a copy of the working
  tree) measured by one server process with ``PYTHONPATH`` at the checkout, so each commit's
  own ``harness/``, ``reference_impls/`` *and* ``bench/`` are measured; each round is a child
  forked from the side's server, fresh servers start every 6 rounds (``--restart-every``,
  ``cases.DEFAULT_RESTART_EVERY``: a server can carry an offset of its own), 12 rounds by
  default (``cases.DEFAULT_ROUNDS``), and within a round, case by case, both sides set the case
  up, then take their samples in turn (A B, B A, ...), so a pair's samples are one sample
  apart (on this VM the machine's speed drifts within seconds). ``Run`` is the run file.
- ``worker``: the server, stdlib only and booted by path (a commit without this package can
  still be measured); per round and case ``setup``, 3 timed warm-up calls (none for a
  benchmark whose asv ``warmup_time`` is 0: its setup warms up), samples for 0.3 s (5 to 25 of
  them), ``teardown`` (a benchmark's own ``gate_warmup`` / ``gate_samples`` win:
  bench_training's ``TrainingRun``, one short training run a round); the same-round
  calibration workload between cases. Once warm it freezes its heap (``freeze_heap``): a
  round's garbage collections walk the round's own objects, whatever the server's history. It
  owns the test-only slowdown knob (``RLGAUGE_INJECT_SLOWDOWN``).
- Noise controls in every worker (``cases.Settings``): 1 torch thread (and OMP/MKL), pinned to
  one CPU for the rounds (the servers import and warm up before they pin, side by side on all
  CPUs), warm-up, many samples, interleaving; the round's value of a case is the 10th
  percentile of its samples' **process CPU time** (``time.process_time``, scaled by the
  benchmark's own ``timer``, e.g. per operation).
- ``compare`` + ``stats``: per case the paired log ratios head/base of the rounds, their
  Hodges-Lehmann estimate and the distribution-free interval that inverts Wilcoxon's
  signed-rank test (exact up to 60 rounds). REGRESSION = ratio > 1 + threshold and the 95%
  interval above 1. track_* throughput (``.../s``, fps, returns) is higher-is-better, so a
  *drop* fails; units like fractions, ratios and errors are "not gated"
  (``harness.comparison.direction``). A benchmark whose own source differs between the sides
  is reported but not gated (as asv starts a new series), and so is one whose rounds all
  repeat one value (measured once per run, in ``setup_cache``: bench_training's ``Training``):
  its rounds are copies, not replicates. A default case measured too noisy here to gate
  (``cases.NOT_GATED``, with why) is shown with its verdict and never fails.
- ``baseline``: HEAD against a stored CSV (advisory); ``history``: the step history, each
  commit of main against its parent, every pair's rounds kept under ``results/gate/history/``
  and reused; ``validity`` and ``noise``: the studies that measure the gate itself; ``cli``:
  ``python -m harness.gate``.

Why not ``asv continuous``
--------------------------
- Its test works on samples, and samples of one process are not independent draws: a
  sample-level test in its manner alarms far more often on A/A runs than one value per round.
- It takes ``bench/`` from the working tree for every commit, times the wall clock unless a
  benchmark sets its own ``timer``, and has no higher-is-better metric (an fps gain fails it).
- It builds and installs the project per commit into its own environments and runs every
  parameter point in a fresh process with setup per sample; this gate runs in the nox venv,
  history-free, with one server per side at a time.

Limits: the CPU clock leaves out work done in other processes (multi-process collectors,
``ParallelEnv``): select such benchmarks with ``--clock wall``. The 10th percentile sees work
added to every call; a slowdown of a few calls only (an occasional reallocation) moves the
median but not the 10th percentile (``--stat median``). track_* values are timed by the
benchmark itself on the wall clock (median of 3 calls per round), far noisier than time_*.
"""

from __future__ import annotations

from harness.gate.baseline import (
    BASELINE_COLUMNS,
    BASELINE_FORMAT,
    OPTIONAL_BASELINE_COLUMNS,
    baseline_rows,
    check_baseline_hardware,
    compare_baseline,
    load_baseline,
    save_baseline,
)
from harness.gate.cases import (
    DEFAULT_CLOCK,
    DEFAULT_CONFIDENCE,
    DEFAULT_NORMALISE,
    DEFAULT_ROUNDS,
    DEFAULT_STAT,
    DEFAULT_THRESHOLD,
    FAMILIES,
    GATE_CASES,
    INJECT_ENV,
    NOT_GATED,
    ROOT,
    VALIDITY_CASES,
    VERSION_CASES,
    Settings,
    case_direction,
    case_family,
    split_case,
)
from harness.gate.cli import main
from harness.gate.compare import (
    ONCE_PER_RUN,
    Method,
    Row,
    compare,
    gate_exit_code,
    markdown,
    once_per_run,
    paired_log_ratios,
    round_value,
    verdict,
)
from harness.gate.history import History, first_parent_pairs, settings_key
from harness.gate.noise import NOISE_SIDES, noise_report
from harness.gate.runner import (
    RUN_FORMAT,
    WORKTREE,
    Run,
    Side,
    default_base,
    export_tree,
    resolve,
    run,
    side_order,
)
from harness.gate.stats import (
    STATS,
    hodges_lehmann,
    quantile,
    robust_sd,
    signed_rank_cdf,
    welch_interval,
    wilson,
)
from harness.gate.validity import (
    METHODS,
    VALIDITY_SIZES,
    Rates,
    choose_defaults,
    chosen_false_alarms,
    validity_rates,
    validity_report,
    validity_sides,
)

__all__ = [
    "BASELINE_COLUMNS", "BASELINE_FORMAT", "DEFAULT_CLOCK", "DEFAULT_CONFIDENCE",
    "DEFAULT_NORMALISE", "DEFAULT_ROUNDS", "DEFAULT_STAT", "DEFAULT_THRESHOLD", "FAMILIES",
    "GATE_CASES", "INJECT_ENV", "METHODS", "NOISE_SIDES", "NOT_GATED", "ONCE_PER_RUN",
    "OPTIONAL_BASELINE_COLUMNS", "ROOT", "RUN_FORMAT", "STATS", "VALIDITY_CASES",
    "VALIDITY_SIZES", "VERSION_CASES", "WORKTREE", "History", "Method", "Rates", "Row", "Run",
    "Settings", "Side", "baseline_rows", "case_direction", "case_family",
    "check_baseline_hardware", "choose_defaults", "chosen_false_alarms", "compare",
    "compare_baseline", "default_base", "export_tree", "first_parent_pairs", "gate_exit_code",
    "hodges_lehmann", "load_baseline", "main", "markdown", "noise_report",
    "once_per_run", "paired_log_ratios", "quantile", "resolve", "robust_sd", "round_value",
    "run", "save_baseline", "settings_key", "side_order", "signed_rank_cdf", "split_case",
    "validity_rates", "validity_report", "validity_sides", "verdict", "welch_interval",
    "wilson",
]
