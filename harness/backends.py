"""Env backends: one registry entry per simulator library, each building torchrl envs for tasks.

``make_env(backend, task, device=, num_envs=, seed=)`` is the one way the rest of rlgauge gets an
env. Whatever the backend, the env it returns follows one convention, so that algorithms never
look at the backend:

* one flat float32 ``"observation"`` entry ``[*batch, D]`` (dm_control's dict of observations
  is concatenated in the suite's order by ``CatTensors``, then ``DoubleToFloat``; gymnasium's
  float64 MuJoCo observations are cast by a gymnasium observation wrapper; envpool's by the
  wrapper here);
* an ``"action"`` entry: float32 ``[*batch, A]`` in a bounded box for continuous tasks; for
  discrete ones an int64 index ``[*batch]`` (torchrl's ``Categorical`` spec, no trailing dim:
  ``DISCRETE_ACTION_SPEC``, the encoding ``harness.probes`` uses too);
* ``"reward"`` float32 and ``"done"``/``"terminated"``/``"truncated"`` bool, each ``[*batch, 1]``,
  with ``done == terminated | truncated`` (time limits are truncations);
* ``batch_size == [num_envs]``, also for ``num_envs == 1`` (below); ``step_and_maybe_reset``
  resets only the finished sub-envs, and ``env.reset(data.set("_reset", mask))`` only the
  flagged ones. As everywhere in torchrl, pass the current data along with the mask: the
  sub-envs that are not reset are read from it (a bare ``{"_reset": mask}`` gives zeros for
  them on some backends, e.g. gymnasium's vector envs);
* seeded: the same ``seed`` and the same actions give the same observations. gymnasium seeds
  sub-env ``i`` with ``seed + i``; dm_control's ``SerialEnv`` derives one seed per sub-env;
  envpool seeds its pool at construction (``set_seed`` rebuilds the pool); probes draw from one
  ``torch.Generator`` per env (so a partial reset may change the *next* episodes of the other
  sub-envs, never their current one).

Devices. ``probe`` envs are pure torch and run *on* the requested device. The simulators of the
other backends run on the CPU, and so does their whole torchrl stack: the wrapper
(``GymWrapper``, ``DMControlEnv``, ``SerialEnv``/``ParallelEnv``, the envpool wrapper here) and
the convention's transforms are always built with ``device="cpu"``. For another device,
``to_device`` puts that env behind ``SimulatorOnDevice``, the one place where its data crosses:
what goes in (actions, ``"_reset"`` masks, states) moves to the CPU before the simulator's env
sees it, what comes out moves to the device. From outside, the env is native to the device, as
a probe is: whatever an algorithm appends (``ObservationNorm``, ``StepCounter``, the LSTM
primers, ``InitTracker``) sees device tensors only, single or batched, partial resets
included. The device is named canonically (``harness.devices``: ``cuda`` becomes ``cuda:0``).

Why not the wrappers' own ``device=``: torchrl 0.14.1's ``GymWrapper`` calls ``.numpy()`` on
the ``"_reset"`` mask it is given (``_replace_reset``, gymnasium >= 1.1 with
``AutoresetMode.DISABLED``), so with ``device="cuda"`` every partial reset raises
``TypeError: can't convert cuda:0 device type tensor to numpy`` (pinned in
``tests/test_specs.py::test_torchrl_gym_wrapper_partial_reset_on_cuda``). And not torchrl's
``DeviceCastTransform`` at the end of the chain: it leaves reset inputs on the device
(``enable_inv_on_reset`` is False), and switching that on hands every later transform of the
same chain a CPU copy of the reset data (``TransformedEnv._reset`` passes the preprocessed
tensordict to every transform's ``_reset``). With one crossing point below all transforms, no
simulator wrapper sees a device tensor and no transform sees a CPU one; the CPU tests run
everything through ``SimulatorOnDevice`` (``on_device(env, "cpu")``) to check that structure
without a GPU.

Batching. Every env is batched, ``batch_size == [num_envs]`` even for ``num_envs == 1`` (as the
probes are natively), so an algorithm sees ``[num_envs, ...]`` whatever the backend and count.
This costs something at ``num_envs == 1`` for gymnasium: CartPole through a one-env vector env
ran at 2.6k steps/s vs 3.6k for an unbatched ``GymWrapper`` (and 1.8k with torchrl's
``BatchSizeTransform`` adding the dim, so not that).
How a CPU backend batches was chosen from steps/s measured on the 2-core development machine:
torch pinned to one thread, a torchrl ``rollout(400, break_when_any_done=False)`` of random
actions, env-steps/s (= ``num_envs`` x 400 / wall time), median of 3 repeats, envs built before
the timer (the machine is noisy: +-20% between runs, the ranking did not change in two runs)::

    backend     task              num_envs  gym-sync  gym-async  serial  parallel  native
    gymnasium   cartpole              1        2.8k      1.5k     2.0k     1.4k
    gymnasium   cartpole              4        7.9k      3.3k     3.4k     1.8k
    gymnasium   cartpole              8       12.9k      4.4k     3.7k     1.9k
    gymnasium   halfcheetah           1        1.8k      1.2k     1.5k     1.2k
    gymnasium   halfcheetah           4        5.3k      2.4k     2.6k     1.6k
    gymnasium   halfcheetah           8        8.3k      3.5k     3.2k     1.8k
    dm_control  cartpole-balance      1                           1.0k     0.9k
    dm_control  cartpole-balance      4                           1.8k     1.2k
    dm_control  cartpole-balance      8                           2.0k     1.4k
    dm_control  cheetah-run           1                           1.2k     1.0k
    dm_control  cheetah-run           4                           2.3k     1.3k
    dm_control  cheetah-run           8                           2.4k     1.5k
    envpool     cartpole              1/4/8                                         2.1k/7.5k/12.5k
    envpool     halfcheetah           1/4/8                                         1.5k/4.9k/9.0k
    probe       constant-truncated    1/4/8                                         5.1k/21k/42k

``gym-sync``/``gym-async``: one ``GymWrapper`` around gymnasium's ``SyncVectorEnv`` /
``AsyncVectorEnv`` with ``autoreset_mode=DISABLED`` (torchrl's ``"_reset"`` mask becomes
gymnasium's ``reset_mask``); ``serial``/``parallel``: torchrl ``SerialEnv``/``ParallelEnv`` of
single-env wrappers; ``native``: the library's own batching. torchrl's per-step overhead
(~0.3 ms per wrapper call) dominates these ~10-50 us simulators, so the winner is whatever makes
*one* wrapper call per batched step, and subprocesses (``gym-async``, ``parallel``) lose on two
cores. Hence gymnasium -> ``gym-sync``; dm_control (no vector env of its own) -> ``serial``;
envpool -> ``native`` (its C++ thread pool; ``num_threads`` 0/1/2 measured within noise of each
other); probe -> ``native`` (batched tensors). ``make_env(..., batching=...)`` overrides the
choice, e.g. for benchmarks on a machine with more cores, where ``parallel`` may win for
expensive simulators. For scale, the raw libraries step these tasks at 3-140 us per step
(``bench/bench_envs.py``): torchrl's wrapper is most of an env step's cost here.

Adding a backend is one ``registry.BACKENDS.register(name, Backend(...), requires=..., check=...)``
call at the bottom of this module; its ``tasks`` then appear in ``python -m harness list``, in the
spec tests (``tests/test_specs.py``) and in the env benchmarks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness import registry
from harness.errors import UsageError

ACTION_KINDS = ("discrete", "continuous")
DISCRETE_ACTION_SPEC = "Categorical"  # torchrl spec of every discrete action: int64 [*batch]


@dataclass(frozen=True)
class TaskSpec:
    """One logical task of a backend.

    ``id`` is the backend's own name for it (a gymnasium id, a ``(domain, task)`` pair for
    dm_control, an envpool task id, a probe class name); ``requires`` lists modules needed on top
    of the backend's (MuJoCo for gymnasium's MuJoCo tasks); ``observation_indices`` keeps only
    those observation components (partially observed variants; None keeps all); ``solved`` is
    the return at which the task counts as solved (gymnasium's ``reward_threshold``, RL Zoo's
    for Pendulum), read by the matrix for time-to-threshold; None where no standard one exists.
    """

    id: Any
    action_kind: str
    description: str
    requires: tuple[str, ...] = ()
    observation_indices: tuple[int, ...] | None = None
    solved: float | None = None

    def __post_init__(self):
        if self.action_kind not in ACTION_KINDS:
            raise ValueError(f"action_kind {self.action_kind!r} is not one of {ACTION_KINDS}")


Builder = Callable[..., Any]  # (TaskSpec, *, num_envs, seed, device, batching) -> EnvBase


@dataclass(frozen=True)
class Backend:
    """A simulator library: its tasks and how to build a torchrl env for one of them.

    ``task_table`` is a mapping, or a callable returning one (read lazily: the probe backend's
    tasks live in a module that may be absent). ``build(spec, num_envs=, seed=, device=,
    batching=)`` returns the env following the module's convention. ``batching`` is the
    measured default way to batch the sub-envs, ``batchings`` all the ways the builder knows.
    ``device_native``: the simulator itself runs on the requested device (else ``build`` is
    called with ``device=cpu`` and ``to_device`` hands the env's data to the requested one).
    """

    build: Builder
    task_table: Mapping[str, TaskSpec] | Callable[[], Mapping[str, TaskSpec]]
    batching: str
    batchings: tuple[str, ...]
    device_native: bool = False

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        """Task name -> TaskSpec; empty when the task source cannot be read here."""
        table = self.task_table
        if callable(table):
            try:
                table = table()
            except Exception:  # reported by the registry's check; `list` must not crash
                return {}
        return dict(table)


# --------------------------------------------------------------------------- public API


def make_env(backend: str, task: str, *, device="cpu", num_envs: int = 1, seed: int = 0,
             batching: str | None = None):
    """A seeded torchrl env for ``task`` of ``backend`` on ``device`` (module docstring).

    Bad input -- unknown backend or task, a device that is not here, ``num_envs < 1``, a backend
    or task whose library is missing -- raises ``UsageError`` naming the bad value and the valid
    choices, before anything is built.
    """
    from harness.devices import check_device

    entry = _registry().get(backend)
    be: Backend = entry.value
    dev = check_device(str(device))
    if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 1:
        raise UsageError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    _registry().require_available(backend)
    spec = get_task(backend, task)
    missing = _missing_modules(spec.requires)
    if missing:
        raise UsageError(f"task {task!r} of backend {backend!r} is unavailable here (python "
                         f"package {missing!r} is not installed); available: "
                         f"{', '.join(available_tasks(backend)) or 'none'}")
    batching = be.batching if batching is None else batching
    if batching not in be.batchings:
        raise UsageError(f"unknown batching {batching!r} for backend {backend!r}; valid: "
                         f"{', '.join(be.batchings)}")
    return build(be, spec, num_envs=num_envs, seed=int(seed), device=dev, batching=batching)


def build(be: Backend, spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    """``be``'s env for ``spec`` on ``device``, inputs already checked (``make_env`` checks
    them). A backend whose simulator is not ``device_native`` is built on the CPU and handed to
    ``device`` by ``to_device``: the one place where its data crosses devices."""
    import torch

    if be.device_native:
        return be.build(spec, num_envs=num_envs, seed=seed, device=device, batching=batching)
    env = be.build(spec, num_envs=num_envs, seed=seed, device=torch.device("cpu"),
                   batching=batching)
    return to_device(env, device)


@functools.cache
def _device_env_class():
    import torch
    from torchrl.envs import EnvBase

    cpu = torch.device("cpu")

    class SimulatorOnDevice(EnvBase):
        """A CPU simulator's torchrl env seen from ``device``: what goes in (actions, reset
        masks, recurrent states) is moved to the CPU before the simulator's env sees it, what
        comes out is moved to ``device``. From outside it behaves as an env native to
        ``device`` (as the probes are), so the transforms and primers the algorithms append
        see device tensors only."""

        def __init__(self, env, device):
            super().__init__(device=device, batch_size=env.batch_size)
            self.simulator_env = env
            self.full_observation_spec = env.full_observation_spec.clone().to(device)
            self.full_reward_spec = env.full_reward_spec.clone().to(device)
            self.full_done_spec = env.full_done_spec.clone().to(device)
            self.full_action_spec = env.full_action_spec.clone().to(device)
            self.full_state_spec = env.full_state_spec.clone().to(device)

        @staticmethod
        def _move(tensordict, device):
            """``tensordict`` on ``device``, always a new tensordict (as a move to another
            device is; so the same code runs when ``device`` is the CPU, in the tests), and
            synchronous: the simulator reads its inputs (``.numpy()``) at once."""
            if tensordict is None:
                return None
            moved = tensordict.to(device)
            return moved.clone() if moved is tensordict else moved

        def _reset(self, tensordict=None, **kwargs):
            out = self.simulator_env.reset(self._move(tensordict, cpu), **kwargs)
            return self._move(out, self.device)

        def _step(self, tensordict):
            return self._move(self.simulator_env._step(self._move(tensordict, cpu)),
                              self.device)

        def _set_seed(self, seed):
            self.simulator_env.set_seed(seed)

        def close(self, *, raise_if_closed: bool = True):
            self.simulator_env.close()
            super().close(raise_if_closed=raise_if_closed)

    return SimulatorOnDevice


def on_device(env, device):
    """``env`` (a CPU simulator's torchrl env) behind ``SimulatorOnDevice``: its inputs moved to
    the CPU, its outputs to ``device`` (also for ``device == cpu``, where ``to_device`` would
    not wrap it: the tests check the structure that way)."""
    return _device_env_class()(env, device)


def to_device(env, device):
    """``env`` (a CPU simulator's torchrl env) handing its data to and from ``device``: ``env``
    itself on the CPU, else ``on_device(env, device)``."""
    import torch

    device = torch.device(device)
    return env if device.type == "cpu" else on_device(env, device)


def simulator_of(env):
    """The innermost env of ``env`` (below every transform): what steps the simulator."""
    while True:
        inner = getattr(env, "base_env", None) or getattr(env, "simulator_env", None)
        if inner is None:
            return env
        env = inner


def get_task(backend: str, task: str) -> TaskSpec:
    """The TaskSpec of ``task``; UsageError naming the backend's tasks otherwise."""
    tasks = _registry().get(backend).value.tasks
    try:
        return tasks[task]
    except KeyError:
        valid = ", ".join(tasks) or "none"
        raise UsageError(f"unknown task {task!r} for backend {backend!r}; valid: {valid}") from None


def available_tasks(backend: str) -> list[str]:
    """Tasks of ``backend`` that can be built here (empty if the backend is unavailable)."""
    if _registry().unavailable_reason(backend) is not None:
        return []
    return [name for name, spec in _registry().get(backend).value.tasks.items()
            if not _missing_modules(spec.requires)]


def pairs(*, available_only: bool = True) -> list[tuple[str, str]]:
    """Every (backend, task), in registration order; only those buildable here by default."""
    reg = _registry()
    out = []
    for entry in reg:
        names = available_tasks(entry.name) if available_only else list(entry.value.tasks)
        out.extend((entry.name, name) for name in names)
    return out


def tasks_for(action_kind: str, *, available_only: bool = True) -> list[tuple[str, str]]:
    """The (backend, task) pairs whose actions are ``action_kind`` ("discrete"/"continuous")."""
    if action_kind not in ACTION_KINDS:
        raise UsageError(f"unknown action kind {action_kind!r}; valid: {', '.join(ACTION_KINDS)}")
    return [(b, t) for b, t in pairs(available_only=available_only)
            if get_task(b, t).action_kind == action_kind]


def describe() -> list[dict[str, Any]]:
    """One row per (backend, task) for listings: names, ids, action kind, availability."""
    reg = _registry()
    rows = []
    for entry in reg:
        reason = reg.unavailable_reason(entry.name)
        be: Backend = entry.value
        if not be.tasks:
            rows.append({"backend": entry.name, "task": None, "id": None, "action_kind": None,
                         "available": False, "reason": reason or "no tasks readable",
                         "description": entry.description, "batching": be.batching,
                         "device_native": be.device_native})
        for name, spec in be.tasks.items():
            missing = _missing_modules(spec.requires)
            why = reason or (f"python package {missing!r} is not installed" if missing else None)
            rows.append({"backend": entry.name, "task": name, "id": spec.id,
                         "action_kind": spec.action_kind, "available": why is None,
                         "reason": why, "description": spec.description,
                         "batching": be.batching, "device_native": be.device_native})
    return rows


def _registry() -> registry.Registry:
    return registry.BACKENDS


def _missing_modules(modules: tuple[str, ...]) -> str | None:
    import importlib.util

    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


# --------------------------------------------------------------------------- shared plumbing


def _uniform(env, *, concat_keys: list | None = None):
    """``env`` made to follow the module's convention (one flat float32 observation).

    A torchrl transform costs ~0.15 ms per step (CartPole, 8 envs: 18.2k -> 11.7k steps/s), so
    backends that can produce float32 themselves do it in the simulator's own wrapper and only
    dm_control (a dict of float64 observations) goes through one.
    """
    import torch
    from torchrl.envs import CatTensors, Compose, DoubleToFloat, TransformedEnv

    transforms = []
    if concat_keys is not None:
        transforms.append(CatTensors(in_keys=concat_keys, out_key="observation", sort=False))
    specs = (env.full_observation_spec, env.full_reward_spec, env.full_action_spec)
    if any(leaf.dtype == torch.float64 for spec in specs for leaf in spec.values(True, True)):
        transforms.append(DoubleToFloat())
    return TransformedEnv(env, Compose(*transforms)) if transforms else env


def _torchrl_batch(single: Callable[[], Any], num_envs: int, batching: str, device):
    """``num_envs`` copies of ``single()`` batched by torchrl (SerialEnv / ParallelEnv)."""
    from torchrl.envs import ParallelEnv, SerialEnv

    if batching == "serial":
        return SerialEnv(num_envs, single, device=device)
    if batching == "parallel":
        return ParallelEnv(num_envs, single, device=device)
    raise AssertionError(batching)


# --------------------------------------------------------------------------- gymnasium


def gym_make(spec: TaskSpec):
    """The raw gymnasium env for ``spec``, before any torchrl wrapper (picklable for subprocess
    batching; also the raw-library baseline of ``bench/bench_envs.py``).

    The observation is cast to float32 and cut to ``spec.observation_indices`` by one
    gymnasium wrapper, declaring a float32 Box (gymnasium's ``DtypeObservation`` warns on every
    MuJoCo env about its float64 bounds).
    """
    import gymnasium as gym
    import numpy as np

    env = gym.make(spec.id, disable_env_checker=True)
    box = env.observation_space
    keep = None if spec.observation_indices is None else list(spec.observation_indices)
    if keep is None and box.dtype == np.float32:
        return env
    low, high = (box.low, box.high) if keep is None else (box.low[keep], box.high[keep])
    space = gym.spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
    return gym.wrappers.TransformObservation(env, functools.partial(_float32, keep=keep), space)


def _float32(observation, keep: list[int] | None):
    import numpy as np

    return np.asarray(observation if keep is None else observation[..., keep], dtype=np.float32)


def _gym_single(spec: TaskSpec, device="cpu"):
    from torchrl.envs import GymWrapper

    return GymWrapper(gym_make(spec), categorical_action_encoding=True, device=device)


def _build_gymnasium(spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    if batching in ("gym-sync", "gym-async"):
        import gymnasium as gym
        from torchrl.envs import GymWrapper

        cls = gym.vector.SyncVectorEnv if batching == "gym-sync" else gym.vector.AsyncVectorEnv
        vec = cls([functools.partial(gym_make, spec)] * num_envs,
                  autoreset_mode=gym.vector.AutoresetMode.DISABLED)
        env = GymWrapper(vec, categorical_action_encoding=True, device=device)
    else:
        env = _torchrl_batch(functools.partial(_gym_single, spec), num_envs, batching, device)
    env = _uniform(env)
    env.set_seed(seed)
    return env


_MUJOCO = ("mujoco",)
GYMNASIUM_TASKS = {
    "cartpole": TaskSpec("CartPole-v1", "discrete", "balance a pole on a cart (500 steps)",
                         solved=475.0),
    "cartpole-novel": TaskSpec(
        "CartPole-v1", "discrete", "CartPole with velocities hidden: observation [x, theta] "
        "(POMDP for recurrent policies)", observation_indices=(0, 2), solved=475.0),
    "pendulum": TaskSpec("Pendulum-v1", "continuous", "swing up and hold a pendulum (200 steps)",
                         solved=-200.0),
    "mountaincar-continuous": TaskSpec("MountainCarContinuous-v0", "continuous",
                                       "drive an underpowered car up a hill (999 steps)",
                                       solved=90.0),
    "inverted-double-pendulum": TaskSpec("InvertedDoublePendulum-v5", "continuous",
                                         "MuJoCo: balance two poles on a cart", requires=_MUJOCO,
                                         solved=9100.0),
    "halfcheetah": TaskSpec("HalfCheetah-v5", "continuous", "MuJoCo: run forward (1000 steps)",
                            requires=_MUJOCO, solved=4800.0),
}


# --------------------------------------------------------------------------- dm_control


def _dmc_single(spec: TaskSpec, device="cpu"):
    from torchrl.envs import DMControlEnv

    return DMControlEnv(*spec.id, device=device)


def _build_dm_control(spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    env = _torchrl_batch(functools.partial(_dmc_single, spec), num_envs, batching, device)
    keys = list(env.observation_spec.keys())  # the suite's order (an OrderedDict)
    env = _uniform(env, concat_keys=keys)
    env.set_seed(seed)
    return env


def _check_dm_control() -> str | None:
    import mujoco

    major = int(mujoco.__version__.split(".")[0])
    if major != 3:
        return f"dm_control 1.0.x needs mujoco 3, found mujoco {mujoco.__version__}"
    return None


DM_CONTROL_TASKS = {
    "cartpole-balance": TaskSpec(("cartpole", "balance"), "continuous",
                                 "keep an upright pole balanced (1000 steps)"),
    "cartpole-swingup": TaskSpec(("cartpole", "swingup"), "continuous",
                                 "swing a hanging pole up and balance it (1000 steps)"),
    "pendulum-swingup": TaskSpec(("pendulum", "swingup"), "continuous",
                                 "swing a pendulum up, sparse reward (1000 steps)"),
    "cheetah-run": TaskSpec(("cheetah", "run"), "continuous", "planar cheetah runs forward"),
    "walker-walk": TaskSpec(("walker", "walk"), "continuous", "planar walker walks forward"),
}


# --------------------------------------------------------------------------- envpool


def _build_envpool(spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    from harness.envpool_env import envpool_env_class

    return _uniform(envpool_env_class()(spec.id, num_envs, seed=seed, device=device))


def _check_envpool() -> str | None:
    import envpool  # noqa: F401 -- a compiled extension: installed is not enough

    return None


ENVPOOL_TASKS = {
    "cartpole": TaskSpec("CartPole-v1", "discrete", "balance a pole on a cart (500 steps)",
                         solved=475.0),
    "pendulum": TaskSpec("Pendulum-v1", "continuous", "swing up and hold a pendulum (200 steps)",
                         solved=-200.0),
    "mountaincar-continuous": TaskSpec("MountainCarContinuous-v0", "continuous",
                                       "drive an underpowered car up a hill (999 steps)",
                                       solved=90.0),
    "halfcheetah": TaskSpec("HalfCheetah-v5", "continuous",
                            "MuJoCo (envpool's build): run forward (1000 steps)",
                            solved=4800.0),
}


# --------------------------------------------------------------------------- probe


def _probe_tasks() -> dict[str, TaskSpec]:
    from harness import probes

    out = {}
    for name, cls in probes.TASKS.items():
        doc = (cls.__doc__ or "").strip().splitlines()
        out[name] = TaskSpec(name, cls.action_kind, doc[0] if doc else "")
    return out


def _build_probe(spec: TaskSpec, *, num_envs: int, seed: int, device, batching: str):
    from harness import probes

    return probes.make(spec.id, num_envs=num_envs, device=device, seed=seed)


def _check_probe() -> str | None:
    import importlib.util

    if importlib.util.find_spec("harness.probes") is None:
        return "module harness.probes is not there yet"
    from harness import probes

    if not getattr(probes, "TASKS", None):
        return "harness.probes defines no TASKS"
    return None


# --------------------------------------------------------------------------- registrations

_TORCH = ("torch", "tensordict", "torchrl")

registry.BACKENDS.register(
    "gymnasium",
    Backend(_build_gymnasium, GYMNASIUM_TASKS, batching="gym-sync",
            batchings=("gym-sync", "gym-async", "serial", "parallel")),
    description="Gymnasium classic control and MuJoCo (CPU simulators)",
    requires=(*_TORCH, "gymnasium"),
)
registry.BACKENDS.register(
    "dm_control",
    Backend(_build_dm_control, DM_CONTROL_TASKS, batching="serial",
            batchings=("serial", "parallel")),
    description="DeepMind Control Suite on MuJoCo (CPU simulators)",
    requires=(*_TORCH, "dm_control", "mujoco"),
    check=_check_dm_control,
)
registry.BACKENDS.register(
    "envpool",
    Backend(_build_envpool, ENVPOOL_TASKS, batching="native", batchings=("native",)),
    description="EnvPool: C++ envs stepped in a thread pool (CPU simulators)",
    requires=(*_TORCH, "envpool", "gymnasium"),
    check=_check_envpool,
)
registry.BACKENDS.register(
    "probe",
    Backend(_build_probe, _probe_tasks, batching="native", batchings=("native",),
            device_native=True),
    description="pure-torch probe envs with closed-form returns (run on the requested device)",
    requires=_TORCH,
    check=_check_probe,
)
