"""Outcome reads on hand-built campaigns and events where every count is known; the interval formulas against
published values; lift shrinkage."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from serving.activation.campaigns import CONTROL, TREATMENT, Campaign, build_campaign
from serving.activation.outcomes import CLOSED, IN_PROGRESS, OutcomeError, measure, playbook_kpis
from serving.activation.stats import log_ratio_interval, newcombe_difference, shrunk_lift, wilson_interval

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
CLOSE = AS_OF + timedelta(days=7)


def make_campaign(action: str = "coupon_24h", n: int = 400, **extra: object) -> Campaign:
    frame = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)], "action": action, "action_p": 0.3, "priority": 1.0,
        "expected_profit": 0.5, "aipl_layer": ["P", "I", "A", "L"] * (n // 4), "rfm_group": "loyal",
    })
    for name, value in extra.items():
        frame[name] = value
    return build_campaign(
        frame, action=action, as_of=AS_OF, created_at=AS_OF, window_days=7, control_share=0.5, cost_per_user=2.0,
        model_versions={"last_mile_buyer": "1"}, snapshot_id="s", selection_rule={"rule": "top_k", "top_k": n},
        lift_used={"value": 0.1, "source": "prior", "n": None}, min_control=0,
    )


def users(campaign: Campaign, group: str) -> list[str]:
    members = campaign.members
    return members.loc[members["group"] == group, "user_id"].tolist()


def events(rows: list[tuple[str, float, str, float | None]]) -> pd.DataFrame:
    """Rows of (user, hours after AS_OF, behavior, amount)."""
    return pd.DataFrame({
        "user_id": [r[0] for r in rows],
        "ts": [pd.Timestamp(AS_OF) + pd.Timedelta(hours=r[1]) for r in rows],
        "behavior": [r[2] for r in rows],
        "amount": [np.nan if r[3] is None else r[3] for r in rows],
    })


def read(campaign: Campaign, frame: pd.DataFrame, end: datetime = CLOSE, **kw: float):
    return measure(campaign, frame, events_end=end, margin_rate=kw.get("margin", 0.3),
                   order_value_default=kw.get("default", 60.0))


def test_closed_campaign_counts_rates_interval_and_money():
    c = make_campaign()
    t, k = users(c, TREATMENT), users(c, CONTROL)
    rows = [(u, 5.0, "buy", 40.0 if i % 2 else 80.0) for i, u in enumerate(t[:60])]
    rows += [(u, 20.0, "buy", 100.0) for u in k[:20]] + [(u, 1.0, "view", None) for u in t[60:90]]
    r = read(c, events(rows))
    nt, nk = len(t), len(k)
    assert r.status == CLOSED and r.days_elapsed == 7.0
    assert (r.groups[TREATMENT].users, r.groups[TREATMENT].conversions) == (nt, 60)
    assert (r.groups[CONTROL].users, r.groups[CONTROL].conversions) == (nk, 20)
    assert r.groups[TREATMENT].revenue == pytest.approx(30 * 40 + 30 * 80)
    d, low, high = newcombe_difference(60, nt, 20, nk)
    lift = r.lift
    assert (lift.incremental_rate, lift.incremental_rate_low, lift.incremental_rate_high) == (d, low, high)
    assert lift.credible == (low > 0)
    assert lift.mean_order_value == pytest.approx(60.0) and lift.order_value_source == "treated purchases"
    assert lift.incremental_conversions == pytest.approx(d * nt)
    assert lift.incremental_revenue == pytest.approx(d * nt * 60.0)
    assert lift.total_cost == pytest.approx(2.0 * nt)
    assert lift.incremental_profit == pytest.approx(d * nt * 60.0 * 0.3 - 2.0 * nt)
    ratio = log_ratio_interval(60, nt, 20, nk)
    assert lift.relative_lift == pytest.approx(ratio[0] - 1) and lift.relative_lift_low == pytest.approx(ratio[1] - 1)
    assert lift.relative_lift == pytest.approx(d / (20 / nk))
    assert r.forecast.predicted == pytest.approx(0.3) and r.forecast.realized == pytest.approx(20 / nk)
    assert r.forecast.course == "purchase"
    assert json.loads(r.to_json())["lift"]["incremental_rate"] == pytest.approx(d)


def test_events_outside_the_read_window_or_the_campaign_are_ignored_and_counted():
    c = make_campaign()
    t, k = users(c, TREATMENT), users(c, CONTROL)
    rows = [
        (t[0], -1.0, "buy", 10.0),          # before as_of
        (t[1], 0.0, "buy", 10.0),           # exactly at as_of: inside [as_of, close)
        (t[2], 7 * 24.0, "buy", 10.0),      # exactly at the close: outside
        (k[0], 6 * 24.0, "buy", 10.0),
        ("stranger-1", 2.0, "buy", 10.0), ("stranger-1", 3.0, "view", None), ("stranger-2", 2.0, "buy", 10.0),
        ("stranger-3", -2.0, "buy", 10.0),  # before as_of counts as before, not as outside
    ]
    r = read(c, events(rows))
    assert r.groups[TREATMENT].conversions == 1 and r.groups[CONTROL].conversions == 1
    e = r.events
    assert (e.total, e.used, e.before_as_of, e.after_window, e.outside_campaign, e.outside_users) == (8, 2, 2, 1, 3, 2)


def test_win_back_counts_a_purchase_or_a_visit_as_the_end_of_the_lapse():
    c = make_campaign("win_back", action_p=0.8)
    t, k = users(c, TREATMENT), users(c, CONTROL)
    rows = [(t[0], 3.0, "visit", None), (t[1], 4.0, "buy", 30.0), (t[2], 5.0, "view", None),
            (t[3], -3.0, "visit", None), (k[0], 10.0, "visit", None), (k[1], -1.0, "buy", 50.0)]
    r = read(c, events(rows))
    assert r.conversion.startswith("any event")
    assert (r.groups[TREATMENT].conversions, r.groups[TREATMENT].buyers) == (3, 1)
    assert (r.groups[CONTROL].conversions, r.groups[CONTROL].buyers) == (1, 0)
    nt, nk = len(t), len(k)
    lapse_t, lapse_c = 1 - 3 / nt, 1 - 1 / nk
    assert r.lift.relative_basis == "lapse rate"
    assert r.lift.relative_lift == pytest.approx(1 - lapse_t / lapse_c)  # share of would-be lapsers saved
    assert r.lift.relative_lift == pytest.approx(r.lift.incremental_rate / lapse_c)
    assert r.forecast.course == "lapse" and r.forecast.realized == pytest.approx(lapse_c)
    assert r.lift.mean_order_value == 30.0


def test_buy_actions_do_not_count_visits():
    c = make_campaign()
    t = users(c, TREATMENT)
    r = read(c, events([(t[0], 3.0, "visit", None), (t[1], 3.0, "cart", None)]))
    assert r.groups[TREATMENT].conversions == 0


def test_a_window_not_closed_yet_is_in_progress_without_a_verdict():
    c = make_campaign()
    t = users(c, TREATMENT)
    rows = [(u, 10.0, "buy", 20.0) for u in t[:50]] + [(t[60], 3 * 24.0, "buy", 20.0)]
    r = read(c, events(rows), end=AS_OF + timedelta(days=2, hours=12))
    assert r.status == IN_PROGRESS and r.days_elapsed == 2.5
    assert r.lift is None and r.forecast is None and r.last_mile is None and r.aipl is None
    assert r.groups[TREATMENT].conversions == 50 and r.events.after_window == 1
    assert r.to_dict()["lift"] is None
    early = read(c, events(rows), end=AS_OF - timedelta(days=1))
    assert early.status == IN_PROGRESS and early.days_elapsed == 0.0


def test_reads_are_idempotent_and_do_not_depend_on_event_order():
    c = make_campaign()
    t, k = users(c, TREATMENT), users(c, CONTROL)
    frame = events([(u, 7.0, "buy", 25.0) for u in t[:40]] + [(u, 8.0, "buy", 25.0) for u in k[:25]])
    first = read(c, frame).to_dict()
    assert read(c, frame).to_dict() == first
    assert read(c, frame.sample(frac=1.0, random_state=1)).to_dict() == first


def test_last_mile_rate_uses_each_users_own_window():
    deadline = (pd.Timestamp(AS_OF) + pd.Timedelta(days=1)).isoformat()
    c = make_campaign(action_deadline=deadline)
    t = users(c, TREATMENT)
    rows = [(u, 10.0, "buy", 20.0) for u in t[:30]] + [(u, 30.0, "buy", 20.0) for u in t[30:50]]
    r = read(c, events(rows))
    assert r.groups[TREATMENT].conversions == 50  # the campaign window counts both
    assert (r.last_mile.users, r.last_mile.converted) == (len(t), 30)  # the decision window only the first 30
    assert r.last_mile.target == 0.5 and r.last_mile.met is False
    assert read(make_campaign("repurchase_reminder"), events(rows)).last_mile is None


def test_conversion_by_aipl_layer_over_treated_users():
    c = make_campaign("nurture")
    m = c.members[c.members["group"] == TREATMENT]
    by_layer = {layer: m.loc[m["aipl_layer"] == layer, "user_id"].tolist() for layer in ("P", "I", "A")}
    rows = [(u, 2.0, "buy", 10.0) for u in by_layer["P"][:10]] + [(u, 2.0, "buy", 10.0) for u in by_layer["A"][:3]]
    r = read(c, events(rows))
    assert (r.aipl["P"].users, r.aipl["P"].converted) == (len(by_layer["P"]), 10)
    assert r.aipl["I"].converted == 0 and r.aipl["I"].met is False
    assert r.aipl["A"].rate == pytest.approx(3 / len(by_layer["A"]))
    assert (r.aipl["P"].target, r.aipl["I"].target, r.aipl["A"].target) == (0.5, 0.2, 0.05)
    assert r.aipl["A"].met is (3 / len(by_layer["A"]) >= 0.05)


def test_default_order_value_prices_conversions_without_amounts():
    c = make_campaign()
    r = read(c, events([(u, 1.0, "buy", None) for u in users(c, TREATMENT)[:30]]), default=45.0)
    assert r.lift.order_value_source == "default" and r.lift.mean_order_value == 45.0


def test_naive_and_text_timestamps_read_the_same():
    c = make_campaign()
    frame = events([(u, 3.0, "buy", 10.0) for u in users(c, TREATMENT)[:5]] + [(users(c, CONTROL)[0], -2, "buy", 1.0)])
    base = read(c, frame).to_dict()
    naive = frame.assign(ts=frame["ts"].dt.tz_localize(None))
    text = frame.assign(ts=frame["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert read(c, naive).to_dict() == base == read(c, text).to_dict()


def test_bad_events_and_settings_are_one_line_errors():
    c = make_campaign()
    frame = events([("u1", 1.0, "buy", 1.0)])
    with pytest.raises(OutcomeError, match=r"lack column\(s\) \['behavior'\]"):
        read(c, frame.drop(columns=["behavior"]))
    with pytest.raises(OutcomeError, match="not a timestamp"):
        read(c, frame.assign(ts="yesterday"))
    with pytest.raises(OutcomeError, match="margin_rate"):
        read(c, frame, margin=0.0)


def test_metrics_are_flat_finite_numbers():
    c = make_campaign()
    r = read(c, events([(u, 1.0, "buy", 10.0) for u in users(c, TREATMENT)[:30]]))
    metrics = r.metrics()
    assert metrics["lift.credible"] in (0.0, 1.0) and metrics["group.treatment.conversions"] == 30.0
    assert all(math.isfinite(v) for v in metrics.values())
    assert "lift.relative_lift" not in metrics  # undefined without a control conversion: left out, not NaN


def test_intervals_match_published_values():
    # Newcombe (1998): Wilson 81/263 = (0.2553, 0.3662); difference 56/70 - 48/80, method 10 = (0.0524, 0.3339)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert newcombe_difference(56, 70, 48, 80) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    r, low, high = log_ratio_interval(20, 100, 10, 100)
    se = math.sqrt(1 / 20 - 1 / 100 + 1 / 10 - 1 / 100)
    assert (r, low, high) == pytest.approx((2.0, 2 * math.exp(-1.959964 * se), 2 * math.exp(1.959964 * se)))
    assert all(math.isnan(x) for x in newcombe_difference(0, 0, 1, 5) + log_ratio_interval(0, 10, 3, 10))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(5, 3)


def test_shrunk_lift_weighs_the_measurement_by_its_sample_size():
    assert shrunk_lift(0.15, 0.05, 100, 900, 90) == pytest.approx(0.10)  # n_eff = 90: half and half
    assert shrunk_lift(0.15, 0.05, 10_000, 90_000, 90) == pytest.approx(0.05 + 0.10 * 90 / 9090)
    assert shrunk_lift(0.15, 0.05, 100, 900, 0) == pytest.approx(0.05)
    assert shrunk_lift(0.15, None, 100, 900, 90) == 0.15 == shrunk_lift(0.15, float("nan"), 100, 900, 90)
    assert shrunk_lift(0.15, 0.5, 0, 900, 90) == 0.15
    with pytest.raises(ValueError, match="prior_strength"):
        shrunk_lift(0.15, 0.05, 100, 900, -1)


def test_playbook_kpis_pool_closed_reads_only():
    deadline = (pd.Timestamp(AS_OF) + pd.Timedelta(days=1)).isoformat()
    coupon, nurture = make_campaign(action_deadline=deadline), make_campaign("nurture")
    a = read(coupon, events([(u, 2.0, "buy", 10.0) for u in users(coupon, TREATMENT)[:120]]))
    b = read(nurture, events([(u, 2.0, "buy", 10.0) for u in users(nurture, TREATMENT)[:10]]))
    early = read(coupon, events([(u, 2.0, "buy", 10.0) for u in users(coupon, TREATMENT)]), end=AS_OF + timedelta(1))
    kpis = playbook_kpis([a, b, early])
    assert (kpis["last_mile"].users, kpis["last_mile"].converted) == (a.last_mile.users, 120)
    assert kpis["last_mile"].met is (120 / a.last_mile.users >= 0.5)
    for layer in ("P", "I", "A"):
        assert kpis[layer].users == a.aipl[layer].users + b.aipl[layer].users
        assert kpis[layer].converted == a.aipl[layer].converted + b.aipl[layer].converted
    assert playbook_kpis([early])["last_mile"].met is None
