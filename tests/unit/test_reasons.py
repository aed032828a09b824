"""Readable reasons (:mod:`serving.reasons`): phrases with the user's values, read on hand-built feature rows."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from features.segments.segmenter import encode_segments
from features.spec.definition import FeatureSpec, feature_columns
from serving.reasons import columns_read, phrase, reason_text, reason_texts
from training.btyd.features import OUTPUT_COLUMNS, BTYDFeatures

SPEC = FeatureSpec()
CATEGORY_SPEC = FeatureSpec(target_categories=("c1",))


def every_name() -> list[str]:
    """Every feature column of the default spec, the target-category columns, the BTYD design-matrix columns and
    outputs, and the segment codes of the design matrix."""
    segments = encode_segments(pd.DataFrame({"aipl_layer": ["P"], "lifecycle": ["new"], "rfm_group": ["lost"]}))
    names = [*feature_columns(SPEC), *feature_columns(CATEGORY_SPEC), *BTYDFeatures().columns, *OUTPUT_COLUMNS,
             *segments.columns, "aipl_layer", "lifecycle", "rfm_group"]
    return list(dict.fromkeys(names))


def typical(name: str) -> object:
    """A plausible value for a feature: days, counts, shares, ratios, money, labels."""
    if name == "next_order_date":
        return "2026-07-30"
    if name in ("aipl_layer", "lifecycle", "rfm_group"):
        return {"aipl_layer": "P", "lifecycle": "growth", "rfm_group": "at_risk_big"}[name]
    if "share" in name or "survival" in name or "p_alive" in name or "p_purchase" in name:
        return 0.37
    if "trend" in name:
        return -0.42
    if name.endswith("_code"):
        return 2.0
    return 3.0


# ------------------------------------------------------------------------------------------------- the issue's examples
def test_the_issue_examples_read_exactly() -> None:
    assert phrase("cart_count_1d", {"cart_count_1d": 2}) == "carted 2 items in the last day"
    row = {"days_since_last_visit": 19.0, "active_gap_mean_days": 4.2}
    assert phrase("days_since_last_visit", row) == "no visit for 19 days, usually every 4"
    assert reason_text("cart_count_1d", {"cart_count_1d": 2.0}) == "carted 2 items in the last day (cart_count_1d)"


@pytest.mark.parametrize(
    ("feature", "row", "expected"),
    [
        ("cart_count_1d", {"cart_count_1d": 1}, "carted 1 item in the last day"),
        ("cart_count_7d", {"cart_count_7d": 0}, "carted nothing in the last 7 days"),
        ("visit_count_30d", {"visit_count_30d": 12.0}, "visited 12 times in the last 30 days"),
        ("event_count_365d", {"event_count_365d": 1234}, "1,234 events in the last 365 days"),
        ("ad_count_3d", {"ad_count_3d": 2}, "came from ads 2 times in the last 3 days"),
        ("days_since_last_cart", {"days_since_last_cart": 0.25}, "carted an item 6 hours ago"),
        ("days_since_last_cart", {"days_since_last_cart": 0.01}, "carted an item less than an hour ago"),
        ("days_since_last_view", {"days_since_last_view": 2.54}, "viewed an item 2.5 days ago"),
        ("days_since_last_visit", {"days_since_last_visit": 19.0}, "visited 19 days ago"),  # no rhythm known
        ("days_since_last_buy", {"days_since_last_buy": 40.0, "purchase_gap_mean_days": 30.4},
         "no purchase for 40 days, usually every 30"),
        ("days_since_last_event", {"days_since_last_event": 3.0, "active_gap_mean_days": 1.2},
         "no activity for 3 days, usually daily"),
        ("days_since_first_event", {"days_since_first_event": 120.0}, "first seen 120 days ago"),
        ("active_days_30d", {"active_days_30d": 5}, "active on 5 days of the last 30 days"),
        ("carts_unbought_90d", {"carts_unbought_90d": 3}, "3 carted items not bought, from the last 90 days"),
        ("favcart_count_1d", {"favcart_count_1d": 2}, "favorited or carted 2 items in the last day"),
        ("active_channel_share_30d", {"active_channel_share_30d": 0.6},
         "60% of events from search or ads in the last 30 days"),
        ("decay_interest", {"decay_interest": 1.44}, "recency-weighted favorites and carts: 1.4"),
        ("decay_purchase", {"decay_purchase": 0.0}, "no recent purchases"),
        ("amount_365d", {"amount_365d": 120.5}, "spent 120.50 in the last 365 days"),
        ("purchase_gap_mean_days", {"purchase_gap_mean_days": 12.25}, "buys every 12.2 days on average"),
        ("repurchase_cycle_ratio",
         {"repurchase_cycle_ratio": 1.33, "days_since_last_buy": 40.0, "purchase_gap_mean_days": 30.0},
         "1.3x the usual gap since the last purchase (40 days, usually every 30)"),
        ("active_survival", {"active_survival": 0.42}, "42% chance of a break this long at the user's usual pace"),
        ("cart_trend_7d_vs_28d", {"cart_trend_7d_vs_28d": 0.4}, "carts up in the last 7 days vs the 28 before (+0.40)"),
        ("view_trend_7d_vs_28d", {"view_trend_7d_vs_28d": 0.0}, "views steady over the last 35 days"),
        ("rule_score", {"rule_score": 3.456, "aipl_layer": "P"}, "rule score 3.46, AIPL layer P (purchased)"),
        ("rule_score", {"rule_score": 2.5}, "rule score 2.50, AIPL layer I (interested: favorited or carted)"),
        ("aipl_code", {"aipl_code": 4.0}, "AIPL layer L (loyal: repeat buyer)"),
        ("rfm_code", {"rfm_code": 0.0, "rfm_group": "at_risk_big"}, "RFM group at risk big"),
        ("btyd_p_alive", {"btyd_p_alive": 0.72}, "72% likely still a customer"),
        ("btyd_p_purchase_3d", {"btyd_p_purchase_3d": 0.004}, "under 1% chance of buying in the next 3 days"),
        ("btyd_expected_30d", {"btyd_expected_30d": 0.04}, "expects 0.04 purchases in the next 30 days"),
        ("btyd_clv_365d", {"btyd_clv_365d": 240.0}, "expected spend 240.00 in the next 365 days"),
        ("expected_purchases_90d", {"expected_purchases_90d": 1.25}, "expects 1.2 purchases in the next 90 days"),
        ("category_new", {"category_new": 1}, "new to the target categories"),
        ("target_buy_count", {"target_buy_count": 2}, "bought 2 items in the target categories"),
    ],
)
def test_phrases_carry_the_users_values(feature: str, row: dict[str, object], expected: str) -> None:
    assert phrase(feature, row) == expected


# ------------------------------------------------------------------------------------------------- missing values
@pytest.mark.parametrize(
    ("feature", "expected"),
    [
        ("days_since_last_buy", "never bought"),
        ("days_since_last_cart", "never carted an item"),
        ("days_since_first_visit", "never visited"),
        ("purchase_gap_mean_days", "no repeat purchase yet"),
        ("repurchase_cycle_ratio", "no repeat purchase yet"),
        ("active_gap_median_days", "active on one day only"),
        ("passive_channel_share_30d", "no channel recorded in the last 30 days"),
        ("amount_mean", "no known purchase amount"),
        ("btyd_p_alive", "no purchase history"),
        ("next_order_date", "no next order expected"),
    ],
)
def test_a_missing_value_reads_never_or_what_it_means(feature: str, expected: str) -> None:
    for missing in (None, float("nan"), np.float64("nan"), pd.NA):
        assert phrase(feature, {feature: missing}) == expected


def test_a_missing_context_value_drops_the_context_not_the_phrase() -> None:
    row = {"days_since_last_visit": 19.0, "active_gap_mean_days": float("nan")}
    assert phrase("days_since_last_visit", row) == "visited 19 days ago"
    assert phrase("days_since_last_visit", {"days_since_last_visit": 19.0}) == "visited 19 days ago"
    ratio = phrase("repurchase_cycle_ratio", {"repurchase_cycle_ratio": 2.0})
    assert ratio == "2.0x the usual gap since the last purchase"


def test_unknown_features_and_unreadable_values_fall_back_to_name_and_value() -> None:
    assert phrase("shoe_size", {"shoe_size": 42.0}) == "shoe_size = 42"
    assert phrase("shoe_size", {"shoe_size": 0.123456}) == "shoe_size = 0.123"
    assert phrase("shoe_size", {}) == "shoe_size: no value"
    assert phrase("shoe_size", {"shoe_size": "wide"}) == "shoe_size = wide"
    assert phrase("cart_count_1d", {"cart_count_1d": "lots"}) == "cart_count_1d = lots"  # never raises
    assert phrase("days_since_last_buy", {"days_since_last_buy": math.inf}) == "days_since_last_buy = inf"


# ------------------------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("name", every_name())
def test_every_feature_of_the_spec_and_btyd_has_its_own_phrase(name: str) -> None:
    """Every column gets a non-empty phrase of its family (not the generic fallback) for a typical value and for a
    missing one, with no 'nan' and no raw float noise."""
    for value in (typical(name), None, 0.0):
        row = {name: value, "aipl_layer": "P", "lifecycle": "growth", "rfm_group": "lost",
               "days_since_last_buy": 10.0, "purchase_gap_mean_days": 7.0, "days_since_last_event": 2.0,
               "active_gap_mean_days": 3.0}
        text = phrase(name, row)
        assert text and text.strip() == text, (name, value)
        assert not re.search(r"\bnan\b|\bnone\b(?! \(no recent)", text.lower()), (name, value, text)
        assert f"{name} =" not in text and f"{name}:" not in text, (name, value, text)
        assert "000000" not in text, (name, value, text)
        assert columns_read(name)[0] == name


def test_batch_phrasing_equals_one_row_phrasing() -> None:
    """:func:`reason_texts` over column arrays gives the :func:`reason_text` of each user's own row."""
    columns = {
        "cart_count_1d": np.array([2.0, 0.0, 2.0]),
        "days_since_last_visit": np.array([19.0, np.nan, 19.0]),
        "active_gap_mean_days": np.array([4.2, np.nan, 4.2]),
        "aipl_layer": np.array(["P", "none", "P"], dtype=object),
    }
    names = [["cart_count_1d", "days_since_last_visit"], ["days_since_last_visit", "aipl_layer"], []]
    got = reason_texts(names, columns)
    for i, features in enumerate(names):
        row = {c: v[i] for c, v in columns.items()}
        assert got[i] == [reason_text(f, row) for f in features]
    assert got[0] == ["carted 2 items in the last day (cart_count_1d)",
                      "no visit for 19 days, usually every 4 (days_since_last_visit)"]
    assert got[1] == ["never visited (days_since_last_visit)", "AIPL layer none (no recent activity) (aipl_layer)"]
    assert got[2] == []
    assert reason_texts([["unknown_col"]], {}) == [["unknown_col: no value (unknown_col)"]]
