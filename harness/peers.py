"""Peer implementations of the reference algorithms, run on the same specs: the ``impl`` axis.

``impl="rlgauge"`` is ``reference_impls`` (torchrl parts). ``impl="sb3"`` trains the same
algorithm with Stable-Baselines3 / sb3-contrib (``pip install -c constraints.txt -e .[peers]``):
``ppo`` -> ``PPO``, ``dqn`` -> ``DQN``, ``ddpg`` -> ``DDPG``, ``recurrent_ppo`` ->
``sb3_contrib.RecurrentPPO``; ``recurrent_dqn`` has no SB3 counterpart. A peer run takes the
reference algorithm's ``Config`` -- the same hyper-parameters, budget and seed -- on the same
gymnasium task (``harness.backends.gym_make``: the same observation wrapper), its sub-env ``i``
seeded with ``seed + i`` as rlgauge's, and records what a reference run records, in the same
units, with ``impl`` = ``sb3``:

- ``episode_return`` (mean of the episodes that ended in each rollout) and ``elapsed_s`` against
  frames; the losses SB3 logs, under rlgauge's names (PPO: ``loss_objective``,
  ``loss_critic``, ``loss_entropy``; DQN: ``loss``; DDPG: ``loss_actor``, ``loss_value``);
- ``update_time_s`` (what SB3 spends between rollouts: its ``train()``), ``wall_time_s``,
  ``collect_fps``, ``train_fps``. The env / policy split of collection cannot be measured
  without changing SB3, so ``env_time_s`` and ``policy_time_s`` are not recorded;
- ``final_return`` by rlgauge's own protocol (``harness.training.final_evaluation``):
  ``eval_episodes`` deterministic episodes, up to 16 sub-envs at a time seeded ``seed + 10000
  + i``, each cut at ``max_episode_steps``.

How each Config maps (what SB3 calls it) and where the two differ by design:

- PPO: ``frames_per_batch / num_envs`` -> ``n_steps``, ``minibatch_size`` -> ``batch_size``,
  ``num_epochs``, ``gamma``, ``lmbda`` -> ``gae_lambda``, ``clip_epsilon`` (annealed linearly
  with ``anneal_lr`` and ``anneal_clip``: RL Zoo's ``lin_0.2``), ``lr`` (linear or cosine over
  the budget with ``anneal_lr``), ``entropy_coeff``, ``critic_coeff`` -> ``vf_coef``,
  ``max_grad_norm``, ``hidden``/``activation`` -> separate pi/vf ``net_arch``; advantages
  normalised per minibatch as rlgauge's. Both compute advantages once per rollout (rlgauge's
  ``advantage_every_epoch`` recomputes them every epoch: no SB3 counterpart); SB3 initialises
  orthogonally; continuous actions are a Gaussian clipped
  to the bounds (rlgauge: TanhNormal).
- DQN: ``train_freq``, ``gradient_steps``, ``batch_size``, ``buffer_size``,
  ``init_random_frames`` -> ``learning_starts``, ``lr``, ``gamma``, ``max_grad_norm``,
  ε schedule, ``hidden``. Hard target copies: rlgauge copies every ``target_update_interval``
  gradient steps; SB3 copies during collection, so one copy per update phase (the Config's
  default, ``target_update_interval == gradient_steps``) is an SB3 interval of one phase's
  env steps. SB3's DQN is not double DQN (rlgauge's is) and its loss is smooth L1 only.
- DDPG: ``frames_per_batch / num_envs`` -> ``train_freq``, ``frames_per_batch *
  updates_per_frame`` -> ``gradient_steps``, ``init_random_frames`` (capped at half the budget,
  as rlgauge's) -> ``learning_starts``, ``tau``, ``gamma``, one learning rate, Gaussian or OU
  noise with ``sigma`` (both already in SB3's units: half the action range).
- RecurrentPPO: PPO's mapping plus ``lstm_hidden``, ``shared_lstm``, ``ortho_init``,
  ``adam_eps``, ``normalize_obs`` -> ``VecNormalize(norm_obs=True, norm_reward=False)`` (its
  statistics frozen for the evaluation).

Settings SB3 cannot follow (prioritized replay, a loss other than smooth L1, annealed noise,
different actor and critic learning rates, observation normalisation of PPO from random
rollouts, step counters, CSV logs) are refused with one line naming the field, before any work.
"""

from __future__ import annotations

import math
import time

from harness.errors import UsageError

IMPLS = ("rlgauge", "sb3")
#: algorithm -> SB3 class (module, name)
SB3_CLASSES = {"ppo": ("stable_baselines3", "PPO"), "dqn": ("stable_baselines3", "DQN"),
               "ddpg": ("stable_baselines3", "DDPG"),
               "recurrent_ppo": ("sb3_contrib", "RecurrentPPO")}
SB3_BACKENDS = ("gymnasium",)
_PPO_LOSSES = {"train/policy_gradient_loss": "loss_objective", "train/value_loss": "loss_critic",
               "train/entropy_loss": "loss_entropy"}
#: per algorithm: rlgauge's loss names for what SB3 logs
LOSS_NAMES = {"ppo": _PPO_LOSSES, "recurrent_ppo": _PPO_LOSSES, "dqn": {"train/loss": "loss"},
              "ddpg": {"train/actor_loss": "loss_actor", "train/critic_loss": "loss_value"}}


def implementations(algorithm: str) -> tuple[str, ...]:
    """The implementations of ``algorithm``: rlgauge's, and SB3's where it has one."""
    return IMPLS if algorithm in SB3_CLASSES else ("rlgauge",)


def check(impl: str, algorithm: str, backend: str) -> None:
    """UsageError, naming what is valid, when ``impl`` cannot run ``algorithm`` on ``backend``
    here (an unknown implementation, no SB3 counterpart, a non-gymnasium backend, SB3 not
    installed)."""
    if impl not in IMPLS:
        raise UsageError(f"unknown implementation {impl!r}; valid: {', '.join(IMPLS)}")
    if impl == "rlgauge":
        return
    if algorithm not in SB3_CLASSES:
        raise UsageError(f"{algorithm} has no Stable-Baselines3 implementation; implementations "
                         f"of it: {', '.join(implementations(algorithm))}")
    if backend not in SB3_BACKENDS:
        raise UsageError(f"impl sb3 runs gymnasium tasks only, not {backend!r}")
    require_installed(impl, algorithm)


def require_installed(impl: str, algorithm: str) -> None:
    """UsageError when the library ``impl`` runs ``algorithm`` with is not installed (nothing
    for rlgauge, or for an algorithm the peer does not have)."""
    if impl == "rlgauge" or algorithm not in SB3_CLASSES:
        return
    import importlib.util

    module = SB3_CLASSES[algorithm][0]
    if importlib.util.find_spec(module) is None:
        raise UsageError(f"impl sb3 needs {module.replace('_', '-')} (not installed): "
                         f"pip install -c constraints.txt -e .[peers]")


def check_config(algorithm: str, config) -> None:
    """UsageError naming the first setting of ``config`` that SB3 cannot follow."""
    def refuse(field: str, why: str):
        raise UsageError(f"impl sb3 cannot follow {field}={getattr(config, field)!r}: {why}")

    if getattr(config, "obs_norm_steps", 0):
        refuse("obs_norm_steps", "SB3 has no observation normalisation from random rollouts")
    if getattr(config, "step_counter", False):
        refuse("step_counter", "no step-count curve from SB3")
    if getattr(config, "csv_log_dir", ""):
        refuse("csv_log_dir", "torchrl's CSVLogger is rlgauge's")
    if algorithm == "ppo" and config.critic_loss != "l2":
        refuse("critic_loss", "SB3's PPO regresses its value with the squared error")
    if algorithm == "dqn":
        if config.prioritized:
            refuse("prioritized", "SB3's DQN has no prioritized replay")
        if config.loss_function != "smooth_l1":
            refuse("loss_function", "SB3's DQN uses the smooth L1 (Huber) loss")
    if algorithm == "ddpg":
        if config.sigma_end != config.sigma:
            refuse("sigma_end", "SB3's action noise does not anneal")
        if config.actor_lr != config.critic_lr:
            refuse("critic_lr", "SB3's DDPG has one learning rate for actor and critic")
    if algorithm == "recurrent_ppo" and getattr(config, "chunk_len", 0):
        refuse("chunk_len", "sb3-contrib's RecurrentPPO cuts its own sequences")


# --------------------------------------------------------------------------- building


def _schedule(config, value: float, anneal: bool):
    """SB3 schedule (a function of the progress remaining, 1 -> 0) or a constant."""
    if not anneal:
        return value
    if getattr(config, "lr_schedule", "linear") == "cosine":
        return lambda p: value * 0.5 * (1.0 + math.cos(math.pi * (1.0 - p)))
    return lambda p: value * p


def _activation(config):
    from torch import nn

    return {"tanh": nn.Tanh, "relu": nn.ReLU}[getattr(config, "activation", "relu")]


def _ppo_kwargs(config) -> dict:
    anneal_clip = config.anneal_lr and config.anneal_clip
    lr_anneal = config.anneal_lr and config.lr_schedule != "constant"
    return dict(
        learning_rate=_schedule(config, config.lr, lr_anneal),
        n_steps=config.frames_per_batch // config.num_envs, batch_size=config.minibatch_size,
        n_epochs=config.num_epochs, gamma=config.gamma, gae_lambda=config.lmbda,
        clip_range=_schedule(config, config.clip_epsilon, anneal_clip) if anneal_clip
        else config.clip_epsilon,
        ent_coef=config.entropy_coeff, vf_coef=config.critic_coeff,
        max_grad_norm=config.max_grad_norm, normalize_advantage=True)


def build(algorithm: str, config, venv):
    """The SB3 model of ``algorithm`` for ``config`` on the vector env ``venv``."""
    import importlib

    module, name = SB3_CLASSES[algorithm]
    cls = getattr(importlib.import_module(module), name)
    common = dict(seed=config.seed, device=config.device, verbose=0)
    if algorithm == "ppo":
        policy_kwargs = dict(net_arch=dict(pi=list(config.hidden), vf=list(config.hidden)),
                             activation_fn=_activation(config))
        return cls("MlpPolicy", venv, policy_kwargs=policy_kwargs, **_ppo_kwargs(config),
                   **common)
    if algorithm == "recurrent_ppo":
        policy_kwargs = dict(lstm_hidden_size=config.lstm_hidden, n_lstm_layers=1,
                             shared_lstm=config.shared_lstm,
                             enable_critic_lstm=not config.shared_lstm,
                             net_arch=dict(pi=list(config.hidden), vf=list(config.hidden)),
                             activation_fn=_activation(config), ortho_init=config.ortho_init,
                             optimizer_kwargs=dict(eps=config.adam_eps))
        return cls("MlpLstmPolicy", venv, policy_kwargs=policy_kwargs, **_ppo_kwargs(config),
                   **common)
    if algorithm == "dqn":
        phase = config.train_freq * config.num_envs  # env frames of one collection phase
        copies = max(1, round(config.target_update_interval / max(config.gradient_steps, 1)))
        soft = config.target_update == "soft"
        return cls("MlpPolicy", venv, learning_rate=config.lr, buffer_size=config.buffer_size,
                   learning_starts=config.init_random_frames, batch_size=config.batch_size,
                   tau=config.tau if soft else 1.0, gamma=config.gamma,
                   train_freq=(config.train_freq, "step"),
                   gradient_steps=config.gradient_steps,
                   target_update_interval=1 if soft else phase * copies,
                   exploration_fraction=config.exploration_fraction,
                   exploration_initial_eps=config.eps_init,
                   exploration_final_eps=config.eps_end, max_grad_norm=config.max_grad_norm,
                   policy_kwargs=dict(net_arch=list(config.hidden)), **common)
    # ddpg
    import numpy as np
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    dims = venv.action_space.shape[0]
    mean, sigma = np.zeros(dims), config.sigma * np.ones(dims)
    noise = (NormalActionNoise(mean, sigma) if config.noise == "gaussian" else
             OrnsteinUhlenbeckActionNoise(mean, sigma, theta=config.ou_theta, dt=config.ou_dt))
    per_env = max(config.frames_per_batch // config.num_envs, 1)
    return cls("MlpPolicy", venv, learning_rate=config.actor_lr,
               buffer_size=config.buffer_size,
               learning_starts=min(config.init_random_frames, config.frames // 2),
               batch_size=config.batch_size, tau=config.tau, gamma=config.gamma,
               train_freq=(per_env, "step"),
               gradient_steps=max(int(config.frames_per_batch * config.updates_per_frame), 1),
               action_noise=noise, policy_kwargs=dict(net_arch=list(config.hidden)), **common)


def _vec_env(spec, config, *, seed: int, normalize: bool = False):
    """SB3's vector env of ``config.num_envs`` copies of the task (sub-env i seeded seed + i,
    episode returns from ``VecMonitor``), observations normalised if asked."""
    import functools

    from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor, VecNormalize

    from harness import backends

    venv = VecMonitor(DummyVecEnv([functools.partial(backends.gym_make, spec)]
                                  * config.num_envs))
    venv.seed(seed)
    return VecNormalize(venv, norm_obs=True, norm_reward=False) if normalize else venv


# --------------------------------------------------------------------------- training


def train(algorithm: str, config, progress=None):
    """Train ``algorithm``'s SB3 counterpart on ``config`` (module docstring): a
    ``harness.training.TrainResult`` with rlgauge's records (``impl`` = ``sb3``) and the model
    as ``modules["model"]``."""
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    from harness import backends, training

    check("sb3", algorithm, config.backend)
    check_config(algorithm, config)
    spec = backends.get_task(config.backend, config.task)
    normalize = algorithm == "recurrent_ppo" and config.normalize_obs
    venv = _vec_env(spec, config, seed=config.seed, normalize=normalize)
    model = build(algorithm, config, venv)
    log = training.TrainLog()
    times = {"collect": 0.0, "update": 0.0}
    latest: dict[str, float] = {}
    losses = LOSS_NAMES[algorithm]

    class Capture(Logger):
        """SB3's logger, writing nowhere, keeping the last value of each loss it logs."""

        def record(self, key, value, exclude=None):
            if key in losses:
                latest[losses[key]] = float(value)
            super().record(key, value, exclude)

    model.set_logger(Capture(folder=None, output_formats=[]))

    class Measure(BaseCallback):
        """Times collection vs the rest, logs episode returns and the last update's losses."""

        def __init__(self):
            super().__init__()
            self.t_start = self.t_end = None
            self.returns: list[float] = []

        def _on_rollout_start(self) -> None:
            now = time.perf_counter()
            if self.t_end is not None:
                times["update"] += now - self.t_end
            self.t_start = now
            frames = int(self.num_timesteps)
            for name, value in latest.items():
                log.curve(name, value, frames)
            latest.clear()

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", ()):
                if "episode" in info:
                    self.returns.append(float(info["episode"]["r"]))
            return True

        def _on_rollout_end(self) -> None:
            now = time.perf_counter()
            times["collect"] += now - self.t_start
            self.t_end = now
            frames = int(self.num_timesteps)
            if self.returns:
                log.curve("episode_return", sum(self.returns) / len(self.returns), frames,
                          "return")
                self.returns.clear()
            if progress is not None:
                progress(frames, config.frames, {"return": log.last("episode_return")})

    measure = Measure()
    clock = training.Clock(config.device)
    model.learn(total_timesteps=config.frames, callback=measure)
    wall = clock.elapsed()
    if measure.t_end is not None:
        times["update"] += time.perf_counter() - measure.t_end
    frames = int(model.num_timesteps)
    for name, value in latest.items():
        log.curve(name, value, frames)
    log.scalar("update_time_s", times["update"], "s")
    log.scalar("wall_time_s", wall, "s")
    log.scalar("collect_fps", frames / times["collect"] if times["collect"] else math.nan,
               "frames/s")
    log.scalar("train_fps", frames / wall if wall else math.nan, "frames/s")
    if config.eval_episodes > 0:
        obs_rms = venv.obs_rms if normalize else None
        log.scalar("final_return", evaluate(model, spec, config, obs_rms=obs_rms,
                                            recurrent=algorithm == "recurrent_ppo"), "return")
    venv.close()
    return training.TrainResult(log.frame(algorithm, config, impl="sb3"), {"model": model})


def evaluate(model, spec, config, *, obs_rms=None, recurrent: bool = False) -> float:
    """Mean return of ``config.eval_episodes`` deterministic episodes, by rlgauge's protocol:
    up to 16 sub-envs at a time, seeded ``seed + 10000 + i``, the first episode of each cut at
    ``max_episode_steps``; observations normalised with ``obs_rms`` (frozen) if given."""
    import functools

    import gymnasium as gym
    import numpy as np

    from harness import backends

    n = min(config.eval_episodes, 16)
    vec = gym.vector.SyncVectorEnv([functools.partial(backends.gym_make, spec)] * n)
    returns: list[float] = []
    try:
        # seeded as rlgauge seeds its evaluation env (``set_seed`` at construction); each batch
        # of episodes then starts with a reset that continues the sub-envs' streams, as
        # ``harness.training.evaluate``'s rollouts do
        vec.reset(seed=config.seed + 10_000)
        while len(returns) < config.eval_episodes:
            obs, _ = vec.reset()
            total, done = np.zeros(n), np.zeros(n, dtype=bool)
            state, starts = None, np.ones(n, dtype=bool)
            for _ in range(config.max_episode_steps):
                x = obs if obs_rms is None else np.clip(
                    (obs - obs_rms.mean) / np.sqrt(obs_rms.var + 1e-8), -10.0, 10.0)
                if recurrent:
                    action, state = model.predict(x, state=state, episode_start=starts,
                                                  deterministic=True)
                else:
                    action, _ = model.predict(x, deterministic=True)
                obs, reward, terminated, truncated, _ = vec.step(action)
                total += np.where(done, 0.0, reward)
                done |= terminated | truncated
                starts = terminated | truncated
                if done.all():
                    break
            returns.extend(total.tolist())
    finally:
        vec.close()
    return float(sum(returns[:config.eval_episodes]) / config.eval_episodes)
