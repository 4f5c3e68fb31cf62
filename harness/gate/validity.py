"""The validity study: does the gate raise false alarms, and does it catch real slowdowns?

Sides A and A' (the same checkout twice) and one side per injected slowdown (``+5%`` ...:
``RLGAUGE_INJECT_SLOWDOWN``, the worker's test-only knob, adds that fraction of each call's own
CPU time) are measured interleaved; workers restart every ``block`` rounds, so each block is
an independent gate run (**block trials**), and ``resamples`` trials of ``block`` rounds are
drawn from all rounds (**resampled trials**: they assume the rounds are exchangeable; the block
trials check that). For every round-value method, confidence and threshold it counts A/A
alarms and detected slowdowns, and ``choose_defaults`` picks what to ship. The measured rates
are in the README's "Regression gate" section and ``results/gate/validity-<machine>.md``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.gate.cases import (
    DEFAULT_CONFIDENCE,
    DEFAULT_THRESHOLD,
    INJECT_ENV,
    NOT_GATED,
    Settings,
    split_case,
)
from harness.gate.compare import (
    REGRESSION,
    Method,
    conditions,
    kn,
    md_table,
    once_per_run,
    pct,
    round_value,
    side_values,
    verdict,
)
from harness.gate.runner import INTERLEAVE_WORDS, Run, Side
from harness.gate.stats import hodges_lehmann, wilson
from harness.provenance import machine_name

METHODS = tuple(Method(c, s, n) for c in ("cpu", "wall") for s in ("median", "q25", "q10", "min")
                for n in (False, True))
VALIDITY_SIZES = (0.05, 0.10, 0.20)
THRESHOLDS = (0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.10)
CONFIDENCES = (0.95, 0.99)
GOAL_FALSE_ALARMS = 0.01  # suite-wide A/A: share of gate runs with any alarm
GOAL_DETECTION = 0.95  # share of 10% slowdowns flagged


def validity_sides(tree: Path, sizes: Sequence[float] = VALIDITY_SIZES, regex: str = ".",
                   settings: Settings | None = None) -> list[Side]:
    """A and A' (the same checkout twice) and one side per injected slowdown."""
    settings = settings or Settings()
    sides = [Side("A", tree, settings=settings), Side("A'", tree, settings=settings)]
    sides += [Side(f"+{s:.0%}", tree, env={INJECT_ENV: f"{regex}={s}"}, settings=settings)
              for s in sizes]
    return sides


def _per_round(run_: Run, base: str, head: str, case: str, direction_: str, method: Method
               ) -> list[float | None]:
    out = []
    for row in run_.rounds:
        a = round_value(row.get(base, {}), case, direction_=direction_, **method.kw())
        b = round_value(row.get(head, {}), case, direction_=direction_, **method.kw())
        out.append(math.log(b / a) if a and b and a > 0 and b > 0 else None)
    return out


def gated_cases(run_: Run, side: str = "A") -> list[str]:
    """The cases the gate tests: not info metrics, and not measured once per run (their
    rounds repeat one value: A and A' share it, so they could never alarm nor detect)."""
    info = run_.info[side]["cases"]
    return [c for c in sorted(info) if info[c]["direction"] != "info" and not once_per_run(
        side_values(run_, side, c, direction_=info[c]["direction"]))]


def is_alarm(est: float, lo: float, hi: float, threshold: float, direction_: str) -> bool:
    return verdict(est, lo, hi, threshold, direction_) == REGRESSION


@dataclass
class Rates:
    """Alarm counts of one (method, confidence, threshold) over a set of trials."""

    trials: int = 0
    aa_alarms: int = 0  # (trial, case) A/A alarms
    aa_cells: int = 0
    aa_runs_alarmed: int = 0  # trials with any A/A alarm
    detected: dict = field(default_factory=dict)  # size -> [alarms, cells]
    per_case: dict = field(default_factory=dict)  # case -> {"aa": [k, n], size: [k, n]}

    @property
    def fa_case(self) -> float:
        return self.aa_alarms / self.aa_cells if self.aa_cells else float("nan")

    @property
    def fa_suite(self) -> float:
        return self.aa_runs_alarmed / self.trials if self.trials else float("nan")

    def detection(self, size: float) -> float:
        k, n = self.detected.get(size, (0, 0))
        return k / n if n else float("nan")


def trial_sets(n_rounds: int, block: int, resamples: int, seed: int = 0
               ) -> tuple[list[list[int]], list[list[int]]]:
    """(disjoint blocks -- each a fresh set of servers, i.e. an independent gate run --,
    resampled trials: ``block`` rounds drawn without replacement from all of them)."""
    blocks = [list(range(b * block, (b + 1) * block)) for b in range(n_rounds // block)]
    rng = random.Random(seed)
    resampled = [sorted(rng.sample(range(n_rounds), block)) for _ in range(resamples)]
    return blocks, resampled


def validity_rates(run_: Run, *, block: int, sizes: Sequence[float], methods=METHODS,
                   confidences=CONFIDENCES, thresholds=THRESHOLDS, resamples: int = 2000,
                   seed: int = 0, cases: Sequence[str] | None = None) -> dict:
    """{(kind, method, confidence, threshold): Rates}, kind "blocks" or "resampled", over
    ``cases`` (default: every gated case of the run; "A/A runs with an alarm" counts these)."""
    info = run_.info["A"]
    gated = gated_cases(run_)
    if cases is not None:
        wanted = set(cases)
        gated = [c for c in gated if c in wanted]
    injectable = [c for c in gated if info["cases"][c]["kind"] == "time"]
    blocks, resampled = trial_sets(len(run_.rounds), block, resamples, seed)
    out: dict = {}
    for method in methods:
        series = {}
        for case in gated:
            dir_ = info["cases"][case]["direction"]
            series[case, "aa"] = _per_round(run_, "A", "A'", case, dir_, method)
            for s in sizes:
                if case in injectable:
                    series[case, s] = _per_round(run_, "A", f"+{s:.0%}", case, dir_, method)
        for conf in confidences:
            for kind, trials in (("blocks", blocks), ("resampled", resampled)):
                rates = {t: Rates() for t in thresholds}
                for trial in trials:
                    alarmed = dict.fromkeys(thresholds, False)
                    for (case, comp), d_all in series.items():
                        d = [d_all[i] for i in trial if d_all[i] is not None]
                        if len(d) < 3:
                            continue
                        est, lo, hi = hodges_lehmann(d, conf)
                        dir_ = info["cases"][case]["direction"]
                        for t in thresholds:
                            alarm = is_alarm(est, lo, hi, t, dir_)
                            r = rates[t]
                            cell = r.per_case.setdefault(case, {}).setdefault(comp, [0, 0])
                            cell[0] += alarm
                            cell[1] += 1
                            if comp == "aa":
                                r.aa_alarms += alarm
                                r.aa_cells += 1
                                alarmed[t] = alarmed[t] or alarm
                            else:
                                det = r.detected.setdefault(comp, [0, 0])
                                det[0] += alarm
                                det[1] += 1
                    for t in thresholds:
                        rates[t].trials += 1
                        rates[t].aa_runs_alarmed += alarmed[t]
                for t in thresholds:
                    out[kind, method, conf, t] = rates[t]
    return out


def chosen_false_alarms(rates: dict, key: tuple) -> float:
    """The suite-wide A/A false-alarm rate that ``choose_defaults`` holds ``key`` (method,
    confidence, threshold) to: the resampled trials' rate, or the block trials' where higher.
    Resampling assumes the rounds are exchangeable; fresh workers per block can make them not:
    on the idle VM (results/gate/validity-vm-idle.md) calibrated q10 at a 2% threshold alarmed
    in 0.9% of resampled trials but in 3 of 12 independent blocks."""
    res = rates["resampled", *key].fa_suite
    blocks = rates.get(("blocks", *key))
    if blocks is None or not blocks.trials:
        return res
    return max(res, blocks.fa_suite)


def choose_defaults(rates: dict, sizes: Sequence[float]) -> tuple[tuple, bool]:
    """The (method, confidence, threshold) to ship, and whether it meets both goals.
    Detection is read from the resampled trials, false alarms from ``chosen_false_alarms``
    (resampled, or the independent blocks where those alarmed more). Among the candidates
    meeting both goals: the best detection of the smallest slowdown, then the fewest false
    alarms, then the largest threshold. Otherwise: the best 10% detection with suite-wide
    false alarms within the goal, else the fewest false alarms."""
    res = {k[1:]: v for k, v in rates.items() if k[0] == "resampled"}
    fa = {k: chosen_false_alarms(rates, k) for k in res}
    ten = 0.10 if 0.10 in sizes else sorted(sizes)[len(sizes) // 2]
    smallest = min(sizes)
    meets = [k for k, r in res.items()
             if fa[k] <= GOAL_FALSE_ALARMS and r.detection(ten) >= GOAL_DETECTION]
    if meets:
        return max(meets, key=lambda k: (round(res[k].detection(smallest), 3), -fa[k],
                                         k[2])), True
    ok_fa = [k for k in res if fa[k] <= GOAL_FALSE_ALARMS]
    if ok_fa:
        return max(ok_fa, key=lambda k: (res[k].detection(ten), k[2])), False
    return min(res, key=lambda k: (fa[k], -res[k].detection(ten))), False



def _asv_style_false_alarms(run_: Run, trials: list[list[int]], threshold: float) -> dict:
    """A/A alarms of a sample-level test in asv's manner -- every sample of the trial's
    rounds pooled per side, Mann-Whitney U (p < 0.05, two-sided), median ratio beyond the
    threshold -- wall clock, for comparison with the round-level test."""
    from scipy.stats import mannwhitneyu

    info = run_.info["A"]
    cases = [c for c in sorted(info["cases"]) if info["cases"][c]["kind"] == "time"]
    alarms, cells, runs = 0, 0, 0
    for trial in trials:
        any_alarm = False
        for case in cases:
            a = [x for i in trial for x in run_.rounds[i]["A"]["cases"].get(case, {})
                 .get("samples", [])]
            b = [x for i in trial for x in run_.rounds[i]["A'"]["cases"].get(case, {})
                 .get("samples", [])]
            if len(a) < 3 or len(b) < 3:
                continue
            p = mannwhitneyu(a, b, alternative="two-sided").pvalue
            alarm = p < 0.05 and statistics.median(b) / statistics.median(a) > 1 + threshold
            alarms += alarm
            cells += 1
            any_alarm = any_alarm or alarm
        runs += any_alarm
    return {"fa_case": alarms / cells if cells else float("nan"),
            "fa_suite": runs / len(trials) if trials else float("nan")}



def shipped_defaults_section(run_: Run, *, block: int, sizes: Sequence[float],
                             resamples: int = 2000, not_gated=None) -> list[str]:
    """Markdown lines: the rates of the defaults ``regress`` ships (``Method()``,
    ``DEFAULT_CONFIDENCE``, ``DEFAULT_THRESHOLD``) over the cases it gates (the run's gated
    cases minus ``not_gated``, default ``NOT_GATED``), at ``block`` rounds and, resampled, at
    ``block + 2``; then per case, not-gated ones included. What the README's gate table
    quotes."""
    not_gated = NOT_GATED if not_gated is None else not_gated
    method, conf, thr = Method(), DEFAULT_CONFIDENCE, DEFAULT_THRESHOLD
    size = 0.10 if 0.10 in sizes else sizes[0]
    every = gated_cases(run_)
    gated = [c for c in every if c not in not_gated]
    more = block + 2

    def rates(cases, rounds):
        return validity_rates(run_, block=rounds, sizes=(size,), methods=(method,),
                              confidences=(conf,), thresholds=(thr,), resamples=resamples,
                              cases=cases)

    at, at_more = rates(gated, block), rates(gated, more)
    b, r, r2 = at["blocks", method, conf, thr], at["resampled", method, conf, thr], \
        at_more["resampled", method, conf, thr]

    def under_goal(rr):
        return sorted(c for c, cell in rr.per_case.items()
                      if size in cell and cell[size][0] / cell[size][1] < GOAL_DETECTION)

    low, low2 = under_goal(r), under_goal(r2)
    L = ["## The shipped defaults", "",
         f"Round value {method}, Hodges-Lehmann {conf:.0%}, threshold {thr:.0%}, over the "
         f"**{len(gated)} gated cases** ({len(every) - len(gated)} measured but not gated: "
         f"`NOT_GATED`); resampled trials also at {more} rounds.", "",
         md_table(["", f"{block} rounds: block trials", f"{block} rounds: resampled",
                   f"{more} rounds: resampled"], [
             ["A/A gate runs with any false alarm", kn([b.aa_runs_alarmed, b.trials]),
              pct(r.fa_suite), pct(r2.fa_suite)],
             ["A/A false alarms per case and run", kn([b.aa_alarms, b.aa_cells]),
              pct(r.fa_case), pct(r2.fa_case)],
             [f"+{size:.0%} detected", kn(b.detected.get(size, [0, 0])),
              pct(r.detection(size)), pct(r2.detection(size))],
             [f"gated cases under {GOAL_DETECTION:.0%}", "", str(len(low)), str(len(low2))]],
             "lrrr")]
    if low:
        L += ["", f"Under {GOAL_DETECTION:.0%} at {block} rounds: "
              + ", ".join(f"`{c}`" for c in low) + "."]
    # per case, a case's cells do not depend on the others (the trials are the same): the gated
    # cases' are in hand, the not-gated ones' are computed alone
    others = [c for c in every if c in not_gated]
    o_at, o_more = rates(others, block), rates(others, more)
    eb, er, er2 = ({**main[kind, method, conf, thr].per_case,
                    **other[kind, method, conf, thr].per_case}
                   for main, other, kind in ((at, o_at, "blocks"), (at, o_at, "resampled"),
                                             (at_more, o_more, "resampled")))

    def cell(table, case, comp, blocks=False):
        k_n = table.get(case, {}).get(comp)
        if not k_n:
            return "–"
        return kn(k_n) if blocks else pct(k_n[0] / k_n[1])

    rows = [[*split_case(c), f"{cell(eb, c, 'aa', True)} / {cell(er, c, 'aa')}",
             f"{cell(eb, c, size, True)} / {cell(er, c, size)}", cell(er2, c, size),
             "not gated" if c in not_gated else "gated"] for c in every]
    L += ["", md_table(["benchmark", "params", "A/A (blocks / resampled)",
                        f"+{size:.0%} (blocks / resampled)", f"+{size:.0%} at {more} rounds",
                        ""], rows, "llllrl"), ""]
    return L


def validity_report(run_: Run, *, block: int, sizes: Sequence[float] = VALIDITY_SIZES,
                    resamples: int = 2000, command: str = "") -> tuple[str, tuple, bool]:
    """The Markdown report of a validity run, and the chosen (method, confidence, threshold)."""
    rates = validity_rates(run_, block=block, sizes=sizes, resamples=resamples)
    (method, conf, thr), met = choose_defaults(rates, sizes)
    info = run_.info["A"]
    blocks_r = rates["blocks", method, conf, thr]
    res_r = rates["resampled", method, conf, thr]
    n_blocks = len(run_.rounds) // block
    gated = gated_cases(run_)
    k = run_.restart_every
    within = f" and every {k} rounds within it, as the gate does" if k and k < block else ""
    L = [f"# Regression gate validity: machine `{machine_name()}`", "",
         f"Measured with `{command}`." if command else "", "",
         "## Conditions", "", *conditions(run_),
         f"- {len(run_.rounds)} rounds of the sides {', '.join(run_.side_names())}, "
         f"{INTERLEAVE_WORDS.get(run_.interleave, run_.interleave)} "
         f"(A and A' are the same checkout; `+x%` injects x% "
         f"extra work per call through `RLGAUGE_INJECT_SLOWDOWN`, harness/gate/worker.py); "
         f"workers restarted at the start of every block of {block} rounds"
         f"{within}, so each block is an independent gate run (fresh processes): "
         f"**{n_blocks} block trials**; plus "
         f"{resamples} **resampled trials** of {block} rounds drawn from all "
         f"{len(run_.rounds)} (they assume rounds are exchangeable; the block trials check "
         f"that).", "",
         *shipped_defaults_section(run_, block=block, sizes=sizes, resamples=resamples),
         "## Chosen defaults", "",
         f"- round value: **{method}** (clock / statistic of the round's samples / "
         f"calibration-normalised or not); interval: Hodges-Lehmann, **{conf:.0%}**; "
         f"threshold: **{thr:.1%}**; {block} rounds",
         f"- goals (suite-wide A/A false alarms ≤ {GOAL_FALSE_ALARMS:.0%} of gate runs, 10% "
         f"slowdown detected in ≥ {GOAL_DETECTION:.0%} of trials): "
         f"**{'met' if met else 'NOT met'}** (detection on the resampled trials; false alarms "
         f"on the resampled trials and on the block trials, whichever is higher: resampling "
         f"hides block-to-block effects)", ""]

    def wilson_cell(k: int, n: int) -> str:
        lo, hi = wilson(k, n)
        return f"{pct(lo)} – {pct(hi)}"

    summary = [["A/A false alarms per benchmark and run",
                kn([blocks_r.aa_alarms, blocks_r.aa_cells]),
                wilson_cell(blocks_r.aa_alarms, blocks_r.aa_cells), pct(res_r.fa_case)],
               ["A/A gate runs with any false alarm (suite-wide)",
                kn([blocks_r.aa_runs_alarmed, blocks_r.trials]),
                wilson_cell(blocks_r.aa_runs_alarmed, blocks_r.trials), pct(res_r.fa_suite)]]
    for s in sizes:
        k, n = blocks_r.detected.get(s, (0, 0))
        summary.append([f"+{s:.0%} slowdowns detected", f"{k}/{n}", wilson_cell(k, n),
                        pct(res_r.detection(s))])
    L += [md_table(["", "block trials", "95% (Wilson)", "resampled trials"], summary, "lrlr")]

    per_case = []
    for case in gated:
        meta = info["cases"][case]
        bc, rc = blocks_r.per_case.get(case, {}), res_r.per_case.get(case, {})
        aa = pct(rc["aa"][0] / rc["aa"][1]) if rc.get("aa") else "–"
        cells = [*split_case(case), f"{kn(bc.get('aa'))} / {aa}"]
        for s in sizes:
            if s not in bc:
                cells.append("not injected (track_*: the benchmark times itself)")
                continue
            d = [x for x in _per_round(run_, "A", f"+{s:.0%}", case, meta["direction"], method)
                 if x is not None]
            real = math.exp(hodges_lehmann(d, conf)[0]) if d else float("nan")
            cells.append(f"{kn(bc[s])} / {pct(rc[s][0] / rc[s][1])}, ×{real:.3f}")
        per_case.append(cells)
    L += ["", "### Per benchmark (chosen defaults)", "",
          "Realised effect: the ratio of the injected side to A over all rounds (the knob adds "
          "x% of the call's own CPU time; what the benchmark's clock sees can differ).", "",
          md_table(["benchmark", "params", "A/A alarms (blocks / resampled)",
                    *(f"+{s:.0%} detected (blocks / resampled), realised" for s in sizes)],
                   per_case, "l" * (3 + len(sizes)))]

    sweep_rows = []
    for t in THRESHOLDS:
        r = rates["resampled", method, conf, t]
        sweep_rows.append([f"{t:.1%}", pct(r.fa_case), pct(r.fa_suite),
                           *(pct(r.detection(s)) for s in sizes)])
    L += ["", "## Threshold sweep (chosen method and confidence, resampled trials)", "",
          md_table(["threshold", "A/A alarms per benchmark", "A/A runs with an alarm",
                    *(f"+{s:.0%} detected" for s in sizes)], sweep_rows, "r" * (3 + len(sizes)))]

    method_rows = []
    for m in METHODS:
        for c in CONFIDENCES:
            sub = {k: v for k, v in rates.items() if k[1] == m and k[2] == c}
            (mm, cc, tt), _ok = choose_defaults(sub, sizes)
            r = rates["resampled", mm, cc, tt]
            b = rates["blocks", mm, cc, tt]
            method_rows.append([str(m), f"{c:.0%}", f"{tt:.1%}", pct(r.fa_suite),
                                f"{b.aa_runs_alarmed}/{b.trials}",
                                *(pct(r.detection(s)) for s in sizes)])
    L += ["", "## Methods compared (resampled trials; for each, the threshold that the "
          "selection rule picks)", "",
          "Round value = clock (process CPU time or wall time) / statistic of the round's "
          "samples / divided by the same-round calibration workload or not.", "",
          md_table(["method", "confidence", "threshold", "A/A runs with an alarm (resampled)",
                    "(blocks)", *(f"+{s:.0%} detected" for s in sizes)], method_rows,
                   "l" + "r" * (4 + len(sizes)))]

    spread_rows = []
    for case in gated:
        meta = info["cases"][case]
        if meta["kind"] != "time":
            continue
        sds = []
        for m in METHODS:
            d = [x for x in _per_round(run_, "A", "A'", case, meta["direction"], m)
                 if x is not None]
            sds.append(f"{statistics.stdev(d):.3f}" if len(d) > 1 else "–")
        spread_rows.append([*split_case(case), *sds])
    L += ["", "## Spread of the A/A round-pair log ratio by method (SD over rounds)", "",
          md_table(["benchmark", "params", *(str(m) for m in METHODS)], spread_rows,
                   "ll" + "r" * len(METHODS))]

    rounds_rows = []
    for size_r in (6, 10, 15, 20):
        if size_r > len(run_.rounds) // 2:
            continue
        sweep = validity_rates(run_, block=size_r, sizes=sizes, methods=(method,),
                               confidences=(conf,), thresholds=(thr,),
                               resamples=min(resamples, 1000), seed=size_r)
        r = sweep["resampled", method, conf, thr]
        rounds_rows.append([str(size_r), f"{thr:.1%}", pct(r.fa_suite),
                            *(pct(r.detection(s)) for s in sizes)])
    L += ["", f"## Rounds per gate run ({method}, {conf:.0%}, resampled trials)", "",
          "How the error rates move with the number of interleaved rounds (each round costs "
          "about one setup plus a few hundred ms of samples per benchmark and side).", "",
          md_table(["rounds", "threshold", "A/A runs with an alarm",
                    *(f"+{s:.0%} detected" for s in sizes)], rounds_rows,
                   "r" * (3 + len(sizes)))]

    blocks, resampled = trial_sets(len(run_.rounds), block, min(resamples, 500))
    asv_b = _asv_style_false_alarms(run_, blocks, thr)
    asv_r = _asv_style_false_alarms(run_, resampled, thr)
    L += ["", "## The same A/A trials under a sample-level test (asv's approach)", "",
          f"All wall-clock samples of a trial's rounds pooled per side, Mann-Whitney U "
          f"p < 0.05 and median ratio > {1 + thr:.3f}: false alarms per benchmark and run "
          f"{pct(asv_b['fa_case'])} (blocks) / {pct(asv_r['fa_case'])} (resampled); "
          f"runs with any alarm {pct(asv_b['fa_suite'])} / {pct(asv_r['fa_suite'])}. "
          f"Samples within one process are not independent draws, so a test that treats "
          f"them as such over-states significance; the gate tests one value per round."]

    # process-level bias: do block means scatter more than rounds within blocks predict?
    bias_rows = []
    for case in gated:
        d_all = _per_round(run_, "A", "A'", case, info["cases"][case]["direction"], method)
        ests, within = [], []
        for blk in blocks:
            d = [d_all[i] for i in blk if d_all[i] is not None]
            if len(d) > 2:
                ests.append(statistics.median(d))
                within.append(statistics.stdev(d))
        if len(ests) > 2:
            pred = 1.25 * statistics.fmean(within) / math.sqrt(block)
            sd = statistics.stdev(ests)
            bias_rows.append([*split_case(case), f"{sd:.4f}", f"{pred:.4f}", f"{sd / pred:.2f}"])
    L += ["", "## Between-process bias (chosen method)", "",
          "SD of the A/A block estimates (median log ratio of each block) against what the "
          "within-block scatter predicts (SD of the round log ratios / √rounds, ×1.25 for a "
          "median); a ratio well above 1 means each set of worker processes carries its own "
          "offset, which more rounds in the same processes cannot remove.", "",
          md_table(["benchmark", "params", "SD of block estimates", "predicted", "ratio"],
                   bias_rows, "llrrr")]
    return "\n".join(L) + "\n", (method, conf, thr), met
