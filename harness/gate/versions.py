"""The report of ``nox -s versions`` (``python -m harness.gate versions``): torchrl builds
compared, each against the first (the baseline).

- ``report``: the sides (build, versions, environment), the learning check (a side whose
  learning broke is BROKEN, and so is every verdict of its comparison: a build that got faster
  by breaking learning must not read as faster), one Markdown table per comparison
  (``compare.markdown``: ratio, Hodges-Lehmann interval, verdict), the API differences that
  ``harness/compat.py`` absorbed per side, and one reproduction per REGRESSION row.
- ``snippet``: a benchmark case as a Python script that builds the benchmark's setup and
  times its call as the gate does (process CPU time per operation, warm-up calls apart; the
  10th percentile and the median of the samples), run from a checkout of rlgauge with each
  build's interpreter; the benchmark's own ``setup`` / ``op`` / timed method's source
  (``inspect``) is quoted above it, so what is timed reads without opening the repository.
"""

from __future__ import annotations

import inspect
import os
import platform
import re
import shlex
from collections.abc import Sequence
from typing import TYPE_CHECKING

from harness.gate.cases import ROOT, case_params, split_case
from harness.gate.compare import REGRESSION, Row, fmt_value, markdown, md_table

if TYPE_CHECKING:
    from harness.gate.runner import Run
    from harness.sides import Build, Learning

BROKEN = "learning BROKEN"

HELP = """\
torchrl builds side by side: each SIDE in its own cached environment (torch stays as pinned),
learning-checked, then the gate's default selection and the version cases timed interleaved
against the first SIDE (the baseline); writes results/gate/versions-<machine>.md.

SIDE is one of:
  torchrl==0.13.3                 a release; its tensordict from the release's own requirement
  torchrl==0.13.3,tensordict==V   ... with that tensordict
  nightly  (nightly==2026.10.27)  torchrl-nightly with tensordict-nightly from the registry
  PATH                            a torchrl source checkout, built here with its C++ extension
  PATH,tensordict=TD_PATH         ... with a tensordict checkout (or tensordict==V)
  FILE.whl                        a torchrl wheel (tensordict from its requirement)
  LABEL=PYTHON                    an existing environment's interpreter, as it is

A side that cannot run here (no such release, not a torchrl checkout, a build that needs
another torch, an API rlgauge cannot adapt to) is one line and exit 2, before any timing.
Environments: .nox/versions-sides/<side>/, reused while the resolved versions (and a
checkout's git state or files) are unchanged (harness/sides.py).

examples:
  nox -s versions -- torchrl==0.14.1 nightly
  nox -s versions -- torchrl==0.13.3 ~/src/rl -b 'bench_buffers'
"""


def selection(gate_cases: Sequence[str], version_cases: Sequence[str]) -> tuple[str, ...]:
    """What ``versions`` times by default: the gate's default selection, then the version
    cases it lacks (torchrl's own kernels: the loop GAE, more buffer and env sizes)."""
    return tuple(gate_cases) + tuple(c for c in version_cases if c not in gate_cases)


def merge_adaptations(*lists: Sequence[dict]) -> list[dict]:
    """Distinct adaptations (``harness.compat.record``'s entries), in order."""
    seen: dict[tuple, dict] = {}
    for entries in lists:
        for a in entries:
            seen.setdefault((a["kind"], a["target"], a.get("detail", "")), a)
    return list(seen.values())


# --------------------------------------------------------------------------- reproductions


def _source(case: str, limit: int = 60) -> list[str]:
    """The benchmark's ``setup``, ``op`` (if any) and timed method, as their source lines
    (through the class's MRO: the definitions the case runs); [] when the module does not
    import here."""
    import importlib
    import importlib.util
    import sys

    name = split_case(case)[0]
    module, _, rest = name.partition(".")
    if importlib.util.find_spec("bench") is None and str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))  # bench/ is a directory of the checkout, not installed
    try:
        mod = importlib.import_module(f"bench.{module}")
    except Exception:
        return []
    owner_name, _, method = rest.rpartition(".")
    owner = getattr(mod, owner_name, None) if owner_name else None
    lines: list[str] = []
    for attr in ("setup", "op", method):
        obj = getattr(owner, attr, None) if owner is not None else getattr(mod, method, None)
        if obj is None or (attr != method and owner is None):
            continue
        try:
            src = inspect.getsource(obj)
        except (OSError, TypeError):
            continue
        where = obj.__qualname__ if hasattr(obj, "__qualname__") else attr
        lines.append(f"{where}:")
        lines += [ln.rstrip() for ln in inspect.cleandoc("\n" + src).splitlines()]
    if len(lines) > limit:
        lines = lines[:limit] + ["..."]
    return lines


SNIPPET = '''\
# {case}
# Run from a checkout of rlgauge (bench/ and harness/ are imported from the current directory,
# or from $RLGAUGE_ROOT) with each build's interpreter, e.g.
#   {run}
import importlib.util
import os
import statistics
import sys
import time

for _k, _v in {{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MUJOCO_GL": "egl",
               "RL_LOGGING_LEVEL": "WARNING"}}.items():
    os.environ.setdefault(_k, _v)
ROOT = os.environ.get("RLGAUGE_ROOT", os.getcwd())
sys.path.insert(0, ROOT)
from harness import compat  # noqa: E402
from harness.timing import measure  # noqa: E402  (the gate worker's sampler)

# the gate's worker (stdlib only), by path as the gate boots it: its warm-up rule and heap
_spec = importlib.util.spec_from_file_location(
    "rlgauge_gate_worker", os.path.join(ROOT, "harness", "gate", "worker.py"))
worker = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

compat.apply()  # torchrl < 0.14: accept the 0.14 keywords rlgauge passes (no-op on 0.14)
import torch  # noqa: E402

torch.set_num_threads(1)
from bench.{module} import {owner} as Bench  # noqa: E402

WANT = {want!r}
REPEAT = int(os.environ.get("REPEAT", "{repeat}"))
grid = Bench.params if Bench.params and isinstance(Bench.params[0], (list, tuple)) else (
    Bench.params,)
params = [next(v for v in values if str(v) == WANT[name])
          for name, values in zip(Bench.param_names, grid)]
bench = Bench()
args = ([bench.setup_cache()] if hasattr(bench, "setup_cache") else []) + params
worker.freeze_heap()  # as the gate's warm server: collections walk the run's own objects
bench.setup(*args)
call = getattr(bench, "{method}")
number = getattr(bench, "number", 0) or 1
try:
    if "{method}".startswith("track_"):
        samples = [call(*args) for _ in range(REPEAT)]
        unit = getattr(call, "unit", "")
    else:
        warmup = worker.warmup_calls(getattr(Bench, "{method}"), Bench)
        for _ in range(worker.Settings.warmup if warmup is None else warmup):
            call(*args)
        # process CPU time per operation, scaled as the benchmark's timer scales the wall
        timing = measure(lambda: call(*args), repeat=REPEAT, number=number, warmup=0,
                         timer=getattr(bench, "timer", time.perf_counter), cpu=True)
        samples, unit = list(timing.cpu_samples), "s"
finally:
    bench.teardown(*args)
s = sorted(samples)
# the 10th percentile, interpolated (numpy's "linear")
q10 = statistics.quantiles(s, n=10, method="inclusive")[0] if len(s) > 1 else s[0]


def fmt(x):
    if unit != "s":
        return f"{{x:.6g}} {{unit}}"
    scale, name = next((f, n) for f, n in ((1, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
                       if abs(x) >= f or n == "ns")
    return f"{{x / scale:.4g}} {{name}}"


v = compat.versions()
print(f"torchrl {{v['torchrl']}} (tensordict {{v['tensordict']}}), torch {{torch.__version__}}: "
      f"10th percentile {{fmt(q10)}}, median {{fmt(statistics.median(s))}} per call "
      f"({{REPEAT}} samples of process CPU time; the gate's round value is the 10th percentile)")
'''


def snippet(case: str, *, repeat: int = 25, run: str = "python repro.py",
            source: bool = True) -> str:
    """``case`` as a standalone script (``SNIPPET``): the benchmark's setup and timed call, by
    the gate's method; ``REPEAT`` (environment) overrides ``repeat``. With ``source`` the
    benchmark's setup / op / method source is quoted first, as comments."""
    name, _ = split_case(case)
    module, _, rest = name.partition(".")
    owner, _, method = rest.rpartition(".")
    if not owner:
        raise ValueError(f"{case!r}: only class benchmarks (module.Class.method) have a "
                         "reproduction")
    head = []
    if source and (lines := _source(case)):
        head = [f"# What it times (bench/{module}.py):"] + [f"#   {ln}" if ln else "#"
                                                           for ln in lines] + ["#"]
    body = SNIPPET.format(case=case, run=run, module=module, owner=owner, method=method,
                          want=case_params(case), repeat=repeat)
    return "\n".join(head) + ("\n" if head else "") + body


def rerun_command(sides: Sequence[str], case: str) -> str:
    """The nox command that measures ``case`` again between those sides."""
    regex = "^" + re.escape(case).replace("\\ ", " ") + "$"
    return "nox -s versions -- " + " ".join(shlex.quote(s) for s in sides) + \
        f" -b {shlex.quote(regex)}"


# --------------------------------------------------------------------------- the report


def machine_line() -> str:
    from harness import devices
    from harness.provenance import machine_name

    return (f"`{machine_name()}`: {devices.cpu_model()}, {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.release()}")


def mark_broken(rows: Sequence[Row], base: str, head: str,
                learning: dict[str, Learning] | None) -> list[Row]:
    """The comparison's rows, each verdict suffixed ``(learning BROKEN: SIDE)`` when a side's
    learning check failed: its speed is no improvement."""
    broken = [s for s in (base, head) if learning and learning.get(s) and learning[s].broken]
    if not broken:
        return list(rows)
    for r in rows:
        r.verdict = f"{r.verdict} ({BROKEN}: {', '.join(broken)})"
    return list(rows)


def learning_section(builds: Sequence[Build], learning: dict[str, Learning] | None) -> str:
    from harness.sides import LEARNING_RUNS

    if learning is None:
        return ("## Learning check\n\nNot run (`--no-learning`): these timings say nothing "
                "about whether the builds still learn.\n")
    header = ["side", "verdict", "probe tests"] + [
        f"{r.algorithm} {r.backend}/{r.task} {r.frames // 1000}k (≥ {r.threshold:g})"
        for r in LEARNING_RUNS]
    cells = []
    for b in builds:
        res = learning[b.name]
        probe = res.probe
        if not probe:
            ptxt = "not run"
        elif probe.get("error"):
            ptxt = f"error: {probe['error']}"
        else:
            ptxt = f"{probe['passed']} passed" + (f", **{len(probe['failed'])} failed**"
                                                  if probe["failed"] else "")
        by_alg = {r["algorithm"]: r for r in res.runs}
        runs = []
        for spec in LEARNING_RUNS:
            r = by_alg.get(spec.algorithm)
            if r is None:
                runs.append("–")
            elif r["error"]:
                runs.append(f"**error**: {r['error'][:80]}")
            else:
                runs.append(f"{r['final_return']:.1f}" + ("" if r["ok"] else " **below**"))
        cells.append([b.name, f"**{BROKEN}**" if res.broken else "learns", ptxt, *runs])
    why = [f"- **{b.name}**: " + "; ".join(learning[b.name].why)
           for b in builds if learning[b.name].broken]
    text = ("## Learning check\n\nIn each side's environment: the probe learning tests "
            "(`pytest -m probe_learning`: closed-form answers) and one short real run per "
            "reference algorithm (`python -m harness train ALGORITHM --frames N --seed 0`, "
            "the deterministic policy's final return; the threshold sits well under the "
            "pinned torchrl's returns over seeds 0-2 and far over an untrained policy's; "
            "`harness/sides.py`, `LEARNING_RUNS`). A side with a failed test, a failed run "
            f"or a return under its threshold is **{BROKEN}**, and every verdict of its "
            "comparison says so.\n\n" + md_table(header, cells, "lll" + "r" * len(LEARNING_RUNS)))
    return text + ("\n\n" + "\n".join(why) if why else "") + "\n"


def api_section(builds: Sequence[Build], adaptations: dict[str, list[dict]]) -> str:
    lines = ["## API differences (harness/compat.py)", "",
             "What `harness/compat.py` had to adapt on each side so that rlgauge's code (written "
             "against torchrl 0.14.1) runs: a class patched to accept a newer keyword, a "
             "keyword dropped because its value means the older behaviour, a newer keyword's "
             "behaviour reproduced on the instance, an older name. "
             "Recorded while importing, training and measuring (`$RLGAUGE_COMPAT_LOG`).", ""]
    for b in builds:
        seen = adaptations.get(b.name) or []
        if not seen:
            lines.append(f"- **{b.name}**: none (rlgauge's code runs unchanged)")
            continue
        lines.append(f"- **{b.name}**:")
        patched = [a for a in seen if a["kind"] == "patched"]
        for a in seen:
            if a["kind"] == "dropped":
                lines.append(f"  - dropped `{a['detail']}` from `{a['target']}` (the older "
                             "class has no such keyword)")
            elif a["kind"] == "emulated":
                lines.append(f"  - emulated on `{a['target']}`: `{a['detail']}`")
            elif a["kind"] == "renamed":
                lines.append(f"  - `{a['target']}`: {a['detail']}")
        for a in patched:
            accepts = a["detail"].removeprefix("accepts ")
            lines.append(f"  - patched `{a['target']}` to accept {accepts} (keywords added "
                         "in 0.14; dropped when their value means the older behaviour)")
    return "\n".join(lines) + "\n"


def _pair(b: Build) -> str:
    v = b.versions
    return (f"torchrl {v.get('torchrl', '?')}, tensordict {v.get('tensordict', '?')}, torch "
            f"{v.get('torch', '?')}")


def reproductions(comparisons: Sequence[tuple[Build, Build, list[Row]]], side_texts: Sequence[str],
                  *, rounds: int, confidence: float) -> str:
    """One reproduction per REGRESSION row: numbers of both builds, machine, commands, the
    snippet."""
    from harness.provenance import git_sha

    out = ["## Reproductions", ""]
    count = 0
    for base, head, rows in comparisons:
        for r in rows:
            if not r.verdict.startswith(REGRESSION):
                continue
            count += 1
            run = f"{base.python} repro.py   # then: {head.python} repro.py"
            out += [
                f"### {r.case}: {head.name} vs {base.name}", "",
                f"- **{base.name}** ({_pair(base)}): {fmt_value(r.base, r.unit)}; "
                f"**{head.name}** ({_pair(head)}): {fmt_value(r.head, r.unit)} per call "
                f"(median over {rounds} rounds of each round's 10th percentile of process CPU "
                f"time); ratio {r.ratio:.3f}, {confidence:.0%} interval {r.low:.3f} – "
                f"{r.high:.3f}: {r.verdict}",
                f"- machine {machine_line()}; rlgauge {git_sha()[:12]}",
                f"- measured again by: `{rerun_command(side_texts, r.case)}`",
                "- standalone, with each build's interpreter, from an rlgauge checkout "
                "(`REPEAT=50` for more samples):", "",
                "```python", snippet(r.case, run=run).rstrip(), "```", ""]
    if not count:
        out.append("No REGRESSION: nothing to reproduce.")
    return "\n".join(out) + "\n"


def report(*, builds: Sequence[Build], run_: Run | None,
           comparisons: Sequence[tuple[Build, Build, list[Row]]],
           learning: dict[str, Learning] | None, adaptations: dict[str, list[dict]],
           side_texts: Sequence[str], command: str, rounds: int, confidence: float,
           threshold: float, method: str) -> str:
    """The whole Markdown report (see the module docstring)."""
    minutes = f"{run_.seconds / 60:.1f} min of timing" if run_ is not None else "no timing"
    head = [f"# torchrl builds compared on `{_machine_name()}`", "",
            f"`{command}`; machine {machine_line()}; Python {builds[0].versions.get('python')}; "
            f"{minutes}.", ""]
    side_rows = []
    for i, b in enumerate(builds):
        verdict = ("–" if learning is None else f"**{BROKEN}**" if learning[b.name].broken
                   else "learns")
        side_rows.append([b.name + (" (baseline)" if i == 0 else ""), f"`{b.spec.text}`",
                          b.versions.get("torchrl", "?"), b.versions.get("tensordict", "?"),
                          b.versions.get("torch", "?"), b.how, verdict])
    parts = ["\n".join(head), "## Sides\n\n" + md_table(
        ["side", "given as", "torchrl", "tensordict", "torch", "environment", "learning"],
        side_rows, "lllllll") + "\n", learning_section(builds, learning)]
    for base, other, rows in comparisons:
        banner = ""
        broken = [b.name for b in (base, other) if learning and learning[b.name].broken]
        if broken:
            banner = (f"**{BROKEN}: {', '.join(broken)}** -- its learning check failed, so its "
                      "timings below are no speed-up, whatever they say.\n\n")
        title = (f"## {other.name} vs {base.name}\n\n{banner}Timed: the gate's default "
                 f"selection (`harness.gate.cases`) and the version cases, both builds in one "
                 f"job, {rounds} interleaved rounds, round value {method}; ratio = "
                 f"{other.name} / {base.name} with its Hodges-Lehmann {confidence:.0%} "
                 f"interval; REGRESSION / improved = slower / faster by more than "
                 f"{threshold:.0%} and significant.")
        parts.append(markdown(rows, title=title, confidence=confidence, base_label=base.name,
                              head_label=other.name))
    parts.append(api_section(builds, adaptations))
    parts.append(reproductions(comparisons, side_texts, rounds=rounds, confidence=confidence))
    return "\n".join(parts)


def _machine_name() -> str:
    from harness.provenance import machine_name

    return machine_name()
