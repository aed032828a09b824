"""RFM groups: recency, frequency and monetary value split high/low at 80/20 thresholds fitted on buyers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Table, column_names, fill_nan, floats
from features.segments.lifecycle import SegmentError

RFM_GROUPS: dict[tuple[bool, bool, bool], str] = {
    (True, True, True): "champions",
    (True, True, False): "loyal_low_spend",
    (True, False, True): "big_spenders_new",
    (True, False, False): "promising",
    (False, True, True): "at_risk_big",
    (False, True, False): "at_risk_loyal",
    (False, False, True): "hibernating_big",
    (False, False, False): "lost",
}
"""(R high, F high, M high) -> group name. Users without a purchase get :data:`NO_PURCHASE`."""

NO_PURCHASE = "no_purchase"
_GROUP_NAMES = np.array([RFM_GROUPS[(bool(k & 4), bool(k & 2), bool(k & 1))] for k in range(8)] + [NO_PURCHASE],
                        dtype=object)
"""Group name by code ``R * 4 + F * 2 + M`` (high = 1), then ``no_purchase`` at 8."""
RFM_INPUTS: tuple[str, ...] = ("days_since_last_buy", "purchase_days", "amount_total", "buy_count")


class RFMSegmenter:
    """Splits buyers (``purchase_days >= 1``) into 8 RFM groups; everyone else is ``no_purchase``.

    - R = ``days_since_last_buy``; high when ``<= recency_threshold_``, the ``share`` quantile of buyers taken
      as an observed value (the most recent 20% by default; at least one buyer is R-high);
    - F = ``purchase_days`` (distinct purchase days); high when ``> frequency_threshold_``, the ``1 - share``
      quantile (linear interpolation): strict, so the many buyers tied at 1 day are never all "high";
    - M = ``amount_total`` or, when no buyer has a positive amount (no amount column), ``buy_count``; high when
      ``> monetary_threshold_`` (same rule as F).

    Learned: ``recency_threshold_``, ``frequency_threshold_``, ``monetary_threshold_`` (NaN when fitted on no
    buyer: every buyer is then low on all three), ``monetary_column_`` and ``n_buyers_``.
    """

    def __init__(self, share: float = 0.2) -> None:
        self.share = share

    def get_params(self) -> dict[str, Any]:
        return {"share": self.share}

    def fit(self, features: pd.DataFrame) -> RFMSegmenter:
        """Learn the thresholds from a feature table (one row per user)."""
        if not 0 < self.share < 1:
            raise SegmentError(f"share must be in (0, 1), got {self.share}")
        _require(features)
        buyers = features[_buyer_mask(features)]
        amounts = pd.to_numeric(buyers["amount_total"]).astype("float64")
        self.monetary_column_ = "amount_total" if bool((amounts > 0).any()) else "buy_count"
        self.n_buyers_ = len(buyers)
        if len(buyers) == 0:
            self.recency_threshold_ = self.frequency_threshold_ = self.monetary_threshold_ = float("nan")
            return self
        recency = pd.to_numeric(buyers["days_since_last_buy"]).astype("float64").to_numpy()
        self.recency_threshold_ = float(np.quantile(recency, self.share, method="lower"))
        freq = pd.to_numeric(buyers["purchase_days"]).astype("float64").to_numpy()
        self.frequency_threshold_ = float(np.quantile(freq, 1 - self.share))
        money = pd.to_numeric(buyers[self.monetary_column_]).astype("float64").fillna(0.0).to_numpy()
        self.monetary_threshold_ = float(np.quantile(money, 1 - self.share))
        return self

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """RFM group per row (``no_purchase`` for non-buyers)."""
        return pd.Series(self.groups(features), index=features.index, name="rfm_group", dtype="str")

    def groups(self, features: Table) -> np.ndarray:
        """RFM group per row of a feature table (DataFrame or :data:`features.columns.Columns`): object array of
        :data:`RFM_GROUPS` names and :data:`NO_PURCHASE`, shape (n,)."""
        if not hasattr(self, "monetary_column_"):
            raise SegmentError("RFMSegmenter is not fitted; call fit(features) first")
        _require(features)
        buyer = fill_nan(floats(features, "purchase_days"), 0.0) >= 1
        r = floats(features, "days_since_last_buy") <= self.recency_threshold_
        f = floats(features, "purchase_days") > self.frequency_threshold_
        m = fill_nan(floats(features, self.monetary_column_), 0.0) > self.monetary_threshold_
        code = np.where(buyer, r.astype(int) * 4 + f.astype(int) * 2 + m.astype(int), 8)
        return _GROUP_NAMES[code]

    def transform(self, features: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``features`` with an ``rfm_group`` column."""
        out = features.copy()
        out["rfm_group"] = self.predict(features)
        return out

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": "RFMSegmenter", "params": self.get_params(), "fitted": None}
        if hasattr(self, "monetary_column_"):
            doc["fitted"] = {
                "recency_threshold_": _json_float(self.recency_threshold_),
                "frequency_threshold_": _json_float(self.frequency_threshold_),
                "monetary_threshold_": _json_float(self.monetary_threshold_),
                "monetary_column_": self.monetary_column_,
                "n_buyers_": self.n_buyers_,
            }
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> RFMSegmenter:
        if doc.get("type") != "RFMSegmenter":
            raise SegmentError(f"not an RFMSegmenter document: type={doc.get('type')!r}")
        seg = cls(**doc["params"])
        for key, value in (doc.get("fitted") or {}).items():
            setattr(seg, key, float("nan") if value is None and key.endswith("threshold_") else value)
        return seg


def _require(features: Table) -> None:
    missing = [c for c in RFM_INPUTS if c not in column_names(features)]
    if missing:
        raise SegmentError(f"feature table lacks {missing} needed for RFM groups")


def _buyer_mask(features: pd.DataFrame) -> pd.Series:
    return pd.to_numeric(features["purchase_days"]).fillna(0) >= 1


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
