"""The loop on real record files: audience -> campaign -> outcome read -> measured lift -> next expected values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.activation.actions import ActivationConfig, recommend
from serving.activation.campaign_records import CampaignError, outcome_reads
from serving.activation.loop import launch_campaign, measured_activation, read_outcomes
from serving.settings import CampaignSettings

pytestmark = pytest.mark.integration

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
N = 4000


def scored(n: int = N) -> pd.DataFrame:
    """Past buyers in their repurchase window: every one gets ``repurchase_reminder`` (p_buy 0.2, value 100)."""
    return pd.DataFrame({
        "user_id": [f"u{i:05d}" for i in range(n)], "p_buy": 0.2, "p_lapse": 0.1, "aipl_layer": "P",
        "lifecycle": "mature", "rfm_group": "champions", "days_since_last_fav": np.nan,
        "days_since_last_cart": np.nan, "days_since_last_ad": np.nan, "days_since_last_buy": 10.0,
        "days_since_last_event": 2.0, "purchase_gap_mean_days": 10.0, "purchase_days": 2, "amount_mean": 100.0,
        "amount_365d": 200.0, "purchase_days_365d": 2,
    })


def launch(root: Path, activation: ActivationConfig, minutes: int = 0):
    return launch_campaign(
        root, recommend(scored(), AS_OF, activation), "repurchase_reminder", activation,
        CampaignSettings(control_share=0.2), as_of=AS_OF, created_at=AS_OF + timedelta(minutes=minutes),
        model_versions={"last_mile_buyer": "3"}, snapshot_id="snap-1",
    )


def purchases(campaign, rate_treated: float, rate_control: float, seed: int) -> pd.DataFrame:
    """Each member buys once in the window with the rate of their group (amount 100)."""
    rng = np.random.default_rng(seed)
    members = campaign.members
    rate = np.where(members["group"] == "treatment", rate_treated, rate_control)
    buyers = members.loc[rng.random(len(members)) < rate, "user_id"]
    ts = pd.Timestamp(AS_OF) + pd.to_timedelta(rng.uniform(0, 6.5, len(buyers)), unit="D")
    return pd.DataFrame({"user_id": buyers.to_numpy(), "ts": ts, "behavior": "buy", "amount": 100.0})


def test_the_send_list_is_the_treatment_group_and_the_record_says_which_lift_was_used(tmp_path: Path) -> None:
    launched = launch(tmp_path, ActivationConfig())
    members = launched.campaign.members
    assert set(launched.send["user_id"]) == set(members.loc[members["group"] == "treatment", "user_id"])
    assert not set(launched.send["user_id"]) & set(members.loc[members["group"] == "control", "user_id"])
    assert launched.summary.size == N and abs((members["group"] == "control").mean() - 0.2) < 0.03
    facts = launched.campaign.to_dict()
    assert facts["lift_used"] == {"value": 0.05, "source": "prior", "n": None}
    assert facts["cost_per_user"] == 0.1


def test_a_measured_lift_replaces_the_prior_shrunk_by_its_size(tmp_path: Path) -> None:
    prior = ActivationConfig()
    launched = launch(tmp_path, prior)
    events = purchases(launched.campaign, rate_treated=0.30, rate_control=0.20, seed=3)  # true relative lift +50%
    [(campaign, result, path)] = read_outcomes(tmp_path, events, prior, events_end=AS_OF + timedelta(days=8),
                                               read_at=AS_OF + timedelta(days=8))
    assert result.status == "closed" and path.exists() and len(outcome_reads(tmp_path, campaign.campaign_id)) == 1
    measured = result.lift.relative_lift
    assert result.lift.relative_lift_low < 0.5 < result.lift.relative_lift_high
    updated = measured_activation(tmp_path, prior, prior_strength=1000.0)
    n_c, n_t = result.groups["control"].users, result.groups["treatment"].users
    w = (1 / (1 / n_c + 1 / n_t)) / (1 / (1 / n_c + 1 / n_t) + 1000.0)
    assert updated.lift_of("repurchase_reminder") == pytest.approx(w * measured + (1 - w) * 0.05)
    assert updated.lift_source["repurchase_reminder"] == "measured"
    assert updated.lift_n["repurchase_reminder"] == n_c + n_t
    assert updated.lift_source["coupon_24h"] == "prior" and updated.lift_of("coupon_24h") == 0.15
    # the next audience's money uses the measured lift, and its record says so
    nxt = launch(tmp_path, updated, minutes=5)
    assert nxt.campaign.to_dict()["lift_used"]["source"] == "measured"
    ratio = nxt.summary.expected_incremental / launched.summary.expected_incremental
    assert ratio == pytest.approx(updated.lift_of("repurchase_reminder") / 0.05)


def test_reads_before_the_window_closes_leave_the_prior_in_place(tmp_path: Path) -> None:
    prior = ActivationConfig()
    launched = launch(tmp_path, prior)
    events = purchases(launched.campaign, 0.3, 0.2, seed=4)
    events = events[events["ts"] < pd.Timestamp(AS_OF) + pd.Timedelta(days=3)]
    [(_, result, _)] = read_outcomes(tmp_path, events, prior, events_end=AS_OF + timedelta(days=3),
                                     read_at=AS_OF + timedelta(days=3))
    assert result.status == "in progress" and result.lift is None
    assert measured_activation(tmp_path, prior, 1000.0) == prior
    assert measured_activation(tmp_path / "none-yet", prior, 1000.0) == prior


def test_an_audience_too_small_for_a_control_group_is_one_clear_error(tmp_path: Path) -> None:
    small = recommend(scored(50), AS_OF, ActivationConfig())
    with pytest.raises(CampaignError, match="control"):
        launch_campaign(tmp_path, small, "repurchase_reminder", ActivationConfig(), CampaignSettings(),
                        as_of=AS_OF, created_at=AS_OF, model_versions={}, snapshot_id=None)
    assert not any(tmp_path.iterdir())  # nothing recorded
