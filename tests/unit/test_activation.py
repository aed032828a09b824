"""Activation rules on hand-built scored frames: window boundaries, precedence, priority and deadlines.

Convention under test: windows are half-open ``[opens, closes)``; at the closing moment the action is gone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from propensity.config import ActivationSettings
from serving.activation.actions import (
    ACTIONS,
    OUTPUT_COLUMNS,
    VALUABLE_RFM_GROUPS,
    ActivationConfig,
    ActivationError,
    recommend,
)

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
NAN = np.nan
MINUTE = 1 / 1440
CFG = ActivationConfig()

BASE = {
    "p_buy": 0.5,
    "p_lapse": NAN,
    "aipl_layer": "none",
    "rfm_group": "no_purchase",
    "days_since_last_fav": NAN,
    "days_since_last_cart": NAN,
    "days_since_last_ad": NAN,
    "days_since_last_buy": NAN,
    "days_since_last_event": 40.0,
    "purchase_gap_mean_days": NAN,
    "purchase_days": 0,
    "amount_mean": NAN,
    "amount_365d": 0.0,
    "purchase_days_365d": 0,
}


def frame(*rows: dict) -> pd.DataFrame:
    """One user per dict (overrides of BASE); user ids u0, u1, ..."""
    return pd.DataFrame([{"user_id": f"u{i}", **BASE, **r} for i, r in enumerate(rows)])


def one(cfg: ActivationConfig = CFG, as_of: datetime = AS_OF, **row) -> pd.Series:
    return recommend(frame(row), as_of, cfg).iloc[0]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- coupon_24h -----------------------------------------------------------------------------------------------------


def test_cart_exactly_24h_ago_is_outside_and_23h59m_is_inside():
    out = recommend(frame({"days_since_last_cart": 1.0}, {"days_since_last_cart": 1.0 - MINUTE}), AS_OF)
    assert list(out["action"]) == ["none", "coupon_24h"]
    assert out["action_deadline"].iloc[0] is None
    assert out["action_deadline"].iloc[1] == iso(AS_OF + timedelta(minutes=1))
    assert out["urgency"].iloc[1] == pytest.approx(1 / 1440)


def test_coupon_deadline_runs_from_the_latest_fav_or_cart():
    row = one(days_since_last_fav=2 / 24, days_since_last_cart=20 / 24)
    assert row["action"] == "coupon_24h"
    assert row["action_deadline"] == iso(AS_OF + timedelta(hours=22))
    assert row["urgency"] == pytest.approx(22 / 24)


def test_fav_alone_triggers_the_coupon():
    assert one(days_since_last_fav=0.5)["action"] == "coupon_24h"


def test_purchase_after_the_cart_cancels_the_coupon_but_one_before_it_does_not():
    out = recommend(
        frame(
            {"days_since_last_cart": 0.5, "days_since_last_buy": 0.2},
            {"days_since_last_cart": 0.5, "days_since_last_buy": 0.5},
            {"days_since_last_cart": 0.5, "days_since_last_buy": 0.7},
        ),
        AS_OF,
    )
    assert list(out["action"]) == ["none", "none", "coupon_24h"]


# --- ad_retarget ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "expected", "urgency"),
    [(0.9, "none", 0.0), (1.0, "ad_retarget", 1.0), (2.0, "ad_retarget", 0.5), (3.0, "none", 0.0),
     (3.01, "none", 0.0)],
)
def test_ad_click_window_is_one_to_three_days(age, expected, urgency):
    row = one(days_since_last_ad=age)
    assert row["action"] == expected
    assert row["urgency"] == pytest.approx(urgency)


def test_ad_retarget_deadline_is_three_days_after_the_click():
    row = one(days_since_last_ad=1.25)
    assert row["action_deadline"] == iso(AS_OF + timedelta(days=1.75))


def test_purchase_after_the_ad_click_cancels_retargeting():
    assert one(days_since_last_ad=2.0, days_since_last_buy=1.0)["action"] == "none"
    assert one(days_since_last_ad=2.0, days_since_last_buy=5.0)["action"] == "ad_retarget"


# --- repurchase_reminder --------------------------------------------------------------------------------------------

BUYER = {"aipl_layer": "L", "purchase_gap_mean_days": 10.0, "purchase_days": 3, "rfm_group": "promising"}


@pytest.mark.parametrize(
    ("days", "expected"),
    [(7.99, "none"), (8.0, "repurchase_reminder"), (11.99, "repurchase_reminder"), (12.0, "none")],
)
def test_repurchase_band_edges(days, expected):
    assert one(**BUYER, days_since_last_buy=days)["action"] == expected


def test_repurchase_deadline_is_last_purchase_plus_1_2_gaps():
    row = one(**BUYER, days_since_last_buy=9.0)
    assert row["action_deadline"] == iso(AS_OF + timedelta(days=3))  # bought 9 d ago, closes 12 d after
    assert row["urgency"] == pytest.approx(3 / 4)  # window is 0.8..1.2 x 10 d = 4 d long, 3 d left


def test_repurchase_needs_a_p_or_l_user_with_a_known_gap():
    assert one(**{**BUYER, "aipl_layer": "P"}, days_since_last_buy=10.0)["action"] == "repurchase_reminder"
    assert one(**{**BUYER, "aipl_layer": "I"}, days_since_last_buy=10.0)["action"] == "none"
    assert one(**{**BUYER, "purchase_gap_mean_days": NAN}, days_since_last_buy=10.0)["action"] == "none"


# --- win_back -------------------------------------------------------------------------------------------------------

LAPSING = {"aipl_layer": "P", "rfm_group": "at_risk_big", "p_lapse": 0.5, "amount_365d": 200.0,
           "purchase_days": 1, "purchase_days_365d": 1, "days_since_last_buy": 100.0}


def test_win_back_at_the_lapse_threshold_with_deadline_and_value():
    row = one(**LAPSING)
    assert row["action"] == "win_back"
    assert row["action_deadline"] == iso(AS_OF + timedelta(days=7))
    assert row["urgency"] == 1.0
    assert row["action_p"] == 0.5
    # incremental: the prior saves 10% of would-be lapsers, never the whole revenue at risk (0.5 x 200)
    assert (row["lift"], row["incremental_p"]) == (0.10, pytest.approx(0.05))
    assert row["expected_value"] == pytest.approx(0.5 * 0.10 * 200.0 * 0.3)
    assert row["expected_profit"] == pytest.approx(3.0 - 2.0)


def test_win_back_below_threshold_or_low_value_group_gets_nothing():
    assert one(**{**LAPSING, "p_lapse": 0.49})["action"] == "none"
    assert one(**{**LAPSING, "rfm_group": "promising"})["action"] == "none"  # only R high
    assert one(**{**LAPSING, "rfm_group": "lost"})["action"] == "none"
    assert one(**{**LAPSING, "p_lapse": NAN})["action"] == "none"


def test_valuable_rfm_groups_are_those_with_frequency_or_monetary_high():
    assert {
        "champions", "loyal_low_spend", "big_spenders_new", "at_risk_big", "at_risk_loyal", "hibernating_big"
    } == VALUABLE_RFM_GROUPS


def test_win_back_value_without_amounts_uses_purchase_days_times_default_order_value():
    row = one(**{**LAPSING, "amount_365d": NAN, "purchase_days_365d": 2})
    assert row["expected_revenue"] == pytest.approx(0.5 * 0.10 * 2 * 60.0)


# --- nurture --------------------------------------------------------------------------------------------------------


def test_nurture_a_user_without_purchase_until_they_leave_the_a_window():
    row = one(aipl_layer="A", days_since_last_event=5.0)
    assert row["action"] == "nurture"
    assert row["action_deadline"] == iso(AS_OF + timedelta(days=10))
    assert row["urgency"] == pytest.approx(10 / 15)
    assert one(aipl_layer="A", days_since_last_event=5.0, purchase_days=1)["action"] == "none"
    assert one(aipl_layer="I", days_since_last_event=5.0)["action"] == "none"
    assert one(aipl_layer="A", days_since_last_event=15.0 - MINUTE)["action"] == "nurture"
    assert one(aipl_layer="A", days_since_last_event=15.0)["action"] == "none"  # the A window has closed


def test_nurture_with_target_categories_uses_the_category_new_flag():
    rows = frame(
        {"aipl_layer": "A", "days_since_last_event": 2.0, "category_new": 1, "purchase_days": 1},
        {"aipl_layer": "A", "days_since_last_event": 2.0, "category_new": 0},
    )
    assert list(recommend(rows, AS_OF)["action"]) == ["nurture", "none"]


# --- precedence -----------------------------------------------------------------------------------------------------

EVERYTHING = {
    **LAPSING,
    "aipl_layer": "L",
    "purchase_gap_mean_days": 10.0,
    "days_since_last_buy": 10.0,
    "days_since_last_cart": 0.25,
    "days_since_last_ad": 2.0,
    "days_since_last_event": 0.25,
}


def test_first_matching_rule_wins_in_the_documented_order():
    steps = [
        ({}, "coupon_24h"),
        ({"days_since_last_cart": NAN}, "ad_retarget"),
        ({"days_since_last_ad": NAN}, "repurchase_reminder"),
        ({"purchase_gap_mean_days": NAN}, "win_back"),
    ]
    row = dict(EVERYTHING)
    for change, expected in steps:
        row.update(change)
        assert one(**row)["action"] == expected
    assert tuple(ACTIONS) == ("coupon_24h", "ad_retarget", "repurchase_reminder", "win_back", "nurture")


def test_a_user_both_nurture_and_ad_gets_the_ad():
    assert one(aipl_layer="A", days_since_last_event=1.5, days_since_last_ad=1.5)["action"] == "ad_retarget"


# --- priority -------------------------------------------------------------------------------------------------------


def test_expected_value_formula_and_default_order_value():
    out = recommend(
        frame(
            {"days_since_last_cart": 0.25, "p_buy": 0.4, "amount_mean": 100.0},
            {"days_since_last_cart": 0.25, "p_buy": 0.4},  # no order value: default 60
            {"days_since_last_cart": 0.25, "p_buy": 0.4, "amount_mean": 0.0},  # non-positive: default 60
        ),
        AS_OF,
    )
    lift = 0.15  # coupon_24h prior: +15% over the untreated purchase rate
    assert out["incremental_p"].tolist() == pytest.approx([0.4 * lift] * 3)
    assert out["expected_value"].tolist() == pytest.approx(
        [0.4 * lift * 100 * 0.3 * 0.75, 0.4 * lift * 60 * 0.3 * 0.75, 0.4 * lift * 60 * 0.3 * 0.75]
    )
    assert out["expected_revenue"].iloc[0] == pytest.approx(0.4 * lift * 100 * 0.75)
    assert out["priority"].tolist() == out["expected_value"].tolist()
    assert out["expected_profit"].tolist() == pytest.approx((out["expected_value"] - 3.0).tolist())


def test_priority_falls_to_zero_as_the_deadline_approaches():
    ages = [0.0, 0.25, 0.5, 0.75, 1.0 - 1 / 86400]
    out = recommend(frame(*({"days_since_last_cart": a} for a in ages)), AS_OF)
    assert (out["action"] == "coupon_24h").all()
    assert np.all(np.diff(out["priority"].to_numpy()) < 0)
    assert out["priority"].iloc[0] == pytest.approx(0.5 * 0.15 * 60 * 0.3)
    assert out["priority"].iloc[-1] == pytest.approx(0.5 * 0.15 * 60 * 0.3 / 86400)


def test_higher_p_buy_ranks_higher_at_equal_urgency():
    out = recommend(frame({"days_since_last_ad": 2.0, "p_buy": 0.2}, {"days_since_last_ad": 2.0, "p_buy": 0.6}), AS_OF)
    assert out["priority"].iloc[1] == pytest.approx(3 * out["priority"].iloc[0])


def test_none_users_have_zero_value_and_no_cost():
    row = one()
    assert row["action"] == "none"
    assert (row["expected_value"], row["action_cost"], row["priority"], row["urgency"]) == (0.0, 0.0, 0.0, 0.0)
    assert (row["lift"], row["incremental_p"]) == (0.0, 0.0)
    assert np.isnan(row["action_p"])


def test_a_measured_lift_replaces_the_prior_and_says_so():
    cfg = ActivationConfig(lift={"win_back": 0.3}, lift_source={"win_back": "measured"})
    row = recommend(frame(LAPSING), AS_OF, cfg).iloc[0]
    assert row["expected_value"] == pytest.approx(0.5 * 0.3 * 200.0 * 0.3)
    assert cfg.lift_source["win_back"] == "measured" and cfg.lift_source["coupon_24h"] == "prior"
    assert cfg.lift_of("coupon_24h") == 0.15 and cfg.lift_of("none") == 0.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lift": {"teleport": 0.1}}, "unknown action"),
    ({"lift": {"win_back": 1.5}}, "lifts must be in"),
    ({"lift": {"coupon_24h": float("nan")}}, "lifts must be in"),
    ({"lift_source": {"coupon_24h": "guess"}}, "lift_source"),
])
def test_bad_lifts_are_refused(kwargs, message):
    with pytest.raises(ActivationError, match=message):
        ActivationConfig(**kwargs)


# --- acting later than the feature cutoff ---------------------------------------------------------------------------


def test_acting_after_the_cutoff_ages_every_trigger():
    scored = frame({"days_since_last_cart": 0.5 / 24}, {"days_since_last_cart": 23.5 / 24})
    scored["as_of"] = pd.Timestamp(AS_OF).isoformat()
    later = recommend(scored, AS_OF + timedelta(hours=23))
    assert list(later["action"]) == ["coupon_24h", "none"]
    assert later["action_deadline"].iloc[0] == iso(AS_OF + timedelta(hours=23.5))
    with pytest.raises(ActivationError, match="before the features' cutoff"):
        recommend(scored, AS_OF - timedelta(hours=1))


def test_naive_as_of_is_utc():
    assert one(as_of=AS_OF.replace(tzinfo=None), days_since_last_ad=2.0)["action_deadline"] == "2024-03-02T00:00:00Z"


# --- frame handling and errors --------------------------------------------------------------------------------------


def test_output_keeps_rows_index_and_input_untouched():
    scored = frame({"days_since_last_ad": 2.0}, {}).set_axis([10, 20])
    before = scored.copy()
    out = recommend(scored, AS_OF)
    pd.testing.assert_frame_equal(scored, before)
    assert list(out.index) == [10, 20]
    assert list(out.columns[-len(OUTPUT_COLUMNS):]) == list(OUTPUT_COLUMNS)


def test_empty_frame_gives_empty_output_with_the_columns():
    out = recommend(frame({}).iloc[:0], AS_OF)
    assert len(out) == 0 and set(OUTPUT_COLUMNS) <= set(out.columns)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": "days_since_last_ad"}, "keep_features=True"),
        ({"aipl_layer": "X"}, "unknown aipl_layer"),
        ({"p_buy": NAN}, "p_buy is null"),
        ({"p_buy": 1.5}, r"p_buy must be a probability"),
        ({"days_since_last_cart": "yesterday"}, "must be numeric"),
    ],
)
def test_bad_scored_frames_raise_readable_errors(change, message):
    scored = frame({})
    if "drop" in change:
        scored = scored.drop(columns=change["drop"])
    else:
        for k, v in change.items():
            scored[k] = pd.Series([v], dtype=object)
    with pytest.raises(ActivationError, match=message):
        recommend(scored, AS_OF)


def test_as_of_must_be_a_datetime():
    with pytest.raises(ActivationError, match="as_of must be a datetime"):
        recommend(frame({}), "2024-03-01")  # type: ignore[arg-type]


# --- config ---------------------------------------------------------------------------------------------------------


def test_config_from_settings_merges_partial_costs_and_validates():
    cfg = ActivationConfig.from_settings(ActivationSettings(margin_rate=0.5, cost={"coupon_24h": 5.0}), win_back_days=3)
    assert cfg.margin_rate == 0.5 and cfg.win_back_days == 3
    assert cfg.cost["coupon_24h"] == 5.0 and cfg.cost["nurture"] == 0.05
    assert hash(cfg) == hash(ActivationConfig.from_settings(ActivationSettings(margin_rate=0.5,
                                                                               cost={"coupon_24h": 5.0}),
                                                            win_back_days=3))
    with pytest.raises(ActivationError, match="unknown action"):
        ActivationConfig(cost={"coupon": 1.0})
    with pytest.raises(ActivationError, match="margin_rate"):
        ActivationConfig(margin_rate=1.5)
    with pytest.raises(ActivationError, match="cycle_band"):
        ActivationConfig(cycle_band=(1.2, 0.8))
    with pytest.raises(ActivationError, match="must be a number"):
        ActivationConfig(cost={"nurture": "cheap"})
    with pytest.raises(ActivationError, match="unknown ActivationConfig"):
        ActivationConfig.from_settings({}, cupon=1)


def test_configured_windows_move_the_boundaries():
    cfg = ActivationConfig(coupon_window_hours=48, ad_window_days=(0.5, 2.0), cycle_band=(0.9, 1.1))
    assert one(cfg, days_since_last_cart=1.5)["action"] == "coupon_24h"
    assert one(cfg, days_since_last_ad=0.5)["action"] == "ad_retarget"
    assert one(cfg, days_since_last_ad=2.0)["action"] == "none"
    assert one(cfg, **BUYER, days_since_last_buy=8.5)["action"] == "none"
