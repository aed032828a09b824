"""AIPL layer, rule score, category scope and population, on hand-computed frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from features.build.builder import build_features
from features.spec.definition import FeatureSpec, feature_columns

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


def events(rows: list[tuple]) -> pd.DataFrame:
    """rows: (user, age in days before AS_OF, behavior[, item, category, channel, amount])."""
    full = [tuple(r) + (None,) * (7 - len(r)) for r in rows]
    frame = pd.DataFrame(full, columns=["user_id", "age", "behavior", "item_id", "category_id", "channel", "amount"])
    frame["ts"] = [AS_OF - timedelta(days=a) for a in frame.pop("age")]
    frame["amount"] = frame["amount"].astype("float64")
    return frame


def by_user(features: pd.DataFrame) -> pd.DataFrame:
    return features.set_index("user_id")


def term(activity: float, scale: float = 5.0) -> float:
    return activity / (activity + scale)


def test_aipl_layers_and_rule_scores_by_hand():
    ev = events(
        [
            ("L", 10, "buy"), ("L", 200, "buy"),
            ("P_old_buy", 10, "buy"), ("P_old_buy", 400, "buy"),
            ("P_same_day", 2.2, "buy"), ("P_same_day", 2.9, "buy"),
            ("I", 80, "cart"),
            ("A_edge", 15, "view"),
            ("none", 16, "view"), ("none", 91, "fav"), ("none", 366, "buy"),
        ]
    )
    f = by_user(build_features(ev, AS_OF))
    expected = pd.DataFrame(
        {
            "aipl_layer": ["A", "I", "L", "P", "P", "none"],
            "rule_score": [
                1.0,                                            # at the 15-day edge: in A, decay weight 0
                2 + term(2 * (1 - 80 / 90)),
                4 + term(3 * ((1 - 10 / 365) + (1 - 200 / 365))),
                3 + term(3 * (1 - 10 / 365)),                   # the 400-day buy is outside every window
                3 + term(3 * ((1 - 2.2 / 365) + (1 - 2.9 / 365))),
                0.0,
            ],
        },
        index=pd.Index(["A_edge", "I", "L", "P_old_buy", "P_same_day", "none"], name="user_id"),
    )
    pd.testing.assert_frame_equal(f[["aipl_layer", "rule_score"]], expected, check_dtype=False, rtol=1e-12)


def test_rule_score_ranks_ad_over_active_over_neutral_over_passive_and_recent_over_old():
    ev = events(
        [
            ("ad", 0.01, "view", None, None, "ad"),
            ("search", 0.01, "view", None, None, "search"),
            ("organic", 0.01, "view"),
            ("recommend", 0.01, "view", None, None, "recommend"),
            ("older", 5, "view"),
        ]
    )
    s = by_user(build_features(ev, AS_OF))["rule_score"]
    assert s["ad"] > s["search"] > s["organic"] > s["recommend"]
    assert s["organic"] > s["older"]
    assert (s >= 1).all() and (s < 2).all()


def test_any_higher_layer_scores_above_every_lower_layer_even_at_extreme_activity():
    busy_p = [("busy_P", 0.001, "view", None, None, "ad")] * 3000 + [("busy_P", 0.001, "buy")] * 50
    ev = events(busy_p + [("quiet_L", 364, "buy"), ("quiet_L", 362, "buy")])
    s = by_user(build_features(ev, AS_OF))
    assert s.loc["busy_P", "aipl_layer"] == "P" and s.loc["quiet_L", "aipl_layer"] == "L"
    assert 3.99 < s.loc["busy_P", "rule_score"] < 4.0 < s.loc["quiet_L", "rule_score"]


def test_category_new_regular_and_target_counts():
    ev = events(
        [
            ("new", 10, "view", "a", "c1"), ("new", 3, "cart", "b", "c2"), ("new", 2, "view", "z", "c9"),
            ("edge", 30, "fav", "a", "c1"),
            ("old", 40, "view", "a", "c1"), ("old", 5, "view", "a", "c1"),
            ("regular", 5, "view", "a", "c2"), ("regular", 100, "buy", "a", "c1"),
            ("other", 1, "view", "z", "c9"), ("other", 1, "buy", "z", "c9"),
        ]
    )
    spec = FeatureSpec(target_categories=("c1", "c2"))
    f = by_user(build_features(ev, AS_OF, spec))
    cols = ["target_view_count", "target_cart_count", "target_buy_count", "category_new", "category_regular"]
    expected = pd.DataFrame(
        {
            "target_view_count": [0, 1, 2, 0, 1],
            "target_cart_count": [0, 1, 0, 0, 0],
            "target_buy_count": [0, 0, 0, 0, 1],
            "category_new": [1, 1, 0, 0, 0],
            "category_regular": [0, 0, 0, 0, 1],
        },
        index=pd.Index(["edge", "new", "old", "other", "regular"], name="user_id"),
    )
    pd.testing.assert_frame_equal(f[cols], expected)


def test_category_columns_only_exist_with_target_categories():
    assert "category_new" not in feature_columns(FeatureSpec())
    f = build_features(events([("u", 1, "view", "a", "c1")]), AS_OF)
    assert "category_new" not in f.columns and "target_view_count" not in f.columns


def test_population_any_event_and_lookback_restriction():
    ev = events([("recent", 1, "view"), ("edge", 30, "view"), ("stale", 31, "buy"), ("ancient", 900, "view")])
    assert build_features(ev, AS_OF).user_id.tolist() == ["ancient", "edge", "recent", "stale"]
    f = build_features(ev, AS_OF, FeatureSpec(lookback_days=30))
    assert f.user_id.tolist() == ["edge", "recent"]


@pytest.mark.parametrize("windows", [(3, 1), (0, 5), ()])
def test_spec_rejects_bad_windows(windows):
    from features.spec.definition import FeatureSpecError

    with pytest.raises(FeatureSpecError, match="windows"):
        FeatureSpec(windows=windows)
