"""The gate's statistics: the Hodges-Lehmann estimate and its signed-rank interval (scipy has
no such interval: written here, checked against ``scipy.stats.wilcoxon`` in
tests/test_gate.py), and thin wrappers over numpy/scipy for the rest."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Sequence

from harness.gate.cases import DEFAULT_CONFIDENCE

#: the statistic of a round's samples -> its quantile
STATS = {"median": 0.5, "q25": 0.25, "q10": 0.10, "min": 0.0}

_CDF_CACHE: dict[int, list[float]] = {}


def signed_rank_cdf(n: int) -> list[float]:
    """P(T+ <= k), k = 0 .. n(n+1)/2, for Wilcoxon's signed-rank statistic of n untied pairs
    under "no difference" (exact, by counting rank subsets)."""
    if n not in _CDF_CACHE:
        top = n * (n + 1) // 2
        counts = [1] + [0] * top
        for i in range(1, n + 1):
            for k in range(top, i - 1, -1):
                counts[k] += counts[k - i]
        total = 2 ** n
        _CDF_CACHE[n] = list(itertools.accumulate(c / total for c in counts))
    return _CDF_CACHE[n]


def hodges_lehmann(d: Sequence[float], confidence: float = DEFAULT_CONFIDENCE
                   ) -> tuple[float, float, float]:
    """(estimate, low, high) of the centre of paired differences ``d``: the Hodges-Lehmann
    estimate (median of the Walsh averages) and its distribution-free interval, the one that
    inverts Wilcoxon's signed-rank test (Hollander & Wolfe): the statistic T+ of the shifted
    differences ``d - mu`` is the number of Walsh averages above ``mu``, and the interval holds
    the ``mu`` the two-sided exact test does not reject. Ties and zeros are not corrected for:
    the untied null distribution (``signed_rank_cdf``) is used as is. ±inf bounds when ``d`` is
    too short for that confidence (n = 5 at 95%: 2^-5 > 2.5%)."""
    n = len(d)
    if n == 0:
        raise ValueError("no paired differences")
    walsh = sorted((d[i] + d[j]) / 2 for i in range(n) for j in range(i, n))
    estimate = statistics.median(walsh)
    if n > 60:  # normal approximation of T+ (exact table grows as n^3)
        z = statistics.NormalDist().inv_cdf(1 - (1 - confidence) / 2)
        top = n * (n + 1) / 2
        k = int(math.floor(top / 2 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    else:
        cdf = signed_rank_cdf(n)
        half = (1 - confidence) / 2
        k = 0
        while k + 1 <= len(cdf) and cdf[k] <= half:  # cdf[k] = P(T+ <= k)
            k += 1
    if k < 1:
        return estimate, -math.inf, math.inf
    return estimate, walsh[k - 1], walsh[len(walsh) - k]


def welch_interval(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                   confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float, float]:
    """(b - a, low, high): Welch's t interval for the difference of two means."""
    from scipy.stats import t as student_t

    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    se = math.sqrt(va + vb)
    diff = mean_b - mean_a
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / ((va ** 2 / (n_a - 1) if n_a > 1 else 0) +
                           (vb ** 2 / (n_b - 1) if n_b > 1 else 0) or 1e-300)
    q = float(student_t.ppf(1 - (1 - confidence) / 2, df))
    return diff, diff - q * se, diff + q * se


def quantile(values: Sequence[float], p: float) -> float:
    """The ``p`` quantile of ``values``: linear interpolation between the order statistics
    around (n - 1) p (numpy's default ``method="linear"``; p=0: the minimum)."""
    import numpy as np

    return float(np.quantile(values, p, method="linear"))


def robust_sd(values: Sequence[float]) -> float:
    """The median absolute deviation scaled to the SD of normal data (x 1.4826), robust to
    outliers."""
    from scipy.stats import median_abs_deviation

    return float(median_abs_deviation(values, scale="normal"))


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate k/n; (0, 1) when there were no trials."""
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)
