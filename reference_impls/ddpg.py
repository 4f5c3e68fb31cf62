"""DDPG: Deep Deterministic Policy Gradient (Lillicrap et al., 2016).

A deterministic actor mu(s) -- an MLP whose output is squashed by tanh and scaled to the action
bounds (torchrl's ``TanhModule``) -- and a critic Q(s, a) over the observation and the action
(``ValueOperator``). The critic regresses on the one-step TD target
``r + gamma * (1 - terminated) * Q'(s', mu'(s'))`` computed with *target* copies of both networks
(``DDPGLoss(delay_actor=True, delay_value=True)`` + ``ValueEstimators.TD0``); the actor ascends
``Q(s, mu(s))``; the targets track the online networks by Polyak averaging (``SoftUpdate``).
Exploration adds noise to the actor's action while collecting: Gaussian
(``AdditiveGaussianModule``, RL Zoo's choice) or Ornstein-Uhlenbeck (the paper's,
``OrnsteinUhlenbeckProcessModule``, which restarts its process at every episode start read from
the ``"is_init"`` key that the ``InitTracker`` transform writes). Transitions go to a uniform
replay buffer (``ReplayBuffer`` + ``LazyTensorStorage``); the first frames are uniformly random
actions (the collector's ``init_random_frames``), then every collected frame is followed by
``updates_per_frame`` gradient steps on minibatches drawn from the buffer.

Simplified relative to the paper: no batch normalisation and no L2 weight decay on the critic,
the action enters the critic at its input (not at the second layer), PyTorch's default
initialisation (as Stable-Baselines3), equal learning rates for actor and critic (RL Zoo).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs import InitTracker
from torchrl.modules import (
    MLP,
    AdditiveGaussianModule,
    OrnsteinUhlenbeckProcessModule,
    TanhModule,
    ValueOperator,
)
from torchrl.objectives import DDPGLoss, SoftUpdate, ValueEstimators

from harness import backends, training
from harness.errors import UsageError

ALGORITHM = "ddpg"

NOISES = ("gaussian", "ou")

#: what the replay buffer keeps of a collected transition: what ``DDPGLoss`` reads
TRANSITION_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"),
                   ("next", "done"), ("next", "terminated"))


@dataclass(frozen=True)
class Config(training.BaseConfig):
    """DDPG hyper-parameters (defaults: RL Zoo's DDPG Pendulum-v1 settings, adapted to torchrl
    as each field says) plus the run fields."""

    frames_per_batch: int = 10
    """Frames collected (over all envs) between two rounds of updates. RL Zoo updates after
    every env step (``train_freq 1``); collecting 10 steps, then doing their 10 updates, keeps
    the same update-to-data ratio and a policy at most 10 steps stale, and spares torchrl's
    per-batch collector overhead (Pendulum on the busy 2-core machine: 430 collected frames/s
    at ``frames_per_batch`` 1, 750 at 10)."""
    updates_per_frame: float = 1.0
    """Gradient steps per collected frame after the warm-up (RL Zoo: ``gradient_steps 1`` per
    ``train_freq 1`` step of one env)."""
    init_random_frames: int = 10_000
    """Warm-up frames of uniformly random actions, with no updates (RL Zoo:
    ``learning_starts 10000``). Capped at half of ``frames`` so that a short run learns too."""
    buffer_size: int = 200_000
    """Replay buffer capacity in transitions (RL Zoo: ``buffer_size 200000``)."""
    batch_size: int = 256
    """Transitions per gradient step (Stable-Baselines3's DDPG default)."""
    gamma: float = 0.98
    """Discount factor (RL Zoo)."""
    actor_lr: float = 1e-3
    """Adam learning rate of the actor (RL Zoo: ``learning_rate 1e-3``, shared)."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic (RL Zoo: ``learning_rate 1e-3``, shared)."""
    tau: float = 0.005
    """Polyak step of the target networks after every update (Stable-Baselines3's default)."""
    hidden: tuple[int, ...] = (400, 300)
    """Hidden layer sizes of the actor and of the critic, ReLU (RL Zoo: ``net_arch [400, 300]``)."""
    noise: str = "gaussian"
    """Exploration noise: ``gaussian`` (RL Zoo: ``noise_type normal``) or ``ou``
    (Ornstein-Uhlenbeck, the paper's)."""
    sigma: float = 0.1
    """Noise scale in units of half the action range, as Stable-Baselines3 adds its noise to the
    action rescaled to [-1, 1] (RL Zoo: ``noise_std 0.1``): the Gaussian's standard deviation,
    the OU process's sigma (its std grows like ``sigma * sqrt(ou_dt * t)`` over an episode's
    first ``t << 1 / (ou_theta * ou_dt)`` steps, towards ``sigma / sqrt(2 * ou_theta)``). The
    mean half range over action dims is used (the tasks here have equal bounds in every dim)."""
    sigma_end: float = 0.1
    """Noise scale after ``annealing_frames`` frames of the noise's linear annealing
    (``.step(frames)`` after every batch); RL Zoo keeps it constant (= ``sigma``)."""
    annealing_frames: int = 10_000
    """Frames over which the noise scale anneals from ``sigma`` to ``sigma_end``."""
    ou_theta: float = 0.15
    """Mean reversion of the OU process (the paper's, SB3's and torchrl's default)."""
    ou_dt: float = 1e-2
    """Time step of the OU process (SB3's and torchrl's default)."""
    eval_episodes: int = 10
    """Episodes of the deterministic policy for ``final_return`` (0 skips evaluation), run as
    one batch of that many sub-envs (a batched step costs far less than one per env)."""
    max_episode_steps: int = 1000
    """Step cap of one evaluation episode."""
    log_interval: int = 1000
    """Frames between two loss records (each the mean over the updates since the last)."""

    CHOICES: ClassVar[dict] = {"noise": NOISES}
    #: settings that differ from the defaults per (backend, task): RL Zoo's where it has them
    #: (the defaults *are* RL Zoo's DDPG Pendulum-v1 settings; RL Zoo has no dm_control ones)
    PRESETS: ClassVar[dict] = {
        ("gymnasium", "pendulum"): dict(frames=20_000),
    }

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.sigma_end <= self.sigma:
            raise UsageError(f"the noise anneals down: need 0 <= sigma_end <= sigma, got "
                             f"sigma={self.sigma}, sigma_end={self.sigma_end}")


#: the Config for a task: defaults, then the task's ``PRESETS``, then the overrides
config_for = Config.for_task


#: published returns (RL Zoo) at RL Zoo budgets, checked by ``nox -s learning``
LEARNING_TARGETS = [
    training.LearningTarget("gymnasium", "pendulum", frames=20_000, threshold=-200.0),
]


# --------------------------------------------------------------------------- building blocks


def make_env(config: Config):
    """The task from ``harness.backends`` (episode returns are tracked outside the env); for OU
    noise, episode starts flagged in ``"is_init"`` (``InitTracker``)."""
    env = backends.make_env(config.backend, config.task, device=config.device,
                            num_envs=config.num_envs, seed=config.seed)
    if config.noise == "ou":
        # append_transform extends a backend's TransformedEnv in place instead of nesting one
        # in another (which torchrl unwraps with a warning)
        env = env.append_transform(InitTracker())
    return env


def make_modules(config: Config, env):
    """Deterministic actor mu(s) (MLP -> tanh -> action bounds) and critic Q(s, a)."""
    dims = training.env_dims(env)
    if dims.action_kind != "continuous":
        raise ValueError(f"DDPG needs continuous actions; {config.backend}/{config.task} has "
                         f"{dims.action_kind} ones")
    device = torch.device(config.device)
    spec = env.full_action_spec_unbatched["action"].to(device)
    net = MLP(in_features=dims.obs_dim, out_features=dims.action_dim,
              num_cells=list(config.hidden), activation_class=nn.ReLU, device=device)
    actor = TensorDictSequential(
        TensorDictModule(net, in_keys=["observation"], out_keys=["param"]),
        TanhModule(in_keys=["param"], out_keys=["action"], spec=spec),
    )
    critic = ValueOperator(  # MLP concatenates its inputs: Q([observation, action])
        MLP(in_features=dims.obs_dim + dims.action_dim, out_features=1,
            num_cells=list(config.hidden), activation_class=nn.ReLU, device=device),
        in_keys=["observation", "action"])
    return actor, critic


def make_exploration(config: Config, env, actor):
    """``actor`` followed by the exploration noise (active only under RANDOM exploration, i.e.
    while collecting; ``evaluate`` runs the bare deterministic action)."""
    dims = training.env_dims(env)
    device = torch.device(config.device)
    spec = env.full_action_spec_unbatched["action"].to(device)
    half_range = float(((dims.high - dims.low) / 2).mean())
    if config.noise == "gaussian":
        noise = AdditiveGaussianModule(spec, sigma_init=float(config.sigma),
                                       sigma_end=float(config.sigma_end),
                                       annealing_num_steps=config.annealing_frames,
                                       std=half_range, device=device)
    else:
        noise = OrnsteinUhlenbeckProcessModule(
            spec, eps_init=1.0, eps_end=config.sigma_end / config.sigma if config.sigma else 1.0,
            annealing_num_steps=config.annealing_frames, theta=config.ou_theta,
            sigma=config.sigma * half_range, dt=config.ou_dt, safe=True, device=device)
    return TensorDictSequential(actor, noise), noise


def make_loss(config: Config, actor, critic):
    """DDPG loss with target actor and critic, and a TD(0) value estimator (torchrl 0.14)."""
    loss = DDPGLoss(actor, critic, delay_actor=True, delay_value=True)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=config.gamma)
    return loss


# --------------------------------------------------------------------------- training


def train(config: Config, progress: training.Progress | None = None) -> training.TrainResult:
    """Train DDPG on ``config``: tidy results records plus the trained actor and critic."""
    run = training.Run(ALGORITHM, config, progress)  # seeds torch; times, logs and reports the run
    env = make_env(config)
    actor, critic = make_modules(config, env)
    policy, noise = make_exploration(config, env, actor)
    loss_module = make_loss(config, actor, critic)
    target_updater = SoftUpdate(loss_module, tau=config.tau)
    actor_optim = training.adam(
        list(loss_module.actor_network_params.flatten_keys().values()), config.actor_lr, config)
    critic_optim = training.adam(
        list(loss_module.value_network_params.flatten_keys().values()), config.critic_lr,
        config)
    # --- one gradient step: loss_actor reads Q through detached critic parameters and
    # loss_value trains the critic only, so one backward pass fills both optimisers' grads
    step = run.compile(functools.partial(training.gradient_step, loss_module,
                                         [critic_optim, actor_optim]), "update")
    buffer = ReplayBuffer(storage=LazyTensorStorage(config.buffer_size, device=run.device),
                          batch_size=config.batch_size)
    per = config.frames_per_batch
    warmup = -(-min(config.init_random_frames, config.frames // 2) // per) * per
    collector = run.collector(env, policy, init_random_frames=warmup)
    means = training.LossMeans("loss_actor", "loss_value")  # since the last loss record

    # --- collect: frames_per_batch frames with exploration noise (random ones in the warm-up)
    for frames, batch, _ in run.collect(collector):
        # --- update: warm-up frames only fill the buffer; losses recorded every log_interval
        with run.sections("update"):
            buffer.extend(batch.select(*TRANSITION_KEYS).reshape(-1))
            if frames > warmup:
                noise.step(batch.numel())
                for _ in range(max(round(batch.numel() * config.updates_per_frame), 1)):
                    means.add(step(buffer.sample()))
                    target_updater.step()
            if means.steps and (frames % config.log_interval < batch.numel()
                                or frames >= run.budget):
                means.record(run.log, frames)

    # --- evaluate: the deterministic actor, without noise
    run.close(collector, env)
    run.evaluate(make_env, actor)
    return run.result({"actor": actor, "critic": critic})
