"""Recurrent PPO: PPO (Schulman et al., 2017) with an LSTM actor-critic trained on sequences.

The actor and the critic read the history through LSTMs (torchrl's ``LSTMModule``): separate
trunks by default (Stable-Baselines3-contrib's ``RecurrentPPO``: ``enable_critic_lstm=True``,
``shared_lstm=False``), or one trunk under both heads (``shared_lstm=True``). The heads are MLPs:
a Categorical policy for discrete actions, a TanhNormal one for continuous actions (mean and
scale from the network, ``NormalParamExtractor``), and V(h_t).

Sequences, end to end:

- the env has an ``InitTracker`` (``"is_init"`` at every episode start) and each LSTM's
  ``make_tensordict_primer()`` (zeroed recurrent states at every reset); the collector runs the
  actor *and* the critic's LSTM one step at a time, so every stored step carries the recurrent
  states both had when it was collected;
- advantages are GAE (Schulman et al., 2016) on the collected ``[num_envs, T]`` batch, with the
  critic run over each env's row at once (``set_recurrent_mode(True)``), computed once per batch
  as ``RecurrentPPO`` and ``reference_impls.ppo`` do (``advantage_every_epoch``: before every
  epoch). torchrl's GAE
  evaluates V(s_t) and V(s_{t+1}) in two passes over the row, each starting from the stored
  state of its first step; the LSTM restarts at every ``"is_init"`` inside a row (for the
  next-step pass GAE copies the root ``"is_init"`` onto it), so the hidden state never leaks from
  one episode into the next;
- ``ClipPPOLoss`` runs on minibatches of whole rows, or of ``chunk_len``-step chunks of them,
  drawn without replacement; each chunk starts from the recurrent state stored at its first step
  (the "stored state" of Kapturowski et al., 2019, as ``RecurrentPPO`` does).

The learning rate and the clip range anneal as ``reference_impls.ppo``'s do (``Schedules``:
``anneal_lr``, ``lr_schedule``, ``anneal_clip``; RL Zoo's linear ``lin_`` schedules by default).
Observations are normalised by running statistics (``ObsNorm``, as RL Zoo's ``VecNormalize``
with ``norm_obs=True, norm_reward=False``). Simplified relative to ``RecurrentPPO``: PyTorch's
initialisation (``ortho_init`` for Stable-Baselines3's on the heads, off in RL Zoo's
CartPoleNoVel settings too), no value-function clipping; the stored states of a chunk are
those of the collecting policy (an epoch does not refresh them).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
from torchrl.envs import InitTracker, TransformedEnv, VecNormV2
from torchrl.modules import (
    MLP,
    LSTMModule,
    ProbabilisticActor,
    TanhNormal,
    ValueOperator,
    set_recurrent_mode,
)
from torchrl.objectives import ClipPPOLoss, ValueEstimators

from harness import backends, training
from reference_impls import ppo
from reference_impls.ppo import LR_SCHEDULES, Schedules

ALGORITHM = "recurrent_ppo"


@dataclass(frozen=True)
class Config(training.BaseConfig):
    """Recurrent PPO hyper-parameters (defaults: RL Zoo's RecurrentPPO CartPoleNoVel-v1
    settings, ``hyperparams/ppo_lstm.yml``, and ``MlpLstmPolicy``'s defaults) plus the run
    fields."""

    num_envs: int = 8
    """Environments stepped as one batch."""
    frames_per_batch: int = 256
    """Frames collected between updates (over all envs): n_steps x num_envs. Each env's
    ``frames_per_batch / num_envs`` steps form one row of the batch."""
    num_epochs: int = 20
    """Passes over each collected batch."""
    minibatch_size: int = 256
    """Frames per gradient step, as whole rows (or chunks): a multiple of the row length."""
    chunk_len: int = 0
    """Cut each row into chunks of this many steps before minibatching (0: whole rows)."""
    lr: float = 1e-3
    """Adam learning rate (annealed linearly to 0 when ``anneal_lr``)."""
    anneal_lr: bool = True
    """Anneal the learning rate (shape: ``lr_schedule``) and, with ``anneal_clip``, the clip
    range (linearly) to 0 over the budget; False keeps both constant (``ppo.Schedules``)."""
    lr_schedule: str = "linear"
    """Shape of the learning-rate annealing, as ``reference_impls.ppo``'s: ``linear`` to 0 per
    gradient step (RL Zoo), ``cosine`` to 0 stepped once per collected batch, or ``constant``."""
    anneal_clip: bool = True
    """With ``anneal_lr``: anneal the clip range linearly to 0 too (RL Zoo's ``lin_0.2``)."""
    advantage_every_epoch: bool = False
    """Recompute GAE with the current critic before every epoch (torchrl's PPO tutorial), not
    once per batch (``RecurrentPPO``, ``reference_impls.ppo``)."""
    gamma: float = 0.98
    """Discount factor."""
    lmbda: float = 0.8
    """GAE lambda."""
    clip_epsilon: float = 0.2
    """Clip range of the probability ratio."""
    entropy_coeff: float = 0.0
    """Weight of the entropy bonus."""
    critic_coeff: float = 0.5
    """Weight of the critic loss."""
    max_grad_norm: float = 0.5
    """Gradient-norm clip per step."""
    adam_eps: float = 1e-5
    """Adam's epsilon (Stable-Baselines3's PPO: 1e-5; PyTorch's default: 1e-8)."""
    lstm_hidden: int = 64
    """LSTM hidden size (RL Zoo: 64; ``MlpLstmPolicy``'s default: 256)."""
    shared_lstm: bool = False
    """One LSTM under both heads (True) or one per head (False, ``RecurrentPPO``'s default)."""
    hidden: tuple[int, ...] = (64,)
    """Hidden layer sizes of the actor and critic heads on top of the LSTMs (RL Zoo:
    ``net_arch=[dict(pi=[64], vf=[64])]``)."""
    activation: str = "relu"
    """Hidden activation of the heads: tanh or relu (RL Zoo: ReLU)."""
    normalize_obs: bool = True
    """Normalise observations by running mean and variance (``ObsNorm``, torchrl's ``VecNorm``
    fixed; RL Zoo's ``normalize: {norm_obs: True, norm_reward: False}``); evaluation uses the
    frozen statistics."""
    ortho_init: bool = False
    """Orthogonal initialisation of the heads as Stable-Baselines3's (hidden layers gain
    sqrt(2), policy output 0.01, value output 1, zero biases); False: PyTorch's default (RL
    Zoo's CartPoleNoVel setting)."""
    eval_episodes: int = 10
    """Episodes of the deterministic policy for ``final_return`` (0 skips evaluation)."""
    max_episode_steps: int = 1000
    """Step cap of one evaluation episode."""

    CHOICES: ClassVar[dict] = {"lr_schedule": LR_SCHEDULES}
    #: settings that differ from the defaults per (backend, task): RL Zoo's where it has them;
    #: CartPole-v1 episodes end at 500 steps, so its evaluation rollouts need no more
    PRESETS: ClassVar[dict] = {
        ("gymnasium", "cartpole-novel"): dict(frames=100_000, max_episode_steps=500),
    }


#: the Config for a task: defaults, then the task's ``PRESETS``, then the overrides
config_for = Config.for_task


#: published returns (RL Zoo's RecurrentPPO on CartPoleNoVel-v1) at RL Zoo budgets
LEARNING_TARGETS = [
    training.LearningTarget("gymnasium", "cartpole-novel", frames=100_000, threshold=475.0),
]


# --------------------------------------------------------------------------- building blocks


def make_env(config: Config, obs_norm: VecNormV2 | None = None):
    """The task from ``harness.backends`` with episode starts (``InitTracker``) tracked and,
    when ``normalize_obs``, observations normalised: by running statistics of its own, or by a
    frozen copy of ``obs_norm``'s (evaluation). ``training.add_primers`` adds the recurrent
    states of a policy's LSTMs."""
    env = backends.make_env(config.backend, config.task, device=config.device,
                            num_envs=config.num_envs, seed=config.seed)
    env = TransformedEnv(env, InitTracker())
    if config.normalize_obs:
        env.append_transform(
            obs_norm.frozen_copy() if obs_norm is not None
            else ObsNorm(in_keys=["observation"], decay=1.0, reduce_batch_dims=True))
    return env


class ObsNorm(VecNormV2):
    """torchrl's ``VecNorm`` (new API) with the variance clamped at 0 before its square root.

    torchrl 0.14.1 computes the scale as ``sqrt(E[x^2] - E[x]^2).clamp_min(eps)``: in float32
    the difference goes slightly negative for a component that is (nearly) constant -- dm_control's
    cartpole-swingup starts every episode at cos(angle) = -1 -- and the NaN scale makes NaN
    observations, NaN actions and a MuJoCo ``PhysicsError``. Raising E[x^2] to at least E[x]^2
    keeps the scale at ``eps`` there instead.

    torchrl warns that VecNorm on a batched env is "experimental" each time the transform joins
    a container -- when it is appended, and again when a later transform (the LSTM primers)
    rebuilds the chain. ObsNorm reduces over the batch dimensions on purpose
    (``reduce_batch_dims``), so it silences that one warning about itself.
    """

    def set_container(self, container) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"Support of {type(self).__name__} for "
                                    ".* is experimental")
            super().set_container(container)

    def _norm(self, data, loc, var, count):
        var = var.apply(lambda second, mean: torch.maximum(second, mean.pow(2)), loc)
        return super()._norm(data, loc, var, count)


def _obs_norm(env) -> VecNormV2 | None:
    """The observation-normalising transform of ``env``, if any."""
    return next((t for t in env.transform if isinstance(t, VecNormV2)), None)


def _lstm(config: Config, input_size: int, name: str) -> LSTMModule:
    return LSTMModule(input_size=input_size, hidden_size=config.lstm_hidden,
                      device=torch.device(config.device),
                      in_keys=["observation", f"{name}_h", f"{name}_c"],
                      out_keys=[f"{name}_features", ("next", f"{name}_h"), ("next", f"{name}_c")])


def make_modules(config: Config, env):
    """Actor, critic and the policy that collects: ``(actor, critic, policy)``.

    Actor: LSTM -> MLP -> Categorical or TanhNormal policy. Critic: LSTM (its own, or the
    actor's when ``shared_lstm``) -> MLP -> V. The collecting policy is the actor followed by
    the critic's LSTM (without its head), so that the critic's states are stored too.
    """
    dims = training.env_dims(env)
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[config.activation]
    device = torch.device(config.device)
    actor_lstm = _lstm(config, dims.obs_dim, "actor")
    critic_lstm = actor_lstm if config.shared_lstm else _lstm(config, dims.obs_dim, "critic")
    feature_key = critic_lstm.out_keys[0]

    def head(out_features, out_gain):
        mlp = MLP(in_features=config.lstm_hidden, out_features=out_features,
                  num_cells=list(config.hidden), activation_class=act, device=device)
        if config.ortho_init:
            layers = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
            for layer in layers:
                nn.init.orthogonal_(layer.weight, out_gain if layer is layers[-1] else 2 ** 0.5)
                nn.init.zeros_(layer.bias)
        return mlp

    if dims.action_kind == "discrete":
        logits = TensorDictModule(head(dims.action_dim, 0.01), in_keys=["actor_features"],
                                  out_keys=["logits"])
        actor = ProbabilisticActor(TensorDictSequential(actor_lstm, logits), in_keys=["logits"],
                                   out_keys=["action"],
                                   spec=env.full_action_spec_unbatched.to(device),
                                   distribution_class=torch.distributions.Categorical,
                                   return_log_prob=True)
    else:
        params = TensorDictModule(nn.Sequential(head(2 * dims.action_dim, 0.01),
                                                NormalParamExtractor()),
                                  in_keys=["actor_features"], out_keys=["loc", "scale"])
        actor = ProbabilisticActor(
            TensorDictSequential(actor_lstm, params), in_keys=["loc", "scale"],
            out_keys=["action"], spec=env.full_action_spec_unbatched.to(device),
            distribution_class=TanhNormal,
            distribution_kwargs={"low": dims.low.to(device), "high": dims.high.to(device)},
            return_log_prob=True)
    critic = TensorDictSequential(critic_lstm, ValueOperator(head(1, 1.0), in_keys=[feature_key]))
    policy = actor if config.shared_lstm else TensorDictSequential(actor, critic_lstm)
    return actor, critic, policy


def make_loss(config: Config, actor, critic):
    """Clipped PPO loss with a GAE value estimator. ``deactivate_vmap``: GAE's two passes (V(s_t)
    and V(s_{t+1})) cannot be vmapped over an LSTM that splits rows at episode starts."""
    loss = ClipPPOLoss(actor, critic, clip_epsilon=config.clip_epsilon,
                       entropy_bonus=config.entropy_coeff > 0,
                       entropy_coeff=config.entropy_coeff, critic_coeff=config.critic_coeff,
                       loss_critic_type="l2", normalize_advantage=True)
    loss.make_value_estimator(ValueEstimators.GAE, gamma=config.gamma, lmbda=config.lmbda,
                              deactivate_vmap=True)
    return loss


# --------------------------------------------------------------------------- training


def train(config: Config, progress: training.Progress | None = None) -> training.TrainResult:
    """Train recurrent PPO on ``config``: tidy results records plus the trained actor and
    critic."""
    run = training.Run(ALGORITHM, config, progress)  # seeds torch; times, logs and reports the run
    env = make_env(config)
    actor, critic, policy = make_modules(config, env)
    training.add_primers(env, policy)
    loss_module = make_loss(config, actor, critic)
    optimizer = training.adam(loss_module.parameters(), config.lr, config, eps=config.adam_eps)

    steps = config.frames_per_batch // config.num_envs  # one row per env
    chunk_len = config.chunk_len or steps
    if steps * config.num_envs != config.frames_per_batch or steps % chunk_len:
        raise ValueError(f"frames_per_batch ({config.frames_per_batch}) must be num_envs "
                         f"({config.num_envs}) x a multiple of chunk_len ({chunk_len})")
    num_chunks = config.frames_per_batch // chunk_len
    chunks_per_minibatch = min(max(config.minibatch_size // chunk_len, 1), num_chunks)
    minibatches = num_chunks // chunks_per_minibatch
    schedules = Schedules(config, optimizer, config.num_epochs * minibatches, run.budget)
    # one buffer element = one chunk of consecutive steps
    buffer = ReplayBuffer(storage=LazyTensorStorage(num_chunks, device=run.device),
                          sampler=SamplerWithoutReplacement(), batch_size=chunks_per_minibatch)
    step = run.compile(functools.partial(training.gradient_step, loss_module, optimizer,
                                         max_grad_norm=config.max_grad_norm), "update")
    collector = run.collector(env, policy)

    # --- collect: a [num_envs, T] batch, the recurrent states of every step stored in it
    for frames, batch, _ in run.collect(collector):
        with run.sections("update"), set_recurrent_mode(True):
            # --- advantage (GAE over each env's row) and update: minibatches of chunks
            ppo.update(config, loss_module, schedules, buffer, step, batch, frames, minibatches,
                       lambda b: b.reshape(num_chunks, chunk_len)).record(run.log, frames)

    # --- evaluate: the deterministic policy, observations normalised by the frozen statistics
    run.close(collector, env)
    obs_norm = _obs_norm(env)
    run.evaluate(lambda c: make_env(c, obs_norm), actor,
                 prepare=lambda e: training.add_primers(e, actor))
    return run.result({"actor": actor, "critic": critic})
