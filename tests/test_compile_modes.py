"""The algorithms' side of the compile axis and of the shared gradient step
(``harness.training``: ``compiled``, ``CompileClock``, ``gradient_step``, ``adam``): every
reference algorithm trains under ``compile`` and records its compile time apart from its
steady speed; ``compile+cudagraphs`` runs on a GPU (skipped without one) and is refused on the
CPU. The plumbing (specs, CLI, matrix, report) is tests/test_compile_axis.py."""

from __future__ import annotations

import importlib

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from harness import training
from harness.errors import UsageError

#: tiny runs of each algorithm (a few batches; enough that the update runs after any warm-up)
TINY = {
    "ppo": dict(backend="gymnasium", task="cartpole", frames=512, num_envs=2,
                frames_per_batch=128, minibatch_size=64, num_epochs=2, eval_episodes=1),
    "dqn": dict(backend="gymnasium", task="cartpole", frames=512, train_freq=128,
                gradient_steps=4, init_random_frames=128, batch_size=32, hidden=(32, 32),
                eval_episodes=1),
    "ddpg": dict(backend="gymnasium", task="pendulum", frames=400, frames_per_batch=100,
                 init_random_frames=100, batch_size=32, hidden=(32, 32), eval_episodes=1,
                 max_episode_steps=50),
    "recurrent_ppo": dict(backend="probe", task="memory", num_envs=8, frames=192,
                          frames_per_batch=96, num_epochs=2, minibatch_size=96,
                          lstm_hidden=8, hidden=(8,), eval_episodes=1),
    "recurrent_dqn": dict(backend="probe", task="memory", num_envs=8, frames=288,
                          frames_per_batch=96, updates_per_batch=2, learning_starts=0,
                          buffer_size=480, slice_len=3, num_slices=8, burn_in=0, embed=8,
                          lstm_hidden=8, hidden=(8,), eval_episodes=1),
}


class _Loss(nn.Module):
    """A loss module with two ``loss*`` entries and one that is not a loss."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(2.0))
        self.b = nn.Parameter(torch.tensor(-3.0))

    def forward(self, td):
        x = td["x"]
        return TensorDict(loss_a=(self.a * x).sum(), loss_b=(self.b * x).sum() * 10,
                          diagnostic=(self.a * 1000).sum())


def test_gradient_step_backpropagates_the_loss_entries_only_and_steps_every_optimizer():
    loss = _Loss()
    opts = [torch.optim.SGD([loss.a], lr=0.1), torch.optim.SGD([loss.b], lr=0.1)]
    out = training.gradient_step(loss, opts, TensorDict(x=torch.ones(3)))
    # d/da = sum(x) = 3, d/db = 30; "diagnostic" is not a loss and adds nothing
    assert loss.a.item() == pytest.approx(2.0 - 0.3)
    assert loss.b.item() == pytest.approx(-3.0 - 3.0)
    assert loss.a.grad is None and loss.b.grad is None  # dropped after the step
    assert not out["loss_a"].requires_grad


def test_gradient_step_clips_the_gradient_norm():
    loss = _Loss()
    opt = torch.optim.SGD(loss.parameters(), lr=1.0)
    training.gradient_step(loss, opt, TensorDict(x=torch.ones(3)), max_grad_norm=1.0)
    # raw gradient (3, 30): clipped to norm 1, i.e. (3, 30) / |(3, 30)|
    norm = (3.0 ** 2 + 30.0 ** 2) ** 0.5
    assert loss.a.item() == pytest.approx(2.0 - 3.0 / norm, rel=1e-5)
    assert loss.b.item() == pytest.approx(-3.0 - 30.0 / norm, rel=1e-5)


def test_adam_is_fused_with_a_tensor_lr_unless_asked_otherwise():
    from reference_impls import ppo

    p = [nn.Parameter(torch.zeros(2))]
    fused = training.adam(p, 1e-3, ppo.Config())
    assert fused.defaults["fused"] and isinstance(fused.param_groups[0]["lr"], torch.Tensor)
    plain = training.adam(p, 1e-3, ppo.Config(fused_adam=False))
    assert not plain.defaults["fused"] and plain.param_groups[0]["lr"] == 1e-3


def test_eager_mode_returns_the_function_itself():
    def fn(x):
        return x

    assert training.compiled(fn, "eager", training.CompileClock()) is fn


def test_compiled_function_charges_compiling_calls_only():
    clock = training.CompileClock()

    def fn(x):
        return torch.tanh(x) * 2 + 1

    run = training.compiled(fn, "compile", clock, name="f")
    x = torch.randn(16)
    torch.testing.assert_close(run(x), fn(x))
    first = clock.seconds
    assert first > 0  # the first call compiled
    for _ in range(5):
        run(x)
    assert clock.seconds == first  # same shapes: no new graph, nothing charged
    run(torch.randn(3, 5))  # a new shape makes a new graph: charged
    assert clock.seconds > first


def test_cudagraphs_mode_is_refused_off_cuda():
    from reference_impls import ppo

    with pytest.raises(UsageError, match="compile\\+cudagraphs.*CUDA"):
        ppo.Config(compile="compile+cudagraphs")
    with pytest.raises(UsageError, match="unknown compile mode 'jit'"):
        ppo.Config(compile="jit")


@pytest.mark.parametrize("algorithm", sorted(TINY))
def test_every_algorithm_trains_compiled_and_records_its_compile_time(algorithm):
    module = importlib.import_module(f"reference_impls.{algorithm}")
    records = module.train(module.Config(compile="compile", **TINY[algorithm])).records
    assert (records["compile"] == "compile").all() and (records["status"] == "ok").all()
    value = records.set_index("metric")["value"]
    assert value["compile_time_s"] > 0
    assert value["compile_time_s"] < value["wall_time_s"]
    steady = value["train_fps"] * value["wall_time_s"] / (value["wall_time_s"]
                                                         - value["compile_time_s"])
    assert value["steady_fps"] == pytest.approx(steady, rel=1e-6)
    assert "final_return" in value.index


def test_eager_runs_record_zero_compile_time():
    from reference_impls import ppo

    value = ppo.train(ppo.Config(**TINY["ppo"])).records.set_index("metric")["value"]
    assert value["compile_time_s"] == 0
    assert value["steady_fps"] == pytest.approx(value["train_fps"])


@pytest.mark.gpu
@pytest.mark.parametrize("algorithm", ["ppo", "dqn", "ddpg"])
@pytest.mark.parametrize("mode", ["compile", "compile+cudagraphs"])
def test_algorithms_train_compiled_on_cuda(algorithm, mode, cuda_device):
    module = importlib.import_module(f"reference_impls.{algorithm}")
    records = module.train(module.Config(compile=mode, device=cuda_device,
                                         **TINY[algorithm])).records
    assert (records["status"] == "ok").all()
    value = records.set_index("metric")["value"]
    assert value["compile_time_s"] > 0 and torch.isfinite(torch.tensor(value["final_return"]))
