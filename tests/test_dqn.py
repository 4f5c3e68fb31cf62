"""Double DQN learns the closed-form Q-values of the probe envs, its options (soft target updates,
prioritized replay) work, it is deterministic on CPU, and the CLI runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers import hard_copy_steps
from tensordict import TensorDict
from torchrl.data.replay_buffers.samplers import PrioritizedSampler

from harness.errors import UsageError
from reference_impls import dqn

# small batches, many updates per frame: the probes need few frames but exact values
PROBE = dict(backend="probe", num_envs=8, train_freq=8, gradient_steps=8, batch_size=64,
             init_random_frames=256, hidden=(64, 64), lr=1e-3, eval_episodes=0)
CARTPOLE = dict(backend="gymnasium", task="cartpole", num_envs=2, train_freq=32,
                gradient_steps=4, init_random_frames=128, hidden=(32, 32), max_episode_steps=200)


def _obs(values, device) -> TensorDict:
    obs = torch.as_tensor(values, dtype=torch.float32, device=device).reshape(-1, 1)
    return TensorDict({"observation": obs}, [obs.shape[0]])


def _q(run, values, device) -> torch.Tensor:
    with torch.no_grad():
        return run.modules["qvalue"](_obs(values, device))["action_value"]


@pytest.mark.probe_learning
def test_dqn_bandit_q_values_are_the_arm_means(device, learn_seed, margin):
    config = dqn.Config(task="bandit", frames=2048, device=str(device), seed=learn_seed,
                        **PROBE)
    run = dqn.train(config)
    td = run.modules["qvalue"](_obs([0.0], device))
    # one-step terminal episodes: the TD(0) target is the reward itself, Q(a) = mean_a
    expected = torch.tensor([0.2, 0.8], device=device)
    margin.within("Q(a) = arm means (0.2, 0.8)", td["action_value"].squeeze(0), expected,
                  atol=0.02)
    assert td["action"].item() == 1  # the greedy action is the better arm


@pytest.mark.probe_learning
def test_dqn_discount_probe_bootstraps_through_the_target_network(device, learn_seed, margin):
    gamma = 0.9
    config = dqn.Config(task="discount", gamma=gamma, frames=4096, target_update_interval=16,
                        device=str(device), seed=learn_seed, **PROBE)
    q = _q(dqn.train(config), [0.0, 1.0], device)
    # reward 0 then reward 1, then termination: Q(s1, .) = 1, Q(s0, .) = γ · max Q(s1, .) = γ
    expected = torch.tensor([[gamma, gamma], [1.0, 1.0]], device=device)
    margin.within("Q(s0) = γ, Q(s1) = 1", q, expected, atol=0.02)


@pytest.mark.probe_learning
def test_dqn_soft_target_learns_discounted_value_of_constant_reward(device, learn_seed, margin):
    gamma, horizon = 0.9, 10
    config = dqn.Config(task="constant-terminated", gamma=gamma, frames=4096,
                        target_update="soft", tau=0.05, device=str(device), seed=learn_seed,
                        **{**PROBE, "gradient_steps": 16, "lr": 3e-3})
    q = _q(dqn.train(config), range(horizon), device)
    # Q(t, .) = (1 - γ^(H-t)) / (1 - γ): constant reward 1 for the H - t remaining steps
    expected = torch.tensor([(1 - gamma ** (horizon - t)) / (1 - gamma) for t in range(horizon)],
                            device=device).unsqueeze(-1).expand_as(q)
    margin.within("Q(s0) = (1 - γ^H) / (1 - γ)", q[0], expected[0], rtol=0.05)  # start state
    margin.within("Q(t) for every t", q, expected, atol=0.25)  # every state, looser


@pytest.mark.probe_learning
def test_dqn_prioritized_replay_updates_priorities_and_learns(monkeypatch, learn_seed, margin):
    buffers = []

    def spy(config, loss):
        buffers.append(dqn_make_buffer(config, loss))
        return buffers[-1]

    dqn_make_buffer = dqn.make_buffer
    monkeypatch.setattr(dqn, "make_buffer", spy)
    config = dqn.Config(task="bandit", frames=1024, prioritized=True, seed=learn_seed, **PROBE)
    run = dqn.train(config)
    buffer = buffers[0]
    sampler = buffer.sampler
    assert isinstance(sampler, PrioritizedSampler)
    assert sampler.beta == pytest.approx(1.0)  # β annealed from 0.4 to 1 over the budget
    stored = len(buffer)
    assert stored == 1024
    priorities = torch.as_tensor([sampler._sum_tree[i] for i in range(stored)])
    # new transitions enter at the max priority seen; updated ones get (|δ| + eps)^α, which is
    # ~0 once the bandit's Q-values are learnt: most stored priorities must have moved
    margin.at_least("share of priorities below half the max",
                    (priorities < 0.5 * priorities.max()).float().mean(), 0.5)
    sample = buffer.sample()
    assert "priority_weight" in sample.keys() and (sample["priority_weight"] <= 1.0).all()
    q = _q(run, [0.0], "cpu").squeeze(0)
    margin.within("Q(a) = arm means (0.2, 0.8)", q, torch.tensor([0.2, 0.8]), atol=0.05)


def test_dqn_hard_target_copies_every_interval_gradient_steps():
    config = dqn.Config(backend="probe", task="bandit", target_update_interval=4, hidden=(8,))
    env = dqn.make_env(config)
    actor, _ = dqn.make_modules(config, env)
    loss, updater = dqn.make_loss(config, actor)
    # torchrl's HardUpdate copies on every (interval + 1)-th step; make_loss corrects for that
    assert hard_copy_steps(loss, updater) == [False, False, False, True] * 2
    env.close()


def test_dqn_smoke_records_returns_losses_and_time_split():
    config = dqn.Config(task="bandit", frames=1024, **PROBE)
    records = dqn.train(config).records
    metrics = set(records["metric"])
    for metric in ("episode_return", "loss", "epsilon", "env_time_s", "policy_time_s",
                   "update_time_s", "collect_fps", "train_fps", "wall_time_s"):
        assert metric in metrics, metric
    assert (records["algorithm"] == "dqn").all() and (records["status"] == "ok").all()
    split = records.set_index("metric")["value"]
    assert split["env_time_s"] > 0 and split["policy_time_s"] > 0 and split["update_time_s"] > 0
    # ε anneals linearly from 1 over 0.16 x 1024 frames, then stays at 0.04
    eps = records[records["metric"] == "epsilon"]["value"]
    assert eps.iloc[0] < 1.0 and eps.iloc[-1] == pytest.approx(0.04)
    # bandit episodes are one step: every batch's mean return lies between the arm means
    returns = records[records["metric"] == "episode_return"]["value"]
    assert ((returns >= 0.2 - 1e-6) & (returns <= 0.8 + 1e-6)).all()


def test_dqn_same_seed_same_returns_on_cpu():
    config = dqn.Config(frames=768, eval_episodes=2, seed=3, prioritized=True, **CARTPOLE)
    first, second = (dqn.train(config).records for _ in range(2))
    cols = ["metric", "frames", "value"]
    keys = ["episode_return", "loss", "final_return"]
    learned = first["metric"].isin(keys)
    assert (first["metric"] == "loss").sum() >= 5
    assert first[learned][cols].reset_index(drop=True).equals(
        second[second["metric"].isin(keys)][cols].reset_index(drop=True))


def test_dqn_smoke_runs_on_gymnasium_cartpole(sim_device):
    config = dqn.Config(frames=512, eval_episodes=2, device=str(sim_device), **CARTPOLE)
    values = dqn.train(config).records.groupby("metric")["value"].last()
    assert 1.0 <= values["final_return"] <= 200.0  # CartPole pays 1 per step, capped here
    assert values["collect_fps"] > 0 and values["train_fps"] > 0


def test_dqn_config_rejects_unknown_choices():
    with pytest.raises(UsageError, match="target_update must be one of hard, soft"):
        dqn.Config(target_update="polyak")
    with pytest.raises(UsageError, match="loss_function"):
        dqn.Config(loss_function="huber")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=300)


def test_dqn_cli_trains_cartpole_and_writes_results(tmp_path):
    proc = _cli("train", "dqn", "--backend", "gymnasium", "--task", "cartpole", "--frames",
                "600", "--set", "eval_episodes=2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    files = list(tmp_path.glob("dqn-gymnasium-cartpole-*.csv"))
    assert len(files) == 1, list(tmp_path.iterdir())
    assert "final return" in proc.stdout and str(files[0]) in proc.stdout


def test_dqn_cli_rejects_continuous_actions():
    proc = _cli("train", "dqn", "--task", "pendulum")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pendulum" in lines[0] and "discrete" in lines[0], lines[0]
