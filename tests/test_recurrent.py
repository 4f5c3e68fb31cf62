"""Recurrent DQN and recurrent PPO: they remember what a memoryless learner cannot, their sequence
plumbing replays collection exactly, they are deterministic on CPU and run from the CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torchrl.collectors import Collector
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp
from torchrl.modules import set_recurrent_mode

from harness.training import add_primers, evaluate
from reference_impls import ppo, recurrent_dqn, recurrent_ppo

#: envs of the greedy evaluation: the mean final-step reward of a memoryless policy is 0.5 up
#: to a binomial standard error of sqrt(0.25 / 512) = 0.022
EVAL_ENVS = 512

#: memory probe (3-step episodes): whole episodes as slices / rows of 12 steps (4 episodes)
DQN_PROBE = dict(backend="probe", task="memory", num_envs=8, frames=1200, frames_per_batch=96,
                 updates_per_batch=8, learning_starts=0, buffer_size=2400, slice_len=3,
                 num_slices=32, burn_in=0, lr=5e-3, eps_end=0.05, exploration_fraction=0.5,
                 target_update_interval=50, embed=16, lstm_hidden=16, hidden=(16,),
                 eval_episodes=0)
PPO_PROBE = dict(backend="probe", task="memory", num_envs=8, frames=960, frames_per_batch=96,
                 num_epochs=6, minibatch_size=96, lr=1e-2, anneal_lr=False, lstm_hidden=16,
                 hidden=(16,), eval_episodes=0)


def _final_reward(module, config, policy) -> float:
    """Mean final-step reward of ``policy``'s deterministic actions over EVAL_ENVS episodes of the
    memory probe (its only reward is the final step's, so the return is that reward)."""
    env = module.make_env(config.replace(num_envs=EVAL_ENVS, seed=config.seed + 1))
    module.add_primers(env, policy)
    return evaluate(env, policy, EVAL_ENVS, max_steps=3)


# --------------------------------------------------------------------------- memory probe


def test_recurrent_dqn_remembers_the_cue(device):
    config = recurrent_dqn.Config(device=str(device), **DQN_PROBE)
    run = recurrent_dqn.train(config)
    reward = _final_reward(recurrent_dqn, config, run.modules["qvalue"])
    # with memory the cue seen at t = 0 decides the action at t = 2: final reward 1
    assert reward >= 0.95, reward


def test_dqn_without_memory_stays_at_chance():
    config = recurrent_dqn.Config(recurrent=False, **DQN_PROBE)
    run = recurrent_dqn.train(config)
    reward = _final_reward(recurrent_dqn, config, run.modules["qvalue"])
    # memoryless: the last observation is 0 whatever the cue, so the greedy action is one fixed
    # arm and matches the cue half the time: 0.5, the best any memoryless policy can do
    assert abs(reward - 0.5) < 0.1, reward


def test_reference_dqn_stays_at_chance():
    dqn = pytest.importorskip("reference_impls.dqn")
    config = dqn.Config(backend="probe", task="memory", num_envs=8, frames=1200, train_freq=96,
                        gradient_steps=8, batch_size=64, init_random_frames=96, lr=5e-3,
                        target_update_interval=50, eps_end=0.05, exploration_fraction=0.5,
                        hidden=(16,), eval_episodes=0)
    run = dqn.train(config)
    env = dqn.make_env(config.replace(num_envs=EVAL_ENVS, seed=1))
    reward = evaluate(env, run.modules["qvalue"], EVAL_ENVS, max_steps=3)
    # the feed-forward DQN of reference_impls.dqn: 0.5 at best, as any memoryless policy
    assert abs(reward - 0.5) < 0.1, reward


def test_recurrent_ppo_remembers_the_cue(device):
    config = recurrent_ppo.Config(device=str(device), **PPO_PROBE)
    run = recurrent_ppo.train(config)
    reward = _final_reward(recurrent_ppo, config, run.modules["actor"])
    # with memory: final reward 1 (the deterministic action is the cue's)
    assert reward >= 0.95, reward


def test_ppo_without_memory_stays_at_chance():
    config = ppo.Config(backend="probe", task="memory", num_envs=8, frames=960,
                        frames_per_batch=96, num_epochs=6, minibatch_size=96, lr=1e-2,
                        anneal_lr=False, hidden=(16,), eval_episodes=0)
    run = ppo.train(config)
    env = ppo.make_env(config.replace(num_envs=EVAL_ENVS, seed=1))
    reward = evaluate(env, run.modules["actor"], EVAL_ENVS, max_steps=3)
    # memoryless: 0.5 at best (see the DQN case)
    assert abs(reward - 0.5) < 0.1, reward


# --------------------------------------------------------------------------- sequence plumbing


def _collect(module, config, policy, frames):
    env = module.make_env(config)
    module.add_primers(env, policy)
    collector = Collector(env, policy, frames_per_batch=frames, total_frames=frames,
                          auto_register_policy_transforms=False)
    batch = next(iter(collector))
    collector.shutdown()
    return batch


def test_recurrent_ppo_replays_collection_in_recurrent_mode():
    # several short episodes per row: the LSTM must restart at every "is_init" inside a row
    config = recurrent_ppo.Config(**{**PPO_PROBE, "lstm_hidden": 8, "hidden": (8,)})
    env = recurrent_ppo.make_env(config)
    actor, critic, policy = recurrent_ppo.make_modules(config, env)
    batch = _collect(recurrent_ppo, config, policy, 96)
    assert batch["is_init"][:, 1:].any()
    with torch.no_grad(), set_recurrent_mode(True):
        replay = actor.get_dist(batch.clone()).log_prob(batch["action"])
        recurrent_ppo.make_loss(config, actor, critic).value_estimator(batch)
    # the same log-probabilities as step by step during collection (stored states, resets)
    torch.testing.assert_close(replay, batch["action_log_prob"], rtol=1e-4, atol=1e-5)
    # GAE's next-step pass starts from the stored next states: V(s_{t+1}) seen from step t is
    # V(s_{t+1}) seen from step t + 1, wherever the episode goes on
    value, next_value = batch["state_value"], batch["next", "state_value"]
    going_on = ~batch["next", "done"][:, :-1]
    torch.testing.assert_close(next_value[:, :-1][going_on], value[:, 1:][going_on],
                               rtol=1e-4, atol=1e-5)


def test_recurrent_dqn_sequences_replay_collection_and_keep_next_states():
    config = recurrent_dqn.Config(**{**DQN_PROBE, "lstm_hidden": 8, "hidden": (8,),
                                     "slice_len": 4})
    env = recurrent_dqn.make_env(config)
    qnet, loss_qnet = recurrent_dqn.make_modules(config, env)
    batch = _collect(recurrent_dqn, config, qnet, 96)
    buffer = recurrent_dqn.make_buffer(config)
    buffer.extend(batch.reshape(-1))
    sequences = recurrent_dqn.to_sequences(buffer.sample(), config.slice_len)
    # [slices, slice_len]: span=True may draw an empty slice (start just past the end), dropped
    assert 0 < sequences.shape[0] <= config.num_slices
    assert sequences.shape[1] == config.slice_len
    mask = sequences["collector", "mask"]
    # slices stay within one trajectory; padding repeats the last real step
    traj = sequences["collector", "traj_ids"]
    assert (traj == traj[:, :1]).all()
    stored_next = sequences["next", "recurrent_state_h"].clone()
    with torch.no_grad(), set_recurrent_mode(True):
        out = loss_qnet(sequences.clone())
    # Q-values from the stored state at each slice start = Q-values while collecting
    torch.testing.assert_close(out["action_value"][mask], sequences["action_value"][mask],
                               rtol=1e-4, atol=1e-5)
    # the loss network leaves the stored next states for the double-DQN next-step pass, which
    # (as DQNLoss does it: step_mdp, then the network over the shifted slice) finds the
    # Q-values of step t + 1 again
    assert torch.equal(out["next", "recurrent_state_h"], stored_next)
    with torch.no_grad(), set_recurrent_mode(True):
        following = loss_qnet(step_mdp(out, keep_other=False))["action_value"]
    both = mask[:, 1:]
    torch.testing.assert_close(following[:, :-1][both], out["action_value"][:, 1:][both],
                               rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- records, seeds


@pytest.mark.parametrize("module, overrides, loss", [
    (recurrent_dqn, DQN_PROBE, "loss"),
    (recurrent_ppo, PPO_PROBE, "loss_objective"),
], ids=["recurrent_dqn", "recurrent_ppo"])
def test_recurrent_records_returns_losses_and_time_split(module, overrides, loss):
    config = module.Config(**{**overrides, "frames": 480})
    records = module.train(config).records
    metrics = set(records["metric"])
    for metric in ("episode_return", loss, "env_time_s", "policy_time_s", "update_time_s",
                   "collect_fps", "train_fps", "wall_time_s"):
        assert metric in metrics, metric
    assert (records["algorithm"] == module.ALGORITHM).all() and (records["status"] == "ok").all()
    split = records.set_index("metric")["value"]
    assert split["env_time_s"] > 0 and split["policy_time_s"] > 0 and split["update_time_s"] > 0
    # one reward of 0 or 1 per 3-step episode
    returns = records[records["metric"] == "episode_return"]["value"]
    assert returns.between(0.0, 1.0).all()


@pytest.mark.parametrize("module, overrides", [
    (recurrent_dqn, dict(updates_per_batch=4, learning_starts=128, num_slices=8, embed=16,
                         lstm_hidden=16, hidden=(16,))),
    (recurrent_ppo, dict(num_epochs=2, minibatch_size=64, lstm_hidden=16, hidden=(16,))),
], ids=["recurrent_dqn", "recurrent_ppo"])
def test_recurrent_same_seed_same_returns_on_cpu(module, overrides):
    config = module.config_for("gymnasium", "cartpole-novel", frames=512, num_envs=4, seed=3,
                               frames_per_batch=128, eval_episodes=4, max_episode_steps=100,
                               **overrides)
    first, second = (module.train(config).records for _ in range(2))
    cols = ["metric", "frames", "value"]
    keep = ["episode_return", "loss", "loss_objective", "final_return"]
    learned = first["metric"].isin(keep)
    assert learned.sum() > 3
    assert first[learned][cols].reset_index(drop=True).equals(
        second[second["metric"].isin(keep)][cols].reset_index(drop=True))


# --------------------------------------------------------------------------- real tasks, CLI


@pytest.mark.parametrize("module, task, overrides", [
    (recurrent_dqn, "cartpole-novel", dict(learning_starts=128, updates_per_batch=2,
                                           num_slices=8)),
    (recurrent_ppo, "cartpole-novel", dict(num_epochs=1, lstm_hidden=32)),
    (recurrent_ppo, "pendulum", dict(num_epochs=1, lstm_hidden=32, shared_lstm=True,
                                     chunk_len=16)),
], ids=["dqn-cartpole-novel", "ppo-cartpole-novel", "ppo-pendulum-shared-chunks"])
def test_recurrent_runs_on_gymnasium(module, task, overrides, sim_device):
    config = module.config_for("gymnasium", task, frames=256, num_envs=2, frames_per_batch=128,
                               eval_episodes=1, max_episode_steps=200, device=str(sim_device),
                               **overrides)
    records = module.train(config).records
    assert "final_return" in set(records["metric"])
    assert (records["status"] == "ok").all()


def test_recurrent_ppo_continuous_actor_finds_the_optimum(device):
    config = recurrent_ppo.Config(backend="probe", task="continuous", num_envs=8, frames=1024,
                                  frames_per_batch=128, num_epochs=8, minibatch_size=128,
                                  lr=5e-3, anneal_lr=False, lstm_hidden=16, hidden=(16,),
                                  eval_episodes=0, device=str(device))
    run = recurrent_ppo.train(config)
    env = recurrent_ppo.add_primers(recurrent_ppo.make_env(config), run.modules["actor"])
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        action = env.rollout(1, run.modules["actor"])["action"]
    # reward -(a - a*)^2 with a* = 0.3: the deterministic action must sit within 0.1 of a*
    assert (action - 0.3).abs().max() < 0.1, action


@pytest.mark.parametrize("algorithm", ["recurrent_ppo", "recurrent_dqn"])
def test_recurrent_cli_train_writes_results(algorithm, tmp_path):
    # one intra-op thread, as the in-process tests (conftest): torch's default thread pool on a
    # busy small machine made the LSTM backward passes ~15x slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "train", algorithm, "--backend", "gymnasium",
         "--task", "cartpole-novel", "--frames", "512", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob(f"{algorithm}-gymnasium-cartpole-novel-cpu-s0-*.csv"))
    assert len(files) == 1, list(tmp_path.iterdir())
    assert "final return" in proc.stdout


def test_recurrent_ppo_obs_norm_stays_finite_on_a_near_constant_component():
    # dm_control's cartpole-swingup starts every episode at cos(angle) = -1: torchrl 0.14.1's
    # VecNorm takes sqrt(E[x^2] - E[x]^2) of a float32 difference that rounds below 0 there
    # (NaN observations, then a MuJoCo PhysicsError); ObsNorm clamps it
    pytest.importorskip("dm_control")
    config = recurrent_ppo.config_for("dm_control", "cartpole-swingup", num_envs=8)
    env = recurrent_ppo.make_env(config)
    try:
        assert isinstance(recurrent_ppo._obs_norm(env), recurrent_ppo.ObsNorm)
        torch.manual_seed(0)
        data = env.rollout(30, break_when_any_done=False)
    finally:
        env.close()
    assert torch.isfinite(data["next", "observation"]).all()
    assert data["next", "observation"].abs().max() < 50  # normalised, eps-floored scale


def test_recurrent_ppo_env_building_warns_nothing(recwarn):
    # torchrl's "VecNorm ... is experimental" warning came back when the LSTM primers rebuilt
    # the transform chain after make_env; ObsNorm silences it about itself, wherever it joins
    config = recurrent_ppo.config_for("gymnasium", "cartpole-novel", num_envs=4)
    env = recurrent_ppo.make_env(config)
    try:
        _, _, policy = recurrent_ppo.make_modules(config, env)
        add_primers(env, policy)
        env.rollout(3, policy, break_when_any_done=False)
        frozen = recurrent_ppo.make_env(config, obs_norm=recurrent_ppo._obs_norm(env))
        frozen.close()
    finally:
        env.close()
    assert not [str(w.message) for w in recwarn if "experimental" in str(w.message)]
