"""Properties of the feature definition over random histories (hypothesis, derandomized, few examples)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.build.builder import build_features, default_connection, events_table
from features.events.schema import BEHAVIORS
from features.spec.definition import AIPL_BASE, FeatureSpec, count_column, integer_columns
from features.spec.table import event_weights

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
SPEC = FeatureSpec(target_categories=("c0",))
DAY = 86_400
FAST = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

boundary_ages = st.sampled_from([DAY * d for d in (1, 3, 7, 15, 30, 90, 365)] + [1, DAY - 1, DAY + 1])
past_age = st.one_of(st.integers(1, 400 * DAY), boundary_ages)
event = st.tuples(
    st.sampled_from(["u0", "u1", "u2"]),
    st.sampled_from((*BEHAVIORS, "buy", "buy")),  # more buys, so histories reach the P and L layers often
    st.sampled_from([None, "i0", "i1", "i2", "i3"]),
    st.sampled_from([None, "c0", "c1", "c2"]),
    st.sampled_from([None, "search", "recommend", "ad", "live"]),
    st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
)
history = st.lists(st.tuples(event, past_age), min_size=3, max_size=40)


def ev(user: str, behavior: str, age_s: int, channel: str | None = None) -> tuple:
    return ((user, behavior, "i0", "c0", channel, 5.0), age_s)


# one user per AIPL layer, including the window edges, so every rule is exercised whatever is generated
LAYERS_EXAMPLE = [
    ev("L", "buy", 3 * DAY), ev("L", "buy", 365 * DAY), ev("P", "buy", 2 * DAY + 5), ev("P", "buy", 2 * DAY + 9),
    ev("P", "buy", 366 * DAY), ev("I", "cart", 90 * DAY, "ad"), ev("A", "view", 15 * DAY, "recommend"),
    ev("none", "view", 15 * DAY + 1), ev("none", "fav", 90 * DAY + 1),
]
future = st.lists(st.tuples(event, st.integers(0, 30 * DAY)), min_size=1, max_size=15)


def frame(rows: list[tuple], sign: int) -> pd.DataFrame:
    """sign=-1: ages before AS_OF; sign=+1: offsets at or after AS_OF."""
    data = [
        (u, AS_OF + sign * timedelta(seconds=s), b, i, c, ch, amt if b == "buy" else None)
        for (u, b, i, c, ch, amt), s in rows
    ]
    return pd.DataFrame(data, columns=["user_id", "ts", "behavior", "item_id", "category_id", "channel", "amount"])


@FAST
@given(history, future)
@example(LAYERS_EXAMPLE, [ev("none", "buy", 0), ev("A", "buy", 0), ev("new", "view", 1)])
def test_events_at_or_after_as_of_change_no_feature(past, later):
    before = build_features(frame(past, -1), AS_OF, SPEC)
    with_future = build_features(pd.concat([frame(past, -1), frame(later, +1)], ignore_index=True), AS_OF, SPEC)
    pd.testing.assert_frame_equal(before, with_future)


@FAST
@given(history)
@example(LAYERS_EXAMPLE)
def test_invariants_of_recency_windows_decay_and_aipl(past):
    f = build_features(frame(past, -1), AS_OF, SPEC)
    recency = f.filter(like="days_since")
    assert (recency.fillna(0) >= 0).all().all()
    assert (f.days_since_first_event >= f.days_since_last_event).all()
    for beh in (*BEHAVIORS, "event", "ad"):
        windows = SPEC.windows if beh not in ("ad",) else SPEC.ad_windows
        counts = f[[count_column(beh, w) for w in windows]].to_numpy()
        assert (np.diff(counts, axis=1) >= 0).all(), beh  # a shorter window never counts more
    for w in SPEC.windows:
        per_behavior = sum(f[count_column(b, w)] for b in BEHAVIORS)
        assert (per_behavior == f[count_column("event", w)]).all()
    assert (f.active_days_30d <= f.active_days_365d).all() and (f.active_days_365d <= f.event_count_365d).all()
    assert (f.max_items_per_category_3d <= f.max_items_per_category_7d).all()
    assert (f.purchase_days_365d <= f.purchase_days).all() and (f.purchase_days <= f.buy_count).all()
    # each event weighs at most max multiplier (2.0, ad) and only inside its span
    assert (f.decay_browse >= 0).all() and (f.decay_browse <= 2.0 * (f.view_count_15d + f.visit_count_15d)).all()
    assert (f.decay_interest <= 2.0 * (f.fav_count_90d + f.cart_count_90d)).all()
    assert (f.decay_purchase >= 0).all() and (f.decay_purchase <= 2.0 * f.buy_count_365d).all()
    # AIPL precedence: L > P > I > A, and the rule score stays inside its layer's band
    expected = np.select(
        [f.purchase_days_365d >= 2, f.purchase_days_365d == 1, f.fav_count_90d + f.cart_count_90d > 0,
         f.event_count_15d > 0],
        ["L", "P", "I", "A"],
        default="none",
    )
    assert (f.aipl_layer.to_numpy() == expected).all()
    base = f.aipl_layer.map(AIPL_BASE)
    assert ((f.rule_score >= base) & (f.rule_score < base + 1)).all()
    assert (f.category_new + f.category_regular <= 1).all()
    assert not f[integer_columns(SPEC)].isna().any().any()
    if past is LAYERS_EXAMPLE:
        assert dict(zip(f.user_id, f.aipl_layer)) == {"L": "L", "P": "P", "I": "I", "A": "A", "none": "none"}


@FAST
@given(history)
def test_event_decay_weights_stay_in_range(past):
    table = event_weights(events_table(frame(past, -1)), AS_OF, SPEC)
    w = default_connection().to_pandas(table)
    assert ((w.decay >= 0) & (w.decay <= 1)).all()
    assert w.multiplier.isin([SPEC.ad_multiplier, SPEC.active_multiplier, SPEC.passive_multiplier, 1.0]).all()
    assert np.allclose(w.weight, w.decay * w.multiplier)
    assert (w.age_days > 0).all() and (w.day >= 0).all() and (w.day < w.age_days).all()
