"""Audience segmentation: AIPL layer (computed in the feature table), lifecycle stage and RFM group.

:class:`Segmenter` bundles the fitted :class:`LifecycleSegmenter` and :class:`RFMSegmenter` so training, batch and
online scoring label users identically; :func:`encode_segments` turns the three labels into integer codes with a
fixed order; :func:`asset_summary` reports the audience assets against the playbook's P+L >= 30% target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import ibis
import numpy as np
import pandas as pd

from features.columns import Table, objects, with_columns
from features.segments.lifecycle import (
    GAP_KINDS,
    LIFECYCLE_STAGES,
    LifecycleSegmenter,
    SegmentError,
    coverage_quantile,
    gap_histogram,
    gap_samples,
)
from features.segments.rfm import NO_PURCHASE, RFM_GROUPS, RFMSegmenter
from features.spec.definition import AIPL_LAYERS

__all__ = [
    "AIPL_CODES",
    "GAP_KINDS",
    "LIFECYCLE_CODES",
    "LIFECYCLE_STAGES",
    "PL_TARGET",
    "RFM_CODES",
    "RFM_GROUPS",
    "SEGMENT_CODE_COLUMNS",
    "SEGMENT_COLUMNS",
    "LifecycleSegmenter",
    "RFMSegmenter",
    "SegmentError",
    "Segmenter",
    "asset_summary",
    "coverage_quantile",
    "encode_segments",
    "segment_codes",
    "gap_histogram",
    "gap_samples",
    "lifecycle_rule",
]

AIPL_CODES: dict[str, int] = {"none": 0, "A": 1, "I": 2, "P": 3, "L": 4}
"""Integer code per AIPL layer, increasing with the layer's value (none < A < I < P < L)."""
LIFECYCLE_CODES: dict[str, int] = {"new": 0, "growth": 1, "mature": 2, "silent": 3, "churned": 4}
"""Integer code per lifecycle stage, in the order a relationship usually moves through them."""
RFM_CODES: dict[str, int] = {
    NO_PURCHASE: 0,
    "lost": 1,
    "hibernating_big": 2,
    "at_risk_loyal": 3,
    "at_risk_big": 4,
    "promising": 5,
    "big_spenders_new": 6,
    "loyal_low_spend": 7,
    "champions": 8,
}
"""Integer code per RFM group: no purchase first, then recency-low groups, then recency-high groups."""

SEGMENT_COLUMNS: tuple[str, ...] = ("aipl_layer", "lifecycle", "rfm_group")
SEGMENT_CODE_COLUMNS: tuple[str, ...] = ("aipl_code", "lifecycle_code", "rfm_code")
_CODES: dict[str, tuple[str, dict[str, int]]] = {
    "aipl_layer": ("aipl_code", AIPL_CODES),
    "lifecycle": ("lifecycle_code", LIFECYCLE_CODES),
    "rfm_group": ("rfm_code", RFM_CODES),
}
PL_TARGET = 0.30


def encode_segments(df: pd.DataFrame, columns: Sequence[str] = SEGMENT_COLUMNS) -> pd.DataFrame:
    """Integer codes (int64) of the segment labels, same index as ``df``.

    Output columns, in this order: ``aipl_code`` (:data:`AIPL_CODES`), ``lifecycle_code`` (:data:`LIFECYCLE_CODES`),
    ``rfm_code`` (:data:`RFM_CODES`), restricted to the requested ``columns``. An unknown or missing label raises
    :class:`SegmentError`, so a model never silently sees a code it was not trained with.
    """
    out: dict[str, np.ndarray] = {}
    for col in SEGMENT_COLUMNS:
        if col not in columns:
            continue
        if col not in df.columns:
            raise SegmentError(f"column {col!r} missing; run Segmenter.transform on the feature table first")
        out[_CODES[col][0]] = segment_codes(objects(df, col), col)
    return pd.DataFrame(out, index=df.index)


_SMALL = 64
"""Up to this many labels are looked up one by one in the code dict; more go through a pandas hash index."""


def segment_codes(labels: np.ndarray, column: str) -> np.ndarray:
    """Integer codes (int64, shape (n,)) of the labels (shape (n,)) of one segment column of
    :data:`SEGMENT_COLUMNS`; an unknown or missing label raises :class:`SegmentError`."""
    _name, codes = _CODES[column]
    values = np.asarray(labels, dtype=object)
    if len(values) <= _SMALL:
        out = np.array([codes.get(v, -1) if isinstance(v, str) else -1 for v in values.tolist()], dtype=np.int64)
    else:
        keys = pd.Index(list(codes), dtype=object)
        out = np.append(np.fromiter(codes.values(), dtype=np.int64), -1)[keys.get_indexer(values)]
    bad = out < 0
    if bad.any():
        unknown = sorted({str(v) for v in values[bad].tolist()})
        raise SegmentError(f"unknown {column} label(s) {unknown[:5]}; expected one of {list(codes)}")
    return out


def asset_summary(
    df: pd.DataFrame, pl_target: float = PL_TARGET, segmenter: Segmenter | LifecycleSegmenter | None = None
) -> dict[str, Any]:
    """Size and share of each AIPL layer, lifecycle stage and RFM group in a segmented feature table.

    ``{"n_users", "n_assets", "aipl": {layer: {"count", "share"}}, "lifecycle": {...}, "rfm_group": {...},
    "pl_share", "pl_target", "pl_target_met"}``. Shares are over all rows, except ``pl_share`` which is over
    the assets (users in layer A, I, P or L; ``none`` users have dropped out of every AIPL window). Groups
    absent from ``df`` (e.g. no ``lifecycle`` column) are omitted; every known label is listed, with 0 counts.
    With the fitted ``segmenter`` that labelled ``df``, ``"lifecycle_rule"`` says how the stages were cut:
    ``{"silent_days", "churn_days"}`` (S and C, days), their ``"silent_source"`` / ``"churn_source"`` and
    ``"rule"``, one sentence (:attr:`LifecycleSegmenter.rule_`).
    """
    n = len(df)
    doc: dict[str, Any] = {"n_users": n}
    for col, key, labels in (
        ("aipl_layer", "aipl", AIPL_LAYERS),
        ("lifecycle", "lifecycle", LIFECYCLE_STAGES),
        ("rfm_group", "rfm_group", tuple(RFM_CODES)),
    ):
        if col not in df.columns:
            continue
        counts = df[col].astype("object").value_counts()
        doc[key] = {
            label: {"count": int(counts.get(label, 0)), "share": float(counts.get(label, 0)) / n if n else 0.0}
            for label in labels
        }
    if "aipl" in doc:
        assets = n - doc["aipl"]["none"]["count"]
        pl = doc["aipl"]["P"]["count"] + doc["aipl"]["L"]["count"]
        doc["n_assets"] = assets
        doc["pl_share"] = pl / assets if assets else 0.0
        doc["pl_target"] = pl_target
        doc["pl_target_met"] = bool(assets and doc["pl_share"] >= pl_target)
    if segmenter is not None:
        doc["lifecycle_rule"] = lifecycle_rule(segmenter)
    return doc


def lifecycle_rule(segmenter: Segmenter | LifecycleSegmenter) -> dict[str, Any]:
    """``{"silent_days", "churn_days", "silent_source", "churn_source", "rule"}`` of a fitted segmenter: the S and C
    thresholds (days) that cut the lifecycle stages and the rule that set them."""
    lifecycle = getattr(segmenter, "lifecycle_", segmenter)
    if not hasattr(lifecycle, "churn_days_"):
        raise SegmentError("the segmenter is not fitted; call fit before asking for its lifecycle rule")
    return {
        "silent_days": float(lifecycle.silent_days_),
        "churn_days": float(lifecycle.churn_days_),
        "silent_source": lifecycle.silent_source_,
        "churn_source": lifecycle.churn_source_,
        "rule": getattr(lifecycle, "rule_", "")
        or f"S = {lifecycle.silent_days_:g} d ({lifecycle.silent_source_}); "
        f"C = {lifecycle.churn_days_:g} d ({lifecycle.churn_source_})",
    }


class Segmenter:
    """Lifecycle + RFM segmentation fitted once and applied identically everywhere.

    ``fit(events, features, as_of)`` fits ``lifecycle_`` (gap thresholds from the events before ``as_of``) and
    ``rfm_`` (80/20 thresholds from the feature table built at the same ``as_of``); ``transform(features)``
    adds ``lifecycle`` and ``rfm_group`` columns. Picklable, and JSON-serialisable with :meth:`to_dict`.
    """

    def __init__(self, lifecycle: LifecycleSegmenter | None = None, rfm: RFMSegmenter | None = None) -> None:
        self.lifecycle = lifecycle
        self.rfm = rfm

    def fit(
        self,
        events: Any,
        features: pd.DataFrame,
        as_of: datetime,
        *,
        con: ibis.BaseBackend | None = None,
    ) -> Segmenter:
        """Fit both segmenters; ``events`` is an Ibis table, pandas frame or Parquet path."""
        lifecycle = LifecycleSegmenter(**(self.lifecycle or LifecycleSegmenter()).get_params())
        rfm = RFMSegmenter(**(self.rfm or RFMSegmenter()).get_params())
        self.lifecycle_ = lifecycle.fit(events, as_of, con=con)
        self.rfm_ = rfm.fit(features)
        return self

    def transform(self, features: Table) -> Table:
        """A copy of ``features`` with ``lifecycle`` and ``rfm_group`` string columns (:data:`features.columns.Columns`
        in, the same columns with the two labels added out, nothing copied)."""
        labels = self.labels(features)
        if not isinstance(features, pd.DataFrame):
            return with_columns(features, labels)
        out = features.copy()
        for name, values in labels.items():
            out[name] = pd.Series(values, index=features.index, name=name, dtype="str")
        return out

    def labels(self, features: Table) -> dict[str, np.ndarray]:
        """``{"lifecycle": stages, "rfm_group": groups}`` of every row of a feature table (DataFrame or
        :data:`features.columns.Columns`), object arrays of shape (n,)."""
        if not hasattr(self, "rfm_"):
            raise SegmentError("Segmenter is not fitted; call fit(events, features, as_of) first")
        return {"lifecycle": self.lifecycle_.stages(features), "rfm_group": self.rfm_.groups(features)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready document of both segmenters (parameters and learned thresholds)."""
        doc: dict[str, Any] = {
            "type": "Segmenter",
            "params": {
                "lifecycle": self.lifecycle.to_dict() if self.lifecycle else None,
                "rfm": self.rfm.to_dict() if self.rfm else None,
            },
            "fitted": None,
        }
        if hasattr(self, "rfm_"):
            doc["fitted"] = {"lifecycle_": self.lifecycle_.to_dict(), "rfm_": self.rfm_.to_dict()}
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Segmenter:
        if doc.get("type") != "Segmenter":
            raise SegmentError(f"not a Segmenter document: type={doc.get('type')!r}")
        params = doc.get("params") or {}
        seg = cls(
            lifecycle=LifecycleSegmenter.from_dict(params["lifecycle"]) if params.get("lifecycle") else None,
            rfm=RFMSegmenter.from_dict(params["rfm"]) if params.get("rfm") else None,
        )
        fitted = doc.get("fitted")
        if fitted:
            seg.lifecycle_ = LifecycleSegmenter.from_dict(fitted["lifecycle_"])
            seg.rfm_ = RFMSegmenter.from_dict(fitted["rfm_"])
        return seg
