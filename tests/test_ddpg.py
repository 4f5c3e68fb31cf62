"""DDPG learns the closed-form answer of the continuous probe, explores with either noise, is
deterministic on CPU, and runs on gymnasium and dm_control in-process and from the CLI."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import AdditiveGaussianModule, OrnsteinUhlenbeckProcessModule

from harness import results
from reference_impls import ddpg

#: continuous probe: one-step episodes from observation 0, reward -(a - 0.3)^2, a in [-1, 1]
PROBE = dict(backend="probe", task="continuous", num_envs=8, frames=2000, init_random_frames=800,
             frames_per_batch=40, updates_per_frame=0.5, batch_size=64, hidden=(64, 64),
             eval_episodes=0)
#: a few hundred frames of a real task: small networks, a short warm-up, one short evaluation
SMOKE = dict(frames=300, init_random_frames=100, hidden=(32, 32), batch_size=32,
             eval_episodes=1, max_episode_steps=100, log_interval=100)
METRICS = ("episode_return", "loss_actor", "loss_value", "env_time_s", "policy_time_s",
           "update_time_s", "collect_fps", "train_fps", "wall_time_s")
LEARNED = ["episode_return", "loss_actor", "loss_value", "final_return"]


@functools.cache
def _probe_run(device: str, seed: int):
    """One probe training run per device and seed, shared by the tests that inspect it."""
    return ddpg.train(ddpg.Config(device=device, seed=seed, **PROBE))


def _obs(n: int, device) -> TensorDict:
    return TensorDict({"observation": torch.zeros(n, 1, device=device)}, [n])


@pytest.mark.probe_learning
def test_ddpg_actor_finds_the_continuous_optimum(device, learn_seed, margin):
    actor = _probe_run(str(device), learn_seed).modules["actor"]
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        action = actor(_obs(1, device))["action"].item()
    # reward -(a - a*)^2 with a* = 0.3: the deterministic action must sit within 0.1 of a*
    margin.within("deterministic action vs a* = 0.3", action, 0.3, atol=0.1)


@pytest.mark.probe_learning
def test_ddpg_critic_learns_the_closed_form_q(device, learn_seed, margin):
    critic = _probe_run(str(device), learn_seed).modules["critic"]
    actions = torch.tensor([[-0.5], [0.0], [0.3], [0.6]], device=device)
    with torch.no_grad():
        q = critic(_obs(4, device).set("action", actions))["state_action_value"].squeeze(-1)
    # one-step episodes end in termination (no bootstrap): Q(s, a) = r(a) = -(a - 0.3)^2,
    # i.e. -0.64, -0.09, 0, -0.09 at these actions (warm-up actions are uniform on [-1, 1])
    expected = -((actions.squeeze(-1) - 0.3) ** 2)
    margin.within("Q(s, a) = -(a - 0.3)^2", q, expected, atol=0.03)


def test_ddpg_smoke_records_returns_losses_and_time_split():
    records = _probe_run("cpu", 0).records  # the learning tests' seed-0 run
    metrics = set(records["metric"])
    for metric in METRICS:
        assert metric in metrics, metric
    assert (records["algorithm"] == "ddpg").all() and (records["status"] == "ok").all()
    split = records.set_index("metric")["value"]
    for metric in ("env_time_s", "policy_time_s", "update_time_s", "collect_fps", "train_fps"):
        assert split[metric] > 0, metric
    # one-step episodes: every return is one reward -(a - 0.3)^2, in [-1.69, 0]
    returns = records[records["metric"] == "episode_return"]["value"]
    assert ((returns <= 0) & (returns >= -1.69)).all()
    # losses start after the warm-up (800 frames of 2000)
    losses = records[records["metric"] == "loss_value"]
    assert losses["frames"].min() > PROBE["init_random_frames"]


@pytest.mark.parametrize("noise", ddpg.NOISES)
def test_ddpg_noise_perturbs_only_exploring_actions(noise):
    """``noise`` picks its own module (``gaussian``: ``AdditiveGaussianModule``, ``ou``:
    ``OrnsteinUhlenbeckProcessModule``), which perturbs only exploring actions, inside the
    bounds. Fails if ``make_exploration`` swaps the two classes (or builds one for both)."""
    expected = {"gaussian": AdditiveGaussianModule, "ou": OrnsteinUhlenbeckProcessModule}[noise]
    config = ddpg.config_for("gymnasium", "pendulum", noise=noise, sigma=0.5, hidden=(16,))
    env = ddpg.make_env(config)
    actor, _ = ddpg.make_modules(config, env)
    policy, module = ddpg.make_exploration(config, env, actor)
    data = env.reset()
    with torch.no_grad():
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            clean = policy(data.clone())["action"]
        with set_exploration_type(ExplorationType.RANDOM):
            noisy = policy(data.clone())["action"]
    env.close()
    assert torch.equal(clean, actor(data.clone())["action"])  # evaluation: no noise
    assert not torch.equal(clean, noisy)
    assert (noisy.abs() <= 2.0).all()  # projected back into Pendulum's [-2, 2]
    assert type(module) is expected, (noise, type(module).__name__)


@pytest.mark.parametrize("noise", ddpg.NOISES)
def test_ddpg_smoke_runs_on_gymnasium_pendulum_with_each_noise(noise, sim_device):
    config = ddpg.config_for("gymnasium", "pendulum", noise=noise, device=str(sim_device),
                             **{**SMOKE, "frames": 400, "max_episode_steps": 200})
    records = ddpg.train(config).records
    metrics = set(records["metric"])
    # 400 frames = two 200-step Pendulum episodes; rewards lie in [-16.27, 0] per step
    assert {"episode_return", "loss_actor", "loss_value", "final_return"} <= metrics
    assert (records["status"] == "ok").all()
    returns = records[records["metric"] == "episode_return"]["value"]
    assert ((returns <= 0) & (returns >= -16.3 * 200)).all()


def test_ddpg_smoke_runs_on_dm_control_cartpole_balance(sim_device):
    config = ddpg.config_for("dm_control", "cartpole-balance", device=str(sim_device),
                             **SMOKE)
    records = ddpg.train(config).records
    assert {"loss_actor", "loss_value", "final_return"} <= set(records["metric"])
    assert (records["status"] == "ok").all()
    # dm_control rewards lie in [0, 1]: 100 evaluation steps return at most 100
    final = records.set_index("metric")["value"]["final_return"]
    assert 0 <= final <= 100


@pytest.mark.parametrize("noise", ddpg.NOISES)
def test_ddpg_same_seed_same_records_on_cpu(noise):
    config = ddpg.config_for("gymnasium", "pendulum", noise=noise, seed=3,
                             **{**SMOKE, "frames": 400, "max_episode_steps": 200})
    first, second = (ddpg.train(config).records for _ in range(2))
    cols = ["metric", "frames", "value"]
    a = first[first["metric"].isin(LEARNED)][cols].reset_index(drop=True)
    b = second[second["metric"].isin(LEARNED)][cols].reset_index(drop=True)
    assert len(a) == 9  # 2 episode returns, 2 losses at 200, 300, 400 frames, 1 final return
    assert a.equals(b)


def _rlgauge(*args, timeout=300):
    # one torch thread, as in-process (conftest): two threads on a busy 2-core machine spin
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_ddpg_cli_trains_on_dm_control_and_writes_results(tmp_path):
    proc = _rlgauge("train", "ddpg", "--backend", "dm_control", "--task", "cartpole-balance",
                    "--frames", "500", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob("ddpg-dm_control-cartpole-balance-cpu-s0-*.csv"))
    assert len(files) == 1, list(tmp_path.iterdir())
    records = results.load(files[0])
    assert {"final_return", "loss_value", "collect_fps"} <= set(records["metric"])


def test_ddpg_cli_rejects_discrete_task_in_one_line():
    proc = _rlgauge("train", "ddpg", "--task", "cartpole")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "continuous" in lines[0] and "cartpole" in lines[0], lines[0]
