"""``KernelGAE``: torchrl's ``GAE`` value estimator with rlgauge's GAE kernel for the recursion.

A subclass of ``torchrl.objectives.value.GAE`` (so ``ClipPPOLoss`` and anything else that takes
a torchrl value estimator accepts it: same constructor, keys, ``set_keys``, ``value_network``,
``average_gae``, shifted value calls, ``time_dim``). Its ``forward`` is torchrl 0.14.1's
``GAE.forward`` step for step -- the value network calls, the shifted-data preparation and the
output masking are the parent's own helpers -- except that the advantage comes from
``harness.estimators.gae`` (the fused C++ pass on CPU, the parallel scan elsewhere) instead of
``generalized_advantage_estimate`` / its vectorised twin. ``vectorized`` is accepted and ignored.

Use it in place of ``loss.make_value_estimator(ValueEstimators.GAE, gamma=..., lmbda=...)``::

    use_kernel_gae(loss, gamma=0.99, lmbda=0.95)

which wires it to the loss's critic and keys the way torchrl wires its own ``GAE``
(``reference_impls/ppo.py``'s ``Config.advantage = "rlgauge"`` does this; tests/test_ppo.py
checks that it writes the same advantage and value target as torchrl's ``GAE``).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict

from tensordict import TensorDictBase
from tensordict.nn import dispatch
from torchrl.objectives import ValueEstimators
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value import GAE
from torchrl.objectives.value.advantages import _self_set_grad_enabled, _self_set_skip_existing

from harness.estimators import gae


class KernelGAE(GAE):
    """torchrl's ``GAE`` whose recursion runs on ``harness.estimators.gae``."""

    @_self_set_skip_existing
    @_self_set_grad_enabled
    @dispatch
    def forward(self, tensordict: TensorDictBase, *, params=None, target_params=None,
                time_dim: int | None = None) -> TensorDictBase:
        """Write the advantage and value target into ``tensordict`` (see ``GAE.forward``)."""
        if tensordict.batch_dims < 1:
            raise RuntimeError("Expected input tensordict to have at least one dimension, got "
                               f"tensordict.batch_size = {tensordict.batch_size}")
        reward = tensordict.get(("next", self.tensor_keys.reward))
        if self.gamma.device != reward.device:
            self.gamma = self.gamma.to(reward.device)
        if self.lmbda.device != reward.device:
            self.lmbda = self.lmbda.to(reward.device)
        gamma, lmbda = self.gamma, self.lmbda
        steps_to_next_obs = tensordict.get(self.tensor_keys.steps_to_next_obs, None)
        if steps_to_next_obs is not None:
            gamma = gamma ** steps_to_next_obs.view_as(reward)

        # --- V(s) and V(s'), exactly as torchrl computes them
        value, next_value = self._values(tensordict, params, target_params)

        # --- the signals, on the (possibly shifted) data
        time_dim = self._get_time_dim(time_dim, tensordict)
        valid = tensordict.get("shifted_valid", default=None)
        data = self._prepare_shifted_tensordict(tensordict, valid, time_dim)
        reward = data.get(("next", self.tensor_keys.reward))
        done = data.get(("next", self.tensor_keys.done))
        terminated = data.get(("next", self.tensor_keys.terminated), default=done)
        reward, done, terminated = self._prepare_signals(reward, done, terminated, value)
        if self.auto_reset_env:
            truncated = self._broadcast_optional(tensordict.get(("next", "truncated")), value)
            if truncated.any():
                reward = reward + gamma * value * truncated

        # --- the recursion: rlgauge's kernel
        adv, value_target = gae(gamma, lmbda, value, next_value, reward, done=done,
                                terminated=terminated if not self.auto_reset_env else done,
                                time_dim=time_dim)

        if self.average_gae:
            adv = self._normalize_advantage(adv, valid, groups=self._group_ids(tensordict))
        tensordict.set(self.tensor_keys.advantage, adv)
        tensordict.set(self.tensor_keys.value_target, value_target)
        self._mask_shifted_output(tensordict, valid)
        return tensordict

    def _values(self, tensordict: TensorDictBase, params, target_params):
        """(V(s), V(s')) from the value network (parameters held out), or from the data."""
        if self.value_network is None:
            value = tensordict.get(self.tensor_keys.value)
            next_value = tensordict.get(("next", self.tensor_keys.value))
            if value is None or next_value is None:
                missing = self.tensor_keys.value if value is None else (
                    "next", self.tensor_keys.value)
                raise ValueError(f"The tensor with key {missing} is missing, and no value "
                                 "network was provided.")
            return value, next_value
        if params is not None:
            params = params.detach()
            if target_params is None:
                target_params = params.clone(False)
        held_out = params is None and target_params is None
        with hold_out_net(self.value_network) if held_out else nullcontext():
            value, next_value, valid = self._call_value_nets(
                data=tensordict, params=params, next_params=target_params,
                single_call=self.shifted, value_key=self.tensor_keys.value, detach_next=True,
                vmap_randomness=self.vmap_randomness)
        if valid is not None:
            tensordict.set("shifted_valid", valid)
        return value, next_value


def use_kernel_gae(loss, *, gamma: float, lmbda: float, **kwargs) -> KernelGAE:
    """Give ``loss`` (a torchrl loss that supports GAE, e.g. ``ClipPPOLoss``) a ``KernelGAE``
    built like ``loss.make_value_estimator(ValueEstimators.GAE, ...)`` builds torchrl's: on the
    loss's critic, with the loss's tensor keys. Returns the estimator."""
    loss.make_value_estimator(ValueEstimators.GAE, gamma=gamma, lmbda=lmbda, **kwargs)
    estimator = KernelGAE.for_loss(loss, gamma=gamma, lmbda=lmbda, **kwargs)
    # only the keys that are set: torchrl-nightly's GAE has a ``valid`` key that defaults to
    # None, and ``set_keys`` refuses None
    estimator.set_keys(**{k: v for k, v in asdict(loss.value_estimator.tensor_keys).items()
                          if v is not None})
    # as torchrl's dispatch_value_estimator does: ``loss.value_estimator = ...`` would register
    # a submodule named "value_estimator" that the ``value_estimator`` property never reads
    loss._value_estimator = estimator
    return estimator
