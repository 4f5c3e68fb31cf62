"""Recipes (``harness.recipes``: torchrl's tutorial pipelines): how fast does each collect and
update, and what does the pixel pipeline's transform chain cost per step?

- ``RecipeTraining`` trains every recipe for a short budget once per asv run (``setup_cache``)
  with the recipe's own settings -- only its warm-up shortened so that the budget reaches the
  updates, and no final evaluation -- and tracks what the run recorded: microseconds per
  collected frame (env + policy: collection throughput), update microseconds per collected frame
  (update throughput), and the env / policy / update shares of the wall time (informational).
- ``PixelStep`` steps the ``tutorial-recurrent-dqn`` env with random actions three ways:
  ``raw`` (gymnasium's ``SyncVectorEnv`` of CartPole with ``AddRenderObservation``: the simulator
  and pygame's off-screen rendering), ``wrapper`` (the same through torchrl's ``GymWrapper``, no
  transforms) and ``recipe`` (the recipe's env: ``ToTensorImage`` -> ``GrayScale`` -> ``Resize``
  -> ``StepCounter`` -> ``InitTracker`` -> ``RewardScaling`` -> ``ObservationNorm``).
- ``PixelTransformShare`` times the three interleaved in one process and tracks the transform
  chain's share of the recipe's step time, ``(recipe - wrapper) / recipe``, and the share of the
  simulator with its rendering, ``raw / recipe`` (the rest is torchrl's wrapper).

The pixel pipeline is the heaviest collector workload of the suite: a CartPole frame is rendered
at 600x400 RGB and shrunk to 84x84 grey on every step. Its classes skip where pygame is missing.

``python -m bench.bench_recipes [--out FILE]`` measures the same in one process (the training
budgets once, the pixel steppers interleaved) and prints a Markdown table.
"""

from __future__ import annotations

import statistics
import time

import torch  # noqa: F401 -- imported once by asv's forkserver, not per benchmark process

from bench.common import RLBenchmark, emit, pin_threads
from harness.devices import synchronize

PIXEL_RECIPE = "tutorial-recurrent-dqn"
#: recipe -> the short budget's overrides (warm-up shortened, evaluation off); appended to the
#: recipe's own settings, so everything else is the tutorial's pipeline
BUDGETS = {
    "tutorial-ppo": ("frames=2000", "eval_episodes=0"),
    "tutorial-recurrent-dqn": ("frames=200", "obs_norm_steps=200", "eval_episodes=0"),
    "tutorial-dqn": ("frames=3000", "init_random_frames=1000", "eval_episodes=0"),
    "tutorial-ddpg": ("frames=2000", "init_random_frames=1000", "eval_episodes=0"),
}
#: the same, a few batches each: what the suite's self-test dry run trains (``smoke_cache``)
SMOKE_BUDGETS = {
    "tutorial-ppo": ("frames=200", "frames_per_batch=100", "minibatch_size=50", "num_epochs=1",
                     "obs_norm_steps=50", "eval_episodes=0"),
    "tutorial-recurrent-dqn": ("frames=100", "updates_per_batch=1", "obs_norm_steps=20",
                               "buffer_size=1000", "eval_episodes=0"),
    "tutorial-dqn": ("frames=300", "init_random_frames=100", "gradient_steps=2",
                     "eval_episodes=0"),
    "tutorial-ddpg": ("frames=200", "init_random_frames=100", "updates_per_frame=0.2",
                      "eval_episodes=0"),
}
STEPS = 20  # random-action steps per timed call of the pixel env


def _train(name: str, budget: tuple[str, ...]) -> dict[str, float]:
    import tempfile

    from harness import recipes, runs

    if recipes.RECIPES.unavailable_reason(name):
        return {}
    frames = int(next(o for o in budget if o.startswith("frames=")).split("=")[1])
    overrides = [o for o in budget if not o.startswith("frames=")]
    with tempfile.TemporaryDirectory() as tmp:
        if "csv_log_dir" in recipes.get(name).overrides:  # keep the CSV logs out of the checkout
            overrides.append(f"csv_log_dir={tmp}")
        spec = runs.spec_for(recipe=name, frames=frames, overrides=overrides)
        records = runs.train(spec)[1].records
    values = records.groupby("metric")["value"].last()
    total = values["env_time_s"] + values["policy_time_s"] + values["update_time_s"]
    return {
        "us_per_collected_frame": 1e6 / values["collect_fps"],
        # frames = train_fps x wall_time_s
        "update_us_per_frame": 1e6 * values["update_time_s"]
                               / (values["train_fps"] * values["wall_time_s"]),
        "env_share": values["env_time_s"] / total,
        "policy_share": values["policy_time_s"] / total,
        "update_share": values["update_time_s"] / total,
    }


class RecipeTraining(RLBenchmark):
    """Short training runs of every recipe (CPU): collection and update time per frame."""

    param_names = ("recipe",)
    params = (list(BUDGETS),)
    timeout = 1800

    def setup_cache(self):
        pin_threads()
        return {name: _train(name, budget) for name, budget in BUDGETS.items()}

    @staticmethod
    def smoke_cache():
        """A few batches of each recipe: what the suite's self-test dry run uses instead of
        ``setup_cache`` (tests/test_bench_suite.py)."""
        pin_threads()
        return {name: _train(name, budget) for name, budget in SMOKE_BUDGETS.items()}

    def setup(self, cache, recipe):
        super().setup("cpu")
        if not cache.get(recipe):
            raise NotImplementedError(f"recipe {recipe} is not available here")
        self.values = cache[recipe]

    def track_us_per_collected_frame(self, cache, recipe):
        return self.values["us_per_collected_frame"]

    track_us_per_collected_frame.unit = "us/frame"

    def track_update_us_per_frame(self, cache, recipe):
        return self.values["update_us_per_frame"]

    track_update_us_per_frame.unit = "us/frame"

    def track_env_share(self, cache, recipe):
        return self.values["env_share"]

    track_env_share.unit = "fraction"

    def track_policy_share(self, cache, recipe):
        return self.values["policy_share"]

    track_policy_share.unit = "fraction"

    def track_update_share(self, cache, recipe):
        return self.values["update_share"]

    track_update_share.unit = "fraction"


# --------------------------------------------------------------------------- the pixel pipeline


def _require_pixels() -> None:
    from harness import recipes

    reason = recipes.RECIPES.unavailable_reason(PIXEL_RECIPE)
    if reason:
        raise NotImplementedError(f"{PIXEL_RECIPE} unavailable: {reason}")


def _pixel_stepper(impl: str, device):
    """``(run, close)``: ``run()`` makes ``STEPS`` random-action steps of the pixel env."""
    from harness import pixels, runs
    from reference_impls import recurrent_dqn

    config = runs.resolve(runs.spec_for(recipe=PIXEL_RECIPE, device=str(device),  # not timed
                                        overrides=["obs_norm_steps=20"])).config
    if impl == "raw":
        import functools

        import gymnasium as gym

        from harness import backends

        task = backends.get_task(config.backend, config.task)
        vec = gym.vector.SyncVectorEnv(
            [functools.partial(pixels.rendering_env, task.id)] * config.num_envs)
        vec.action_space.seed(0)
        vec.reset(seed=0)

        def run():  # the vector env's default auto-reset restarts finished episodes
            for _ in range(STEPS):
                vec.step(vec.action_space.sample())

        return run, vec.close
    if impl == "wrapper":
        from harness import backends

        holder = pixels.make_env(config.backend, config.task, device=config.device,
                                 num_envs=config.num_envs, seed=config.seed,
                                 size=config.pixel_size)
        env = backends.simulator_of(holder)  # torchrl's GymWrapper (on the CPU): no transforms
    else:
        env = holder = recurrent_dqn.make_env(config)
    state = {"td": env.reset()}

    def run():
        td = state["td"]
        for _ in range(STEPS):
            _, td = env.step_and_maybe_reset(env.rand_action(td))
        state["td"] = td
        synchronize(device)

    return run, holder.close


class PixelStep(RLBenchmark):
    """The pixel recipe's env per random-action step: raw gymnasium + rendering, through
    torchrl's wrapper, and with the recipe's transform chain."""

    param_names = (*RLBenchmark.param_names, "impl")
    params = (*RLBenchmark.params, ["raw", "wrapper", "recipe"])
    number = 1  # a call consumes env state
    repeat = (3, 5, 2.0)
    rounds = 1
    warmup_time = 0.0  # setup warms up
    timeout = 300

    def setup(self, device, impl):
        super().setup(device)
        _require_pixels()
        if impl == "raw" and self.device.type != "cpu":
            raise NotImplementedError("gymnasium renders on the CPU only")
        self.run, close = _pixel_stepper(impl, self.device)
        self.on_teardown(close)
        self.run()  # warm-up outside the timer

    def time_steps(self, device, impl):
        self.run()

    def track_us_per_step(self, device, impl):
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            self.run()
            samples.append(time.perf_counter() - start)
        return 1e6 * statistics.median(samples) / STEPS

    track_us_per_step.unit = "us/step"


class PixelTransformShare(RLBenchmark):
    """Where the pixel recipe's step time goes: the transform chain's share (and the simulator
    with its rendering), from the three steppers timed interleaved in one process."""

    params = (["cpu"],)  # gymnasium renders on the CPU; the CUDA case is PixelStep's
    timeout = 300
    ROUNDS = 5

    def setup(self, *args):
        super().setup("cpu")
        _require_pixels()
        self.runs = {}
        for impl in ("raw", "wrapper", "recipe"):
            run, close = _pixel_stepper(impl, self.device)
            self.on_teardown(close)
            run()  # warm-up
            self.runs[impl] = run
        self.seconds = None

    def _measure(self) -> dict[str, float]:
        if self.seconds is None:
            samples = {impl: [] for impl in self.runs}
            for _ in range(self.ROUNDS):
                for impl, run in self.runs.items():
                    start = time.perf_counter()
                    run()
                    samples[impl].append(time.perf_counter() - start)
            self.seconds = {impl: statistics.median(s) for impl, s in samples.items()}
        return self.seconds

    def track_transform_share(self, *args):
        """``(recipe - wrapper) / recipe``: the transforms' fraction of a recipe env step."""
        s = self._measure()
        return max(s["recipe"] - s["wrapper"], 0.0) / s["recipe"]

    track_transform_share.unit = "fraction"

    def track_render_share(self, *args):
        """``raw / recipe``: simulator + off-screen rendering's fraction of a recipe env step."""
        s = self._measure()
        return s["raw"] / s["recipe"]

    track_render_share.unit = "fraction"

    def track_transform_us_per_step(self, *args):
        s = self._measure()
        return 1e6 * max(s["recipe"] - s["wrapper"], 0.0) / STEPS

    track_transform_us_per_step.unit = "us/step"


def main(argv=None) -> int:
    import argparse
    import platform

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown table here too")
    parser.add_argument("--rounds", type=int, default=PixelTransformShare.ROUNDS)
    args = parser.parse_args(argv)
    pin_threads()
    lines = [f"# bench_recipes: one process ({platform.node()}, torch {torch.__version__}, "
             f"threads=1)", "",
             "| recipe | budget | us per collected frame | update us per frame | env / policy / "
             "update share |", "|---|---|---|---|---|"]
    for name, budget in BUDGETS.items():
        v = _train(name, budget)
        if not v:
            lines.append(f"| {name} | unavailable here | | | |")
            continue
        lines.append(f"| {name} | {' '.join(budget)} | {v['us_per_collected_frame']:,.0f} | "
                     f"{v['update_us_per_frame']:,.0f} | {v['env_share']:.0%} / "
                     f"{v['policy_share']:.0%} / {v['update_share']:.0%} |")
    share = PixelTransformShare()
    share.ROUNDS = args.rounds
    try:
        share.setup()
        s = share._measure()
        lines += ["", f"Pixel pipeline ({PIXEL_RECIPE}), {STEPS} random-action steps per call, "
                  f"median of {args.rounds} interleaved rounds:", "",
                  "| stepper | us per step | share of the recipe's step |", "|---|---|---|"]
        for impl, what in (("raw", "gymnasium step + off-screen render"),
                           ("wrapper", "+ torchrl GymWrapper"),
                           ("recipe", "+ transform chain (the recipe's env)")):
            lines.append(f"| {what} | {1e6 * s[impl] / STEPS:,.0f} | "
                         f"{s[impl] / s['recipe']:.0%} |")
        lines.append(f"| transform chain alone | {share.track_transform_us_per_step():,.0f} | "
                     f"{share.track_transform_share():.0%} |")
    except NotImplementedError as exc:
        lines += ["", f"Pixel pipeline skipped: {exc}"]
    finally:
        share.teardown()
    text = "\n".join(lines) + "\n"
    emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
