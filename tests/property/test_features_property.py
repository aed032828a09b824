"""Properties of the feature definition over random histories (hypothesis, derandomized, few examples)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.build.builder import build_features, default_connection, events_table
from features.events.schema import BEHAVIORS
from features.spec.definition import AIPL_BASE, FeatureSpec, count_column, integer_columns, trend_column
from features.spec.table import event_weights

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
SPEC = FeatureSpec(target_categories=("c0",))
DAY = 86_400
FAST = settings(
    max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

boundary_ages = st.sampled_from([DAY * d for d in (1, 2, 3, 7, 15, 30, 35, 90, 365)] + [1, DAY - 1, DAY + 1])
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
# rhythm edges: one active day of several events, same-day buys, gaps across the 7- and 35-day trend edges
RHYTHM_EXAMPLE = [
    ev("one_day", "view", DAY + 5), ev("one_day", "buy", DAY + 9), ev("one_day", "buy", 2 * DAY),
    ev("gaps", "visit", 7 * DAY), ev("gaps", "visit", 35 * DAY), ev("gaps", "buy", 35 * DAY + 1),
    ev("gaps", "buy", 3 * DAY), ev("gaps", "cart", 1), ev("gaps", "buy", 90 * DAY),
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
@example(RHYTHM_EXAMPLE, [ev("one_day", "buy", 0), ev("one_day", "view", 0), ev("gaps", "visit", 1)])
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
        assert dict(zip(f.user_id, f.aipl_layer, strict=False)) == {
            "L": "L", "P": "P", "I": "I", "A": "A", "none": "none"
        }


@FAST
@given(history)
@example(RHYTHM_EXAMPLE)
def test_invariants_of_the_rhythm_features(past):
    f = build_features(frame(past, -1), AS_OF, SPEC).set_index("user_id")
    for beh in BEHAVIORS:
        first, last = f[f"days_since_first_{beh}"], f[f"days_since_last_{beh}"]
        assert (first.isna() == last.isna()).all() and (first.fillna(0) >= last.fillna(0)).all(), beh
    assert np.allclose(f[[f"days_since_first_{b}" for b in BEHAVIORS]].max(axis=1), f.days_since_first_event)
    # gaps: defined from 2 distinct days on, at least 1 day, medians whole or half days, the mean within history
    gap, median = f.active_gap_mean_days, f.active_gap_median_days
    assert (gap.isna() == median.isna()).all() and (gap.dropna() >= 1).all() and (median.dropna() >= 1).all()
    assert ((median.dropna() * 2) % 1 == 0).all() and (gap.dropna() <= f.days_since_first_event[gap.notna()]).all()
    assert (f.purchase_gap_median_days.isna() == (f.purchase_days < 2)).all()
    assert (f.purchase_gap_median_days.dropna() >= 1).all()
    # recency over the usual gap and the survival proxy exp(-ratio): NaN exactly where the gap is
    assert np.allclose(f.active_recency_ratio, f.days_since_last_event / gap, equal_nan=True)
    pairs = (("active_survival", "active_recency_ratio"), ("purchase_survival", "repurchase_cycle_ratio"))
    for survival, ratio in pairs:
        assert (f[survival].isna() == f[ratio].isna()).all()
        assert ((f[survival].dropna() > 0) & (f[survival].dropna() <= 1)).all()
        assert np.allclose(f[survival], np.exp(-f[ratio]), equal_nan=True)
    # trends against a direct count: a = ages <= 7 days, b = 7 < age <= 35 days; bounded in (-1, 1)
    rows = pd.DataFrame([(u, b, s) for (u, b, *_), s in past], columns=["user_id", "behavior", "age_s"])
    for beh in (*BEHAVIORS, "event"):
        mine = rows if beh == "event" else rows[rows.behavior == beh]
        a = (mine.age_s <= 7 * DAY).groupby(mine.user_id).sum().reindex(f.index, fill_value=0)
        b = ((mine.age_s > 7 * DAY) & (mine.age_s <= 35 * DAY)).groupby(mine.user_id).sum()
        r = b.reindex(f.index, fill_value=0) / 4
        t = f[trend_column(beh, SPEC)]
        assert np.allclose(t, (a - r) / (a + r + 1), rtol=1e-12, atol=0), beh
        assert ((t > -1) & (t < 1)).all() and ((t > 0) == (a > r)).all(), beh
    if past is RHYTHM_EXAMPLE:
        assert np.isnan(f.loc["one_day", "active_gap_median_days"]) and f.loc["one_day", "purchase_days"] == 1
        # buy buckets 2, 35, 89: gaps 33, 54; active buckets 0, 2, 6, 34, 35, 89: gaps 2, 4, 28, 1, 54
        assert f.loc["gaps", "purchase_gap_median_days"] == 43.5 and f.loc["gaps", "active_gap_median_days"] == 4.0
        assert f.loc["gaps", "active_gap_mean_days"] == pytest.approx(89 / 5)


@FAST
@given(history)
def test_event_decay_weights_stay_in_range(past):
    table = event_weights(events_table(frame(past, -1)), AS_OF, SPEC)
    w = default_connection().to_pandas(table)
    assert ((w.decay >= 0) & (w.decay <= 1)).all()
    assert w.multiplier.isin([SPEC.ad_multiplier, SPEC.active_multiplier, SPEC.passive_multiplier, 1.0]).all()
    assert np.allclose(w.weight, w.decay * w.multiplier)
    assert (w.age_days > 0).all() and (w.day >= 0).all() and (w.day < w.age_days).all()
