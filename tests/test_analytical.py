"""Value estimators against closed-form returns and the float64 oracle: torchrl's and rlgauge's.

Checked: torchrl's functional forms ``generalized_advantage_estimate``, ``vec_generalized_
advantage_estimate``, ``td_lambda_return_estimate``, ``vec_td_lambda_return_estimate``,
``td0_return_estimate``; rlgauge's kernels ``harness.estimators.gae`` / ``td_lambda_return``
(the fused C++ pass on CPU), ``gae_scan`` / ``td_lambda_return_scan`` (the parallel scan that
runs wherever neither kernel does) and the Triton kernel ``harness.gae_triton`` (CUDA; here on
CPU tensors under Triton's interpreter, marker ``triton``: ``nox -s kernels``; skipped where
triton is not installed, see tests/tritonkit.py); and the modules ``GAE``,
``TDLambdaEstimator``, ``TD0Estimator`` and rlgauge's ``KernelGAE`` (on probe-env rollouts with a
value network whose output is known). Every functional test runs over all implementations
(``IMPLS``). The reference is ``harness.estimators``' oracle (explicit sums, float64) and,
where one exists, the closed form stated next to the assertion.

Tolerances (max abs error against the float64 oracle):

- float64 inputs: 1e-12, with γ and λ taken from the dyadic grid k/64, whose values and
  products are exact in float32 (see the precision finding below). This holds for the
  vectorised forms too as long as their geometric filter is not cut short (all fixed cases
  here); in the property tests a vectorised form may drop the weights below thr = 1e-7, as
  documented, so its tolerance there adds thr · T · max|δ|;
- float32 inputs (and the modules, which hold γ, λ as float32 buffers): 1e-4 for the |values|
  ≤ 10 and T ≤ 12 used here.

Findings kept visible as strict xfails (torchrl 0.14.1; the property test steers around the
first two, and the xfails pin them down):

- ``vec_generalized_advantage_estimate`` and ``vec_td_lambda_return_estimate`` (so ``GAE`` and
  ``TDLambdaEstimator`` with ``vectorized=True``) raise IndexError when γ·λ < 1e-7, e.g. λ = 0
  or γ = 0: their scalar fast path calls ``_geom_series_like``, which returns a 1-D
  ``zeros_like`` for r == 0 and an empty series for 0 < r < thr.
- the scalar fast path's filter ``_geom_series_like`` keeps int(log(thr) / log(γλ)) terms
  r^0 .. r^(lim-1) and so drops r^lim, which is >= thr: up to sqrt(thr) ≈ 3.2e-4 of a δ is
  ignored (γλ just under 3.2e-4), not < 1e-7 as its docstring says.
- with float64 inputs and a Python-float γ, ``generalized_advantage_estimate`` discounts with
  γ and γλ rounded to float32 (``(~done).int() * gamma`` is a float32 tensor), and so do the
  vectorised GAE (``not_terminated * gamma``), ``td0_return_estimate`` (same pattern) and the
  vectorised TD(λ) (``torch.full((1,), gamma)``); only the loop TD(λ) is float64 throughout.
  Error ~1e-7 where 1e-15 is possible. rlgauge's kernels keep γ and λ in float64 there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from tensordict.nn import TensorDictModule
from torchrl.objectives.value import GAE, TD0Estimator, TDLambdaEstimator
from torchrl.objectives.value.functional import (
    generalized_advantage_estimate,
    td0_return_estimate,
    td_lambda_return_estimate,
    vec_generalized_advantage_estimate,
    vec_td_lambda_return_estimate,
)
from tritonkit import TRITON, gae_triton, td_lambda_return_triton

from harness import probes
from harness.estimators import (
    gae,
    gae_scan,
    oracle_gae,
    oracle_mc_return,
    oracle_td0_return,
    oracle_td_lambda_return,
    td_lambda_return,
    td_lambda_return_scan,
)
from harness.gae_estimator import KernelGAE

pytestmark = pytest.mark.analytical

F64 = torch.float64
ATOL64 = 1e-12
ATOL_F32 = 1e-4
THR = 1e-7  # torchrl's threshold on the weights of the vectorised geometric filter

VEC_CRASH = ("torchrl 0.14.1: the vectorised scalar-γ fast path raises IndexError when "
             "γ·λ < 1e-7 (_geom_series_like returns a 1-D zeros_like for r == 0)")
VEC_CUT = ("torchrl 0.14.1: _geom_series_like keeps int(log(thr)/log(γλ)) terms and so drops "
           "the weight (γλ)^lim >= thr (up to sqrt(thr)), not only the weights below thr")
F32_DISCOUNT = ("torchrl 0.14.1: with float64 inputs and a Python-float γ, γ (and γλ) are "
                "rounded to float32 before use ((~done).int() * gamma is float32)")


# --- cases --------------------------------------------------------------------------------


@dataclass
class Case:
    """Estimator inputs, all shaped like ``reward``; time at ``time_dim``."""

    state_value: torch.Tensor
    next_state_value: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    terminated: torch.Tensor
    time_dim: int = -2

    def to(self, dtype) -> Case:
        return Case(self.state_value.to(dtype), self.next_state_value.to(dtype),
                    self.reward.to(dtype), self.done, self.terminated, self.time_dim)


def flags(pattern: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(done, terminated), shaped [T, 1], from a string: '.' runs on, 'T' terminates, 'X'
    truncates after that step."""
    term = torch.tensor([c == "T" for c in pattern]).unsqueeze(-1)
    trunc = torch.tensor([c == "X" for c in pattern]).unsqueeze(-1)
    return term | trunc, term


def pattern_case(pattern: str, *, reward=1.0, value=0.0, bootstrap=0.0) -> Case:
    """One [1, T, 1] trajectory: constant reward, V = ``value`` everywhere, and
    V(s') = ``bootstrap`` where an episode or the window ends (``value`` elsewhere)."""
    done, term = flags(pattern)
    T = len(pattern)
    ends = done.clone()
    ends[-1] = True
    v = torch.full((T, 1), value, dtype=F64)
    v_next = torch.where(ends, torch.tensor(bootstrap, dtype=F64), v)
    r = torch.full((T, 1), reward, dtype=F64)
    return Case(v[None], v_next[None], r[None], done[None], term[None])


def random_case(seed: int, shape=(3, 12, 1), *, p_term=0.15, p_trunc=0.15, consistent=False,
                time_dim=-2, dtype=F64) -> Case:
    """Random rewards and values in [-10, 10], random terminations and truncations.

    ``consistent``: V(s'_t) = V(s_{t+1}) inside episodes (the rollout layout), so that
    telescoping identities hold; otherwise next values are independent.
    """
    g = torch.Generator().manual_seed(seed)
    reward = torch.empty(shape, dtype=F64).uniform_(-10, 10, generator=g)
    value = torch.empty(shape, dtype=F64).uniform_(-10, 10, generator=g)
    next_value = torch.empty(shape, dtype=F64).uniform_(-10, 10, generator=g)
    u = torch.rand(shape, generator=g)
    term = u < p_term
    done = u < p_term + p_trunc
    if consistent:
        v = value.movedim(time_dim, 0)
        nv = next_value.movedim(time_dim, 0).clone()
        d = done.movedim(time_dim, 0)
        nv[:-1] = torch.where(d[:-1], nv[:-1], v[1:])
        next_value = nv.movedim(0, time_dim)
    return Case(value.to(dtype), next_value.to(dtype), reward.to(dtype), done, term, time_dim)


def max_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return (actual.to(F64) - expected.to(F64)).abs().max().item()


def assert_close(actual, expected, atol: float, what: str = "") -> None:
    err = max_err(actual, expected)
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol:.1g}"


# --- the implementations under test ---------------------------------------------------------


@dataclass(frozen=True)
class Impl:
    """An estimator, reduced to 'value target from a Case' (GAE: A + V; TD(λ): return)."""

    name: str
    kind: str  # "gae" or "td_lambda"
    fn: Callable
    vectorised: bool  # torchrl's vectorised forms (their known bugs are xfailed below)
    float64_discount: bool = False  # keeps γ, λ in float64 for float64 inputs
    marks: tuple = ()  # pytest marks of every case of this implementation

    def target(self, gamma, lmbda, c: Case) -> torch.Tensor:
        if self.kind == "gae":
            return self.fn(gamma, lmbda, c.state_value, c.next_state_value, c.reward, c.done,
                           c.terminated, time_dim=c.time_dim)[1]
        return self.fn(gamma, lmbda, c.next_state_value, c.reward, c.done, c.terminated,
                       time_dim=c.time_dim)

    def oracle(self, gamma, lmbda, c: Case) -> torch.Tensor:
        if self.kind == "gae":
            return oracle_gae(gamma, lmbda, c.state_value, c.next_state_value, c.reward, c.done,
                              c.terminated, time_dim=c.time_dim)[1]
        return oracle_td_lambda_return(gamma, lmbda, c.next_state_value, c.reward, c.done,
                                       c.terminated, time_dim=c.time_dim)


IMPLS = [
    Impl("gae-loop", "gae", generalized_advantage_estimate, False),
    Impl("gae-vec", "gae", vec_generalized_advantage_estimate, True),
    Impl("td_lambda-loop", "td_lambda", td_lambda_return_estimate, False, True),
    Impl("td_lambda-vec", "td_lambda", vec_td_lambda_return_estimate, True),
    # rlgauge: the dispatching kernels (C++ on CPU) and the parallel scan (CUDA, fallback)
    Impl("gae-rlgauge", "gae", gae, False, True),
    Impl("gae-rlgauge-scan", "gae", gae_scan, False, True),
    Impl("td_lambda-rlgauge", "td_lambda", td_lambda_return, False, True),
    Impl("td_lambda-rlgauge-scan", "td_lambda", td_lambda_return_scan, False, True),
    # the Triton kernel (CUDA; here under its interpreter on CPU tensors, or skipped: tritonkit)
    Impl("gae-rlgauge-triton", "gae", gae_triton, False, True, tuple(TRITON)),
    Impl("td_lambda-rlgauge-triton", "td_lambda", td_lambda_return_triton, False, True,
         tuple(TRITON)),
]
IMPL_IDS = [i.name for i in IMPLS]
IMPL_PARAMS = [pytest.param(i, marks=i.marks, id=i.name) for i in IMPLS]


def crash_xfail(impl: Impl, gamma: float, lmbda: float):
    """The strict xfail mark for a vectorised impl on γλ = 0, else no mark."""
    if impl.vectorised and gamma * lmbda == 0:
        return [pytest.mark.xfail(raises=IndexError, strict=True, reason=VEC_CRASH)]
    return []


# --- the oracle itself against closed forms -------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 0.9, 1.0])
def test_oracle_constant_reward_closed_form(gamma):
    H = 6
    c = pattern_case("." * (H - 1) + "T")
    expected = torch.tensor([probes.geometric_sum(gamma, H - t) for t in range(H)],
                            dtype=F64).view(1, H, 1)
    # (1 - γ^(H-t)) / (1 - γ) for constant reward 1 until termination at H (H - t at γ = 1)
    assert_close(oracle_mc_return(gamma, c.reward, c.done), expected, 1e-14, "mc")
    # λ = 1 GAE + V with V ≡ 0: the same discounted Monte-Carlo return
    assert_close(oracle_gae(gamma, 1.0, c.state_value, c.next_state_value, c.reward, c.done,
                            c.terminated)[1], expected, 1e-14, "gae")
    # λ = 1 TD(λ): the same return (no bootstrap after a termination)
    assert_close(oracle_td_lambda_return(gamma, 1.0, c.next_state_value, c.reward, c.done,
                                         c.terminated), expected, 1e-14, "td_lambda")


@pytest.mark.parametrize("lmbda", [0.0, 0.3, 0.95, 1.0])
def test_oracle_gae_and_lambda_return_agree(lmbda):
    # Two independent definitions (Σ (γλ)^l δ vs the λ-mixture of n-step returns) agree when
    # V(s'_t) = V(s_{t+1}) inside episodes: A_t + V_t = G^λ_t
    c = random_case(1, (4, 12, 1), consistent=True)
    assert_close(oracle_gae(0.9, lmbda, c.state_value, c.next_state_value, c.reward, c.done,
                            c.terminated)[1],
                 oracle_td_lambda_return(0.9, lmbda, c.next_state_value, c.reward, c.done,
                                         c.terminated), 1e-12)


def test_oracle_special_cases():
    c = random_case(2, (3, 10, 1))
    # λ = 0: G^λ_t = r_t + γ (1 - term_t) V'_t, the TD(0) target
    assert_close(oracle_td_lambda_return(0.8, 0.0, c.next_state_value, c.reward, c.done,
                                         c.terminated),
                 oracle_td0_return(0.8, c.next_state_value, c.reward, c.terminated), 1e-12)
    # λ = 1 with V' ≡ 0: G^λ_t = Σ_k γ^k r_{t+k} to the episode's end, the Monte-Carlo return
    zeros = torch.zeros_like(c.reward)
    assert_close(oracle_td_lambda_return(0.8, 1.0, zeros, c.reward, c.done, c.terminated),
                 oracle_mc_return(0.8, c.reward, c.done), 1e-12)
    # a hand-computed case: r = (1, 2, 3), γ = 0.5, no end: G_0 = 1 + 0.5·2 + 0.25·3 = 2.75
    r = torch.tensor([1.0, 2.0, 3.0], dtype=F64).view(1, 3, 1)
    never = torch.zeros_like(r, dtype=torch.bool)
    assert oracle_mc_return(0.5, r, never).flatten().tolist() == [2.75, 3.5, 3.0]


# --- torchrl's functional forms against closed forms --------------------------------------


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("gamma", [0.5, 0.875, 1.0])
def test_lambda1_is_discounted_mc_return(impl, gamma):
    # every episode terminates inside the window (the last step terminates too)
    c = random_case(3, (3, 12, 1), p_term=0.2, p_trunc=0.0, consistent=True)
    c.done[..., -1, :] = True
    c.terminated[..., -1, :] = True
    expected = oracle_mc_return(gamma, c.reward, c.done)
    # λ = 1 GAE + V = TD(1) return = Σ_k γ^k r_{t+k} up to the termination (telescoping)
    assert_close(impl.target(gamma, 1.0, c), expected, ATOL64, impl.name)


@pytest.mark.parametrize(
    "impl", [pytest.param(i, marks=[*i.marks, *crash_xfail(i, 1.0, 0.0)]) for i in IMPLS],
    ids=IMPL_IDS)
def test_lambda0_is_one_step_td(impl):
    c = random_case(4, (3, 12, 1))
    expected = c.reward + 0.75 * (~c.terminated) * c.next_state_value
    # λ = 0: target = r_t + γ (1 - term_t) V(s'_t), i.e. A_t = δ_t, the one-step TD error
    assert_close(impl.target(0.75, 0.0, c), expected, ATOL64, impl.name)
    assert_close(impl.oracle(0.75, 0.0, c), expected, 1e-12, "oracle")


EXTREMES = [(g, lam) for g in (0.0, 1.0) for lam in (0.0, 1.0)]


@pytest.mark.parametrize(
    ("impl", "gamma", "lmbda"),
    [pytest.param(i, g, lam, marks=[*i.marks, *crash_xfail(i, g, lam)],
                  id=f"{i.name}-g{g:g}-l{lam:g}")
     for i in IMPLS for g, lam in EXTREMES])
def test_gamma_lambda_extremes(impl, gamma, lmbda):
    c = random_case(5, (3, 12, 1), consistent=True)
    if gamma == 0.0:
        # γ = 0: nothing after the current reward counts: target = r_t
        closed = c.reward
    elif lmbda == 0.0:
        # γ = 1, λ = 0: target = r_t + (1 - term_t) V(s'_t)
        closed = c.reward + (~c.terminated) * c.next_state_value
    else:
        # γ = λ = 1: undiscounted sum of rewards to the episode's end, plus V(s') at the end
        # unless terminated: G_t = Σ_{k<N} r_{t+k} + (1 - term) V'_{t+N-1}
        zeros = torch.zeros_like(c.reward)
        end_value = torch.where(c.done | (torch.arange(12) == 11).view(1, 12, 1),
                                (~c.terminated) * c.next_state_value, zeros)
        closed = oracle_mc_return(1.0, c.reward + end_value, c.done)
    assert_close(impl.oracle(gamma, lmbda, c), closed, 1e-12, "oracle vs closed form")
    assert_close(impl.target(gamma, lmbda, c), closed, ATOL64, impl.name)


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("end", ["terminated", "truncated"])
def test_termination_does_not_bootstrap_truncation_does(impl, end):
    H, gamma, c_boot = 5, 0.875, 7.0
    c = pattern_case("." * (H - 1) + ("T" if end == "terminated" else "X"), bootstrap=c_boot)
    expected = torch.tensor(
        [probes.geometric_sum(gamma, H - t) + (end == "truncated") * gamma ** (H - t) * c_boot
         for t in range(H)], dtype=F64).view(1, H, 1)
    # λ = 1, reward 1, V ≡ 0 inside, V(s_H) = 7: terminated → (1 - γ^(H-t)) / (1 - γ);
    # truncated → (1 - γ^(H-t)) / (1 - γ) + γ^(H-t) · 7
    assert_close(impl.target(gamma, 1.0, c), expected, ATOL64, impl.name)
    # λ = 0 at the last step: 1 (terminated) or 1 + γ·7 (truncated)
    if not impl.vectorised:  # vectorised: λ = 0 crashes, see test_lambda0_is_one_step_td
        last = impl.target(gamma, 0.0, c)[0, -1, 0].item()
        assert last == pytest.approx(1.0 + (end == "truncated") * gamma * c_boot, abs=1e-12)


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_resets_in_the_middle_of_the_window(impl):
    pattern, gamma, c_boot = "..T...X.T....", 0.75, 4.0
    c = pattern_case(pattern, bootstrap=c_boot)
    # segment closed forms: m = steps left in the segment, ended by T (no bootstrap), X or the
    # window's end (bootstrap V = 4): (1 - γ^m) / (1 - γ) + [not T] γ^m · 4
    expected, end = [], len(pattern)
    for t in reversed(range(len(pattern))):
        if pattern[t] in "TX":
            end = t + 1
        m = end - t
        boot = 0.0 if pattern[end - 1] == "T" else gamma**m * c_boot
        expected.append(probes.geometric_sum(gamma, m) + boot)
    expected = torch.tensor(expected[::-1], dtype=F64).view(1, -1, 1)
    assert_close(impl.target(gamma, 1.0, c), expected, ATOL64, impl.name)
    for lmbda in (0.5, 0.875):
        assert_close(impl.target(gamma, lmbda, c), impl.oracle(gamma, lmbda, c), ATOL64,
                     f"{impl.name} λ={lmbda}")


LAYOUTS = {  # name: (shape, time_dim); batch dims (2, 3), T = 9
    "BBT1-default": ((2, 3, 9, 1), -2),
    "BBT1-positive": ((2, 3, 9, 1), 2),
    "TBB1": ((9, 2, 3, 1), 0),
    "BTB1": ((2, 9, 3, 1), 1),
    "T1-no-batch": ((9, 1), -2),
}


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batch_dims_and_time_dim(impl, layout):
    shape, time_dim = LAYOUTS[layout]
    c = random_case(6, shape, time_dim=time_dim)
    got = impl.target(0.875, 0.75, c)
    # same numbers as the oracle, in the same layout
    assert_close(got, impl.oracle(0.875, 0.75, c), ATOL64, impl.name)
    # and each batch element is the [T, 1] computation on its own
    flat = [x.movedim(time_dim, 0).reshape(9, -1) for x in
            (c.state_value, c.next_state_value, c.reward, c.done, c.terminated)]
    ref = got.movedim(time_dim, 0).reshape(9, -1)
    for j in range(ref.shape[1]):
        one = Case(*(x[:, j].reshape(1, 9, 1) for x in flat))
        assert_close(ref[:, j], impl.target(0.875, 0.75, one).flatten(), ATOL64, f"col {j}")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_per_step_gamma(impl):
    T = 8
    gamma = torch.tensor([0.5, 1.0, 0.25, 0.75, 1.0, 0.5, 0.875, 0.625], dtype=F64)
    c = pattern_case("." * (T - 1) + "T")
    expected = torch.tensor([sum(math.prod(gamma[t:t + k].tolist()) for k in range(T - t))
                             for t in range(T)], dtype=F64).view(1, T, 1)
    g = gamma.view(1, T, 1)
    # γ_t discounts the transition out of step t: G_t = Σ_k Π_{j<k} γ_{t+j} for reward 1
    assert_close(impl.target(g, 1.0, c), expected, ATOL64, impl.name)
    assert_close(impl.oracle(g, 1.0, c), expected, 1e-14, "oracle")
    rc = random_case(7, (3, T, 1))
    g = (torch.randint(0, 65, (3, T, 1), generator=torch.Generator().manual_seed(0)) / 64)
    g = g.to(F64)
    assert_close(impl.target(g, 0.75, rc), impl.oracle(g, 0.75, rc), ATOL64, "random")


@pytest.mark.parametrize("impl", IMPL_PARAMS)
def test_float32_inputs_within_tolerance(impl):
    c64 = random_case(8, (4, 12, 1))
    c32 = c64.to(torch.float32)
    got = impl.target(0.99, 0.95, c32)
    assert got.dtype == torch.float32
    # float32 inputs: within 1e-4 of the float64 oracle for |values| <= 10, T = 12
    assert_close(got, impl.oracle(0.99, 0.95, c64), ATOL_F32, impl.name)


@pytest.mark.parametrize(
    "impl",
    [pytest.param(i, marks=[*i.marks] if i.float64_discount else
                  [pytest.mark.xfail(strict=True, raises=AssertionError, reason=F32_DISCOUNT)])
     for i in IMPLS], ids=IMPL_IDS)
def test_float64_inputs_are_discounted_in_float64(impl):
    c = random_case(9, (4, 30, 1))
    # γ = 0.99, λ = 0.95 are not float32 numbers: a float64 computation stays within 1e-12
    assert_close(impl.target(0.99, 0.95, c), impl.oracle(0.99, 0.95, c), 1e-12, impl.name)


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=F32_DISCOUNT)
def test_td0_float64_inputs_are_discounted_in_float64():
    c = random_case(9, (4, 30, 1))
    got = td0_return_estimate(0.6, c.next_state_value, c.reward, c.terminated)
    expected = c.reward + 0.6 * (~c.terminated).to(F64) * c.next_state_value
    # r_t + γ (1 - term_t) V(s'_t) with γ = 0.6 (not a float32 number): within 1e-12 in float64
    assert_close(got, expected, 1e-12, "td0")


def test_float32_rounded_discount_explains_the_float64_gap():
    # evidence for F32_DISCOUNT: feeding the oracle float32-rounded γ and γλ reproduces the loop
    # GAE to float64 rounding
    c = random_case(9, (4, 30, 1))
    g32 = float(torch.tensor(0.99, dtype=torch.float32))
    gl32 = float(torch.tensor(0.99 * 0.95, dtype=torch.float32))
    got = generalized_advantage_estimate(0.99, 0.95, c.state_value, c.next_state_value,
                                         c.reward, c.done, c.terminated)[0]
    assert_close(got, oracle_gae(g32, gl32 / g32, c.state_value, c.next_state_value, c.reward,
                                 c.done, c.terminated)[0], 1e-12)


@pytest.mark.parametrize("impl", [i for i in IMPLS if i.vectorised], ids=lambda i: i.name)
@pytest.mark.parametrize("gamma_lambda", [1 / 4096, 1 / 512, 1 / 64])
@pytest.mark.xfail(strict=True, raises=AssertionError, reason=VEC_CUT)
def test_vec_filter_drops_only_weights_below_threshold(impl, gamma_lambda):
    r = gamma_lambda
    lim = int(math.log(THR) / math.log(r))  # the number of terms torchrl keeps
    T = lim + 1  # so that exactly one more weight, r^lim >= thr, is in the window
    c = pattern_case("." * T)
    c.state_value.zero_()
    c.next_state_value.zero_()
    got = impl.target(r, 1.0, c)[0, 0, 0].item()  # γ = γλ = r, λ = 1, reward 1, V ≡ 0
    # A_0 = Σ_{l<T} r^l; dropping only the weights below thr costs at most thr per δ = 1
    assert r**lim >= THR
    assert abs(got - probes.geometric_sum(r, T)) <= THR * T


@pytest.mark.parametrize("gamma", [0.0, 0.625, 1.0])
def test_td0_return(gamma):
    c = random_case(10, (3, 12, 1))
    got = td0_return_estimate(gamma, c.next_state_value, c.reward, c.terminated)
    # TD(0): r_t + γ (1 - term_t) V(s'_t); a truncated step keeps the bootstrap
    expected = c.reward + gamma * (~c.terminated).to(F64) * c.next_state_value
    assert_close(got, expected, 1e-12)
    assert_close(got, oracle_td0_return(gamma, c.next_state_value, c.reward, c.terminated), 1e-12)
    truncated = c.done & ~c.terminated
    assert truncated.any() and (c.terminated.any())
    # at a truncated step the target differs from r by exactly γ V(s'); at a terminated one not
    assert_close(got[truncated], (c.reward + gamma * c.next_state_value)[truncated], 1e-12)
    assert_close(got[c.terminated], c.reward[c.terminated], 1e-12)


# --- the module forms on probe rollouts -----------------------------------------------------


class ExactValue(torch.nn.Module):
    """V(s) from the probe's closed form, read off the observation (the step counter)."""

    def __init__(self, env: probes.ProbeEnv, gamma: float):
        super().__init__()
        self._value, self.gamma = env.value, gamma

    def forward(self, observation):
        return self._value(observation, self.gamma)


class ConstantValue(torch.nn.Module):
    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, observation):
        return torch.full_like(observation, self.c)


def value_net(module: torch.nn.Module) -> TensorDictModule:
    return TensorDictModule(module, in_keys=["observation"], out_keys=["state_value"])


MODULES = {  # name: constructor(gamma, lmbda, value_network)
    "GAE-loop": lambda g, lam, net: GAE(gamma=g, lmbda=lam, value_network=net, vectorized=False),
    "GAE-vec": lambda g, lam, net: GAE(gamma=g, lmbda=lam, value_network=net, vectorized=True),
    "TDLambda-loop": lambda g, lam, net: TDLambdaEstimator(gamma=g, lmbda=lam, value_network=net,
                                                           vectorized=False),
    "TDLambda-vec": lambda g, lam, net: TDLambdaEstimator(gamma=g, lmbda=lam, value_network=net,
                                                          vectorized=True),
    "TD0": lambda g, lam, net: TD0Estimator(gamma=g, value_network=net),
    "GAE-rlgauge": lambda g, lam, net: KernelGAE(gamma=g, lmbda=lam, value_network=net),
}


def probe_rollout(task: str, steps: int, num_envs: int = 3, **kw):
    env = probes.make(task, num_envs=num_envs, seed=0, **kw)
    policy_action = torch.zeros(num_envs, dtype=torch.int64)

    def policy(td):
        return td.set("action", policy_action.clone())

    return env, env.rollout(steps, policy, break_when_any_done=False)


def oracle_target(name: str, gamma: float, lmbda: float, data) -> torch.Tensor:
    """The oracle's value target for module ``name`` on a processed rollout (time last)."""
    v, vn = data["state_value"], data["next", "state_value"]
    r, d, term = data["next", "reward"], data["next", "done"], data["next", "terminated"]
    if name.startswith("GAE"):
        return oracle_gae(gamma, lmbda, v, vn, r, d, term)[1]
    if name.startswith("TDLambda"):
        return oracle_td_lambda_return(gamma, lmbda, vn, r, d, term)
    return oracle_td0_return(gamma, vn, r, term)


@pytest.mark.parametrize("module", list(MODULES))
@pytest.mark.parametrize("task", ["constant-terminated", "constant-truncated", "last-reward",
                                  "discount", "obs-reward"])
def test_module_exact_value_has_zero_advantage(module, task):
    gamma, lmbda = 0.9, 0.8
    kw = {"horizon": 5} if task in ("constant-terminated", "constant-truncated",
                                    "last-reward") else {}
    env, data = probe_rollout(task, steps=23, **kw)
    est = MODULES[module](gamma, lmbda, value_net(ExactValue(env, gamma)))
    out = est(data.clone())
    expected = env.value(data["observation"].to(F64), gamma)
    # exact V ⇒ every δ_t = 0 ⇒ advantage 0 and target = V(s_t): (1 - γ^(H-t)) / (1 - γ)
    # (constant-terminated), 1 / (1 - γ) (constant-truncated), γ^(H-1-t) (last-reward,
    # discount), obs (obs-reward)
    assert_close(out["value_target"], expected, ATOL_F32, f"{module} target")
    assert_close(out["advantage"], torch.zeros_like(expected), ATOL_F32, f"{module} advantage")
    assert_close(out["value_target"], oracle_target(module, gamma, lmbda, out), ATOL_F32,
                 f"{module} vs oracle")


@pytest.mark.parametrize("module", ["GAE-loop", "GAE-vec", "TDLambda-loop", "TDLambda-vec",
                                    "GAE-rlgauge"])
@pytest.mark.parametrize("task", ["constant-terminated", "constant-truncated"])
def test_module_bootstraps_only_on_truncation(module, task):
    H, gamma, c = 4, 0.9, 5.0
    env, data = probe_rollout(task, steps=2 * H, horizon=H)  # two whole episodes
    out = MODULES[module](gamma, 1.0, value_net(ConstantValue(c)))(data.clone())
    t = data["observation"].to(F64)
    boot = gamma ** (H - t) * c if task == "constant-truncated" else torch.zeros_like(t)
    # λ = 1, V ≡ 5: target_t = (1 - γ^(H-t)) / (1 - γ) + [truncated] γ^(H-t) · 5
    assert_close(out["value_target"], probes.geometric_sum(gamma, H - t) + boot, ATOL_F32, module)


@pytest.mark.parametrize(
    "module", [pytest.param(m, marks=[pytest.mark.xfail(raises=IndexError, strict=True,
                                                        reason=VEC_CRASH)] if "vec" in m else [])
               for m in ["GAE-loop", "GAE-vec", "TDLambda-loop", "TDLambda-vec", "GAE-rlgauge"]])
def test_module_lambda0_is_td0(module):
    env, data = probe_rollout("last-reward", steps=11, horizon=4)
    out = MODULES[module](0.9, 0.0, value_net(ConstantValue(2.0)))(data.clone())
    r, term = data["next", "reward"].to(F64), data["next", "terminated"]
    # λ = 0: target = r + γ (1 - term) V(s') with V ≡ 2
    assert_close(out["value_target"], r + 0.9 * (~term).to(F64) * 2.0, ATOL_F32, module)


@pytest.mark.parametrize("module", ["GAE-loop", "GAE-vec", "TDLambda-loop", "TDLambda-vec",
                                    "GAE-rlgauge"])
def test_module_batch_dims_and_time_dim(module):
    gamma, lmbda = 0.9, 0.7
    env, data = probe_rollout("last-reward", steps=13, horizon=4)
    make = MODULES[module]
    base = make(gamma, lmbda, value_net(ConstantValue(0.5)))(data.clone())["value_target"]
    # the same numbers with an extra leading batch dim [1, 3, T] (time stays last) ...
    extra = make(gamma, lmbda, value_net(ConstantValue(0.5)))(data.clone().unsqueeze(0))
    assert_close(extra["value_target"][0], base, 1e-6, "extra batch dim")
    # ... and with time first [T, 3], time_dim=0
    est = make(gamma, lmbda, value_net(ConstantValue(0.5)))
    est.time_dim = 0
    if module.startswith("GAE"):
        swapped = est(data.clone().transpose(0, 1), time_dim=0)
    else:
        swapped = est(data.clone().transpose(0, 1))
    assert_close(swapped["value_target"].transpose(0, 1), base, 1e-6, "time_dim=0")
    # and the oracle agrees: γ^(H-1-t)-shaped returns on last-reward with V ≡ 0.5
    assert_close(base, oracle_target(module, gamma, lmbda, make(
        gamma, lmbda, value_net(ConstantValue(0.5)))(data.clone())), ATOL_F32, "oracle")


# --- deliberately wrong estimators are caught -----------------------------------------------


def wrong_bootstraps_on_termination(gamma, lmbda, v, v_next, r, done, terminated, *,
                                    time_dim=-2):
    """GAE that treats every episode end as a truncation: γ V(s') is added after terminations."""
    return generalized_advantage_estimate(gamma, lmbda, v, v_next, r, done,
                                          torch.zeros_like(terminated), time_dim=time_dim)


def wrong_off_by_one(gamma, lmbda, v, v_next, r, done, terminated, *, time_dim=-2):
    """GAE that bootstraps from V(s'_{t+1}) instead of V(s'_t): a one-step index shift."""
    shifted = torch.roll(v_next, -1, dims=time_dim)
    return generalized_advantage_estimate(gamma, lmbda, v, shifted, r, done, terminated,
                                          time_dim=time_dim)


WRONG = {"bootstraps-on-termination": wrong_bootstraps_on_termination,
         "off-by-one": wrong_off_by_one}


def check_gae_against_oracle(fn, c: Case, gamma, lmbda, atol) -> None:
    """The comparison every GAE check above makes: ``fn`` must match the oracle within atol."""
    got = fn(gamma, lmbda, c.state_value, c.next_state_value, c.reward, c.done, c.terminated,
             time_dim=c.time_dim)[0]
    want = oracle_gae(gamma, lmbda, c.state_value, c.next_state_value, c.reward, c.done,
                      c.terminated, time_dim=c.time_dim)[0]
    assert_close(got, want, atol, getattr(fn, "__name__", "fn"))


@pytest.mark.parametrize("wrong", list(WRONG))
def test_wrong_estimator_is_caught_by_the_oracle(wrong):
    c = random_case(11, (3, 12, 1))
    check_gae_against_oracle(generalized_advantage_estimate, c, 0.875, 0.75, ATOL64)
    with pytest.raises(AssertionError, match="max abs error"):
        check_gae_against_oracle(WRONG[wrong], c, 0.875, 0.75, ATOL64)


@pytest.mark.parametrize("wrong", list(WRONG))
def test_wrong_estimator_is_caught_on_a_probe(wrong):
    # constant-terminated with the exact V: a correct GAE gives advantage 0 at every step
    env, data = probe_rollout("constant-terminated", steps=10, horizon=5)
    v = env.value(data["observation"].to(F64), 0.9)
    v_next = env.value(data["next", "observation"].to(F64), 0.9)
    args = (0.9, 0.8, v, v_next, data["next", "reward"].to(F64), data["next", "done"],
            data["next", "terminated"])
    assert max_err(generalized_advantage_estimate(*args)[0], torch.zeros_like(v)) < 1e-6
    # the wrong one does not: V(s_H) = 0 anyway, so shift the terminal value to see bootstrap
    if wrong == "bootstraps-on-termination":
        args = (*args[:3], v_next + 1.0, *args[4:])  # V(s') = 1 at the terminal state
        assert max_err(wrong_bootstraps_on_termination(*args)[0],
                       oracle_gae(*args)[0]) > 0.1
    else:
        assert max_err(wrong_off_by_one(*args)[0], torch.zeros_like(v)) > 0.1


# --- property-based: random trajectories, torchrl vs oracle --------------------------------

DYADIC = st.integers(0, 64).map(lambda k: k / 64)  # exact in float32, and so are products


@st.composite
def cases(draw, per_step_gamma: bool = True):
    batch = draw(st.lists(st.integers(1, 3), max_size=2))
    T = draw(st.integers(1, 12))
    pos = draw(st.integers(0, len(batch)))
    shape = (*batch[:pos], T, *batch[pos:], draw(st.integers(1, 2)))  # [..., T, ..., F]
    time_dim = pos if draw(st.booleans()) else pos - len(shape)
    c = random_case(draw(st.integers(0, 2**31 - 1)), shape, time_dim=time_dim,
                    p_term=draw(st.sampled_from([0.0, 0.1, 0.3])),
                    p_trunc=draw(st.sampled_from([0.0, 0.1, 0.3])))
    if per_step_gamma and draw(st.booleans()):
        # one γ per element (step and batch entry), dyadic k/64, laid out like the data
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        gamma = torch.randint(0, 65, shape, generator=g).to(F64) / 64
    else:
        gamma = draw(DYADIC)
    return c, gamma, draw(DYADIC)


PROPERTY = settings(max_examples=50, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def fast_path_misbehaves(gamma, lmbda, T: int) -> bool:
    """Whether torchrl's vectorised scalar-γ fast path hits a known bug on this case: it
    crashes on γλ < thr (VEC_CRASH) and drops a weight >= thr when it keeps fewer than T terms
    of the geometric series (VEC_CUT)."""
    if isinstance(gamma, torch.Tensor) and gamma.numel() > 1:
        return False  # the per-step path builds the full [T, T] weights instead
    r = float(gamma) * lmbda
    return r < THR or (r < 1.0 and int(math.log(THR) / math.log(r)) < T)


def vec_threshold_bound(c: Case) -> float:
    """What dropping weights below thr may cost: thr · T · max|δ|."""
    T = c.reward.shape[c.time_dim]
    biggest = sum(x.abs().max().item() for x in (c.reward, c.state_value, c.next_state_value))
    return THR * T * biggest


@pytest.mark.parametrize("impl", IMPL_PARAMS)
@PROPERTY
@given(data=cases())
def test_property_impl_matches_oracle(impl, data):
    c, gamma, lmbda = data
    T = c.reward.shape[c.time_dim]
    # steer torchrl's vectorised forms around their two known bugs (strict xfails above)
    assume(not (impl.vectorised and fast_path_misbehaves(gamma, lmbda, T)))
    atol = ATOL64 + (vec_threshold_bound(c) if impl.vectorised else 0.0)
    # impl == Σ_l (Π γλ (1 - done)) δ_{t+l} (GAE) / the λ-mixture of n-step returns (TD(λ))
    assert_close(impl.target(gamma, lmbda, c), impl.oracle(gamma, lmbda, c), atol, impl.name)


@PROPERTY
@given(data=cases(per_step_gamma=False))
def test_property_td0_matches_oracle(data):
    c, gamma, _ = data
    v_next, r = c.next_state_value.movedim(c.time_dim, -2), c.reward.movedim(c.time_dim, -2)
    term = c.terminated.movedim(c.time_dim, -2)
    got = td0_return_estimate(gamma, v_next, r, term).movedim(-2, c.time_dim)
    # r_t + γ (1 - term_t) V(s'_t)
    assert_close(got, oracle_td0_return(gamma, c.next_state_value, c.reward, c.terminated,
                                        time_dim=c.time_dim), 1e-12)


@pytest.mark.parametrize("wrong", list(WRONG))
def test_property_catches_wrong_estimator(wrong):
    fn = WRONG[wrong]

    @settings(max_examples=50, deadline=None, database=None, phases=[Phase.generate],
              derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(data=cases(per_step_gamma=False))
    def prop(data):
        c, gamma, lmbda = data
        check_gae_against_oracle(fn, c, gamma, lmbda, ATOL64)

    # hypothesis finds a trajectory where the wrong estimator misses the oracle
    with pytest.raises(AssertionError, match="max abs error"):
        prop()
