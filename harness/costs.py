"""Where a reference implementation's time goes against its Stable-Baselines3 peer: the cost
ladder (issue 17).

``python -m harness.costs ALGORITHM [--task T] [--frames N] [--seed S] [--out DIR]`` trains,
one after the other in this process on one torch thread, on the same gymnasium task, budget and
seed:

1. the algorithm's *faithful* variant (``LADDERS``: the settings that reproduce the loop as
   torchrl's tutorials write it, e.g. PPO's GAE before every epoch);
2. then one setting changed at a time, cumulatively, up to the defaults (each row removes one
   cost that is not torchrl's: repeated work, a slower optimiser kernel, functional copies;
   DQN's last row is faster than its defaults, which keep torch's default Adam for their
   learning result);
3. the last row under ``torch.compile`` (the compile axis: its compile time apart);
4. the SB3 peer (``harness.peers``) at the same settings.

and writes ``costs-<algorithm>-<task>-<machine>.md`` (the ladder: wall time, the seconds and the
share of the faithful wall each step removed, the env / policy / update split, frames/s, final
return, wall over SB3's) plus the runs' records (``.csv``, ``harness.results`` format) to
``--out`` (default ``results/peers``), atomically. What is left after the ladder is torchrl's:
the second table gives the per-frame cost of collection (torchrl's env wrapper and Collector,
the policy module) and of the update (the loss module, backward, optimiser) beside SB3's.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pandas as pd

from harness.errors import UsageError

#: per algorithm: (label, the settings changed at that step), cumulative from the first; the
#: first is the faithful variant, the last changes reach the defaults
LADDERS: dict[str, list[tuple[str, dict]]] = {
    "ppo": [
        ("faithful: torchrl's PPO tutorial loop (GAE every epoch, functional ClipPPOLoss, "
         "multi-tensor Adam)",
         dict(advantage_every_epoch=True, functional_loss=True, fused_adam=False)),
        ("GAE once per batch (the PPO paper, SB3)", dict(advantage_every_epoch=False)),
        ("ClipPPOLoss(functional=False)", dict(functional_loss=False)),
        ("fused Adam (= the defaults)", dict(fused_adam=True)),
    ],
    "dqn": [
        ("faithful: multi-tensor Adam (= the defaults)", dict(fused_adam=False)),
        ("fused Adam (not DQN's default: reference_impls.dqn's fused_adam)",
         dict(fused_adam=True)),
    ],
    "ddpg": [
        ("faithful: multi-tensor Adam", dict(fused_adam=False)),
        ("fused Adam (= the defaults)", dict(fused_adam=True)),
    ],
}
TASKS = {"ppo": "cartpole", "dqn": "cartpole", "ddpg": "pendulum"}
METRICS = ("wall_time_s", "compile_time_s", "env_time_s", "policy_time_s", "update_time_s",
           "collect_fps", "train_fps", "steady_fps", "final_return")


def steps(algorithm: str) -> list[tuple[str, dict, str, str]]:
    """The ladder of ``algorithm``: ``(label, overrides, impl, compile mode)`` per row, the
    overrides cumulative."""
    if algorithm not in LADDERS:
        raise UsageError(f"no cost ladder for {algorithm!r}; valid: {', '.join(LADDERS)}")
    rows, settings = [], {}
    for label, changes in LADDERS[algorithm]:
        settings = {**settings, **changes}
        rows.append((label, dict(settings), "rlgauge", "eager"))
    rows.append(("torch.compile of the update step and the policy (the row above)",
                 dict(settings), "rlgauge", "compile"))
    rows.append(("Stable-Baselines3 (same settings)", {}, "sb3", "eager"))
    return rows


def measure(algorithm: str, task: str, frames: int | None, seed: int, out: Path,
            progress=print) -> Path:
    """Train every row of the ladder (module docstring); write and return the table's path."""
    import torch

    from harness import atomic, provenance, results, runs

    torch.set_num_threads(1)
    # every input checked (resolved) before any work
    resolved = [(label, runs.resolve(runs.spec_for(
        algorithm=algorithm, backend="gymnasium", task=task, seed=seed, frames=frames,
        overrides=overrides, impl=impl, compile=mode)))
        for label, overrides, impl, mode in steps(algorithm)]
    frames_run, rows = [], []
    for i, (label, run) in enumerate(resolved, 1):
        spec = run.spec
        progress(f"[{i}/{len(resolved)}] {label}")
        t0 = time.perf_counter()
        try:
            records = runs.run(run, threads=1).records
        except Exception as exc:  # recorded as a row, never lost
            records = results.failure_record(f"{type(exc).__name__}: {exc}",
                                              **spec.context())
        frames_run.append(records)
        values = {m: _value(records, m) for m in METRICS}
        rows.append({"step": label, "impl": spec.impl, "compile": spec.compile, **values,
                     "seconds": time.perf_counter() - t0})
    table = pd.DataFrame(rows)
    machine = provenance.machine_name()
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"costs-{algorithm}-{task}-{machine}"
    results.save(pd.concat(frames_run, ignore_index=True), stem.with_suffix(".csv"))
    command = (f"python -m harness.costs {algorithm} --task {task} --seed {seed}"
               + (f" --frames {frames}" if frames else ""))
    text = markdown(table, algorithm, task, resolved[0][1].config.frames, command,
                    provenance.record("cpu"))
    atomic.write_text(stem.with_suffix(".md"), text)
    return stem.with_suffix(".md")


def _value(records: pd.DataFrame, metric: str) -> float:
    rows = records[records["metric"] == metric]["value"]
    return float(rows.iloc[-1]) if len(rows) else math.nan


def ladder_table(table: pd.DataFrame) -> pd.DataFrame:
    """The ladder as shown: wall, what each step removed (s, and % of the faithful wall), the
    split, frames/s, return, and wall over SB3's wall."""
    faithful = table["wall_time_s"].iloc[0]
    sb3 = table[table["impl"] == "sb3"]["wall_time_s"]
    sb3_wall = float(sb3.iloc[0]) if len(sb3) else math.nan
    shown = []
    previous = math.nan
    for _, r in table.iterrows():
        wall = r["wall_time_s"]
        ours = r["impl"] == "rlgauge"
        removed = previous - wall if ours and math.isfinite(previous) else math.nan
        shown.append({
            "step": r["step"],
            "wall (s)": _fmt(wall, "{:.1f}"),
            "removed (s)": _fmt(removed, "{:+.1f}"),
            "share of faithful wall": _fmt(removed / faithful * 100 if ours else math.nan,
                                           "{:+.0f}%"),
            "env / policy / update (s)": " / ".join(
                _fmt(r[m], "{:.1f}") for m in ("env_time_s", "policy_time_s", "update_time_s")),
            "compile (s)": _fmt(r["compile_time_s"] if r["compile"] != "eager" else math.nan,
                                "{:.1f}"),
            "collect frames/s": _fmt(r["collect_fps"], "{:,.0f}"),
            "steady frames/s": _fmt(r["steady_fps"] if ours else r["train_fps"], "{:,.0f}"),
            "final return": _fmt(r["final_return"], "{:.1f}"),
            "wall / SB3 wall": _fmt(wall / sb3_wall if ours else math.nan, "{:.2f}x"),
        })
        if ours and r["compile"] == "eager":
            previous = wall
    return pd.DataFrame(shown)


def floors_table(table: pd.DataFrame, frames: int) -> pd.DataFrame:
    """Microseconds per env frame of each phase: the last eager rlgauge row (the defaults;
    DQN's adds fused Adam to them) beside SB3."""
    eager = table[(table["impl"] == "rlgauge") & (table["compile"] == "eager")].iloc[-1]
    sb3 = table[table["impl"] == "sb3"]
    rows = []

    def per_frame(seconds):
        return seconds / frames * 1e6 if math.isfinite(seconds) else math.nan

    collect = eager["env_time_s"] + eager["policy_time_s"]
    sb3_collect = (frames / sb3["collect_fps"].iloc[0]) if len(sb3) else math.nan
    sb3_update = sb3["update_time_s"].iloc[0] if len(sb3) else math.nan
    for phase, ours, theirs, what in (
            ("collect", collect, sb3_collect,
             "torchrl: GymWrapper + Collector + the policy module; SB3: DummyVecEnv + policy"),
            ("  env step", eager["env_time_s"], math.nan, "torchrl's GymWrapper step and reset"),
            ("  policy", eager["policy_time_s"], math.nan, "the torchrl policy module's forward"),
            ("update", eager["update_time_s"], sb3_update,
             "sampling, the torchrl loss module, backward, Adam")):
        rows.append({"phase": phase, "rlgauge (us/frame)": _fmt(per_frame(ours), "{:.0f}"),
                     "SB3 (us/frame)": _fmt(per_frame(theirs), "{:.0f}"),
                     "rlgauge / SB3": _fmt(ours / theirs if theirs else math.nan, "{:.2f}x"),
                     "what": what})
    return pd.DataFrame(rows)


def _fmt(value, spec: str) -> str:
    return spec.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else ""


def markdown(table: pd.DataFrame, algorithm: str, task: str, frames: int, command: str,
             machine: dict) -> str:
    hardware = machine.get("cpu") or "unknown CPU"
    return "\n".join([
        f"# {algorithm} on gymnasium/{task}, {frames:,} frames: where the time goes",
        "",
        f"`{command}` on {hardware} ({machine.get('machine', '')}), one torch thread, one run "
        f"per row, in one process one after the other; torch {machine.get('torch', '')}, "
        f"torchrl {machine.get('torchrl', '')}. Each rlgauge row keeps the settings of the rows "
        f"above it; 'removed' is the wall time the row's change saved against the row above.",
        "",
        ladder_table(table).to_markdown(index=False),
        "",
        "What is left (the last eager rlgauge row above -- the defaults; for DQN the defaults "
        "plus fused Adam -- against SB3; microseconds per env frame):",
        "",
        floors_table(table, frames).to_markdown(index=False),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.costs", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algorithm", help=f"one of: {', '.join(LADDERS)}")
    parser.add_argument("--task", default=None,
                        help="gymnasium task (default: the algorithm's RL Zoo task: "
                             + ", ".join(f"{a} {t}" for a, t in TASKS.items()) + ")")
    parser.add_argument("--frames", type=int, default=None,
                        help="budget (default: the algorithm's for the task)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/peers"))
    args = parser.parse_args(argv)
    try:  # an unknown algorithm: steps() refuses it before any work
        path = measure(args.algorithm, args.task or TASKS.get(args.algorithm, ""), args.frames,
                       args.seed, args.out, progress=lambda line: print(line, flush=True))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
