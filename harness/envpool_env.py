"""The envpool backend's torchrl env: ``num_envs`` envpool envs behind the env convention of
``harness.backends`` (built lazily: keeps torchrl out of ``import harness``)."""

from __future__ import annotations

import functools


@functools.cache
def envpool_env_class():
    """torchrl env over an envpool pool (built lazily: keeps torchrl out of `import harness`).

    torchrl 0.14.1's own ``MultiThreadedEnv`` cannot be used here: it builds its specs under
    ``set_gym_backend("gym")`` (the legacy ``gym`` package, not installed), imports
    ``treevalue`` (not installed), gives reward/done ``[num_envs]`` instead of
    ``[num_envs, 1]``, and relies on envpool's next-step auto-reset, so the observation after
    an episode's end is the final one, not the first of the next episode. This class uses the
    gymnasium API of envpool and explicit partial resets instead (``pool.reset(env_ids)``).
    """
    import contextlib
    import warnings

    import numpy as np
    import torch
    from tensordict import TensorDict
    from torchrl.data import Bounded, Categorical, Composite, Unbounded
    from torchrl.envs import EnvBase

    @contextlib.contextmanager
    def quiet():  # envpool builds float32 gymnasium Boxes from float64 bounds: one warning each
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*precision lowered.*")
            yield

    def box_spec(space, batch):
        dtype = torch.float32  # the module's convention, whatever envpool's dtype
        low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
        shape = (*batch, *space.shape)
        if torch.isinf(low).all() and torch.isinf(high).all():
            return Unbounded(shape, dtype=dtype)
        return Bounded(low.expand(shape).to(dtype), high.expand(shape).to(dtype), shape,
                       dtype=dtype)

    class EnvPoolEnv(EnvBase):
        """``num_envs`` envpool envs stepped synchronously by envpool's C++ thread pool."""

        def __init__(self, task_id: str, num_envs: int, *, seed: int = 0, device="cpu",
                     num_threads: int = 0):
            import envpool
            from gymnasium import spaces

            super().__init__(batch_size=torch.Size([num_envs]), device=device)
            self.task_id, self.num_envs, self.num_threads = task_id, num_envs, num_threads
            self._make = functools.partial(envpool.make, task_id, env_type="gymnasium",
                                           num_envs=num_envs, max_num_players=1,
                                           num_threads=num_threads)
            b = (num_envs,)
            self._new_pool(seed)
            obs_space, act_space = self._pool.observation_space, self._pool.action_space
            self.observation_spec = Composite(observation=box_spec(obs_space, b), shape=b)
            if isinstance(act_space, spaces.Discrete):
                self._discrete = True
                self.action_spec = Categorical(int(act_space.n), shape=b, dtype=torch.int64)
            else:
                self._discrete = False
                self.action_spec = box_spec(act_space, b)
            self.reward_spec = Unbounded((*b, 1), dtype=torch.float32)
            flag = Categorical(2, (*b, 1), dtype=torch.bool)
            self.done_spec = Composite(done=flag, terminated=flag.clone(),
                                       truncated=flag.clone(), shape=b)
            self._obs = None  # last observation of every sub-env (partial resets fill it)

        def _new_pool(self, seed: int) -> None:
            with quiet():  # the spaces are built (and cached) on first access: do it here
                self._pool = self._make(seed=seed)
                self._pool.observation_space, self._pool.action_space  # noqa: B018

        def _obs_tensor(self, obs):
            return torch.as_tensor(obs).to(self.observation_spec["observation"].dtype)

        def _reset(self, tensordict=None, **kwargs):
            mask = None if tensordict is None else tensordict.get("_reset", None)
            if mask is None or self._obs is None:
                ids = np.arange(self.num_envs, dtype=np.int32)
            else:
                ids = np.flatnonzero(mask.reshape(self.num_envs).cpu().numpy()).astype(np.int32)
            if len(ids):  # envpool waits for as many results as ids: never ask for none
                obs, info = self._pool.reset(ids)
                obs = self._obs_tensor(obs)
                if self._obs is None:
                    self._obs = torch.empty((self.num_envs, *obs.shape[1:]), dtype=obs.dtype)
                self._obs[torch.as_tensor(info["env_id"], dtype=torch.long)] = obs
            flags = torch.zeros((self.num_envs, 1), dtype=torch.bool)
            return TensorDict({"observation": self._obs.clone(), "done": flags,
                               "terminated": flags.clone(), "truncated": flags.clone()},
                              self.batch_size, device=self.device)

        def _step(self, tensordict):
            action = tensordict.get("action").cpu()
            action = action.to(torch.int32) if self._discrete else action
            obs, reward, terminated, truncated, info = self._pool.step(action.numpy())
            order = torch.as_tensor(info["env_id"], dtype=torch.long)
            self._obs[order] = self._obs_tensor(obs)
            term = torch.zeros((self.num_envs, 1), dtype=torch.bool)
            trunc = torch.zeros_like(term)
            rew = torch.zeros((self.num_envs, 1), dtype=torch.float32)
            term[order, 0] = torch.as_tensor(terminated)
            trunc[order, 0] = torch.as_tensor(truncated)
            rew[order, 0] = torch.as_tensor(reward, dtype=torch.float32)
            return TensorDict({"observation": self._obs.clone(), "reward": rew,
                               "done": term | trunc, "terminated": term, "truncated": trunc},
                              self.batch_size, device=self.device)

        def _set_seed(self, seed):
            if seed is not None:  # envpool seeds only at construction: rebuild the pool
                self._pool.close()
                self._new_pool(seed)
                self._obs = None

    return EnvPoolEnv
