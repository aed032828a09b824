"""The rhythm features (each user's own habits) on tiny hand-computed event frames.

Day buckets count back from ``as_of``: bucket ``k`` holds ages in ``(k, k+1]`` days (age 1.0 is bucket 0). Gaps
are whole days between consecutive distinct buckets; the trend compares the last 7 days (ages ``<= 7``) with the
28 days before them (``7 < age <= 35``) as ``(a - r) / (a + r + 1)``, ``r = b * 7 / 28``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features
from features.spec.definition import FeatureSpec, FeatureSpecError, rhythm_columns, trend_column

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
NAN = np.nan
SECOND = 1 / 86_400
TRENDS = [f"{b}_trend_7d_vs_28d" for b in ("view", "fav", "cart", "buy", "visit", "event")]
GAPS = ["active_gap_mean_days", "active_gap_median_days", "active_recency_ratio", "active_survival",
        "purchase_gap_median_days", "purchase_survival"]


def events(rows: list[tuple]) -> pd.DataFrame:
    """rows: (user, age in days before AS_OF, behavior); a negative age is after AS_OF."""
    frame = pd.DataFrame(rows, columns=["user_id", "age", "behavior"])
    frame["ts"] = [AS_OF - timedelta(days=a) for a in frame.pop("age")]
    return frame


def expect(data: dict[str, list], index: list[str]) -> pd.DataFrame:
    return pd.DataFrame(data, index=pd.Index(index, name="user_id"))


def got(features: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return features.set_index("user_id")[columns]


def trend(a: float, b: float) -> float:
    r = b * 7 / 28
    return (a - r) / (a + r + 1)


# u1: active buckets 0 (two events the same day), 2, 9 (a buy and a view the same day), 20, 40;
#     the view exactly at as_of is excluded. Gaps 2, 7, 11, 20: mean 40 / 4 = 10, median (7 + 11) / 2 = 9.
# u2: every event in bucket 3 (one active day, one purchase day): no gap, so no ratio and no survival.
# u3: buckets 0, 1, 5, 6: gaps 1, 4, 1 -> mean 2, median 1 (odd count: the middle gap).
U1 = [("u1", 0.5, "view"), ("u1", 0.75, "cart"), ("u1", 2.5, "view"), ("u1", 9.5, "buy"), ("u1", 9.8, "view"),
      ("u1", 20.5, "buy"), ("u1", 40.5, "visit"), ("u1", 0, "view")]
U2 = [("u2", 3.2, "view"), ("u2", 3.7, "buy"), ("u2", 3.9, "buy")]
U3 = [("u3", 0.2, "visit"), ("u3", 1.2, "visit"), ("u3", 5.5, "visit"), ("u3", 6.5, "visit")]


def test_first_seen_per_behavior_next_to_last_seen():
    f = got(build_features(events(U1 + U2), AS_OF), [f"days_since_first_{b}" for b in
                                                     ("view", "fav", "cart", "buy", "visit")])
    expected = expect(
        {
            "days_since_first_view": [9.8, 3.2],
            "days_since_first_fav": [NAN, NAN],
            "days_since_first_cart": [0.75, NAN],
            "days_since_first_buy": [20.5, 3.9],
            "days_since_first_visit": [40.5, NAN],
        },
        ["u1", "u2"],
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)


def test_gaps_between_active_and_purchase_days_recency_ratio_and_survival():
    f = got(build_features(events(U1 + U2 + U3), AS_OF), GAPS)
    expected = expect(
        {
            "active_gap_mean_days": [10.0, NAN, 2.0],
            "active_gap_median_days": [9.0, NAN, 1.0],
            "active_recency_ratio": [0.5 / 10, NAN, 0.2 / 2],
            "active_survival": [math.exp(-0.05), NAN, math.exp(-0.1)],
            # buys in buckets 9 and 20: one 11-day gap; purchase_gap_mean_days = 20.5 - 9.5 = 11
            "purchase_gap_median_days": [11.0, NAN, NAN],
            "purchase_survival": [math.exp(-9.5 / 11), NAN, NAN],
        },
        ["u1", "u2", "u3"],
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)
    full = build_features(events(U1 + U2 + U3), AS_OF).set_index("user_id")
    assert full.loc["u1", "repurchase_cycle_ratio"] == pytest.approx(9.5 / 11, rel=1e-12)


def test_trend_of_the_last_week_against_the_four_weeks_before():
    f = got(build_features(events(U1 + U2), AS_OF), TRENDS)
    expected = expect(
        {
            "view_trend_7d_vs_28d": [trend(2, 1), trend(1, 0)],     # u1: views at 0.5, 2.5 | 9.8
            "fav_trend_7d_vs_28d": [0.0, 0.0],
            "cart_trend_7d_vs_28d": [trend(1, 0), 0.0],
            "buy_trend_7d_vs_28d": [trend(0, 2), trend(2, 0)],      # u1: buys at 9.5, 20.5 in the base period
            "visit_trend_7d_vs_28d": [0.0, 0.0],                     # u1: visit at 40.5, before both periods
            "event_trend_7d_vs_28d": [trend(3, 3), trend(3, 0)],
        },
        ["u1", "u2"],
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)
    assert trend(2, 1) == pytest.approx(7 / 13) and trend(0, 2) == pytest.approx(-1 / 3)


def test_period_edges_the_two_day_window_and_events_at_the_cutoff():
    ev = events(
        [
            # exactly 7 days old: the recent period; exactly 35: the base period; 35 days + 1 s: neither
            ("u1", 7, "view"), ("u1", 35, "view"), ("u1", 35 + SECOND, "view"),
            # exactly 2 days old: inside the 2-day window; 2 days + 1 s: outside; at as_of or later: ignored
            ("u2", 2, "view"), ("u2", 2 + SECOND, "view"), ("u2", 1.5, "cart"), ("u2", 0, "buy"), ("u2", -3, "buy"),
        ]
    )
    f = got(build_features(ev, AS_OF), ["view_count_1d", "view_count_2d", "cart_count_2d", "buy_count_2d",
                                        "event_count_2d", "view_trend_7d_vs_28d", "active_gap_median_days",
                                        "active_gap_mean_days", "days_since_first_buy"])
    # u1 buckets 6, 34, 35: gaps 28 and 1 -> mean 14.5, median (1 + 28) / 2 = 14.5
    # u2 buckets 1 (ages 1.5 and 2.0) and 2: one gap of 1 day
    expected = expect(
        {
            "view_count_1d": [0, 0], "view_count_2d": [0, 1], "cart_count_2d": [0, 1], "buy_count_2d": [0, 0],
            "event_count_2d": [0, 2], "view_trend_7d_vs_28d": [trend(1, 1), trend(2, 0)],
            "active_gap_median_days": [14.5, 1.0], "active_gap_mean_days": [14.5, 1.0],
            "days_since_first_buy": [NAN, NAN],
        },
        ["u1", "u2"],
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)


def test_gaps_match_a_direct_computation_over_long_histories():
    rng = np.random.default_rng(5)
    rows = []
    for u in range(30):
        ages = rng.uniform(0.0001, 500, rng.integers(1, 60))
        rows += [(f"u{u:02d}", float(a), str(rng.choice(["view", "buy", "visit"], p=[0.5, 0.3, 0.2]))) for a in ages]
    f = got(build_features(events(rows), AS_OF), ["active_gap_mean_days", "active_gap_median_days",
                                                   "purchase_gap_median_days"])
    day = np.maximum(np.ceil(np.array([r[1] for r in rows])) - 1, 0).astype(int)
    frame = pd.DataFrame({"user_id": [r[0] for r in rows], "day": day, "buy": [r[2] == "buy" for r in rows]})

    def gaps(part: pd.DataFrame) -> pd.Series:
        return part.drop_duplicates().sort_values(["user_id", "day"]).groupby("user_id").day.diff()

    active = frame[["user_id", "day"]].drop_duplicates().sort_values(["user_id", "day"])
    active["gap"] = gaps(frame[["user_id", "day"]]).astype("float64")
    bought = frame.loc[frame.buy, ["user_id", "day"]].drop_duplicates().sort_values(["user_id", "day"])
    bought["gap"] = gaps(frame.loc[frame.buy, ["user_id", "day"]]).astype("float64")
    users = pd.Index(sorted(frame.user_id.unique()), name="user_id")
    expected = pd.DataFrame(
        {
            "active_gap_mean_days": active.groupby("user_id").gap.mean(),
            "active_gap_median_days": active.groupby("user_id").gap.median(),
            "purchase_gap_median_days": bought.groupby("user_id").gap.median(),
        },
        index=users,
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)
    assert f.active_gap_median_days.notna().sum() > 20 and f.purchase_gap_median_days.notna().sum() > 10


def test_trend_without_its_windows_among_the_count_windows_and_other_periods():
    ev = events(U1 + U2 + U3)
    default = got(build_features(ev, AS_OF), TRENDS)
    few_windows = got(build_features(ev, AS_OF, FeatureSpec(windows=(1, 30))), TRENDS)
    pd.testing.assert_frame_equal(few_windows, default)
    spec = FeatureSpec(trend_days=3, trend_base_days=9)
    assert trend_column("view", spec) == "view_trend_3d_vs_9d" and trend_column("view", spec) in rhythm_columns(spec)
    # u1 views at 0.5, 2.5 (recent) and 9.8 (base: 3 < age <= 12) -> r = 1 * 3 / 9
    value = build_features(ev, AS_OF, spec).set_index("user_id").loc["u1", "view_trend_3d_vs_9d"]
    assert value == pytest.approx((2 - 1 / 3) / (2 + 1 / 3 + 1), rel=1e-12)


@pytest.mark.parametrize("field", ["trend_days", "trend_base_days"])
@pytest.mark.parametrize("value", [0, -7, 2.5, True])
def test_spec_rejects_bad_trend_periods(field: str, value: object):
    with pytest.raises(FeatureSpecError, match=field):
        FeatureSpec(**{field: value})


def test_new_columns_are_float_days_and_the_spec_version_moved_on():
    spec = FeatureSpec()
    f = build_features(events(U1 + U2), AS_OF)
    assert spec.version == "2" and 2 in spec.windows
    assert all(f[c].dtype == "float64" for c in rhythm_columns(spec))
    assert all(f[f"{b}_count_2d"].dtype == "int64" for b in ("view", "fav", "cart", "buy", "visit", "event"))
