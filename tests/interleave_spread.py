"""How far apart two identical sides read, when they take turns case by case or sample by sample.

    .nox/regress/bin/python tests/interleave_spread.py [--algorithms ddpg,dqn] [--rounds 40]

The experiment behind the gate's default ``interleave="sample"`` (README, "Regression gate"),
for ``bench_losses.Loss.time_update`` at batch 256, the cases whose A/A spread defeated the
gate: three identical sides, each a process forked from one warm parent (as the gate's rounds
are forked from its servers), set each loss up and warm it (3 updates); then each side takes 5
samples (one ``time_update`` call each: ~50 ms of updates, process CPU time per update), either
**case by case** (side 1's 5, then side 2's, then side 3's) or **sample by sample** (one each
in turn, the order rotating). The two modes alternate round by round, so both meet the same
machine. A round's value per side is the 10th percentile of its 5 samples (the smallest), as
the gate's; the spread is that of |log(side / side 2)| over rounds and the two pairs.

Not a test (pytest does not collect it): a measurement. One torch thread, pinned to the last
CPU; time it on an otherwise idle machine. ``--out`` writes the raw values (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 5
WARMUP = 3


def _child(commands, answers, batches) -> None:
    from bench.bench_losses import Loss

    benches = {}
    for line in commands:
        op, algorithm = line.split()
        if op == "setup":
            bench = Loss()
            bench.setup(batches, "cpu", algorithm, 256)
            for _ in range(WARMUP):
                bench.time_update(batches, "cpu", algorithm, 256)
            benches[algorithm] = bench
            answers.write("ok\n")
        elif op == "sample":
            bench = benches[algorithm]
            c0 = time.process_time()
            bench.time_update(batches, "cpu", algorithm, 256)
            answers.write(f"{(time.process_time() - c0) / bench.calls}\n")
        else:
            answers.write("ok\n")
            return


def _spawn(batches):
    c_r, c_w = os.pipe()
    a_r, a_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(c_w)
        os.close(a_r)
        try:
            with os.fdopen(c_r) as commands, os.fdopen(a_w, "w", buffering=1) as answers:
                _child(commands, answers, batches)
        finally:
            os._exit(0)
    os.close(c_r)
    os.close(a_w)
    return pid, os.fdopen(c_w, "w", buffering=1), os.fdopen(a_r)


def _ask(side, message: str) -> str:
    side[1].write(message + "\n")
    return side[2].readline().strip()


def measure(algorithms: list[str], rounds: int) -> list[dict]:
    import torch

    from bench.bench_losses import Loss, make_batches
    from harness.gate.worker import freeze_heap

    torch.set_num_threads(1)
    batches = make_batches(frames=256)
    for algorithm in algorithms:  # the parent warm, as the gate's server is
        bench = Loss()
        bench.setup(batches, "cpu", algorithm, 256)
        bench.time_update(batches, "cpu", algorithm, 256)
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    freeze_heap()
    out = []
    for r in range(rounds):
        mode = "case" if r % 2 == 0 else "sample"
        sides = [_spawn(batches) for _ in range(3)]
        row: dict = {"mode": mode}
        for k, algorithm in enumerate(algorithms):
            values: list[list[float]] = [[] for _ in sides]
            order = [(j + r + k) % 3 for j in range(3)]
            for j in order:
                _ask(sides[j], f"setup {algorithm}")
            if mode == "case":
                for j in order:
                    for _ in range(SAMPLES):
                        values[j].append(float(_ask(sides[j], f"sample {algorithm}")))
            else:
                for i in range(SAMPLES):
                    for j in (order[(x + i) % 3] for x in range(3)):
                        values[j].append(float(_ask(sides[j], f"sample {algorithm}")))
            row[algorithm] = values
        for side in sides:
            _ask(side, "quit -")
            os.waitpid(side[0], 0)
        out.append(row)
        print(f"round {r + 1}/{rounds} ({mode})", file=sys.stderr)
    return out


def summary(rows: list[dict], algorithms: list[str]) -> str:
    lines = ["| loss update | interleave | rounds | median abs(log A'/A) | 90th pct | > 0.06 |",
             "|---|---|---:|---:|---:|---:|"]
    for algorithm in algorithms:
        for mode in ("case", "sample"):
            q = [[min(v) for v in row[algorithm]] for row in rows if row["mode"] == mode]
            spread = sorted(abs(math.log(v[j] / v[1])) for v in q for j in (0, 2))
            lines.append(f"| {algorithm} | {mode} | {len(q)} | {statistics.median(spread):.3f} | "
                         f"{spread[int(0.9 * len(spread))]:.3f} | "
                         f"{sum(s > 0.06 for s in spread)}/{len(spread)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", default="ddpg,dqn")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--out", type=Path, help="the raw values (JSON)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from bench.bench_losses import TASKS

    algorithms = args.algorithms.split(",")
    bad = [a for a in algorithms if a not in TASKS]
    if bad or args.rounds < 2:
        print(f"error: --algorithms must be among {', '.join(TASKS)} and --rounds >= 2, got "
              f"{args.algorithms!r}, {args.rounds}", file=sys.stderr)
        return 2
    rows = measure(algorithms, args.rounds)
    if args.out:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(rows))
        os.replace(tmp, args.out)
    print(summary(rows, algorithms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
