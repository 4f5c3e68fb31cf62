"""What the gate measures and how, by default: the case lists, the defaults, ``Settings``, and
the direction of a case (``harness.comparison.direction``: the one rule rlgauge uses).

The defaults are what ``nox -s gate_validity`` chose (the README's "Regression gate" section
has the measurements): the smallest threshold whose suite-wide A/A false alarms stay <= 1% of
gate runs while 10% slowdowns are caught in >= 95% of them.
"""

from __future__ import annotations

from pathlib import Path

from harness import comparison
from harness.gate.worker import INJECT_SLOWDOWN_ENV, SUPPORTED, Settings, selector, split_case

ROOT = Path(__file__).resolve().parents[2]

#: the default gate, one or two fast CPU cases per component (GAE, env step, replay buffer,
#: loss update): the cases whose error rates ``nox -s gate_validity`` measures. All time_*:
#: track_* values are timed by the benchmark itself on the wall clock, far noisier.
GATE_CASES = (
    "bench_gae.GAE.time_gae(device=cpu, impl=rlgauge, shape=64x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=8x1000)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "impl=torchrl)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=ppo, batch=256)",
)
#: the cross-version table: GAE (torchrl's kernels), env step, replay buffer, loss update
VERSION_CASES = (
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_loop, shape=1x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=8x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=256x2048)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "impl=torchrl)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=8, "
    "impl=torchrl)",
    "bench_buffers.Extend.time_extend(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=prioritized, "
    "size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=slice, size=10000)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=ppo, batch=256)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=dqn, batch=256)",
    "bench_collectors.Collect.time_frame(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "policy=mlp)",
)

#: the validity study runs the gate's own cases
VALIDITY_CASES = GATE_CASES

DEFAULT_ROUNDS = 10
DEFAULT_THRESHOLD = 0.05
DEFAULT_CONFIDENCE = 0.95
DEFAULT_NORMALISE = False  # same-round calibration widened the A/A spread: off
DEFAULT_CLOCK = "cpu"  # process CPU time: far less spread than the wall clock under load
DEFAULT_STAT = "q10"  # of the round's samples: less spread than the median
INJECT_ENV = INJECT_SLOWDOWN_ENV  # the test-only slowdown knob (harness.gate.worker)

__all__ = ["DEFAULT_CLOCK", "DEFAULT_CONFIDENCE", "DEFAULT_NORMALISE", "DEFAULT_ROUNDS",
           "DEFAULT_STAT", "DEFAULT_THRESHOLD", "GATE_CASES", "INJECT_ENV", "ROOT", "SUPPORTED",
           "Settings", "VALIDITY_CASES", "VERSION_CASES", "case_direction", "case_meta",
           "selector", "split_case"]


def case_direction(method: str, unit: str | None, declared: bool | None = None) -> str:
    """``higher``, ``lower`` or ``info`` (not gated) for a benchmark method with its unit and
    its own ``higher_is_better`` (``harness.comparison.direction``): ``time_*`` is lower,
    ``track_*`` goes by its unit (``.../s``, fps: higher; times, sizes: lower)."""
    return comparison.direction(method=method, unit=unit, declared=declared)


def case_meta(cid: str, meta: dict) -> dict:
    """The run file's metadata of a case from what the worker reports (``unit``, ``kind``,
    ``version``, ``declared``): ``{"unit", "direction", "kind", "version"}``."""
    method = split_case(cid)[0].rsplit(".", 1)[-1]
    return {"unit": meta["unit"],
            "direction": case_direction(method, meta["unit"], meta.get("declared")),
            "kind": meta["kind"], "version": meta["version"]}
