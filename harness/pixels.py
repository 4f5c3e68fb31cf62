"""Rendered frames as observations: a gymnasium task seen through its pixels (torchrl's recurrent
DQN tutorial), beside ``harness.backends``' state observations.

- ``make_env(backend, task, *, device, num_envs, seed, size)``: the task rendered
  (``render_mode="rgb_array"``, gymnasium's ``AddRenderObservation``), batched as
  ``harness.backends`` batches gymnasium (one ``SyncVectorEnv``, partial resets), its data moved
  to ``device`` once (``backends.to_device``), then torchrl's ``ToTensorImage`` -> ``GrayScale``
  -> ``PixelResize(size, size)``: ``"pixels"`` ``[num_envs, 1, size, size]`` float32 beside the
  state ``"observation"``.
- ``PixelResize``: torchrl's ``Resize`` without torchvision.
- ``rendering_env(task_id)``: one rendering gymnasium env (the raw loop of
  ``bench/bench_recipes.py`` too).

Rendering needs no display: gymnasium's classic-control envs draw ``rgb_array`` frames on an
off-screen pygame surface; ``SDL_VIDEODRIVER=dummy`` (set by ``make_env`` unless already set)
only keeps pygame from probing for a window system.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import nn
from torchrl.envs import GrayScale, Resize, ToTensorImage, TransformedEnv
from torchrl.envs.transforms.transforms import ObservationTransform

from harness import backends
from harness.errors import UsageError


class PixelResize(Resize):
    """torchrl's ``Resize`` computed by torch's antialiased bilinear interpolation -- what
    torchvision's ``resize`` runs on a float image tensor -- so that it needs no torchvision:
    torchrl's own ``Resize`` imports it, and the registry's torchvision wheel is a CUDA build
    whose operators do not load with the pinned CPU torch (``operator torchvision::nms does
    not exist``); the CPU build is on PyTorch's own index only."""

    def __init__(self, w: int, h: int | None = None, in_keys=("pixels",)):
        ObservationTransform.__init__(self, in_keys=list(in_keys), out_keys=list(in_keys))
        self.w, self.h = int(w), int(w if h is None else h)
        self.interpolation = "bilinear"

    def _apply_transform(self, observation: torch.Tensor) -> torch.Tensor:
        if observation.shape[-2:] == torch.Size([self.w, self.h]):
            return observation
        lead = observation.shape[:-3]
        out = nn.functional.interpolate(observation.reshape(-1, *observation.shape[-3:]),
                                        size=[self.w, self.h], mode="bilinear",
                                        align_corners=False, antialias=True)
        return out.reshape(*lead, *out.shape[-3:])


def rendering_env(task_id: str):
    """One gymnasium env whose observation is ``{"observation": state, "pixels": frame}``."""
    import gymnasium as gym

    env = gym.make(task_id, render_mode="rgb_array", disable_env_checker=True)
    return gym.wrappers.AddRenderObservation(env, render_only=False, render_key="pixels",
                                             obs_key="observation")


def make_env(backend: str, task: str, *, device="cpu", num_envs: int = 1, seed: int = 0,
             size: int = 84):
    """The gymnasium ``task`` rendered to frames, batched like ``harness.backends`` batches it
    (one ``SyncVectorEnv``, partial resets), then ``ToTensorImage`` -> ``GrayScale`` ->
    ``PixelResize(size, size)``."""
    if backend != "gymnasium":
        raise UsageError(f"pixels=True renders gymnasium tasks only; got backend {backend!r}")
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no window system: pygame off-screen
    import gymnasium as gym
    from torchrl.envs import GymWrapper

    spec = backends.get_task(backend, task)
    vec = gym.vector.SyncVectorEnv([functools.partial(rendering_env, spec.id)] * num_envs,
                                   autoreset_mode=gym.vector.AutoresetMode.DISABLED)
    env = GymWrapper(vec, categorical_action_encoding=True, device="cpu")
    env.set_seed(seed)
    # the simulator's data crosses to the device once, as in harness.backends; the frames are
    # converted, grayed and resized there
    env = backends.to_device(env, device)
    return TransformedEnv(env, ToTensorImage(in_keys=["pixels"]))\
        .append_transform(GrayScale(in_keys=["pixels"]))\
        .append_transform(PixelResize(size, size))
