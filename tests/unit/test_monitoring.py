"""Monitoring on hand-built snapshots: realized metrics, open windows, the label-free estimate, PSI and the rules."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import ibis
import numpy as np
import pandas as pd
import pytest

from serving.monitoring import (
    CLOSED,
    OPEN,
    ReferenceProfile,
    backtest,
    column_psi,
    expected_auc,
    expected_ece,
    expected_metrics,
    psi,
    reference_profile,
    window_status,
)
from serving.monitoring.backtest import TargetQuality
from serving.monitoring.result import PREVIOUS, REFERENCE, DriftRow, MonitorReport, SnapshotQuality
from serving.monitoring.rules import findings
from serving.monitoring.versions import VersionFacts
from serving.settings import MonitoringSettings
from training.evaluate import evaluate
from training.labels import LabelSpec, lapse_labels, last_mile_labels

T = datetime(2026, 7, 1, tzinfo=UTC)
D = timedelta(days=1)


def _snapshot() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Eight scored users (p_lapse only for the past buyers) and their events around T (H = 3, N = 5 days)."""
    records = pd.DataFrame({
        "user_id": ["u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"],
        "p_buy": [0.9, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1, 0.05],
        "p_lapse": [np.nan, 0.2, 0.8, np.nan, 0.6, 0.3, 0.9, np.nan],
        "action": ["coupon_24h", "ad_retarget", "win_back", "none", "win_back", "nurture", "win_back", "none"],
    })
    rows = [
        ("u1", T - 2 * D, "view"), ("u1", T + D, "buy"),                        # buys in the window
        ("u2", T - 40 * D, "buy"), ("u2", T - D, "view"), ("u2", T + 3 * D, "buy"),  # buy exactly at T + H: counts
        ("u3", T - 30 * D, "buy"), ("u3", T, "buy"), ("u3", T + 6 * D, "view"),  # at T: no label; T+6 > N: lapsed
        ("u4", T - 3 * D, "cart"), ("u4", T + 3 * D + timedelta(seconds=1), "buy"),  # just after the window
        ("u5", T - 60 * D, "buy"), ("u5", T - 5 * D, "view"), ("u5", T + 2 * D, "view"),  # a view: not lapsed
        ("u6", T - 10 * D, "buy"), ("u6", T - D, "fav"), ("u6", T + timedelta(hours=1), "buy"),
        ("u7", T - 90 * D, "buy"), ("u7", T - 8 * D, "view"),                  # nothing after T: lapsed
        ("u8", T - D, "view"), ("u8", T + 2 * D, "visit"),
        ("stranger", T + D, "buy"),                                            # not in the snapshot
    ]
    events = pd.DataFrame(rows, columns=["user_id", "ts", "behavior"])
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    return records, events


BUY = np.array([1, 1, 0, 0, 0, 1, 0, 0])  # the labels of the rows above, by hand
LAPSE = np.array([0, 1, 0, 0, 1])  # u2, u3, u5, u6, u7


def test_realized_metrics_equal_a_direct_computation_from_the_events() -> None:
    records, events = _snapshot()
    got = backtest(records, T, events, horizon_days=3, lapse_days=5, events_end=T + 10 * D, events_start=T - 90 * D)
    buy, lapse = got["last_mile_buyer"], got["lapse_risk"]
    assert (buy.status, lapse.status) == (CLOSED, CLOSED)
    assert (buy.users, lapse.users) == (8, 5)
    direct = evaluate(BUY, records["p_buy"].to_numpy())
    assert buy.realized == pytest.approx({**direct, "precision_audience": 2 / 3, "audience_rate": 1.0})
    p_lapse = records["p_lapse"].dropna().to_numpy()
    assert lapse.realized == pytest.approx({**evaluate(LAPSE, p_lapse), "precision_audience": 2 / 3,
                                            "audience_rate": 2 / 3})
    assert (buy.audience_size, lapse.audience_size) == (3, 3)
    assert buy.expected["auc"] == pytest.approx(expected_auc(records["p_buy"].to_numpy()))


def test_realized_labels_are_the_training_labels() -> None:
    """For every user both populations hold, the backtest's label is the label function's own on the full events."""
    records, events = _snapshot()
    table = ibis.memtable(events)
    spec = LabelSpec(horizon_days=3, lapse_days=5, population="aipl")
    train_buy = dict(last_mile_labels(table, T, spec).to_pandas().itertuples(index=False, name=None))
    train_lapse = dict(lapse_labels(table, T, spec).to_pandas().itertuples(index=False, name=None))
    mine_buy = dict(zip(records["user_id"], BUY, strict=True))
    mine_lapse = dict(zip(records["user_id"][records["p_lapse"].notna()], LAPSE, strict=True))
    assert train_buy and all(mine_buy[u] == v for u, v in train_buy.items())
    assert train_lapse == mine_lapse


def test_an_open_window_has_the_estimate_and_no_realized_number() -> None:
    records, events = _snapshot()
    got = backtest(records, T, events, horizon_days=3, lapse_days=5, events_end=T + 4 * D)
    assert got["last_mile_buyer"].status == CLOSED and got["last_mile_buyer"].realized is not None
    lapse = got["lapse_risk"]
    assert lapse.status == OPEN and lapse.realized is None and "estimate only" in lapse.note
    assert lapse.expected["auc"] == pytest.approx(expected_auc(records["p_lapse"].dropna().to_numpy()))
    late = backtest(records, T, events, horizon_days=3, lapse_days=5, events_end=T + 9 * D, events_start=T + D)
    assert all(q.status == OPEN and q.realized is None for q in late.values())


def test_window_status_boundaries() -> None:
    assert window_status(T, 3, T + 3 * D) == CLOSED
    assert window_status(T, 3, T + 3 * D - timedelta(microseconds=1)) == OPEN
    assert window_status(T, 3, T + 9 * D, events_start=T) == CLOSED
    assert window_status(T, 3, T + 9 * D, events_start=T + timedelta(seconds=1)) == OPEN


def test_a_single_outcome_is_closed_without_metrics_and_nobody_scored_is_said() -> None:
    records, events = _snapshot()
    records["p_lapse"] = np.nan
    quiet = events[events["ts"] <= T]
    got = backtest(records, T, quiet, horizon_days=3, lapse_days=5, events_end=T + 10 * D, events_start=T - 90 * D)
    assert got["last_mile_buyer"].realized is None and "single class" in got["last_mile_buyer"].note
    assert got["lapse_risk"].users == 0 and got["lapse_risk"].expected == {} and "nobody" in got["lapse_risk"].note


def _pairs_auc(p: np.ndarray) -> float:
    w = p[:, None] * (1 - p[None, :])
    np.fill_diagonal(w, 0.0)
    order = np.sign(p[:, None] - p[None, :])
    return float(np.sum(w * (order > 0)) + 0.5 * np.sum(w * (order == 0))) / float(np.sum(w))


def test_expected_auc_is_the_pairwise_ratio_with_ties() -> None:
    rng = np.random.default_rng(3)
    p = np.round(rng.beta(1, 6, 400), 2)  # many ties
    assert expected_auc(p) == pytest.approx(_pairs_auc(p), abs=1e-12)
    assert expected_auc(np.full(50, 0.3)) == pytest.approx(0.5)
    assert math.isnan(expected_auc(np.zeros(10)))


def test_expected_auc_and_ece_match_calibrated_draws() -> None:
    rng = np.random.default_rng(11)
    p = rng.beta(0.6, 8.0, 20_000)
    draws = [evaluate((rng.random(p.size) < p).astype(int), p) for _ in range(60)]
    assert np.mean([d["auc"] for d in draws]) == pytest.approx(expected_auc(p), abs=0.003)
    assert np.mean([d["ece"] for d in draws]) == pytest.approx(expected_ece(p), rel=0.15)
    est = expected_metrics(p)
    assert set(est) == set(draws[0]) - {"n"} | {"n"}
    for key in ("base_rate", "log_loss", "brier", "precision_top5", "lift_top5", "pr_auc"):
        assert np.mean([d[key] for d in draws]) == pytest.approx(est[key], rel=0.03), key


def test_psi_by_hand_and_its_bins() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert psi([0.5, 0.5], [0.8, 0.2]) == pytest.approx(0.3 * math.log(0.8 / 0.5) - 0.3 * math.log(0.2 / 0.5))
    ref = pd.Series(np.arange(100, dtype=float))
    prof = reference_profile(pd.DataFrame({"x": ref}), ["x"], bins=4).columns["x"]
    assert prof.edges == [24.0, 49.0, 74.0] and prof.shares == pytest.approx([0.25] * 4 + [0])
    assert column_psi(prof, ref) == pytest.approx(0.0)
    half_missing = pd.Series([np.nan] * 100 + list(range(100)), dtype=float)
    assert column_psi(prof, half_missing) == pytest.approx(
        psi([0.25] * 4 + [0], [0.125] * 4 + [0.5]))
    zeros = pd.Series([0.0] * 80 + [1.0] * 20)  # mostly 0: repeated quantiles merge into one bin
    assert reference_profile(pd.DataFrame({"z": zeros}), ["z"]).columns["z"].edges == [0.0, 1.0]


def test_category_profile_round_trip_and_unseen_values() -> None:
    frame = pd.DataFrame({"layer": ["A"] * 50 + ["P"] * 50, "x": np.linspace(0, 1, 100)})
    profile = reference_profile(frame, ["layer", "x"], meta={"cutoff": "2026-06-01"})
    again = ReferenceProfile.from_dict(profile.to_dict())
    assert again == profile
    now = pd.Series(["A"] * 50 + ["L"] * 50)
    assert column_psi(again.columns["layer"], now) == pytest.approx(psi([0.5, 0.5, 0, 0], [0.5, 0, 0.5, 0]))


def _report(realized_auc: float, ece: float, score_psi: float, *, retired: bool = False) -> MonitorReport:
    report = MonitorReport("2026-07-20T00:00:00+00:00", None, None, {})
    quality = TargetQuality("last_mile_buyer", "p_buy", CLOSED, T.isoformat(), 3, (T + 3 * D).isoformat(), 100, 5,
                            {"auc": 0.80}, {"auc": realized_auc, "ece": ece})
    report.snapshots = [SnapshotQuality("s1", T.isoformat(), T.isoformat(), 100, {"last_mile_buyer": "1"}, None,
                                        {"last_mile_buyer": quality})]
    if retired:  # a newer snapshot, still open, scored by version 2
        opened = TargetQuality("last_mile_buyer", "p_buy", OPEN, T.isoformat(), 3, (T + 3 * D).isoformat(), 100, 5,
                               {"auc": 0.80})
        report.snapshots.append(SnapshotQuality("s2", (T + D).isoformat(), T.isoformat(), 100,
                                                {"last_mile_buyer": "2"}, None, {"last_mile_buyer": opened}))
    report.versions = {"last_mile_buyer": {"1": VersionFacts("last_mile_buyer", "1", True, test={"auc": 0.82}),
                                           "2": VersionFacts("last_mile_buyer", "2", True, test={"auc": 0.82})}}
    report.drift = [DriftRow(REFERENCE, "v1", report.snapshots[-1].snapshot_id, "last_mile_buyer", "p_buy", "score",
                             score_psi, "alert" if score_psi >= 0.2 else "ok", 0.0, 0.0, 10, 10)]
    return report


def test_rules_alert_on_auc_drop_calibration_and_score_psi_only() -> None:
    settings = MonitoringSettings()
    assert [a.kind for a in findings(_report(0.80, 0.01, 0.05), settings)] == []
    assert [a.kind for a in findings(_report(0.78, 0.01, 0.05), settings) if a.level == "alert"] == ["auc_drop"]
    assert [a.kind for a in findings(_report(0.80, 0.06, 0.05), settings) if a.level == "alert"] == ["calibration"]
    assert [a.kind for a in findings(_report(0.80, 0.01, 0.25), settings) if a.level == "alert"] == ["score_drift"]
    retired = findings(_report(0.70, 0.01, 0.05, retired=True), settings)
    assert [(a.kind, a.level) for a in retired] == [("auc_drop", "warn")]


def test_a_new_model_version_between_snapshots_is_no_score_alert() -> None:
    report = _report(0.80, 0.01, 0.05, retired=True)
    report.drift = [DriftRow(PREVIOUS, "s1", "s2", "last_mile_buyer", "p_buy", "score", 0.5, "alert", 0, 0, 10, 10)]
    assert [(a.kind, a.level) for a in findings(report, MonitoringSettings())
            if a.kind == "score_drift"] == [("score_drift", "warn")]


def test_monitoring_settings_defaults_and_composition() -> None:
    from propensity.config import Settings

    m = Settings().monitoring
    assert (m.psi_warn, m.psi_alert, m.auc_drop, m.ece_max, m.top_features) == (0.1, 0.2, 0.03, 0.05, 15)
    assert Settings(monitoring={"psi_alert": 0.3}).monitoring.psi_alert == 0.3
