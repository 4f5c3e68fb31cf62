"""Recurrent DQN: Double DQN with an LSTM Q-network trained on sequences.

The Q-network reads the history, not only the observation: an MLP embeds the observation, an
LSTM (torchrl's ``LSTMModule``) carries a recurrent state from step to step, and an MLP head gives
Q(h_t, a) for every action; ``QValueModule`` picks the greedy action and ``EGreedyModule``
explores with an epsilon annealed linearly. It follows torchrl's recurrent DQN tutorial
("Recurrent DQN: Training recurrent policies"), rewritten for the 0.14 API and vector
observations:

- the env gets an ``InitTracker`` (an ``"is_init"`` flag at every episode start) and the LSTM's
  ``make_tensordict_primer()`` (zeroed recurrent states at every reset), so the collector stores
  the recurrent state the policy had at every step;
- a sequence replay buffer: each collected ``[num_envs, T]`` batch is stored one env's steps
  after the other, and ``SliceSampler`` draws slices of up to ``slice_len`` consecutive steps
  that never cross an episode (trajectories are told apart by the collector's
  ``("collector", "traj_ids")``; an episode that spans two batches is two pieces). Slices may
  hang over an episode's start or end (``span=True``), so that its first and last steps are drawn
  about as often as the others; ``to_sequences`` pads the shorter ones to ``slice_len`` and
  marks the real steps in ``("collector", "mask")``, which ``DQNLoss`` averages over. The sample
  becomes ``[num_slices, slice_len]``;
- the loss runs the Q-network over each slice at once (``set_recurrent_mode(True)``), starting
  from the recurrent state stored at the slice's first step (R2D2's "stored state", Kapturowski
  et al., 2019), with ``DQNLoss(double_dqn=True, delay_value=True)`` and a TD(0) target
  ``r + gamma * (1 - terminated) * Q'(h_{t+1}, argmax_a Q(h_{t+1}, a))``. The target network is
  synchronised every ``target_update_interval`` gradient steps (``HardUpdate``).

The next-step Q-values of the double-DQN target are computed by the loss on the slice shifted by
one step (torchrl's ``step_mdp``), which starts from the stored *next* recurrent state. The
collection-time LSTM writes its new state to ``("next", "recurrent_state_*")``; in recurrent mode
the same writes hold placeholders (zeros except at the last step), which would replace the stored
next states before the loss reads them. The loss therefore uses a second ``LSTMModule`` over the
*same* ``nn.LSTM`` whose state outputs go to scratch keys (``make_modules``).

Simplified relative to R2D2: the burn-in steps are only left out of the loss (gradients still
flow through them), no n-step returns, no prioritised sequences, one environment process.
``recurrent=False`` replaces the LSTM with a feed-forward layer: the same algorithm without
memory, the baseline that a memory task must defeat.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import SliceSampler
from torchrl.envs import InitTracker, TransformedEnv
from torchrl.modules import MLP, EGreedyModule, LSTMModule, QValueModule, set_recurrent_mode
from torchrl.objectives import DQNLoss, HardUpdate, ValueEstimators

from harness import backends
from harness.timing import Sections
from harness.training import (
    BaseConfig,
    Clock,
    EpisodeReturns,
    LearningTarget,
    Progress,
    TimedPolicy,
    TrainLog,
    TrainResult,
    add_primers,
    close_run,
    collector_frames,
    env_dims,
    final_evaluation,
    timing_records,
)

ALGORITHM = "recurrent_dqn"

TRAJ_KEY = ("collector", "traj_ids")
#: recurrent-state keys of the LSTM (torchrl's defaults)
STATE_KEYS = ("recurrent_state_h", "recurrent_state_c")
#: what the replay buffer keeps of a collected step
TRANSITION_KEYS = ("observation", "action", "is_init", *STATE_KEYS, TRAJ_KEY,
                   *[("next", k) for k in ("observation", "reward", "done", "terminated",
                                           "truncated", "is_init", *STATE_KEYS)])


@dataclass(frozen=True)
class Config(BaseConfig):
    """Recurrent DQN hyper-parameters plus the run fields. Defaults: RL Zoo's DQN CartPole-v1
    (``hyperparams/dqn.yml``: buffer 1e5, 1000 learning starts, gamma 0.99, epsilon 1 -> 0.04
    over 16% of the budget, target network synchronised once per 128-gradient-step round) with
    the changes made for an LSTM on CPU: a quarter of the gradient steps (32 per 256 frames, not
    128), 16 sequences of 16 steps per step (RL Zoo: 64 transitions), lr 1e-3 (RL Zoo: 2.3e-3),
    R2D2's burn-in of 4 steps."""

    num_envs: int = 8
    """Environments stepped as one batch."""
    frames_per_batch: int = 256
    """Frames collected between updates (over all envs); each env contributes
    ``frames_per_batch / num_envs`` consecutive steps, the longest slice the buffer can hold."""
    updates_per_batch: int = 32
    """Gradient steps after each collected batch."""
    learning_starts: int = 1024
    """Frames collected before the first gradient step."""
    buffer_size: int = 100_000
    """Replay capacity, in frames."""
    slice_len: int = 16
    """Steps per sampled sequence (the LSTM is unrolled over them)."""
    num_slices: int = 16
    """Sequences per gradient step (up to ``num_slices * slice_len`` transitions)."""
    burn_in: int = 4
    """Steps at the start of a slice that only refresh the stored recurrent state (R2D2's
    burn-in): left out of the loss unless the slice starts an episode (exact zero state)."""
    lr: float = 1e-3
    """Adam learning rate."""
    gamma: float = 0.99
    """Discount factor."""
    eps_init: float = 1.0
    """Epsilon of the epsilon-greedy exploration at the start."""
    eps_end: float = 0.04
    """Epsilon after annealing."""
    exploration_fraction: float = 0.16
    """Fraction of the budget over which epsilon is annealed linearly."""
    target_update_interval: int = 128
    """Gradient steps between copies of the online network into the target network."""
    loss_function: str = "smooth_l1"
    """TD-error loss: smooth_l1 (Huber, as Stable-Baselines3) or l2."""
    max_grad_norm: float = 10.0
    """Gradient-norm clip per step (Stable-Baselines3's DQN default)."""
    embed: int = 64
    """Width of the observation embedding (one ReLU layer) that feeds the LSTM."""
    lstm_hidden: int = 64
    """LSTM hidden size (torchrl's recurrent DQN tutorial: 128; 64 halves the update time)."""
    hidden: tuple[int, ...] = (64,)
    """Hidden layer sizes of the Q head on top of the LSTM (the tutorial: one layer of 64)."""
    recurrent: bool = True
    """False replaces the LSTM with a ReLU layer of the same width: DQN without memory."""
    eval_episodes: int = 10
    """Episodes of the greedy policy for ``final_return`` (0 skips evaluation)."""
    max_episode_steps: int = 1000
    """Step cap of one evaluation episode."""


#: settings that differ from the defaults per (backend, task); CartPole-v1 episodes end at 500
#: steps, so its evaluation rollouts need no more
PRESETS: dict[tuple[str, str], dict] = {
    # the target's budget (RL Zoo's DQN CartPole-v1 needs 5e4 steps with velocities)
    ("gymnasium", "cartpole-novel"): dict(frames=200_000, max_episode_steps=500),
}


#: no published DQN-LSTM figure on CartPole without velocities: an aim, checked by
#: ``nox -s learning`` like the published ones
LEARNING_TARGETS = [
    LearningTarget("gymnasium", "cartpole-novel", frames=200_000, threshold=475.0,
                   source="aim (no published DQN-LSTM figure)"),
]


def config_for(backend: str, task: str, **overrides) -> Config:
    """The Config for ``backend``/``task``: defaults, then the task's preset, then overrides."""
    return Config(backend=backend, task=task,
                  **{**PRESETS.get((backend, task), {}), **overrides})


# --------------------------------------------------------------------------- building blocks


def make_env(config: Config):
    """The task from ``harness.backends`` with episode starts (``InitTracker``) tracked;
    ``add_primers`` adds the recurrent states of a policy's LSTM."""
    env = backends.make_env(config.backend, config.task, device=config.device,
                            num_envs=config.num_envs, seed=config.seed)
    return TransformedEnv(env, InitTracker())


def make_modules(config: Config, env):
    """The Q-network, two ways: ``(qnet, loss_qnet)``.

    ``qnet`` steps one frame at a time (collection, evaluation): embed -> LSTM -> head ->
    ``QValueModule``. ``loss_qnet`` is the same network (shared parameters) for the loss,
    whose LSTM writes its output states to scratch keys so that the stored
    ``("next", "recurrent_state_*")`` survive for the next-step Q-values (module docstring).
    """
    dims = env_dims(env)
    if dims.action_kind != "discrete":
        raise ValueError(f"{ALGORITHM} needs discrete actions; {config.task} has "
                         f"{dims.action_kind} actions")
    device = torch.device(config.device)
    embed = TensorDictModule(
        nn.Sequential(nn.Linear(dims.obs_dim, config.embed, device=device), nn.ReLU()),
        in_keys=["observation"], out_keys=["embed"])
    if config.recurrent:
        lstm = LSTMModule(input_size=config.embed, hidden_size=config.lstm_hidden,
                          device=device, in_key="embed", out_key="features")
        loss_lstm = LSTMModule(lstm=lstm.lstm, in_keys=["embed", *STATE_KEYS],
                               out_keys=["features", "_lstm_h", "_lstm_c"])
    else:
        lstm = loss_lstm = TensorDictModule(
            nn.Sequential(nn.Linear(config.embed, config.lstm_hidden, device=device), nn.ReLU()),
            in_keys=["embed"], out_keys=["features"])
    head = TensorDictModule(
        MLP(in_features=config.lstm_hidden, out_features=dims.action_dim,
            num_cells=list(config.hidden), activation_class=nn.ReLU, device=device),
        in_keys=["features"], out_keys=["action_value"])
    qvalue = QValueModule(spec=env.action_spec_unbatched.to(device))
    qnet = TensorDictSequential(embed, lstm, head, qvalue)
    loss_qnet = TensorDictSequential(embed, loss_lstm, head, qvalue)
    return qnet, loss_qnet


def make_loss(config: Config, loss_qnet, env):
    """Double DQN loss with a target network and a TD(0) target (``make_value_estimator``)."""
    loss = DQNLoss(loss_qnet, action_space=env.action_spec_unbatched, double_dqn=True,
                   delay_value=True, loss_function=config.loss_function)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=config.gamma)
    return loss


def make_buffer(config: Config):
    """Sequence replay: padded, masked slices of ``slice_len`` steps within one trajectory."""
    return TensorDictReplayBuffer(
        storage=LazyTensorStorage(config.buffer_size, device=torch.device(config.device)),
        sampler=SliceSampler(slice_len=config.slice_len, traj_key=TRAJ_KEY,
                             end_key=("next", "done"), strict_length=False, span=True,
                             init_key=None, cache_values=True),
        batch_size=config.num_slices * config.slice_len)


def to_sequences(sample, slice_len: int):
    """The sampler's slices, one after the other, as ``[num_slices, slice_len]``: each slice
    left-aligned and padded by repeating its last step; ``("collector", "mask")`` marks the real
    steps (``DQNLoss`` averages over them only).

    The sampler marks the last step of every slice with ``("next", "truncated")``. Its own
    ``pad_output`` is not used: it pads only when some trajectory is shorter than ``slice_len``
    and returns the ragged slices of ``span=True`` unpadded otherwise (torchrl 0.14.1).
    """
    ends = sample["next", "truncated"].reshape(-1).nonzero().squeeze(-1)
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    index = starts.unsqueeze(-1) + torch.arange(slice_len, device=ends.device)
    mask = index <= ends.unsqueeze(-1)
    sequences = sample[torch.minimum(index, ends.unsqueeze(-1))]
    sequences.set(("collector", "mask"), mask)
    # a slice lies within one episode: only its first step may start one. Copies of a first
    # step in the padding would make the LSTM split the row there (its slow path)
    sequences.set("is_init", sequences["is_init"] & mask.unsqueeze(-1))
    return sequences


# --------------------------------------------------------------------------- training


def train(config: Config, progress: Progress | None = None) -> TrainResult:
    """Train recurrent DQN on ``config``: tidy results records plus the trained Q-network."""
    torch.manual_seed(config.seed)
    device = torch.device(config.device)
    env = make_env(config)
    qnet, loss_qnet = make_modules(config, env)
    add_primers(env, qnet)
    loss_module = make_loss(config, loss_qnet, env)
    target_updater = HardUpdate(loss_module,
                                value_network_update_interval=config.target_update_interval)
    optimizer = torch.optim.Adam(loss_module.parameters(), lr=config.lr)
    buffer = make_buffer(config)
    budget = collector_frames(config)
    exploration = EGreedyModule(env.action_spec_unbatched.to(device), eps_init=config.eps_init,
                           eps_end=config.eps_end,
                           annealing_num_steps=max(int(config.exploration_fraction * budget), 1))
    policy = TensorDictSequential(qnet, exploration)

    sections = Sections(device)
    collector = Collector(env, TimedPolicy(policy, sections),
                          frames_per_batch=config.frames_per_batch, total_frames=budget,
                          device=device, auto_register_policy_transforms=False)
    log = TrainLog()
    track_returns = EpisodeReturns()
    clock = Clock(device)
    frames = 0
    batches = iter(collector)
    while True:
        # --- collect
        with sections("collect"):
            batch = next(batches, None)
        if batch is None:
            break
        frames += batch.numel()
        exploration.step(batch.numel())
        returns = track_returns(batch)
        if returns.numel():
            log.curve("episode_return", returns.mean().item(), frames, "return")

        # --- update: slices of stored sequences, the LSTM unrolled over each
        with sections("update"):
            # [num_envs, T] -> one env's steps after the other: each episode piece contiguous
            buffer.extend(batch.select(*TRANSITION_KEYS, strict=False).reshape(-1))
            n_updates = config.updates_per_batch if frames >= config.learning_starts else 0
            total = 0.0
            for _ in range(n_updates):
                sample = to_sequences(buffer.sample(), config.slice_len)
                if config.burn_in:  # a slice that starts mid-episode starts from a stale state
                    mask = sample["collector", "mask"].clone()
                    mask[:, :config.burn_in] &= sample["is_init"][:, :1, 0]
                    sample.set(("collector", "mask"), mask)
                with set_recurrent_mode(True):
                    loss = loss_module(sample)["loss"]
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(loss_module.parameters(), config.max_grad_norm)
                optimizer.step()
                target_updater.step()
                total += loss.detach()
            if n_updates:
                log.curve("loss", float(total) / n_updates, frames)
        if progress is not None:
            progress(frames, budget, {"return": log.last("episode_return")})

    wall = clock.elapsed()
    close_run(collector, env)
    timing_records(log, sections, frames, wall)
    final_evaluation(log, make_env, config, qnet,
                     prepare=lambda e: add_primers(e, qnet))
    return TrainResult(log.frame(ALGORITHM, config), {"qvalue": qnet})


def main(argv=None) -> int:
    from harness.cli import main as cli_main

    return cli_main(["train", ALGORITHM, *(argv or [])])
