"""95 % confidence intervals for the accuracies the gates read (Acc_F, Acc_R, ΔAcc_R).

An accuracy measured on n test images is a binomial proportion; with a few
dozen forgotten-class images, Acc_F = 0 is compatible with a true rate of
several percent. The Wilson score interval (Wilson, 1927) behaves at 0 and 1,
where the normal approximation collapses to a width of zero. ΔAcc_R is the
difference of two such proportions; Newcombe's hybrid score interval (1998,
method 10) combines the two Wilson intervals. It treats the two runs as
independent samples: on the same test images (positively correlated) it is
conservative, i.e. at least 95 %.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes / n``; (nan, nan) for n = 0."""
    if n <= 0:
        return (math.nan, math.nan)
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_interval(acc: float, n: int) -> tuple[float, float]:
    """The Wilson interval of an accuracy ``acc`` measured on ``n`` samples (successes rounded)."""
    if not math.isfinite(acc):
        return (math.nan, math.nan)
    return wilson_interval(round(acc * n), n)


def difference_interval(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """Newcombe's interval of ``p1 - p2`` (accuracies on ``n1`` and ``n2`` samples)."""
    l1, u1 = accuracy_interval(p1, n1)
    l2, u2 = accuracy_interval(p2, n2)
    d = p1 - p2
    if not all(map(math.isfinite, (l1, u1, l2, u2, d))):
        return (math.nan, math.nan)
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
