"""Plumbing shared by the reference implementations, so that none of them repeats it.

- ``BaseConfig``: the fields every algorithm's frozen ``Config`` starts with (backend, task,
  device, num_envs, frames, seed), the checks of its choice fields (``CHOICES``) and
  ``for_task``: the Config of a task from its ``PRESETS`` (each module's ``config_for``).
- ``Run``: the bookkeeping of one ``train`` call -- the seed, the time sections, the collector
  with its policy timed (``TimedPolicy``), the batches with their episode returns logged
  (``collect``), progress reports, the end-of-run time split and the final evaluation -- so that
  ``train`` shows only its algorithm's phases.
- ``TrainLog``: collects curves (value at a frame count) and end-of-run scalars, and turns them
  into tidy ``harness.results`` records with the run's context; ``LossMeans``: losses summed
  over gradient steps, logged as means.
- ``evaluate`` / ``evaluate_stepwise``: deterministic-policy returns over whole episodes.
- ``env_dims``, ``add_observation_norm``/``observation_stats``, ``add_primers``: what the
  modules need to know about an env, and the transforms they share.

Algorithms report progress through a ``progress(frames_done, frames_total, info)`` callback and
never print.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import pandas as pd
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from harness import results
from harness.devices import synchronize
from harness.errors import UsageError
from harness.timing import Sections

Progress = Callable[[int, int, Mapping[str, float]], None]

#: ``BaseConfig.compile``'s values: the compile axis
COMPILE_MODES = ("eager", "compile", "compile+cudagraphs")


def check_compile(mode: str, impl: str = "rlgauge", device: str = "cpu") -> None:
    """UsageError, naming the value and what is valid, when a run of ``impl`` on ``device``
    cannot use compile mode ``mode``: an unknown mode, a peer's run in any mode but eager (its
    library runs as it is), ``compile+cudagraphs`` off CUDA (CUDA graphs)."""
    from harness.devices import is_cuda

    if mode not in COMPILE_MODES:
        raise UsageError(f"unknown compile mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
    if impl != "rlgauge" and mode != "eager":
        raise UsageError(f"impl {impl} runs eager only, not compile mode {mode!r} (the compile "
                         f"modes are rlgauge's); valid for {impl}: eager")
    if mode == "compile+cudagraphs" and not is_cuda(device):
        raise UsageError(f"compile mode 'compile+cudagraphs' needs a CUDA device (CUDA "
                         f"graphs), not {device!r}; valid there: eager, compile")


@dataclass(frozen=True)
class BaseConfig:
    """Fields every algorithm's Config has (each algorithm adds its hyper-parameters)."""

    backend: str = "gymnasium"
    """Env backend (``python -m harness list``): gymnasium, dm_control, envpool, probe."""
    task: str = "cartpole"
    """Logical task name within the backend (e.g. cartpole, pendulum, cartpole-swingup)."""
    device: str = "cpu"
    """Where policy, losses and buffers live: cpu, cuda, cuda:N (stored by its canonical name,
    ``harness.devices.canonical``: cuda becomes cuda:0). Envs run where their backend runs;
    their outputs are moved to this device."""
    num_envs: int = 1
    """Environments stepped as one batch (the backend's vectorisation)."""
    frames: int = 20_000
    """Total env frames (steps summed over the batch) to collect: the training budget."""
    seed: int = 0
    """Seeds torch, the envs and the collector; same seed + config on CPU -> same returns."""
    fused_adam: bool = True
    """Adam's fused kernel (``fused=True``: one kernel over all parameters), not torch's default
    multi-tensor (``foreach``) implementation: the same update up to rounding, ~0.25 ms less per
    CPU gradient step here (``harness.training.adam``)."""
    compile: str = "eager"
    """How the update step and the collection policy run (``COMPILE_MODES``): ``eager``;
    ``compile``: ``torch.compile`` of both, as torchrl's sota-implementations do (the first
    calls compile: ``compile_time_s``, kept out of ``steady_fps``); ``compile+cudagraphs``
    (CUDA devices only): those compiled functions captured in CUDA graphs by tensordict's
    ``CudaGraphModule``."""

    #: settings that differ from the defaults per (backend, task): each algorithm's own
    PRESETS: ClassVar[dict[tuple[str, str], dict]] = {}
    #: field name -> its valid values, checked at construction
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __post_init__(self):
        from harness.devices import canonical

        object.__setattr__(self, "device", canonical(self.device))
        check_compile(self.compile, device=self.device)
        for name, valid in self.CHOICES.items():
            if getattr(self, name) not in valid:
                raise UsageError(f"{name} must be one of {', '.join(valid)}; "
                                 f"got {getattr(self, name)!r}")

    @classmethod
    def for_task(cls, backend: str, task: str, **overrides):
        """The Config for ``backend``/``task``: defaults, then the task's preset, then
        overrides (each algorithm module's ``config_for``)."""
        return cls(backend=backend, task=task,
                   **{**cls.PRESETS.get((backend, task), {}), **overrides})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def context(self, algorithm: str) -> dict:
        """The results columns shared by every record of this run."""
        return dict(algorithm=algorithm, backend=self.backend, task=self.task,
                    device=self.device, num_envs=self.num_envs, seed=self.seed,
                    compile=self.compile)


@dataclass
class TrainResult:
    """What ``train`` returns: the run's tidy records and the trained networks (for tests and
    inspection: e.g. ``modules["critic"]`` of PPO, ``modules["qvalue"]`` of DQN)."""

    records: pd.DataFrame
    modules: dict[str, torch.nn.Module]


def collector_frames(config) -> int:
    """The budget rounded up to whole batches (what torchrl's Collector collects anyway)."""
    per = config.frames_per_batch
    return -(-config.frames // per) * per


@dataclass(frozen=True)
class LearningTarget:
    """A published return an algorithm must reach on a real task within a frame budget
    (``nox -s learning``: median over seeds of the deterministic-policy ``final_return``)."""

    backend: str
    task: str
    frames: int
    threshold: float
    source: str = "RL Zoo"
    overrides: dict = field(default_factory=dict)  # Config fields on top of config_for's preset


# --------------------------------------------------------------------------- one run


class Run:
    """The bookkeeping of one ``train`` call, so that ``train`` reads as its algorithm alone::

        run = Run(ALGORITHM, config, progress)   # seeds torch
        ...env, networks, loss, optimiser, buffer...
        collector = run.collector(env, policy)   # the log and the wall clock start
        for frames, batch, returns in run.collect(collector):
            ...the algorithm's update...          # progress is reported after each
        run.close(collector, env)                 # wall time, env / policy / update split
        run.evaluate(make_env, policy)            # final_return
        return run.result({"actor": actor})

    ``device`` and ``budget`` (the frames the collector collects: ``collector_frames``) are the
    run's; ``sections`` times its ``collect``, ``policy`` and ``update`` sections; ``log`` holds
    its records.
    """

    def __init__(self, algorithm: str, config: BaseConfig, progress: Progress | None = None):
        torch.manual_seed(config.seed)
        self.algorithm, self.config, self.progress = algorithm, config, progress
        self.device = torch.device(config.device)
        self.budget = collector_frames(config)
        self.sections = Sections(self.device)
        self.log = TrainLog()
        self.frames = 0
        self.clock: Clock | None = None
        self.compile_clock = CompileClock(self.device, self.sections)

    def compile(self, fn, name: str):
        """``fn`` (an update step: a function of tensordicts returning one; or a policy module)
        as ``config.compile`` runs it (``compiled``), its compile time charged to the run's
        ``compile_time_s``."""
        return compiled(fn, self.config.compile, self.compile_clock, name=name)

    def collector(self, env, policy, **options):
        """torchrl's ``Collector`` of ``config.frames_per_batch``-frame batches over the budget,
        with ``policy`` run as ``config.compile`` says (``compile``) and its forward passes
        charged to the ``policy`` section (``options``: more ``Collector`` arguments, e.g.
        ``init_random_frames``, ``track_traj_ids=True`` for an algorithm that reads the
        collector's trajectory ids: off by default, they cost ~5% of CartPole's collection).
        Training starts here: the log's ``elapsed_s`` and the wall clock count from now."""
        from torchrl.collectors import Collector

        options = {"track_traj_ids": False, **options}
        # the clock starts before the Collector: building it runs the policy once (a compiled
        # policy compiles there), and that is part of the run
        self.log.t0 = time.perf_counter()
        self.clock = Clock(self.device)
        collector = Collector(env, TimedPolicy(self.compile(policy, "policy"), self.sections,
                                               in_keys=policy.in_keys, out_keys=policy.out_keys),
                              frames_per_batch=self.config.frames_per_batch,
                              total_frames=self.budget, device=self.device,
                              auto_register_policy_transforms=False, trust_policy=True,
                              **options)
        return collector

    def collect(self, collector, **options):
        """``collect`` over ``collector`` (``options``: its ``step_counter``, ``return_scale``):
        yields ``(frames, batch, returns)``, and reports progress once the caller is done with
        each batch."""
        for frames, batch, returns in collect(collector, self.sections, self.log, **options):
            self.frames = frames
            yield frames, batch, returns
            if self.progress is not None:
                self.progress(self.frames, self.budget,
                              {"return": self.log.last("episode_return")})

    def close(self, collector, *envs) -> None:
        """End of training: the wall time, the collector and ``envs`` shut (``close_run``), and
        the wall-time split and throughput recorded (``timing_records``)."""
        wall = self.clock.elapsed()
        close_run(collector, *envs)
        timing_records(self.log, self.sections, self.frames, wall, self.compile_clock.seconds)

    def evaluate(self, make_env, policy, *, prepare=None, stepwise: bool = False) -> None:
        """``final_return``: mean return of ``config.eval_episodes`` deterministic-policy
        episodes.

        The episodes run as one batch of up to 16 envs (``make_env(config)`` seeded apart from
        training; a batched step costs far less than one env at a time); ``prepare`` adapts the
        env to the policy (e.g. the recurrent-state primers); ``stepwise`` steps without keeping
        the trajectory (``evaluate_stepwise``: rendered frames). Nothing is recorded when
        ``eval_episodes`` is 0.
        """
        config = self.config
        if config.eval_episodes <= 0:
            return
        threads = torch.get_num_threads()
        env = make_env(config.replace(seed=config.seed + 10_000,
                                      num_envs=min(config.eval_episodes, 16)))
        if prepare is not None:
            env = prepare(env)
        try:
            value = (evaluate_stepwise if stepwise else evaluate)(
                env, policy, config.eval_episodes, config.max_episode_steps)
        finally:
            if not getattr(env, "is_closed", True):
                env.close()
            torch.set_num_threads(threads)
        self.log.scalar("final_return", value, "return")

    def result(self, modules: dict[str, torch.nn.Module]) -> TrainResult:
        """The run's tidy records and its trained ``modules``."""
        return TrainResult(self.log.frame(self.algorithm, self.config), modules)


# --------------------------------------------------------------------------- its parts


class TimedPolicy(TensorDictModuleBase):
    """``policy`` with its forward time charged to ``sections['policy']`` (device-synchronised);
    ``in_keys``/``out_keys`` default to the policy's (give them for a compiled policy)."""

    def __init__(self, policy, sections: Sections, *, in_keys=None, out_keys=None):
        super().__init__()
        self.policy = policy
        self.sections = sections
        self.in_keys = list(policy.in_keys if in_keys is None else in_keys)
        self.out_keys = list(policy.out_keys if out_keys is None else out_keys)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        with self.sections("policy"):
            return self.policy(tensordict)


class TrainLog:
    """Curves and scalars of one run; ``frame()`` returns them as tidy results records.

    Every point of the ``episode_return`` curve comes with an ``elapsed_s`` point at the same
    frame count: seconds since the log was created (the start of training), so that the
    time to reach a return threshold is read off the run, not extrapolated from its mean rate.
    """

    def __init__(self):
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()

    def curve(self, metric: str, value: float, frames: int, unit: str = "") -> None:
        self.rows.append({"metric": metric, "value": float(value), "frames": int(frames),
                          "unit": unit})
        if metric == "episode_return":
            self.rows.append({"metric": "elapsed_s", "value": time.perf_counter() - self.t0,
                              "frames": int(frames), "unit": "s"})

    def scalar(self, metric: str, value: float, unit: str = "") -> None:
        self.rows.append({"metric": metric, "value": float(value), "unit": unit})

    def last(self, metric: str) -> float:
        values = [r["value"] for r in self.rows if r["metric"] == metric]
        return values[-1] if values else math.nan

    def frame(self, algorithm: str, config: BaseConfig, **extra) -> pd.DataFrame:
        rows = []
        for r in self.rows:
            if math.isfinite(r["value"]):
                rows.append(r)
            else:  # a NaN loss is a diverged run: recorded, never silently dropped
                rows.append({**r, "status": "diverged",
                             "error": f"{r['metric']} is {r['value']}"})
        return results.make_records(rows, **config.context(algorithm), **extra)


class LossMeans:
    """Losses summed over gradient steps, logged as their means: ``add(losses)`` after every
    step (the ``keys`` a step's losses have, detached), ``record(log, frames)`` logs each
    key's mean at ``frames`` and starts over (nothing when no step was added)."""

    def __init__(self, *keys: str):
        self.keys = keys
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, losses: TensorDictBase) -> None:
        for key in self.keys:
            if key in losses.keys():
                self.sums[key] = self.sums.get(key, 0.0) + losses[key].detach()
        self.steps += 1

    def record(self, log: TrainLog, frames: int) -> None:
        if self.steps:
            for key, total in self.sums.items():
                log.curve(key, float(total) / self.steps, frames)
        self.sums, self.steps = {}, 0


class CompileClock:
    """Seconds a run spends compiling: each call of a ``compiled`` function during which
    ``torch.compile`` made a new graph (the first call, and any recompile: dynamo's
    ``unique_graphs`` count grew), and a CUDA-graph module's warm-up and capture calls, are
    charged here whole (the step it also ran is ~1 ms of seconds) and taken out of the
    ``sections`` open at the time, so that the env / policy / update split is steady time.
    The device is synchronised only after a charged call: a steady call adds no sync (work
    queued before a charged call, milliseconds, is counted with its seconds)."""

    def __init__(self, device="cpu", sections: Sections | None = None):
        self.device = device
        self.sections = sections
        self.seconds = 0.0

    @staticmethod
    def graphs() -> int:
        from torch._dynamo.utils import counters

        return counters["stats"]["unique_graphs"]

    def call(self, fn, args, kwargs, *, capture: bool = False):
        """``fn(*args, **kwargs)``, its time charged if it compiled (or ``capture``)."""
        before = self.graphs()
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        if capture or self.graphs() != before:
            synchronize(self.device)
            seconds = time.perf_counter() - t0
            self.seconds += seconds
            if self.sections is not None:
                self.sections.exclude(seconds)
        return out


def compiled(fn, mode: str, clock: CompileClock, *, name: str = "fn", warmup: int = 2):
    """``fn`` -- an update step (a function of tensordicts returning a tensordict) or a policy
    (a ``TensorDictModuleBase``) -- run as ``mode`` (``COMPILE_MODES``) says:

    - ``eager``: ``fn`` itself;
    - ``compile``: ``torch.compile(fn)`` (default mode, as torchrl's sota-implementations
      compile their update and policy), every call that compiles charged to ``clock``;
    - ``compile+cudagraphs``: that compiled function captured in a CUDA graph by tensordict's
      ``CudaGraphModule`` (the sota-implementations' ``cudagraphs`` switch), which runs its first
      ``warmup`` calls as they are and captures at the next: those calls are charged too.

    A compiled update step must keep its inputs' structure from call to call (a CUDA graph
    replays on the same buffers) and return detached tensors.
    """
    if mode == "eager":
        return fn
    import torch

    graph = None
    fn_compiled = torch.compile(fn)
    if mode == "compile+cudagraphs":
        from tensordict.nn import CudaGraphModule

        if isinstance(fn, TensorDictModuleBase):
            graph = CudaGraphModule(fn_compiled, warmup=warmup, in_keys=list(fn.in_keys),
                                    out_keys=list(fn.out_keys))
        else:
            graph = CudaGraphModule(fn_compiled, warmup=warmup, in_keys=[], out_keys=[])
    target = graph if graph is not None else fn_compiled
    calls = 0

    def run(*args, **kwargs):
        nonlocal calls
        calls += 1
        return clock.call(target, args, kwargs, capture=graph is not None and calls <= warmup + 1)

    run.__name__ = f"{mode}({name})"
    return run


def timing_records(log: TrainLog, sections: Sections, frames: int, wall: float,
                   compile_seconds: float = 0.0) -> None:
    """End-of-run wall-time split and throughput, in the units the tables use: the env /
    policy / update seconds and ``steady_fps`` leave the compile time out (LeanRL's practice:
    speed after the warm-up), ``wall_time_s`` and ``train_fps`` do not; ``compile_time_s`` is
    that time."""
    env = sections.seconds.get("collect", 0.0) - sections.seconds.get("policy", 0.0)
    log.scalar("env_time_s", max(env, 0.0), "s")
    log.scalar("policy_time_s", sections.seconds.get("policy", 0.0), "s")
    log.scalar("update_time_s", sections.seconds.get("update", 0.0), "s")
    log.scalar("wall_time_s", wall, "s")
    collect = sections.seconds.get("collect", 0.0)
    log.scalar("collect_fps", frames / collect if collect else math.nan, "frames/s")
    log.scalar("train_fps", frames / wall if wall else math.nan, "frames/s")
    log.scalar("compile_time_s", compile_seconds, "s")
    steady = wall - compile_seconds
    log.scalar("steady_fps", frames / steady if steady > 0 else math.nan, "frames/s")


class EpisodeReturns:
    """Returns of the episodes that end in each collected ``[num_envs, T]`` batch.

    Vectorised over the batch and carried across batches (an episode may span several), so the
    env needs no per-step ``RewardSum`` transform: that transform costs ~10% of CartPole's
    collection rate, this costs one scatter per batch.
    """

    def __init__(self):
        self.running: torch.Tensor | None = None

    def __call__(self, batch: TensorDictBase) -> torch.Tensor:
        reward = batch["next", "reward"].reshape(*batch.shape, -1).sum(-1)
        done = batch["next", "done"].reshape(*batch.shape, -1).any(-1)
        if batch.ndim == 1:  # unbatched env: [T]
            reward, done = reward.unsqueeze(0), done.unsqueeze(0)
        reward = reward.reshape(-1, reward.shape[-1]).double()
        done = done.reshape(-1, done.shape[-1])
        n, t = reward.shape
        if self.running is None or self.running.shape[0] != n:
            self.running = torch.zeros(n, dtype=torch.float64, device=reward.device)
        # segment k of a row = the steps after its k-th done, up to and including the next one
        segment = torch.cumsum(done, 1) - done.long()
        sums = torch.zeros(n, t + 1, dtype=torch.float64, device=reward.device)
        sums.scatter_add_(1, segment, reward)
        sums[:, 0] += self.running
        ended = sums.gather(1, segment)[done]
        last = segment[:, -1] + done[:, -1].long()  # the segment still open after the batch
        self.running = sums.gather(1, last.unsqueeze(1)).squeeze(1)
        return ended.float()


def collect(collector, sections, log: TrainLog, *, step_counter: bool = False,
            return_scale: float = 1.0):
    """The collection half of every reference training loop: yields ``(frames, batch,
    returns)`` for each batch ``collector`` collects, with the time to get it charged to
    ``sections["collect"]``, ``frames`` the running total, and ``returns`` the returns of the
    episodes that ended in it (divided by ``return_scale``, undoing a ``RewardScaling``), whose
    mean is logged as ``episode_return``; with ``step_counter``, the batch's longest step
    count is logged as ``step_count_max``."""
    track_returns = EpisodeReturns()
    frames = 0
    batches = iter(collector)
    while True:
        with sections("collect"):
            batch = next(batches, None)
        if batch is None:
            return
        frames += batch.numel()
        returns = track_returns(batch)
        if return_scale != 1.0:
            returns = returns / return_scale
        if returns.numel():
            log.curve("episode_return", returns.mean().item(), frames, "return")
        if step_counter:
            log.curve("step_count_max", batch["next", "step_count"].max().item(), frames,
                      "steps")
        yield frames, batch, returns


def evaluate(env, policy, episodes: int, max_steps: int) -> float:
    """Mean return of ``episodes`` whole episodes with the policy's deterministic actions."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    returns: list[float] = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        while len(returns) < episodes:
            rollout = env.rollout(max_steps, policy, break_when_any_done=False)
            done = rollout["next", "done"].squeeze(-1)
            reward = rollout["next", "reward"].squeeze(-1)
            # rollout is [*batch, T]: sum each env's rewards up to its first done
            first = torch.where(done.any(-1), done.float().argmax(-1), done.shape[-1] - 1)
            mask = torch.arange(done.shape[-1], device=done.device) <= first.unsqueeze(-1)
            returns.extend((reward * mask).sum(-1).reshape(-1).tolist())
    return float(sum(returns[:episodes]) / episodes)


def evaluate_stepwise(env, policy, episodes: int, max_steps: int) -> float:
    """``evaluate``'s mean return, stepping without keeping the trajectory and stopping when
    every episode of the batch has ended (each cut at ``max_steps``). ``evaluate`` keeps the
    whole rollout: with rendered frames glibc's heap then fragments around the ~4 MB of
    per-step temporaries (the RGB frame and its float copy), and RSS grew by 1.75 MB per step
    -- a 5-env x 500-step evaluation took 3.8 GB."""
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    returns: list[float] = []
    n = env.batch_size.numel()
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        while len(returns) < episodes:
            td = env.reset()
            total = torch.zeros(n, dtype=torch.float64, device=env.device)
            steps = torch.zeros(n, dtype=torch.long, device=env.device)
            ended = torch.zeros(n, dtype=torch.bool, device=env.device)
            while not ended.all():
                step, td = env.step_and_maybe_reset(policy(td))
                live = ~ended
                total += step["next", "reward"].reshape(n).double() * live
                steps += live.long()
                ended |= step["next", "done"].reshape(n) | (steps >= max_steps)
            returns.extend(total.tolist())
    return sum(returns[:episodes]) / episodes


class Clock:
    """Wall clock of a run, synchronised with the device at start and stop."""

    def __init__(self, device):
        self.device = device
        synchronize(device)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.t0


def close_run(collector, *envs) -> None:
    """Shut the collector (it closes its env) and any other env, keeping torch's thread count:
    closing a torchrl ``SerialEnv`` resets it to the count at torchrl's import (then every
    later update in the process runs on more threads than asked, 5-7x slower when contended)."""
    threads = torch.get_num_threads()
    collector.shutdown()
    for env in envs:
        if not getattr(env, "is_closed", True):
            env.close()
    torch.set_num_threads(threads)


def gradient_step(loss_module, optimizers, batch: TensorDictBase,
                  max_grad_norm: float | None = None) -> TensorDictBase:
    """One gradient step of every reference algorithm: ``loss_module(batch)``, the sum of its
    ``loss*`` entries backpropagated, the gradient norm over ``loss_module``'s parameters
    clipped to ``max_grad_norm`` (None: not clipped), then each of ``optimizers`` (one or a
    sequence) steps and drops its gradients; returns the losses, detached.

    Schedules and target-network updates stay with the caller, outside: this is the function
    the compile axis compiles (``Run.compile``), and it must not change from call to call."""
    import torch

    losses = loss_module(batch)
    loss = sum(losses[key] for key in losses.keys() if key.startswith("loss"))
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(loss_module.parameters(), max_grad_norm)
    for optimizer in optimizers if isinstance(optimizers, (list, tuple)) else (optimizers,):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses.detach()


def adam(params, lr: float, config: BaseConfig, **options):
    """``torch.optim.Adam`` over ``params`` for a run of ``config``: the fused kernel unless
    ``config.fused_adam`` is False (torch's multi-tensor default), capturable under CUDA graphs,
    and the learning rate a tensor where the implementation takes one (fused or capturable), so
    that a schedule changes it in place and a compiled step never recompiles for a new value."""
    capturable = config.compile == "compile+cudagraphs"
    fused = config.fused_adam
    if fused or capturable:
        lr = torch.tensor(lr, device=torch.device(config.device))
    return torch.optim.Adam(params, lr=lr, fused=fused or None, capturable=capturable,
                            **options)


# --------------------------------------------------------------------------- env facts


@dataclass(frozen=True)
class EnvDims:
    """What networks need to know about an env built by ``harness.backends.make_env``."""

    obs_dim: int
    action_kind: str  # "discrete" | "continuous"
    action_dim: int  # number of actions (discrete) or action components (continuous)
    low: torch.Tensor | None  # continuous bounds, unbatched [action_dim]
    high: torch.Tensor | None


def env_dims(env) -> EnvDims:
    from torchrl.data import Categorical, OneHot

    obs_dim = int(env.observation_spec_unbatched["observation"].shape[-1])
    spec = env.action_spec_unbatched
    if isinstance(spec, (Categorical, OneHot)):
        return EnvDims(obs_dim, "discrete", int(spec.space.n), None, None)
    return EnvDims(obs_dim, "continuous", int(spec.shape[-1]), spec.space.low.clone(),
                   spec.space.high.clone())


def add_observation_norm(env, key: str, steps: int, stats=None, *, reduce_dim=(0, 1)):
    """``env`` with torchrl's ``ObservationNorm`` (standard normal) of ``key`` appended: its
    ``(loc, scale)`` are ``stats`` (an evaluation env normalising as a training env did), else
    computed from ``steps`` random-action frames of the env (``init_stats``, its rollouts
    ``[num_envs, T, *entry]`` reduced over ``reduce_dim``: over envs and time by default)."""
    from torchrl.envs import ObservationNorm

    loc, scale = stats if stats is not None else (None, None)
    norm = ObservationNorm(loc=loc, scale=scale, in_keys=[key], standard_normal=True)
    env = env.append_transform(norm)
    if stats is None:
        norm.init_stats(steps, reduce_dim=reduce_dim, cat_dim=1)
    return env


def observation_stats(env) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of the env's ``ObservationNorm``, or None without one."""
    from torchrl.envs import ObservationNorm

    transform = getattr(env, "transform", None)
    norms = [m for m in (transform.modules() if transform is not None else ())
             if isinstance(m, ObservationNorm)]
    return (norms[0].loc.clone(), norms[0].scale.clone()) if norms else None


def add_primers(env, policy):
    """Append the ``TensorDictPrimer`` of every ``LSTMModule`` in ``policy`` (zeroed recurrent
    states at reset) to ``env``: what torchrl's Collector registers itself with
    ``auto_register_policy_transforms=True``. Returns ``env``."""
    from torchrl.modules import LSTMModule

    for lstm in {id(m): m for m in policy.modules() if isinstance(m, LSTMModule)}.values():
        env.append_transform(lstm.make_tensordict_primer())
    return env
