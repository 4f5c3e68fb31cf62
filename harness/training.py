"""Plumbing shared by the reference implementations, so that none of them repeats it.

- ``BaseConfig``: the fields every algorithm's frozen ``Config`` starts with (backend, task,
  device, num_envs, frames, seed) and their validation against the registries.
- ``TimedPolicy``: wraps a policy so that a ``Collector`` charges its forward passes to the
  ``policy`` section; what the collector spends outside the policy is env stepping.
- ``TrainLog``: collects curves (value at a frame count) and end-of-run scalars, and turns them
  into tidy ``harness.results`` records with the run's context.
- ``episode_returns``: the returns of the episodes that ended in a collected batch
  (needs torchrl's ``RewardSum`` transform on the env).
- ``collect``: the collection half of every training loop -- batches from a ``Collector``,
  their time charged to ``collect``, episode returns (``EpisodeReturns``) and the longest step
  count logged.
- ``evaluate``: deterministic-policy returns over whole episodes.

Algorithms report progress through a ``progress(frames_done, frames_total, info)`` callback and
never print.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pandas as pd
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from harness import results
from harness.devices import synchronize
from harness.timing import Sections

Progress = Callable[[int, int, Mapping[str, float]], None]


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

    def __post_init__(self):
        from harness.devices import canonical

        object.__setattr__(self, "device", canonical(self.device))

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def context(self, algorithm: str) -> dict:
        """The results columns shared by every record of this run."""
        return dict(algorithm=algorithm, backend=self.backend, task=self.task,
                    device=self.device, num_envs=self.num_envs, seed=self.seed)


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


class TimedPolicy(TensorDictModuleBase):
    """``policy`` with its forward time charged to ``sections['policy']`` (device-synchronised)."""

    def __init__(self, policy, sections: Sections):
        super().__init__()
        self.policy = policy
        self.sections = sections
        self.in_keys = list(policy.in_keys)
        self.out_keys = list(policy.out_keys)

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


def timing_records(log: TrainLog, sections: Sections, frames: int, wall: float) -> None:
    """End-of-run wall-time split and throughput, in the units the tables use."""
    env = sections.seconds.get("collect", 0.0) - sections.seconds.get("policy", 0.0)
    log.scalar("env_time_s", max(env, 0.0), "s")
    log.scalar("policy_time_s", sections.seconds.get("policy", 0.0), "s")
    log.scalar("update_time_s", sections.seconds.get("update", 0.0), "s")
    log.scalar("wall_time_s", wall, "s")
    collect = sections.seconds.get("collect", 0.0)
    log.scalar("collect_fps", frames / collect if collect else math.nan, "frames/s")
    log.scalar("train_fps", frames / wall if wall else math.nan, "frames/s")


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


def episode_returns(batch: TensorDictBase) -> torch.Tensor:
    """Returns of the episodes that ended in ``batch`` (env wrapped with ``RewardSum``)."""
    done = batch["next", "done"]
    return batch["next", "episode_reward"][done].float()


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


class Clock:
    """Wall clock of a run, synchronised with the device at start and stop."""

    def __init__(self, device):
        self.device = device
        synchronize(device)
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        synchronize(self.device)
        return time.perf_counter() - self.t0


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


# --------------------------------------------------------------------------- end of a run


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


def final_evaluation(log: TrainLog, make_env, config, policy, *, prepare=None) -> None:
    """``final_return``: mean return of ``config.eval_episodes`` deterministic-policy episodes.

    The episodes run as one batch of up to 16 envs seeded apart from training (a batched step
    costs far less than one env at a time); ``prepare`` adapts the env to the policy (e.g. the
    recurrent-state primers). Nothing is recorded when ``eval_episodes`` is 0.
    """
    if config.eval_episodes <= 0:
        return
    threads = torch.get_num_threads()
    env = make_env(config.replace(seed=config.seed + 10_000,
                                  num_envs=min(config.eval_episodes, 16)))
    if prepare is not None:
        env = prepare(env)
    try:
        value = evaluate(env, policy, config.eval_episodes, config.max_episode_steps)
    finally:
        if not getattr(env, "is_closed", True):
            env.close()
        torch.set_num_threads(threads)
    log.scalar("final_return", value, "return")


def add_primers(env, policy):
    """Append the ``TensorDictPrimer`` of every ``LSTMModule`` in ``policy`` (zeroed recurrent
    states at reset) to ``env``: what torchrl's Collector registers itself with
    ``auto_register_policy_transforms=True``. Returns ``env``."""
    from torchrl.modules import LSTMModule

    for lstm in {id(m): m for m in policy.modules() if isinstance(m, LSTMModule)}.values():
        env.append_transform(lstm.make_tensordict_primer())
    return env
