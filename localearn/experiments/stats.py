"""Is a difference between two rules real? Means with 95 % intervals over seeds, Welch's t-test, and the
verdict in words. Student's t distribution is computed here (its CDF is a regularised incomplete beta
function, by the continued fraction of Numerical Recipes 6.4), so that the report needs no scipy.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

LEVEL = 0.95  # the intervals' confidence, and 1 - the tests' significance level


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast on this side of the mean; the symmetry I_x(a, b) = 1 -
    # I_(1-x)(b, a) covers the other.
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), by the modified Lentz method."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1))
    h = d
    for m in range(1, 500):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 / guard(1.0 + even * d)
        c = guard(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 / guard(1.0 + odd * d)
        c = guard(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` degrees of freedom."""
    return incomplete_beta(df / 2, 0.5, df / (df + t * t))


def t_quantile(probability: float, df: float) -> float:
    """The t with P(T <= t) = probability (> 0.5), by bisection on the two-sided tail."""
    tail = 2 * (1 - probability)
    lo, hi = 0.0, 1.0
    while t_two_sided_p(hi, df) > tail:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided_p(mid, df) > tail else (lo, mid)
    return (lo + hi) / 2


def mean_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the t interval of the mean over seeds; no interval from fewer than two."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, None
    half = t_quantile(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Welch's two-sided p-value for a difference of means; None when either side has fewer than two."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:  # no spread on either side: any difference is exact
        return 1.0 if diff == 0 else 0.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return t_two_sided_p(diff / math.sqrt(va + vb), df)


def verdict(
    mine: Sequence[float], baseline: Sequence[float], lower: str, higher: str, level: float = LEVEL
) -> str:
    """How ``mine`` compares with ``baseline`` in words: ``lower`` or ``higher`` when Welch's test says the
    means differ at 1 - level, else that no difference shows at this number of seeds."""
    p = welch_p(mine, baseline)
    if p is None:
        return f"n < 2 (seeds: {len(mine)} against {len(baseline)}): no test"
    if p >= 1 - level:
        return f"no difference at this n (p = {p:.2g}, {len(mine)} against {len(baseline)} seeds)"
    word = lower if statistics.fmean(mine) < statistics.fmean(baseline) else higher
    return f"{word} (p = {p:.2g}, {len(mine)} against {len(baseline)} seeds)"
