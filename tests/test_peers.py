"""The implementation axis: Stable-Baselines3 / sb3-contrib run the reference algorithms' specs
(``harness.peers``) with the same settings, budget, seeds and evaluation, and their records sit
beside rlgauge's in the same tables."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

from harness import peers, report, results, runs
from harness.errors import UsageError

pytest.importorskip("stable_baselines3", reason="the peers extra: pip install -e .[peers]")

#: a few hundred frames of each algorithm the peer has, on the gymnasium task it is tuned for
SMOKE = {
    "ppo": ("cartpole", dict(frames=512, eval_episodes=2)),
    "dqn": ("cartpole", dict(frames=600, train_freq=100, gradient_steps=8,
                             init_random_frames=200, eval_episodes=2, hidden=(32, 32))),
    "ddpg": ("pendulum", dict(frames=400, init_random_frames=200, eval_episodes=2,
                              max_episode_steps=50, hidden=(32, 32))),
    "recurrent_ppo": ("cartpole-novel", dict(frames=512, num_epochs=2, eval_episodes=2,
                                             max_episode_steps=100)),
}
LOSSES = {"ppo": {"loss_objective", "loss_critic"}, "dqn": {"loss"},
          "ddpg": {"loss_actor", "loss_value"}, "recurrent_ppo": {"loss_objective", "loss_critic"}}


def _spec(algorithm, impl="sb3", **overrides):
    task, smoke = SMOKE[algorithm]
    return runs.spec_for(algorithm=algorithm, backend="gymnasium", task=task, impl=impl,
                         overrides={**smoke, **overrides})


@pytest.mark.parametrize("algorithm", sorted(SMOKE))
def test_sb3_smoke_runs_record_what_rlgauge_records(algorithm):
    """An SB3 run records rlgauge's metrics (names, units, context) with ``impl`` = sb3 --
    all but the env / policy split, which SB3 cannot report -- and the run's finishing rows.
    Fails if the peer's records are shaped or named differently (the tables would drop them)."""
    _, sb3 = runs.train(_spec(algorithm))
    records = sb3.records
    assert set(records["impl"]) == {"sb3"} and set(records["algorithm"]) == {algorithm}
    assert (records["status"] == "ok").all(), records[records["status"] != "ok"]
    metrics = set(records["metric"])
    shared = {"episode_return", "elapsed_s", "update_time_s", "wall_time_s", "collect_fps",
              "train_fps", "final_return", "peak_rss_mb", "threshold"}
    assert shared | LOSSES[algorithm] <= metrics, shared | LOSSES[algorithm] - metrics
    assert not {"env_time_s", "policy_time_s"} & metrics
    units = records.drop_duplicates("metric").set_index("metric")["unit"]
    assert units["train_fps"] == "frames/s" and units["final_return"] == "return"


def test_sb3_models_get_the_configs_settings():
    """The Config -> SB3 mapping of the module docstring. Fails if a setting is dropped or
    mistranslated (e.g. n_steps per env, the target copy per update phase, the noise scale)."""
    from stable_baselines3.common.noise import NormalActionNoise

    from harness import backends

    def model(algorithm, **overrides):
        resolved = runs.resolve(_spec(algorithm, **overrides))
        spec = backends.get_task("gymnasium", resolved.config.task)
        venv = peers._vec_env(spec, resolved.config, seed=0)
        return resolved.config, peers.build(algorithm, resolved.config, venv)

    config, ppo = model("ppo", frames=100_000)
    assert (ppo.n_steps, ppo.batch_size, ppo.n_epochs) == (32, 256, 20)
    assert (ppo.gamma, ppo.gae_lambda, ppo.ent_coef, ppo.vf_coef) == (0.98, 0.8, 0.0, 0.5)
    assert ppo.clip_range(1.0) == pytest.approx(0.2) and ppo.clip_range(0.5) == pytest.approx(0.1)
    assert ppo.learning_rate(0.25) == pytest.approx(2.5e-4)  # linear from 1e-3 to 0
    assert ppo.policy.net_arch == dict(pi=[64, 64], vf=[64, 64])
    assert ppo.policy.activation_fn is torch.nn.Tanh
    _, constant = model("ppo", anneal_lr=False)
    assert constant.clip_range(0.1) == pytest.approx(0.2) and constant.learning_rate == 1e-3
    _, dqn = model("dqn", train_freq=256, gradient_steps=128, target_update_interval=128)
    assert dqn.target_update_interval == 256 and dqn.gradient_steps == 128  # a copy a phase
    assert (dqn.learning_starts, dqn.batch_size, dqn.buffer_size) == (200, 64, 100_000)
    assert dqn.exploration_final_eps == 0.04 and dqn.exploration_fraction == 0.16
    _, ddpg = model("ddpg", frames_per_batch=10, updates_per_frame=1.0)
    assert ddpg.train_freq.frequency == 10 and ddpg.gradient_steps == 10
    assert ddpg.learning_starts == 200 and ddpg.tau == 0.005 and ddpg.gamma == 0.98
    assert isinstance(ddpg.action_noise, NormalActionNoise)
    assert ddpg.action_noise._sigma.tolist() == [0.1]  # half the action range, as rlgauge's


@pytest.mark.parametrize(("algorithm", "override", "field"), [
    ("dqn", {"prioritized": True}, "prioritized"),
    ("dqn", {"loss_function": "l2"}, "loss_function"),
    ("ddpg", {"sigma_end": 0.05}, "sigma_end"),
    ("ddpg", {"critic_lr": 3e-4}, "critic_lr"),
    ("ppo", {"obs_norm_steps": 100}, "obs_norm_steps"),
    ("ppo", {"critic_loss": "smooth_l1"}, "critic_loss"),
])
def test_sb3_refuses_settings_it_cannot_follow(algorithm, override, field):
    with pytest.raises(UsageError, match=f"impl sb3 cannot follow {field}="):
        runs.resolve(_spec(algorithm, **override))


def test_impl_axis_rejects_what_has_no_peer():
    with pytest.raises(UsageError, match="unknown implementation 'cleanrl'; valid: rlgauge, sb3"):
        runs.resolve(_spec("ppo", impl="cleanrl"))
    with pytest.raises(UsageError, match="recurrent_dqn has no Stable-Baselines3"):
        peers.check("sb3", "recurrent_dqn", "gymnasium")
    with pytest.raises(UsageError, match="gymnasium tasks only"):
        peers.check("sb3", "ppo", "dm_control")
    from harness import matrix

    specs, skips = matrix.expand(matrix.Grid(("ppo", "recurrent_dqn"), ("gymnasium",),
                                             tasks=("cartpole",), impls=("rlgauge", "sb3")))
    assert {(s.algorithm, s.impl) for s in specs} == {
        ("ppo", "rlgauge"), ("ppo", "sb3"), ("recurrent_dqn", "rlgauge")}
    assert [s.spec.impl for s in skips] == ["sb3"] and "no Stable-Baselines3" in skips[0].reason
    assert len({s.key for s in specs}) == 3  # the implementation is part of a cell's identity
    with pytest.raises(UsageError, match="unknown implementation"):
        matrix.expand(matrix.Grid(("ppo",), ("gymnasium",), impls=("nope",)))


def test_sb3_evaluation_follows_rlgauges_protocol():
    """The same deterministic policy scores the same final return under ``peers.evaluate`` and
    rlgauge's ``Run.evaluate`` (sub-envs seeded seed + 10000 + i, first episode each, cut
    at max_episode_steps). Fails if the peer's evaluation seeds, counts or cuts differently."""
    import numpy as np

    from harness import backends, training
    from reference_impls import ppo

    class AlwaysLeft:  # an SB3-like model whose deterministic action is 0
        def predict(self, obs, **_):
            return np.zeros(len(obs), dtype=np.int64), None

    config = ppo.config_for("gymnasium", "cartpole", eval_episodes=20, max_episode_steps=50,
                            seed=4)
    theirs = peers.evaluate(AlwaysLeft(), backends.get_task("gymnasium", "cartpole"), config)

    def left(td):
        return td.set("action", torch.zeros(td.shape, dtype=torch.int64))

    env = ppo.make_env(config.replace(seed=config.seed + 10_000, num_envs=16))
    try:  # what Run.evaluate does
        ours = training.evaluate(env, left, config.eval_episodes, config.max_episode_steps)
    finally:
        env.close()
    assert theirs == pytest.approx(ours)
    assert 8.0 <= theirs <= 12.0  # CartPole pushed left falls within ~10 steps


def test_report_puts_the_implementations_side_by_side():
    """A cell run by both: the peers table gives each one's frames/s and return and the ratio
    rlgauge / peer with its interval. Fails if peer rows are pooled with rlgauge's or dropped."""
    def cell(impl, fps, seed):
        rows = [{"metric": "train_fps", "value": fps, "unit": "frames/s"},
                {"metric": "wall_time_s", "value": 1e5 / fps, "unit": "s"},
                {"metric": "final_return", "value": 500.0, "unit": "return"}]
        return results.make_records(rows, algorithm="ppo", impl=impl, backend="gymnasium",
                                    task="cartpole", device="cpu", num_envs=8, seed=seed)

    frame = pd.concat([cell("rlgauge", f, s) for s, f in enumerate((4000, 4100, 3900))]
                      + [cell("sb3", f, s) for s, f in enumerate((3700, 3650, 3750))],
                      ignore_index=True)
    table = report.peers_table(frame)
    fps = table[table["metric"] == "train_fps"].iloc[0]
    assert fps["rlgauge / peer"] == f"{4000 / 3700:.3f}" and fps["verdict"] == "faster"
    text = report.markdown_report(frame)
    assert "ppo (sb3)" in text and "Implementations side by side" in text


def test_cli_train_with_the_peer_and_bad_impl(tmp_path):
    argv = [sys.executable, "-m", "harness", "train", "ppo", "--frames", "512", "--set",
            "eval_episodes=1", "--out", str(tmp_path)]
    proc = subprocess.run([*argv, "--impl", "sb3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ppo (sb3) on gymnasium/cartpole" in proc.stdout
    (path,) = tmp_path.glob("ppo@sb3-gymnasium-cartpole-cpu-s0-*.csv")
    assert set(results.load(path)["impl"]) == {"sb3"}
    bad = subprocess.run([*argv, "--impl", "cleanrl"], capture_output=True, text=True,
                         timeout=300)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "valid: rlgauge, sb3" in lines[0]
