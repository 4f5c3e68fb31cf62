"""Recipes (torchrl's tutorial pipelines on the reference implementations): each is registered with
the tutorial's settings, builds the tutorial's env and modules with the tutorial's keys and specs,
runs a few hundred frames and reports its success criterion; the CLI, the matrix and the learning
session know them. The slow learning runs at the tutorials' budgets are in test_learning.py."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch
from torchrl.envs import (
    GrayScale,
    InitTracker,
    ObservationNorm,
    Resize,
    RewardScaling,
    StepCounter,
    ToTensorImage,
)
from torchrl.envs.utils import check_env_specs

from harness import learning, matrix, pixels, recipes, results, runs
from harness.training import add_primers, observation_stats

NAMES = ["tutorial-ppo", "tutorial-recurrent-dqn", "tutorial-dqn", "tutorial-ddpg"]

#: a few hundred frames of each recipe: its pipeline end to end, cheap settings for the parts
#: that only cost time (random-rollout statistics, update counts, evaluation length)
PROBE = {
    "tutorial-ppo": ("frames=200", "frames_per_batch=100", "minibatch_size=50", "num_epochs=1",
                     "obs_norm_steps=50", "eval_episodes=1", "max_episode_steps=50"),
    "tutorial-recurrent-dqn": ("frames=100", "updates_per_batch=1", "obs_norm_steps=20",
                               "buffer_size=1000", "eval_episodes=1", "max_episode_steps=20"),
    "tutorial-dqn": ("frames=300", "init_random_frames=100", "gradient_steps=2",
                     "eval_episodes=1", "max_episode_steps=50"),
    "tutorial-ddpg": ("frames=200", "init_random_frames=100", "updates_per_frame=0.2",
                      "eval_episodes=1", "max_episode_steps=50"),
}


def _resolve(name, tmp_path, *extra, device="cpu"):
    overrides = [o for o in PROBE[name] if not o.startswith("frames=")]
    frames = next(int(o.split("=")[1]) for o in PROBE[name] if o.startswith("frames="))
    if name == "tutorial-dqn":
        overrides.append(f"csv_log_dir={tmp_path / 'csv'}")
    resolved = runs.resolve(runs.spec_for(recipe=name, device=device, frames=frames,
                                          overrides=[*overrides, *extra]))
    return resolved.recipe, resolved.module, resolved.config


def _typed(name, tmp_path) -> dict:
    """PROBE[name]'s overrides (frames aside) as typed Config values."""
    overrides = [o for o in PROBE[name] if not o.startswith("frames=")]
    if name == "tutorial-dqn":
        overrides.append(f"csv_log_dir={tmp_path / 'csv'}")
    return runs.parse_overrides(recipes.get(name).algorithm, overrides)


# --------------------------------------------------------------------------- registry


def test_recipes_registered_on_reference_algorithms():
    assert recipes.RECIPES.names() == NAMES
    for name in NAMES:
        recipe = recipes.get(name)
        assert recipe.algorithm in {"ppo", "recurrent_dqn", "dqn", "ddpg"}
        assert recipe.deviations and recipe.tutorial and recipe.success.metric
    with pytest.raises(Exception, match="unknown recipe 'nope'; valid: tutorial-ppo"):
        recipes.get("nope")


def test_tutorial_ppo_has_the_tutorials_hyper_parameters():
    resolved = runs.resolve(runs.spec_for(recipe="tutorial-ppo"))
    module, config = resolved.module, resolved.config
    assert module.__name__ == "reference_impls.ppo"
    assert (config.backend, config.task, config.frames) == ("gymnasium",
                                                            "inverted-double-pendulum", 1_000_000)
    assert (config.frames_per_batch, config.minibatch_size, config.num_epochs) == (1000, 64, 10)
    assert (config.clip_epsilon, config.gamma, config.lmbda, config.lr) == (0.2, 0.99, 0.95, 3e-4)
    assert (config.max_grad_norm, config.lr_schedule, config.anneal_clip) == (1.0, "cosine", False)
    assert config.entropy_coeff == 1e-4 and config.critic_loss == "smooth_l1"
    assert config.hidden == (256, 256, 256) and config.obs_norm_steps == 1000


def test_cosine_schedule_is_torchs_cosine_annealing_stepped_per_batch():
    from reference_impls import ppo

    config = runs.resolve(runs.spec_for(recipe="tutorial-ppo")).config
    per_batch, batches = 150, 50  # 10 epochs x 15 minibatches; the docs' 50k frames / 1000
    config = config.replace(frames=50_000)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, batches, 0.0)
    for batch in range(batches):
        want = optimizer.param_groups[0]["lr"]
        for step in (batch * per_batch, batch * per_batch + per_batch - 1):
            got = ppo.lr_factor(config, step, per_batch, per_batch * batches)
            assert got == pytest.approx(want, abs=1e-9), (batch, step)
        optimizer.step()
        cosine.step()


def test_override_that_is_not_a_config_field_is_one_clear_error():
    with pytest.raises(Exception, match="bad override 'nope=1'"):
        runs.resolve(runs.spec_for(recipe="tutorial-dqn", overrides=["nope=1"]))


# --------------------------------------------------------------------------- envs and modules


def _transforms(env):
    return [type(t) for t in env.transform.transforms] if hasattr(env.transform, "transforms") \
        else [type(env.transform)]


def test_tutorial_ppo_env_and_policy_keep_the_tutorials_keys_and_specs(tmp_path):
    _, module, config = _resolve("tutorial-ppo", tmp_path)
    torch.manual_seed(0)
    env = module.make_env(config)
    try:
        assert _transforms(env) == [ObservationNorm, StepCounter]
        norm = env.transform[0]
        assert norm.loc.shape == (9,) and (norm.scale > 0).all()  # from random rollouts
        check_env_specs(env, seed=0)
        spec = env.observation_spec
        assert spec["observation"].dtype == torch.float32  # what DoubleToFloat gave the tutorial
        assert spec["step_count"].dtype == torch.int64
        assert env.reward_spec.dtype == torch.float32
        actor, critic = module.make_modules(config, env)
        data = env.rollout(20, actor, break_when_any_done=False)
        for key in ("observation", "step_count", "loc", "scale", "action",
                    "action_log_prob", ("next", "observation"), ("next", "step_count"),
                    ("next", "reward"), ("next", "done"), ("next", "truncated")):
            assert key in data.keys(True), key
        assert data["action"].abs().max() <= 1.0  # TanhNormal inside the action bounds
        assert "state_value" in critic(data).keys()
        # the normalised observation of the random-rollout distribution is standardised
        stats = observation_stats(env)
        assert torch.equal(stats[0], norm.loc) and torch.equal(stats[1], norm.scale)
    finally:
        env.close()


def test_tutorial_recurrent_dqn_renders_pixels_headless_with_the_tutorials_chain(tmp_path):
    _, module, config = _resolve("tutorial-recurrent-dqn", tmp_path)
    torch.manual_seed(0)
    env = module.make_env(config)
    try:
        chain = _transforms(env)
        assert chain == [ToTensorImage, GrayScale, pixels.PixelResize, StepCounter, InitTracker,
                         RewardScaling, ObservationNorm]
        assert issubclass(pixels.PixelResize, Resize)
        assert env.transform[5].scale == pytest.approx(0.1)
        norm = env.transform[6]
        assert norm.loc.ndim == 0 and float(norm.scale) > 0  # one mean and std over all pixels
        check_env_specs(env, seed=0)
        assert env.observation_spec["pixels"].shape == (1, 1, 84, 84)
        assert env.observation_spec["pixels"].dtype == torch.float32
        qnet, _ = module.make_modules(config, env)
        add_primers(env, qnet)
        data = env.rollout(12, qnet, break_when_any_done=False)
        for key in ("pixels", "is_init", "step_count", "recurrent_state_h", "recurrent_state_c",
                    "embed", "action_value", "chosen_action_value", "action",
                    ("next", "pixels"), ("next", "recurrent_state_h"), ("next", "reward")):
            assert key in data.keys(True), key
        assert data["embed"].shape[-1] == 64  # ConvNet channels pooled to one value each
        assert data["recurrent_state_h"].shape[-1] == 128
        # RewardScaling(scale=0.1): CartPole's reward 1 per step arrives as 0.1
        assert torch.allclose(data["next", "reward"], torch.full_like(data["next", "reward"], .1))
        assert data["pixels"].std() > 0.1  # normalised frames, not a blank image
    finally:
        env.close()


def test_pixel_resize_is_antialiased_bilinear_without_torchvision():
    from harness.pixels import PixelResize

    resize = PixelResize(84, 84)
    frames = torch.rand(2, 3, 1, 400, 600)
    out = resize._apply_transform(frames)
    assert out.shape == (2, 3, 1, 84, 84)
    want = torch.nn.functional.interpolate(frames.reshape(6, 1, 400, 600), size=[84, 84],
                                           mode="bilinear", antialias=True)
    assert torch.equal(out.reshape(6, 1, 84, 84), want)
    flat = resize._apply_transform(torch.full((1, 400, 600), 0.25))
    assert torch.allclose(flat, torch.full_like(flat, 0.25))  # averages, never invents


def test_tutorial_dqn_and_ddpg_envs_keep_their_keys(tmp_path):
    _, dqn, config = _resolve("tutorial-dqn", tmp_path)
    env = dqn.make_env(config)
    try:
        assert _transforms(env) == [StepCounter]
        check_env_specs(env, seed=0)
        actor, explore = dqn.make_modules(config, env)
        data = env.rollout(10, explore, break_when_any_done=False)
        for key in ("observation", "step_count", "action_value", "action",
                    ("next", "step_count")):
            assert key in data.keys(True), key
    finally:
        env.close()
    _, ddpg, config = _resolve("tutorial-ddpg", tmp_path)
    env = ddpg.make_env(config)
    try:
        check_env_specs(env, seed=0)
        actor, critic = ddpg.make_modules(config, env)
        policy, noise = ddpg.make_exploration(config, env, actor)
        assert type(noise).__name__ == "OrnsteinUhlenbeckProcessModule"
        data = env.rollout(10, policy, break_when_any_done=False)
        assert "is_init" in data.keys() and data["action"].abs().max() <= 2.0
    finally:
        env.close()


# --------------------------------------------------------------------------- probe-budget runs


@pytest.mark.parametrize("name", NAMES)
def test_recipe_runs_a_probe_budget_and_reports_its_criterion(name, tmp_path, sim_device):
    # on CUDA too where a GPU is lent: tutorial-recurrent-dqn's learning test runs only there
    recipe, module, config = _resolve(name, tmp_path, device=str(sim_device))
    torch.manual_seed(0)
    resolved = runs.resolve(runs.spec_for(recipe=name, device=str(sim_device),
                                          frames=config.frames,
                                          overrides=dict(_typed(name, tmp_path))))
    records = runs.run(resolved).records
    assert set(records["algorithm"]) == {name}  # the recipe is the table's column
    assert (records["status"] == "ok").all(), records[records["status"] != "ok"]
    values = records.groupby("metric")["value"].last()
    for metric in ("collect_fps", "train_fps", "env_time_s", "update_time_s", "final_return",
                   "success", "success_threshold", recipe.success.metric):
        assert metric in values, metric
    assert values["success"] in (0.0, 1.0)
    assert values["success_threshold"] == recipe.success.threshold
    if recipe.success.curve:
        curve = records[records["metric"] == recipe.success.curve]
        assert len(curve) and values[recipe.success.metric] == curve["value"].max()
        assert 1 <= values[recipe.success.metric] <= config.frames
    if name == "tutorial-dqn":  # torchrl's CSVLogger wrote the returns as they came
        files = list((tmp_path / "csv").glob("*/scalars/episode_return.csv"))
        assert len(files) == 1
        lines = files[0].read_text().split()
        assert lines and all(len(line.split(",")) == 2 for line in lines)


def test_success_rows_read_the_curve_strictly():
    recipe = recipes.get("tutorial-dqn")  # max_step_count > 200
    rows = [{"metric": "step_count_max", "value": v, "frames": f, "unit": "steps"}
            for v, f in ((50, 100), (200, 200), (230, 300), (180, 400))]
    records = results.make_records(rows, algorithm="dqn", backend="gymnasium", task="cartpole",
                                   device="cpu", num_envs=1, seed=0)
    got = {r["metric"]: r["value"] for r in recipes.success_rows(recipe, records)}
    assert got == {"max_step_count": 230, "frames_to_success": 300, "success": 1.0,
                   "success_threshold": 200.0}  # 200 is not > 200: the first hit is 230
    assert recipes.success_rows(recipe, records[records["metric"] == "nope"]) == []


# --------------------------------------------------------------------------- CLI, matrix, learning


def _rlgauge(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_cli_train_recipe_saves_results_with_the_criterion(tmp_path):
    proc = _rlgauge("train", "--recipe", "tutorial-dqn", "--frames", "300", "--out",
                    str(tmp_path), *[a for o in PROBE["tutorial-dqn"][1:] for a in ("--set", o)],
                    "--set", f"csv_log_dir={tmp_path / 'csv'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "success         max_step_count > 200" in proc.stdout
    files = list(tmp_path.glob("tutorial-dqn-gymnasium-cartpole-cpu-s0-*.csv"))
    assert len(files) == 1
    frame = results.load(files[0])
    assert set(frame["algorithm"]) == {"tutorial-dqn"} and "success" in set(frame["metric"])


def test_cli_bad_recipe_is_one_line_naming_the_valid_ones(capsys):
    from harness.cli import main

    assert main(["train", "--recipe", "nope"]) == 2  # in-process: the same code as the CLI
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unknown recipe 'nope'" in lines[0]
    assert all(name in lines[0] for name in NAMES)
    assert main(["run", "--recipes", "tutorial-dqn,nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_cli_list_shows_the_recipes(capsys):
    from harness.cli import main

    assert main(["list"]) == 0
    section = capsys.readouterr().out.split("recipes:")[1].split("backends:")[0]
    for name in NAMES:
        assert name in section
    assert "success: max_step_count >= 1000" in section


def test_matrix_recipe_cells_carry_the_recipe(tmp_path):
    grid = matrix.Grid(algorithms=(), backends=(), recipes=("tutorial-dqn", "tutorial-ppo"),
                       seeds=2, frames=300)
    specs, skips = matrix.expand(grid)
    assert not skips and len(specs) == 4
    spec = specs[0]
    assert (spec.recipe, spec.algorithm, spec.task) == ("tutorial-dqn", "dqn", "cartpole")
    assert spec.key.startswith("tutorial-dqn-gymnasium-cartpole-cpu-")
    assert "tutorial-dqn (dqn)" in spec.label() and spec.context()["algorithm"] == "tutorial-dqn"
    assert len({s.key for s in specs}) == 4
    # beside the algorithm cells: the same algorithm/task without a recipe is another cell
    plain, _ = matrix.expand(matrix.Grid(("dqn",), ("gymnasium",), tasks=("cartpole",)))
    assert plain[0].key != matrix.RunSpec("dqn", "gymnasium", "cartpole", "cpu", 0,
                                          recipe="tutorial-dqn").key
    cell = matrix.RunSpec("dqn", "gymnasium", "cartpole", "cpu", 0, frames=300,
                          overrides=tuple(_typed("tutorial-dqn", tmp_path).items()),
                          recipe="tutorial-dqn")
    records = matrix.run_cell(cell)
    assert set(records["algorithm"]) == {"tutorial-dqn"}
    metrics = set(records["metric"])
    assert {"success", "max_step_count", "peak_rss_mb", "threshold"} <= metrics


def test_matrix_unknown_recipe_is_bad_input():
    with pytest.raises(Exception, match="unknown recipe 'nope'"):
        matrix.expand(matrix.Grid(algorithms=(), backends=(), recipes=("nope",)))


def _dqn_recipe_rows(values) -> pd.DataFrame:
    """learning.run_recipe's rows for tutorial-dqn, one seed per value of max_step_count; the
    seeds past 200 first met it at 8,400 frames."""
    first = [8_400.0 if v > 200 else math.nan for v in values]
    return pd.DataFrame([{"algorithm": "tutorial-dqn", "backend": "gymnasium",
                          "task": "cartpole", "frames": 50_000, "threshold": 200.0,
                          "source": "t", "seed": s, "metric": "max_step_count", "value": v,
                          "criterion": "max_step_count > 200", "strict": True,
                          "frames_to_success": f, "curve": True,
                          "final_return": math.nan, "wall_time_s": 1.0}
                         for s, (v, f) in enumerate(zip(values, first, strict=True))])


def test_learning_lists_every_recipe_with_its_criterion():
    targets = dict(learning.recipe_targets())
    assert set(targets) == set(NAMES)
    assert targets["tutorial-ppo"].frames == 1_000_000
    assert targets["tutorial-ppo"].threshold == 1000.0
    rows = _dqn_recipe_rows((500.0, 200.0, 201.0))
    table = learning.table(rows)
    assert table["criterion"].iloc[0] == "max_step_count > 200"
    assert table["median"].iloc[0] == 201.0 and table["met"].iloc[0] == "yes"
    assert not learning.met(rows.assign(value=[500.0, 200.0, 200.0]))  # strict: 200 fails
    assert table[learning.FIRST_MET].iloc[0] == "8,400, not met, 8,400"
    # a criterion measured once at the end (tutorial-ddpg's final_return) has no "first"
    scalar = rows.assign(metric="final_return", curve=False, frames_to_success=math.nan)
    assert learning.table(scalar)[learning.FIRST_MET].iloc[0] == ""


def test_learning_table_accumulates_and_migrates_old_tables(tmp_path):
    """write_table keeps the previous table's other rows, with their dates; rows of a table
    written before the criterion column get ``final_return >= threshold``, and the old
    "returns (per seed)" column is read as "per seed"."""
    old = pd.DataFrame([{"algorithm": "ppo", "task": "gymnasium/cartpole", "frames": 100_000,
                         "threshold": 475.0, "source": "RL Zoo",
                         "returns (per seed)": "500.0, 500.0, 500.0", "median": 500.0,
                         "met": "yes", "wall s (per seed, median)": 151.8,
                         "date": "2026-11-20"}])
    old.to_csv(tmp_path / "learning-m.csv", index=False)
    rows = _dqn_recipe_rows((500.0, 240.0, 500.0))
    learning.write_table(rows, tmp_path, "m")
    table = pd.read_csv(tmp_path / "learning-m.csv")
    assert list(table["algorithm"]) == ["ppo", "tutorial-dqn"]
    assert list(table["criterion"]) == ["final_return >= 475", "max_step_count > 200"]
    assert list(table["per seed"]) == ["500.0, 500.0, 500.0", "500.0, 240.0, 500.0"]
    assert table["date"].iloc[0] == "2026-11-20"
    assert table[learning.FIRST_MET].fillna("").tolist() == ["", "8,400, 8,400, 8,400"]
    assert "nan" not in (tmp_path / "learning-m.md").read_text()
