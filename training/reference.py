"""Reference profiles: per-column bins and shares of a population, as plain JSON that can travel with a model.

A :class:`ReferenceProfile` holds, per column, the bins of a reference population and the share of it in each bin.
Numeric columns get up to ``bins`` quantile bins of the reference's known values (cut at observed values,
right-closed: ``(-inf, e1], (e1, e2], ..., (e_last, inf)``; repeated quantiles merge, so a count that is mostly 0 gets
one bin for 0); text columns one bin per reference value plus one for values the reference never had. Missing values
(NaN, None) have their own bin, so a feature that goes missing shows. Monitoring
(``serving.monitoring``) measures the population stability index of new data against these bins.

:func:`model_reference_profile` is the reference of one trained model: its score, its most important features and the
segment mix over the users of a cutoff. Stored with the bundle at training time
(``bundle.meta["reference_profile"] = model_reference_profile(bundle, segmented).to_dict()``), monitoring compares
new snapshots with it without rebuilding anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from training.bundle import SCORE_COLUMN
from training.labels import lapse_population

if TYPE_CHECKING:
    from training.bundle import ModelBundle

__all__ = [
    "MIX_COLUMNS", "OTHER", "ColumnProfile", "ReferenceProfile", "missing_rate", "model_reference_profile",
    "population_rows", "profile_column", "reference_profile", "shares_of", "top_features",
]

OTHER = "(other)"
"""The bin of text values the reference never had."""
MIX_COLUMNS: tuple[str, ...] = ("aipl_layer", "lifecycle")
"""Segment columns whose mix a model reference records (over every row given)."""
Kind = Literal["numeric", "category"]


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


def missing_rate(values: pd.Series | np.ndarray) -> float:
    """Share of missing values (NaN or None) in ``values``; NaN when empty."""
    series = pd.Series(values) if not isinstance(values, pd.Series) else values
    return float(series.isna().mean()) if len(series) else math.nan


def top_features(bundle: ModelBundle, k: int) -> list[str]:
    """The ``k`` features with the highest total gain (those with any gain), most important first."""
    if k <= 0:
        return []
    gain = np.asarray(bundle.booster.feature_importance(importance_type="gain"), dtype=np.float64)
    order = np.argsort(-gain, kind="stable")
    return [bundle.feature_names[i] for i in order[:k] if gain[i] > 0]


def population_rows(target: str, segmented: pd.DataFrame) -> np.ndarray:
    """Rows (boolean, shape (n,)) the model of ``target`` scores: everyone for last-mile buyers, the past buyers
    (:func:`training.labels.lapse_population`) for lapse risk."""
    if target == "lapse_risk":
        return lapse_population(segmented)
    return np.ones(len(segmented), dtype=bool)


def model_reference_profile(
    bundle: ModelBundle, segmented: pd.DataFrame, *, top: int = 15, bins: int = 10,
    meta: Mapping[str, Any] | None = None,
) -> ReferenceProfile:
    """The reference of ``bundle`` over ``segmented`` (``Segmenter.transform`` output of a feature table at one
    cutoff, one row per user; give every user of the cutoff, as a snapshot scores them): its calibrated score
    (``p_buy`` / ``p_lapse``) and its ``top`` features by gain over the users it scores, and the AIPL layer and
    lifecycle mix over all rows. ``meta["missing"][score]`` records the share of rows without a score."""
    x = bundle.matrix(segmented)
    rows = population_rows(bundle.target, segmented)
    column = SCORE_COLUMN[bundle.target]
    p = np.full(len(segmented), np.nan)
    if rows.any():
        p[rows] = bundle.calibrator.transform(bundle.predict_raw(x[rows]))
    names = top_features(bundle, top)
    where = {name: bundle.feature_names.index(name) for name in names}
    columns = {name: profile_column(name, x[rows, i], bins) for name, i in where.items()}
    columns[column] = profile_column(column, p[rows], bins)
    for name in MIX_COLUMNS:
        if name in segmented.columns:
            columns[name] = profile_column(name, segmented[name].astype(str), bins)
    info = {"users": len(segmented), "scored": int(rows.sum()), "missing": {column: missing_rate(p)}, **(meta or {})}
    return ReferenceProfile(columns, info)
