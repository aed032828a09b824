"""Simulated campaigns with a known true lift: the 95% interval of the incremental rate covers the truth, and
campaigns without an effect are rarely called credible. Plus invariants of the interval and shrinkage formulas."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import hypothesis.strategies as st
import numpy as np
import pandas as pd
from hypothesis import given, settings

from serving.activation.campaigns import TREATMENT, build_campaign
from serving.activation.outcomes import measure
from serving.activation.stats import newcombe_difference, shrunk_lift, wilson_interval

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 7
CAMPAIGNS = 100


def simulate(seed: int, true_lift: float | None) -> tuple[float, float, float, bool]:
    """One campaign of 3000 users (20% control) whose untreated purchase rate is drawn in [5%, 30%] and whose
    treated rate is ``true lift`` higher (drawn in [2, 10] points when None). Purchases of converters fall in the
    window; views, purchases before as_of and purchases of non-members are noise the read must ignore.
    Returns (true incremental rate, low, high, credible)."""
    rng = np.random.default_rng(seed)
    n = 3000
    base = rng.uniform(0.05, 0.30)
    lift = rng.uniform(0.02, 0.10) if true_lift is None else true_lift
    frame = pd.DataFrame({
        "user_id": [f"s{seed}-u{i}" for i in range(n)], "action_p": base, "priority": 1.0, "expected_profit": 0.0,
        "aipl_layer": rng.choice(["P", "I", "A"], n),
    })
    campaign = build_campaign(
        frame, action="coupon_24h", as_of=AS_OF, created_at=AS_OF, window_days=DAYS, control_share=0.2,
        cost_per_user=1.0, model_versions={}, snapshot_id=None, selection_rule={"rule": "max_profit"},
        lift_used={"value": 0.15, "source": "prior", "n": None}, campaign_id=f"sim-{seed}",
    )
    members = campaign.members
    treated = (members["group"] == TREATMENT).to_numpy()
    bought = rng.random(n) < base + lift * treated
    ids = members["user_id"].to_numpy(dtype=object)
    noise = rng.integers(0, n, 2000)
    start = pd.Timestamp(AS_OF)
    user = np.concatenate([ids[bought], ids[noise], ids[noise[:300]], [f"outsider-{i}" for i in range(200)]])
    hours = np.concatenate([rng.uniform(0, DAYS * 24, bought.sum() + 2000), rng.uniform(-72, 0, 300),
                            rng.uniform(0, DAYS * 24, 200)])
    behavior = ["buy"] * int(bought.sum()) + ["view"] * 2000 + ["buy"] * 500
    events = pd.DataFrame({"user_id": user, "ts": start + pd.to_timedelta(hours, unit="h"), "behavior": behavior,
                           "amount": 50.0})
    result = measure(campaign, events, events_end=AS_OF + timedelta(days=DAYS), margin_rate=0.3,
                     order_value_default=50.0)
    assert result.events.outside_campaign == 200 and result.events.before_as_of == 300
    assert result.groups[TREATMENT].conversions == int((bought & treated).sum())
    out = result.lift
    assert out is not None
    return lift, out.incremental_rate_low, out.incremental_rate_high, out.credible


def test_the_interval_covers_the_true_lift_in_at_least_90_of_100_campaigns():
    runs = [simulate(seed, None) for seed in range(CAMPAIGNS)]
    covered = sum(low <= truth <= high for truth, low, high, _ in runs)
    assert covered >= 90, f"the 95% interval covered the true lift in {covered} of {CAMPAIGNS} campaigns"


def test_campaigns_without_an_effect_are_called_credible_in_at_most_10_percent():
    runs = [simulate(1000 + seed, 0.0) for seed in range(CAMPAIGNS)]
    credible = sum(flag for *_, flag in runs)
    assert credible <= 10, f"{credible} of {CAMPAIGNS} no-effect campaigns were called credible"
    assert sum(low <= 0 <= high for _, low, high, _ in runs) >= 90


counts = st.integers(min_value=0, max_value=5000)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(n1=counts, n2=counts, f1=st.floats(0, 1), f2=st.floats(0, 1))
def test_newcombe_interval_holds_the_estimate_inside_its_bounds(n1: int, n2: int, f1: float, f2: float):
    k1, k2 = round(f1 * n1), round(f2 * n2)
    d, low, high = newcombe_difference(k1, n1, k2, n2)
    if n1 == 0 or n2 == 0:
        assert math.isnan(d) and math.isnan(low) and math.isnan(high)
        return
    assert -1 <= low <= d + 1e-12 and d - 1e-12 <= high <= 1
    l1, u1 = wilson_interval(k1, n1)
    assert 0 <= l1 <= k1 / n1 + 1e-12 and k1 / n1 - 1e-12 <= u1 <= 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(prior=st.floats(-1, 1), measured=st.floats(-1, 5), n_c=st.integers(1, 10**6), n_t=st.integers(1, 10**6),
       strength=st.floats(0, 1e6))
def test_shrunk_lift_lies_between_prior_and_measurement(prior: float, measured: float, n_c: int, n_t: int,
                                                        strength: float):
    shrunk = shrunk_lift(prior, measured, n_c, n_t, strength)
    assert min(prior, measured) - 1e-12 <= shrunk <= max(prior, measured) + 1e-12
    more = shrunk_lift(prior, measured, n_c * 4, n_t * 4, strength)  # more data: closer to the measurement
    assert abs(more - measured) <= abs(shrunk - measured) + 1e-12
