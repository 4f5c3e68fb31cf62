"""Spec tests for every backend x task registered: the env convention of ``harness.backends``.

Every env that ``make_env`` builds must pass ``check_env_specs``, keep its rollouts inside its
specs, expose one flat float32 ``"observation"`` and a ``Categorical``/``Bounded`` ``"action"``,
set ``done == terminated | truncated``, replay exactly under the same seed and actions, and, when
batched, reset only the sub-envs it is told to while the others carry on. Backends or tasks whose
library is missing here are skipped with the reason.
"""

from __future__ import annotations

import logging

import pytest
import torch

from harness import backends, registry

logging.getLogger("torchrl").setLevel(logging.WARNING)  # check_env_specs logs each success

ALL_PAIRS = backends.pairs(available_only=False)
AVAILABLE = set(backends.pairs())
STEPS = 40  # rollout length: long enough to cross CartPole's early terminations
BATCH = 4


def _param(backend: str, task: str):
    marks = ()
    if (backend, task) not in AVAILABLE:
        reason = registry.BACKENDS.unavailable_reason(backend) or "a library of the task is missing"
        marks = (pytest.mark.skip(reason=f"{backend}: {reason}"),)
    return pytest.param(backend, task, id=f"{backend}-{task}", marks=marks)


PAIRS = [_param(b, t) for b, t in ALL_PAIRS]
PROBES = [p for p in PAIRS if p.values[0] == "probe"]


class _Envs:
    """Module-wide cache of built envs: dm_control/MuJoCo envs take ~0.2-0.5 s to build."""

    def __init__(self):
        self._envs = {}

    def get(self, backend, task, num_envs=1):
        key = (backend, task, num_envs)
        if key not in self._envs:
            self._envs[key] = backends.make_env(backend, task, num_envs=num_envs, seed=0)
        return self._envs[key]

    def close(self):
        for env in self._envs.values():
            env.close()


@pytest.fixture(scope="module")
def envs():
    cache = _Envs()
    yield cache
    cache.close()


def _actions(env, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """A fixed sequence of random actions in the env's action spec (on the env's device)."""
    torch.manual_seed(seed)
    return [env.action_spec.rand().to(env.device) for _ in range(steps)]


def _play(env, actions, *, seed: int | None = None, reset_td=None):
    """Reset (after ``set_seed(seed)`` if given) and step through ``actions`` with
    ``step_and_maybe_reset``; return the stacked step outputs ``[num_envs, T]``."""
    if seed is not None:
        env.set_seed(seed)
    td = env.reset() if reset_td is None else reset_td
    out = []
    for action in actions:
        td.set("action", action)
        step, td = env.step_and_maybe_reset(td)
        out.append(step.clone())
    return torch.stack(out, dim=len(env.batch_size))


def _leaf_specs(env):
    return {
        "observation": env.observation_spec["observation"],
        "action": env.action_spec,
        ("next", "reward"): env.reward_spec,
        **{("next", key): env.full_done_spec[key] for key in ("done", "terminated", "truncated")},
    }


# --------------------------------------------------------------------------- single env


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_check_env_specs(envs, backend, task):
    from torchrl.envs.utils import check_env_specs

    check_env_specs(envs.get(backend, task), seed=0)


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_follow_the_convention(envs, backend, task):
    env = envs.get(backend, task)
    spec = backends.get_task(backend, task)
    assert env.batch_size == torch.Size([1])  # batched even for one env (module docstring)
    assert list(env.observation_spec.keys()) == ["observation"]  # one flat entry
    obs = env.observation_spec["observation"]
    assert obs.dtype == torch.float32 and obs.ndim == 2, obs
    assert env.action_keys == ["action"]
    action = env.action_spec
    if spec.action_kind == "discrete":
        assert type(action).__name__ == backends.DISCRETE_ACTION_SPEC
        assert action.dtype == torch.int64 and action.shape == env.batch_size  # no trailing dim
    else:
        assert action.dtype == torch.float32 and action.ndim == 2
        assert torch.isfinite(action.space.low).all() and torch.isfinite(action.space.high).all()
    assert env.reward_spec.dtype == torch.float32 and env.reward_spec.shape == (1, 1)
    for key in ("done", "terminated", "truncated"):
        assert env.full_done_spec[key].dtype == torch.bool
        assert env.full_done_spec[key].shape == (1, 1)


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_rollout_inside_specs(envs, backend, task):
    env = envs.get(backend, task)
    torch.manual_seed(0)
    data = env.rollout(STEPS, break_when_any_done=False)
    assert data.batch_size == torch.Size([1, STEPS])
    for t in range(STEPS):
        step = data[:, t]
        for key, spec in _leaf_specs(env).items():
            assert spec.is_in(step[key]), (key, t, step[key])
    done, term, trunc = (data["next", k] for k in ("done", "terminated", "truncated"))
    assert torch.equal(done, term | trunc)


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_same_seed_same_rollout(backend, task):
    first = backends.make_env(backend, task, seed=3)
    second = backends.make_env(backend, task, seed=3)
    try:
        actions = _actions(first, STEPS)
        a = _play(first, actions)
        b = _play(second, actions)
        assert torch.equal(a["observation"], b["observation"])
        assert torch.equal(a["next", "observation"], b["next", "observation"])
        assert torch.equal(a["next", "reward"], b["next", "reward"])
        assert torch.equal(a["next", "done"], b["next", "done"])
        again = _play(first, actions, seed=3)  # set_seed restarts the same stream
        assert torch.equal(a["next", "observation"], again["next", "observation"])
    finally:
        first.close()
        second.close()


# --------------------------------------------------------------------------- batched envs


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_batched_shapes(envs, backend, task):
    from torchrl.envs.utils import check_env_specs

    env = envs.get(backend, task, BATCH)
    assert env.batch_size == torch.Size([BATCH])
    check_env_specs(env, seed=0)
    data = env.rollout(STEPS, break_when_any_done=False)
    assert data.batch_size == torch.Size([BATCH, STEPS])
    assert data["observation"].shape[:2] == (BATCH, STEPS)
    assert data["next", "reward"].shape == (BATCH, STEPS, 1)
    for t in (0, STEPS - 1):
        for key, spec in _leaf_specs(env).items():
            assert spec.is_in(data[:, t][key]), (key, t)


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_partial_reset_keeps_other_sub_envs(backend, task):
    """Twin envs, same seed and actions; sub-env 0 of one is reset mid-episode: the other
    sub-envs of both must stay identical, step for step, to the end of their episode."""
    twin = [backends.make_env(backend, task, num_envs=BATCH, seed=5) for _ in range(2)]
    try:
        actions = _actions(twin[0], 2 * 5)
        tds = [env.reset() for env in twin]
        for action in actions[:5]:
            for i, env in enumerate(twin):
                tds[i].set("action", action)
                _, tds[i] = env.step_and_maybe_reset(tds[i])
        before = tds[0]["observation"].clone()
        mask = torch.zeros((BATCH, 1), dtype=torch.bool, device=twin[0].device)
        mask[0] = True
        # torchrl's contract: the current data plus a "_reset" mask (entries of the sub-envs
        # that are not reset are taken from it)
        tds[0] = twin[0].reset(tds[0].clone().set("_reset", mask))
        assert torch.equal(tds[0]["observation"][1:], before[1:])  # untouched by the reset
        assert not tds[0]["done"].any()
        rest = [_play(env, actions[5:], reset_td=td) for env, td in zip(twin, tds, strict=True)]
        for i in range(1, BATCH):  # the current episode of every other sub-env carries on
            ends = rest[1]["next", "done"][i, :, 0].nonzero()
            last = int(ends[0]) if len(ends) else len(actions) - 6  # up to its end, included:
            # after it, a probe's next episode may draw from the env-wide generator, which the
            # reset of sub-env 0 advanced
            for key in (("next", "observation"), ("next", "reward"), ("next", "done")):
                assert torch.equal(rest[0][key][i, : last + 1], rest[1][key][i, : last + 1]), key
    finally:
        for env in twin:
            env.close()


@pytest.mark.parametrize("backend,task", PAIRS)
def test_specs_step_and_maybe_reset_resets_only_finished(envs, backend, task):
    """Over a random rollout: finished sub-envs start afresh, the others carry on."""
    env = envs.get(backend, task, BATCH)
    env.set_seed(1)
    td = env.reset()
    torch.manual_seed(1)
    for _ in range(3 * STEPS):
        td.set("action", env.action_spec.rand().to(env.device))
        step, td = env.step_and_maybe_reset(td)
        done = step["next", "done"].reshape(BATCH)
        carried = step["next", "observation"][~done]
        assert torch.equal(td["observation"][~done], carried)  # running sub-envs carry on
        assert not td["done"].any()  # finished ones were reset


# --------------------------------------------------------------------------- devices


@pytest.mark.parametrize("backend,task", PROBES)
def test_specs_probe_device_parity(cuda_device, backend, task):
    """The probe on CUDA has the CPU probe's specs and episode structure (its random draws
    come from a generator of that device, so only those values may differ). Fails if
    ``make_env`` drops the device for a probe (a CPU env: ``dev.device == device`` fails) or
    a probe's specs or episode ends differ on CUDA. Needs a GPU: not tried where it was
    written."""
    from torchrl.envs.utils import check_env_specs

    device = cuda_device
    cpu = backends.make_env(backend, task, num_envs=BATCH, seed=0)
    dev = backends.make_env(backend, task, num_envs=BATCH, seed=0, device=device)
    check_env_specs(dev, seed=0)
    assert dev.device == device
    assert dev.full_observation_spec == cpu.full_observation_spec.to(device)
    assert dev.full_action_spec == cpu.full_action_spec.to(device)
    actions = _actions(cpu, STEPS)
    a = _play(cpu, actions)
    b = _play(dev, [x.to(device) for x in actions])
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert b[key].device == device and b[key].dtype == a[key].dtype
        assert b[key].shape == a[key].shape
    for key in ("done", "terminated", "truncated"):
        assert torch.equal(a["next", key], b["next", key].cpu())  # fixed horizons: same ends


@pytest.mark.parametrize("sim_device", [
    pytest.param("cpu", marks=pytest.mark.gpu), "crossing",
    pytest.param("cuda", marks=pytest.mark.gpu)], indirect=True)
@pytest.mark.parametrize("backend", ["gymnasium", "dm_control", "envpool"])
def test_specs_cpu_simulator_output_on_device(sim_device, backend, request):
    """CPU simulators hand their outputs over on the requested device.

    ``crossing``: the CPU through ``SimulatorOnDevice``, the structure of a CUDA run (meaningful
    here); ``cuda`` where a GPU is present. Plain ``cpu`` (no crossing) says something only
    beside a GPU: an env built for the CPU lets nothing land on CUDA (e.g. a transform or
    wrapper that builds on ``cuda`` or the default device). Without a GPU every tensor is on
    the CPU and it would compare the CPU with itself, so it is marked ``gpu`` and skips there.
    The ``cuda`` case fails if ``backends.build`` hands the simulator to ``to_device`` with
    another device than the requested one (e.g. always ``cpu``); not tried where it was
    written (no GPU)."""
    if request.node.callspec.params["sim_device"] == "cpu" and not torch.cuda.is_available():
        pytest.skip("the plain CPU case checks that nothing lands on a GPU: without one it "
                    "would compare the CPU with itself")
    pairs = [(b, t) for b, t in AVAILABLE if b == backend]
    if not pairs:
        pytest.skip(f"backend {backend} unavailable here")
    task = sorted(pairs)[0][1]
    env = backends.make_env(backend, task, num_envs=2, device=sim_device)
    try:
        data = env.rollout(5, break_when_any_done=False)
        for key in data.keys(True, True):
            assert data[key].device == sim_device, key
    finally:
        env.close()


SIMULATORS = [pytest.param(b, id=b) for b in ("gymnasium", "dm_control", "envpool")]


def _simulator(backend: str):
    """(Backend, a task) of a CPU-simulator backend; skip where its library is missing."""
    tasks = backends.available_tasks(backend)
    if not tasks:
        pytest.skip(f"backend {backend} unavailable here")
    return registry.BACKENDS.get(backend).value, tasks[0]


@pytest.mark.parametrize("backend", SIMULATORS)
def test_specs_simulator_is_built_on_the_cpu_whatever_the_device(monkeypatch, backend):
    """Where the simulator runs (no GPU needed): for a requested ``cuda:0`` the backend's whole
    torchrl stack is built with ``device=cpu`` and handed to ``to_device(env, cuda:0)`` -- the
    one crossing point. Fails if a simulator's wrapper is given the requested device (what
    rlgauge did before: ``GymWrapper(device="cuda")``, whose partial resets crash, see
    ``test_torchrl_gym_wrapper_partial_reset_on_cuda``; here building specs on an absent CUDA
    device raises)."""
    be, task = _simulator(backend)
    assert not be.device_native
    handed = []
    monkeypatch.setattr(backends, "to_device", lambda env, device: handed.append(device) or env)
    env = backends.build(be, backends.get_task(backend, task), num_envs=2, seed=0,
                         device=torch.device("cuda:0"), batching=be.batching)
    try:
        assert handed == [torch.device("cuda:0")]
        assert backends.simulator_of(env).device == torch.device("cpu")
        assert env.device == torch.device("cpu")  # to_device (recorded here) does the rest
        leaves = [leaf for spec in (env.full_observation_spec, env.full_action_spec,
                                    env.full_done_spec, env.full_reward_spec)
                  for leaf in spec.values(True, True)]
        assert {leaf.device for leaf in leaves} == {torch.device("cpu")}
    finally:
        env.close()


@pytest.fixture
def through_device_wrapper(monkeypatch):
    """Every simulator env built while active goes through ``SimulatorOnDevice`` even on the
    CPU (``to_device`` skips it there): the structure a CUDA run gets, checked without a GPU."""
    monkeypatch.setattr(backends, "to_device", backends.on_device)


@pytest.mark.parametrize("backend", SIMULATORS)
def test_specs_device_wrapper_keeps_the_convention(through_device_wrapper, backend):
    """Through the device crossing the env passes ``check_env_specs``, keeps its specs, and a
    partial reset hands the simulator a CPU mask, restarts only the flagged sub-env and leaves
    the others running. Fails if the crossing drops the reset mask or the data of the sub-envs
    that are not reset (or if torchrl's DeviceCastTransform is used in its place: the reset
    mask would then reach the simulator on the device)."""
    from torchrl.envs.utils import check_env_specs

    _, task = _simulator(backend)
    env = backends.make_env(backend, task, num_envs=BATCH, seed=0)
    sim = backends.simulator_of(env)
    assert type(env).__name__ == "SimulatorOnDevice" and sim is not env
    reached = []
    sim_reset = sim._reset
    sim._reset = lambda td=None, **kw: reached.append(
        None if td is None else td.get("_reset", None)) or sim_reset(td, **kw)
    try:
        check_env_specs(env, seed=0)
        assert env.full_observation_spec == env.simulator_env.full_observation_spec
        assert env.full_action_spec == env.simulator_env.full_action_spec
        env.set_seed(0)
        td = env.reset()
        for _ in range(3):
            td.set("action", env.action_spec.rand())
            _, td = env.step_and_maybe_reset(td)
        reached.clear()
        before = td["observation"].clone()
        mask = torch.zeros((BATCH, 1), dtype=torch.bool, device=env.device)
        mask[0] = True
        after = env.reset(td.clone().set("_reset", mask))
        assert reached and all(m.device == torch.device("cpu") for m in reached)
        assert torch.equal(reached[-1].reshape(-1), mask.reshape(-1).cpu())
        assert torch.equal(after["observation"][1:], before[1:])  # the others carry on
        assert not after["done"].any()
    finally:
        env.close()


@pytest.mark.gpu
@pytest.mark.xfail(strict=True, raises=TypeError,
                   reason="torchrl 0.14.1: GymWrapper._replace_reset (gymnasium >= 1.1, "
                          "AutoresetMode.DISABLED) calls .numpy() on the device '_reset' mask")
def test_torchrl_gym_wrapper_partial_reset_on_cuda():
    """torchrl's defect, minimal: a vector env in torchrl's ``GymWrapper`` on CUDA cannot
    reset one sub-env (``TypeError: can't convert cuda:0 device type tensor to numpy``).
    rlgauge steps around it (``harness.backends``: simulators stay on the CPU behind
    ``SimulatorOnDevice``); this pins the defect so that a fixed torchrl shows up as an
    XPASS."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    import gymnasium as gym
    from torchrl.envs import GymWrapper

    vec = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2,
                                   autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    env = GymWrapper(vec, device="cuda")
    td = env.reset()
    env.reset(td.set("_reset", torch.tensor([[True], [False]], device="cuda")))


# --------------------------------------------------------------------------- other batchings


OTHER_BATCHINGS = [
    pytest.param(backend, batching, id=f"{backend}-{batching}")
    for backend in ("gymnasium", "dm_control")
    for batching in registry.BACKENDS.get(backend).value.batchings
    if batching != registry.BACKENDS.get(backend).value.batching
]


@pytest.mark.parametrize("backend,batching", OTHER_BATCHINGS)
def test_specs_other_batchings_follow_the_convention(backend, batching):
    """The non-default batchings (kept for machines with more cores) build the same env."""
    from torchrl.envs.utils import check_env_specs

    if not backends.available_tasks(backend):
        pytest.skip(f"backend {backend} unavailable here")
    task = backends.available_tasks(backend)[0]
    env = backends.make_env(backend, task, num_envs=2, batching=batching)
    ref = backends.make_env(backend, task, num_envs=2)
    try:
        check_env_specs(env, seed=0)
        assert env.batch_size == ref.batch_size
        assert env.full_observation_spec == ref.full_observation_spec
        assert env.full_action_spec == ref.full_action_spec
        env.set_seed(0)
        td = env.reset()
        for _ in range(STEPS):
            td.set("action", env.action_spec.rand())
            step, td = env.step_and_maybe_reset(td)
            done = step["next", "done"].reshape(2)
            assert torch.equal(td["observation"][~done], step["next", "observation"][~done])
    finally:
        env.close()
        ref.close()
