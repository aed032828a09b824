"""Continuing a generated shop past a cutoff with campaigns: exact replay, paired futures, true uplift."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.events.schema import arrow_schema
from features.events.validate import ValidationConfig, validate_events
from features.simulate import process as proc
from features.simulate.campaigns import (
    CAMPAIGN_ACTIONS,
    UNTREATED,
    CampaignEffects,
    CampaignEffectsError,
    decision_window,
    readiness,
    treat,
)
from features.simulate.continuation import ContinuedShop, continue_shop, uplift_schema
from features.simulate.draws import DrawLayoutError, UserDraws
from features.simulate.events import IdTables, to_table, user_ids
from features.simulate.paired import paired_p_buy
from features.simulate.replay import replay
from features.simulate.shop import GeneratedData, GeneratorConfig, GeneratorConfigError, generate
from features.simulate.truth import p_buy, p_lapse

START = datetime(2026, 6, 1, tzinfo=UTC)
AS_OF = START + timedelta(days=30)
WINDOWS = {"coupon_24h": 1, "ad_retarget": 7, "repurchase_reminder": 7, "win_back": 7, "nurture": 7}
STRONG = CampaignEffects(
    window_days=WINDOWS, intent_dose={"ad_retarget": 3.0}, act_dose={"win_back": 1.0}, outside_window=1.0
)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    """3000 users over 40 days in 3 chunks, with the truth recorded at the cutoff of day 30."""
    config = GeneratorConfig(n_users=3000, days=40, chunk_users=1000, truth_cutoffs=(AS_OF,))
    return generate(config, tmp_path_factory.mktemp("shop"))


def _uids(config: GeneratorConfig) -> list[str]:
    return user_ids(0, config.n_users, config.n_users).to_pylist()


def _random_campaign(config: GeneratorConfig, seed: int, actions: tuple[str, ...]) -> tuple[dict, dict]:
    """Every user gets one of ``actions`` (in turn) and a treatment or control group at random (50/50)."""
    uids = _uids(config)
    treated = np.random.default_rng(seed).random(len(uids)) < 0.5
    assign = {u: actions[i % len(actions)] for i, u in enumerate(uids)}
    return (
        {u: a for (u, a), t in zip(assign.items(), treated, strict=True) if t},
        {u: a for (u, a), t in zip(assign.items(), treated, strict=True) if not t},
    )


def _ts(t: datetime) -> pa.Scalar:
    return pa.scalar(t, pa.timestamp("us", tz="UTC"))


def _events_by_user(path: Path, users: set[str]) -> pd.DataFrame:
    ev = pq.read_table(path).to_pandas()
    return ev[ev.user_id.isin(users)].sort_values(["user_id", "ts", "behavior"]).reset_index(drop=True)


def _conversions(run: ContinuedShop, up: pd.DataFrame) -> np.ndarray:
    """1 where the user converted in the action's window: a purchase, for win_back any event at all."""
    ev = pq.read_table(run.events_dir).to_pandas()
    end = ev.merge(up[["user_id", "action", "window_days"]], on="user_id")
    end = end[end.ts < pd.Timestamp(run.as_of) + pd.to_timedelta(end.window_days, unit="D")]
    hit = end[(end.behavior == "buy") | (end.action == "win_back")].user_id.unique()
    return up.user_id.isin(hit).to_numpy().astype(int)


def test_replay_recreates_the_history_and_the_hidden_state(shop: GeneratedData) -> None:
    config = shop.config
    ids = IdTables.build(config.n_categories, config.items_per_category)
    truth = pq.read_table(shop.truth_path).to_pandas().set_index("user_id")
    cal = proc.make_calendar(config.start_utc, 70)
    chunks = list(replay(config, AS_OF, keep_history=True))
    assert [c.n for c in chunks] == [1000, 1000, 1000] and all(c.day == 30 for c in chunks)
    for rc in chunks:
        original = pq.read_table(shop.events_dir / f"part-{rc.chunk:05d}.parquet")
        before = original.filter(pc.less(original.column("ts"), _ts(AS_OF)))
        assert rc.history is not None and rc.history.n == before.num_rows > 10_000
        assert to_table(rc.history, rc.uids, ids).equals(before)
        # the exact truth of the original run at as_of, recomputed from the replayed state
        t = truth.loc[rc.uids.to_pylist()]
        np.testing.assert_array_equal(p_lapse(rc.users, rc.state, 30, config.lapse_days, cal), t.p_lapse_true)
        np.testing.assert_array_equal(rc.state.n_buys > 0, t.bought_before)
        assert (rc.marks.fav_cart <= 29).all() and (rc.marks.fav_cart == 29).sum() > 20


def test_continued_events_pass_the_contract_and_stay_in_the_window(shop: GeneratedData, tmp_path: Path) -> None:
    treatments, controls = _random_campaign(shop.config, 1, CAMPAIGN_ACTIONS)
    run = continue_shop(shop.config, AS_OF, 7, treatments, tmp_path / "next", seed=3, controls=controls)
    assert (run.as_of, run.end) == (AS_OF, AS_OF + timedelta(days=7))
    assert run.n_treated + run.n_control == 3000 and 1300 < run.n_treated < 1700
    parts = sorted(run.events_dir.glob("part-*.parquet"))
    assert len(parts) == 3 and all(pq.read_schema(p).equals(arrow_schema(), check_metadata=False) for p in parts)
    ev = pq.read_table(run.events_dir)
    assert ev.num_rows == run.n_events > 1000
    ts = ev.column("ts")
    assert pc.min(ts).as_py() >= AS_OF and pc.max(ts).as_py() < run.end
    for p in parts:
        t = pq.read_table(p, columns=["ts"]).column("ts").to_numpy()
        assert np.all(t[1:] >= t[:-1])
    report = validate_events(run.events_dir, tmp_path / "checked", ValidationConfig(as_of=run.end), now=run.end)
    assert report.passed and report.quarantined == 0 and report.rows_in == run.n_events
    assert report.accepted + report.duplicates == run.n_events and report.duplicates <= 2
    up = pq.read_table(run.uplift_path)
    assert up.schema.equals(uplift_schema(), check_metadata=False) and up.num_rows == 3000
    df = up.to_pandas()
    assert set(df.action) == set(CAMPAIGN_ACTIONS) and (df.group == "treatment").sum() == run.n_treated
    assert df.p_untreated.between(0, 1).all() and df.p_treated.between(0, 1).all()
    np.testing.assert_allclose(df.uplift, df.p_treated - df.p_untreated)
    assert dict(df.groupby("action").window_days.first()) == dict(CampaignEffects().window_days)


def test_same_inputs_give_identical_files(shop: GeneratedData, tmp_path: Path) -> None:
    treatments, _ = _random_campaign(shop.config, 2, ("coupon_24h", "win_back"))
    calls: list[tuple[int, int | None]] = []
    a = continue_shop(shop.config, AS_OF, 3, treatments, tmp_path / "a", seed=4, progress=lambda *c: calls.append(c))
    assert calls == [(0, 3000), (1000, 3000), (2000, 3000), (3000, 3000)]
    b = continue_shop(shop.config, AS_OF, 3, treatments, tmp_path / "b", seed=4)
    c = continue_shop(shop.config, AS_OF, 3, treatments, tmp_path / "c", seed=5)
    for part in sorted(a.events_dir.glob("part-*.parquet")):
        assert part.read_bytes() == (b.events_dir / part.name).read_bytes()
    assert a.uplift_path.read_bytes() == b.uplift_path.read_bytes()
    assert not pq.read_table(a.events_dir).equals(pq.read_table(c.events_dir))


def test_untreated_futures_do_not_depend_on_who_else_is_treated(shop: GeneratedData, tmp_path: Path) -> None:
    uids = _uids(shop.config)
    first, _ = _random_campaign(shop.config, 5, ("ad_retarget", "win_back", "coupon_24h"))
    other, _ = _random_campaign(shop.config, 6, ("nurture", "repurchase_reminder"))
    a = continue_shop(shop.config, AS_OF, 7, first, tmp_path / "a", seed=8)
    b = continue_shop(shop.config, AS_OF, 7, other, tmp_path / "b", seed=8)
    none = continue_shop(shop.config, AS_OF, 7, {}, tmp_path / "none", seed=8)
    untreated = set(uids) - set(first) - set(other)
    assert len(untreated) > 500
    ev_none = _events_by_user(none.events_dir, untreated)
    assert len(ev_none) > 1000
    pd.testing.assert_frame_equal(_events_by_user(a.events_dir, untreated), ev_none)
    pd.testing.assert_frame_equal(_events_by_user(b.events_dir, untreated), ev_none)
    # the treated users' futures do move
    assert not _events_by_user(a.events_dir, set(first)).equals(_events_by_user(none.events_dir, set(first)))


def test_realized_lift_of_a_random_split_agrees_with_the_true_uplift(shop: GeneratedData, tmp_path: Path) -> None:
    treatments, controls = _random_campaign(shop.config, 9, ("ad_retarget", "win_back"))
    run = continue_shop(shop.config, AS_OF, 7, treatments, tmp_path / "run", seed=10, controls=controls, effects=STRONG)
    up = pq.read_table(run.uplift_path).to_pandas()
    up["y"] = _conversions(run, up)
    for action, g in up.groupby("action"):
        t, c = g[g.group == "treatment"], g[g.group == "control"]
        diff = t.y.mean() - c.y.mean()
        se = np.sqrt(t.y.var() / len(t) + c.y.var() / len(c))
        assert abs(diff - g.uplift.mean()) < 4 * se, action
        assert diff > 3 * se, action  # the effect is there, not just noise
        # each arm matches its own potential outcome, user by user in expectation
        for arm, p in ((t, t.p_treated), (c, c.p_untreated)):
            assert abs(arm.y.sum() - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum()), (action, len(arm))


def test_uplift_is_heterogeneous_with_a_negative_share(shop: GeneratedData, tmp_path: Path) -> None:
    """Everybody in control for each action (no event changes) to read the true uplift of the whole shop."""
    uids = _uids(shop.config)
    frames = []
    for action in ("coupon_24h", "ad_retarget", "win_back"):
        run = continue_shop(shop.config, AS_OF, 1, {}, tmp_path / action, seed=12, controls=dict.fromkeys(uids, action))
        frames.append(pq.read_table(run.uplift_path).to_pandas())
    up = pd.concat(frames)
    shop_events = pq.read_table(shop.events_dir, columns=["user_id", "ts"])
    joined = set(shop_events.filter(pc.less(shop_events.column("ts"), _ts(AS_OF))).column("user_id").to_pylist())
    share = up.groupby("action").annoyed.mean()
    assert ((share - 0.05).abs() < 4 * np.sqrt(0.05 * 0.95 / 3000)).all()
    reachable = up[(up.p_untreated > 0.01) & up.user_id.isin(joined)]  # a message cannot reach who is not there
    assert (reachable[reachable.annoyed].uplift < 0).all()
    assert (reachable[~reachable.annoyed].uplift > -0.01).all()
    assert (up.uplift < 0).mean() > 0.01
    for action in ("coupon_24h", "ad_retarget", "win_back"):
        g = up[(up.action == action) & ~up.annoyed]
        inside, outside = g[g.in_window].uplift.mean(), g[~g.in_window].uplift.mean()
        assert g.in_window.sum() >= 15 and inside > 3 * outside > 0, action


def test_dose_is_full_in_the_window_and_fades_for_users_who_would_buy_anyway(shop: GeneratedData) -> None:
    rc = next(replay(shop.config, AS_OF))
    effects = CampaignEffects()
    codes = np.full(rc.n, CAMPAIGN_ACTIONS.index("ad_retarget"))
    none = np.zeros(rc.n, dtype=bool)
    tr = treat(rc.users, rc.state, rc.marks, rc.day, codes, none, effects)
    dose = tr.state.intent - rc.state.intent
    inside = decision_window("ad_retarget", rc.users, rc.state, rc.marks, rc.day)
    r = readiness(rc.users, rc.state)
    full = 1.0 / (1.0 + r**4)
    np.testing.assert_allclose(dose, np.where(inside, 1.0, 0.2) * full)
    assert inside.sum() > 10 and np.all(dose[inside & (r < 0.3)] > 0.99)
    assert np.all(dose[r > 1.5] < 0.17) and (r > 1.5).sum() >= 3
    np.testing.assert_array_equal(tr.state.act, rc.state.act)  # ad_retarget does not touch engagement
    untreated = treat(rc.users, rc.state, rc.marks, rc.day, np.full(rc.n, UNTREATED), ~none, effects)
    np.testing.assert_array_equal(untreated.state.intent, rc.state.intent)
    np.testing.assert_array_equal(untreated.buy, rc.users.buy)
    annoyed = treat(rc.users, rc.state, rc.marks, rc.day, codes, ~none, effects)
    np.testing.assert_allclose(annoyed.state.act, 0.5 * rc.state.act)
    np.testing.assert_allclose(annoyed.buy, 0.5 * rc.users.buy)


def test_paired_truth_agrees_with_the_generator_truth_and_is_exact_between_arms(shop: GeneratedData) -> None:
    rc = next(replay(shop.config, AS_OF))
    cal = proc.make_calendar(shop.config.start_utc, 45)
    rough = p_buy(np.random.default_rng(0), rc.users, rc.state, 30, 5, cal, 1)
    pick = np.argsort(rough)[-40:]
    u, s = rc.users.take(pick), rc.state.take(pick)
    same = paired_p_buy(np.random.default_rng(1), (u, u), (s, s.copy()), 30, 5, cal, 200)
    np.testing.assert_array_equal(same[0], same[1])
    ref = p_buy(np.random.default_rng(2), u, s, 30, 5, cal, 200)
    assert np.abs(same[0] - ref).max() < 0.05 and abs((same[0] - ref).mean()) < 0.01
    richer = replace(u, buy=2.0 * u.buy)
    p0, p1 = paired_p_buy(np.random.default_rng(1), (u, richer), (s, s.copy()), 30, 5, cal, 20)
    assert np.all(p1 >= p0) and (p1 - p0).mean() > 0.02


def test_user_draws_belong_to_users() -> None:
    a = UserDraws(np.random.default_rng(3), 10).bind(np.array([1, 4, 7]))
    b = UserDraws(np.random.default_rng(3), 10).bind(np.array([4]))
    assert a.random(3)[1] == b.random(1)[0]
    assert a.normal(1.0, 2.0, 3)[1] == b.normal(1.0, 2.0, 1)[0]
    with pytest.raises(DrawLayoutError, match="no bound layout"):
        a.random(5)
    with pytest.raises(DrawLayoutError, match="scalar"):
        a.random()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"treatments": {"u9999999": "coupon_24h"}}, GeneratorConfigError, "not in the shop: 'u9999999'"),
        ({"treatments": {"u0000001": "discount"}}, CampaignEffectsError, "unknown action 'discount'"),
        (
            {"treatments": {"u0000001": "win_back"}, "controls": {"u0000001": "win_back"}},
            CampaignEffectsError,
            "both treatment and control",
        ),
        ({"as_of": START + timedelta(days=41)}, GeneratorConfigError, r"in \[1, 40\]"),
        ({"as_of": AS_OF + timedelta(hours=3)}, GeneratorConfigError, "whole number of days"),
        ({"days": 0}, GeneratorConfigError, "days must be an integer >= 1"),
        ({"seed": -1}, GeneratorConfigError, "seed must be an integer >= 0"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(
    shop: GeneratedData, tmp_path: Path, kwargs: dict, error: type[Exception], match: str
) -> None:
    args = {"as_of": AS_OF, "days": 2, "treatments": {}, "seed": 1, **kwargs}
    with pytest.raises(error, match=match):
        continue_shop(shop.config, out_dir=tmp_path, **args)


def test_effect_sizes_are_validated_and_actions_match_the_activation_rules() -> None:
    from serving.activation.actions import ACTIONS

    assert CAMPAIGN_ACTIONS == ACTIONS
    with pytest.raises(CampaignEffectsError, match="unknown action"):
        CampaignEffects(intent_dose={"discount": 1.0})
    with pytest.raises(CampaignEffectsError, match="window_days"):
        CampaignEffects(window_days={"coupon_24h": 1})
    with pytest.raises(CampaignEffectsError, match="annoyed_share"):
        CampaignEffects(annoyed_share=1.5)
