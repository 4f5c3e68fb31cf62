"""What the gate measures and how, by default: the case lists, the defaults, ``Settings``, and
the direction of a case (``harness.comparison.direction``: the one rule rlgauge uses).

The defaults are what ``nox -s gate_validity`` measured (the README's "Regression gate" section
has the numbers): the smallest threshold whose suite-wide A/A false alarms stay <= 1% of gate
runs while 10% slowdowns are caught in >= 95% of them, over the gated cases (``GATE_CASES``
minus ``NOT_GATED``).
"""

from __future__ import annotations

from pathlib import Path

from harness import comparison
from harness.gate.worker import INJECT_SLOWDOWN_ENV, SUPPORTED, Settings, selector, split_case

ROOT = Path(__file__).resolve().parents[2]

#: The default gate: every bench module, one CPU case per family, each at the typical size whose
#: regression would cost users most among those cheap enough for ``nox -s regress`` to stay
#: within 5 minutes on 2 cores (what one round of each costs, measured with the gate's own
#: worker, is in the README's "Regression gate" section), all time_* (process CPU time, one
#: value per round). Left out, and why: ``ListStorage`` (no reference algorithm or recipe uses
#: it, and refilling 1e4 Python objects costs ~1 s a round), ``Training`` (once per run:
#: ``TrainingRun`` stands for it), ``MultiCollect`` (multi-process
#: collectors, used by no reference algorithm: measured once per run in a ~40 s
#: ``setup_cache`` per side, their work in processes the CPU clock does not see) and
#: ``RecipeTraining`` (once per run, ~35 s per side); ``-b`` selects any of them.
GATE_CASES = (
    # GAE and TD(λ): the native kernel at a PPO-sized batch (64 envs x 1000 steps) and
    # torchrl's vectorised estimator (its fastest CPU path at 8 x 1000), for both estimators
    "bench_gae.GAE.time_gae(device=cpu, impl=rlgauge, shape=64x1000)",
    "bench_gae.GAE.time_gae(device=cpu, impl=torchrl_vec, shape=8x1000)",
    "bench_gae.TDLambda.time_td_lambda(device=cpu, impl=rlgauge, shape=64x1000)",
    "bench_gae.TDLambda.time_td_lambda(device=cpu, impl=torchrl_vec, shape=8x1000)",
    # env backends through torchrl, as the algorithms get them: gymnasium and dm_control with
    # one env (the wrapper's per-step cost; dm_control's SerialEnv of 8 costs ~4 s a round),
    # envpool and the probes with 8 (their native batching is what they are for)
    "bench_envs.EnvStep.time_steps(device=cpu, case=gymnasium/cartpole, num_envs=1, "
    "impl=torchrl)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=dm_control/cartpole-balance, num_envs=1, "
    "impl=torchrl)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=envpool/cartpole, num_envs=8, "
    "impl=torchrl)",
    "bench_envs.EnvStep.time_steps(device=cpu, case=probe/constant-truncated, num_envs=8, "
    "impl=torchrl)",
    # replay buffers, each sampler family as a reference algorithm uses it: uniform (DQN),
    # without replacement (PPO's minibatches), prioritized sample + priority update
    # (prioritized DQN; 1e6 rows, where the sum tree is deepest), slices (recurrent DQN;
    # uncached, what its first sample after every extend costs); the memory-mapped storage's
    # extend at 1e6 rows (the storage for buffers too big for RAM; every collected batch)
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=random, size=10000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=without_replacement, "
    "size=10000)",
    "bench_buffers.UpdatePriority.time_sample_update(device=cpu, storage=tensor, size=1000000)",
    "bench_buffers.Sample.time_sample(device=cpu, storage=tensor, sampler=slice, size=10000)",
    "bench_buffers.Extend.time_extend(device=cpu, storage=memmap, sampler=random, "
    "size=1000000)",
    # losses: the whole update (loss, backward, optimiser step) of every reference algorithm
    # at batch 256, the size of the minibatches they train on
    "bench_losses.Loss.time_update(device=cpu, algorithm=ppo, batch=256)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=dqn, batch=256)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=ddpg, batch=256)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=recurrent_dqn, batch=256)",
    "bench_losses.Loss.time_update(device=cpu, algorithm=recurrent_ppo, batch=256)",
    # collectors: PPO's configuration (8 envs, its MLP actor), and one env with the
    # collector's random policy on the pure-torch probe env (the collector's own per-frame
    # overhead, DQN's and DDPG's warm-up phase)
    "bench_collectors.Collect.time_frame(device=cpu, case=gymnasium/cartpole, num_envs=8, "
    "policy=mlp)",
    "bench_collectors.Collect.time_frame(device=cpu, case=probe/constant-truncated, "
    "num_envs=1, policy=random)",
    # recipes: the pixel pipeline's step (render, ToTensorImage, GrayScale, Resize, ...), the
    # heaviest collector workload of the suite
    "bench_recipes.PixelStep.time_steps(device=cpu, impl=recipe)",
    # training throughput of every reference algorithm: one short run past its warm-up per
    # round (bench_training.TrainingRun; its gate_warmup/gate_samples ask for one call a round,
    # 0.2-0.4 s each); Training's once-per-run values (setup_cache) give no interval
    "bench_training.TrainingRun.time_run(algorithm=ppo)",
    "bench_training.TrainingRun.time_run(algorithm=dqn)",
    "bench_training.TrainingRun.time_run(algorithm=ddpg)",
    "bench_training.TrainingRun.time_run(algorithm=recurrent_dqn)",
    "bench_training.TrainingRun.time_run(algorithm=recurrent_ppo)",
)
#: default cases measured but not gated, and why: what the validity study measured on the idle
#: VM at the shipped defaults (README, "Regression gate"; results/gate/validity-vm-sample-run1
#: {0,1}.md); ``-b`` selects any of them to gate it. Taken out of this list since: the recurrent
#: DQN and PPO loss updates and the pixel step (A/A alarms and misses with case-by-case rounds,
#: runs 1-9; none left sample by sample: A/A 0/12 runs, +10% caught in >= 99.7%, runs 10-11);
#: GAE rlgauge 64x1000 (a per-process offset: 4K aliasing between the native kernel's output
#: and inputs, fixed in harness/csrc/gae.cpp; A/A 0/6 runs, 0.0% resampled since)
NOT_GATED: dict[str, str] = {
    "bench_training.TrainingRun.time_run(algorithm=recurrent_dqn)":
        "+10% caught in 92.7% and 90.5% of runs (runs 10, 11): one call a round",
}
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

DEFAULT_ROUNDS = 12
#: fresh servers (a new job) every so many rounds: each server can carry an offset of its own
#: (validity run 7: `EnvStep` probe 8 envs ran 6% slower in one server of 12 on identical code,
#: an A/A alarm); 2 generations per side over 12 rounds halve it. A restart costs ~10 s, and 3
#: generations took 4 min 41 s, too close to the 5 minutes. 0 or None: never
DEFAULT_RESTART_EVERY = 6
#: within a round, case by case, the sides take their samples in turn (``harness.gate.runner.
#: _sample_case``): on this VM the loss updates' A/A pair spread was about half that of
#: taking turns case by case (README, "Regression gate")
DEFAULT_INTERLEAVE = "sample"
DEFAULT_THRESHOLD = 0.06  # 5% until case-by-case rounds (validity-vm-26cases.md)
DEFAULT_CONFIDENCE = 0.95
DEFAULT_NORMALISE = False  # same-round calibration widened the A/A spread: off
DEFAULT_CLOCK = "cpu"  # process CPU time: far less spread than the wall clock under load
DEFAULT_STAT = "q10"  # of the round's samples: less spread than the median
INJECT_ENV = INJECT_SLOWDOWN_ENV  # the test-only slowdown knob (harness.gate.worker)

__all__ = ["DEFAULT_CLOCK", "DEFAULT_CONFIDENCE", "DEFAULT_INTERLEAVE", "DEFAULT_NORMALISE",
           "DEFAULT_RESTART_EVERY", "DEFAULT_ROUNDS", "DEFAULT_STAT", "DEFAULT_THRESHOLD",
           "FAMILIES", "GATE_CASES",
           "INJECT_ENV", "NOT_GATED", "ROOT", "SUPPORTED", "Settings", "VALIDITY_CASES",
           "VERSION_CASES", "case_direction", "case_family", "case_meta", "case_params",
           "selector", "split_case"]


#: bench module -> (what it measures, the parameters that name a case's family); ``list``
#: shows the family of every case (``case_family``)
FAMILIES = {
    "bench_buffers": ("replay buffer", ("storage", "sampler")),
    "bench_collectors": ("collector", ("num_envs", "policy", "collector")),
    "bench_envs": ("env backend", ("case",)),
    "bench_gae": ("GAE / TD(λ)", ("impl", "estimator")),
    "bench_losses": ("loss", ("algorithm",)),
    "bench_recipes": ("recipe", ("impl", "recipe")),
    "bench_training": ("training", ("algorithm",)),
}


def case_params(cid: str) -> dict[str, str]:
    """A case id's parameters: ``{"device": "cpu", "impl": "rlgauge", ...}``."""
    params = split_case(cid)[1]
    return dict(p.split("=", 1) for p in params.split(", ")) if params else {}


def case_family(cid: str) -> str:
    """What a case stands for, from its module, class and family parameters (``FAMILIES``):
    ``replay buffer: Sample tensor/random``, ``env backend: EnvStep gymnasium``, ``loss: Loss
    ppo``. An env case names its backend (``case=gymnasium/cartpole``: ``gymnasium``)."""
    name = split_case(cid)[0]
    module, _, rest = name.partition(".")
    owner = rest.rsplit(".", 1)[0] if "." in rest else rest
    topic, keys = FAMILIES.get(module, (module, ()))
    params = case_params(cid)
    if owner.startswith("UpdatePriority"):  # prioritized by definition
        params.setdefault("sampler", "prioritized")
    values = [params[k].split("/", 1)[0] if module == "bench_envs" and k == "case"
              else params[k] for k in keys if k in params]
    if module == "bench_collectors" and "num_envs" in params:
        values[0] = f"{params['num_envs']} env{'s' if params['num_envs'] != '1' else ''}"
    return f"{topic}: {owner}" + (f" {'/'.join(values)}" if values else "")


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
