"""The feature table as one portable Ibis expression (DuckDB now, PySpark later: no raw SQL, no UDFs).

:func:`feature_table` is the one definition of every feature; see :mod:`features.spec.definition` for the time
conventions (``ts < as_of``, half-open windows ``[as_of - w days, as_of)``, day buckets counted back from ``as_of``).

It has two stages. :func:`prepare_events` keeps the events before ``as_of`` and adds per-event ages, day buckets
and decay weights (the only place ``as_of`` appears); :func:`features.spec.aggregate.aggregate_features` turns
prepared events into one row per user using ages only. Because stage 2 does not depend on ``as_of``, an engine
may compile it once per spec and reuse it (see :mod:`features.build.builder`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import ibis
import ibis.expr.datatypes as dt

from features.events.schema import ACTIVE_CHANNELS, PASSIVE_CHANNELS, REQUIRED_COLUMNS
from features.spec.aggregate import aggregate_features
from features.spec.definition import (
    BEHAVIOR_CODES,
    BROWSE_BEHAVIORS,
    CHANNEL_CODES,
    INTEREST_BEHAVIORS,
    OTHER_BEHAVIOR,
    FeatureInputError,
    FeatureSpec,
)

__all__ = [
    "PREPARED_SCHEMA",
    "aggregate_features",
    "as_utc",
    "canonical_events",
    "event_weights",
    "feature_table",
    "prepare_events",
]

SECONDS_PER_DAY = 86_400.0


def as_utc(as_of: datetime) -> datetime:
    """``as_of`` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if not isinstance(as_of, datetime):
        raise FeatureInputError(f"as_of must be a datetime, got {type(as_of).__name__}")
    if as_of.tzinfo is None:
        return as_of.replace(tzinfo=UTC)
    return as_of.astimezone(UTC)


def canonical_events(events: ibis.Table) -> ibis.Table:
    """``events`` with the canonical columns and types; missing optional columns become typed nulls.

    ``user_id``/``item_id``/``category_id``/``channel`` -> string, ``amount`` -> float64, ``ts`` -> timestamp
    (integer ``ts`` is read as epoch seconds, naive timestamps as UTC). Raises :class:`FeatureInputError` when a
    required column is missing or ``ts`` is neither a timestamp nor an integer.
    """
    return events.select(**_canonical_columns(events))


def _canonical_columns(events: ibis.Table) -> dict[str, ibis.Value]:
    schema = events.schema()
    missing = [c for c in REQUIRED_COLUMNS if c not in schema]
    if missing:
        raise FeatureInputError(f"events lack required column(s) {missing}; columns present: {list(schema)}")
    ts_type = schema["ts"]
    if ts_type.is_timestamp():
        ts = events.ts
    elif ts_type.is_integer():
        ts = events.ts.as_timestamp("s")
    else:
        raise FeatureInputError(f"column 'ts' must be a timestamp or epoch seconds (integer), got {ts_type}")
    cols: dict[str, ibis.Value] = {
        "user_id": _as_string(events, "user_id"),
        "ts": ts,
        "behavior": _as_string(events, "behavior"),
    }
    for name in ("item_id", "category_id", "channel"):
        cols[name] = _as_string(events, name) if name in schema else ibis.null("string")
    if "amount" not in schema:
        cols["amount"] = ibis.null("float64")
    else:
        cols["amount"] = events.amount if schema["amount"].is_float64() else events.amount.cast("float64")
    return cols


def _as_string(events: ibis.Table, name: str) -> ibis.Value:
    col = events[name]
    return col if col.type().is_string() else col.cast("string")


def _ts_literal(value: datetime, ts_type: dt.DataType) -> ibis.Value:
    """A timestamp literal comparable with a column of ``ts_type`` (aware UTC or naive UTC)."""
    if ts_type.timezone is None:
        return ibis.literal(value.replace(tzinfo=None), type=dt.Timestamp(scale=ts_type.scale))
    return ibis.literal(value, type=dt.Timestamp(timezone="UTC", scale=ts_type.scale))


def event_weights(events: ibis.Table, as_of: datetime, spec: FeatureSpec) -> ibis.Table:
    """Per-event table of the events before ``as_of`` with their age and decay weight.

    Columns: the canonical ones plus ``age_days`` (float64 >= 0), ``day`` (int64 bucket, 0 = the 24 h before
    ``as_of``), ``layer`` ('browse' for view/visit, 'interest' for fav/cart, 'purchase' for buy, else null),
    ``decay`` (linear weight in [0, 1]: 1 at age 0, 0 at the layer's span and beyond), ``multiplier`` (channel
    weight: ad > active > neutral > passive) and ``weight = decay * multiplier``.
    """
    return _weighted(events, as_of, spec, None)


def _weighted(events: ibis.Table, as_of: datetime, spec: FeatureSpec, keep: tuple[str, ...] | None) -> ibis.Table:
    """One filter and one projection (cheap to compile): the columns of :func:`event_weights`, or ``keep``."""
    as_of = as_utc(as_of)
    ts = _canonical_columns(events)["ts"]
    events = events.filter(ts < _ts_literal(as_of, ts.type()))
    cols = _canonical_columns(events)
    behavior, channel = cols["behavior"], cols["channel"]
    # whole microseconds between ts and as_of: exact on every backend (epoch_seconds() is whole seconds on Spark)
    age_us = _ts_literal(as_of, cols["ts"].type()).delta(cols["ts"], unit="microsecond")
    age_s = ibis.greatest(age_us.cast("float64") / 1e6, 0.0)
    age_days = age_s / SECONDS_PER_DAY
    is_browse = behavior.isin(BROWSE_BEHAVIORS)
    is_interest = behavior.isin(INTEREST_BEHAVIORS)
    is_buy = behavior == "buy"
    span = ibis.cases(
        (is_browse, spec.decay_browse_days),
        (is_interest, spec.decay_interest_days),
        (is_buy, spec.decay_purchase_days),
        else_=ibis.null("float64"),
    ).cast("float64")
    if "channel" in events.columns:
        multiplier = ibis.cases(
            (channel == "ad", spec.ad_multiplier),
            (channel.isin(ACTIVE_CHANNELS), spec.active_multiplier),
            (channel.isin(PASSIVE_CHANNELS), spec.passive_multiplier),
            else_=1.0,
        ).cast("float64")
    else:  # comparing a typed null literal trips Ibis; without channels every event is neutral
        multiplier = ibis.literal(1.0, type="float64")
    decay = ibis.coalesce(ibis.greatest(1.0 - age_days / span, 0.0), 0.0)
    if keep:
        cols.update(behavior_code=_behavior_code(behavior), channel_code=_channel_code(channel, events))
    cols.update(
        age_days=age_days,
        day=ibis.greatest(age_days.ceil() - 1, 0).cast("int64"),
        layer=ibis.cases(
            (is_browse, "browse"), (is_interest, "interest"), (is_buy, "purchase"), else_=ibis.null("string")
        ),
        decay=decay,
        multiplier=multiplier,
        weight=decay * multiplier,
    )
    return events.select(**({k: cols[k] for k in keep} if keep else cols))


def _behavior_code(behavior: ibis.StringValue) -> ibis.IntegerValue:
    """:data:`features.spec.definition.BEHAVIOR_CODES` of ``behavior`` (int8; ``OTHER_BEHAVIOR`` for a value outside the
    contract, null for null): stage 2 groups and filters on a byte instead of a string."""
    code = ibis.cases(*[(behavior == name, c) for name, c in BEHAVIOR_CODES.items()], else_=OTHER_BEHAVIOR)
    return ibis.ifelse(behavior.isnull(), ibis.null("int8"), code.cast("int8"))


def _channel_code(channel: ibis.StringValue, events: ibis.Table) -> ibis.IntegerValue:
    """:data:`features.spec.definition.CHANNEL_CODES` class of ``channel`` (int8; null for a null or absent channel)."""
    if "channel" not in events.columns:  # comparing a typed null literal trips Ibis
        return ibis.null("int8")
    code = ibis.cases(
        (channel == "ad", CHANNEL_CODES["ad"]),
        (channel.isin(ACTIVE_CHANNELS), CHANNEL_CODES["active"]),
        (channel.isin(PASSIVE_CHANNELS), CHANNEL_CODES["passive"]),
        else_=CHANNEL_CODES["neutral"],
    )
    return ibis.ifelse(channel.isnull(), ibis.null("int8"), code.cast("int8"))


PREPARED_SCHEMA = ibis.schema(
    {
        "user_id": "string",
        "behavior_code": "int8",
        "item_id": "string",
        "category_id": "string",
        "channel_code": "int8",
        "amount": "float64",
        "age_days": "float64",
        "day": "int64",
        "weight": "float64",
    }
)
"""Columns of the prepared events that :func:`aggregate_features` reads (it never sees ``ts`` or ``as_of``).
Behavior and channel arrive as byte codes (:data:`features.spec.definition.BEHAVIOR_CODES`, ``CHANNEL_CODES``): on
12M events the partial aggregation groups and filters about 20% faster on a byte than on a string."""


def feature_table(events: ibis.Table, as_of: datetime, spec: FeatureSpec | None = None) -> ibis.Table:
    """One row per user with an event before ``as_of``: every feature of ``spec``, sorted by ``user_id``.

    ``events`` is a canonical event table (see :mod:`features.events.schema`); optional columns may be absent.
    Columns follow :func:`features.spec.definition.output_columns`. Units: recency/gaps in fractional days (float64,
    null when the behavior never happened), counts int64, amounts in the shop's currency. The expression is
    pure: the same inputs give the same table on any Ibis backend. It is
    ``aggregate_features(prepare_events(events, as_of, spec), spec, ...)``.
    """
    spec = spec or FeatureSpec()
    schema = events.schema()
    return aggregate_features(
        prepare_events(events, as_of, spec), spec, has_item="item_id" in schema, has_amount="amount" in schema
    )


def prepare_events(events: ibis.Table, as_of: datetime, spec: FeatureSpec) -> ibis.Table:
    """Stage 1: the events before ``as_of`` with the columns of :data:`PREPARED_SCHEMA` (ages, days, weights)."""
    return _weighted(events, as_of, spec, tuple(PREPARED_SCHEMA.names))
