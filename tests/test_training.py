"""Training plumbing: episode-return tracking, overrides, summaries, timing sections."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from harness import runs, training
from harness.errors import UsageError


def _batch(reward, done):
    reward = torch.as_tensor(reward, dtype=torch.float32)
    done = torch.as_tensor(done, dtype=torch.bool)
    return TensorDict({"next": {"reward": reward.unsqueeze(-1), "done": done.unsqueeze(-1)}},
                      list(reward.shape))


def test_episode_returns_across_batches_match_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    tracker, running, expected, got = training.EpisodeReturns(), torch.zeros(3), [], []
    for _ in range(6):
        reward = torch.randn(3, 7, generator=g)
        done = torch.rand(3, 7, generator=g) < 0.2
        got.extend(tracker(_batch(reward, done)).tolist())
        for n in range(3):  # reference: accumulate step by step, emit at done
            for t in range(7):
                running[n] += reward[n, t]
                if done[n, t]:
                    expected.append(running[n].item())
                    running[n] = 0
    assert sorted(got) == pytest.approx(sorted(expected), abs=1e-5)


def test_episode_returns_constant_reward_horizon():
    tracker = training.EpisodeReturns()
    done = torch.zeros(2, 4, dtype=torch.bool)
    assert tracker(_batch(torch.ones(2, 4), done)).numel() == 0
    done[:, 1] = True  # episodes of 6 steps: 4 in the first batch, 2 in this one
    # constant reward 1 over a 6-step episode returns 6
    assert tracker(_batch(torch.ones(2, 4), done)).tolist() == [6.0, 6.0]


def test_resolve_rejects_bad_overrides_and_budgets():
    def resolve(**kw):
        return runs.resolve(runs.spec_for(**{"algorithm": "ppo", "backend": "probe",
                                             "task": "bandit", **kw}))

    with pytest.raises(UsageError, match="bad override 'colour=red'"):
        resolve(overrides=["colour=red"])
    with pytest.raises(UsageError, match="bad value 'fast' for lr"):
        resolve(overrides=["lr=fast"])
    with pytest.raises(UsageError, match="bad value 'fast' for lr"):  # typed, too
        resolve(overrides={"lr": "fast"})
    with pytest.raises(UsageError, match="--frames must be a positive"):
        resolve(frames=0)
    with pytest.raises(UsageError, match="unknown algorithm 'a2c'; valid: ppo"):
        resolve(algorithm="a2c")
    config = resolve(overrides=["hidden=32,32", "anneal_lr=false", "lr=1e-4"]).config
    assert config.hidden == (32, 32) and config.anneal_lr is False and config.lr == 1e-4
    typed = resolve(overrides={"hidden": (32, 32), "anneal_lr": False, "lr": 1e-4}).config
    assert typed == config
