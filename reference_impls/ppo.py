"""PPO: Proximal Policy Optimization with a clipped objective (Schulman et al., 2017).

Discrete actions use a Categorical policy, continuous ones a TanhNormal policy whose mean and
scale come from the network (``NormalParamExtractor``). Advantages are GAE (Schulman et al.,
2016), computed once per collected batch as the paper's algorithm, SB3 and CleanRL do
(``advantage_every_epoch``: before every epoch with the current critic, as torchrl's PPO
tutorial does); the critic regresses on the GAE value target. Everything is torchrl:
``Collector`` -> ``GAE`` -> ``ClipPPOLoss`` over minibatches drawn without replacement from a
``ReplayBuffer`` that holds only what the loss reads.

Speed (issue 17; ``python -m harness.costs ppo`` measures each step against SB3's PPO): the
defaults remove what is not torchrl's cost -- GAE and the buffer's copy once per batch, not per
epoch; ``ClipPPOLoss(functional=False)`` (``functional_loss``); Adam's fused kernel
(``fused_adam``) -- and ``compile`` runs the update step and the policy under
``torch.compile``. ``advantage_every_epoch=True, functional_loss=True, fused_adam=False`` is the
tutorial's loop (the ``tutorial-ppo`` recipe sets them). ``Config.advantage = "rlgauge"`` swaps
torchrl's ``GAE`` for ``harness.gae_estimator.KernelGAE`` (same module, rlgauge's fused GAE
kernel for the recursion; same advantages).

Simplified relative to the paper: one optimiser for actor and critic (shared step), no
value-function clipping, no reward normalisation; observations are normalised only on request
(``obs_norm_steps``: torchrl's ``ObservationNorm`` with statistics from random-action rollouts,
as torchrl's PPO tutorial does; the RL Zoo tasks here do not need it).

Options for torchrl's PPO tutorial (``harness.recipes``: ``tutorial-ppo``), all off by default:
a cosine learning-rate schedule (``lr_schedule``) without clip-range annealing
(``anneal_clip``), a smooth-L1 critic loss (``critic_loss``), ``ObservationNorm`` and a
``StepCounter`` transform whose per-batch maximum is logged (``step_counter``).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
from torchrl.envs import StepCounter
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from harness import backends, training
from harness.gae_estimator import use_kernel_gae

ALGORITHM = "ppo"
ADVANTAGES = ("torchrl", "rlgauge")
LR_SCHEDULES = ("linear", "cosine", "constant")
CRITIC_LOSSES = ("l2", "smooth_l1", "l1")


@dataclass(frozen=True)
class Config(training.BaseConfig):
    """PPO hyper-parameters (defaults: RL Zoo's CartPole-v1 settings) plus the run fields."""

    num_envs: int = 8
    """Environments stepped as one batch."""
    frames_per_batch: int = 256
    """Frames collected between updates (over all envs): n_steps x num_envs."""
    num_epochs: int = 20
    """Passes over each collected batch."""
    minibatch_size: int = 256
    """Frames per gradient step."""
    lr: float = 1e-3
    """Adam learning rate (annealed linearly to 0 when ``anneal_lr``)."""
    anneal_lr: bool = True
    """Anneal the learning rate (shape: ``lr_schedule``) and, with ``anneal_clip``, the clip
    range (linearly) to 0 over the budget; False keeps both constant."""
    lr_schedule: str = "linear"
    """Shape of the learning-rate annealing: ``linear`` to 0, per gradient step (RL Zoo's
    ``lin_``), ``cosine`` to 0, stepped once per collected batch (torchrl's PPO tutorial:
    ``CosineAnnealingLR(T_max=batches)``), or ``constant``."""
    anneal_clip: bool = True
    """With ``anneal_lr``: anneal the clip range linearly to 0 too (RL Zoo's ``lin_0.2``)."""
    advantage_every_epoch: bool = False
    """Recompute GAE with the current critic before every epoch (torchrl's PPO tutorial), not
    once per collected batch (the PPO paper's algorithm, SB3, CleanRL). Once per batch also
    stores the batch in the minibatch buffer once, not every epoch."""
    functional_loss: bool = False
    """Build ``ClipPPOLoss`` with ``functional=True`` (torchrl's default: it holds the networks'
    parameters as functional copies and calls the modules with them), not ``False`` (it calls
    the modules as they are; the same parameters and gradients, ~0.2 ms less per step)."""
    gamma: float = 0.98
    """Discount factor."""
    lmbda: float = 0.8
    """GAE lambda."""
    advantage: str = "torchrl"
    """GAE implementation: ``torchrl`` (its ``GAE`` module) or ``rlgauge`` (``KernelGAE``: the
    same module with rlgauge's fused kernel, ``harness.estimators.gae``)."""
    clip_epsilon: float = 0.2
    """Clip range of the probability ratio."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus."""
    critic_coeff: float = 0.5
    """Weight of the critic loss."""
    critic_loss: str = "l2"
    """Critic regression loss: l2, smooth_l1 (torchrl's PPO tutorial) or l1."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip per step."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the actor and the critic (separate networks)."""
    activation: str = "tanh"
    """Hidden activation: tanh or relu."""
    eval_episodes: int = 10
    """Episodes of the deterministic policy for ``final_return`` (0 skips evaluation)."""
    max_episode_steps: int = 1000
    """Step cap of one evaluation episode."""
    obs_norm_steps: int = 0
    """Normalise observations with torchrl's ``ObservationNorm`` (standard normal), its mean
    and std computed from this many random-action frames of the env before training
    (``init_stats``; not counted in the budget); evaluation reuses them. 0: no normalisation."""
    step_counter: bool = False
    """Append torchrl's ``StepCounter``: ``step_count`` in every tensordict, and the curve
    ``step_count_max`` (longest episode in each batch, the ongoing ones included)."""

    CHOICES: ClassVar[dict] = {"advantage": ADVANTAGES, "lr_schedule": LR_SCHEDULES,
                               "critic_loss": CRITIC_LOSSES}
    #: settings that differ from the defaults per (backend, task): RL Zoo's where it has them
    PRESETS: ClassVar[dict] = {
        # RL Zoo ppo.yml CartPole-v1: n_envs 8, n_steps 32, batch 256, 20 epochs, gamma 0.98,
        # gae_lambda 0.8, lr lin_1e-3, clip lin_0.2, ent 0 (= the Config defaults)
        ("gymnasium", "cartpole"): dict(frames=100_000),
        # RL Zoo ppo.yml Pendulum-v1: n_envs 4, n_steps 1024, batch 64, 10 epochs, gamma 0.9,
        # gae_lambda 0.95, lr 1e-3, clip 0.2, ent 0 (RL Zoo also uses gSDE and VecNormalize;
        # not here)
        ("gymnasium", "pendulum"): dict(frames=200_000, num_envs=4, frames_per_batch=4096,
                                        minibatch_size=64, num_epochs=10, gamma=0.9, lmbda=0.95,
                                        lr=1e-3, anneal_lr=False),
    }


#: the Config for a task: defaults, then the task's ``PRESETS``, then the overrides
config_for = Config.for_task


#: published returns (RL Zoo) at RL Zoo budgets, checked by ``nox -s learning``
LEARNING_TARGETS = [
    training.LearningTarget("gymnasium", "cartpole", frames=100_000, threshold=475.0),
    training.LearningTarget("gymnasium", "pendulum", frames=200_000, threshold=-200.0),
]


# --------------------------------------------------------------------------- building blocks


def make_env(config: Config, obs_stats: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The task from ``harness.backends`` (episode returns are tracked outside the env), then
    the optional transforms: ``ObservationNorm`` (``obs_norm_steps``; ``obs_stats`` = the
    ``(loc, scale)`` of a training env, so that an evaluation env normalises as training did)
    and ``StepCounter`` (``step_counter``)."""
    env = backends.make_env(config.backend, config.task, device=config.device,
                            num_envs=config.num_envs, seed=config.seed)
    if config.obs_norm_steps:  # one mean and std per component, over envs and time
        env = training.add_observation_norm(env, "observation", config.obs_norm_steps, obs_stats)
    if config.step_counter:
        env = env.append_transform(StepCounter())
    return env


def make_modules(config: Config, env):
    """Actor (Categorical or TanhNormal policy) and critic V(s), separate MLPs."""
    dims = training.env_dims(env)
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[config.activation]
    device = torch.device(config.device)
    if dims.action_kind == "discrete":
        logits = MLP(in_features=dims.obs_dim, out_features=dims.action_dim,
                     num_cells=list(config.hidden), activation_class=act, device=device)
        module = TensorDictModule(logits, in_keys=["observation"], out_keys=["logits"])
        actor = ProbabilisticActor(module, in_keys=["logits"], out_keys=["action"],
                                   spec=env.full_action_spec_unbatched.to(device),
                                   distribution_class=torch.distributions.Categorical,
                                   return_log_prob=True)
    else:
        net = nn.Sequential(
            MLP(in_features=dims.obs_dim, out_features=2 * dims.action_dim,
                num_cells=list(config.hidden), activation_class=act, device=device),
            NormalParamExtractor(),
        )
        module = TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"])
        actor = ProbabilisticActor(
            module, in_keys=["loc", "scale"], out_keys=["action"],
            spec=env.full_action_spec_unbatched.to(device), distribution_class=TanhNormal,
            distribution_kwargs={"low": dims.low.to(device), "high": dims.high.to(device)},
            return_log_prob=True)
    critic = ValueOperator(
        MLP(in_features=dims.obs_dim, out_features=1, num_cells=list(config.hidden),
            activation_class=act, device=device),
        in_keys=["observation"])
    return actor, critic


def make_loss(config: Config, actor, critic):
    """Clipped PPO loss with a GAE value estimator (``make_value_estimator``, torchrl 0.14),
    torchrl's or rlgauge's (``config.advantage``)."""
    loss = ClipPPOLoss(actor, critic, clip_epsilon=config.clip_epsilon,
                       entropy_bonus=config.entropy_coeff > 0,
                       entropy_coeff=config.entropy_coeff, critic_coeff=config.critic_coeff,
                       loss_critic_type=config.critic_loss, normalize_advantage=True,
                       functional=config.functional_loss)
    if config.advantage == "rlgauge":
        use_kernel_gae(loss, gamma=config.gamma, lmbda=config.lmbda)
    else:
        loss.make_value_estimator(ValueEstimators.GAE, gamma=config.gamma, lmbda=config.lmbda)
    return loss


# --------------------------------------------------------------------------- schedules


def lr_factor(config: Config, step: int, updates_per_batch: int, total_updates: int) -> float:
    """The learning rate's multiplier at gradient step ``step`` (``lr_schedule``)."""
    if not config.anneal_lr or config.lr_schedule == "constant":
        return 1.0
    if config.lr_schedule == "linear":
        return max(1.0 - step / total_updates, 0.0)
    # cosine: one value per collected batch, as torch's CosineAnnealingLR stepped per batch
    batches = max(total_updates // updates_per_batch, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(step // updates_per_batch, batches) / batches))


class Schedules:
    """PPO's two schedules over the budget, side by side (both off without ``anneal_lr``):

    - ``lr``: the learning rate, torch's ``LambdaLR`` over ``lr_factor`` (``lr_schedule``),
      stepped by the training loop after every gradient step;
    - ``clip(loss_module, frames_done)``: the clip range, set before each batch's update:
      linear to 0 over the budget (floored at 1e-3 of ``clip_epsilon``) with ``anneal_clip``
      (RL Zoo's ``lin_0.2``), from the frames collected before the batch.

    ``reference_impls.recurrent_ppo`` anneals with the same two.
    """

    def __init__(self, config, optimizer, updates_per_batch: int, budget: int):
        self.config, self.budget = config, budget
        total_updates = updates_per_batch * (budget // config.frames_per_batch)
        self.lr = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda i: lr_factor(config, i, updates_per_batch, total_updates))

    def clip(self, loss_module: ClipPPOLoss, frames_done: int) -> None:
        anneal = self.config.anneal_lr and self.config.anneal_clip
        frac = 1.0 - frames_done / self.budget if anneal else 1.0
        loss_module.clip_epsilon.fill_(self.config.clip_epsilon * max(frac, 1e-3))


# --------------------------------------------------------------------------- training


def update(config, loss_module: ClipPPOLoss, schedules: Schedules, buffer: ReplayBuffer, step,
           batch: TensorDictBase, frames: int, minibatches: int, store) -> training.LossMeans:
    """PPO's update on one collected ``batch``, ``frames`` collected so far
    (``reference_impls.recurrent_ppo`` runs the same): the clip range set from the frames
    before the batch, then ``num_epochs`` epochs of ``minibatches`` gradient steps (``step``,
    the schedule's learning rate stepped after each) on minibatches drawn without replacement
    from ``buffer``. GAE with the current critic and the buffer's contents (``store(batch)``)
    are made once per batch, or before every epoch with ``advantage_every_epoch``. Returns the
    losses' means, to be recorded."""
    schedules.clip(loss_module, frames - batch.numel())
    means = training.LossMeans(*LOSS_KEYS)
    for epoch in range(config.num_epochs):
        if epoch == 0 or config.advantage_every_epoch:
            with torch.no_grad():
                loss_module.value_estimator(batch)
            buffer.extend(store(batch))
        for _ in range(minibatches):
            means.add(step(buffer.sample()))
            schedules.lr.step()
    return means


def loss_keys(loss_module: ClipPPOLoss, batch: TensorDictBase) -> list:
    """The entries of ``batch`` (after GAE) that ``loss_module`` reads: storing only these in
    the minibatch buffer leaves the next observations, rewards, dones and collector entries out
    of every copy into and out of it (``in_keys`` lists the ``"next"`` ones for the GAE the loss
    runs when it finds no advantage; here it always finds one)."""
    wanted = {k for k in loss_module.in_keys if not (isinstance(k, tuple) and k[0] == "next")}
    wanted |= {loss_module.tensor_keys.advantage, loss_module.tensor_keys.value_target}
    present = set(batch.keys(include_nested=True, leaves_only=True))
    return sorted((k for k in wanted if k in present), key=str)

#: the losses recorded (their mean over each batch's gradient steps)
LOSS_KEYS = ("loss_objective", "loss_critic", "loss_entropy")


def train(config: Config, progress: training.Progress | None = None) -> training.TrainResult:
    """Train PPO on ``config``: tidy results records plus the trained actor and critic."""
    run = training.Run(ALGORITHM, config, progress)  # seeds torch; times, logs and reports the run
    env = make_env(config)
    actor, critic = make_modules(config, env)
    loss_module = make_loss(config, actor, critic)
    optimizer = training.adam(loss_module.parameters(), config.lr, config)
    minibatches = max(config.frames_per_batch // config.minibatch_size, 1)
    schedules = Schedules(config, optimizer, config.num_epochs * minibatches, run.budget)
    buffer = ReplayBuffer(storage=LazyTensorStorage(config.frames_per_batch, device=run.device),
                          sampler=SamplerWithoutReplacement(), batch_size=config.minibatch_size)
    # --- one gradient step: objective + critic [+ entropy] losses, norm clip, Adam
    step = run.compile(functools.partial(training.gradient_step, loss_module, optimizer,
                                         max_grad_norm=config.max_grad_norm), "update")
    collector = run.collector(env, actor)

    # --- collect: a batch of frames_per_batch frames from the current policy
    for frames, batch, _ in run.collect(collector, step_counter=config.step_counter):
        with run.sections("update"):
            # --- advantage and update: frames stored with only what the loss reads
            update(config, loss_module, schedules, buffer, step, batch, frames, minibatches,
                   lambda b: b.reshape(-1).select(*loss_keys(loss_module, b))
                   ).record(run.log, frames)

    # --- evaluate: the deterministic policy on envs normalised as in training
    stats = training.observation_stats(env)
    run.close(collector, env)
    run.evaluate(functools.partial(make_env, obs_stats=stats), actor)
    return run.result({"actor": actor, "critic": critic})
