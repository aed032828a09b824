"""The feature table as one portable Ibis expression (DuckDB now, PySpark later: no raw SQL, no UDFs).

:func:`feature_table` is the one definition of every feature; see :mod:`features.spec` for the time conventions
(``ts < as_of``, half-open windows ``[as_of - w days, as_of)``, day buckets counted back from ``as_of``).

It has two stages. :func:`prepare_events` keeps the events before ``as_of`` and adds per-event ages, day buckets
and decay weights (the only place ``as_of`` appears); :func:`aggregate_features` turns prepared events into one
row per user using ages only. Because stage 2 does not depend on ``as_of``, an engine may compile it once per
spec and reuse it (see :mod:`features.build`).
"""

from __future__ import annotations

from datetime import datetime, timezone

import ibis
import ibis.expr.datatypes as dt

from features.schema import ACTIVE_CHANNELS, PASSIVE_CHANNELS, REQUIRED_COLUMNS
from features.spec import (
    AIPL_BASE,
    RECENCY_BEHAVIORS,
    FeatureInputError,
    FeatureSpec,
    count_column,
    output_columns,
)

SECONDS_PER_DAY = 86_400.0
BROWSE_BEHAVIORS: tuple[str, ...] = ("view", "visit")
INTEREST_BEHAVIORS: tuple[str, ...] = ("fav", "cart")
_MAX_TERM = 1.0 - 1e-9  # keeps the within-layer term strictly below 1 even when float division rounds up


def as_utc(as_of: datetime) -> datetime:
    """``as_of`` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if not isinstance(as_of, datetime):
        raise FeatureInputError(f"as_of must be a datetime, got {type(as_of).__name__}")
    if as_of.tzinfo is None:
        return as_of.replace(tzinfo=timezone.utc)
    return as_of.astimezone(timezone.utc)


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
    age_s = ibis.greatest(ibis.literal(as_of.timestamp()) - cols["ts"].epoch_seconds().cast("float64"), 0.0)
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
    multiplier = ibis.cases(
        (channel == "ad", spec.ad_multiplier),
        (channel.isin(ACTIVE_CHANNELS), spec.active_multiplier),
        (channel.isin(PASSIVE_CHANNELS), spec.passive_multiplier),
        else_=1.0,
    ).cast("float64")
    decay = ibis.coalesce(ibis.greatest(1.0 - age_days / span, 0.0), 0.0)
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


PREPARED_SCHEMA = ibis.schema(
    {
        "user_id": "string",
        "behavior": "string",
        "item_id": "string",
        "category_id": "string",
        "channel": "string",
        "amount": "float64",
        "age_days": "float64",
        "day": "int64",
        "layer": "string",
        "weight": "float64",
    }
)
"""Columns of the prepared events that :func:`aggregate_features` reads (it never sees ``ts`` or ``as_of``)."""


def feature_table(events: ibis.Table, as_of: datetime, spec: FeatureSpec | None = None) -> ibis.Table:
    """One row per user with an event before ``as_of``: every feature of ``spec``, sorted by ``user_id``.

    ``events`` is a canonical event table (see :mod:`features.schema`); optional columns may be absent.
    Columns follow :func:`features.spec.output_columns`. Units: recency/gaps in fractional days (float64,
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


def aggregate_features(
    ev: ibis.Table, spec: FeatureSpec, *, has_item: bool = True, has_amount: bool = True
) -> ibis.Table:
    """Stage 2: per-user features from prepared events (:func:`prepare_events`); independent of ``as_of``.

    Window membership is ``age_days <= w`` (the event lies in ``[as_of - w days, as_of)``). ``has_item`` /
    ``has_amount`` tell whether the source had those columns (when not, item features are 0 and amount
    features null).
    """
    main = ev.group_by("user_id").aggregate(**_main_aggregates(ev, spec, has_amount))
    if lookback := spec.lookback_days:
        main = main.filter(main.days_since_last_event <= lookback)
    if has_item:
        for part in (_comparison_shopping(ev, spec), _unbought_carts(ev, spec)):
            part = part.rename(_uid="user_id")
            main = main.left_join(part, main.user_id == part._uid).drop("_uid")
    main = _derived(main, spec, has_item)
    return main.select(*output_columns(spec)).order_by("user_id")


def _main_aggregates(ev: ibis.Table, spec: FeatureSpec, has_amount: bool) -> dict[str, ibis.Value]:
    """The single grouped aggregation: conditional aggregates over the user's events."""
    b = ev.behavior
    is_buy = b == "buy"
    within = {w: ev.age_days <= w for w in _all_windows(spec)}
    agg: dict[str, ibis.Value] = {}
    # recency
    for beh in RECENCY_BEHAVIORS:
        agg[f"days_since_last_{beh}"] = ev.age_days.min(where=b == beh)
    agg["days_since_last_event"] = ev.age_days.min()
    agg["days_since_first_event"] = ev.age_days.max()
    # window counts
    for w in spec.windows:
        for beh in RECENCY_BEHAVIORS:
            agg[count_column(beh, w)] = b.count(where=(b == beh) & within[w])
        agg[count_column("event", w)] = b.count(where=within[w])
    for w in spec.active_day_windows:
        agg[f"active_days_{w}d"] = ev.day.nunique(where=within[w])
    dd = spec.distinct_days
    agg[f"distinct_items_{dd}d"] = ev.item_id.nunique(where=within[dd])
    agg[f"distinct_categories_{dd}d"] = ev.category_id.nunique(where=within[dd])
    agg[f"favcart_count_{spec.favcart_days}d"] = b.count(where=b.isin(INTEREST_BEHAVIORS) & within[spec.favcart_days])
    # channels
    is_ad = ev.channel == "ad"
    for w in spec.ad_windows:
        agg[count_column("ad", w)] = b.count(where=is_ad & within[w])
    agg["days_since_last_ad"] = ev.age_days.min(where=is_ad)
    cs = within[spec.channel_share_days]
    agg["_chan_n"] = ev.channel.count(where=cs)
    agg["_chan_active"] = b.count(where=ev.channel.isin(ACTIVE_CHANNELS) & cs)
    agg["_chan_passive"] = b.count(where=ev.channel.isin(PASSIVE_CHANNELS) & cs)
    # decay sums per layer (weights are 0 beyond the span, so the sum runs over the whole history)
    for layer in ("browse", "interest", "purchase"):
        agg[f"_decay_{layer}"] = ev.weight.sum(where=ev.layer == layer)
    # monetary and cadence
    pw = spec.purchase_days
    agg["buy_count"] = b.count(where=is_buy)
    agg["purchase_days"] = ev.day.nunique(where=is_buy)
    agg[f"purchase_days_{pw}d"] = ev.day.nunique(where=is_buy & within[pw])
    agg["_first_buy_age"] = ev.age_days.max(where=is_buy)
    if has_amount:
        agg["_amount_sum"] = ev.amount.sum(where=is_buy)
        agg["amount_mean"] = ev.amount.mean(where=is_buy)
        agg[f"_amount_sum_{pw}d"] = ev.amount.sum(where=is_buy & within[pw])
    # AIPL inputs
    agg["_interest_n"] = b.count(where=b.isin(INTEREST_BEHAVIORS) & within[spec.interest_days])
    agg["_browse_n"] = b.count(where=within[spec.browse_days])
    # category scope
    if spec.target_categories:
        target = ev.category_id.isin(spec.target_categories)
        agg["target_view_count"] = b.count(where=target & (b == "view"))
        agg["target_cart_count"] = b.count(where=target & (b == "cart"))
        agg["target_buy_count"] = b.count(where=target & is_buy)
        agg["_target_first_browse_age"] = ev.age_days.max(where=target & (b != "buy"))
    return agg


def _all_windows(spec: FeatureSpec) -> set[int]:
    return {
        *spec.windows,
        *spec.active_day_windows,
        *spec.ad_windows,
        spec.distinct_days,
        spec.favcart_days,
        spec.channel_share_days,
        spec.purchase_days,
        spec.interest_days,
        spec.browse_days,
    }


def _comparison_shopping(ev: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """Per user: the most distinct items viewed within one category, per comparison window."""
    views = ev.filter(
        (ev.behavior == "view")
        & ev.item_id.notnull()
        & ev.category_id.notnull()
        & (ev.age_days <= max(spec.comparison_windows))
    )
    per_cat = views.group_by(["user_id", "category_id"]).aggregate(
        **{f"_items_{w}": views.item_id.nunique(where=views.age_days <= w) for w in spec.comparison_windows}
    )
    return per_cat.group_by("user_id").aggregate(
        **{f"_cmp_{w}": per_cat[f"_items_{w}"].max() for w in spec.comparison_windows}
    )


def _unbought_carts(ev: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """Per user: items carted in the window whose last cart was not followed by a buy of the same item.

    A buy at the same instant as the cart counts as following it.
    """
    rows = ev.filter(ev.item_id.notnull() & ev.behavior.isin(("cart", "buy")))
    per_item = rows.group_by(["user_id", "item_id"]).aggregate(
        _cart_age=rows.age_days.min(where=(rows.behavior == "cart") & (rows.age_days <= spec.cart_unbought_days)),
        _buy_age=rows.age_days.min(where=rows.behavior == "buy"),
    )
    open_carts = per_item.filter(
        per_item._cart_age.notnull() & (per_item._buy_age.isnull() | (per_item._buy_age > per_item._cart_age))
    )
    return open_carts.group_by("user_id").aggregate(_carts_open=open_carts.item_id.count())


def _derived(t: ibis.Table, spec: FeatureSpec, has_item: bool) -> ibis.Table:
    """Columns computed from the aggregates: shares, decay, cadence, category flags, AIPL layer, rule score."""
    f64 = "float64"
    null_f = ibis.null(f64)
    cols: dict[str, ibis.Value] = {}
    for w in spec.comparison_windows:
        name = f"max_items_per_category_{w}d"
        cols[name] = ibis.coalesce(t[f"_cmp_{w}"], 0).cast("int64") if has_item else ibis.literal(0, type="int64")
    name = f"carts_unbought_{spec.cart_unbought_days}d"
    cols[name] = ibis.coalesce(t._carts_open, 0).cast("int64") if has_item else ibis.literal(0, type="int64")
    n = t._chan_n.cast(f64)
    cols[f"active_channel_share_{spec.channel_share_days}d"] = ibis.ifelse(t._chan_n > 0, t._chan_active / n, null_f)
    cols[f"passive_channel_share_{spec.channel_share_days}d"] = ibis.ifelse(t._chan_n > 0, t._chan_passive / n, null_f)
    decay = {layer: ibis.coalesce(t[f"_decay_{layer}"], 0.0) for layer in ("browse", "interest", "purchase")}
    cols.update({f"decay_{layer}": value for layer, value in decay.items()})
    # monetary and cadence
    pw = spec.purchase_days
    if "_amount_sum" in t.columns:
        cols["amount_total"] = ibis.coalesce(t._amount_sum, 0.0)
        cols[f"amount_{pw}d"] = ibis.coalesce(t[f"_amount_sum_{pw}d"], 0.0)
    else:
        cols["amount_total"] = null_f
        cols["amount_mean"] = null_f
        cols[f"amount_{pw}d"] = null_f
    gap = ibis.ifelse(
        t.purchase_days >= 2, (t._first_buy_age - t.days_since_last_buy) / (t.purchase_days - 1).cast(f64), null_f
    )
    cols["purchase_gap_mean_days"] = gap
    cols["repurchase_cycle_ratio"] = ibis.ifelse(gap > 0, t.days_since_last_buy / gap, null_f)
    # category scope
    if spec.target_categories:
        recent_first = t._target_first_browse_age <= spec.category_new_days
        cols["category_new"] = ibis.ifelse(recent_first & (t.target_buy_count == 0), 1, 0).cast("int64")
        cols["category_regular"] = ibis.ifelse(t.target_buy_count > 0, 1, 0).cast("int64")
    # AIPL layer and rule score
    buy_days = t[f"purchase_days_{pw}d"]
    rules = [(buy_days >= 2, "L"), (buy_days == 1, "P"), (t._interest_n > 0, "I"), (t._browse_n > 0, "A")]
    layer = ibis.cases(*rules, else_="none")
    base = ibis.cases(*[(cond, AIPL_BASE[name]) for cond, name in rules], else_=AIPL_BASE["none"]).cast(f64)
    activity = (
        spec.browse_weight * decay["browse"]
        + spec.interest_weight * decay["interest"]
        + spec.purchase_weight * decay["purchase"]
    )
    term = ibis.least(activity / (activity + spec.rule_score_scale), _MAX_TERM)
    cols["aipl_layer"] = layer
    cols["rule_score"] = base + term
    return t.mutate(**cols)
