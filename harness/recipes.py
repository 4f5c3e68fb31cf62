"""Recipes: torchrl's tutorial pipelines as named, tracked runs on the reference implementations.

TorchRL users learn from its tutorials, and API churn keeps breaking them. A recipe states one
tutorial's pipeline -- algorithm, env backend and task, hyper-parameters, frame budget and the
tutorial's own success signal -- as a configuration of a reference implementation
(``reference_impls/``) on a ``harness.backends`` task: no second copy of any algorithm. What a
reference implementation lacked for a tutorial is one of its documented ``Config`` fields, off by
default (``ObservationNorm`` from random rollouts, ``StepCounter``, a cosine learning-rate
schedule, a pixel observation path with a ``ConvNet`` trunk, a memory-mapped replay storage,
CSV logging...).

- ``python -m harness train --recipe NAME [--frames N] [--device D] [--seed S]``: one run;
- ``python -m harness run --recipes A,B ...``: matrix cells (``harness.runs.RunSpec.recipe``);
- ``nox -s learning``: each recipe's success criterion within its budget, 3 seeds
  (``harness.learning.recipe_targets``);
- ``bench/bench_recipes.py``: collection and update throughput per recipe, and what the pixel
  pipeline's transforms cost.

Results. A recipe run's records carry the recipe's name in the ``algorithm`` column (e.g.
``tutorial-ppo``, not ``ppo``): the report pivots on that column, so a recipe gets its own column
in every table instead of being pooled with the reference settings of the same algorithm on the
same task (different hyper-parameters, different numbers); ``python -m harness list`` shows which
algorithm each recipe runs. A recipe run is resolved and finished like any run
(``harness.runs``); finishing adds the success criterion's rows (``success_rows``): the
criterion's metric (e.g. ``max_step_count``, the longest episode of the run), ``success`` (1 or
0), ``success_threshold`` and, when reached, ``frames_to_success``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from harness import registry


@dataclass(frozen=True)
class Success:
    """A tutorial's success signal: ``metric`` (op) ``threshold``.

    ``curve`` names a per-batch curve the run records: ``metric`` is then its maximum over the
    run, and ``frames_to_success`` the frame count of its first point past the threshold.
    Without ``curve``, ``metric`` is a scalar of the run (e.g. ``final_return``).
    """

    metric: str
    threshold: float
    unit: str = ""
    strict: bool = False
    """``>`` instead of ``>=``."""
    curve: str | None = None

    def met(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        return value > self.threshold if self.strict else value >= self.threshold

    def text(self) -> str:
        return f"{self.metric} {'>' if self.strict else '>='} {self.threshold:g}"


@dataclass(frozen=True)
class Recipe:
    """A tutorial's pipeline as a configuration of a reference implementation."""

    name: str
    algorithm: str
    backend: str
    task: str
    frames: int
    """The tutorial's frame budget: the default of ``--frames`` and the learning test's."""
    success: Success
    description: str
    tutorial: str
    """The tutorial it reproduces (torchrl's docs)."""
    overrides: Mapping[str, Any] = field(default_factory=dict)
    """Config fields of ``algorithm`` on top of ``config_for(backend, task)``'s preset."""
    deviations: tuple[str, ...] = ()
    """Where the recipe differs from the tutorial, and why."""
    requires: tuple[str, ...] = ()
    """Python modules the recipe needs beyond its algorithm and backend."""
    learning_device: str = "cpu"
    """Device of the slow learning test; ``cuda``: skipped where there is no GPU."""


RECIPES = registry.Registry("recipe")


def register(recipe: Recipe) -> None:
    """Add ``recipe`` to ``RECIPES`` (its availability: algorithm, backend, task, modules)."""
    RECIPES.register(recipe.name, recipe, description=recipe.description,
                     requires=recipe.requires, check=lambda: _unavailable(recipe))


def _unavailable(recipe: Recipe) -> str | None:
    from harness import backends

    registry.load_builtins()
    for reg, name in ((registry.ALGORITHMS, recipe.algorithm), (registry.BACKENDS, recipe.backend)):
        reason = reg.unavailable_reason(name) if name in reg else f"{name!r} is not registered"
        if reason:
            return f"{reg.kind} {name}: {reason}"
    if recipe.task not in backends.available_tasks(recipe.backend):
        return f"task {recipe.backend}/{recipe.task} cannot be built here"
    return None


def get(name: str) -> Recipe:
    """The recipe called ``name``; UsageError naming the valid ones otherwise."""
    return RECIPES.get(name).value


def available() -> list[Recipe]:
    return [get(name) for name in RECIPES.available()]


def success_rows(recipe: Recipe, records: pd.DataFrame) -> list[dict]:
    """The criterion's rows for a run's records (none when the run did not record its metric,
    e.g. ``final_return`` with ``eval_episodes=0``)."""
    crit = recipe.success
    ok = records[records["status"] == "ok"]
    rows: list[dict] = []
    if crit.curve is not None:
        curve = ok[ok["metric"] == crit.curve]
        if not len(curve):
            return []
        value = float(curve["value"].max())
        rows.append({"metric": crit.metric, "value": value, "unit": crit.unit})
        hit = curve[[crit.met(v) for v in curve["value"]]]
        if len(hit):
            rows.append({"metric": "frames_to_success", "value": int(hit["frames"].iloc[0]),
                         "unit": "frames"})
    else:
        scalar = ok[ok["metric"] == crit.metric]
        if not len(scalar):
            return []
        value = float(scalar["value"].iloc[-1])
    rows.append({"metric": "success", "value": float(crit.met(value)), "unit": "bool"})
    rows.append({"metric": "success_threshold", "value": crit.threshold, "unit": crit.unit})
    return rows


def value_of(recipe: Recipe, records: pd.DataFrame) -> float:
    """The criterion's value in ``finish``-ed records (NaN when absent)."""
    rows = records[(records["metric"] == recipe.success.metric) & (records["status"] == "ok")]
    return float(rows["value"].iloc[-1]) if len(rows) else math.nan


def learning_target(recipe: Recipe):
    """The recipe as a ``harness.training.LearningTarget`` (budget, threshold, source)."""
    from harness.training import LearningTarget

    return LearningTarget(recipe.backend, recipe.task, frames=recipe.frames,
                          threshold=recipe.success.threshold, source=recipe.tutorial,
                          overrides=dict(recipe.overrides))


def describe(recipe: Recipe) -> str:
    """One line for listings: what runs, the budget and the criterion."""
    return (f"{recipe.algorithm} on {recipe.backend}/{recipe.task}, {recipe.frames:,} frames; "
            f"success: {recipe.success.text()}")


# --------------------------------------------------------------------------- the recipes

register(Recipe(
    name="tutorial-ppo",
    algorithm="ppo",
    backend="gymnasium",
    task="inverted-double-pendulum",
    # the tutorial: "Before the 1M step cap is reached, the algorithm should have reached a max
    # step count of 1000 steps" (its rendered docs run total_frames=50_000)
    frames=1_000_000,
    success=Success("max_step_count", 1000.0, unit="steps", curve="step_count_max"),
    description="torchrl's PPO tutorial: InvertedDoublePendulum, ObservationNorm + "
                "StepCounter, TanhNormal policy, GAE, clipped PPO with entropy bonus, cosine LR",
    tutorial="torchrl tutorial 'Reinforcement Learning (PPO) with TorchRL' (coding_ppo.py)",
    overrides=dict(
        num_envs=1, frames_per_batch=1000, minibatch_size=64, num_epochs=10, clip_epsilon=0.2,
        gamma=0.99, lmbda=0.95, lr=3e-4, max_grad_norm=1.0, anneal_lr=True,
        lr_schedule="cosine", anneal_clip=False, entropy_coeff=1e-4, critic_coeff=1.0,
        critic_loss="smooth_l1", hidden=(256, 256, 256), activation="tanh",
        obs_norm_steps=1000, step_counter=True, max_episode_steps=1000,
        # the tutorial's loop: GAE before every epoch, torchrl's functional ClipPPOLoss, the
        # default (multi-tensor) Adam
        advantage_every_epoch=True, functional_loss=True, fused_adam=False),
    deviations=(
        "InvertedDoublePendulum-v5, gymnasium's current version (the tutorial: v4)",
        "no DoubleToFloat transform: the gymnasium backend casts MuJoCo's float64 observation "
        "to float32 in the simulator's wrapper (harness.backends' convention); observation and "
        "reward are float32 as DoubleToFloat made them",
        "advantages normalised per minibatch by ClipPPOLoss (normalize_advantage) instead of "
        "over the batch by GAE(average_gae=True)",
        "one deterministic evaluation at the end (final_return) instead of one every 10 batches",
        "budget: the 1M frames within which the tutorial expects the 1000-step episodes; its "
        "code sets total_frames=50_000 for the docs (--frames 50000 runs that)",
    ),
))

register(Recipe(
    name="tutorial-recurrent-dqn",
    algorithm="recurrent_dqn",
    backend="gymnasium",
    task="cartpole",
    frames=1_000_000,  # the tutorial: "In a real setting, the total number of frames should
    # be set to 1M" (its docs run 200)
    success=Success("max_step_count", 200.0, unit="steps", strict=True,
                    curve="step_count_max"),
    description="torchrl's recurrent DQN tutorial: CartPole from pixels (ToTensorImage, "
                "GrayScale, Resize 84, ObservationNorm), ConvNet -> LSTM -> MLP -> QValue, "
                "SoftUpdate, SliceSampler(50) on memory-mapped storage",
    tutorial="torchrl tutorial 'Recurrent DQN: Training recurrent policies' (dqn_with_rnn.py)",
    overrides=dict(
        pixels=True, pixel_size=84, num_envs=1, frames_per_batch=50, updates_per_batch=16,
        learning_starts=0, slice_len=50, num_slices=4, burn_in=0, buffer_size=20_000,
        storage="memmap", lr=3e-4, anneal_lr=False, gamma=0.99, lmbda=0.0,
        loss_function="l2", max_grad_norm=math.inf,
        eps_init=0.2, eps_end=0.1, exploration_fraction=1.0, target_update="soft",
        tau=0.0032, lstm_hidden=128, hidden=(64,), conv_cells=(32, 32, 64),
        conv_kernels=(8, 4, 3), conv_strides=(4, 2, 1), step_counter=True, reward_scale=0.1,
        obs_norm_steps=1000, eval_episodes=5, max_episode_steps=500),
    deviations=(
        "ConvNet kernels 8/4/3 with strides 4/2/1 (the DQN paper's), not torchrl's default "
        "3/3/3 with stride 1: one gradient step on 4 slices of 50 frames took 15 s on one core "
        "of the 2-core development machine with stride 1 and 0.25 s with these; the channels "
        "(32, 32, 64), ELU and the adaptive average pooling are the tutorial's "
        "(--set conv_kernels=3,3,3 --set conv_strides=1,1,1 restores its trunk, e.g. on a GPU)",
        "Resize through torch's antialiased bilinear interpolation (PixelResize): torchrl's "
        "Resize needs torchvision, whose registry wheel does not load with the CPU torch",
        "ObservationNorm: one mean and std over all pixels (the tutorial keeps one per image "
        "column: keep_dims=[0] on an unbatched rollout)",
        "SoftUpdate after every gradient step with tau 0.0032 = 1 - 0.95^(1/16): the "
        "tutorial's eps=0.95 (tau 0.05) once per batch of 16 gradient steps",
        "slices of 50 steps within one episode from a flat storage of 20,000 frames "
        "(SliceSampler, span=True, padded and masked), not whole 50-step collector batches "
        "from a storage of 20,000 such batches",
        "epsilon anneals 0.2 -> 0.1 over the budget (the tutorial: over 1M frames)",
        "Double DQN target (double_dqn=True; the tutorial's DQNLoss: delay_value only)",
        "success = an episode longer than 200 steps within the tutorial's 1M frames (the "
        "getting-started tutorial's 'solved'); the tutorial itself plots the greedy test "
        "episodes' lengths and states no threshold",
    ),
    requires=("pygame",),
    learning_device="cuda",
))

register(Recipe(
    name="tutorial-dqn",
    algorithm="dqn",
    backend="gymnasium",
    task="cartpole",
    frames=50_000,
    success=Success("max_step_count", 200.0, unit="steps", strict=True,
                    curve="step_count_max"),
    description="torchrl's getting-started DQN: CartPole with StepCounter, QValue MLP [64, 64], "
                "epsilon-greedy, SoftUpdate, CSV logging of returns; solved at 200 steps",
    tutorial="torchrl tutorial 'Get started with your own first training loop' "
             "(getting-started-5.py)",
    overrides=dict(
        num_envs=1, train_freq=100, gradient_steps=10, batch_size=128, buffer_size=100_000,
        init_random_frames=5000, lr=0.02, gamma=0.99, loss_function="l2",
        max_grad_norm=math.inf, target_update="soft", tau=0.01, eps_init=0.5, eps_end=0.1,
        exploration_fraction=0.3, hidden=(64, 64), step_counter=True,
        csv_log_dir="results/runs/csv_logs", max_episode_steps=500),
    deviations=(
        "a fixed budget of 50k frames (the tutorial trains until an episode lasts 200 steps)",
        "the exploration policy collects (the tutorial hands its greedy policy to the "
        "collector); epsilon anneals 0.5 -> 0.1 over the first 15k frames, the 100k "
        "annealing steps the tutorial counts at 10 per 100-frame batch after its 5k warm-up",
        "Double DQN target (the tutorial's DQNLoss: delay_value only); ReLU hidden layers "
        "(the tutorial's MLP: Tanh)",
        "CSV files of torchrl's CSVLogger under results/runs/csv_logs/ (no video recording)",
    ),
))

register(Recipe(
    name="tutorial-ddpg",
    algorithm="ddpg",
    backend="gymnasium",
    task="pendulum",
    frames=20_000,
    success=Success("final_return", -200.0, unit="return"),
    description="DDPG on Pendulum (the training deck's pipeline): deterministic actor, Q "
                "critic, Ornstein-Uhlenbeck exploration, soft target updates (tau 0.005)",
    tutorial="torchrl's DDPG tutorial (coding_ddpg.py) and training deck: DDPG on Pendulum",
    overrides=dict(noise="ou", tau=0.005),
    deviations=(
        "Pendulum with RL Zoo's DDPG settings otherwise (the reference's defaults: 400-300 "
        "ReLU networks, 10k random warm-up frames, one update per frame)",
    ),
))
