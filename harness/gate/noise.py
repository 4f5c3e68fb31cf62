"""The noise study: which noise controls reduce the spread of the gate's round values.

Threads and CPU affinity are process settings, so each configuration is a side of its own
(``NOISE_SIDES``: two identical pinned sides, one thread on any CPU, torch's default threads on
any CPU), measured interleaved; the other controls (clock, statistic, calibration, warm-up,
number of samples, interleaving) are re-analyses of the same rounds. The measured spreads are
in the README's "Regression gate" section and ``results/gate/noise-<machine>.md``.
"""

from __future__ import annotations

import math
import statistics

from harness.gate.cases import DEFAULT_ROUNDS, Settings, split_case
from harness.gate.compare import Method, conditions, md_table, round_value
from harness.gate.runner import Run
from harness.gate.stats import robust_sd
from harness.provenance import machine_name

NOISE_SIDES = (("pinned", Settings()), ("pinned'", Settings()),
               ("1 thread, any CPU", Settings(cpu=None)),
               ("default threads, any CPU", Settings(threads=None, cpu=None)))


def noise_report(run_: Run, *, window: int = DEFAULT_ROUNDS, command: str = "") -> str:
    """Which noise controls reduce the spread: per-side spread across rounds (threads,
    affinity), and the spread of the A/A gate estimate (pinned vs pinned') when one control is
    removed (calibration, clock, statistic, warm-up, repeats, interleaving)."""
    info = run_.info[NOISE_SIDES[0][0]]
    cases = [c for c in sorted(info["cases"]) if info["cases"][c]["kind"] == "time"]
    base = Method()
    L = [f"# Regression gate noise controls: machine `{machine_name()}`", "",
         f"Measured with `{command}`." if command else "", "", "## Conditions", "",
         *conditions(run_),
         "- sides, interleaved each round: " + "; ".join(
             f"**{n}** (threads {s.threads or 'torch default'}, CPU "
             f"{'pinned' if s.cpu is not None else 'any'})" for n, s in NOISE_SIDES), "",
         f"## Between-round spread per side ({base}; robust SD of log round value, %)", "",
         "Threads and CPU affinity are process settings, so each has its own side; lower is "
         "better. `median` = the side's median round value relative to `pinned`.", ""]
    summary: dict[str, list[float]] = {n: [] for n, _ in NOISE_SIDES}
    rows = []
    for case in cases:
        dir_ = info["cases"][case]["direction"]
        cells, ref = [], None
        for name, _ in NOISE_SIDES:
            vals = [v for row in run_.rounds if (v := round_value(
                row.get(name, {}), case, direction_=dir_, **base.kw()))]
            if len(vals) < 3:
                cells.append("–")
                continue
            sd = robust_sd([math.log(v) for v in vals])
            summary[name].append(sd)
            med = statistics.median(vals)
            ref = ref or med
            cells.append(f"{100 * sd:.1f} (median ×{med / ref:.2f})")
        rows.append([*split_case(case), *cells])
    rows.append(["**median over benchmarks**", "", *(
        f"**{100 * statistics.median(v):.1f}**" if v else "–" for v in summary.values())])
    L.append(md_table(["benchmark", "params", *(n for n, _ in NOISE_SIDES)], rows,
                      "ll" + "r" * len(NOISE_SIDES)))

    first = NOISE_SIDES[0][0]
    rows = []
    for case in cases:
        r1, r1c, rl = [], [], []
        for row in run_.rounds:
            e = (row.get(first, {}).get("cases") or {}).get(case) or {}
            if e.get("warmup") and e.get("samples"):
                r1.append(e["warmup"][0] / statistics.median(e["samples"]))
                rl.append(e["warmup"][-1] / statistics.median(e["samples"]))
                if e.get("warmup_cpu") and e.get("cpu"):
                    r1c.append(e["warmup_cpu"][0] / statistics.median(e["cpu"]))
        if r1:
            cpu_first = f"×{statistics.median(r1c):.2f}" if r1c else "–"
            rows.append([*split_case(case), f"×{statistics.median(r1):.2f}", cpu_first,
                         f"×{statistics.median(rl):.2f}"])
    L += ["", f"## What warm-up protects against ({first}: first warm-up call / median of the "
          f"round's samples, median over rounds)", "",
          "setup() already calls each benchmark once (the suite's convention); these are the "
          "calls after that one.", "",
          md_table(["benchmark", "params", "1st call, wall", "1st call, CPU",
                    "last warm-up call, wall"], rows, "llrrr")]

    variants = {
        f"as shipped ({base})": (base, {}, False),
        "+ calibration normalisation": (Method(base.clock, base.stat, True), {}, False),
        "wall clock instead of CPU time": (Method("wall", base.stat, base.normalise), {},
                                           False),
        "median instead of " + base.stat: (Method(base.clock, "median", base.normalise), {},
                                           False),
        "no warm-up (warm-up calls counted)": (base, {"warmup": True}, False),
        "5 samples per round instead of up to 25": (base, {"samples": 5}, False),
        "blocked instead of interleaved": (base, {}, True),
    }
    a, b = NOISE_SIDES[0][0], NOISE_SIDES[1][0]
    rows = []
    for label, (method, extra, blocked) in variants.items():
        cells, sds = [], []
        for case in cases:
            dir_ = info["cases"][case]["direction"]
            va = [round_value(r.get(a, {}), case, direction_=dir_, **method.kw(), **extra)
                  for r in run_.rounds]
            vb = [round_value(r.get(b, {}), case, direction_=dir_, **method.kw(), **extra)
                  for r in run_.rounds]
            if blocked:
                vb = vb[window:]
            d = [math.log(y / x) for x, y in zip(va, vb, strict=False) if x and y]
            sd = statistics.stdev(d) if len(d) > 2 else float("nan")
            sds.append(sd)
            cells.append(f"{100 * sd:.2f}")
        finite = [x for x in sds if x == x]
        rows.append([label, *cells,
                     f"**{100 * statistics.median(finite):.2f}**" if finite else "–"])
    L += ["", f"## Spread of the A/A log ratio per round pair ({a} vs {b}; SD over the pairs, "
          f"%)", "",
          "What the gate's interval is built from: one log ratio per round. Each row removes or "
          f"changes one control; lower is better. *Blocked* pairs round i of {a} with round "
          f"i + {window} of {b} (the two sides measured {window} rounds apart, as when all "
          f"BASE rounds run before all HEAD rounds) instead of the same round.", "",
          md_table(["variant", *(f"{split_case(c)[0].split('.', 1)[1]} ({split_case(c)[1]})"
                                 for c in cases), "median"], rows, "l" + "r" * (len(cases) + 1))]
    return "\n".join(L) + "\n"
