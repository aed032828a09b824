"""Stage 2 of the feature expression: prepared events -> one row per user (portable Ibis, no ``as_of``).

The bulk of the features comes from a two-level aggregation: events are first grouped by
``(user, behavior code, window slot)``, where the slot is the narrowest window holding the event, and the user row then
sums those few partial rows with conditions on the slot. That evaluates the ~80 conditional aggregates over at
most ``5 behaviors x (windows + 1)`` rows per user instead of over every event. Distinct counts (days, items,
categories) and the per-(user, category) and per-(user, item) features come from small grouped tables joined
back on ``user_id``; the distinct active and purchase days, their gaps and the other rhythm features live in
:mod:`features.spec.rhythm`.
"""

from __future__ import annotations

import ibis

from features.spec.definition import (
    AIPL_BASE,
    BEHAVIOR_CODES,
    BROWSE_BEHAVIORS,
    CHANNEL_CODES,
    INTEREST_BEHAVIORS,
    RECENCY_BEHAVIORS,
    FeatureSpec,
    count_column,
    output_columns,
)
from features.spec.rhythm import (
    active_day_gaps,
    purchase_day_gaps,
    rhythm_aggregates,
    rhythm_derived,
    sum_counts,
    trend_windows,
)
from features.spec.rhythm import is_behavior as _is

_MAX_TERM = 1.0 - 1e-9  # keeps the within-layer term strictly below 1 even when float division rounds up
_LAYERS = {"browse": BROWSE_BEHAVIORS, "interest": INTEREST_BEHAVIORS, "purchase": ("buy",)}


def aggregate_features(
    ev: ibis.Table, spec: FeatureSpec, *, has_item: bool = True, has_amount: bool = True
) -> ibis.Table:
    """Per-user features from prepared events (:func:`features.spec.table.prepare_events`), sorted by user.

    Window membership is ``age_days <= w`` (the event lies in ``[as_of - w days, as_of)``). ``has_item`` /
    ``has_amount`` tell whether the source had those columns (when not, item features are 0 and amount
    features null).
    """
    slots = _slots(spec)
    partial = _partial(ev, spec, slots)
    main = partial.group_by("user_id").aggregate(**_user_aggregates(partial, spec, slots, has_amount))
    if lookback := spec.lookback_days:
        main = main.filter(main.days_since_last_event <= lookback)
    parts = [active_day_gaps(ev, spec), purchase_day_gaps(ev, spec), _distinct_counts(ev, spec, "category_id")]
    if has_item:
        parts += [_distinct_counts(ev, spec, "item_id"), _comparison_shopping(ev, spec), _unbought_carts(ev, spec)]
    for part in parts:
        part = part.rename(_uid="user_id")
        main = main.left_join(part, main.user_id == part._uid).drop("_uid")
    main = _derived(main, spec, has_item)
    return main.select(*output_columns(spec)).order_by("user_id")


def _slots(spec: FeatureSpec) -> tuple[int, ...]:
    """Every window (days) used by any feature, ascending; slot ``i`` = narrowest window ``slots[i]`` holding an
    event, slot ``len(slots)`` = older than every window."""
    return tuple(
        sorted(
            {
                *spec.windows,
                *spec.ad_windows,
                spec.favcart_days,
                spec.channel_share_days,
                spec.purchase_days,
                spec.interest_days,
                spec.browse_days,
                *trend_windows(spec),
            }
        )
    )


def _partial(ev: ibis.Table, spec: FeatureSpec, slots: tuple[int, ...]) -> ibis.Table:
    """Level 1: partial aggregates per ``(user_id, behavior_code, slot)``."""
    slot = ibis.cases(*[(ev.age_days <= w, i) for i, w in enumerate(slots)], else_=len(slots)).cast("int64")
    ev = ev.mutate(slot=slot)
    channel = ev.channel_code
    is_ad = channel == CHANNEL_CODES["ad"]
    agg = {
        "n": ev.behavior_code.count(),
        "min_age": ev.age_days.min(),
        "max_age": ev.age_days.max(),
        "weight": ev.weight.sum(),
        "amount": ev.amount.sum(),
        "n_amount": ev.amount.count(),
        "n_ad": ev.behavior_code.count(where=is_ad),
        "ad_min_age": ev.age_days.min(where=is_ad),
        "n_channel": channel.count(),
        "n_active": ev.behavior_code.count(where=channel.isin((CHANNEL_CODES["ad"], CHANNEL_CODES["active"]))),
        "n_passive": ev.behavior_code.count(where=channel == CHANNEL_CODES["passive"]),
    }
    if spec.target_categories:
        target = ev.category_id.isin(spec.target_categories)
        agg["n_target"] = ev.behavior_code.count(where=target)
        agg["target_max_age"] = ev.age_days.max(where=target)
    return ev.group_by(["user_id", "behavior_code", "slot"]).aggregate(**agg)


def _user_aggregates(
    g: ibis.Table, spec: FeatureSpec, slots: tuple[int, ...], has_amount: bool
) -> dict[str, ibis.Value]:
    """Level 2: the user's features as conditional sums/min/max over its partial rows."""
    b = g.behavior_code
    within = {w: g.slot <= i for i, w in enumerate(slots)}

    is_buy = _is(b, "buy")
    agg: dict[str, ibis.Value] = {}
    for beh in RECENCY_BEHAVIORS:
        agg[f"days_since_last_{beh}"] = g.min_age.min(where=_is(b, beh))
    agg["days_since_last_event"] = g.min_age.min()
    agg["days_since_first_event"] = g.max_age.max()
    for w in spec.windows:
        for beh in RECENCY_BEHAVIORS:
            agg[count_column(beh, w)] = sum_counts(g.n, _is(b, beh) & within[w])
        agg[count_column("event", w)] = sum_counts(g.n, within[w])
    favcart = _is(b, *INTEREST_BEHAVIORS) & within[spec.favcart_days]
    agg[f"favcart_count_{spec.favcart_days}d"] = sum_counts(g.n, favcart)
    for w in spec.ad_windows:
        agg[count_column("ad", w)] = sum_counts(g.n_ad, within[w])
    agg["days_since_last_ad"] = g.ad_min_age.min()
    cs = within[spec.channel_share_days]
    agg["_chan_n"] = sum_counts(g.n_channel, cs)
    agg["_chan_active"] = sum_counts(g.n_active, cs)
    agg["_chan_passive"] = sum_counts(g.n_passive, cs)
    for layer, behaviors in _LAYERS.items():  # weights are 0 beyond the span: sum over the whole history
        agg[f"decay_{layer}"] = ibis.coalesce(ibis.ifelse(_is(b, *behaviors), g.weight, 0.0).sum(), 0.0)
    pw = spec.purchase_days
    agg["buy_count"] = sum_counts(g.n, is_buy)
    agg["_first_buy_age"] = g.max_age.max(where=is_buy)
    if has_amount:
        agg["amount_total"] = ibis.coalesce(g.amount.sum(where=is_buy), 0.0)
        n_amount = g.n_amount.sum(where=is_buy)
        agg["amount_mean"] = ibis.ifelse(n_amount > 0, g.amount.sum(where=is_buy) / n_amount, ibis.null("float64"))
        agg[f"amount_{pw}d"] = ibis.coalesce(g.amount.sum(where=is_buy & within[pw]), 0.0)
    agg["_interest_n"] = sum_counts(g.n, _is(b, *INTEREST_BEHAVIORS) & within[spec.interest_days])
    agg["_browse_n"] = sum_counts(g.n, within[spec.browse_days])
    if spec.target_categories:
        agg["target_view_count"] = sum_counts(g.n_target, _is(b, "view"))
        agg["target_cart_count"] = sum_counts(g.n_target, _is(b, "cart"))
        agg["target_buy_count"] = sum_counts(g.n_target, is_buy)
        agg["_target_first_browse_age"] = g.target_max_age.max(where=b != BEHAVIOR_CODES["buy"])
    agg.update(rhythm_aggregates(g, spec, within))
    return agg


def _distinct_counts(ev: ibis.Table, spec: FeatureSpec, column: str) -> ibis.Table:
    """Per user: distinct non-null values of ``column`` (item or category) in the last ``distinct_days``."""
    name = f"distinct_{'items' if column == 'item_id' else 'categories'}_{spec.distinct_days}d"
    rows = ev.filter(ev[column].notnull() & (ev.age_days <= spec.distinct_days))
    pairs = rows.group_by(["user_id", column]).aggregate()
    return pairs.group_by("user_id").aggregate(**{name: pairs[column].count()})


def _comparison_shopping(ev: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """Per user: the most distinct items viewed within one category, per comparison window."""
    views = ev.filter(
        _is(ev.behavior_code, "view")
        & ev.item_id.notnull()
        & ev.category_id.notnull()
        & (ev.age_days <= max(spec.comparison_windows))
    )
    per_item = views.group_by(["user_id", "category_id", "item_id"]).aggregate(_age=views.age_days.min())
    per_cat = per_item.group_by(["user_id", "category_id"]).aggregate(
        **{f"_items_{w}": per_item.item_id.count(where=per_item._age <= w) for w in spec.comparison_windows}
    )
    return per_cat.group_by("user_id").aggregate(
        **{f"_cmp_{w}": per_cat[f"_items_{w}"].max() for w in spec.comparison_windows}
    )


def _unbought_carts(ev: ibis.Table, spec: FeatureSpec) -> ibis.Table:
    """Per user: items carted in the window whose last cart was not followed by a buy of the same item.

    A buy at the same instant as the cart counts as following it. A buy older than the window cannot follow a
    cart inside it, so only the window's events are read.
    """
    rows = ev.filter(
        ev.item_id.notnull() & _is(ev.behavior_code, "cart", "buy") & (ev.age_days <= spec.cart_unbought_days)
    )
    per_item = rows.group_by(["user_id", "item_id"]).aggregate(
        _cart_age=rows.age_days.min(where=_is(rows.behavior_code, "cart")),
        _buy_age=rows.age_days.min(where=_is(rows.behavior_code, "buy")),
    )
    open_carts = per_item.filter(
        per_item._cart_age.notnull() & (per_item._buy_age.isnull() | (per_item._buy_age > per_item._cart_age))
    )
    return open_carts.group_by("user_id").aggregate(_carts_open=open_carts.item_id.count())


def _derived(t: ibis.Table, spec: FeatureSpec, has_item: bool) -> ibis.Table:
    """Columns computed from the joined aggregates: shares, cadence, category flags, AIPL layer, rule score."""
    f64 = "float64"
    null_f = ibis.null(f64)
    zero = ibis.literal(0, type="int64")
    cols: dict[str, ibis.Value] = {}
    dd = spec.distinct_days
    for name in (
        *(f"active_days_{w}d" for w in spec.active_day_windows),
        "purchase_days",
        f"purchase_days_{spec.purchase_days}d",
        f"distinct_categories_{dd}d",
    ):
        cols[name] = ibis.coalesce(t[name], 0).cast("int64")
    cols[f"distinct_items_{dd}d"] = ibis.coalesce(t[f"distinct_items_{dd}d"], 0).cast("int64") if has_item else zero
    for w in spec.comparison_windows:
        cols[f"max_items_per_category_{w}d"] = ibis.coalesce(t[f"_cmp_{w}"], 0).cast("int64") if has_item else zero
    unbought = ibis.coalesce(t._carts_open, 0).cast("int64") if has_item else zero
    cols[f"carts_unbought_{spec.cart_unbought_days}d"] = unbought
    n = t._chan_n.cast(f64)
    cols[f"active_channel_share_{spec.channel_share_days}d"] = ibis.ifelse(t._chan_n > 0, t._chan_active / n, null_f)
    cols[f"passive_channel_share_{spec.channel_share_days}d"] = ibis.ifelse(t._chan_n > 0, t._chan_passive / n, null_f)
    pw = spec.purchase_days
    if "amount_total" not in t.columns:
        cols.update({"amount_total": null_f, "amount_mean": null_f, f"amount_{pw}d": null_f})
    n_days = cols["purchase_days"]
    gap = ibis.ifelse(n_days >= 2, (t._first_buy_age - t.days_since_last_buy) / (n_days - 1).cast(f64), null_f)
    cols["purchase_gap_mean_days"] = gap
    cols["repurchase_cycle_ratio"] = ibis.ifelse(gap > 0, t.days_since_last_buy / gap, null_f)
    cols.update(rhythm_derived(t, spec, cols["repurchase_cycle_ratio"]))
    if spec.target_categories:
        recent_first = t._target_first_browse_age <= spec.category_new_days
        cols["category_new"] = ibis.ifelse(recent_first & (t.target_buy_count == 0), 1, 0).cast("int64")
        cols["category_regular"] = ibis.ifelse(t.target_buy_count > 0, 1, 0).cast("int64")
    buy_days = cols[f"purchase_days_{pw}d"]
    rules = [(buy_days >= 2, "L"), (buy_days == 1, "P"), (t._interest_n > 0, "I"), (t._browse_n > 0, "A")]
    base = ibis.cases(*[(cond, AIPL_BASE[name]) for cond, name in rules], else_=AIPL_BASE["none"]).cast(f64)
    activity = (
        spec.browse_weight * t.decay_browse
        + spec.interest_weight * t.decay_interest
        + spec.purchase_weight * t.decay_purchase
    )
    cols["aipl_layer"] = ibis.cases(*rules, else_="none")
    cols["rule_score"] = base + ibis.least(activity / (activity + spec.rule_score_scale), _MAX_TERM)
    return t.mutate(**cols)
