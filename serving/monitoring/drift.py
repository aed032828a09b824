"""Input and score drift: population stability index (PSI) against a reference profile, mix shifts, missing rates.

A :class:`ReferenceProfile` holds, per column, the bins of a reference population and the share of it in each bin,
as plain JSON (it can travel with a model bundle: :meth:`ReferenceProfile.to_dict`). Numeric columns get up to
``bins`` quantile bins of the reference's known values (cut at observed values, right-closed: ``(-inf, e1],
(e1, e2], ..., (e_last, inf)``; repeated quantiles merge, so a count that is mostly 0 gets one bin for 0); text columns
one bin per reference value plus one for values the reference never had. Missing values (NaN, None) have their own
bin, so a feature that goes missing moves the index.

``PSI = sum_b (a_b - e_b) * ln(a_b / e_b)`` over the bins, ``e`` the reference shares and ``a`` the current ones,
each share floored at ``1e-4`` so that an empty bin costs a bounded amount. Rules of thumb: below 0.1 stable, 0.1 to
0.2 a moderate shift, above 0.2 a large one (the thresholds live in ``MonitoringSettings``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = [
    "OTHER", "ColumnProfile", "ReferenceProfile", "column_psi", "level_of", "missing_rate", "profile_column", "psi",
    "reference_profile", "shares_of",
]

SHARE_FLOOR = 1e-4
OTHER = "(other)"
"""The bin of text values the reference never had."""
Kind = Literal["numeric", "category"]
Level = Literal["ok", "warn", "alert"]


@dataclass(frozen=True)
class ColumnProfile:
    """One column of a reference: ``edges`` (numeric: inner cut points, increasing) or ``categories`` (text values),
    ``shares`` of the reference per bin (numeric: ``len(edges) + 1`` value bins; text: one per category, then
    :data:`OTHER`; both then the missing bin), ``missing`` (share missing) and ``n`` (rows)."""

    name: str
    kind: Kind
    shares: list[float]
    missing: float
    n: int
    edges: list[float] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReferenceProfile:
    """Per-column reference bins and shares (see the module docstring); ``meta`` says what the reference was."""

    columns: dict[str, ColumnProfile]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; :meth:`from_dict` reads it back."""
        return {"format": 1, "meta": dict(self.meta), "columns": [asdict(c) for c in self.columns.values()]}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ReferenceProfile:
        if doc.get("format") != 1:
            raise ValueError(f"reference profile format {doc.get('format')!r} is not readable (expected 1)")
        cols = [ColumnProfile(**{**c, "shares": list(c["shares"]), "edges": list(c.get("edges", [])),
                                 "categories": list(c.get("categories", []))}) for c in doc["columns"]]
        return cls({c.name: c for c in cols}, dict(doc.get("meta", {})))


def _is_text(values: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype))


def _numeric(values: pd.Series) -> np.ndarray:
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def profile_column(name: str, values: pd.Series | np.ndarray, bins: int = 10) -> ColumnProfile:
    """The reference bins and shares of one column (``values``: shape ``(n,)``, numbers or text)."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    if _is_text(series):
        known = series.dropna().astype(str)
        categories = sorted(known.unique().tolist())
        profile = ColumnProfile(name, "category", [], 0.0, len(series), categories=categories)
    else:
        x = _numeric(series)
        finite = x[~np.isnan(x)]
        edges: list[float] = []
        if finite.size:
            cuts = np.quantile(finite, np.arange(1, bins) / bins, method="lower")
            edges = np.unique(cuts).tolist()
        profile = ColumnProfile(name, "numeric", [], 0.0, len(series), edges=edges)
    shares = shares_of(profile, series)
    return ColumnProfile(profile.name, profile.kind, shares.tolist(), float(shares[-1]), len(series),
                         profile.edges, profile.categories)


def reference_profile(
    frame: pd.DataFrame, columns: Iterable[str], *, bins: int = 10, meta: Mapping[str, Any] | None = None
) -> ReferenceProfile:
    """The :class:`ReferenceProfile` of ``columns`` of ``frame`` (one row per user), ``bins`` quantile bins each.

    Meant to be stored with a model at training time (``bundle.meta["reference_profile"] = profile.to_dict()``), so
    monitoring compares new snapshots with what the model was trained on without rebuilding the reference."""
    names = list(dict.fromkeys(columns))
    missing = [c for c in names if c not in frame.columns]
    if missing:
        raise ValueError(f"reference frame lacks column(s) {missing[:5]}")
    return ReferenceProfile({c: profile_column(c, frame[c], bins) for c in names}, dict(meta or {}))


def shares_of(profile: ColumnProfile, values: pd.Series | np.ndarray) -> np.ndarray:
    """Share of ``values`` (shape ``(n,)``) in each bin of ``profile``, missing bin last; all zeros when ``n == 0``."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    n = len(series)
    if profile.kind == "category":
        k = len(profile.categories)
        missing = series.isna().to_numpy()
        codes = pd.Categorical(series.astype("string"), categories=profile.categories).codes.astype(np.int64)
        codes[codes < 0] = k
        codes[missing] = k + 1
        counts = np.bincount(codes, minlength=k + 2).astype(np.float64)
    else:
        x = _numeric(series)
        k = len(profile.edges) + 1
        codes = np.searchsorted(np.asarray(profile.edges, dtype=np.float64), x, side="left")
        codes[np.isnan(x)] = k
        counts = np.bincount(codes, minlength=k + 1).astype(np.float64)
    return counts / n if n else counts


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


def missing_rate(values: pd.Series | np.ndarray) -> float:
    """Share of missing values (NaN or None) in ``values``; NaN when empty."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    return float(series.isna().mean()) if len(series) else math.nan


def level_of(value: float, warn: float, alert: float) -> Level:
    """``alert`` at or above ``alert``, ``warn`` at or above ``warn``, else ``ok`` (NaN is ``ok``)."""
    if not math.isfinite(value):
        return "ok"
    return "alert" if value >= alert else "warn" if value >= warn else "ok"
