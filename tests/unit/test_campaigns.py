"""Campaign split and campaign facts: a seeded hash of (campaign id, user id), global control, send list."""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from serving.activation.campaigns import (
    CONTROL,
    GLOBAL_CONTROL,
    TREATMENT,
    CampaignError,
    assign_groups,
    build_campaign,
    send_list,
    uniform_hash,
)

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
IDS = [f"user-{i}" for i in range(100_000)]


def within_binomial(count: int, n: int, share: float, sds: float = 4.0) -> bool:
    return abs(count - n * share) <= sds * math.sqrt(n * share * (1 - share))


def audience(n: int, action: str = "coupon_24h", **extra: object) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    frame = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "action": action,
        "action_p": rng.uniform(0, 0.4, n),
        "priority": np.linspace(5, 1, n),
        "expected_profit": np.linspace(2, -1, n),
        "aipl_layer": rng.choice(["P", "I", "A"], n),
        "rfm_group": "loyal",
    })
    for name, value in extra.items():
        frame[name] = value
    return frame


def facts(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "action": "coupon_24h", "as_of": AS_OF, "created_at": AS_OF + timedelta(minutes=5), "window_days": 7.0,
        "control_share": 0.1, "cost_per_user": 3.0, "model_versions": {"last_mile_buyer": "4", "lapse_risk": "2"},
        "snapshot_id": "snap-1", "selection_rule": {"rule": "budget", "budget": 900.0, "top_k": None},
        "lift_used": {"value": 0.15, "source": "prior", "n": None},
    }
    return {**base, **overrides}


def test_split_is_deterministic_and_close_to_the_share():
    first = assign_groups(IDS, "coupon_24h-20240301-aaaa0001", 0.1)
    again = assign_groups(IDS, "coupon_24h-20240301-aaaa0001", 0.1)
    assert (first == again).all()
    assert set(first) == {TREATMENT, CONTROL}
    assert within_binomial(int((first == CONTROL).sum()), len(IDS), 0.1)


def test_split_does_not_move_when_the_audience_is_reordered():
    order = np.random.default_rng(3).permutation(len(IDS))
    shuffled = [IDS[i] for i in order]
    base = dict(zip(IDS, assign_groups(IDS, "c-1", 0.2), strict=True))
    moved = dict(zip(shuffled, assign_groups(shuffled, "c-1", 0.2), strict=True))
    assert base == moved
    subset = shuffled[:5000]  # a smaller audience of the same campaign keeps each user's group
    assert all(base[u] == g for u, g in zip(subset, assign_groups(subset, "c-1", 0.2), strict=True))


def test_split_is_independent_between_campaigns():
    a = assign_groups(IDS, "c-a", 0.1) == CONTROL
    b = assign_groups(IDS, "c-b", 0.1) == CONTROL
    assert within_binomial(int((a & b).sum()), len(IDS), 0.01)  # independent: 10% of 10%


def test_hash_is_the_documented_blake2b():
    user, campaign = "user-42", "coupon_24h-20240301-aaaa0001"
    digest = hashlib.blake2b(f"{campaign}\x1f{user}".encode(), digest_size=8, person=b"campaign-split").digest()
    expected = (int.from_bytes(digest, "big") >> 11) / 2**53
    assert uniform_hash(campaign, [user], b"campaign-split")[0] == expected
    u = uniform_hash(campaign, IDS[:20_000], b"campaign-split")
    assert u.min() >= 0 and u.max() < 1 and within_binomial(int((u < 0.5).sum()), 20_000, 0.5)


def test_global_control_is_the_same_in_every_campaign_and_never_treated():
    one = assign_groups(IDS, "c-one", 0.1, global_control_share=0.05, global_seed="shop-7")
    two = assign_groups(IDS, "c-two", 0.3, global_control_share=0.05, global_seed="shop-7")
    held = one == GLOBAL_CONTROL
    assert (held == (two == GLOBAL_CONTROL)).all()
    assert within_binomial(int(held.sum()), len(IDS), 0.05)
    assert not (two[held] == TREATMENT).any()
    rest = ~held  # the campaign's own split applies to everyone else
    assert within_binomial(int((one[rest] == CONTROL).sum()), int(rest.sum()), 0.1)
    other_seed = assign_groups(IDS, "c-one", 0.1, global_control_share=0.05, global_seed="shop-8")
    assert ((other_seed == GLOBAL_CONTROL) != held).any()


def test_too_small_an_audience_is_refused_with_what_to_change():
    with pytest.raises(CampaignError) as err:
        assign_groups([f"u{i}" for i in range(300)], "c-small", 0.1)
    message = str(err.value)
    assert "\n" not in message
    for part in ("audience of 300 users", "control share 10%", "minimum of 100", "raise the control share",
                 "widen the audience (to about 1000 users)", "min_control"):
        assert part in message
    assert len(assign_groups([f"u{i}" for i in range(300)], "c-small", 0.1, min_control=0)) == 300


@pytest.mark.parametrize(("share", "global_share"), [(0.0, 0.0), (1.0, 0.0), (-0.1, 0.0), (float("nan"), 0.0),
                                                    (0.1, 1.0), (0.1, -0.5)])
def test_invalid_shares_are_refused(share: float, global_share: float):
    with pytest.raises(CampaignError, match="share must be in"):
        assign_groups(IDS[:1000], "c", share, global_control_share=global_share, min_control=0)


def test_null_user_ids_are_refused():
    with pytest.raises(CampaignError, match="1 null user_id"):
        assign_groups(["a", None, "b"], "c", 0.5, min_control=0)


def test_campaign_facts_and_members():
    frame = audience(3000, lifecycle="active", action_deadline="2024-03-02T00:00:00Z")
    campaign = build_campaign(frame, **facts())
    assert re.fullmatch(r"coupon_24h-20240301-[0-9a-f]{8}", campaign.campaign_id)
    assert campaign.window_close == pd.Timestamp("2024-03-08", tz="UTC") and campaign.window_days == 7.0
    assert campaign.value_column == "expected_profit"
    assert sum(campaign.counts.values()) == 3000 and campaign.counts[GLOBAL_CONTROL] == 0
    members = campaign.members
    assert members["user_id"].tolist() == frame["user_id"].tolist()  # audience order kept
    assert members["group"].value_counts().to_dict() == {k: v for k, v in campaign.counts.items() if v}
    np.testing.assert_allclose(members["action_p"], frame["action_p"])
    assert (members["lifecycle"] == "active").all() and members["action_deadline"].notna().all()
    recorded = campaign.to_dict()
    assert recorded["lift_used"] == {"value": 0.15, "source": "prior", "n": None}
    assert recorded["model_versions"] == {"last_mile_buyer": "4", "lapse_risk": "2"}
    assert recorded["selection_rule"]["rule"] == "budget" and recorded["snapshot_id"] == "snap-1"
    assert recorded["window_open"] == "2024-03-01T00:00:00Z" and recorded["window_close"] == "2024-03-08T00:00:00Z"


def test_same_inputs_give_the_same_campaign_and_a_later_creation_a_new_id():
    frame = audience(2000)
    first, again = build_campaign(frame, **facts()), build_campaign(frame, **facts())
    assert first.campaign_id == again.campaign_id
    assert first.members["group"].tolist() == again.members["group"].tolist()
    later = build_campaign(frame, **facts(created_at=AS_OF + timedelta(minutes=6)))
    assert later.campaign_id != first.campaign_id


def test_incremental_value_column_is_preferred_and_missing_columns_are_named():
    frame = audience(2000).assign(expected_incremental_profit=0.7)
    assert build_campaign(frame, **facts()).value_column == "expected_incremental_profit"
    assert build_campaign(frame, **facts(), value_column="expected_profit").value_column == "expected_profit"
    with pytest.raises(CampaignError, match="none of the value columns"):
        build_campaign(audience(2000).drop(columns=["expected_profit"]), **facts())
    with pytest.raises(CampaignError, match=r"lacks column\(s\) \['aipl_layer'\]"):
        build_campaign(audience(2000).drop(columns=["aipl_layer"]), **facts())


@pytest.mark.parametrize(
    ("frame", "overrides", "message"),
    [
        (audience(2000).assign(user_id=["dup"] * 2 + [f"u{i}" for i in range(1998)]), {}, "repeats user_id"),
        (audience(2000, action="win_back"), {}, "holds action"),
        (audience(2000, action="send_pigeon"), {"action": "send_pigeon"}, "unknown action"),
        (audience(2000), {"window_close": AS_OF + timedelta(days=3)}, "exactly one of window_days"),
        (audience(2000), {"window_days": None, "window_close": AS_OF}, "must close after as_of"),
        (audience(2000), {"lift_used": {"value": 0.1, "source": "guess"}}, "source"),
        (audience(2000), {"cost_per_user": -1.0}, "cost_per_user"),
        (audience(2000), {"selection_rule": {"budget": float("nan")}}, "JSON-ready"),
        (audience(2000), {"campaign_id": "../escape"}, "campaign id"),
    ],
)
def test_bad_campaigns_are_refused(frame: pd.DataFrame, overrides: dict[str, object], message: str):
    with pytest.raises(CampaignError, match=message):
        build_campaign(frame, **facts(**overrides))


def test_send_list_holds_treatment_users_only():
    campaign = build_campaign(audience(5000), **facts(global_control_share=0.1, control_share=0.2))
    sent = send_list(campaign)
    members = campaign.members
    assert set(sent["group"]) == {TREATMENT}
    held_back = set(members.loc[members["group"] != TREATMENT, "user_id"])
    assert held_back and not held_back & set(sent["user_id"])
    assert len(sent) == campaign.counts[TREATMENT]
    assert sent["user_id"].tolist() == members.loc[members["group"] == TREATMENT, "user_id"].tolist()
