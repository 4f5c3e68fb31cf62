"""GAE and TD(λ): torchrl's loop and vectorised kernels and rlgauge's, against a memory-copy floor.

Inputs are float32 ``[B, T, 1]`` (B×T in ``SHAPES``), seeded: rewards and values ~ N(0, 1),
``done`` on ~1% of the steps, half of those ends being terminations and half truncations. They
are drawn on the CPU and moved to the device, so every device sees the same numbers.

- ``GAE.time_gae`` / ``TDLambda.time_td_lambda``: seconds per call of the estimator,
  γ = 0.99, λ = 0.95, device synchronised inside the timer (one call per sample for torchrl's,
  ``calls_per_sample`` calls for rlgauge's and the floor: see ``_per_call_clock``).
  ``impl``: torchrl's ``generalized_advantage_estimate`` / ``td_lambda_return_estimate``
  (``torchrl_loop``), their ``vec_*`` twins (``torchrl_vec``), and ``harness.estimators.gae`` /
  ``td_lambda_return`` (``rlgauge``: the fused C++ pass on CPU, the Triton kernel on CUDA where
  triton is installed, else the parallel scan).
- ``track_max_abs_error``: max |result - oracle| against ``harness.estimators``' float64
  oracle, over the first ``min(B, ORACLE_ROWS)`` batch rows (the oracle is O(T²); rows are
  independent, so a row subset of the full-batch call is a fair sample). Unit "abs err".
- ``CopyFloor.time_copy_gae`` / ``time_copy_td_lambda``: the floor. A kernel must read its
  inputs and write its outputs once: ``footprint_bytes`` = 22 bytes per element for GAE (three
  float32 inputs, two bool flags, two float32 outputs) and 14 for TD(λ). The floor copies
  footprint / 2 bytes into another buffer, so that it too reads plus writes exactly the
  footprint. ``FLOORS`` pairs each timing with its floor (rows matched on ``device`` and
  ``shape``); the report prints their ratio as "× floor".
- ``KernelBuild.track_cached_load_s``: the native kernel's one-off cost per process, measured
  in the run: ``gae_native.load()`` of the cached (and already self-tested) build in a fresh
  process. The compile time is not tracked here: one build is a 30-70 s one-off per (torch,
  CPU, sources), cached, and a number recorded when the cache was made is not a measurement of
  the run being gated. ``python -m harness doctor`` and this module's Markdown table report it
  (``build.json``), as information.
- ``PPOAdvantage.time_advantage``: PPO's advantage step (``loss.value_estimator(batch)`` under
  ``no_grad``: critic on s and s', then GAE) with torchrl's ``GAE`` and with ``KernelGAE``, on
  the reference PPO's CartPole modules.

``python -m bench.bench_gae [--device cuda] [--out results/bench/gae.md]`` measures all of it
interleaved in one process (every kernel beside its floor in the same round, on the device,
synchronised inside the timer; medians over rounds) and prints the Markdown table kept in
``results/bench/gae.md`` (CPU).
"""

from __future__ import annotations

import time

from bench.common import RLBenchmark, SampleClock, calls_for, emit

GAMMA, LMBDA = 0.99, 0.95
DONE_RATE = 0.01
SHAPES = ["1x1000", "8x1000", "64x1000", "256x2048"]
IMPLS = ["torchrl_loop", "torchrl_vec", "rlgauge"]
ORACLE_ROWS = 16

#: timing -> the floor it is reported against (same module; rows matched on device and shape)
FLOORS: dict[str, str] = {
    "GAE.time_gae": "CopyFloor.time_copy_gae",
    "TDLambda.time_td_lambda": "CopyFloor.time_copy_td_lambda",
}


def _shape(shape: str) -> tuple[int, int]:
    b, t = shape.split("x")
    return int(b), int(t)


def make_inputs(shape: str, device, seed: int = 0) -> dict:
    """Seeded float32 [B, T, 1] estimator inputs on ``device`` (drawn on the CPU)."""
    import torch

    B, T = _shape(shape)
    g = torch.Generator().manual_seed(seed)
    size = (B, T, 1)
    ends = torch.rand(size, generator=g) < DONE_RATE
    terminal = torch.rand(size, generator=g) < 0.5
    data = {
        "state_value": torch.randn(size, generator=g),
        "next_state_value": torch.randn(size, generator=g),
        "reward": torch.randn(size, generator=g),
        "done": ends,
        "terminated": ends & terminal,
    }
    return {k: v.to(device) for k, v in data.items()}


def _functions(kernel: str, impl: str):
    from torchrl.objectives.value import functional as F

    from harness import estimators

    table = {
        ("gae", "torchrl_loop"): F.generalized_advantage_estimate,
        ("gae", "torchrl_vec"): F.vec_generalized_advantage_estimate,
        ("gae", "rlgauge"): estimators.gae,
        ("td_lambda", "torchrl_loop"): F.td_lambda_return_estimate,
        ("td_lambda", "torchrl_vec"): F.vec_td_lambda_return_estimate,
        ("td_lambda", "rlgauge"): estimators.td_lambda_return,
    }
    return table[kernel, impl]


def make_call(kernel: str, impl: str, data: dict):
    """A no-argument callable running ``kernel`` ("gae"/"td_lambda") as ``impl``."""
    fn = _functions(kernel, impl)
    d = data
    if kernel == "gae":
        return lambda: fn(GAMMA, LMBDA, d["state_value"], d["next_state_value"], d["reward"],
                          d["done"], d["terminated"])
    return lambda: fn(GAMMA, LMBDA, d["next_state_value"], d["reward"], d["done"],
                      d["terminated"])


def oracle_error(kernel: str, result, data: dict) -> float:
    """max |result - float64 oracle| over the first ORACLE_ROWS batch rows."""
    from harness import estimators

    rows = {k: v[:ORACLE_ROWS].cpu() for k, v in data.items()}
    if kernel == "gae":
        got = result[0][:ORACLE_ROWS].cpu()  # the advantage
        want = estimators.oracle_gae(GAMMA, LMBDA, rows["state_value"], rows["next_state_value"],
                                     rows["reward"], rows["done"], rows["terminated"])[0]
    else:
        got = result[:ORACLE_ROWS].cpu()
        want = estimators.oracle_td_lambda_return(GAMMA, LMBDA, rows["next_state_value"],
                                                  rows["reward"], rows["done"],
                                                  rows["terminated"])
    return (got.double() - want).abs().max().item()


def footprint_bytes(kernel: str, data: dict) -> int:
    """Bytes the kernel must read (its inputs) plus write (its float32 outputs)."""
    inputs = (["state_value"] if kernel == "gae" else []) + [
        "next_state_value", "reward", "done", "terminated"]
    read = sum(data[k].numel() * data[k].element_size() for k in inputs)
    outputs = 2 if kernel == "gae" else 1  # (advantage, value_target) or the return
    return read + outputs * data["reward"].numel() * data["reward"].element_size()


# asv re-runs ``setup`` before every timed sample of a class that has one (asv_runner 0.3.2,
# asv#966), so ``number`` cannot batch calls, and one microsecond-scale call straight after a
# setup times cold caches (measured: ~27 µs for a 4 µs call at 1x1000). The microsecond-scale
# cases (rlgauge's kernel and the copy floor) call ``calls_per_sample`` times per sample, and
# their classes' ``timer`` divides the clock by that count: asv records seconds per call.
_calls = [1]  # the current sample's number of calls, set by setup


def _per_call_clock() -> float:
    return time.perf_counter() / _calls[0]


def calls_per_sample(shape: str, impl: str = "rlgauge") -> int:
    """Calls per timed sample: ~16M elements' worth for the fast cases (5-20 ms here; with
    ~1M, 0.3-1 ms samples, the spread of one full run was 13-16% at 64x1000 on an idle
    machine), at most 5000 calls; 1 for torchrl's."""
    B, T = _shape(shape)
    return 1 if impl.startswith("torchrl") else max(1, min(5000, 16_000_000 // (B * T)))


class _Estimator(RLBenchmark):
    kernel = ""
    param_names = (*RLBenchmark.param_names, "impl", "shape")
    params = (*RLBenchmark.params, IMPLS, SHAPES)
    number = 1  # 256x2048 vectorised takes ~0.5 s a call on one CPU thread
    repeat = (5, 15, 1.0)  # >= 5 samples, then stop once 1 s is spent
    warmup_time = 0.0  # setup warms up
    timeout = 120  # the first rlgauge setup may compile the native kernel (~40 s, then cached)
    timer = staticmethod(_per_call_clock)

    def setup(self, device, impl, shape):
        super().setup(device)
        self.data = make_inputs(shape, self.device)
        self.call = make_call(self.kernel, impl, self.data)
        self.calls = _calls[0] = calls_per_sample(shape, impl)
        self.call()  # warm-up outside the timer
        from harness.devices import synchronize

        self.sync = synchronize
        self.sync(self.device)

    def _timed(self):
        for _ in range(self.calls):
            self.call()
        self.sync(self.device)

    def track_max_abs_error(self, device, impl, shape):
        return oracle_error(self.kernel, self.call(), self.data)

    track_max_abs_error.unit = "abs err"


class GAE(_Estimator):
    """GAE over [B, T, 1] float32: torchrl's loop and vectorised kernels, and rlgauge's."""

    kernel = "gae"

    def time_gae(self, device, impl, shape):
        self._timed()


class TDLambda(_Estimator):
    """TD(λ) return over [B, T, 1] float32: torchrl's loop and vectorised kernels, and rlgauge's."""

    kernel = "td_lambda"

    def time_td_lambda(self, device, impl, shape):
        self._timed()


class CopyFloor(RLBenchmark):
    """The floor: copy footprint / 2 bytes, so that bytes read + written = the kernel's own."""

    param_names = (*RLBenchmark.param_names, "shape")
    params = (*RLBenchmark.params, SHAPES)
    number = 1
    repeat = (5, 15, 0.5)
    warmup_time = 0.0
    timeout = 60
    timer = staticmethod(_per_call_clock)  # per copy; as many copies per sample as rlgauge calls

    def setup(self, device, shape):
        import torch

        from harness.devices import synchronize

        super().setup(device)
        self.calls = _calls[0] = calls_per_sample(shape)
        data = make_inputs(shape, "cpu")
        self.buffers = {}
        for kernel in ("gae", "td_lambda"):
            src = torch.ones(footprint_bytes(kernel, data) // 2, dtype=torch.uint8,
                             device=self.device)
            dst = torch.empty_like(src)
            dst.copy_(src)  # warm-up: touch both buffers
            self.buffers[kernel] = (dst, src)
        self.sync = synchronize
        self.sync(self.device)

    def time_copy_gae(self, device, shape):
        dst, src = self.buffers["gae"]
        for _ in range(self.calls):
            dst.copy_(src)
        self.sync(self.device)

    def time_copy_td_lambda(self, device, shape):
        dst, src = self.buffers["td_lambda"]
        for _ in range(self.calls):
            dst.copy_(src)
        self.sync(self.device)


_LOAD_SNIPPET = ("import time; t = time.perf_counter(); from harness import gae_native; "
                 "m = gae_native.load(); print(time.perf_counter() - t if m else -1)")


class KernelBuild:
    """The native kernel's one-off cost per process: loading the cached build, measured.

    (No compile time: see the module docstring. ``track_cold_build_s`` used to return the time
    recorded in ``build.json`` when the cache was built: the same stale number in every run, which
    the regression gate would have compared as if it were a measured cost.)
    """

    timeout = 300

    def setup(self):
        from harness import estimators, gae_native

        if not estimators.native_available():  # builds it if the cache is cold
            raise NotImplementedError(f"native GAE kernel unavailable: "
                                      f"{gae_native.status().detail}")

    def track_cached_load_s(self):
        """Seconds ``gae_native.load()`` takes in a fresh process (torch already imported)."""
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-c", "import torch; " + _LOAD_SNIPPET],
                              capture_output=True, text=True, timeout=120)
        return float(proc.stdout.strip().splitlines()[-1])

    track_cached_load_s.unit = "s"


PPO_SHAPES = ["8x32", "64x256"]  # [num_envs, steps]: RL Zoo CartPole's batch, and a bigger one


def make_ppo_advantage(estimator: str, shape: str, device):
    """(PPO's value estimator, a seeded CartPole-shaped batch) for ``Config.advantage``."""
    import torch
    from tensordict import TensorDict

    from reference_impls import ppo

    config = ppo.config_for("gymnasium", "cartpole", advantage=estimator, device=str(device))
    env = ppo.make_env(config)
    try:
        actor, critic = ppo.make_modules(config, env)
    finally:
        env.close()
    loss = ppo.make_loss(config, actor, critic)
    B, T = _shape(shape)
    g = torch.Generator().manual_seed(0)
    ends = torch.rand(B, T, 1, generator=g) < DONE_RATE
    batch = TensorDict({
        "observation": torch.randn(B, T, 4, generator=g),
        "next": {"observation": torch.randn(B, T, 4, generator=g),
                 "reward": torch.ones(B, T, 1),
                 "done": ends, "terminated": ends & (torch.rand(B, T, 1, generator=g) < 0.5)},
    }, [B, T]).to(device)
    return loss.value_estimator, batch


class PPOAdvantage(RLBenchmark):
    """PPO's advantage step (critic on s and s', then GAE) with torchrl's GAE and rlgauge's."""

    param_names = (*RLBenchmark.param_names, "estimator", "shape")
    params = (*RLBenchmark.params, ["torchrl", "rlgauge"], PPO_SHAPES)
    number = 1
    repeat = (5, 20, 1.0)
    warmup_time = 0.0
    timeout = 120
    # ~50 ms samples of several steps (SampleClock: asv records seconds per step); one-step
    # samples of 1-15 ms had a 13-35% spread in one full run on an idle machine
    timer = SampleClock()

    def setup(self, device, estimator, shape):
        import torch

        from harness.devices import synchronize

        super().setup(device)
        self.estimator, self.batch = make_ppo_advantage(estimator, shape, self.device)
        self.no_grad = torch.no_grad
        self.sync = synchronize

        def step():
            with self.no_grad():
                self.estimator(self.batch)
            self.sync(self.device)

        self.step = step
        self.calls = self.timer.units = calls_for(step, sample_s=0.05)  # warms up too

    def time_advantage(self, device, estimator, shape):
        for _ in range(self.calls):
            self.step()


# --------------------------------------------------------------------------- one-process table


def measure_table(shapes=SHAPES, impls=IMPLS, rounds: int = 7, budget_s: float = 0.05,
                  device="cpu") -> list:
    """Rows (kernel, impl, shape, median seconds, median ratio to the floor, max abs error).

    Every kernel and its floor are timed in the same round, rounds interleave all cases, and
    the ratio is taken per round before the median: the machine's drift cancels out. On CUDA
    the inputs, the floor's buffers and the calls are on the device, and the device is
    synchronised inside the timer (``measure(device=...)``), after each sample's calls.
    """
    import statistics
    import time

    import torch

    from harness.devices import check_device, synchronize
    from harness.timing import measure

    torch.set_num_threads(1)
    device = check_device(device)
    cases = []
    for shape in shapes:
        data = make_inputs(shape, device)
        for kernel in ("gae", "td_lambda"):
            src = torch.ones(footprint_bytes(kernel, data) // 2, dtype=torch.uint8,
                             device=device)
            dst = torch.empty_like(src)
            floor = lambda dst=dst, src=src: dst.copy_(src)  # noqa: E731
            for impl in impls:
                call = make_call(kernel, impl, data)
                call()  # warm-up (on CUDA: Triton's compile, the allocator) before the estimate
                synchronize(device)
                t0 = time.perf_counter()
                result = call()
                synchronize(device)
                once = time.perf_counter() - t0
                number = max(1, int(budget_s / max(once, 1e-7) / 3))
                cases.append(dict(kernel=kernel, impl=impl, shape=shape, call=call, floor=floor,
                                  number=number, error=oracle_error(kernel, result, data),
                                  times=[], ratios=[]))
    for _ in range(rounds):
        for c in cases:
            f = measure(c["floor"], repeat=3, number=max(c["number"], 1), warmup=1,
                        device=device).median
            k = measure(c["call"], repeat=3, number=c["number"], warmup=1, device=device).median
            c["times"].append(k)
            c["ratios"].append(k / f)
    return [(c["kernel"], c["impl"], c["shape"], statistics.median(c["times"]),
             statistics.median(c["ratios"]), c["error"]) for c in cases]


def measure_ppo(shapes=PPO_SHAPES, rounds: int = 7, device="cpu") -> list:
    """Rows (shape, torchrl seconds, rlgauge seconds): PPO's advantage step, interleaved
    (device synchronised inside the timer)."""
    import statistics

    import torch

    from harness.timing import measure

    torch.set_num_threads(1)
    rows = []
    for shape in shapes:
        steps = {name: make_ppo_advantage(name, shape, device)
                 for name in ("torchrl", "rlgauge")}

        def step(est, batch):
            with torch.no_grad():
                est(batch)

        times = {name: [] for name in steps}
        for _ in range(rounds):
            for name, (est, batch) in steps.items():
                times[name].append(measure(lambda e=est, b=batch: step(e, b), repeat=3,
                                           number=5, warmup=1, device=device).median)
        rows.append((shape, statistics.median(times["torchrl"]),
                     statistics.median(times["rlgauge"])))
    return rows


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} µs"


def main(argv=None) -> int:
    import argparse
    import platform

    import torch

    from harness import gae_native

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown table here too")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu",
                        help="cpu (rlgauge: the native kernel) or cuda (rlgauge: the Triton "
                             "kernel where triton imports, else the scan); the same table")
    args = parser.parse_args(argv)
    from harness import estimators

    on_cuda = args.device.startswith("cuda")
    if on_cuda:
        kernel_line = (f"Kernel on {args.device}: "
                       + (f"Triton ({estimators.triton_status()})"
                          if estimators.triton_available()
                          else f"the torch scan ({estimators.triton_status()})")
                       + f"; {torch.cuda.get_device_name(args.device)}.")
    else:
        native = gae_native.status()
        kernel_line = (f"Native kernel: {native.detail}; compile {native.build_seconds} s when "
                       f"built; this process loaded it in {native.load_seconds:.3f} s.")
    lines = [f"# bench_gae: one process, interleaved ({platform.node()}, torch {torch.__version__},"
             f" {args.device}, threads=1, {args.rounds} rounds, medians)", "",
             kernel_line, "",
             "| kernel | impl | shape | time | × floor | max abs err vs float64 |",
             "|---|---|---|---|---|---|"]
    for kernel, impl, shape, t, ratio, err in measure_table(rounds=args.rounds,
                                                            device=args.device):
        lines.append(f"| {kernel} | {impl} | {shape} | {_fmt(t)} | {ratio:.2f} | {err:.1e} |")
    lines += ["", "| PPO advantage step | torchrl GAE | rlgauge KernelGAE | speed-up |",
              "|---|---|---|---|"]
    for shape, t_torchrl, t_rlgauge in measure_ppo(rounds=args.rounds, device=args.device):
        lines.append(f"| {shape} | {_fmt(t_torchrl)} | {_fmt(t_rlgauge)} | "
                     f"{t_torchrl / t_rlgauge:.1f}× |")
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
