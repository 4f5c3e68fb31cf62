"""One name per device (``harness.devices``): what users type becomes ``cpu`` or ``cuda:N`` at
the boundary, and configs, envs, modules and records carry that name. None of this needs a
GPU: the CUDA device count is faked where a test needs GPUs to exist."""

from __future__ import annotations

import pytest
import torch

from harness import devices, results
from harness.errors import UsageError


@pytest.mark.parametrize(("name", "canon"), [
    ("cpu", "cpu"), ("cpu:0", "cpu"), (torch.device("cpu"), "cpu"),
    ("cuda", "cuda:0"), ("cuda:0", "cuda:0"), ("cuda:3", "cuda:3"),
    (torch.device("cuda"), "cuda:0"), (torch.device("cuda", 2), "cuda:2"),
])
def test_canonical_names_every_device_with_its_ordinal(name, canon):
    assert devices.canonical(name) == canon


@pytest.mark.parametrize("name", ["gpu", "meta", "cuda:x", "", "cuda:-1", "mps"])
def test_canonical_rejects_what_is_not_a_device_rlgauge_runs_on(name):
    with pytest.raises(UsageError, match="valid: cpu, cuda, cuda:N"):
        devices.canonical(name)


def test_available_devices_lists_each_gpu_once(monkeypatch):
    """Fails if ``cuda`` is listed beside ``cuda:0`` (one GPU, two names: ``--devices all``
    then ran every CUDA cell twice under two names)."""
    monkeypatch.setattr(devices, "cuda_count", lambda: 2)
    assert devices.available_devices() == ["cpu", "cuda:0", "cuda:1"]
    monkeypatch.setattr(devices, "cuda_count", lambda: 0)
    assert devices.available_devices() == ["cpu"]


def test_check_device_returns_the_canonical_device(monkeypatch):
    """Fails if ``check_device("cuda")`` hands back ``device("cuda")``: the env then says
    ``cuda:0`` where the caller holds ``cuda`` (``device(type='cuda', index=0) !=
    device(type='cuda')``, the 8 probe parity failures seen on an H200)."""
    monkeypatch.setattr(devices, "cuda_count", lambda: 1)
    assert devices.check_device("cuda") == torch.device("cuda:0")
    assert devices.check_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UsageError, match="'cuda:1' is not present.*cpu, cuda:0"):
        devices.check_device("cuda:1")


def test_configs_and_records_carry_the_canonical_name():
    """A Config asked for ``cuda`` holds ``cuda:0`` (no GPU needed to name it), and so do the
    records made with it. Fails if the alias survives into a config or a results row."""
    from reference_impls import ddpg, dqn, ppo, recurrent_dqn, recurrent_ppo

    for module in (ppo, dqn, ddpg, recurrent_dqn, recurrent_ppo):
        config = module.Config(device="cuda")
        assert config.device == "cuda:0", module.__name__
        assert config.replace(device="cpu").device == "cpu"
    frame = results.make_records([{"metric": "x", "value": 1.0}], device="cuda")
    assert list(frame["device"]) == ["cuda:0"]


def test_cpu_model_names_the_processor():
    model = devices.cpu_model()
    assert model and model != "unknown"
    with open("/proc/cpuinfo") as f:
        text = f.read()
    if "model name" in text:
        assert model in " ".join(text.split())
