"""Statistics of a randomized campaign: intervals for a rate, a difference and a ratio of rates, and lift shrinkage.

Pure functions of counts (no data frames, no I/O). Rates are shares in [0, 1]; every interval is two-sided at
``confidence`` (0.95 by default) and returned as ``(low, high)`` floats, NaN when the counts cannot define it.

- :func:`wilson_interval`: Wilson's score interval for one proportion ``k / n``.
- :func:`newcombe_difference`: Newcombe's hybrid score interval (method 10 of Newcombe 1998) for ``p1 - p2`` of two
  independent proportions, built from the two Wilson intervals. Its coverage stays close to nominal for small
  rates and small groups, where the Wald interval undercovers; it is the interval of the incremental rate.
- :func:`log_ratio_interval`: the Katz log interval for ``p1 / p2`` (defined when both groups have at least one
  event): the interval of a relative lift ``p1 / p2 - 1``.
- :func:`shrunk_lift`: a measured relative lift pulled toward the prior lift by its sample size.
"""

from __future__ import annotations

import math

from scipy.special import ndtri

DEFAULT_CONFIDENCE = 0.95


def z_value(confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The standard normal quantile of a two-sided ``confidence`` (1.95996... for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(ndtri(0.5 + confidence / 2))


def _counts(k: int, n: int) -> tuple[int, int]:
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= max(n, 0):
        raise ValueError(f"counts must satisfy 0 <= k <= n, got k={k}, n={n}")
    return k, n


def wilson_interval(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of the proportion ``k / n`` (events ``k`` among ``n`` users);
    ``(nan, nan)`` when ``n == 0``. Bounds lie in [0, 1] and are exactly 0 (1) when ``k == 0`` (``k == n``)."""
    k, n = _counts(k, n)
    if n == 0:
        return math.nan, math.nan
    z = z_value(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def newcombe_difference(
    k1: int, n1: int, k2: int, n2: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float, float]:
    """``(d, low, high)`` for the difference ``d = k1/n1 - k2/n2`` of two independent proportions.

    Newcombe's hybrid score interval: with Wilson intervals ``(l1, u1)`` and ``(l2, u2)``,
    ``low = d - sqrt((p1 - l1)^2 + (u2 - p2)^2)`` and ``high = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)``.
    All three are NaN when either group is empty.
    """
    k1, n1 = _counts(k1, n1)
    k2, n2 = _counts(k2, n2)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan, math.nan
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def log_ratio_interval(
    k1: int, n1: int, k2: int, n2: int, confidence: float = DEFAULT_CONFIDENCE
) -> tuple[float, float, float]:
    """``(r, low, high)`` for the ratio ``r = (k1/n1) / (k2/n2)`` of two independent proportions.

    Katz log interval: ``exp(log r +- z sqrt(1/k1 - 1/n1 + 1/k2 - 1/n2))``. All three are NaN when a group is empty
    or has no event (the ratio or its log is then undefined).
    """
    k1, n1 = _counts(k1, n1)
    k2, n2 = _counts(k2, n2)
    if min(k1, k2, n1, n2) == 0:
        return math.nan, math.nan, math.nan
    r = (k1 / n1) / (k2 / n2)
    se = math.sqrt(max(0.0, 1 / k1 - 1 / n1 + 1 / k2 - 1 / n2))
    z = z_value(confidence)
    return r, r * math.exp(-z * se), r * math.exp(z * se)


def shrunk_lift(
    prior: float, measured: float | None, n_control: int, n_treatment: int, prior_strength: float
) -> float:
    """The measured relative lift shrunk toward the prior lift by the size of the test that measured it.

    ``shrunk = w x measured + (1 - w) x prior`` with ``w = n_eff / (n_eff + prior_strength)`` and
    ``n_eff = 1 / (1 / n_control + 1 / n_treatment)``: the variance of a difference of two rates scales with
    ``1/n_control + 1/n_treatment``, so ``n_eff`` is the test's precision in users, and ``prior_strength`` (users,
    >= 0) is the precision the prior is worth - a prior is as convincing as a test with ``n_eff = prior_strength``.
    A 10% control of 1,000 users (100 vs 900) gives ``n_eff = 90``. Returns the prior when nothing was measured
    (``measured`` None or NaN, or an empty group) and the measured lift when ``prior_strength == 0``.
    """
    if not math.isfinite(prior):
        raise ValueError(f"prior lift must be finite, got {prior!r}")
    if not (math.isfinite(prior_strength) and prior_strength >= 0):
        raise ValueError(f"prior_strength must be a finite number >= 0, got {prior_strength!r}")
    if n_control < 0 or n_treatment < 0:
        raise ValueError(f"group sizes must be >= 0, got control={n_control}, treatment={n_treatment}")
    if measured is None or not math.isfinite(measured) or n_control == 0 or n_treatment == 0:
        return float(prior)
    n_eff = 1.0 / (1.0 / n_control + 1.0 / n_treatment)
    weight = n_eff / (n_eff + prior_strength)
    return float(weight * measured + (1.0 - weight) * prior)
