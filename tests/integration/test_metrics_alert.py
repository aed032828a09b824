"""The monitoring alert on the real server's ``/metrics``: ``propensity_model_alert`` follows the latest
``propensity monitor`` report in ``<data_dir>/monitoring/latest.json``, read when scraped."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.http.metrics import MonitoringReportFile
from serving.monitoring.result import Alert, MonitorReport
from tests.integration.conftest import Server, Trained, start_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def report_json(alert: bool, checked_at: datetime) -> str:
    findings = [Alert("alert", "auc_drop", "last_mile_buyer: realized AUC 0.61 vs 0.70 at training",
                      target="last_mile_buyer")] if alert else [Alert("warn", "score_drift", "PSI 0.12")]
    return MonitorReport(checked_at=checked_at.isoformat(), events_start=None, events_end=None,
                         thresholds={"psi_alert": 0.2}, findings=findings).to_json()


def write_report(path: Path, alert: bool, checked_at: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(report_json(alert, checked_at))
    if path.stat().st_mtime_ns == before:  # a coarse clock: make the change visible
        os.utime(path, ns=(before + 1_000_000, before + 1_000_000))


def gauges(server: Server) -> dict[str, float]:
    """The unlabelled samples of ``/metrics`` (which must answer 200)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = server.anon.get("/metrics")
    assert r.status_code == 200, r.text[:300]
    return {s.name: s.value for family in text_string_to_metric_families(r.text) for s in family.samples
            if not s.labels}


@pytest.fixture(scope="module")
def server(trained: Trained) -> Iterator[Server]:
    srv = start_server(trained.settings(), trained.root / "server-monitoring.log")
    try:
        yield srv
    finally:
        srv.stop()


def test_model_alert_gauge_follows_the_latest_report(server: Server, trained: Trained) -> None:
    latest = trained.root / "data" / "monitoring" / "latest.json"
    latest.unlink(missing_ok=True)
    missing = gauges(server)
    assert math.isnan(missing.get("propensity_model_alert", math.nan))
    assert math.isnan(missing.get("propensity_monitoring_age_seconds", math.nan))
    assert missing["propensity_ready"] == 1

    checked = datetime.now(UTC) - timedelta(hours=2)
    write_report(latest, True, checked)
    now = gauges(server)
    assert now["propensity_model_alert"] == 1
    assert now["propensity_monitoring_age_seconds"] == pytest.approx(7200, abs=60)

    write_report(latest, False, datetime.now(UTC))
    now = gauges(server)
    assert now["propensity_model_alert"] == 0
    assert 0 <= now["propensity_monitoring_age_seconds"] < 60

    latest.write_text('{"alert": tr')  # half written: no gauge rather than a wrong one, and /metrics still answers
    assert "propensity_model_alert" not in gauges(server)
    latest.unlink()
    assert "propensity_model_alert" not in gauges(server)


def test_report_file_is_parsed_again_only_when_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "latest.json"
    watched = MonitoringReportFile(path)
    assert watched.read() is None and watched.families() == []
    checked = datetime(2026, 7, 1, tzinfo=UTC)
    write_report(path, True, checked)
    assert watched.read() == (True, checked)
    reads = 0
    real = Path.read_bytes

    def counting(self: Path) -> bytes:
        nonlocal reads
        reads += 1
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    for _ in range(3):
        families = watched.families(now=checked + timedelta(seconds=90))
    assert reads == 0
    assert {f.name: f.samples[0].value for f in families} == {
        "propensity_model_alert": 1, "propensity_monitoring_age_seconds": 90.0,
    }
    write_report(path, False, checked)
    assert watched.read() == (False, checked) and reads == 1
