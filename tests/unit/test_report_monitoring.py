"""The report's "models in production" section and alert banner, on a monitoring report of two hand-built snapshots.

The report is a real :class:`serving.monitoring.result.MonitorReport`: realized metrics from
:func:`training.evaluate.evaluate`, estimates from :func:`serving.monitoring.estimate.expected_metrics`, PSI from
:func:`serving.monitoring.drift.psi` and the findings from :func:`serving.monitoring.rules.findings`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from serving.monitoring.backtest import CLOSED, OPEN, TargetQuality
from serving.monitoring.drift import level_of, psi
from serving.monitoring.estimate import expected_metrics
from serving.monitoring.result import PREVIOUS, REFERENCE, DriftRow, MonitorReport, SnapshotQuality
from serving.monitoring.rules import findings
from serving.monitoring.versions import VersionFacts
from serving.report.build import ReportError, build_report
from serving.report.monitoring import monitoring_banner
from serving.settings import MonitoringSettings
from training.bundle import SCORE_COLUMN, TARGETS
from training.evaluate import evaluate

SETTINGS = MonitoringSettings()
VERSIONS = {"last_mile_buyer": "7", "lapse_risk": "3"}
EVIL = "<script>alert(1)</script>"
N = 5000


def _scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Well-calibrated scores and outcomes drawn from them."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1, 6, N)
    return (rng.uniform(size=N) < p).astype(int), p


def _quality(target: str, as_of: str, close: str, status: str, seed: int) -> TargetQuality:
    y, p = _scores(seed)
    return TargetQuality(target=target, score=SCORE_COLUMN[target], status=status, as_of=as_of, window_days=7,
                         window_close=close, users=N, audience_size=100, expected=expected_metrics(p),
                         realized=evaluate(y, p) if status == CLOSED else None)


def _drift(target: str, scope: str, baseline: str, shares_now: list[float]) -> DriftRow:
    value = psi([0.25] * 4, shares_now)
    return DriftRow(scope=scope, baseline=baseline, snapshot_id="s2", target=target, column=SCORE_COLUMN[target],
                    kind="score", psi=value, level=level_of(value, SETTINGS.psi_warn, SETTINGS.psi_alert),
                    missing_baseline=0.0, missing_now=0.01, n_baseline=N, n_now=N)


def monitor_report(degraded: bool = False) -> MonitorReport:
    """Snapshot s1 (2024-02-22, window closed) and s2 (2024-03-01, open) of both targets. The versions' test AUC
    equals s1's realized AUC; ``degraded``: it is 0.2 higher (an AUC drop) and the p_buy scores shifted."""
    s1 = SnapshotQuality("s1", "2024-02-22T00:00:00+00:00", "2024-02-22T04:00:00+00:00", N, dict(VERSIONS), None)
    s2 = SnapshotQuality("s2", "2024-03-01T00:00:00+00:00", "2024-03-01T04:00:00+00:00", N, dict(VERSIONS), None)
    for i, target in enumerate(TARGETS):
        s1.targets[target] = _quality(target, s1.as_of, "2024-02-29T00:00:00+00:00", CLOSED, seed=i)
        s2.targets[target] = _quality(target, s2.as_of, "2024-03-08T00:00:00+00:00", OPEN, seed=10 + i)
    report = MonitorReport(checked_at="2024-03-03T06:00:00+00:00", events_start="2024-02-01T00:00:00+00:00",
                           events_end="2024-03-03T00:00:00+00:00", thresholds=SETTINGS.model_dump(
                               include={"psi_warn", "psi_alert", "auc_drop", "ece_max"}),
                           snapshots=[s1, s2])
    for target in TARGETS:
        auc = s1.targets[target].realized["auc"] + (0.2 if degraded else 0.0)
        report.versions[target] = {VERSIONS[target]: VersionFacts(
            target, VERSIONS[target], True, test={"auc": auc, "ece": 0.01}, test_as_of="2024-02-10T00:00:00+00:00")}
    shifted = [0.05, 0.15, 0.3, 0.5] if degraded else [0.24, 0.26, 0.25, 0.25]
    report.drift = [_drift("last_mile_buyer", REFERENCE, "7", shifted), _drift("last_mile_buyer", PREVIOUS, "s1",
                                                                               [0.26, 0.24, 0.25, 0.25])]
    report.findings = findings(report, SETTINGS)
    return report


def monitoring_report(degraded: bool = False) -> dict:
    """The report as ``propensity monitor`` writes it to ``latest.json`` (read back from its JSON)."""
    return json.loads(monitor_report(degraded).to_json())


@pytest.fixture(scope="module")
def healthy() -> tuple[dict, str]:
    from tests.unit.test_report import CFG, NOW, audience

    report = monitoring_report()
    return report, build_report(audience(), activation=CFG, monitoring=report, generated_at=NOW)


@pytest.fixture(scope="module")
def degraded() -> tuple[dict, str]:
    from tests.unit.test_report import CFG, NOW, audience

    report = monitoring_report(degraded=True)
    return report, build_report(audience(), activation=CFG, monitoring=report, generated_at=NOW)


def _page(html: str):
    from tests.unit.test_report import Page

    return Page(html)


def test_quality_table_realized_for_closed_windows_and_estimate_for_open(healthy):
    report, html = healthy
    assert not report["alert"]
    rows = _page(html).tables["production_quality"]
    assert rows[0][:7] == ["snapshot", "scores as of", "model", "version", "label window", "users", "realized AUC"]
    body = rows[1:]
    assert [(r[0], r[2]) for r in body] == [("s1", "Last-mile buyer (p_buy)"), ("s1", "About to lapse (p_lapse)"),
                                          ("s2", "Last-mile buyer (p_buy)"), ("s2", "About to lapse (p_lapse)")]
    for row, snap in zip(body, ["s1", "s1", "s2", "s2"], strict=True):
        target = "last_mile_buyer" if "p_buy" in row[2] else "lapse_risk"
        q = next(s for s in report["snapshots"] if s["snapshot_id"] == snap)["targets"][target]
        test = report["versions"][target][row[3]]["test"]["auc"]
        assert row[3] == {"last_mile_buyer": "7", "lapse_risk": "3"}[target] and row[5] == "5,000"
        assert row[7] == f"{q['expected']['auc']:.3f}" and row[8] == f"{test:.3f}"
        if snap == "s1":  # closed: the realized AUC, no estimate marking
            assert row[4] == "closed" and row[6] == f"{q['realized']['auc']:.3f}" and row[9] == "+0.000"
        else:  # open: no realized number, the estimate is marked as such
            assert row[4] == "open until 2024-03-08 00:00 UTC: estimate" and row[6] == "estimate only"
            assert row[9] == f"{q['expected']['auc'] - test:+.3f} (estimate)"


def test_calibration_of_the_latest_closed_snapshot(healthy):
    report, html = healthy
    rows = _page(html).tables["production_calibration"][1:]
    assert [r[:3] for r in rows] == [["Last-mile buyer (p_buy)", "s1", "7"], ["About to lapse (p_lapse)", "s1", "3"]]
    for row, target in zip(rows, ["last_mile_buyer", "lapse_risk"], strict=True):
        q = report["snapshots"][0]["targets"][target]
        assert row[3] == f"{q['realized']['ece']:.4f}" and row[4] == f"{q['expected']['ece']:.4f}"
        assert row[5] == "0.0100" and row[6] == "ok"


def test_drift_table_lists_psi_and_verdicts(healthy, degraded):
    rows = _page(healthy[1]).tables["production_drift"][1:]
    assert [(r[0], r[1], r[4], r[-1]) for r in rows] == [(PREVIOUS, "s1", "p_buy", "ok"),
                                                         (REFERENCE, "7", "p_buy", "ok")]
    psi_ref = next(d["psi"] for d in degraded[0]["drift"] if d["scope"] == REFERENCE)
    row = next(r for r in _page(degraded[1]).tables["production_drift"] if r[0] == REFERENCE)
    assert row[6] == f"{psi_ref:.3f}" and row[7] == "0.0% -> 1.0%" and row[-1] == "alert"


def test_banner_only_when_the_report_alerts(healthy, degraded):
    assert 'data-alert="monitoring"' not in healthy[1]
    report, html = degraded
    assert report["alert"] and {a["kind"] for a in report["alerts"]} == {"auc_drop", "score_drift"}
    page = _page(html)
    banner = page.with_attr("data-alert")
    assert set(banner) == {"monitoring"}
    for alert in report["alerts"]:
        assert alert["message"].replace("'", "&#x27;") in html
    assert html.index('data-alert="monitoring"') < html.index('id="summary"')  # at the top of the page
    findings_rows = page.tables["production_findings"][1:]
    assert [r[0] for r in findings_rows][: len(report["alerts"])] == ["alert"] * len(report["alerts"])


def test_note_without_a_monitoring_report():
    from tests.unit.test_report import CFG, NOW, audience

    html = build_report(audience(), activation=CFG, generated_at=NOW)
    page = _page(html)
    assert "monitoring" in page.with_attr("data-note") and "propensity monitor" in html
    assert not any(t.startswith("production_") for t in page.tables)
    assert monitoring_banner(None) == ""


def test_strings_of_the_monitoring_report_are_escaped():
    from tests.unit.test_report import CFG, NOW, audience

    report = monitoring_report(degraded=True)
    report["snapshots"][0]["snapshot_id"] = EVIL
    report["alerts"][0]["message"] = EVIL
    html = build_report(audience(), activation=CFG, monitoring=report, generated_at=NOW)
    assert EVIL not in html and "&lt;script&gt;" in html
    with pytest.raises(ReportError, match="MonitorReport"):
        build_report(audience(), activation=CFG, monitoring=["not", "a", "report"], generated_at=NOW)  # type: ignore
