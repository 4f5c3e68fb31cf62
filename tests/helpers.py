"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations


def hard_copy_steps(loss, updater, steps: int = 8) -> list[bool]:
    """After each of ``steps`` updater steps (the online network changed before each): is the
    target network a copy of the online one? ``loss`` holds both (torchrl's ``DQNLoss``)."""
    import torch

    online = loss.value_network_params.flatten_keys()
    target = loss.target_value_network_params.flatten_keys()
    synced = []
    for _ in range(steps):
        online.apply(lambda p: p.data.add_(1.0))
        updater.step()
        synced.append(all(torch.equal(online[k], target[k]) for k in online.keys()))
    return synced
