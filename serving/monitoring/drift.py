"""Input and score drift: population stability index (PSI) against a reference profile.

The reference profiles themselves (bins and shares per column, plain JSON that travels with a model) are
:mod:`training.reference`; this module re-exports them. ``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` over the bins,
``e`` the reference shares and ``a`` the current ones, each share floored at ``1e-4`` so that an empty bin costs a
bounded amount. Rules of thumb: below 0.1 stable, 0.1 to 0.2 a moderate shift, above 0.2 a large one (the
thresholds live in ``MonitoringSettings``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from training.reference import (
    OTHER,
    ColumnProfile,
    ReferenceProfile,
    missing_rate,
    profile_column,
    reference_profile,
    shares_of,
)

__all__ = [
    "OTHER", "ColumnProfile", "ReferenceProfile", "column_psi", "level_of", "missing_rate", "profile_column", "psi",
    "reference_profile", "shares_of",
]

SHARE_FLOOR = 1e-4
Level = Literal["ok", "warn", "alert"]


def psi(
    expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, floor: float = SHARE_FLOOR
) -> float:
    """Population stability index of two share vectors of the same bins (each share floored at ``floor``)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    a = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    if e.shape != a.shape:
        raise ValueError(f"share vectors differ in length: {e.size} vs {a.size}")
    return float(np.sum((a - e) * np.log(a / e)))


def column_psi(profile: ColumnProfile, values: pd.Series | np.ndarray) -> float:
    """PSI of ``values`` against the reference ``profile``; NaN when ``values`` is empty."""
    if len(values) == 0 or profile.n == 0:
        return math.nan
    return psi(profile.shares, shares_of(profile, values))


def level_of(value: float, warn: float, alert: float) -> Level:
    """``alert`` at or above ``alert``, ``warn`` at or above ``warn``, else ``ok`` (NaN is ``ok``)."""
    if not math.isfinite(value):
        return "ok"
    return "alert" if value >= alert else "warn" if value >= warn else "ok"
