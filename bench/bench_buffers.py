"""Replay buffers: torchrl storages x samplers, each beside a bare-tensor floor.

Data: ``bench.common.transitions`` -- seeded CartPole-sized transitions (4 float32
observations and next observations, an int64 action, reward, done flags, trajectory ids;
~60 bytes a row) in episodes of 32-200 steps. Every buffer is a ``ReplayBuffer`` filled to its
capacity ``size`` (1e4 or 1e6 rows) in ``setup``, so each timed operation runs at steady state
(extends overwrite the oldest rows).

- ``Extend.time_extend``: ``rb.extend`` of 1000 rows, per storage x sampler x size (the
  sampler matters: prioritized writes priorities, ``cache_values`` drops its cache).
- ``Sample.time_sample``: ``rb.sample()`` of 256 rows (slice samplers: 8 slices of 32 steps).
- ``UpdatePriority.time_sample_update``: ``PrioritizedSampler`` sample + ``update_priority``
  of the sampled rows (what prioritized DQN does after each step).
- ``Footprint.peakmem_fill``: peak RSS of building and filling the buffer (process peak,
  torch and torchrl included; compare rows, not absolute values).

One timed sample runs the operation as many times as fill ~50 ms (``bench.common.calls_for``,
sized in ``setup``) and the class's ``SampleClock`` divides by that count: asv records seconds
per operation.

Floors, same run, same data and device: ``ExtendFloor`` writes the 1000 rows into
preallocated tensors at a ring cursor; ``SampleFloor`` draws 256 indices (``randint``; a
``randperm`` epoch for without-replacement; torchrl's C++ sum tree for prioritized; a
precomputed episode table for the slice samplers) and ``index_select``-s every key;
``UpdatePriorityFloor`` runs the sum/min trees directly. ``FLOORS`` pairs them (the
``× floor`` column of ``python -m harness asv-table``).

Skipped, with the reason in the skip: ``ListStorage`` at 1e6 (filling it stores one Python
object per row: ~65 s per fill here, and asv refills per sample), ``ListStorage`` with slice
samplers (torchrl 0.14.1: "Could not get a tensordict out of the storage"); on CUDA only the
tensor storage (memmap and list storages live in host memory).

Measured with ``asv run --python=same --bench bench_buffers`` (2-core VM shared with other
jobs, load 5-7, threads=1; medians, 1e6 rows, tensor storage): extend 432 us vs floor 57 us
(7.6x), sample 402 vs 107 us (3.8x), ``SliceSampler`` sample 14.6 ms (1.09 ms with
``cache_values``) vs 119 us, prioritized sample+update 1.05 ms vs 366 us. The module took
2.6 min there. Every row: ``results/bench/components.md``.
"""

from __future__ import annotations

import shutil
import tempfile

from bench.common import RLBenchmark, SampleClock, calls_for, transitions

SIZES = [10_000, 1_000_000]
STORAGES = ["tensor", "memmap", "list"]
SAMPLERS = ["random", "without_replacement", "prioritized", "slice", "slice_cached",
            "slice_without_replacement"]
BATCH = 256
SLICE_LEN = 32
EXTEND_ROWS = 1000
SAMPLE_S = 0.05  # seconds of operations per timed sample (calls_for)
ALPHA, BETA = 0.6, 0.4
TRAJ_KEY = ("collector", "traj_ids")


def _data_cache() -> dict:
    """The largest fill once per asv run (~0.3 s to draw); setup slices smaller sizes from it."""
    return {"data": transitions(max(SIZES))}


def skip_reason(storage: str, sampler: str, size: int, device) -> str | None:
    """Why a combination is not measured (None: it is)."""
    if storage == "list" and size > 10_000:
        return "ListStorage stores one Python object per row: filling 1e6 takes ~65 s here"
    if storage == "list" and sampler.startswith("slice"):
        return "SliceSampler needs a TensorDict storage (torchrl: 'Could not get a tensordict')"
    if storage != "tensor" and device.type != "cpu":
        return f"the {storage} storage keeps its data in host memory (CUDA: tensor storage only)"
    if sampler == "prioritized" and device.type == "cuda":
        import torchrl._torchrl as ext

        if not hasattr(ext, "CudaSumSegmentTreeFp32"):
            return "this torchrl build has no CUDA segment trees (a CUDA wheel of torchrl has)"
    return None


def make_sampler(sampler: str, size: int):
    from torchrl.data.replay_buffers.samplers import (
        PrioritizedSampler,
        RandomSampler,
        SamplerWithoutReplacement,
        SliceSampler,
        SliceSamplerWithoutReplacement,
    )

    if sampler == "random":
        return RandomSampler()
    if sampler == "without_replacement":
        return SamplerWithoutReplacement()
    if sampler == "prioritized":
        return PrioritizedSampler(size, alpha=ALPHA, beta=BETA)
    if sampler in ("slice", "slice_cached"):
        return SliceSampler(slice_len=SLICE_LEN, traj_key=TRAJ_KEY,
                            cache_values=sampler == "slice_cached")
    if sampler == "slice_without_replacement":
        return SliceSamplerWithoutReplacement(slice_len=SLICE_LEN, traj_key=TRAJ_KEY)
    raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")


def make_buffer(storage: str, sampler: str, size: int, device, on_teardown):
    """An empty ``ReplayBuffer`` (batch 256); memmap scratch dirs are removed at teardown."""
    from torchrl.data import LazyMemmapStorage, LazyTensorStorage, ListStorage, ReplayBuffer

    if storage == "tensor":
        store = LazyTensorStorage(size, device=device)
    elif storage == "memmap":
        scratch = tempfile.mkdtemp(prefix="rlgauge-memmap-")
        on_teardown(lambda: shutil.rmtree(scratch, ignore_errors=True))
        store = LazyMemmapStorage(size, scratch_dir=scratch)
    elif storage == "list":
        store = ListStorage(size)
    else:
        raise ValueError(f"unknown storage {storage!r}; valid: {', '.join(STORAGES)}")
    return ReplayBuffer(storage=store, sampler=make_sampler(sampler, size), batch_size=BATCH)


class _Timed(RLBenchmark):
    """One timed sample = ``self.calls`` calls of ``self.op`` (about ``SAMPLE_S`` seconds);
    ``SampleClock`` makes asv record seconds per call."""

    number = 1
    repeat = (4, 8, 1.0)  # >= 4 samples, then stop once 1 s is spent (setups included)
    rounds = 1
    warmup_time = 0.0  # setup warms up
    timeout = 120
    timer = SampleClock()
    setup_cache = staticmethod(_data_cache)

    def op(self):
        raise NotImplementedError

    def calibrate(self):
        """Warm up, then size the sample (setup's last step)."""
        from harness.devices import synchronize

        self.sync = synchronize
        self.calls = self.timer.units = calls_for(lambda: (self.op(), self.sync(self.device)),
                                                  sample_s=SAMPLE_S)

    def run(self):
        for _ in range(self.calls):
            self.op()
        self.sync(self.device)


class _Buffer(_Timed):
    param_names = (*RLBenchmark.param_names, "storage", "sampler", "size")
    params = (*RLBenchmark.params, STORAGES, SAMPLERS, SIZES)

    def setup(self, cache, device, storage, sampler, size):
        super().setup(device)
        reason = skip_reason(storage, sampler, size, self.device)
        if reason:
            raise NotImplementedError(reason)
        data = cache["data"][:size]
        self.rb = make_buffer(storage, sampler, size, self.device, self.on_teardown)
        self.rb.extend(data.to(self.device))
        self.rows = data[:EXTEND_ROWS].clone().to(self.device)
        self.calibrate()


class Extend(_Buffer):
    """``rb.extend`` of 1000 rows into a full buffer."""

    def op(self):
        self.rb.extend(self.rows)

    def time_extend(self, cache, device, storage, sampler, size):
        self.run()


class Sample(_Buffer):
    """``rb.sample()`` of 256 rows from a full buffer."""

    def op(self):
        self.rb.sample()

    def time_sample(self, cache, device, storage, sampler, size):
        self.run()


class UpdatePriority(_Buffer):
    """Prioritized replay: sample 256 rows, then ``update_priority`` them."""

    param_names = (*RLBenchmark.param_names, "storage", "size")
    params = (*RLBenchmark.params, STORAGES, SIZES)

    def setup(self, cache, device, storage, size):
        import torch

        g = torch.Generator().manual_seed(1)
        self.priorities = torch.rand(64, BATCH, generator=g) + 0.01
        self.i = 0
        super().setup(cache, device, storage, "prioritized", size)

    def op(self):
        _, info = self.rb.sample(return_info=True)
        self.i = (self.i + 1) % len(self.priorities)
        self.rb.update_priority(info["index"], self.priorities[self.i])

    def time_sample_update(self, cache, device, storage, size):
        self.run()


class Footprint(RLBenchmark):
    """Peak RSS of building a buffer and filling it to ``size`` (1000-row extends)."""

    param_names = ("storage", "size")
    params = (STORAGES, SIZES)
    timeout = 120

    def setup(self, storage, size):
        super().setup("cpu")
        reason = skip_reason(storage, "random", size, self.device)
        if reason:
            raise NotImplementedError(reason)
        self.rows = transitions(EXTEND_ROWS)

    def peakmem_fill(self, storage, size):
        rb = make_buffer(storage, "random", size, self.device, self.on_teardown)
        for _ in range(size // EXTEND_ROWS):
            rb.extend(self.rows)


# --------------------------------------------------------------------------- floors


class ExtendFloor(_Timed):
    """Floor of ``Extend``: write 1000 rows into preallocated tensors at a ring cursor."""

    param_names = (*RLBenchmark.param_names, "size")
    params = (*RLBenchmark.params, SIZES)

    def setup(self, cache, device, size):
        super().setup(device)
        data = cache["data"][:size]
        self.store = {k: v.to(self.device) for k, v in
                      data.items(include_nested=True, leaves_only=True)}
        self.rows = {k: v[:EXTEND_ROWS].clone() for k, v in self.store.items()}
        self.size, self.cursor = size, 0
        self.calibrate()

    def op(self):
        end = self.cursor + EXTEND_ROWS  # sizes are multiples of EXTEND_ROWS: no wrap split
        for key, rows in self.rows.items():
            self.store[key][self.cursor:end].copy_(rows)
        self.cursor = end % self.size

    def time_extend(self, cache, device, size):
        self.run()


class SampleFloor(_Timed):
    """Floor of ``Sample``: draw 256 indices the sampler's way, ``index_select`` every key."""

    param_names = (*RLBenchmark.param_names, "sampler", "size")
    params = (*RLBenchmark.params, SAMPLERS, SIZES)

    def setup(self, cache, device, sampler, size):
        import torch

        super().setup(device)
        data = cache["data"][:size]
        self.store = {k: v.to(self.device) for k, v in
                      data.items(include_nested=True, leaves_only=True)}
        self.size = size
        if sampler == "prioritized":
            self.tree = _sum_min_trees(size)[0]
            self.total = self.tree.query(0, size)
        elif sampler.startswith("slice"):
            # the episode table: start and length of every episode that fits a slice
            traj = data[TRAJ_KEY]
            ids, lengths = torch.unique_consecutive(traj, return_counts=True)
            starts = torch.cumsum(lengths, 0) - lengths
            keep = lengths >= SLICE_LEN
            self.starts = starts[keep].to(self.device)
            self.room = (lengths[keep] - SLICE_LEN + 1).to(self.device)
            self.steps = torch.arange(SLICE_LEN, device=self.device)
        self.perm, self.pos = None, size
        self.draw = {"random": self._draw_random, "without_replacement": self._draw_without,
                     "prioritized": self._draw_prioritized}.get(sampler, self._draw_slice)
        self.calibrate()

    def op(self):
        index = self.draw()
        {k: v.index_select(0, index) for k, v in self.store.items()}

    def time_sample(self, cache, device, sampler, size):
        self.run()

    def _draw_random(self):
        import torch

        return torch.randint(self.size, (BATCH,), device=self.device)

    def _draw_without(self):
        import torch

        if self.pos + BATCH > self.size:  # a new epoch
            self.perm, self.pos = torch.randperm(self.size, device=self.device), 0
        self.pos += BATCH
        return self.perm[self.pos - BATCH:self.pos]

    def _draw_prioritized(self):
        import torch

        return torch.as_tensor(self.tree.scan_lower_bound(torch.rand(BATCH) * self.total),
                               device=self.device)

    def _draw_slice(self):
        import torch

        n = BATCH // SLICE_LEN
        episode = torch.randint(len(self.starts), (n,), device=self.device)
        offset = (torch.rand(n, device=self.device) * self.room[episode]).long()
        return ((self.starts[episode] + offset).unsqueeze(-1) + self.steps).reshape(-1)


def _sum_min_trees(size: int):
    """torchrl's C++ sum and min segment trees over ``size`` seeded priorities ** alpha."""
    import torch
    from torchrl._torchrl import MinSegmentTreeFp32, SumSegmentTreeFp32

    priority = (torch.rand(size, generator=torch.Generator().manual_seed(2)) + 0.01) ** ALPHA
    sum_tree, min_tree = SumSegmentTreeFp32(size), MinSegmentTreeFp32(size)
    index = torch.arange(size)
    sum_tree[index] = priority
    min_tree[index] = priority
    return sum_tree, min_tree


class UpdatePriorityFloor(_Timed):
    """Floor of ``UpdatePriority``: sample from the sum tree, weights from the min tree,
    ``index_select`` every key, then write the new priorities ** alpha into both trees."""

    param_names = (*RLBenchmark.param_names, "size")
    params = (*RLBenchmark.params, SIZES)

    def setup(self, cache, device, size):
        import torch

        super().setup(device)
        if self.device.type != "cpu":
            raise NotImplementedError("the floor drives torchrl's CPU segment trees")
        data = cache["data"][:size]
        self.store = dict(data.items(include_nested=True, leaves_only=True))
        self.sum_tree, self.min_tree = _sum_min_trees(size)
        g = torch.Generator().manual_seed(1)
        self.priorities = (torch.rand(64, BATCH, generator=g) + 0.01) ** ALPHA
        self.size, self.i = size, 0
        self.calibrate()

    def op(self):
        import torch

        total, least = self.sum_tree.query(0, self.size), self.min_tree.query(0, self.size)
        index = torch.as_tensor(self.sum_tree.scan_lower_bound(torch.rand(BATCH) * total))
        weight = (torch.as_tensor(self.sum_tree[index]) / least) ** -BETA  # noqa: F841
        {k: v.index_select(0, index) for k, v in self.store.items()}
        self.i = (self.i + 1) % len(self.priorities)
        self.sum_tree[index] = self.priorities[self.i]
        self.min_tree[index] = self.priorities[self.i]

    def time_sample_update(self, cache, device, size):
        self.run()


class FootprintFloor(RLBenchmark):
    """Floor of ``Footprint``: preallocate the tensors of ``size`` rows and fill them."""

    param_names = ("size",)
    params = (SIZES,)
    timeout = 120

    def setup(self, size):
        super().setup("cpu")
        self.rows = {k: v for k, v in
                     transitions(EXTEND_ROWS).items(include_nested=True, leaves_only=True)}

    def peakmem_fill(self, size):
        import torch

        store = {k: torch.empty((size, *v.shape[1:]), dtype=v.dtype)
                 for k, v in self.rows.items()}
        for start in range(0, size, EXTEND_ROWS):
            for key, rows in self.rows.items():
                store[key][start:start + EXTEND_ROWS].copy_(rows)


#: benchmark -> its floor in this module; rows pair up on the parameters both share
FLOORS = {
    "Extend.time_extend": "ExtendFloor.time_extend",
    "Sample.time_sample": "SampleFloor.time_sample",
    "UpdatePriority.time_sample_update": "UpdatePriorityFloor.time_sample_update",
    "Footprint.peakmem_fill": "FootprintFloor.peakmem_fill",
}
