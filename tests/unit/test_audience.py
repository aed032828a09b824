"""Audience sizing on hand-built recommended frames where the best cut is known."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from serving.activation.actions import ActivationConfig, ActivationError, recommend
from serving.activation.audiences import select_audience

CFG = ActivationConfig(cost={"coupon_24h": 3.0, "ad_retarget": 0.0})


def pool(values: list[float], action: str = "coupon_24h", p: list[float] | None = None) -> pd.DataFrame:
    """Users u0.. with the given expected values (= priority), revenue = value / 0.3, p defaults to 0.5."""
    n = len(values)
    return pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in range(n)],
            "action": [action] * n,
            "priority": values,
            "expected_value": values,
            "expected_revenue": [v / 0.3 for v in values],
            "action_p": p if p is not None else [0.5] * n,
            "incremental_p": [0.15 * x for x in p] if p is not None else [0.075] * n,
        }
    )


def ids(frame: pd.DataFrame) -> list[str]:
    return frame["user_id"].tolist()


def test_max_profit_keeps_users_worth_more_than_the_cost():
    chosen, summary = select_audience(pool([1.0, 5.0, 3.5, 2.0, 4.0]), "coupon_24h", CFG)
    assert ids(chosen) == ["u1", "u4", "u2"]
    assert chosen["audience_rank"].tolist() == [1, 2, 3]
    assert summary.rule == "max_profit"
    assert summary.size == 3 and summary.candidates == 5
    assert summary.total_cost == 9.0
    assert summary.expected_value == pytest.approx(12.5)
    assert summary.expected_profit == pytest.approx(3.5)


def test_a_user_worth_exactly_the_cost_is_left_out():
    chosen, summary = select_audience(pool([4.0, 3.0]), "coupon_24h", CFG)
    assert ids(chosen) == ["u0"] and summary.expected_profit == pytest.approx(1.0)


def test_nobody_worth_it_gives_an_empty_audience():
    chosen, summary = select_audience(pool([2.9, 1.0, 0.0]), "coupon_24h", CFG)
    assert len(chosen) == 0 and summary.size == 0
    assert (summary.total_cost, summary.expected_profit, summary.expected_incremental) == (0.0, 0.0, 0.0)
    assert math.isnan(summary.untreated_rate)
    assert summary.to_dict()["untreated_rate"] is None


def test_everyone_worth_it_gives_everyone():
    chosen, summary = select_audience(pool([3.1, 9.0, 4.0]), "coupon_24h", CFG)
    assert ids(chosen) == ["u1", "u2", "u0"]
    assert summary.expected_profit == pytest.approx(16.1 - 9.0)


def test_only_users_with_the_action_are_candidates_and_ties_break_by_user_id():
    frame = pd.concat([pool([5.0, 5.0, 5.0]), pool([50.0], action="win_back").assign(user_id="w0")])
    frame = frame.iloc[[3, 2, 0, 1]]
    chosen, summary = select_audience(frame, "coupon_24h", CFG)
    assert ids(chosen) == ["u0", "u1", "u2"] and summary.candidates == 3


def test_summary_sums_probabilities_revenue_and_value():
    _chosen, summary = select_audience(pool([6.0, 4.0, 1.0], p=[0.6, 0.2, 0.9]), "coupon_24h", CFG)
    assert summary.size == 2
    assert summary.expected_untreated == pytest.approx(0.8)
    assert summary.expected_incremental == pytest.approx(0.15 * 0.8)  # caused by the action, not the untreated course
    assert summary.untreated_rate == pytest.approx(0.4)
    assert (summary.lift, summary.lift_source) == (0.15, "prior")
    assert summary.expected_revenue == pytest.approx(10.0 / 0.3)
    assert summary.cost_per_user == 3.0 and summary.action == "coupon_24h"


@pytest.mark.parametrize(("budget", "expected"), [(10.0, 3), (9.0, 3), (8.99, 2), (0.0, 0), (100.0, 4)])
def test_budget_takes_the_best_users_whose_total_cost_fits(budget, expected):
    chosen, summary = select_audience(pool([5.0, 4.0, 1.0, 0.5]), "coupon_24h", CFG, budget=budget)
    assert summary.size == expected and summary.total_cost <= budget
    assert ids(chosen) == ["u0", "u1", "u2", "u3"][:expected]
    assert summary.rule == "budget" and summary.budget == budget


def test_budget_with_profitable_only_stops_at_the_profit_cut():
    _, summary = select_audience(pool([5.0, 4.0, 1.0, 0.5]), "coupon_24h", CFG, budget=100.0, profitable_only=True)
    assert summary.size == 2 and summary.expected_profit == pytest.approx(3.0)
    assert summary.rule == "max_profit+budget"


def test_free_action_fits_any_budget():
    _, summary = select_audience(pool([0.2, 0.1], action="ad_retarget"), "ad_retarget", CFG, budget=0.0)
    assert summary.size == 2 and summary.total_cost == 0.0


@pytest.mark.parametrize(("k", "expected"), [(2, ["u1", "u0"]), (0, []), (10, ["u1", "u0", "u2"])])
def test_top_k_takes_the_best_k(k, expected):
    chosen, summary = select_audience(pool([2.0, 7.0, 1.0]), "coupon_24h", CFG, top_k=k)
    assert ids(chosen) == expected and summary.rule == "top_k" and summary.top_k == k


def test_budget_and_top_k_together_take_the_tighter():
    values = [9.0, 8.0, 7.0, 6.0]
    assert select_audience(pool(values), "coupon_24h", CFG, budget=6.0, top_k=3)[1].size == 2
    _, summary = select_audience(pool(values), "coupon_24h", CFG, budget=60.0, top_k=3)
    assert summary.size == 3 and summary.rule == "budget+top_k"


def test_selection_on_recommend_output():
    as_of = datetime(2024, 3, 1, tzinfo=UTC)
    base = {"p_lapse": np.nan, "aipl_layer": "I", "rfm_group": "no_purchase", "days_since_last_fav": np.nan,
            "days_since_last_ad": np.nan, "days_since_last_buy": np.nan, "days_since_last_event": 0.1,
            "purchase_gap_mean_days": np.nan, "purchase_days": 0, "amount_mean": 100.0, "amount_365d": 0.0,
            "purchase_days_365d": 0}
    # incremental: p_buy x lift 0.15 x 100 x 0.3 x urgency vs coupon cost 0.5: u0 0.9, u1 0.225, u2 0.675 (half the
    # window left)
    scored = pd.DataFrame([
        {"user_id": "u0", "p_buy": 0.2, "days_since_last_cart": 0.0, **base},
        {"user_id": "u1", "p_buy": 0.05, "days_since_last_cart": 0.0, **base},
        {"user_id": "u2", "p_buy": 0.3, "days_since_last_cart": 0.5, **base},
    ])
    cfg = ActivationConfig(cost={"coupon_24h": 0.5})
    chosen, summary = select_audience(recommend(scored, as_of, cfg), "coupon_24h", cfg)
    assert ids(chosen) == ["u0", "u2"]
    assert summary.expected_profit == pytest.approx(0.9 + 0.675 - 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "none"}, "unknown action"),
        ({"action": "coupon"}, "unknown action"),
        ({"budget": -1.0}, "budget must be"),
        ({"budget": float("nan")}, "budget must be"),
        ({"top_k": -1}, "top_k must be"),
        ({"top_k": True}, "top_k must be"),
        ({"top_k": 2.5}, "top_k must be"),
    ],
)
def test_bad_arguments_raise_readable_errors(kwargs, message):
    args = {"action": "coupon_24h", **kwargs}
    action = args.pop("action")
    with pytest.raises(ActivationError, match=message):
        select_audience(pool([1.0]), action, CFG, **args)


def test_frame_without_recommend_columns_is_refused():
    with pytest.raises(ActivationError, match="propensity score"):
        select_audience(pool([1.0]).drop(columns="priority"), "coupon_24h", CFG)
