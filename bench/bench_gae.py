"""GAE and TD(λ): torchrl's loop and vectorised kernels, against a memory-copy floor.

Inputs are float32 ``[B, T, 1]`` (B×T in ``SHAPES``), seeded: rewards and values ~ N(0, 1),
``done`` on ~1% of the steps, half of those ends being terminations and half truncations. They
are drawn on the CPU and moved to the device, so every device sees the same numbers.

- ``GAE.time_gae`` / ``TDLambda.time_td_lambda``: one call of ``generalized_advantage_estimate``
  or ``vec_generalized_advantage_estimate`` (``td_lambda_return_estimate`` /
  ``vec_td_lambda_return_estimate``), γ = 0.99, λ = 0.95, device synchronised inside the timer.
- ``track_max_abs_error``: max |torchrl - oracle| against ``harness.estimators``' float64
  oracle, over the first ``min(B, ORACLE_ROWS)`` batch rows (the oracle is O(T²); rows are
  independent, so a row subset of the full-batch call is a fair sample). Unit "abs err".
- ``CopyFloor.time_copy``: copying a buffer of as many bytes as the kernel reads and writes
  (inputs + outputs), the DRAM floor reference: reads and writes that many bytes, so it moves
  twice a perfect kernel's traffic -- compare orders of magnitude, not percent.
"""

from __future__ import annotations

from bench.common import RLBenchmark

GAMMA, LMBDA = 0.99, 0.95
DONE_RATE = 0.01
SHAPES = ["1x1000", "8x1000", "64x1000", "256x2048"]
IMPLS = ["torchrl_loop", "torchrl_vec"]
ORACLE_ROWS = 16


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


def make_call(kernel: str, impl: str, data: dict):
    """A no-argument callable running torchrl's ``kernel`` ("gae"/"td_lambda") as ``impl``."""
    from torchrl.objectives.value import functional as F

    d = data
    if kernel == "gae":
        fn = (F.generalized_advantage_estimate if impl == "torchrl_loop"
              else F.vec_generalized_advantage_estimate)
        return lambda: fn(GAMMA, LMBDA, d["state_value"], d["next_state_value"], d["reward"],
                          d["done"], d["terminated"])
    fn = F.td_lambda_return_estimate if impl == "torchrl_loop" else F.vec_td_lambda_return_estimate
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


class _Estimator(RLBenchmark):
    kernel = ""
    param_names = (*RLBenchmark.param_names, "impl", "shape")
    params = (*RLBenchmark.params, IMPLS, SHAPES)
    number = 1  # 256x2048 vectorised takes ~0.7 s a call on one CPU thread
    repeat = (3, 10, 1.0)  # >= 3 samples, then stop once 1 s is spent
    warmup_time = 0.0  # setup warms up
    timeout = 120

    def setup(self, device, impl, shape):
        super().setup(device)
        self.data = make_inputs(shape, self.device)
        self.call = make_call(self.kernel, impl, self.data)
        self.call()  # warm-up outside the timer
        from harness.devices import synchronize

        self.sync = synchronize
        self.sync(self.device)

    def track_max_abs_error(self, device, impl, shape):
        return oracle_error(self.kernel, self.call(), self.data)

    track_max_abs_error.unit = "abs err"


class GAE(_Estimator):
    """GAE over [B, T, 1] float32: torchrl's loop vs vectorised kernel."""

    kernel = "gae"

    def time_gae(self, device, impl, shape):
        self.call()
        self.sync(self.device)


class TDLambda(_Estimator):
    """TD(λ) return over [B, T, 1] float32: torchrl's loop vs vectorised kernel."""

    kernel = "td_lambda"

    def time_td_lambda(self, device, impl, shape):
        self.call()
        self.sync(self.device)


class CopyFloor(RLBenchmark):
    """The floor: copy a buffer of the kernel's footprint (input bytes + output bytes)."""

    param_names = (*RLBenchmark.param_names, "kernel", "shape")
    params = (*RLBenchmark.params, ["gae", "td_lambda"], SHAPES)
    number = 1
    repeat = (3, 10, 0.5)
    warmup_time = 0.0
    timeout = 60

    def setup(self, device, kernel, shape):
        import torch

        from harness.devices import synchronize

        super().setup(device)
        nbytes = footprint_bytes(kernel, make_inputs(shape, "cpu"))
        self.src = torch.ones(nbytes, dtype=torch.uint8, device=self.device)
        self.dst = torch.empty_like(self.src)
        self.sync = synchronize
        self.dst.copy_(self.src)  # warm-up: touch both buffers
        self.sync(self.device)

    def time_copy(self, device, kernel, shape):
        self.dst.copy_(self.src)
        self.sync(self.device)
