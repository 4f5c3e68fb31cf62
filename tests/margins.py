"""How far each probe learning test passes (or fails) by: its checks, recorded per seed.

A probe learning test trains on a probe env whose answer is known in closed form and checks the
answer with ``margin.within`` / ``margin.at_least`` / ``margin.at_most`` (the ``margin``
fixture of ``conftest.py``): each asserts, like a plain ``assert``, and also records the value,
the bound and the *slack* -- how far inside the bound the value is (negative: outside).
``within`` reports the slack as a fraction of the tolerance (1: exact, 0: on the bound); the
others in the check's own units.

``nox -s seeds`` (the sweep the README's table comes from) runs every test marked
``probe_learning`` for seeds 0-9 (``--learn-seeds 0-9``) and writes the records
(``--margins-out FILE.jsonl``) and a table of pass counts and worst slack per test and check
(``FILE.md``). The fast suite runs seed 0 only.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path


def parse_seeds(text: str) -> list[int]:
    """``"0"``, ``"0-9"`` or ``"0,3,7"`` -> the seeds; ValueError naming the bad text."""
    seeds: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        lo, sep, hi = part.partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())):
            raise ValueError(f"--learn-seeds: bad seeds {text!r}; valid: N, A-B or A,B,C")
        seeds.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return seeds


@dataclass
class Check:
    test: str  # the test's node id without its seed
    seed: int
    check: str
    value: float
    bound: str
    slack: float
    unit: str  # "of tolerance" for within(); the check's own units otherwise
    passed: bool


class Margins:
    """The ``margin`` fixture: assertions that record how far they pass by."""

    def __init__(self, test: str, seed: int, sink: list[Check]):
        self.test, self.seed, self.sink = test, seed, sink

    def _record(self, check: str, value: float, bound: str, slack: float, unit: str) -> bool:
        passed = bool(slack >= 0) if not math.isnan(slack) else False
        self.sink.append(Check(self.test, self.seed, check, float(value), bound, float(slack),
                               unit, passed))
        return passed

    def within(self, check: str, actual, expected, *, atol: float = 0.0, rtol: float = 0.0):
        """Every element of ``actual`` within ``atol + rtol * |expected|`` of ``expected``
        (``torch.allclose``'s rule); slack = the worst element's unused share of its
        tolerance."""
        import torch

        a = torch.as_tensor(actual).detach().to("cpu", torch.float64)
        e = torch.as_tensor(expected).detach().to("cpu", torch.float64).expand_as(a)
        tol = atol + rtol * e.abs()
        err = (a - e).abs()
        share = ((tol - err) / tol).flatten()
        i = int(torch.argmin(share)) if share.numel() else 0
        slack = float(share[i]) if share.numel() else math.nan
        worst = float(a.flatten()[i]) if a.numel() else math.nan
        bound = f"{float(e.flatten()[i]):.4g} ± {float(tol.flatten()[i]):.3g}"
        ok = self._record(check, worst, bound, slack, "of tolerance")
        assert ok, f"{check}: {a.tolist()} not within atol={atol}, rtol={rtol} of {e.tolist()}"

    def at_least(self, check: str, value, bound: float):
        value = _scalar(value)
        ok = self._record(check, value, f">= {bound:g}", value - bound, "")
        assert ok, f"{check}: {value:.4g} < {bound:g}"

    def at_most(self, check: str, value, bound: float):
        value = _scalar(value)
        ok = self._record(check, value, f"<= {bound:g}", bound - value, "")
        assert ok, f"{check}: {value:.4g} > {bound:g}"


def _scalar(value) -> float:
    return float(value.detach()) if hasattr(value, "detach") else float(value)


def write(checks: list[Check], path: Path, seeds: list[int]) -> None:
    """``path`` (JSON lines, one per check) and ``path.with_suffix(".md")`` (the table), both
    written atomically."""
    lines = "".join(json.dumps(asdict(c)) + "\n" for c in checks)
    from harness import atomic

    atomic.write_text(path, lines)
    atomic.write_text(path.with_suffix(".md"), table(checks, seeds))


def table(checks: list[Check], seeds: list[int]) -> str:
    """Markdown: per (test, check) the seeds passed out of those run and the worst slack."""
    groups: dict[tuple[str, str], list[Check]] = defaultdict(list)
    for c in checks:
        groups[(c.test, c.check)].append(c)
    rows = ["| test | check | bound | seeds passed | worst slack (seed) | median slack |",
            "|---|---|---|---|---|---|"]
    for (test, check), cs in sorted(groups.items()):
        worst = min(cs, key=lambda c: c.slack)
        slacks = sorted(c.slack for c in cs)
        med = slacks[len(slacks) // 2]
        unit = f" {worst.unit}" if worst.unit else ""
        pct = (lambda x: f"{x:.0%}") if worst.unit == "of tolerance" else (lambda x: f"{x:.3g}")
        rows.append(f"| `{test}` | {check} | {worst.bound} | {sum(c.passed for c in cs)}/"
                    f"{len(cs)} | {pct(worst.slack)}{unit} (seed {worst.seed}) | "
                    f"{pct(med)}{unit} |")
    import datetime

    import torch

    from harness import devices, provenance

    head = (f"Probe learning tests over seeds {_span(seeds)}: each check's pass count and its "
            f"slack (how far inside the bound; negative = failed). Measured "
            f"{datetime.date.today().isoformat()} on {devices.cpu_model()} "
            f"({provenance.machine_name()}), torch {torch.__version__}, by "
            f"`nox -s seeds` (pytest -m probe_learning --learn-seeds {_span(seeds)}).\n\n")
    return head + "\n".join(rows) + "\n"


def _span(seeds: list[int]) -> str:
    if seeds and seeds == list(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))
