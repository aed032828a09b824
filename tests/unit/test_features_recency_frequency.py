"""Recency and frequency features on tiny hand-computed event frames.

Boundary convention under test: an event exactly at ``as_of`` is excluded; an event exactly ``w`` days before
``as_of`` is inside the ``w``-day window (windows are ``[as_of - w days, as_of)``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features.build.builder import build_features

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
NAN = np.nan


def events(rows: list[tuple]) -> pd.DataFrame:
    """rows: (user, age in days before AS_OF, behavior[, item, category, channel, amount])."""
    full = [tuple(r) + (None,) * (7 - len(r)) for r in rows]
    frame = pd.DataFrame(full, columns=["user_id", "age", "behavior", "item_id", "category_id", "channel", "amount"])
    frame["ts"] = [AS_OF - timedelta(days=a) for a in frame.pop("age")]
    frame["amount"] = frame["amount"].astype("float64")
    return frame


def expect(data: dict[str, list], index: list[str]) -> pd.DataFrame:
    return pd.DataFrame(data, index=pd.Index(index, name="user_id"))


def got(features: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return features.set_index("user_id")[columns]


def test_event_at_as_of_is_excluded_and_users_without_earlier_events_are_absent():
    ev = events([("u1", 0, "view"), ("u1", 2, "view"), ("u2", 0, "buy"), ("u3", -1, "view")])
    f = build_features(ev, AS_OF)
    assert f.user_id.tolist() == ["u1"]
    row = f.iloc[0]
    assert row.days_since_last_view == pytest.approx(2.0)
    assert row.view_count_1d == 0 and row.view_count_3d == 1 and row.buy_count == 0


def test_event_exactly_one_day_before_is_inside_the_one_day_window():
    ev = events([("u1", 1, "view"), ("u2", 1 + 1 / 86_400, "view"), ("u3", 1 - 1 / 86_400, "view")])
    f = got(build_features(ev, AS_OF), ["view_count_1d", "view_count_3d", "active_days_30d"])
    expected = expect({"view_count_1d": [1, 0, 1], "view_count_3d": [1, 1, 1], "active_days_30d": [1, 1, 1]},
                      ["u1", "u2", "u3"])
    pd.testing.assert_frame_equal(f, expected)


def test_recency_per_behavior_and_first_event():
    ev = events(
        [
            ("u1", 2.5, "view"), ("u1", 4.0, "view"), ("u1", 10, "fav"), ("u1", 0.25, "cart"),
            ("u1", 40, "buy"), ("u1", 1, "visit"), ("u1", 100, "view"),
            ("u2", 7, "buy"),
        ]
    )
    cols = ["days_since_last_view", "days_since_last_fav", "days_since_last_cart", "days_since_last_buy",
            "days_since_last_visit", "days_since_last_event", "days_since_first_event"]
    expected = expect(
        {
            "days_since_last_view": [2.5, NAN],
            "days_since_last_fav": [10.0, NAN],
            "days_since_last_cart": [0.25, NAN],
            "days_since_last_buy": [40.0, 7.0],
            "days_since_last_visit": [1.0, NAN],
            "days_since_last_event": [0.25, 7.0],
            "days_since_first_event": [100.0, 7.0],
        },
        ["u1", "u2"],
    )
    pd.testing.assert_frame_equal(got(build_features(ev, AS_OF), cols), expected)


def test_window_counts_per_behavior_and_all_events():
    ev = events(
        [("u1", 0.5, "view"), ("u1", 2, "view"), ("u1", 6, "cart"), ("u1", 20, "view"), ("u1", 200, "buy"),
         ("u1", 400, "view"), ("u2", 14, "fav"), ("u2", 15, "fav"), ("u2", 16, "fav")]
    )
    cols = ["view_count_1d", "view_count_3d", "view_count_30d", "view_count_365d", "cart_count_7d",
            "buy_count_365d", "fav_count_15d", "fav_count_30d", "event_count_7d", "event_count_365d"]
    expected = expect(
        {
            "view_count_1d": [1, 0], "view_count_3d": [2, 0], "view_count_30d": [3, 0], "view_count_365d": [3, 0],
            "cart_count_7d": [1, 0], "buy_count_365d": [1, 0], "fav_count_15d": [0, 2], "fav_count_30d": [0, 3],
            "event_count_7d": [3, 0], "event_count_365d": [5, 3],
        },
        ["u1", "u2"],
    )
    pd.testing.assert_frame_equal(got(build_features(ev, AS_OF), cols), expected)


def test_distinct_active_days_items_and_categories():
    # day buckets counted back from as_of: ages 0.5, 0.7 and 1.0 -> bucket 0; 1.5 -> 1; 29.9 -> 29; 31 -> 30
    ev = events(
        [("u1", 0.5, "view", "i1", "c1"), ("u1", 0.7, "view", "i1", "c1"), ("u1", 1.0, "cart", "i2", "c1"),
         ("u1", 1.5, "view", "i3", "c2"), ("u1", 29.9, "view", "i4", None), ("u1", 31, "view", "i5", "c3")]
    )
    cols = ["active_days_30d", "active_days_365d", "distinct_items_30d", "distinct_categories_30d"]
    expected = expect(
        {"active_days_30d": [3], "active_days_365d": [4], "distinct_items_30d": [4], "distinct_categories_30d": [2]},
        ["u1"],
    )
    pd.testing.assert_frame_equal(got(build_features(ev, AS_OF), cols), expected)


def test_active_and_purchase_days_match_a_direct_count_over_long_histories():
    """Distinct day buckets over 500 days of history (edges at window ends and 62-day multiples)."""
    rng = np.random.default_rng(11)
    edges = [0.0, 1.0, 30.0, 30.000001, 62.0, 62.5, 124.0, 124.000001, 364.999, 365.0, 365.5, 372.0, 499.0]
    rows = []
    for u in range(40):
        ages = np.concatenate([rng.uniform(0.0001, 500, rng.integers(1, 250)), rng.choice(edges[1:], 3)])
        rows += [(f"u{u:02d}", float(a), str(rng.choice(["view", "buy", "cart"], p=[0.6, 0.3, 0.1]))) for a in ages]
    ev = events(rows)
    spec_cols = ["active_days_30d", "active_days_365d", "purchase_days", "purchase_days_365d"]
    f = got(build_features(ev, AS_OF), spec_cols)
    day = np.maximum(np.ceil(np.array([r[1] for r in rows])) - 1, 0).astype(int)  # bucket k: ages in (k, k+1]
    frame = pd.DataFrame({"user_id": [r[0] for r in rows], "day": day, "buy": [r[2] == "buy" for r in rows]})
    expected = pd.DataFrame(
        {
            "active_days_30d": frame[frame.day < 30].groupby("user_id").day.nunique(),
            "active_days_365d": frame[frame.day < 365].groupby("user_id").day.nunique(),
            "purchase_days": frame[frame.buy].groupby("user_id").day.nunique(),
            "purchase_days_365d": frame[frame.buy & (frame.day < 365)].groupby("user_id").day.nunique(),
        },
        index=pd.Index(sorted(frame.user_id.unique()), name="user_id"),
    ).fillna(0).astype("int64")
    pd.testing.assert_frame_equal(f, expected)
    assert (f.active_days_365d > 62).any()  # long, dense histories


def test_comparison_shopping_counts_distinct_items_viewed_in_one_category():
    ev = events(
        [("u1", 2, "view", "a1", "A"), ("u1", 2.1, "view", "a2", "A"), ("u1", 2.2, "view", "a3", "A"),
         ("u1", 2.3, "view", "a3", "A"), ("u1", 1, "cart", "a4", "A"),
         ("u1", 5, "view", "b1", "B"), ("u1", 5, "view", "b2", "B"), ("u1", 5, "view", "b3", "B"),
         ("u1", 6, "view", "b4", "B"), ("u1", 8, "view", "b5", "B"),
         ("u2", 1, "view", "x1", "X"), ("u2", 1, "view", "x2", None),
         ("u3", 1, "buy", "y1", "Y")]
    )
    cols = ["max_items_per_category_3d", "max_items_per_category_7d"]
    expected = expect({"max_items_per_category_3d": [3, 1, 0], "max_items_per_category_7d": [4, 1, 0]},
                      ["u1", "u2", "u3"])
    pd.testing.assert_frame_equal(got(build_features(ev, AS_OF), cols), expected)


def test_carts_not_followed_by_a_purchase_of_the_same_item():
    ev = events(
        [("u1", 10, "cart", "i1"), ("u1", 5, "buy", "i1"),        # bought after the cart: closed
         ("u1", 20, "cart", "i2"),                                 # never bought: open
         ("u1", 100, "cart", "i3"),                                # outside 90 days
         ("u1", 30, "buy", "i4"), ("u1", 3, "cart", "i4"),         # bought before the cart only: open
         ("u1", 4, "cart", "i5"), ("u1", 2, "cart", "i5"),         # carted twice, one item: open once
         ("u1", 4, "cart", None),                                  # no item: ignored
         ("u2", 1, "view", "i1")]
    )
    f = got(build_features(ev, AS_OF), ["carts_unbought_90d"])
    pd.testing.assert_frame_equal(f, expect({"carts_unbought_90d": [3, 0]}, ["u1", "u2"]))


def test_fav_and_cart_in_the_last_24_hours():
    ev = events([("u1", 0.5, "fav"), ("u1", 0.9, "cart"), ("u1", 1.5, "cart"), ("u1", 0.1, "view"),
                 ("u2", 1.0, "fav")])
    f = got(build_features(ev, AS_OF), ["favcart_count_1d"])
    pd.testing.assert_frame_equal(f, expect({"favcart_count_1d": [2, 1]}, ["u1", "u2"]))


def test_ad_events_recency_and_channel_shares():
    ev = events(
        [("u1", 2, "view", None, None, "ad"), ("u1", 10, "view", None, None, "ad"),
         ("u1", 1, "view", None, None, "search"), ("u1", 3, "view", None, None, "recommend"),
         ("u1", 4, "fav", None, None, "recommend"), ("u1", 5, "view", None, None, "live"),
         ("u1", 6, "view", None, None, None), ("u1", 40, "view", None, None, "ad"),
         ("u2", 1, "view"), ("u3", 35, "view", None, None, "search"), ("u3", 1, "view")]
    )
    cols = ["ad_count_3d", "ad_count_30d", "days_since_last_ad", "active_channel_share_30d",
            "passive_channel_share_30d"]
    expected = expect(
        {
            "ad_count_3d": [1, 0, 0],
            "ad_count_30d": [2, 0, 0],
            "days_since_last_ad": [2.0, NAN, NAN],
            # u1 in 30 days: 6 events with a channel: ad, ad, search (active: 3); recommend x2 (passive: 2); live
            "active_channel_share_30d": [0.5, NAN, NAN],
            "passive_channel_share_30d": [2 / 6, NAN, NAN],
        },
        ["u1", "u2", "u3"],
    )
    pd.testing.assert_frame_equal(got(build_features(ev, AS_OF), cols), expected)


def test_a_behavior_outside_the_contract_is_an_event_but_no_named_behavior():
    """An Ibis table skips the pandas input checks: an unknown behavior still counts as an event (as it always has)."""
    import ibis

    from features.build.builder import _arrow_events

    table = _arrow_events(events([("u1", 0.5, "view"), ("u1", 2, "view"), ("u2", 3, "buy")]))
    behavior = pa.array(["view", "share", "buy"])
    table = table.set_column(table.schema.get_field_index("behavior"), "behavior", behavior)
    f = got(build_features(ibis.memtable(table), AS_OF), ["event_count_3d", "view_count_3d", "days_since_last_event"])
    expected = expect(
        {"event_count_3d": [2, 1], "view_count_3d": [1, 0], "days_since_last_event": [0.5, 3.0]}, ["u1", "u2"]
    )
    pd.testing.assert_frame_equal(f, expected)
