"""The raw library loops that the env and collector benchmarks hold torchrl against: each
library's own envs, built once here, stepped two ways.

- ``RANDOM_STEPS[backend](spec, num_envs, seed, steps) -> (run, close)`` (``bench_envs``):
  ``run()`` resets and makes ``steps`` batched steps with uniformly random actions drawn
  beforehand, restarting finished episodes; no observation is read.
- ``STEPPERS[backend](spec, num_envs, seed) -> (obs, step, space, close)``
  (``bench_collectors``' floor): the first observations ``[num_envs, D]``, ``step(actions) ->
  observations`` (finished episodes restarted) for a policy done by hand, the action space.

gymnasium: ``env.step`` (one env) or a ``gymnasium.vector.SyncVectorEnv`` with its default
auto-reset; dm_control: ``suite`` envs stepped in a Python loop (the suite has no vector env);
envpool: the pool's batched ``step`` (it auto-resets natively). The probe backend has no raw
library.
"""

from __future__ import annotations

import functools

from harness import backends

# --------------------------------------------------------------------------- the envs


def _gymnasium(spec, num_envs: int):
    """One gymnasium env, or a ``SyncVectorEnv`` of ``num_envs``."""
    import gymnasium as gym

    if num_envs == 1:
        return backends.gym_make(spec)
    return gym.vector.SyncVectorEnv([functools.partial(backends.gym_make, spec)] * num_envs)


def _dm_control(spec, num_envs: int, seed: int) -> list:
    from dm_control import suite

    return [suite.load(*spec.id, task_kwargs={"random": seed + i}) for i in range(num_envs)]


def _envpool(spec, num_envs: int, seed: int):
    """``(pool, action space)``."""
    import warnings

    import envpool

    with warnings.catch_warnings():  # float64 bounds of float32 Boxes
        warnings.filterwarnings("ignore", message=".*precision lowered.*")
        pool = envpool.make(spec.id, env_type="gymnasium", num_envs=num_envs, seed=seed,
                            max_num_players=1)
        return pool, pool.action_space


# --------------------------------------------------------------------------- random steps


def gymnasium_random_steps(spec, num_envs: int, seed: int, steps: int):
    env = _gymnasium(spec, num_envs)
    space = env.action_space  # batched for the vector env
    space.seed(seed)
    actions = [space.sample() for _ in range(steps)]

    def run():
        env.reset(seed=seed)
        for a in actions:
            _, _, term, trunc, _ = env.step(a)
            if num_envs == 1 and (term or trunc):
                env.reset()

    return run, env.close


def dm_control_random_steps(spec, num_envs: int, seed: int, steps: int):
    import numpy as np

    envs = _dm_control(spec, num_envs, seed)
    aspec = envs[0].action_spec()
    actions = np.random.default_rng(seed).uniform(aspec.minimum, aspec.maximum,
                                                  size=(steps, num_envs, *aspec.shape))

    def run():
        for env in envs:
            env.reset()
        for step_actions in actions:
            for env, a in zip(envs, step_actions, strict=True):
                if env.step(a).last():
                    env.reset()

    return run, lambda: [env.close() for env in envs]


def envpool_random_steps(spec, num_envs: int, seed: int, steps: int):
    import numpy as np

    pool, space = _envpool(spec, num_envs, seed)
    rng = np.random.default_rng(seed)
    if hasattr(space, "n"):
        actions = rng.integers(0, space.n, size=(steps, num_envs)).astype(np.int32)
    else:
        actions = rng.uniform(space.low, space.high,
                              size=(steps, num_envs, *space.shape)).astype(space.dtype)

    def run():
        pool.reset()
        for a in actions:
            pool.step(a)

    return run, pool.close


RANDOM_STEPS = {"gymnasium": gymnasium_random_steps, "dm_control": dm_control_random_steps,
                "envpool": envpool_random_steps}


# --------------------------------------------------------------------------- steppers


def gymnasium_stepper(spec, num_envs: int, seed: int):
    env = _gymnasium(spec, num_envs)
    obs, _ = env.reset(seed=seed)
    if num_envs == 1:

        def step(actions):
            obs, _, terminated, truncated, _ = env.step(actions[0])
            if terminated or truncated:
                obs, _ = env.reset()
            return obs[None]

        return obs[None], step, env.action_space, env.close
    return obs, (lambda actions: env.step(actions)[0]), env.single_action_space, env.close


def dm_control_stepper(spec, num_envs: int, seed: int):
    import numpy as np
    from gymnasium import spaces

    envs = _dm_control(spec, num_envs, seed)

    def flat(time_step):
        return np.concatenate([np.ravel(v) for v in time_step.observation.values()])

    def step(actions):
        out = []
        for env, action in zip(envs, actions, strict=True):
            time_step = env.step(action)
            out.append(flat(env.reset() if time_step.last() else time_step))
        return np.stack(out)

    aspec = envs[0].action_spec()
    space = spaces.Box(aspec.minimum, aspec.maximum, dtype=np.float32)
    return (np.stack([flat(env.reset()) for env in envs]), step, space,
            lambda: [env.close() for env in envs])


def envpool_stepper(spec, num_envs: int, seed: int):
    import numpy as np

    pool, space = _envpool(spec, num_envs, seed)
    obs, _ = pool.reset()
    discrete = hasattr(space, "n")

    def step(actions):  # envpool auto-resets finished envs on their next step
        return pool.step(actions.astype(np.int32) if discrete else actions)[0]

    return obs, step, space, pool.close


STEPPERS = {"gymnasium": gymnasium_stepper, "dm_control": dm_control_stepper,
            "envpool": envpool_stepper}
