"""Collectors: torchrl's ``Collector`` and multi-process collectors, beside a raw env loop.

One case per registered backend (``CASES``: CartPole for gymnasium and envpool, dm_control's
cartpole-balance, the probe backend's constant-truncated; a backend registered later gets its
first task), envs from ``harness.backends.make_env`` exactly as the reference algorithms get
them (the backend's measured batching: gymnasium's sync vector env, dm_control's
``SerialEnv``, envpool's and the probes' native batching). Batches are ``FRAMES`` = 256 frames.

- ``Collect``: a ``Collector`` over ``num_envs`` = 1 env or a batched env of 8, with a random
  policy (the collector's ``RandomPolicy``) or an MLP policy (``reference_impls.ppo``'s actor:
  64x64 tanh MLP -> Categorical / TanhNormal, on ``device``). ``time_frame``: seconds per frame
  (a timed sample is as many whole 256-frame batches as fill ~50 ms, at least one, and the
  class's ``SampleClock`` divides by the frames) -- the gate metric;
  ``track_frames_per_s``: frames/s over 4 batches (higher is better: keep it out of the gate).
- ``Construct.time_construct``: ``make_env`` + ``Collector(...)``, no batch collected.
- ``MultiCollect``: ``MultiSyncCollector`` / ``MultiAsyncCollector``, 2 worker processes of 4
  envs each (8 in all), MLP policy, on gymnasium and the probe backend (``MULTI_BACKENDS``).
  Their construction spawns the workers (torchrl's default start method; each worker imports
  torch and torchrl: ~6-15 s here), so every point is built once per asv run in
  ``setup_cache`` and the class tracks what was measured: ``track_s_per_frame`` (median of 8
  batches after 2 warm-up ones), ``track_frames_per_s``, ``track_construct_s``.
- ``RawLoop.time_frame`` -- the floor: the library's own loop (gymnasium ``env.step`` or its
  ``SyncVectorEnv``; dm_control ``suite`` envs stepped in a Python loop; the envpool pool)
  with the same policy done by hand: numpy random actions, or the same actor's network called
  on the observation tensor and its distribution sampled in plain torch (``multinomial`` of
  the softmax; a tanh-squashed normal scaled to the bounds). The probe backend has no
  raw library: its floor rows are skipped.

``FLOORS`` pairs ``Collect``/``MultiCollect`` with ``RawLoop`` on (device, case, num_envs,
policy). CUDA: the env writes its outputs to the device and the policy runs there (the raw
loop moves observations and actions by hand); skipped where there is no GPU.

Measured with ``asv run --python=same --bench bench_collectors`` (2-core VM shared with other
jobs, load 5-7, threads=1; medians): gymnasium CartPole with the MLP policy, 1 env 2.31 ms per
frame vs the raw loop's 216 us (10.7x); 8 envs 448 vs 64 us (7.0x); multi-process collectors
605 (sync) / 533 (async) us per frame after 17 s of construction. The module took 5.5 min
there, 102 s of it in ``MultiCollect.setup_cache``. Every row: ``results/bench/components.md``.
"""

from __future__ import annotations

import functools
import statistics
import time

from bench import raw
from bench.common import (
    DEVICES,
    RLBenchmark,
    SampleClock,
    calls_for,
    pin_threads,
    require_backend,
    require_device,
)
from harness import backends, registry

FRAMES = 256  # frames per collected batch
NUM_ENVS = [1, 8]
POLICIES = ["random", "mlp"]
MULTI = ["multisync", "multiasync"]
WORKERS = 2  # processes of a multi-process collector, NUM_ENVS[-1] // WORKERS envs each
PREFERRED_TASK = {"gymnasium": "cartpole", "dm_control": "cartpole-balance",
                  "envpool": "cartpole", "probe": "constant-truncated"}
#: backends of the multi-process collectors: a CPU simulator and the pure-torch probe (each
#: point spawns 2 workers that import torch and torchrl: ~6-15 s here, so not every backend)
MULTI_BACKENDS = ("gymnasium", "probe")


def _cases() -> list[str]:
    """``backend/task``: one per registered backend (available here or not: params never
    depend on the machine)."""
    registry.load_builtins()
    tasks: dict[str, list[str]] = {}
    for backend, task in backends.pairs(available_only=False):
        tasks.setdefault(backend, []).append(task)
    return [f"{b}/{PREFERRED_TASK[b] if PREFERRED_TASK.get(b) in ts else ts[0]}"
            for b, ts in tasks.items()]


CASES = _cases()
MULTI_CASES = [case for case in CASES if case.split("/", 1)[0] in MULTI_BACKENDS]


def _check_case(case: str) -> tuple[str, str]:
    """(backend, task), or NotImplementedError (skip) when it cannot be built here."""
    backend, task = case.split("/", 1)
    require_backend(backend)
    if task not in backends.available_tasks(backend):
        raise NotImplementedError(f"{case}: a library of the task is missing here")
    return backend, task


def make_policy(policy: str, backend: str, task: str, env, device):
    """None (the collector's random policy) or reference PPO's actor on ``device``."""
    if policy == "random":
        return None
    from reference_impls import ppo

    config = ppo.config_for(backend, task, device=str(device))
    return ppo.make_modules(config, env)[0]


def make_collector(case: str, num_envs: int, policy: str, device, kind: str = "sync"):
    """The collector of one benchmark point (env built inside, seeded)."""
    from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector

    backend, task = case.split("/", 1)
    if kind == "sync":
        env = backends.make_env(backend, task, num_envs=num_envs, seed=0, device=device)
        return Collector(env, make_policy(policy, backend, task, env, device),
                         frames_per_batch=FRAMES, total_frames=-1, device=device,
                         auto_register_policy_transforms=False)
    make = functools.partial(backends.make_env, backend, task, num_envs=num_envs // WORKERS,
                             seed=0, device=device)
    probe_env = make()  # the policy is built from an env's specs, as the reference does
    actor = make_policy(policy, backend, task, probe_env, device)
    probe_env.close()
    pin_threads()  # closing a SerialEnv resets torch's thread count
    cls = {"multisync": MultiSyncCollector, "multiasync": MultiAsyncCollector}[kind]
    return cls([make] * WORKERS, actor, frames_per_batch=FRAMES, total_frames=-1,
               device=device)


def shutdown(collector) -> None:
    """Shut a collector down, its weight-sync schemes too, and re-pin torch to one thread.

    torchrl 0.14.1's multi-process collectors leave their ``SharedMemWeightSyncScheme``
    running; its ``__del__`` at interpreter exit starts a thread and hangs. Closing a
    ``SerialEnv`` resets torch's thread count.
    """
    collector.shutdown()
    for scheme in (getattr(collector, "_weight_sync_schemes", None) or {}).values():
        scheme.shutdown()
    pin_threads()


class Collect(RLBenchmark):
    """``Collector`` steady state: seconds per frame over whole 256-frame batches."""

    param_names = (*RLBenchmark.param_names, "case", "num_envs", "policy")
    params = (*RLBenchmark.params, CASES, NUM_ENVS, POLICIES)
    number = 1  # a batch consumes env state
    repeat = (4, 8, 1.0)  # >= 4 samples, then stop once 1 s is spent (setups included)
    rounds = 1
    warmup_time = 0.0  # setup warms up
    timeout = 120
    timer = SampleClock()

    def setup(self, device, case, num_envs, policy):
        from harness.devices import synchronize

        super().setup(device)
        _check_case(case)
        self.sync = synchronize
        self.collector = make_collector(case, num_envs, policy, self.device)
        self.on_teardown(lambda: shutdown(self.collector))
        self.batches = iter(self.collector)
        # warm-up (first reset, the policy's first call), then batches per ~50 ms sample
        self.calls = calls_for(self.batch, sample_s=0.05)
        self.timer.units = self.calls * FRAMES

    def batch(self):
        next(self.batches)
        self.sync(self.device)

    def time_frame(self, device, case, num_envs, policy):
        for _ in range(self.calls):
            next(self.batches)
        self.sync(self.device)

    def track_frames_per_s(self, device, case, num_envs, policy):
        start = time.perf_counter()
        for _ in range(4):
            next(self.batches)
        self.sync(self.device)
        return 4 * FRAMES / (time.perf_counter() - start)

    track_frames_per_s.unit = "frames/s"


class Construct(RLBenchmark):
    """``make_env`` + ``Collector(...)``: what a run pays before its first batch."""

    param_names = Collect.param_names
    params = Collect.params
    number = 1
    repeat = (3, 5, 1.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 120

    def setup(self, device, case, num_envs, policy):
        super().setup(device)
        _check_case(case)
        # warm-up: the first build in a process imports and caches what later builds reuse
        shutdown(make_collector(case, num_envs, policy, self.device))

    def time_construct(self, device, case, num_envs, policy):
        collector = make_collector(case, num_envs, policy, self.device)
        self.on_teardown(lambda: shutdown(collector))


def _measure_multi(cases: list[str] | None = None, kinds: list[str] | None = None) -> dict:
    """Every MultiCollect point that can run here (or those of ``cases`` x ``kinds``):
    construction seconds and per-batch seconds, keyed by (device, case, collector)."""
    import torch

    pin_threads()
    torch.manual_seed(0)
    out = {}
    for device in DEVICES:
        try:
            require_device(device)
        except NotImplementedError:
            continue
        for case in cases or MULTI_CASES:
            try:
                _check_case(case)
            except NotImplementedError as err:
                out.update({(device, case, k): str(err) for k in MULTI})
                continue
            for kind in kinds or MULTI:
                try:
                    out[(device, case, kind)] = _measure_one(case, kind, torch.device(device))
                except Exception as err:  # a failure of one point, not of the whole class
                    out[(device, case, kind)] = {"error": f"{type(err).__name__}: {err}"}
    return out


def _measure_one(case: str, kind: str, device) -> dict:
    start = time.perf_counter()
    collector = make_collector(case, NUM_ENVS[-1], "mlp", device, kind)
    construct = time.perf_counter() - start
    try:
        batches = iter(collector)
        for _ in range(2):  # warm-up
            next(batches)
        seconds = []
        for _ in range(8):
            start = time.perf_counter()
            next(batches)
            seconds.append(time.perf_counter() - start)
    finally:
        shutdown(collector)
    per_batch = statistics.median(seconds)
    return {"construct_s": construct, "s_per_frame": per_batch / FRAMES,
            "frames_per_s": FRAMES / per_batch}


class MultiCollect(RLBenchmark):
    """Multi-process collectors (2 workers x 4 envs, MLP policy), measured once per run."""

    param_names = (*RLBenchmark.param_names, "case", "num_envs", "policy", "collector")
    params = (*RLBenchmark.params, MULTI_CASES, NUM_ENVS[-1:], ["mlp"], MULTI)
    timeout = 900  # setup_cache: ~15 s per point here (spawn, warm-up, 10 batches, shutdown)
    setup_cache = staticmethod(_measure_multi)
    #: what the suite's dry run (tests/test_bench_suite.py) uses instead: one point, ~10 s
    smoke_cache = staticmethod(functools.partial(_measure_multi, cases=MULTI_CASES[-1:],
                                                 kinds=MULTI[:1]))

    def setup(self, cache, device, case, num_envs, policy, collector):
        super().setup(device)
        result = cache.get((device, case, collector))
        if result is None:
            raise NotImplementedError(f"{device} was not measured")
        if isinstance(result, str):
            raise NotImplementedError(result)
        if "error" in result:
            raise RuntimeError(f"measuring {collector} on {case} failed: {result['error']}")
        self.result = result

    def track_s_per_frame(self, cache, device, case, num_envs, policy, collector):
        return self.result["s_per_frame"]

    track_s_per_frame.unit = "seconds"

    def track_frames_per_s(self, cache, device, case, num_envs, policy, collector):
        return self.result["frames_per_s"]

    track_frames_per_s.unit = "frames/s"

    def track_construct_s(self, cache, device, case, num_envs, policy, collector):
        return self.result["construct_s"]

    track_construct_s.unit = "seconds"


# --------------------------------------------------------------------------- the floor


#: backend -> its raw library loop (``bench.raw``): ``(spec, num_envs, seed) -> (first
#: observations [N, D], step(actions) -> observations, action space, close)``
RAW = raw.STEPPERS


def raw_policy(policy: str, space, num_envs: int, net, device, seed: int = 0):
    """observations [N, D] (numpy) -> actions [N, ...] (numpy), done by hand."""
    import numpy as np
    import torch

    discrete = hasattr(space, "n")
    if policy == "random":
        rng = np.random.default_rng(seed)
        if discrete:
            return lambda obs: rng.integers(0, space.n, size=num_envs)
        return lambda obs: rng.uniform(space.low, space.high,
                                       size=(num_envs, *space.shape)).astype(np.float32)
    low = torch.as_tensor(getattr(space, "low", 0.0), dtype=torch.float32, device=device)
    high = torch.as_tensor(getattr(space, "high", 1.0), dtype=torch.float32, device=device)

    @torch.no_grad()
    def act(obs):
        out = net(torch.as_tensor(obs, dtype=torch.float32).to(device))
        if discrete:  # logits -> a categorical sample
            action = torch.multinomial(torch.softmax(out, -1), 1).squeeze(-1)
        else:  # (loc, scale) -> tanh-squashed normal sample in the bounds
            loc, scale = out
            squashed = torch.tanh(loc + scale * torch.randn_like(loc))
            action = low + (high - low) * (squashed + 1) / 2
        return action.cpu().numpy()

    return act


class RawLoop(RLBenchmark):
    """The floor of ``Collect``: the raw library loop with the same policy done by hand."""

    param_names = Collect.param_names
    params = Collect.params
    number = 1
    repeat = (4, 8, 1.0)
    rounds = 1
    warmup_time = 0.0
    timeout = 120
    timer = SampleClock()

    def setup(self, device, case, num_envs, policy):
        from harness.devices import synchronize

        super().setup(device)
        backend, task = _check_case(case)
        if backend not in RAW:
            raise NotImplementedError(f"{backend} has no raw library (torchrl only)")
        spec = backends.get_task(backend, task)
        self.obs, self.step, space, close = RAW[backend](spec, num_envs, 0)
        self.on_teardown(close)
        net = None
        if policy == "mlp":  # the actor's network (MLP, + NormalParamExtractor if continuous)
            env = backends.make_env(backend, task, num_envs=1, seed=0)
            net = make_policy(policy, backend, task, env, self.device)[0].module
            env.close()
            pin_threads()
        self.act = raw_policy(policy, space, num_envs, net, self.device)
        self.steps = FRAMES // num_envs
        self.sync = synchronize
        self.calls = calls_for(self.batch, sample_s=0.05)  # warm-up, then sample size
        self.timer.units = self.calls * FRAMES

    def batch(self):
        """FRAMES frames: FRAMES / num_envs batched steps."""
        obs = self.obs
        for _ in range(self.steps):
            obs = self.step(self.act(obs))
        self.obs = obs
        self.sync(self.device)

    def time_frame(self, device, case, num_envs, policy):
        for _ in range(self.calls):
            self.batch()


#: benchmark -> its floor in this module; rows pair up on the parameters both share
FLOORS = {
    "Collect.time_frame": "RawLoop.time_frame",
    "MultiCollect.track_s_per_frame": "RawLoop.time_frame",
}
