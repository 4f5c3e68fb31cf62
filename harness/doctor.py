"""The environment report behind ``python -m harness doctor``: one screen for a bug report.

Each check imports and exercises one thing (a library, torchrl's extension, an env) and never
raises: a failure becomes a row with its reason. ``required`` rows are what the default run
(``nox -s bench``) needs; the CLI exits non-zero when one of them fails.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


@dataclass(frozen=True)
class Check:
    name: str
    detail: str
    ok: bool
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _guard(name: str, required: bool, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, fn(), True, required)
    except Exception as exc:  # the report must survive any broken library
        msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:200]
        return Check(name, msg, False, required)


def _python() -> str:
    return f"{platform.python_version()} ({sys.executable})"


def _machine() -> str:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    mem = ""
    if hasattr(os, "sysconf"):
        gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        mem = f", {gib:.0f} GiB RAM"
    return (f"{platform.system()} {platform.release()} {platform.machine()}, "
            f"{os.cpu_count()} CPUs ({affinity} usable){mem}")


def _torch() -> str:
    import torch

    build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU build"
    omp = os.environ.get("OMP_NUM_THREADS", "unset")
    return (f"{torch.__version__} ({build}); threads={torch.get_num_threads()}, "
            f"OMP_NUM_THREADS={omp}")


def _cpu() -> str:
    from harness import devices

    return devices.cpu_model()


def _cuda() -> str:
    import torch

    from harness import devices

    if torch.version.cuda is None:
        return "none: CPU build of torch (CUDA cases skip)"
    n = devices.cuda_count()
    seen = f"{n} GPU(s) visible" if n else "no GPU visible (CUDA cases skip)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return f"CUDA {torch.version.cuda} build, {seen}" + (f", cuDNN {cudnn}" if cudnn else "")


def _gpus() -> str:
    import torch

    from harness import devices

    names = devices.gpu_names()
    if not names:
        return "none (CUDA cases skip)"
    out = []
    for i, name in enumerate(names):
        p = torch.cuda.get_device_properties(i)
        out.append(f"cuda:{i} {name} ({p.total_memory / 2**30:.0f} GiB, compute capability "
                   f"{p.major}.{p.minor})")
    return "; ".join(out)


def _provenance() -> str:
    """The hardware and versions every results record of a run here carries."""
    from harness import devices, provenance

    p = provenance.record("cuda:0" if devices.cuda_count() else "cpu")
    return ", ".join(f"{k}={p[k] or '-'}" for k in ("machine", "torch", "cuda", "cpu", "gpu"))


def device_gae(device: str = "cuda") -> str:
    """A tiny GAE on ``device`` against the float64 oracle (doctor's "GAE on CUDA" row)."""
    import torch

    from harness import devices, estimators

    dev = devices.check_device(device)
    g = torch.Generator().manual_seed(0)
    v, nv, r = (torch.randn(2, 50, 1, generator=g) for _ in range(3))
    done = torch.rand(2, 50, 1, generator=g) < 0.1
    want = estimators.oracle_gae(0.99, 0.95, v, nv, r, done)[0]
    got = estimators.gae(0.99, 0.95, *(x.to(dev) for x in (v, nv, r, done)))[0]
    devices.synchronize(dev)
    if got.device != dev:
        raise RuntimeError(f"GAE of {dev} inputs came back on {got.device}")
    err = (got.double().cpu() - want).abs().max().item()
    if not err < 1e-4:
        raise RuntimeError(f"GAE on {dev} differs from the float64 oracle by {err:.2e}")
    return f"GAE of 2x50 steps on {dev} matches the float64 oracle (max error {err:.1e})"


def device_gymnasium(device: str = "cuda") -> str:
    """A batched gymnasium env on ``device``: steps and a partial reset (the CPU simulator
    behind ``harness.backends.SimulatorOnDevice``); doctor's "gymnasium on CUDA" row."""
    import torch

    from harness import backends

    env = backends.make_env("gymnasium", "cartpole", device=device, num_envs=2, seed=0)
    try:
        td = env.reset()
        for _ in range(3):
            _, td = env.step_and_maybe_reset(env.rand_action(td))
        mask = torch.tensor([[True], [False]], device=env.device)
        td = env.reset(td.set("_reset", mask))
        where = {t.device for t in td.values(True, True)}
    finally:
        env.close()
    if where != {env.device}:
        raise RuntimeError(f"env data on {', '.join(sorted(map(str, where)))}, expected "
                           f"{env.device}")
    return f"CartPole x2 on {env.device}: steps and a partial reset, data on {env.device}"


def _gpu_check(fn: Callable[[], str]) -> Callable[[], str]:
    """``fn`` where a GPU is visible; a note (not a failure) elsewhere."""
    def check() -> str:
        from harness import devices

        if not devices.cuda_count():
            return "skipped: no GPU visible"
        return fn()

    return check


def _plain(module: str, dist: str) -> Callable[[], str]:
    def check() -> str:
        __import__(module)
        return _version(dist) or "?"

    return check


def _gae_kernel() -> str:
    """rlgauge's native GAE / TD(λ) kernel: cached build, its recorded self-test verdict, or not
    yet built (never builds here: the first use compiles it, ~30-40 s, then self-tests it in a
    child process). A failed self-test is a failed row: the slower scan is used instead."""
    from harness import gae_native

    ok, line = gae_native.describe_cache()
    if not ok:
        raise RuntimeError(f"CPU: {line}")
    return f"CPU: {line}"


def _gae_kernel_cuda() -> str:
    """Which GAE / TD(λ) kernel CUDA tensors get: the Triton kernel (``harness.gae_triton``)
    where triton imports, else the torch scan. Said whether or not a GPU is visible (then: what
    CUDA would use); imports triton, compiles nothing."""
    from harness import devices, estimators

    where = "" if devices.cuda_count() else " (no GPU visible: what CUDA would use)"
    if estimators.triton_available():
        return f"CUDA: Triton kernel, {estimators.triton_status()}{where}"
    return (f"CUDA: torch scan, {estimators.triton_status()}{where}; the fused kernel needs "
            "triton (extra `kernels`)")


def _extension() -> str:
    from harness import devices, torchrl_ext

    st = torchrl_ext.status()
    if not st.ok:
        fix = ("python -m harness build-ext --force (the rebuild failed its self-test: it was "
               "not installed)" if st.selftest is not None else "python -m harness build-ext")
        raise RuntimeError(f"{st.detail} -- fix: {fix}")
    if devices.cuda_count() and not st.cuda:
        st = dataclasses.replace(st, detail=st.detail + " (CPU segment trees only: no CUDA "
                                 "segment trees; rebuild with nvcc on the path for prioritized "
                                 "replay on the GPU)")
    # end to end: what the extension is for
    import torch
    from torchrl.data import LazyTensorStorage, PrioritizedReplayBuffer

    rb = PrioritizedReplayBuffer(alpha=0.7, beta=0.5, storage=LazyTensorStorage(16))
    rb.extend(torch.arange(16))
    _, info = rb.sample(4, return_info=True)
    rb.update_priority(info["index"], torch.ones(4))
    return f"{st.detail}; PrioritizedReplayBuffer samples and updates ({st.path.name})"


def _gymnasium() -> str:
    import gymnasium as gym

    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    env.step(env.action_space.sample())
    env.close()
    return f"{gym.__version__} (CartPole-v1 steps)"


def _mujoco() -> str:
    import mujoco

    major = int(mujoco.__version__.split(".")[0])
    if major >= 4:
        raise RuntimeError(f"mujoco {mujoco.__version__}: dm_control 1.0.50 needs mujoco 3.x")
    return mujoco.__version__


def _dm_control() -> str:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from dm_control import suite

    env = suite.load("cartpole", "swingup", task_kwargs={"random": 0})
    env.reset()
    env.step([0.0])
    return f"{_version('dm_control')} (cartpole-swingup steps; MUJOCO_GL={os.environ['MUJOCO_GL']})"


def _envpool() -> str:
    import warnings

    import envpool

    with warnings.catch_warnings():  # envpool builds float32 Boxes from float64 bounds
        warnings.filterwarnings("ignore", message=".*precision lowered.*")
        env = envpool.make_gymnasium("CartPole-v1", num_envs=2)
        env.reset()
        env.close()
    return f"{_version('envpool')} (CartPole-v1 x2 steps)"


def _pixels() -> str:
    """What the pixel recipe (tutorial-recurrent-dqn) needs: CartPole rendered off-screen by
    pygame, headless (SDL_VIDEODRIVER=dummy, as reference_impls/recurrent_dqn.py sets it)."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    import gymnasium as gym

    env = gym.make("CartPole-v1", render_mode="rgb_array")
    try:
        env.reset(seed=0)
        frame = env.render()
    finally:
        env.close()
    return (f"pygame {_version('pygame')}: CartPole rendered {frame.shape[1]}x{frame.shape[0]} "
            f"off-screen (SDL_VIDEODRIVER={os.environ['SDL_VIDEODRIVER']})")


def _pins() -> str:
    """Installed versions vs constraints.txt of the checkout this harness comes from."""
    path = Path(__file__).resolve().parent.parent / "constraints.txt"
    if not path.exists():
        return "no constraints.txt beside this install (not a checkout)"
    off = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, want = (x.strip() for x in line.split("==", 1))
        have = _version(name)
        if have is not None and have.split("+")[0] != want.split("+")[0]:
            off.append(f"{name} {have} (pinned {want})")
    if off:
        raise RuntimeError("differs from constraints.txt: " + ", ".join(off))
    return f"installed versions match {path.name}"


def checks() -> list[Check]:
    """Every row of the report, in display order. The CUDA checks are required where a GPU is
    visible (CUDA runs need them) and skipped elsewhere."""
    from harness import devices

    try:
        gpu = devices.cuda_count() > 0
    except Exception:  # a broken torch: its own row says so
        gpu = False
    return [
        _guard("python", True, _python),
        _guard("machine", True, _machine),
        _guard("CPU", True, _cpu),
        # read before the dm_control check defaults it to egl
        Check("MUJOCO_GL", os.environ.get("MUJOCO_GL", "unset (defaults to egl: headless)"),
              True, False),
        _guard("torch", True, _torch),
        _guard("tensordict", True, _plain("tensordict", "tensordict")),
        _guard("torchrl", True, _plain("torchrl", "torchrl")),
        _guard("torchrl extension", True, _extension),
        _guard("GAE kernel", False, _gae_kernel),
        _guard("GAE kernel (CUDA)", False, _gae_kernel_cuda),
        _guard("gymnasium", True, _gymnasium),
        _guard("mujoco", True, _mujoco),
        _guard("dm_control", True, _dm_control),
        _guard("envpool", False, _envpool),
        _guard("pixel rendering", False, _pixels),
        _guard("pandas", True, _plain("pandas", "pandas")),
        _guard("CUDA", False, _cuda),
        _guard("GPUs", False, _gpus),
        _guard("GAE on CUDA", gpu, _gpu_check(device_gae)),
        _guard("gymnasium on CUDA", gpu, _gpu_check(device_gymnasium)),
        _guard("provenance", True, _provenance),
        _guard("pins", False, _pins),
    ]
