"""Probe environments: pure-torch torchrl envs whose values are known in closed form.

Each probe isolates one thing an RL implementation can get wrong (discounting, bootstrapping on
truncation, reading the observation, credit assignment to an action, memory) and states, in its
class docstring, the exact value that a correct estimator or learner must find. They are torchrl
``EnvBase`` subclasses that:

- run on any device (``cpu``, ``cuda``), so CUDA code paths are testable without a simulator;
- are natively batched: ``batch_size=[num_envs]``, every entry shaped ``[num_envs, ...]``;
- are seedable: the randomness (only some probes have any) comes from a ``torch.Generator`` on
  the env's device, never the global RNG; the same seed gives the same rollout on the same device
  (CPU and CUDA generators draw different streams, so only the statistics agree across devices);
- reset only the sub-envs flagged by a ``"_reset"`` mask, keeping the others mid-episode;
- declare ``done``, ``terminated`` and ``truncated`` (``done == terminated | truncated``).

Conventions shared by all probes:

- ``"observation"``: float32 ``[num_envs, 1]``. Horizon probes observe the step counter ``t``
  (number of steps taken in the episode, ``0 .. H``), so a value function of the observation can
  be exact. After the final step of an episode the ``("next", "observation")`` is the terminal
  observation (``H`` for counters, ``0`` otherwise); the next ``reset`` replaces it.
- ``"action"``: discrete probes use a ``Categorical`` spec of 2 actions: int64 ``[num_envs]``,
  no trailing dim, as gymnasium's CartPole under ``GymEnv(categorical_action_encoding=True)``
  and the users of integer actions (``QValueModule(action_space="categorical")``, a
  ``Categorical`` distribution in a ``ProbabilisticActor``) expect. Continuous probes use a
  ``Bounded`` float32 ``[num_envs, 1]`` spec in ``[-1, 1]``. Action-independent probes still
  take an (ignored) discrete action, so that any discrete policy runs on them.
- ``"reward"``: float32 ``[num_envs, 1]``.

Closed forms: ``env.closed_form_value(gamma)`` is V(s_0) (expected over the start distribution,
under an optimal policy; action-independent probes have one value for every policy);
``env.value(observation, gamma)`` is the exact V(s) from the observation, usable as a value
network; horizon probes add ``episode_return(gamma, t)``. ``TASKS`` maps the public task names to
the classes, ``make`` builds one and names the valid tasks on a bad name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from harness.devices import check_device
from harness.errors import UsageError

__all__ = [
    "TASKS",
    "Bandit",
    "ConstantTerminated",
    "ConstantTruncated",
    "Continuous",
    "Discount",
    "LastReward",
    "Memory",
    "ObsReward",
    "ProbeEnv",
    "geometric_sum",
    "make",
]


def geometric_sum(gamma: float, n):
    """Σ_{k=0}^{n-1} γ^k = (1 - γ^n) / (1 - γ), and n when γ = 1. ``n`` may be a tensor."""
    if gamma == 1.0:
        return n * 1.0
    if isinstance(n, torch.Tensor):
        return (1.0 - torch.pow(gamma, n)) / (1.0 - gamma)
    return (1.0 - gamma**n) / (1.0 - gamma)


def _check_gamma(gamma: float, *, below_one: bool = False) -> float:
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0 or (below_one and gamma == 1.0):
        bound = "[0, 1)" if below_one else "[0, 1]"
        raise UsageError(f"gamma must lie in {bound}; got {gamma}")
    return gamma


class ProbeEnv(EnvBase):
    """Base class of the probes: specs, batching, seeding, partial resets, the step counter.

    A subclass sets ``name``, ``action_kind``, ``task_params`` (its keyword arguments and their
    defaults) and implements ``_reward`` (reward of the step being taken, before the counter
    advances), and optionally ``_observe`` (observation after the counter moved),
    ``_new_episode`` (draw per-episode randomness for the sub-envs being reset) and the
    closed-form helpers.
    """

    name: ClassVar[str] = ""
    action_kind: ClassVar[str] = "discrete"  # "discrete" (Categorical) or "continuous" (Bounded)
    num_actions: ClassVar[int] = 2  # discrete probes only
    task_params: ClassVar[dict[str, Any]] = {}
    truncates: ClassVar[bool] = False  # episode end is a truncation instead of a termination
    horizon: int = 1  # steps per episode (an instance attribute where it is a task parameter)

    def __init__(
        self,
        num_envs: int = 1,
        device: Any = "cpu",
        seed: int | None = None,
        **task_kwargs: Any,
    ):
        unknown = sorted(set(task_kwargs) - set(self.task_params))
        if unknown:
            valid = ", ".join(self.task_params) or "none"
            raise UsageError(f"unknown option {unknown[0]!r} for probe task {self.name!r}; "
                             f"valid: {valid}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise UsageError(f"num_envs must be a positive integer; got {num_envs!r}")
        device = check_device(str(device))
        super().__init__(device=device, batch_size=torch.Size([num_envs]))
        self.num_envs = num_envs
        self._configure(**{**self.task_params, **task_kwargs})
        self._make_specs()
        self._rng = torch.Generator(device=self.device)
        self._set_seed(seed)
        self._t = torch.zeros(num_envs, dtype=torch.int64, device=self.device)
        self._new_episode(torch.ones(num_envs, dtype=torch.bool, device=self.device))

    # --- subclass hooks -------------------------------------------------------------------

    def _configure(self, **params: Any) -> None:
        """Validate and store the task parameters (defaults merged in)."""

    def _observation_spec(self) -> Any:
        n = self.num_envs
        return Unbounded(shape=(n, 1), dtype=torch.float32, device=self.device)

    def _observe(self) -> torch.Tensor:
        return torch.zeros(self.num_envs, 1, dtype=torch.float32, device=self.device)

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _new_episode(self, mask: torch.Tensor) -> None:
        """Draw the per-episode randomness of the sub-envs where ``mask`` is True."""

    # --- closed forms (overridden where defined) ------------------------------------------

    def closed_form_value(self, gamma: float) -> float:
        """V(s_0) under an optimal policy, expected over the start distribution."""
        raise NotImplementedError

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        """The exact V(s) read from the observation, shaped like ``observation``."""
        raise NotImplementedError(f"probe {self.name!r} has no value function of the observation")

    # --- EnvBase --------------------------------------------------------------------------

    def _make_specs(self) -> None:
        n, device = self.num_envs, self.device
        self.observation_spec = Composite(
            observation=self._observation_spec(), shape=(n,), device=device
        )
        if self.action_kind == "discrete":
            self.action_spec = Categorical(
                self.num_actions, shape=(n,), dtype=torch.int64, device=device
            )
        else:
            self.action_spec = Bounded(
                low=-1.0, high=1.0, shape=(n, 1), dtype=torch.float32, device=device
            )
        self.reward_spec = Unbounded(shape=(n, 1), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(n, 1), dtype=torch.bool, device=device)
        self.full_done_spec = Composite(
            done=flag.clone(), terminated=flag.clone(), truncated=flag.clone(),
            shape=(n,), device=device,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self._rng.seed()  # non-deterministic
        else:
            self._rng.manual_seed(int(seed))

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs: Any) -> TensorDictBase:
        mask = None if tensordict is None else tensordict.get("_reset", None)
        if mask is None:
            mask = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        else:
            mask = mask.to(self.device).reshape(self.num_envs, -1).any(-1)
        self._t = torch.where(mask, torch.zeros_like(self._t), self._t)
        self._new_episode(mask)
        flag = torch.zeros(self.num_envs, 1, dtype=torch.bool, device=self.device)
        return TensorDict(
            {"observation": self._observe(), "done": flag, "terminated": flag.clone(),
             "truncated": flag.clone()},
            batch_size=self.batch_size, device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")
        reward = self._reward(action).to(torch.float32).reshape(self.num_envs, 1)
        self._t = self._t + 1
        end = (self._t >= self.horizon).unsqueeze(-1)
        never = torch.zeros_like(end)
        terminated, truncated = (never, end) if self.truncates else (end, never)
        return TensorDict(
            {"observation": self._observe(), "reward": reward, "done": end.clone(),
             "terminated": terminated.clone(), "truncated": truncated.clone()},
            batch_size=self.batch_size, device=self.device,
        )

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.task_params)
        return (f"{type(self).__name__}(task={self.name!r}, num_envs={self.num_envs}, "
                f"device={self.device}{', ' + params if params else ''})")


class _CounterProbe(ProbeEnv):
    """A fixed-horizon probe whose observation is the step counter t ∈ {0, ..., H}."""

    task_params: ClassVar[dict[str, Any]] = {"horizon": 10}

    def _configure(self, horizon: int = 10, **params: Any) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise UsageError(f"horizon must be a positive integer; got {horizon!r}")
        self.horizon = horizon

    def _observation_spec(self) -> Any:
        return Bounded(low=0.0, high=float(self.horizon), shape=(self.num_envs, 1),
                       dtype=torch.float32, device=self.device)

    def _observe(self) -> torch.Tensor:
        return self._t.to(torch.float32).unsqueeze(-1)


class ConstantTerminated(_CounterProbe):
    """Reward 1 on every step; the episode terminates after H steps.

    Observation: the step counter t. Action: ignored (discrete). Deterministic.
    Closed form: V(t) = Σ_{k=0}^{H-t-1} γ^k = (1 - γ^(H-t)) / (1 - γ)  (H - t at γ = 1);
    V0 = (1 - γ^H) / (1 - γ); V(H) = 0 (terminal). Every estimator fed the exact V has
    advantage 0 everywhere; one that bootstraps past the termination does not.
    """

    name = "constant-terminated"

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        return torch.ones(self.num_envs, device=self.device)

    def closed_form_value(self, gamma: float) -> float:
        return float(geometric_sum(_check_gamma(gamma), self.horizon))

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        return geometric_sum(_check_gamma(gamma), self.horizon - observation)

    def episode_return(self, gamma: float, t: int = 0) -> float:
        """Discounted sum of the rewards from step t to the end of the episode."""
        return float(geometric_sum(_check_gamma(gamma), self.horizon - t))


class ConstantTruncated(_CounterProbe):
    """Reward 1 on every step; the episode is TRUNCATED after H steps.

    The underlying process is continuing (reward 1 forever); a time limit cuts it at H, so the
    last step has ``truncated=True, terminated=False`` and an estimator must bootstrap from
    V(s_H), read from ``("next", "observation") = H``. Observation: the step counter t.
    Deterministic; action ignored (discrete).

    Closed forms (γ < 1):
      true value, every state:           V(t) = 1 / (1 - γ)
      return inside the episode:         G_t = (1 - γ^(H-t)) / (1 - γ)      (no bootstrap)
      bootstrapped from V(s_H) = v:      G_t + γ^(H-t) v
    With the exact V the bootstrapped target is 1 / (1 - γ) at every step for every λ; an
    estimator that treats the truncation as a termination gets G_t instead.
    """

    name = "constant-truncated"
    truncates = True

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        return torch.ones(self.num_envs, device=self.device)

    def closed_form_value(self, gamma: float) -> float:
        return 1.0 / (1.0 - _check_gamma(gamma, below_one=True))

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        return torch.full_like(observation, self.closed_form_value(gamma))

    def episode_return(self, gamma: float, t: int = 0) -> float:
        """Discounted sum of the rewards from step t to the truncation, without bootstrap."""
        return float(geometric_sum(_check_gamma(gamma), self.horizon - t))

    def bootstrapped_return(self, gamma: float, t: int = 0, bootstrap: float = 0.0) -> float:
        """G_t + γ^(H-t) · bootstrap: the return an estimator must form at a truncation."""
        return self.episode_return(gamma, t) + gamma ** (self.horizon - t) * bootstrap


class LastReward(_CounterProbe):
    """Reward 1 only on the last step of a horizon-H episode, which terminates.

    Observation: the step counter t. Action ignored (discrete). Deterministic.
    Closed form: V(t) = γ^(H-1-t) for t < H, V(H) = 0 (terminal); V0 = γ^(H-1).
    Checks that the discount is applied once per step and credit flows back H-1 steps.
    """

    name = "last-reward"

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        return (self._t == self.horizon - 1).to(torch.float32)

    def closed_form_value(self, gamma: float) -> float:
        return float(_check_gamma(gamma) ** (self.horizon - 1))

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        gamma = _check_gamma(gamma)
        steps = self.horizon - 1 - observation
        live = steps >= 0
        return torch.where(live, torch.pow(gamma, steps.clamp_min(0)), torch.zeros_like(steps))

    def episode_return(self, gamma: float, t: int = 0) -> float:
        """Discounted sum of the rewards from step t to the end of the episode."""
        return float(_check_gamma(gamma) ** (self.horizon - 1 - t)) if t < self.horizon else 0.0


class Discount(LastReward):
    """Two steps: reward 0, then reward 1, then termination.

    Observation: the step counter t ∈ {0, 1, 2}. Action ignored (discrete). Deterministic.
    Closed form: V0 = γ, V1 = 1, V(2) = 0 (terminal). A learner that gets V0 = 1 ignores γ;
    one that gets V0 = V1 cannot tell the steps apart. (``last-reward`` with H = 2.)
    """

    name = "discount"
    task_params: ClassVar[dict[str, Any]] = {}

    def _configure(self, **params: Any) -> None:
        super()._configure(horizon=2)


class ObsReward(ProbeEnv):
    """One-step episodes; the observation is ±1 at random; reward = observation.

    The sign is drawn uniformly from the env's generator at each reset; the terminal
    observation after the step is 0. Action ignored (discrete).
    Closed form: V(obs) = obs (V(+1) = 1, V(-1) = -1, terminal V(0) = 0); E[V0] = 0.
    Checks that a value network reads its input (a constant predictor gets 0 everywhere).
    """

    name = "obs-reward"

    def _observation_spec(self) -> Any:
        return Bounded(low=-1.0, high=1.0, shape=(self.num_envs, 1), dtype=torch.float32,
                       device=self.device)

    def _new_episode(self, mask: torch.Tensor) -> None:
        draw = torch.randint(0, 2, (self.num_envs,), generator=self._rng, device=self.device)
        sign = (2 * draw - 1).to(torch.float32)
        self._sign = sign if not hasattr(self, "_sign") else torch.where(mask, sign, self._sign)

    def _observe(self) -> torch.Tensor:
        return torch.where(self._t == 0, self._sign, torch.zeros_like(self._sign)).unsqueeze(-1)

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        return self._sign

    def closed_form_value(self, gamma: float) -> float:
        _check_gamma(gamma)
        return 0.0  # E[obs] over the uniform ±1 start

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        _check_gamma(gamma)
        return observation.clone()


class Bandit(ProbeEnv):
    """One-step two-armed bandit, discrete action in {0, 1}.

    Arm means ``means`` (default (0.2, 0.8)). Rewards are DETERMINISTIC (reward = mean of the
    arm pulled) unless ``stochastic=True``, in which case they are Bernoulli(mean) drawn from the
    env's generator. Observation: constant 0.
    Closed form: Q(a) = means[a]; the optimal action is argmax (1 by default); V* = max(means)
    (0.8); a uniform policy gets mean(means) (0.5).
    """

    name = "bandit"
    task_params: ClassVar[dict[str, Any]] = {"means": (0.2, 0.8), "stochastic": False}

    def _configure(self, means=(0.2, 0.8), stochastic: bool = False, **params: Any) -> None:
        means = tuple(float(m) for m in means)
        if len(means) != self.num_actions or not all(0.0 <= m <= 1.0 for m in means):
            raise UsageError(f"means must be {self.num_actions} numbers in [0, 1]; got {means}")
        self.means = means
        self.stochastic = bool(stochastic)
        self._means = torch.tensor(means, dtype=torch.float32, device=self.device)

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        mean = self._means[action.reshape(self.num_envs).long()]
        if not self.stochastic:
            return mean
        u = torch.rand(self.num_envs, generator=self._rng, device=self.device)
        return (u < mean).to(torch.float32)

    @property
    def optimal_action(self) -> int:
        return max(range(self.num_actions), key=lambda a: self.means[a])

    def q_values(self) -> torch.Tensor:
        """Q(a) = means[a] for every action a (float32, on the env's device)."""
        return self._means.clone()

    def closed_form_value(self, gamma: float) -> float:
        _check_gamma(gamma)
        return max(self.means)

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        _check_gamma(gamma)
        return torch.full_like(observation, max(self.means))


class Continuous(ProbeEnv):
    """One-step continuous control: action a ∈ [-1, 1], reward -(a - a*)^2.

    ``target`` a* defaults to 0.3. Actions outside [-1, 1] are clamped into it before the reward
    is computed. Observation: constant 0. Deterministic.
    Closed form: Q(a) = -(a - a*)^2; the optimum is a = a*, V* = 0; a uniform random policy
    gets E[-(a - a*)^2] = -(1/3 + a*^2).
    """

    name = "continuous"
    action_kind = "continuous"
    task_params: ClassVar[dict[str, Any]] = {"target": 0.3}

    def _configure(self, target: float = 0.3, **params: Any) -> None:
        target = float(target)
        if not -1.0 <= target <= 1.0:
            raise UsageError(f"target must lie in [-1, 1]; got {target}")
        self.target = target

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        a = action.reshape(self.num_envs).to(torch.float32).clamp(-1.0, 1.0)
        return -((a - self.target) ** 2)

    @property
    def optimal_action(self) -> float:
        return self.target

    def q_value(self, action: torch.Tensor) -> torch.Tensor:
        """Q(a) = -(clamp(a, -1, 1) - a*)^2."""
        return -((action.clamp(-1.0, 1.0) - self.target) ** 2)

    def closed_form_value(self, gamma: float) -> float:
        _check_gamma(gamma)
        return 0.0

    def value(self, observation: torch.Tensor, gamma: float) -> torch.Tensor:
        _check_gamma(gamma)
        return torch.zeros_like(observation)


class Memory(ProbeEnv):
    """Remember a cue: H-step episodes (default H = 3), discrete action in {0, 1}.

    At t = 0 the observation is a cue c = ±1 (uniform, from the env's generator); at
    t = 1 .. H-1 it is 0, and 0 again after the last step. On the last step (t = H-1) the reward
    is 1 if the action matches the cue (action 1 ↔ c = +1, action 0 ↔ c = -1), else 0; every
    other step gives 0. The episode then terminates.
    Closed forms: a policy that remembers the cue gets final reward 1 and V0 = γ^(H-1); any
    memoryless policy sees 0 at the last step, whatever the cue, so its expected final reward is
    exactly 0.5 and V0 = 0.5 γ^(H-1). H must be >= 2 (at H = 1 the cue is visible when acting).

    ``cues="alternate"`` replaces the draw by a fixed pattern: sub-env i's k-th episode has cue
    +1 when i + k is even, else -1, so every pair of sub-envs holds both cues at every moment.
    On an even number of sub-envs a deterministic memoryless policy then scores *exactly* 0.5
    -- not 0.5 up to the luck of a draw -- and a policy that remembers scores 1: with 2
    sub-envs, one greedy episode each measures a policy's expected final reward exactly.
    ``cues`` may also be set on a built env (``env.cues = "alternate"``): it applies from the
    next episode, so an env built by an algorithm's ``make_env`` can be evaluated this way.
    """

    name = "memory"
    task_params: ClassVar[dict[str, Any]] = {"horizon": 3, "cues": "random"}
    CUES = ("random", "alternate")

    def _configure(self, horizon: int = 3, cues: str = "random", **params: Any) -> None:
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 2:
            raise UsageError(f"horizon must be an integer >= 2 for the memory probe; "
                             f"got {horizon!r}")
        if cues not in self.CUES:
            raise UsageError(f"cues must be one of {', '.join(self.CUES)} for the memory probe; "
                             f"got {cues!r}")
        self.horizon = horizon
        self.cues = cues

    def _observation_spec(self) -> Any:
        return Bounded(low=-1.0, high=1.0, shape=(self.num_envs, 1), dtype=torch.float32,
                       device=self.device)

    def _new_episode(self, mask: torch.Tensor) -> None:
        if self.cues == "alternate":  # episode k of sub-env i: +1 when i + k is even
            started = getattr(self, "_episodes", None)
            self._episodes = (torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
                              if started is None else started + mask.long())
            parity = (torch.arange(self.num_envs, device=self.device) + self._episodes) % 2
            draw = 1 - parity
        else:
            draw = torch.randint(0, 2, (self.num_envs,), generator=self._rng,
                                 device=self.device)
        cue = (2 * draw - 1).to(torch.float32)
        self._cue = cue if not hasattr(self, "_cue") else torch.where(mask, cue, self._cue)

    def _observe(self) -> torch.Tensor:
        return torch.where(self._t == 0, self._cue, torch.zeros_like(self._cue)).unsqueeze(-1)

    def _reward(self, action: torch.Tensor) -> torch.Tensor:
        guess = (2 * action.reshape(self.num_envs).long() - 1).to(torch.float32)
        last = self._t == self.horizon - 1
        return (last & (guess == self._cue)).to(torch.float32)

    def closed_form_value(self, gamma: float) -> float:
        return float(_check_gamma(gamma) ** (self.horizon - 1))

    def memoryless_value(self, gamma: float) -> float:
        """V0 of the best memoryless policy: 0.5 γ^(H-1) (expected final reward 0.5)."""
        return 0.5 * self.closed_form_value(gamma)


TASKS: dict[str, type[ProbeEnv]] = {
    cls.name: cls
    for cls in (ConstantTerminated, ConstantTruncated, LastReward, ObsReward, Discount, Bandit,
                Continuous, Memory)
}


def make(task: str, *, num_envs: int = 1, device: Any = "cpu", seed: int | None = 0,
         **task_kwargs: Any) -> ProbeEnv:
    """Build the probe called ``task``; UsageError naming the valid tasks for a bad name."""
    try:
        cls = TASKS[task]
    except (KeyError, TypeError):
        raise UsageError(f"unknown probe task {task!r}; valid: {', '.join(TASKS)}") from None
    return cls(num_envs=num_envs, device=device, seed=seed, **task_kwargs)
