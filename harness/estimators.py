"""Value estimators: the float64 closed-form oracle that the analytical tests compare against.

This module will later also hold rlgauge's own fast GAE / TD(λ) kernels (issue 8), drop-in for
torchrl's functional signatures; for now it holds the ORACLE only. The oracle is written from the
textbook definitions, as explicit sums over future steps, and deliberately NOT as torchrl's
backward recursion ``A_t = δ_t + γλ A_{t+1}`` or its convolution: a test that compared torchrl with
a transcription of torchrl would prove nothing. It is slow (O(T²) work, O(T) Python steps) and
exact up to float64 rounding; use it on test-sized data.

Conventions (torchrl's; see ``torchrl.objectives.value.functional``):

- Tensors are shaped ``[*B, T, *F]`` with time at ``time_dim`` (default -2), usually
  ``[*B, T, 1]``. ``reward[t]``, ``done[t]``, ``terminated[t]`` and ``next_state_value[t]``
  describe the transition *out of* step t (torchrl's ``("next", ...)`` entries).
- ``done[t]`` ends the episode after step t (terminated or truncated): nothing after t is mixed
  into the estimate at t. The end of the window (t = T-1) also ends every sum.
- ``terminated[t]`` removes the bootstrap: ``(1 - terminated[t]) · γ_t · V(s'_t)``. A truncated
  step (``done`` and not ``terminated``) keeps it. ``terminated`` defaults to ``done``.
- ``gamma`` and ``lmbda`` are floats, one-element tensors, or per-step tensors broadcastable to
  the data's shape: ``gamma[t]`` discounts the transition out of step t (torchrl's
  ``rolling_gamma=True``), so a reward k steps ahead is discounted by γ_t γ_{t+1} ⋯ γ_{t+k-1}.
- Results are float64 on the inputs' device, whatever the input dtype.

Definitions, with D_t(k) = Π_{j<k} γ_{t+j} and N_t the number of steps from t to the end of
its episode or of the window, whichever comes first (so step t+N_t-1 is the last one):

- TD error:     δ_s = r_s + γ_s (1 - term_s) V'_s - V_s
- GAE:          A_t = Σ_{l=0}^{N_t-1} [Π_{k=t}^{t+l-1} γ_k λ_k] δ_{t+l};  target = A_t + V_t
- n-step:       G_t^(n) = Σ_{k<n} D_t(k) r_{t+k} + D_t(n) (1 - term_{t+n-1}) V'_{t+n-1}
- TD(λ):        G_t^λ = Σ_{n=1}^{N_t-1} Λ_t(n-1) (1 - λ_{t+n-1}) G_t^(n) + Λ_t(N_t-1) G_t^(N_t),
                with Λ_t(m) = Π_{j<m} λ_{t+j};
                for a constant λ: (1-λ) Σ_{n<N} λ^(n-1) G^(n) + λ^(N-1) G^(N)
- TD(0):        G_t^(1) = r_t + γ_t (1 - term_t) V'_t
- Monte Carlo:  G_t = Σ_{k=0}^{N_t-1} D_t(k) r_{t+k}   (no bootstrap at all)
"""

from __future__ import annotations

import torch

__all__ = [
    "oracle_gae",
    "oracle_mc_return",
    "oracle_td0_return",
    "oracle_td_lambda_return",
]

F64 = torch.float64


def _time_first(time_dim: int, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """float64 copies of ``tensors`` (all the same shape) with the time dimension moved to 0."""
    shape = tensors[0].shape
    for x in tensors:
        if x.shape != shape:
            raise ValueError(f"all input tensors must share one shape; got {tuple(shape)} and "
                             f"{tuple(x.shape)}")
    if not -len(shape) <= time_dim < len(shape):
        raise ValueError(f"time_dim={time_dim} is out of range for shape {tuple(shape)}")
    return [x.to(F64).movedim(time_dim, 0) for x in tensors]


def _coefficient(c, like: torch.Tensor, time_dim: int) -> torch.Tensor:
    """γ or λ as a float64 tensor shaped like the time-first data: scalar or per-step."""
    if isinstance(c, torch.Tensor) and c.numel() > 1:
        c = torch.broadcast_to(c.to(device=like.device, dtype=F64), like.shape)
        return c.movedim(time_dim, 0)
    value = float(c.item()) if isinstance(c, torch.Tensor) else float(c)
    return torch.full(like.movedim(time_dim, 0).shape, value, dtype=F64, device=like.device)


def _prefix_products(factors: torch.Tensor) -> torch.Tensor:
    """[1, f_0, f_0 f_1, ..., f_0 ⋯ f_{n-1}]: products of the first k factors, k = 0..n."""
    one = torch.ones((1, *factors.shape[1:]), dtype=factors.dtype, device=factors.device)
    return torch.cat([one, torch.cumprod(factors, dim=0)], dim=0)


def _alive(done: torch.Tensor, t: int) -> torch.Tensor:
    """alive[k] = 1 if no episode end among steps t .. t+k-1 (k = 0 .. T-t-1), else 0."""
    return _prefix_products(1.0 - done[t:-1])


def oracle_td0_return(gamma, next_state_value: torch.Tensor, reward: torch.Tensor,
                      terminated: torch.Tensor | None = None, *, done: torch.Tensor | None = None,
                      time_dim: int = -2) -> torch.Tensor:
    """TD(0) target r_t + γ_t (1 - terminated_t) V(s'_t), in float64.

    Same arguments as torchrl's ``td0_return_estimate`` (``done`` only fills in a missing
    ``terminated``, as there).
    """
    if terminated is None:
        terminated = done
    v_next, r, term = _time_first(time_dim, next_state_value, reward, terminated)
    g = _coefficient(gamma, reward, time_dim)
    out = r + g * (1.0 - term) * v_next
    return out.movedim(0, time_dim)


def oracle_mc_return(gamma, reward: torch.Tensor, done: torch.Tensor, *,
                     time_dim: int = -2) -> torch.Tensor:
    """Discounted Monte-Carlo return G_t = Σ_{k<N_t} D_t(k) r_{t+k} to the episode's end.

    No bootstrap: an episode cut by ``done`` (terminated or truncated) or by the end of the
    window simply stops summing there.
    """
    r, d = _time_first(time_dim, reward, done)
    g = _coefficient(gamma, reward, time_dim)
    T = r.shape[0]
    out = torch.empty_like(r)
    for t in range(T):
        discount = _prefix_products(g[t:-1])  # D_t(k), k = 0 .. T-t-1
        weight = discount * _alive(d, t)  # zero past the end of the episode
        out[t] = (weight * r[t:]).sum(0)
    return out.movedim(0, time_dim)


def oracle_gae(gamma, lmbda, state_value: torch.Tensor, next_state_value: torch.Tensor,
               reward: torch.Tensor, done: torch.Tensor, terminated: torch.Tensor | None = None,
               *, time_dim: int = -2) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE advantage A_t = Σ_{l<N_t} [Π_{k=t}^{t+l-1} γ_k λ_k] δ_{t+l}, and A_t + V_t.

    Arguments as torchrl's ``generalized_advantage_estimate``; returns
    ``(advantage, value_target)`` in float64.
    """
    if terminated is None:
        terminated = done
    v, v_next, r, d, term = _time_first(time_dim, state_value, next_state_value, reward, done,
                                        terminated)
    g = _coefficient(gamma, reward, time_dim)
    lam = _coefficient(lmbda, reward, time_dim)
    delta = r + g * (1.0 - term) * v_next - v  # one-step TD errors
    T = r.shape[0]
    advantage = torch.empty_like(r)
    for t in range(T):
        # weight of δ_{t+l}: Π_{k=t}^{t+l-1} γ_k λ_k, and 0 once an episode end was crossed
        weight = _prefix_products(g[t:-1] * lam[t:-1]) * _alive(d, t)
        advantage[t] = (weight * delta[t:]).sum(0)
    value_target = advantage + v
    return advantage.movedim(0, time_dim), value_target.movedim(0, time_dim)


def oracle_td_lambda_return(gamma, lmbda, next_state_value: torch.Tensor, reward: torch.Tensor,
                            done: torch.Tensor, terminated: torch.Tensor | None = None, *,
                            time_dim: int = -2) -> torch.Tensor:
    """The λ-return: a λ-weighted mixture of the n-step returns G_t^(n), n = 1 .. N_t.

    G_t^λ = Σ_{n<N_t} Λ_t(n-1) (1 - λ_{t+n-1}) G_t^(n) + Λ_t(N_t-1) G_t^(N_t): the last n-step
    return available in the episode (or the window) takes all the remaining weight. Arguments as
    torchrl's ``td_lambda_return_estimate``; float64.
    """
    if terminated is None:
        terminated = done
    v_next, r, d, term = _time_first(time_dim, next_state_value, reward, done, terminated)
    g = _coefficient(gamma, reward, time_dim)
    lam = _coefficient(lmbda, reward, time_dim)
    T = r.shape[0]
    out = torch.empty_like(r)
    for t in range(T):
        steps = T - t  # n = 1 .. steps; index i = n - 1 below
        discount = _prefix_products(g[t:])  # D_t(k), k = 0 .. steps
        rewards_to_n = torch.cumsum(discount[:-1] * r[t:], dim=0)  # Σ_{k<n} D_t(k) r_{t+k}
        bootstrap = discount[1:] * (1.0 - term[t:]) * v_next[t:]  # D_t(n) (1-term) V'_{t+n-1}
        n_step = rewards_to_n + bootstrap  # G_t^(n)
        exists = _alive(d, t)  # G_t^(n) lies inside the episode: no end before step t+n-1
        last = d[t:].clone()  # G_t^(n) is the last one: the episode ends at t+n-1 ...
        last[steps - 1] = 1.0  # ... or the window does
        lam_prefix = _prefix_products(lam[t:-1])  # Λ_t(n-1)
        weight = exists * lam_prefix * torch.where(last > 0, 1.0, 1.0 - lam[t:])
        out[t] = (weight * n_step).sum(0)
    return out.movedim(0, time_dim)
