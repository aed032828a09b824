"""Lifecycle stages (new, growth, mature, silent, churned) with S and C thresholds fitted by the 80/20 rule.

Gaps are counted in whole day buckets counted back from ``as_of`` (see :mod:`features.spec.definition`): two events on
the same day have gap 0 and are not a gap sample; consecutive active days ``k`` and ``k - 3`` give a gap of 3 days.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import ibis
import numpy as np
import pandas as pd

from features.columns import Table, column_names, fill_nan, floats
from features.spec.definition import FeatureSpec
from features.spec.table import as_utc, event_weights

LIFECYCLE_STAGES: tuple[str, ...] = ("new", "growth", "mature", "silent", "churned")
"""Stage labels; precedence (highest first) is churned > silent > mature > growth > new."""

GAP_KINDS: tuple[str, ...] = ("order_return", "active_day", "purchase_day")
LIFECYCLE_INPUTS: tuple[str, ...] = ("days_since_last_event", "purchase_days")
_STAGE_NAMES = np.array(["churned", "silent", "mature", "growth", "new"], dtype=object)
"""The stages in rule order (code 0 = the first rule of :meth:`LifecycleSegmenter.stages`)."""


class SegmentError(ValueError):
    """A segmenter got input it cannot use, or was used before ``fit``."""

    exit_code = 1  # CLI exit code: bad input


def gap_samples(events: ibis.Table, as_of: datetime) -> ibis.Table:
    """Per-user gaps (days, int64) between active days before ``as_of``; columns ``user_id, kind, gap_days``.

    Kinds: ``order_return`` = from a purchase day to the user's next active day (any event; purchase days
    with no later activity before ``as_of`` are censored and give no sample); ``active_day`` = between
    consecutive active days; ``purchase_day`` = between consecutive purchase days.
    """
    ev = event_weights(events, as_of, FeatureSpec())
    days = ev.group_by(["user_id", "day"]).aggregate(n_buy=ev.behavior.count(where=ev.behavior == "buy"))
    chrono = ibis.window(group_by="user_id", order_by=ibis.desc("day"))  # older (larger) day index first
    days = days.mutate(next_day=days.day.lead().over(chrono))
    active = days.filter(days.next_day.notnull())
    active = active.select(active.user_id, kind=ibis.literal("active_day"), gap_days=active.day - active.next_day)
    ret = days.filter(days.next_day.notnull() & (days.n_buy > 0))
    ret = ret.select(ret.user_id, kind=ibis.literal("order_return"), gap_days=ret.day - ret.next_day)
    buys = days.filter(days.n_buy > 0)
    buys = buys.mutate(next_day=buys.day.lead().over(chrono))
    buys = buys.filter(buys.next_day.notnull())
    buys = buys.select(buys.user_id, kind=ibis.literal("purchase_day"), gap_days=buys.day - buys.next_day)
    out = ibis.union(ret, active, buys)
    return out.mutate(gap_days=out.gap_days.cast("int64"))


def gap_histogram(events: ibis.Table, as_of: datetime) -> ibis.Table:
    """Counts of :func:`gap_samples` per ``(kind, gap_days)``: a small table whatever the data size."""
    gaps = gap_samples(events, as_of)
    return gaps.group_by(["kind", "gap_days"]).aggregate(n=gaps.user_id.count())


def coverage_quantile(gaps: Mapping[int, int], coverage: float) -> float | None:
    """The smallest gap ``g`` such that at least ``coverage`` of the samples are ``<= g``; None without samples."""
    items = sorted((int(g), int(n)) for g, n in gaps.items() if n > 0)
    total = sum(n for _, n in items)
    if total == 0:
        return None
    running = 0
    for gap, n in items:
        running += n
        if running >= coverage * total - 1e-9:
            return float(gap)
    return float(items[-1][0])  # pragma: no cover - the loop always returns


class LifecycleSegmenter:
    """Assigns each user a lifecycle stage from ``days_since_last_event`` and ``purchase_days``.

    - ``new``: activity, no purchase; ``growth``: one purchase day; ``mature``: 2+ purchase days;
    - ``silent``: bought before and ``days_since_last_event >= silent_days_`` (S);
    - ``churned``: ``days_since_last_event >= churn_days_`` (C), whether a buyer or not (a user with no recorded
      event at all, NaN recency, is churned too).

    ``fit`` learns S = the ``coverage`` quantile (default 80%) of order-to-next-visit gaps and C = that quantile
    of gaps between consecutive active days. When the events hold no non-buy behavior, both use the gaps between
    purchase days; without any sample the ``default_*`` values are used. ``silent_days`` / ``churn_days`` given
    to the constructor override the fit.

    Ordering rule: a buyer goes silent before churning, so C must exceed S. When the data put S at or above the
    visit gap (buyers take longer to come back after an order than visitors between visits; always the case on
    purchase-only data, where both come from the same gaps), C is set by the 80/20 rule applied once more, to the
    buyers who had not returned within S: C = the ``coverage`` quantile of the gaps (of the kind that set S)
    longer than S, i.e. the gap within which 80% of the late returns came back (``churn_source_ =
    "late_returns"``); with no gap longer than S, C = 2 S (``"twice_silent"``). C stays one threshold for every
    user, so a non-buyer is churned only after that longer gap too. Given values are never moved: a given
    ``churn_days`` not above S (given or fitted) raises :class:`SegmentError`.

    Learned: ``silent_days_``, ``churn_days_`` (days), ``silent_source_`` and ``churn_source_`` (``given``,
    ``fitted``, ``purchase_days``, ``default``, and for C also ``late_returns`` or ``twice_silent``),
    ``visit_gap_days_`` (C before the ordering rule), ``n_samples_`` per gap kind and ``rule_`` (one sentence
    saying which rule set S and C, for summaries).
    """

    def __init__(
        self,
        silent_days: float | None = None,
        churn_days: float | None = None,
        coverage: float = 0.8,
        default_silent_days: float = 30.0,
        default_churn_days: float = 90.0,
    ) -> None:
        self.silent_days = silent_days
        self.churn_days = churn_days
        self.coverage = coverage
        self.default_silent_days = default_silent_days
        self.default_churn_days = default_churn_days

    def get_params(self) -> dict[str, Any]:
        return {
            "silent_days": self.silent_days,
            "churn_days": self.churn_days,
            "coverage": self.coverage,
            "default_silent_days": self.default_silent_days,
            "default_churn_days": self.default_churn_days,
        }

    def fit(self, events: Any, as_of: datetime, *, con: ibis.BaseBackend | None = None) -> LifecycleSegmenter:
        """Learn S and C from ``events`` before ``as_of`` (Ibis table, pandas frame or Parquet path)."""
        if not 0 < self.coverage <= 1:
            raise SegmentError(f"coverage must be in (0, 1], got {self.coverage}")
        hist: dict[str, dict[int, int]] = {k: {} for k in GAP_KINDS}
        has_nonbuy = True
        if self.silent_days is None or self.churn_days is None:
            from features.build.builder import _backend_of, events_table

            table = events_table(events, con)
            expr = gap_histogram(table, as_of)
            runner = con or _backend_of(expr)
            for row in runner.to_pandas(expr).itertuples(index=False):
                hist[row.kind][int(row.gap_days)] = int(row.n)
            before = event_weights(table, as_of, FeatureSpec())
            has_nonbuy = int(runner.execute(before.filter(before.behavior != "buy").count())) > 0
        self.n_samples_ = {k: int(sum(v.values())) for k, v in hist.items()}
        silent_kind = "order_return" if has_nonbuy else "purchase_day"
        self.silent_days_, self.silent_source_ = self._pick(
            self.silent_days, hist[silent_kind], hist, self.default_silent_days
        )
        self.churn_days_, self.churn_source_ = self._pick(
            self.churn_days, hist["active_day" if has_nonbuy else "purchase_day"], hist, self.default_churn_days
        )
        self.visit_gap_days_ = self.churn_days_
        silent_hist = hist["purchase_day"] if self.silent_source_ == "purchase_days" else hist[silent_kind]
        parts = [f"S = {self.silent_days_:g} d: {self._describe(self.silent_source_, silent_kind)}"]
        if self.churn_days_ > self.silent_days_:
            parts.append(f"C = {self.churn_days_:g} d: {self._describe(self.churn_source_, 'active_day')}")
        elif self.churn_source_ == "given":
            raise SegmentError(
                f"churn_days C = {self.churn_days_:g} must be above silent_days S = {self.silent_days_:g} "
                f"({self.silent_source_}), or no buyer could be silent: give a larger churn_days"
                + (" or a smaller silent_days" if self.silent_source_ == "given" else "")
            )
        else:
            visit = f"the visit gap ({self.visit_gap_days_:g} d, {self._describe(self.churn_source_, 'active_day')})"
            late = {g: n for g, n in silent_hist.items() if g > self.silent_days_ and n > 0}
            value = coverage_quantile(late, self.coverage)
            if value is not None:
                self.churn_days_, self.churn_source_ = value, "late_returns"
                how = f"{self.coverage:.0%} of the {sum(late.values()):,} returns slower than S came back within it"
            else:
                self.churn_days_, self.churn_source_ = max(2.0 * self.silent_days_, self.silent_days_ + 1.0), \
                    "twice_silent"
                how = "no return was slower than S, so C = 2 S"
            parts.append(f"C = {self.churn_days_:g} d: {visit} is not above S, so {how}")
        self.rule_ = "; ".join(parts)
        self.as_of_ = as_utc(as_of).isoformat()
        return self

    def _describe(self, source: str, kind: str) -> str:
        """How a threshold was set, in words (``kind``: the gap kind a fitted value came from)."""
        what = {"order_return": "order-to-next-visit gaps", "active_day": "gaps between active days"}
        if source == "given":
            return "given"
        if source == "default":
            return "default (no gap samples)"
        if source == "purchase_days":
            return f"{self.coverage:.0%} of {self.n_samples_['purchase_day']:,} gaps between purchase days"
        return f"{self.coverage:.0%} of {self.n_samples_[kind]:,} {what[kind]}"

    def _pick(
        self, given: float | None, primary: dict[int, int], hist: dict[str, dict[int, int]], default: float
    ) -> tuple[float, str]:
        if given is not None:
            return float(given), "given"
        value = coverage_quantile(primary, self.coverage)
        if value is not None:
            return value, "fitted" if primary is not hist["purchase_day"] else "purchase_days"
        value = coverage_quantile(hist["purchase_day"], self.coverage)
        if value is not None:
            return value, "purchase_days"
        return float(default), "default"

    def _check_fitted(self) -> None:
        if not hasattr(self, "churn_days_"):
            raise SegmentError("LifecycleSegmenter is not fitted; call fit(events, as_of) first")

    def predict(self, features: pd.DataFrame) -> pd.Series:
        """Stage per row of a feature table (needs ``days_since_last_event`` and ``purchase_days``)."""
        return pd.Series(self.stages(features), index=features.index, name="lifecycle", dtype="str")

    def stages(self, features: Table) -> np.ndarray:
        """Stage per row of a feature table (DataFrame or :data:`features.columns.Columns`): object array of
        :data:`LIFECYCLE_STAGES` labels, shape (n,)."""
        self._check_fitted()
        missing = [c for c in LIFECYCLE_INPUTS if c not in column_names(features)]
        if missing:
            raise SegmentError(f"feature table lacks {missing} needed for lifecycle stages")
        recency = fill_nan(floats(features, "days_since_last_event"), np.inf)
        buy_days = fill_nan(floats(features, "purchase_days"), 0.0)
        # the first rule that holds names the stage (codes index _STAGE_NAMES; cheaper than np.select on text)
        code = np.where(recency >= self.churn_days_, 0, np.where(
            (buy_days >= 1) & (recency >= self.silent_days_), 1, np.where(
                buy_days >= 2, 2, np.where(buy_days == 1, 3, 4))))
        return _STAGE_NAMES[code]

    def transform(self, features: pd.DataFrame) -> pd.DataFrame:
        """A copy of ``features`` with a ``lifecycle`` column."""
        out = features.copy()
        out["lifecycle"] = self.predict(features)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters and learned state."""
        doc: dict[str, Any] = {"type": "LifecycleSegmenter", "params": self.get_params(), "fitted": None}
        if hasattr(self, "churn_days_"):
            doc["fitted"] = {
                "silent_days_": self.silent_days_,
                "churn_days_": self.churn_days_,
                "silent_source_": self.silent_source_,
                "churn_source_": self.churn_source_,
                "visit_gap_days_": getattr(self, "visit_gap_days_", self.churn_days_),
                "rule_": getattr(self, "rule_", ""),
                "n_samples_": dict(self.n_samples_),
                "as_of_": self.as_of_,
            }
        return doc

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LifecycleSegmenter:
        if doc.get("type") != "LifecycleSegmenter":
            raise SegmentError(f"not a LifecycleSegmenter document: type={doc.get('type')!r}")
        seg = cls(**doc["params"])
        for key, value in (doc.get("fitted") or {}).items():
            setattr(seg, key, value)
        return seg

