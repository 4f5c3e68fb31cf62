"""Probe envs: their closed forms hold, they seed, batch, reset partially, and pass torchrl's
spec check on every device (CUDA skipped where absent); on CUDA they match the CPU probes (a
parity test that needs a GPU skips without one rather than compare the CPU with itself)."""

from __future__ import annotations

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from harness import probes
from harness.errors import UsageError
from harness.estimators import oracle_mc_return

F64 = torch.float64
TASK_NAMES = ["constant-terminated", "constant-truncated", "last-reward", "obs-reward",
              "discount", "bandit", "continuous", "memory"]
ACTION_INDEPENDENT = ["constant-terminated", "constant-truncated", "last-reward", "obs-reward",
                      "discount"]
RANDOM_TASKS = {"obs-reward": {}, "memory": {}, "bandit": {"stochastic": True}}


def constant_policy(env: probes.ProbeEnv, value: float = 1.0):
    """Action 1 (discrete) or ``value`` (continuous) in every sub-env."""
    if env.action_kind == "discrete":
        action = torch.full((env.num_envs,), int(value), dtype=torch.int64, device=env.device)
    else:
        action = torch.full((env.num_envs, 1), value, dtype=torch.float32, device=env.device)
    return lambda td: td.set("action", action.clone())


def remembering_policy(env: probes.Memory):
    """The memory probe's oracle: keep the last non-zero observation, answer with it."""
    memory = torch.zeros(env.num_envs, device=env.device)

    def policy(td):
        nonlocal memory
        obs = td["observation"].squeeze(-1)
        memory = torch.where(obs != 0, obs, memory)
        return td.set("action", (memory > 0).to(torch.int64))

    return policy


def optimal_policy(env: probes.ProbeEnv):
    if env.name == "memory":
        return remembering_policy(env)
    if env.name == "bandit":
        return constant_policy(env, env.optimal_action)
    if env.name == "continuous":
        return constant_policy(env, env.optimal_action)
    return constant_policy(env, 0)


def rollout(env, steps, policy=None):
    return env.rollout(steps, policy, break_when_any_done=False)


# --- registry and construction ---------------------------------------------------------


def test_tasks_are_registered_with_their_action_kind():
    assert list(probes.TASKS) == TASK_NAMES
    for name, cls in probes.TASKS.items():
        assert cls.name == name
        expected = "continuous" if name == "continuous" else "discrete"
        assert cls.action_kind == expected, name


def test_make_rejects_an_unknown_task_naming_the_valid_ones():
    with pytest.raises(UsageError) as err:
        probes.make("cartpole")
    assert str(err.value) == f"unknown probe task 'cartpole'; valid: {', '.join(TASK_NAMES)}"


@pytest.mark.parametrize(("task", "kwargs", "match"), [
    ("constant-terminated", {"horizn": 3}, "unknown option 'horizn'.*valid: horizon"),
    ("discount", {"horizon": 3}, "unknown option 'horizon'.*valid: none"),
    ("memory", {"horizon": 1}, "horizon must be an integer >= 2"),
    ("last-reward", {"horizon": 0}, "horizon must be a positive integer"),
    ("bandit", {"means": (0.5, 1.5)}, "means must be 2 numbers in"),
    ("continuous", {"target": 2.0}, "target must lie in"),
], ids=["typo", "fixed-horizon", "memory-too-short", "zero-horizon", "bad-means", "bad-target"])
def test_make_rejects_bad_options(task, kwargs, match):
    with pytest.raises(UsageError, match=match):
        probes.make(task, **kwargs)


@pytest.mark.parametrize("num_envs", [0, -1, 1.5, True])
def test_make_rejects_bad_num_envs(num_envs):
    with pytest.raises(UsageError, match="num_envs must be a positive integer"):
        probes.make("bandit", num_envs=num_envs)


def test_closed_form_helpers_reject_bad_gamma():
    with pytest.raises(UsageError, match=r"gamma must lie in \[0, 1\)"):
        probes.make("constant-truncated").closed_form_value(1.0)
    with pytest.raises(UsageError, match=r"gamma must lie in \[0, 1\]"):
        probes.make("last-reward").closed_form_value(1.5)


# --- specs -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASK_NAMES)
def test_check_env_specs(task, device):
    env = probes.make(task, num_envs=4, device=device, seed=0)
    check_env_specs(env, seed=0)
    assert env.batch_size == torch.Size([4])
    assert set(env.full_done_spec.keys()) == {"done", "terminated", "truncated"}
    obs = env.observation_spec["observation"]
    assert obs.dtype == torch.float32 and obs.shape == (4, 1)
    if env.action_kind == "discrete":  # a Categorical (integer) action spec, no trailing dim
        assert env.action_spec.dtype == torch.int64 and env.action_spec.shape == (4,)
        assert env.action_spec.space.n == 2
    else:
        assert env.action_spec.shape == (4, 1)
        assert (env.action_spec.space.low == -1).all() and (env.action_spec.space.high == 1).all()


@pytest.mark.parametrize("task", TASK_NAMES)
def test_done_is_terminated_or_truncated(task, device):
    env = probes.make(task, num_envs=3, device=device, seed=0)
    data = rollout(env, 12)
    nxt = data["next"]
    assert torch.equal(nxt["done"], nxt["terminated"] | nxt["truncated"])
    assert not (nxt["terminated"] & nxt["truncated"]).any()
    assert nxt["done"].any()  # every probe ends its episodes within 12 steps (H <= 10)
    if task == "constant-truncated":  # the only probe whose episodes end by truncation
        assert not nxt["terminated"].any()
    else:
        assert not nxt["truncated"].any()


# --- closed forms ------------------------------------------------------------------------


def finite_cases(tasks, gammas):
    """(task, γ) cases whose value is finite: constant-truncated's continuing value
    1 / (1 - γ) is infinite at γ = 1, so that pair is not generated (its rejection is
    ``test_closed_form_helpers_reject_bad_gamma``)."""
    return [pytest.param(task, gamma, id=f"{task}-{gamma}") for task in tasks for gamma in gammas
            if not (task == "constant-truncated" and gamma == 1.0)]


@pytest.mark.parametrize(("task", "gamma"), finite_cases(TASK_NAMES, [0.0, 0.9, 1.0]))
def test_closed_form_value_matches_discounted_return(task, gamma, device):
    """Every probe's ``closed_form_value`` is the discounted return its optimal policy gets.
    Fails if a closed form is off by a step, e.g. ``LastReward.closed_form_value`` returning
    γ^H instead of γ^(H-1)."""
    env = probes.make(task, num_envs=64, device=device, seed=1)
    H = env.horizon
    data = rollout(env, 3 * H, optimal_policy(env))  # three whole episodes in every sub-env
    returns = oracle_mc_return(gamma, data["next", "reward"], data["next", "done"]).cpu()
    starts = returns[:, ::H, 0]
    if task == "constant-truncated":
        # Σ_{k<H} γ^k + γ^H · V(s_H), V = 1 / (1 - γ): the continuing value 1 / (1 - γ)
        starts = starts + gamma**H * env.closed_form_value(gamma)
    if task == "obs-reward":
        # V(obs) = obs, E[V0] = 0: check per episode against its first observation
        assert torch.equal(starts, data["observation"][:, ::H, 0].cpu().to(F64))
        return
    expected = env.closed_form_value(gamma)
    # constant-terminated: (1 - γ^H) / (1 - γ); last-reward: γ^(H-1); discount: γ;
    # bandit: max mean 0.8; continuous: 0 at a = a*; memory: γ^(H-1) with memory
    assert torch.allclose(starts, torch.full_like(starts, expected), atol=1e-6), (task, expected)


@pytest.mark.parametrize(("task", "gamma"), finite_cases(ACTION_INDEPENDENT, [0.5, 0.9, 1.0]))
def test_value_of_every_observation(task, gamma, device):
    """``value(obs, γ)`` is the discounted return from every observation of a rollout. Fails if
    a value is off by a step, e.g. ``ConstantTerminated.value`` counting ``H - t + 1``
    remaining rewards."""
    env = probes.make(task, num_envs=8, device=device, seed=2)
    H = env.horizon
    data = rollout(env, 2 * H)  # random actions: these probes ignore them
    returns = oracle_mc_return(gamma, data["next", "reward"], data["next", "done"])
    obs = data["observation"].to(F64)
    if task == "constant-truncated":
        t = obs
        # G_t = (1 - γ^(H-t)) / (1 - γ), plus γ^(H-t) / (1 - γ) from V(s_H): 1 / (1 - γ)
        assert torch.allclose(returns, probes.geometric_sum(gamma, H - t), atol=1e-9)
        returns = returns + gamma ** (H - t) * env.closed_form_value(gamma)
    # V(t) = (1 - γ^(H-t)) / (1 - γ), γ^(H-1-t), γ^(1-t) (discount), obs (obs-reward), 1/(1-γ)
    assert torch.allclose(returns, env.value(obs, gamma), atol=1e-9), task


def test_value_at_the_terminal_observation_is_zero():
    for task in ("constant-terminated", "last-reward", "discount", "obs-reward"):
        env = probes.make(task)
        terminal = rollout(env, env.horizon)["next", "observation"][:, -1]
        # V = 0 at the terminal observation: (1 - γ^0) / (1 - γ) = 0 for the counters, 0 past
        # the last reward for last-reward / discount, V(obs = 0) = 0 for obs-reward
        assert env.value(terminal.to(F64), 0.9).abs().max().item() == 0.0, task


def test_discount_probe_values():
    env = probes.make("discount")
    obs = torch.tensor([[0.0], [1.0], [2.0]], dtype=F64)
    # V0 = γ, V1 = 1, V(2) = 0 (terminal)
    assert env.value(obs, 0.9).flatten().tolist() == pytest.approx([0.9, 1.0, 0.0])
    assert env.closed_form_value(0.9) == pytest.approx(0.9)
    data = rollout(env, 2)
    assert data["next", "reward"].flatten().tolist() == [0.0, 1.0]  # reward 0 then 1
    assert data["next", "terminated"].flatten().tolist() == [False, True]


def test_obs_reward_signs_are_balanced(device):
    env = probes.make("obs-reward", num_envs=4096, device=device, seed=3)
    obs = env.reset()["observation"]
    assert set(obs.unique().tolist()) == {-1.0, 1.0}
    # E[obs] = 0 for a fair ±1: within 4 σ = 4 / sqrt(4096)
    assert abs(obs.mean().item()) < 4 / 4096**0.5


@pytest.mark.parametrize("stochastic", [False, True], ids=["deterministic", "bernoulli"])
def test_bandit_arm_means(stochastic, device):
    n = 4096
    env = probes.make("bandit", num_envs=n, device=device, seed=4, stochastic=stochastic)
    for arm, mean in enumerate(env.means):
        reward = rollout(env, 1, constant_policy(env, arm))["next", "reward"]
        # Q(a) = means[a] (0.2, 0.8): exact when deterministic, within 4 σ when Bernoulli
        tol = 4 * (mean * (1 - mean) / n) ** 0.5 if stochastic else 0.0
        mean_reward = reward.to(F64).mean().item()
        if not stochastic:
            mean_reward = reward.unique().item()  # every pull of the arm pays its mean
            mean = torch.tensor(mean, dtype=torch.float32).item()
        assert abs(mean_reward - mean) <= tol, (arm, mean_reward)
        if stochastic:
            assert set(reward.unique().tolist()) == {0.0, 1.0}
    assert env.q_values().tolist() == pytest.approx([0.2, 0.8])
    assert env.optimal_action == 1 and env.closed_form_value(0.9) == pytest.approx(0.8)


def test_continuous_reward_is_negative_squared_distance(device):
    env = probes.make("continuous", num_envs=5, device=device, seed=0)
    actions = torch.tensor([[-1.0], [0.0], [0.3], [1.0], [3.0]], device=device)
    env.reset()
    td = env.step(env.reset().set("action", actions))
    reward = td["next", "reward"].cpu()
    # -(a - 0.3)^2, with a clamped into [-1, 1] (3.0 acts as 1.0); the optimum a* = 0.3 gives 0
    expected = torch.tensor([[-1.69], [-0.09], [0.0], [-0.49], [-0.49]])
    assert torch.allclose(reward, expected, atol=1e-6)
    assert torch.allclose(env.q_value(actions).cpu(), expected, atol=1e-6)
    assert env.optimal_action == 0.3 and env.closed_form_value(0.9) == 0.0


# --- memory ------------------------------------------------------------------------------


def final_rewards(env, policy):
    data = rollout(env, env.horizon, policy)  # exactly one episode per sub-env
    assert data["next", "terminated"][:, -1].all()
    assert (data["next", "reward"][:, :-1] == 0).all()  # 0 on every step but the last
    return data["next", "reward"][:, -1, 0]


@pytest.mark.parametrize("horizon", [2, 3, 5])
def test_memory_remembering_policy_scores_one(horizon, device):
    env = probes.make("memory", num_envs=256, device=device, seed=5, horizon=horizon)
    # a recurrent (here: remembering) policy matches the cue every time: final reward 1
    assert final_rewards(env, remembering_policy(env)).min().item() == 1.0
    assert env.closed_form_value(0.9) == pytest.approx(0.9 ** (horizon - 1))


MEMORYLESS = {
    "always-0": lambda obs, g: torch.zeros_like(obs, dtype=torch.int64),
    "always-1": lambda obs, g: torch.ones_like(obs, dtype=torch.int64),
    "follow-obs": lambda obs, g: (obs > 0).to(torch.int64),  # sees 0 when it has to answer
    "against-obs": lambda obs, g: (obs <= 0).to(torch.int64),
    "uniform": lambda obs, g: torch.randint(0, 2, obs.shape, generator=g, device=obs.device),
}


@pytest.mark.parametrize("name", list(MEMORYLESS))
def test_memory_memoryless_policy_scores_one_half(name, device):
    n = 8192
    env = probes.make("memory", num_envs=n, device=device, seed=6)
    g = torch.Generator(device=env.device).manual_seed(0)
    fn = MEMORYLESS[name]

    def policy(td):
        return td.set("action", fn(td["observation"].squeeze(-1), g))

    mean = final_rewards(env, policy).mean().item()
    # any memoryless policy sees 0 at the last step whatever the cue: E[final reward] = 0.5,
    # here within 4 σ = 4 · 0.5 / sqrt(8192)
    assert abs(mean - 0.5) <= 4 * 0.5 / n**0.5, mean
    assert env.memoryless_value(0.9) == pytest.approx(0.5 * 0.9 ** (env.horizon - 1))


# --- seeding -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASK_NAMES)
def test_same_seed_same_rollout(task, device):
    kwargs = RANDOM_TASKS.get(task, {})

    def run(seed):
        env = probes.make(task, num_envs=16, device=device, seed=seed, **kwargs)
        return rollout(env, 12, constant_policy(env, 1.0))

    a, b = run(7), run(7)
    assert (a == b).all(), task
    if task in RANDOM_TASKS:  # and the seed matters where there is randomness
        assert not (a == run(8)).all(), task


@pytest.mark.parametrize("task", list(RANDOM_TASKS))
def test_set_seed_replays_and_leaves_the_global_rng_alone(task, device):
    env = probes.make(task, num_envs=16, device=device, seed=None, **RANDOM_TASKS[task])
    policy = constant_policy(env, 1.0)
    state = torch.get_rng_state()
    env.set_seed(11)
    first = rollout(env, 9, policy)
    env.set_seed(11)
    second = rollout(env, 9, policy)
    assert (first == second).all()
    assert torch.equal(state, torch.get_rng_state())  # the env draws from its own generator


# --- batched partial resets ----------------------------------------------------------------


def test_reset_mask_resets_only_flagged_sub_envs(device):
    env = probes.make("constant-terminated", num_envs=4, device=device, horizon=10)
    td = env.reset()
    for _ in range(3):
        td = env.step(td.set("action", torch.zeros(4, dtype=torch.int64, device=device)))
        td = td["next"].clone()
    assert td["observation"].flatten().tolist() == [3.0, 3.0, 3.0, 3.0]
    mask = torch.tensor([True, False, True, False], device=device).unsqueeze(-1)
    td = env.reset(td.set("_reset", mask))
    # flagged sub-envs restart at t = 0, the others stay at t = 3
    assert td["observation"].flatten().tolist() == [0.0, 3.0, 0.0, 3.0]
    td = env.step(td.set("action", torch.zeros(4, dtype=torch.int64, device=device)))
    assert td["next", "observation"].flatten().tolist() == [1.0, 4.0, 1.0, 4.0]


def test_reset_mask_keeps_the_memory_cue_of_running_episodes(device):
    env = probes.make("memory", num_envs=512, device=device, seed=9, horizon=3)
    policy = remembering_policy(env)
    td = policy(env.reset())
    td = env.step(td)["next"].clone()  # every sub-env at t = 1, observation 0
    mask = torch.arange(512, device=device).remainder(2).bool().unsqueeze(-1)
    td = env.reset(td.set("_reset", mask))
    obs = td["observation"]
    # odd sub-envs got a fresh cue (±1), even ones are still mid-episode (0)
    assert (obs[mask].abs() == 1).all() and (obs[~mask] == 0).all()
    # the remembering policy (it kept the old cues) still scores 1 in the running episodes
    data = env.rollout(5, policy, auto_reset=False, tensordict=td, break_when_any_done=False)
    done = data["next", "done"][..., 0]
    rewards = data["next", "reward"][..., 0]
    first_end = done.float().argmax(dim=1)
    first_reward = rewards.gather(1, first_end.unsqueeze(1)).squeeze(1)
    assert (first_end[~mask.squeeze(-1)] == 1).all()  # running episodes end after 2 more steps
    assert (first_end[mask.squeeze(-1)] == 2).all()  # restarted ones after 3
    assert first_reward.min().item() == 1.0


def test_auto_reset_in_rollout_restarts_only_finished_sub_envs(device):
    env = probes.make("last-reward", num_envs=3, device=device, horizon=4)
    td = env.reset()
    td = env.step(td.set("action", torch.zeros(3, dtype=torch.int64, device=device)))
    td = env.reset(td["next"].clone().set("_reset", torch.tensor(
        [[True], [False], [False]], device=device)))  # sub-env 0 one step behind
    data = env.rollout(9, lambda td: td.set("action", torch.zeros(3, dtype=torch.int64,
                                                                   device=device)),
                       auto_reset=False, tensordict=td, break_when_any_done=False)
    obs, nxt = data["observation"][..., 0], data["next", "observation"][..., 0]
    done = data["next", "done"][..., 0]
    # the counter advances by one each step, and restarts at 0 exactly after that sub-env's end
    assert torch.equal(nxt, obs + 1)
    assert torch.equal(obs[:, 1:], torch.where(done[:, :-1], 0.0, nxt[:, :-1]))
    assert obs[:, 0].tolist() == [0.0, 1.0, 1.0]
    assert done[0].nonzero().flatten().tolist() == [3, 7]
    assert done[1].nonzero().flatten().tolist() == [2, 6]


# --- devices -----------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASK_NAMES)
def test_device_parity_with_cpu(task, cuda_device):
    """Every probe on CUDA keeps its outputs on CUDA and matches the CPU probe (all values for
    the deterministic probes, the episode ends and the memory probe's rewards for the random
    ones). Fails if a probe keeps a tensor on the CPU when built for CUDA (e.g. ``Bandit._means``
    made without ``device=self.device``: indexing it with the CUDA action raises) or if its
    values or episode ends depend on the device. Needs a GPU: not tried where it was written."""
    device = cuda_device
    env = probes.make(task, num_envs=32, device=device, seed=0)
    data = rollout(env, 10, optimal_policy(env))
    for key, value in data.items(include_nested=True, leaves_only=True):
        assert value.device == env.device, key
    reference = probes.make(task, num_envs=32, device="cpu", seed=0)
    expected = rollout(reference, 10, optimal_policy(reference))
    if task in RANDOM_TASKS:
        # CPU and CUDA generators draw different streams: compare what the streams do not fix
        assert data["next", "done"].cpu().equal(expected["next", "done"])
        if task == "memory":  # the optimal return does not depend on the cues drawn
            assert data["next", "reward"].cpu().equal(expected["next", "reward"])
    else:
        assert (data.cpu() == expected).all(), task


def test_memory_alternate_cues_make_the_memoryless_score_exact():
    """``cues="alternate"``: each pair of sub-envs holds both cues in every episode, so a
    memoryless policy (here: always action 1) scores exactly 0.5 and the cue-copying policy 1,
    whatever the seed. Fails if the pattern repeats a cue within a pair or stops alternating
    between episodes."""
    for seed in range(3):
        env = probes.make("memory", num_envs=4, cues="alternate", seed=seed)
        data = env.rollout(3 * env.horizon, break_when_any_done=False)
        cues = data["observation"][:, ::env.horizon, 0]  # [env, episode]
        assert cues.sum(0).eq(0).all()  # both cues in every episode, per pair of sub-envs
        assert (cues[:, 1:] == -cues[:, :-1]).all()  # alternating from episode to episode
        always_one = torch.ones(4, dtype=torch.int64)
        env.reset()
        td = env.reset()
        for _ in range(env.horizon):
            td = env.step(td.set("action", always_one))["next"]
        assert td["reward"].mean().item() == 0.5
    with pytest.raises(UsageError, match="cues must be one of random, alternate"):
        probes.make("memory", cues="sometimes")
