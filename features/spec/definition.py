"""The versioned feature specification and the names of the columns it produces.

One :class:`FeatureSpec` describes every feature the service computes; :func:`features.spec.table.feature_table`
turns it into one Ibis expression (re-exported here as :func:`feature_table`) and
:func:`features.build.builder.build_features` runs it. Training, batch scoring and online scoring all read features
through these two functions.

Time conventions (all features):

- only events with ``ts < as_of`` are used; an event exactly at ``as_of`` is excluded;
- a window of ``w`` days is the half-open interval ``[as_of - w days, as_of)``: an event exactly ``w`` days before
  ``as_of`` is *inside* the ``w``-day window (so an event at ``as_of - 1 day`` counts in the 1-day window);
- recency, gaps and ages are fractional days (float64) computed from the whole microseconds between ``ts`` and
  ``as_of`` (the same on DuckDB and Spark); window membership is ``age <= w days``;
- a "day" for distinct-day counts (active days, purchase days) is a 24-hour bucket counted back from ``as_of``:
  bucket ``k`` holds events with ``as_of - (k+1) days <= ts < as_of - k days``, so the ``w``-day window holds
  buckets ``0..w-1``. With ``as_of`` at local midnight
  these are the shop's calendar days, whatever the time zone.

Feature reference (names from the default spec; ``w`` = a window in days):

- recency: ``days_since_last_{view,fav,cart,buy,visit,event}``, ``days_since_first_event`` (NaN when never);
- frequency: ``{behavior}_count_{w}d`` and ``event_count_{w}d``; ``active_days_{30,365}d`` (distinct day
  buckets); ``distinct_items_30d``/``distinct_categories_30d``; ``max_items_per_category_{3,7}d`` (most distinct
  items *viewed* in one category: comparison shopping); ``carts_unbought_90d`` (items whose last cart in the
  window had no buy of the same item at or after it); ``favcart_count_1d``; ``ad_count_{3,30}d`` and
  ``days_since_last_ad`` (channel ``ad``, any behavior); ``{active,passive}_channel_share_30d`` (events from
  search/ad resp. recommend over events with a channel; NaN when none has one);
- decay: ``decay_browse`` (view/visit), ``decay_interest`` (fav/cart), ``decay_purchase`` (buy): sums over events
  of ``max(0, 1 - age / span) * multiplier``; the per-event weight before the multiplier lies in [0, 1] and the
  multiplier is ``ad_multiplier`` for ad, ``active_multiplier`` for search, ``passive_multiplier`` for
  recommend, 1 otherwise;
- monetary and cadence: ``buy_count``, ``purchase_days`` (distinct day buckets with a buy, all history),
  ``purchase_days_365d``, ``amount_total``/``amount_365d`` (sum of known buy amounts, 0 for non-buyers, NaN when
  the source has no amount column), ``amount_mean`` (NaN without a known amount), ``purchase_gap_mean_days``
  = (first buy age - last buy age) / (purchase_days - 1) (NaN below 2 purchase days),
  ``repurchase_cycle_ratio`` = days_since_last_buy / purchase_gap_mean_days;
- rhythm (the user's own habits; :mod:`features.spec.rhythm`): ``days_since_first_{view,fav,cart,buy,visit}``
  (NaN when never); ``active_gap_{mean,median}_days`` (whole days between consecutive distinct active day
  buckets, all history: mean = (oldest bucket - newest bucket) / (active days - 1), exact median of the gaps,
  the mean of the two middle ones for an even count; NaN below 2 active days); ``active_recency_ratio`` =
  days_since_last_event / active_gap_mean_days; ``active_survival`` = exp(-active_recency_ratio), the chance of
  a gap at least this long when gaps are exponential with the user's mean; ``purchase_gap_median_days`` (exact
  median whole-day gap between consecutive purchase day buckets; NaN below 2 purchase days);
  ``purchase_survival`` = exp(-repurchase_cycle_ratio); ``{behavior}_trend_7d_vs_28d`` for the five behaviors
  and ``event``: (a - r) / (a + r + 1) in (-1, 1), with a = events in the last ``trend_days`` and r = events in
  the ``trend_base_days`` before them times trend_days / trend_base_days (0 without events or at a steady rate,
  > 0 when the user speeds up);
- category scope (only with ``target_categories``): ``target_{view,cart,buy}_count`` (all history),
  ``category_new`` (first non-buy event in a target category within ``category_new_days`` and no buy in one),
  ``category_regular`` (a buy in a target category);
- segments: ``aipl_layer`` = L if ``purchase_days_365d >= 2``, else P if it is 1, else I if a fav/cart within
  ``interest_days``, else A if any event within ``browse_days``, else ``none``; ``rule_score`` =
  ``AIPL_BASE[layer] + min(x / (x + rule_score_scale), 1 - 1e-9)`` with ``x = browse_weight * decay_browse +
  interest_weight * decay_interest + purchase_weight * decay_purchase``: every user of a higher layer scores
  above every user of a lower one; within a layer more recent, more active and ad-driven activity scores higher.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from features.settings import FeatureSettings

FEATURE_TABLE_KEY = "user_id"

AIPL_LAYERS: tuple[str, ...] = ("L", "P", "I", "A", "none")
"""AIPL layers, highest first. ``none``: no event inside any AIPL window."""

AIPL_BASE: dict[str, float] = {"none": 0.0, "A": 1.0, "I": 2.0, "P": 3.0, "L": 4.0}
"""Rule-score base per layer; the within-layer term lies in [0, 1), so layer bands never overlap."""

RECENCY_BEHAVIORS: tuple[str, ...] = ("view", "fav", "cart", "buy", "visit")
BROWSE_BEHAVIORS: tuple[str, ...] = ("view", "visit")
"""A layer (browse) behaviors; fav/cart are the I layer (interest), buy the P/L layers (purchase)."""
INTEREST_BEHAVIORS: tuple[str, ...] = ("fav", "cart")
POPULATIONS: tuple[str, ...] = ("any_event",)

BEHAVIOR_CODES: dict[str, int] = {name: code for code, name in enumerate(RECENCY_BEHAVIORS)}
"""Byte codes of the contract's behaviors in the prepared events (stage 2 groups and filters on them)."""
OTHER_BEHAVIOR = len(RECENCY_BEHAVIORS)
"""Code of a non-null behavior outside the contract (counted as an event, never as a named behavior)."""
CHANNEL_CODES: dict[str, int] = {"neutral": 0, "ad": 1, "active": 2, "passive": 3}
"""Channel classes in the prepared events: ``ad``, other ``ACTIVE_CHANNELS``, ``PASSIVE_CHANNELS``, any other
non-null channel (neutral); a null channel stays null."""


class FeatureSpecError(ValueError):
    """A :class:`FeatureSpec` field has an invalid value."""

    exit_code = 2  # CLI exit code: a bad setting


class FeatureInputError(ValueError):
    """The events given to the feature builder cannot be used (missing column, wrong type, no files...)."""

    exit_code = 1  # CLI exit code: bad input


@dataclass(frozen=True)
class FeatureSpec:
    """Every tunable of the feature definition. Bump ``version`` whenever a definition (not a value) changes.

    Windows and spans are in days. Multipliers are dimensionless and apply on top of per-event decay weights
    that lie in [0, 1]. The defaults follow docs/architecture.md (AIPL windows 15 / 90 / 365 days).
    """

    version: str = "2"
    windows: tuple[int, ...] = (1, 2, 3, 7, 15, 30, 90, 365)
    # AIPL windows
    browse_days: int = 15
    interest_days: int = 90
    purchase_days: int = 365
    # category scope
    target_categories: tuple[str, ...] = ()
    category_new_days: int = 30
    # population: every user with an event before as_of, optionally only those active in the last N days
    population: str = "any_event"
    lookback_days: int | None = None
    # windows of the frequency family
    active_day_windows: tuple[int, ...] = (30, 365)
    distinct_days: int = 30
    comparison_windows: tuple[int, ...] = (3, 7)
    cart_unbought_days: int = 90
    favcart_days: int = 1
    ad_windows: tuple[int, ...] = (3, 30)
    channel_share_days: int = 30
    # rhythm: trend = the last trend_days against the trend_base_days before them
    trend_days: int = 7
    trend_base_days: int = 28
    # decay: linear from 1 (age 0) to 0 (age = span) per layer
    decay_browse_days: float = 15.0
    decay_interest_days: float = 90.0
    decay_purchase_days: float = 365.0
    # channel multipliers (ad > active > neutral > passive); neutral = live, promo, other or no channel
    ad_multiplier: float = 2.0
    active_multiplier: float = 1.5
    passive_multiplier: float = 0.8
    # rule score: activity = sum(layer weight * layer decay sum); term = activity / (activity + scale)
    browse_weight: float = 1.0
    interest_weight: float = 2.0
    purchase_weight: float = 3.0
    rule_score_scale: float = 5.0

    @classmethod
    def from_settings(cls, settings: FeatureSettings) -> FeatureSpec:
        """The spec of the configured windows, target categories and lookback (every other knob at its default)."""
        return cls(windows=tuple(settings.windows), target_categories=tuple(settings.target_categories),
                   lookback_days=settings.lookback_days)

    def __post_init__(self) -> None:
        for name in ("windows", "active_day_windows", "comparison_windows", "ad_windows", "target_categories"):
            value = getattr(self, name)
            if isinstance(value, list):  # JSON round trips give lists
                object.__setattr__(self, name, tuple(value))
        _check_windows("windows", self.windows)
        _check_windows("active_day_windows", self.active_day_windows)
        _check_windows("comparison_windows", self.comparison_windows)
        _check_windows("ad_windows", self.ad_windows)
        for name in (
            "browse_days",
            "interest_days",
            "purchase_days",
            "category_new_days",
            "distinct_days",
            "cart_unbought_days",
            "favcart_days",
            "channel_share_days",
            "trend_days",
            "trend_base_days",
        ):
            _check_positive_int(name, getattr(self, name))
        if self.lookback_days is not None:
            _check_positive_int("lookback_days", self.lookback_days)
        if self.population not in POPULATIONS:
            raise FeatureSpecError(f"population must be one of {POPULATIONS}, got {self.population!r}")
        for name in ("decay_browse_days", "decay_interest_days", "decay_purchase_days", "rule_score_scale"):
            if not float(getattr(self, name)) > 0:
                raise FeatureSpecError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in (
            "ad_multiplier",
            "active_multiplier",
            "passive_multiplier",
            "browse_weight",
            "interest_weight",
            "purchase_weight",
        ):
            if not float(getattr(self, name)) >= 0:
                raise FeatureSpecError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not all(isinstance(c, str) and c for c in self.target_categories):
            raise FeatureSpecError("target_categories must be non-empty strings (category ids are strings)")
        if not isinstance(self.version, str) or not self.version:
            raise FeatureSpecError("version must be a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); :meth:`from_dict` inverts it."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict` output; unknown keys raise :class:`FeatureSpecError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatureSpecError(f"unknown FeatureSpec fields: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def fingerprint(self) -> str:
        """Short stable hash of every field: equal fingerprints mean identical feature definitions and values."""
        doc = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _check_windows(name: str, value: tuple[int, ...]) -> None:
    if not value or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value):
        raise FeatureSpecError(f"{name} must be a non-empty tuple of positive integers (days), got {value!r}")
    if tuple(sorted(set(value))) != tuple(value):
        raise FeatureSpecError(f"{name} must be strictly increasing, got {value!r}")


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise FeatureSpecError(f"{name} must be a positive integer number of days, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Column names: the single source of truth shared by the expression and its consumers.


def count_column(behavior: str, days: int) -> str:
    """Events of ``behavior`` in the last ``days`` days (``behavior='event'``: any behavior)."""
    return f"{behavior}_count_{days}d"


def recency_columns() -> list[str]:
    """Days since the last event of each behavior, the last event of any kind, and the first event."""
    return [f"days_since_last_{b}" for b in RECENCY_BEHAVIORS] + ["days_since_last_event", "days_since_first_event"]


def frequency_columns(spec: FeatureSpec) -> list[str]:
    """Window counts, distinct days/items/categories, comparison shopping, carts, ads and channel shares."""
    cols = [count_column(b, w) for b in (*RECENCY_BEHAVIORS, "event") for w in spec.windows]
    cols += [f"active_days_{w}d" for w in spec.active_day_windows]
    cols += [f"distinct_items_{spec.distinct_days}d", f"distinct_categories_{spec.distinct_days}d"]
    cols += [f"max_items_per_category_{w}d" for w in spec.comparison_windows]
    cols += [f"carts_unbought_{spec.cart_unbought_days}d", f"favcart_count_{spec.favcart_days}d"]
    cols += [count_column("ad", w) for w in spec.ad_windows] + ["days_since_last_ad"]
    cols += [f"active_channel_share_{spec.channel_share_days}d", f"passive_channel_share_{spec.channel_share_days}d"]
    return cols


DECAY_COLUMNS: tuple[str, ...] = ("decay_browse", "decay_interest", "decay_purchase")


def monetary_columns(spec: FeatureSpec) -> list[str]:
    """Buys, purchase days, amounts and repurchase cadence."""
    return [
        "buy_count",
        "purchase_days",
        f"purchase_days_{spec.purchase_days}d",
        "amount_total",
        "amount_mean",
        f"amount_{spec.purchase_days}d",
        "purchase_gap_mean_days",
        "repurchase_cycle_ratio",
    ]


def trend_column(behavior: str, spec: FeatureSpec) -> str:
    """Trend of ``behavior`` (``'event'``: any): the last ``trend_days`` against the ``trend_base_days`` before."""
    return f"{behavior}_trend_{spec.trend_days}d_vs_{spec.trend_base_days}d"


def rhythm_columns(spec: FeatureSpec) -> list[str]:
    """First seen per behavior, active-day and purchase-day gaps, recency over gap, survival and trends."""
    cols = [f"days_since_first_{b}" for b in RECENCY_BEHAVIORS]
    cols += ["active_gap_mean_days", "active_gap_median_days", "active_recency_ratio", "active_survival"]
    cols += ["purchase_gap_median_days", "purchase_survival"]
    cols += [trend_column(b, spec) for b in (*RECENCY_BEHAVIORS, "event")]
    return cols


def category_columns(spec: FeatureSpec) -> list[str]:
    """Target-category columns; empty when ``spec.target_categories`` is empty."""
    if not spec.target_categories:
        return []
    return ["target_view_count", "target_cart_count", "target_buy_count", "category_new", "category_regular"]


def feature_columns(spec: FeatureSpec) -> list[str]:
    """Numeric model inputs in their fixed order (recency, frequency, decay, monetary, rhythm, category, rule
    score)."""
    return list(_feature_columns(spec))


@lru_cache(maxsize=64)
def _feature_columns(spec: FeatureSpec) -> tuple[str, ...]:
    """:func:`feature_columns`, built once per spec (scoring one user reads it several times)."""
    return tuple(
        recency_columns()
        + frequency_columns(spec)
        + list(DECAY_COLUMNS)
        + monetary_columns(spec)
        + rhythm_columns(spec)
        + category_columns(spec)
        + ["rule_score"]
    )


def categorical_columns(spec: FeatureSpec) -> list[str]:
    """String segment columns of the feature table (``aipl_layer``: one of :data:`AIPL_LAYERS`)."""
    return ["aipl_layer"]


def output_columns(spec: FeatureSpec) -> list[str]:
    """Every column of the feature table, in order: key, numeric features, categorical columns."""
    return [FEATURE_TABLE_KEY, *feature_columns(spec), *categorical_columns(spec)]


def integer_columns(spec: FeatureSpec) -> list[str]:
    """Columns of dtype int64 (counts and 0/1 flags); every other numeric column is float64."""
    return list(_integer_columns(spec))


@lru_cache(maxsize=64)
def _integer_columns(spec: FeatureSpec) -> tuple[str, ...]:
    """:func:`integer_columns`, built once per spec."""
    cols = [count_column(b, w) for b in (*RECENCY_BEHAVIORS, "event") for w in spec.windows]
    cols += [f"active_days_{w}d" for w in spec.active_day_windows]
    cols += [f"distinct_items_{spec.distinct_days}d", f"distinct_categories_{spec.distinct_days}d"]
    cols += [f"max_items_per_category_{w}d" for w in spec.comparison_windows]
    cols += [f"carts_unbought_{spec.cart_unbought_days}d", f"favcart_count_{spec.favcart_days}d"]
    cols += [count_column("ad", w) for w in spec.ad_windows]
    cols += ["buy_count", "purchase_days", f"purchase_days_{spec.purchase_days}d"]
    cols += category_columns(spec)
    return tuple(cols)
