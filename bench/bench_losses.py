"""Losses of the reference algorithms, beside the same loss hand-written in torch.

Each algorithm's networks and loss come from its own module (``reference_impls.<algo>``:
``config_for`` -> ``make_env`` -> ``make_modules`` -> ``make_loss``), with its default config
on its CPU task (CartPole for PPO and DQN, Pendulum for DDPG, CartPole without velocities for
the recurrent ones), so the bench measures what the reference implementations run. The input
batches are made once per asv run (``setup_cache``) the reference's way: a ``Collector`` with
the algorithm's policy, then GAE (PPO), the sequence buffer + ``to_sequences`` + burn-in mask
(recurrent DQN) or rows cut into chunks (recurrent PPO). ``batch`` counts frames: 256 or
4096 transitions (recurrent: 16 or 256 slices of 16 steps; 8 or 128 chunks of 32 steps).

- ``Loss.time_forward``: the loss the reference backpropagates (the sum of its terms);
- ``Loss.time_backward``: forward + backward (gradients set to None first);
- ``Loss.time_update``: the reference's gradient step without sampling: ``zero_grad``,
  forward, backward, gradient-norm clip where the reference clips, optimiser step(s), target
  network update (DQN: hard, DDPG: soft).

``HandLoss`` -- the floor: the same computation written in plain torch on the *same* network
modules (their ``nn.Linear``/``nn.LSTM`` layers called directly; target networks as
``deepcopy``; DDPG's actor loss through detached critic parameters, as torchrl does). The
recurrent floors run each LSTM once over the whole slice from its stored state and do not
restart it at episode starts inside a chunk (torchrl's ``LSTMModule`` splits rows there), so
they are a lower bound. Recurrent DQN's floor computes its TD(λ) target (issue 19's default,
``lmbda``) with ``harness.estimators.td_lambda_return``; the numbers below were measured with
its TD(0) target, before that change. A timed sample runs the operation as many times as ~50 ms
of forwards take (``calls_for``; at least once) and the class's ``SampleClock`` divides by that
count.

``FLOORS`` pairs each ``Loss`` method with the ``HandLoss`` one on (device, algorithm, batch);
tests/test_bench_suite.py checks that both compute the same loss, before and after updates
(the DQNs' target copies included, their interval shrunk there).

Measured with ``asv run --python=same --bench bench_losses`` (2-core VM shared with other jobs,
load 5-7, threads=1; medians, batch 256): full update PPO 6.85 ms vs 3.87 ms by hand (1.8x),
DQN 10.8 vs 7.05 (1.5x), DDPG 27.8 vs 21.3 (1.3x), recurrent DQN 16.8 vs 8.43 (2.0x),
recurrent PPO 48.4 vs 9.07 (5.3x). The module took 3.1 min there. Every row:
``results/bench/components.md``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.common import RLBenchmark, SampleClock, calls_for, pin_threads

#: algorithm -> its CPU task (gymnasium), as bench_training
TASKS = {"ppo": "cartpole", "dqn": "cartpole", "ddpg": "pendulum",
         "recurrent_dqn": "cartpole-novel", "recurrent_ppo": "cartpole-novel"}
BATCHES = [256, 4096]
COLLECT_ENVS = 8  # envs of the collector that makes the input batches


def _module(algorithm: str):
    from harness.runs import algorithm_module

    return algorithm_module(algorithm)


def _config(algorithm: str, device="cpu"):
    return _module(algorithm).config_for("gymnasium", TASKS[algorithm], device=str(device))


def _first(module, cls):
    return next(m for m in module.modules() if isinstance(m, cls))


# --------------------------------------------------------------------------- input batches


def _collect(env, policy, frames: int):
    """``frames`` frames ``[num_envs, T]`` collected by ``policy`` (env closed after)."""
    from torchrl.collectors import Collector

    from harness.training import close_run

    collector = Collector(env, policy, frames_per_batch=frames, total_frames=frames,
                          auto_register_policy_transforms=False)
    batch = next(iter(collector))
    close_run(collector, env)
    return batch


def make_batches(frames: int = max(BATCHES)) -> dict:
    """algorithm -> an input batch of ``frames`` frames (CPU); smaller batches are its first
    rows."""
    import torch
    from torchrl.modules import set_recurrent_mode

    from harness import registry
    from harness.training import add_primers

    registry.load_builtins()
    pin_threads()
    out = {}
    for algorithm in TASKS:
        if registry.ALGORITHMS.unavailable_reason(algorithm):
            continue
        torch.manual_seed(0)
        mod = _module(algorithm)
        config = _config(algorithm).replace(num_envs=COLLECT_ENVS)
        env = mod.make_env(config)
        if algorithm == "ppo":
            actor, critic = mod.make_modules(config, env)
            loss = mod.make_loss(config, actor, critic)
            batch = _collect(env, actor, frames)
            with torch.no_grad():
                loss.value_estimator(batch)
            batch = batch.reshape(-1)
        elif algorithm == "dqn":
            actor, explore = mod.make_modules(config, env)
            batch = _collect(env, explore, frames).reshape(-1)
        elif algorithm == "ddpg":
            actor, critic = mod.make_modules(config, env)
            policy, _ = mod.make_exploration(config, env, actor)
            batch = _collect(env, policy, frames).reshape(-1).select(*mod.TRANSITION_KEYS)
        elif algorithm == "recurrent_dqn":
            qnet, _ = mod.make_modules(config, env)
            add_primers(env, qnet)
            # span=True slices can be ragged: draw 25% more, keep exactly frames / slice_len
            num_slices = frames // config.slice_len
            buffer = mod.make_buffer(config.replace(num_slices=num_slices * 5 // 4,
                                                    buffer_size=frames))
            data = _collect(env, qnet, frames)
            buffer.extend(data.select(*mod.TRANSITION_KEYS, strict=False).reshape(-1))
            batch = mod.to_sequences(buffer.sample(), config.slice_len)[:num_slices]
            batch = _burn_in(batch, config)
        elif algorithm == "recurrent_ppo":
            actor, critic, policy = mod.make_modules(config, env)
            add_primers(env, policy)
            loss = mod.make_loss(config, actor, critic)
            batch = _collect(env, policy, frames)
            with torch.no_grad(), set_recurrent_mode(True):
                loss.value_estimator(batch)
            chunk = config.chunk_len or config.frames_per_batch // config.num_envs
            batch = batch.reshape(-1, chunk)
        else:  # a registered algorithm this bench does not know yet
            continue
        out[algorithm] = batch.clone()
        pin_threads()
    return out


def _burn_in(sample, config):
    """The reference's burn-in mask: a slice that starts mid-episode skips its first steps."""
    if config.burn_in:
        mask = sample["collector", "mask"].clone()
        mask[:, :config.burn_in] &= sample["is_init"][:, :1, 0]
        sample.set(("collector", "mask"), mask)
    return sample


def rows(batch, frames: int):
    """The first ``frames`` frames of ``batch`` (whole slices/chunks for 2-d batches)."""
    return batch[: frames // batch.shape[1]] if batch.ndim == 2 else batch[:frames]


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One loss ready to run: ``loss()`` is the scalar the reference backpropagates."""

    loss: Callable
    params: list
    optimizers: list
    max_grad_norm: float | None = None
    after_step: Callable = lambda: None
    context: Callable = field(default=contextlib.nullcontext)

    def forward(self):
        with self.context():
            return self.loss()

    def backward(self):
        for p in self.params:
            p.grad = None
        with self.context():
            self.loss().backward()

    def update(self):
        import torch

        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        with self.context():
            self.loss().backward()
        if self.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        for opt in self.optimizers:
            opt.step()
        self.after_step()


def _build(algorithm: str, device):
    """(module, config, modules...) built the reference's way on ``device``."""
    from harness.training import add_primers

    mod = _module(algorithm)
    config = _config(algorithm, device)
    env = mod.make_env(config)
    try:
        if algorithm == "ppo":
            actor, critic = mod.make_modules(config, env)
            return mod, config, (actor, critic, mod.make_loss(config, actor, critic))
        if algorithm == "dqn":
            actor, _ = mod.make_modules(config, env)
            return mod, config, (actor, *mod.make_loss(config, actor))
        if algorithm == "ddpg":
            actor, critic = mod.make_modules(config, env)
            return mod, config, (actor, critic, mod.make_loss(config, actor, critic))
        if algorithm == "recurrent_dqn":
            qnet, loss_qnet = mod.make_modules(config, env)
            add_primers(env, qnet)
            return mod, config, (qnet, mod.make_loss(config, loss_qnet, env))
        if algorithm == "recurrent_ppo":
            actor, critic, _ = mod.make_modules(config, env)
            return mod, config, (actor, critic, mod.make_loss(config, actor, critic))
    finally:
        env.close()
        pin_threads()
    raise NotImplementedError(f"no loss bench for {algorithm!r} yet")


def _hard_update_interval(algorithm: str, config) -> int:
    """``HardUpdate``'s ``value_network_update_interval`` as the references pass it. HardUpdate
    copies on every (k + 1)-th ``step()`` for k; ``reference_impls.dqn`` and
    ``reference_impls.recurrent_dqn`` pass ``target_update_interval - 1`` (a copy every
    ``target_update_interval`` steps). The floor copies on the same steps."""
    return max(config.target_update_interval - 1, 0)


def torchrl_case(algorithm: str, batch, device) -> Case:
    """The reference's torchrl loss and update step (its optimiser: ``training.adam``)."""
    from torchrl.modules import set_recurrent_mode
    from torchrl.objectives import HardUpdate, SoftUpdate

    from harness.training import adam

    mod, config, built = _build(algorithm, device)
    if algorithm in ("ppo", "recurrent_ppo"):
        loss_module = built[-1]
        kwargs = {"eps": config.adam_eps} if hasattr(config, "adam_eps") else {}
        optim = adam(loss_module.parameters(), config.lr, config, **kwargs)

        def loss():
            out = loss_module(batch)
            return sum(out[k] for k in ("loss_objective", "loss_critic", "loss_entropy")
                       if k in out.keys())

        recurrent = algorithm == "recurrent_ppo"
        return Case(loss, list(loss_module.parameters()), [optim], config.max_grad_norm,
                    context=(lambda: set_recurrent_mode(True)) if recurrent
                    else contextlib.nullcontext)
    if algorithm in ("dqn", "recurrent_dqn"):
        loss_module = built[1]
        interval = _hard_update_interval(algorithm, config)
        updater = HardUpdate(loss_module, value_network_update_interval=interval)
        optim = adam(loss_module.parameters(), config.lr, config)
        recurrent = algorithm == "recurrent_dqn"
        return Case(lambda: loss_module(batch)["loss"], list(loss_module.parameters()),
                    [optim], config.max_grad_norm, updater.step,
                    (lambda: set_recurrent_mode(True)) if recurrent else contextlib.nullcontext)
    # ddpg
    loss_module = built[2]
    updater = SoftUpdate(loss_module, tau=config.tau)
    actor_params = list(loss_module.actor_network_params.flatten_keys().values())
    critic_params = list(loss_module.value_network_params.flatten_keys().values())
    optims = [adam(critic_params, config.critic_lr, config),
              adam(actor_params, config.actor_lr, config)]

    def ddpg_loss():
        out = loss_module(batch)
        return out["loss_actor"] + out["loss_value"]

    return Case(ddpg_loss, actor_params + critic_params, optims, None, updater.step)


def hand_case(algorithm: str, batch, device) -> Case:
    """The same loss and step in plain torch on the same network modules (and the reference's
    optimiser, ``training.adam``)."""
    import torch
    import torch.nn.functional as F
    from torchrl.modules import MLP, LSTMModule

    from harness.estimators import td_lambda_return
    from harness.training import adam

    mod, config, built = _build(algorithm, device)
    obs = batch["observation"]
    done_key = ("next", "terminated")
    if algorithm in ("ppo", "recurrent_ppo"):
        actor, critic, loss_module = built
        keys = loss_module.tensor_keys
        action, old_logp = batch[keys.action], batch[keys.sample_log_prob]
        advantage, target = batch[keys.advantage], batch[keys.value_target]
        actor_mlp, critic_mlp = _first(actor, MLP), _first(critic, MLP)
        if algorithm == "recurrent_ppo":
            a_lstm, c_lstm = _first(actor, LSTMModule), _first(critic, LSTMModule)

            def features(lstm_module):
                h_key, c_key = lstm_module.in_keys[1:3]
                state = (batch[h_key][:, 0].transpose(0, 1).contiguous(),
                         batch[c_key][:, 0].transpose(0, 1).contiguous())
                return lstm_module.lstm(obs, state)[0]

            def heads():
                return actor_mlp(features(a_lstm)), critic_mlp(features(c_lstm))
        else:
            def heads():
                return actor_mlp(obs), critic_mlp(obs)
        eps, coeff = config.clip_epsilon, config.critic_coeff

        def ppo_loss():
            logits, value = heads()
            logp = torch.log_softmax(logits, -1).gather(-1, action.unsqueeze(-1))
            ratio = (logp - old_logp.unsqueeze(-1)).exp()
            adv = (advantage - advantage.mean()) / advantage.std().clamp_min(1e-6)
            objective = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv).mean()
            return objective + coeff * (value - target).pow(2).mean()

        params = list(actor.parameters()) + list(critic.parameters())
        params = list({id(p): p for p in params}.values())
        kwargs = {"eps": config.adam_eps} if hasattr(config, "adam_eps") else {}
        optim = adam(params, config.lr, config, **kwargs)
        return Case(ppo_loss, params, [optim], config.max_grad_norm)

    reward = batch["next", "reward"]
    not_done = 1.0 - batch[done_key].float()
    if algorithm in ("dqn", "recurrent_dqn"):
        qnet = built[0]
        action = batch["action"].unsqueeze(-1)
        if algorithm == "dqn":
            net = _first(qnet, MLP)
            target_net = copy.deepcopy(net).requires_grad_(False)
            next_obs = batch["next", "observation"]

            def q_values(network, x, _state_key):
                return network(x)
        else:
            embed, lstm, head = qnet[0].module, _first(qnet, LSTMModule).lstm, qnet[2].module
            net = torch.nn.ModuleList([embed, lstm, head])
            target_net = copy.deepcopy(net).requires_grad_(False)
            next_obs = batch["next", "observation"]
            mask = batch["collector", "mask"].unsqueeze(-1).float()

            def q_values(network, x, state_key):
                embed_, lstm_, head_ = network
                state = tuple(batch[state_key(k)][:, 0].transpose(0, 1).contiguous()
                              for k in ("recurrent_state_h", "recurrent_state_c"))
                return head_(lstm_(embed_(x), state)[0])

        gamma = config.gamma
        lmbda = getattr(config, "lmbda", 0.0)  # recurrent DQN's multi-step (TD(λ)) target

        def dqn_loss():
            q = q_values(net, obs, lambda k: k).gather(-1, action)
            with torch.no_grad():
                best = q_values(net, next_obs, lambda k: ("next", k)).argmax(-1, keepdim=True)
                q_next = q_values(target_net, next_obs, lambda k: ("next", k)).gather(-1, best)
                # TD(λ) along each slice, cut and bootstrapped where the sampler marks its
                # end ``done``: the project's own estimator (the native kernel on CPU)
                td_target = (td_lambda_return(gamma, lmbda, q_next, reward,
                                              batch["next", "done"], batch[done_key])
                             if lmbda else reward + gamma * not_done * q_next)
            error = F.smooth_l1_loss(q, td_target, reduction="none")
            if algorithm == "recurrent_dqn":
                return (error * mask).sum() / mask.sum()
            return error.mean()

        steps = [0]
        period = _hard_update_interval(algorithm, config) + 1  # HardUpdate's copy period

        def hard_update():
            steps[0] += 1
            if steps[0] % period == 0:
                target_net.load_state_dict(net.state_dict())

        params = list(net.parameters())
        optim = adam(params, config.lr, config)
        return Case(dqn_loss, params, [optim], config.max_grad_norm, hard_update)

    # ddpg
    actor, critic, _ = built
    actor_net, critic_net = actor[0].module, critic.module
    tanh = actor[1]
    low, high = tanh.action_low, tanh.action_high
    target_actor = copy.deepcopy(actor_net).requires_grad_(False)
    target_critic = copy.deepcopy(critic_net).requires_grad_(False)
    action, next_obs = batch["action"], batch["next", "observation"]
    gamma = config.gamma

    def policy(network, x):
        return low + (high - low) * (torch.tanh(network(x)) + 1) / 2

    def ddpg_loss():
        with torch.no_grad():
            next_q = target_critic(torch.cat([next_obs, policy(target_actor, next_obs)], -1))
            td_target = reward + gamma * not_done * next_q
        loss_value = (critic_net(torch.cat([obs, action], -1)) - td_target).pow(2).mean()
        frozen = {k: v.detach() for k, v in critic_net.named_parameters()}
        q_pi = torch.func.functional_call(critic_net, frozen,
                                          (torch.cat([obs, policy(actor_net, obs)], -1),))
        return loss_value - q_pi.mean()

    def soft_update():
        with torch.no_grad():
            for target, online in ((target_actor, actor_net), (target_critic, critic_net)):
                torch._foreach_lerp_(list(target.parameters()), list(online.parameters()),
                                     config.tau)

    actor_params, critic_params = list(actor_net.parameters()), list(critic_net.parameters())
    optims = [adam(critic_params, config.critic_lr, config),
              adam(actor_params, config.actor_lr, config)]
    return Case(ddpg_loss, actor_params + critic_params, optims, None, soft_update)


# --------------------------------------------------------------------------- benchmarks


class Loss(RLBenchmark):
    """torchrl losses of the reference algorithms: forward, + backward, full update."""

    param_names = (*RLBenchmark.param_names, "algorithm", "batch")
    params = (*RLBenchmark.params, list(TASKS), BATCHES)
    number = 1
    repeat = (6, 12, 2.0)  # batch 4096 (~0.1 s samples): 4-8 samples gave 10-70% IQRs
    rounds = 1
    warmup_time = 0.0  # setup warms up
    timeout = 180  # setup_cache collects 5 x 4096 frames: ~10-20 s
    timer = SampleClock()
    setup_cache = staticmethod(make_batches)
    #: what the suite's dry run (tests/test_bench_suite.py) uses instead: batch 256 only
    smoke_cache = staticmethod(functools.partial(make_batches, frames=min(BATCHES)))
    make_case = staticmethod(torchrl_case)

    def setup(self, batches, device, algorithm, batch):
        from harness.devices import synchronize

        super().setup(device)
        if algorithm not in batches:
            raise NotImplementedError(f"{algorithm} is not available here")
        self.sync = synchronize
        data = rows(batches[algorithm], batch).to(self.device)
        self.case = self.make_case(algorithm, data, self.device)
        self.case.update()  # warm-up: optimiser state, lazy modules
        # calls per sample: ~50 ms of forwards (the cheapest operation; updates take longer)
        self.calls = self.timer.units = calls_for(self.forward, sample_s=0.05)

    def forward(self):
        self.case.forward()
        self.sync(self.device)

    def time_forward(self, batches, device, algorithm, batch):
        for _ in range(self.calls):
            self.case.forward()
        self.sync(self.device)

    def time_backward(self, batches, device, algorithm, batch):
        for _ in range(self.calls):
            self.case.backward()
        self.sync(self.device)

    def time_update(self, batches, device, algorithm, batch):
        for _ in range(self.calls):
            self.case.update()
        self.sync(self.device)


class HandLoss(Loss):
    """The floor: the same losses hand-written in torch on the same networks."""

    make_case = staticmethod(hand_case)


#: benchmark -> its floor in this module; rows pair up on the parameters both share
FLOORS = {f"Loss.time_{op}": f"HandLoss.time_{op}" for op in ("forward", "backward", "update")}
