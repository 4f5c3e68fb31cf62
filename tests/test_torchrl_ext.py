"""torchrl's C++ extension works in the test environment: prioritized replay really samples."""

from __future__ import annotations

import torch

from harness import torchrl_ext


def test_torchrl_extension_loads():
    st = torchrl_ext.status()
    assert st.ok, f"torchrl extension broken here: {st.detail} (run python -m harness build-ext)"


def test_prioritized_replay_samples_by_priority_and_updates():
    from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer

    torch.manual_seed(0)
    rb = PrioritizedReplayBuffer(alpha=1.0, beta=1.0, storage=LazyTensorStorage(4))
    rb.extend(torch.arange(4))
    # priorities 1, 1, 1, 97 with alpha=1: item 3 is drawn with probability 97/100
    rb.update_priority(torch.arange(4), torch.tensor([1.0, 1.0, 1.0, 97.0]))
    sample, info = rb.sample(2000, return_info=True)
    share = (sample == 3).float().mean().item()
    assert abs(share - 0.97) < 0.02, share
    # importance weights (N p_i)^-beta, normalised by their max: 1 for the rarest items and
    # (4 * 0.01) / (4 * 0.97) = 1/97 for item 3
    w = info["priority_weight"]
    assert torch.allclose(w[sample == 3], torch.tensor(1 / 97), rtol=1e-3)
    assert torch.allclose(w[sample != 3], torch.tensor(1.0), rtol=1e-3)
    # after lowering item 3's priority to that of the others, draws become uniform
    rb.update_priority(torch.tensor([3]), torch.tensor([1.0]))
    sample = rb.sample(4000)
    counts = torch.bincount(sample, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.full((4,), 0.25), atol=0.03), counts


def test_cache_key_names_torch_and_torchrl():
    key = torchrl_ext.cache_key()
    assert torch.__version__ in key and "torchrl-0.14" in key
