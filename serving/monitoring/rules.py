"""The thresholds of ``MonitoringSettings`` turned into findings (see :mod:`serving.monitoring.job`)."""

from __future__ import annotations

import math
from collections.abc import Iterator

from serving.monitoring.backtest import CLOSED, OPEN
from serving.monitoring.result import PREVIOUS, REFERENCE, Alert, MonitorReport, SnapshotQuality
from serving.settings import MonitoringSettings
from training.bundle import TARGETS

__all__ = ["findings"]


def _latest(report: MonitorReport, target: str, status: str) -> SnapshotQuality | None:
    found = [s for s in report.snapshots if target in s.targets and s.targets[target].status == status]
    return found[-1] if found else None


def _current_version(report: MonitorReport, target: str) -> str | None:
    readable = [s for s in report.snapshots if s.targets]
    return readable[-1].models.get(target) if readable else None


def _quality(report: MonitorReport, settings: MonitoringSettings) -> Iterator[Alert]:
    for target in TARGETS:
        closed = _latest(report, target, CLOSED)
        if closed is not None and closed.targets[target].realized is not None:
            yield from _realized(report, closed, target, settings)
        opened = _latest(report, target, OPEN)
        if opened is not None and (closed is None or opened.as_of > closed.as_of):
            test = _test(report, opened, target)
            expected = opened.targets[target].expected.get("auc", math.nan)
            if test is not None and expected < test - settings.auc_drop:
                yield Alert("warn", "estimated_auc_drop", f"{target}: snapshot {opened.snapshot_id} (window open) "
                            f"has an expected AUC of {expected:.3f}, more than {settings.auc_drop} below the test "
                            f"AUC {test:.3f}", target, opened.snapshot_id, expected, test - settings.auc_drop)


def _test(report: MonitorReport, snap: SnapshotQuality, target: str) -> float | None:
    facts = report.versions.get(target, {}).get(snap.models.get(target) or "?")
    value = facts.test.get("auc") if facts is not None and facts.known else None
    return float(value) if value is not None and math.isfinite(value) else None


def _realized(report: MonitorReport, snap: SnapshotQuality, target: str, settings: MonitoringSettings
              ) -> Iterator[Alert]:
    realized = snap.targets[target].realized or {}
    version = snap.models.get(target)
    retired = version != _current_version(report, target)
    level = "warn" if retired else "alert"
    suffix = f" (version {version} no longer scores the newest snapshot)" if retired else ""
    test = _test(report, snap, target)
    auc, ece = realized.get("auc", math.nan), realized.get("ece", math.nan)
    if test is not None and auc < test - settings.auc_drop:
        yield Alert(level, "auc_drop", f"{target} v{version}: realized AUC {auc:.3f} on snapshot {snap.snapshot_id} "
                    f"is {test - auc:.3f} below its test AUC {test:.3f} (limit {settings.auc_drop}){suffix}",
                    target, snap.snapshot_id, auc, test - settings.auc_drop)
    if ece > settings.ece_max:
        yield Alert(level, "calibration", f"{target} v{version}: realized calibration error {ece:.3f} on snapshot "
                    f"{snap.snapshot_id} is above {settings.ece_max}{suffix}", target, snap.snapshot_id, ece,
                    settings.ece_max)


def _drift(report: MonitorReport, settings: MonitoringSettings) -> Iterator[Alert]:
    newest = report.snapshots[-1].snapshot_id if report.snapshots else None
    by_id = {s.snapshot_id: s for s in report.snapshots}
    for row in report.drift:
        if row.kind != "score" or row.level == "ok" or row.snapshot_id != newest:
            continue
        level = row.level
        why = ""
        if row.scope == PREVIOUS:
            before, after = by_id.get(row.baseline), by_id.get(row.snapshot_id)
            if before and after and before.models.get(row.target) != after.models.get(row.target):
                level, why = "warn", " (a new model version scored it)"
        threshold = settings.psi_alert if level == "alert" else settings.psi_warn
        yield Alert(level, "score_drift", f"{row.column}: PSI {row.psi:.3f} against the {row.scope} "
                    f"({row.baseline}){why}", row.target, row.snapshot_id, row.psi, threshold)
    features = sorted((r for r in report.drift if r.kind == "feature" and r.level != "ok"), key=lambda r: -r.psi)
    for target in TARGETS:
        mine = [r for r in features if r.target == target]
        if mine:
            listed = ", ".join(f"{r.column} {r.psi:.2f}" for r in mine[:5])
            yield Alert("warn", "feature_drift", f"{target}: {len(mine)} of its top features moved against the "
                        f"{REFERENCE} (PSI {listed})", target, mine[0].snapshot_id, mine[0].psi, settings.psi_warn)
    for mix in report.mix:
        if mix.level != "ok" and mix.snapshot_id == newest:
            yield Alert("warn", "mix_shift", f"{mix.column} mix: PSI {mix.psi:.3f} against the {mix.scope} "
                        f"({mix.baseline})", None, mix.snapshot_id, mix.psi, settings.psi_warn)


def _facts(report: MonitorReport) -> Iterator[Alert]:
    for snap in report.snapshots:
        if not snap.targets:
            yield Alert("warn", "unreadable_snapshot", f"snapshot {snap.snapshot_id}: {snap.note}", None,
                        snap.snapshot_id)
    for target, versions in report.versions.items():
        for facts in versions.values():
            if not facts.known or facts.note:
                yield Alert("warn", "unknown_version", f"{target} v{facts.version or '?'}: {facts.note}", target)


def findings(report: MonitorReport, settings: MonitoringSettings) -> list[Alert]:
    """Every alert and warning of ``report`` by the thresholds of ``settings`` (alerts first)."""
    found = [*_quality(report, settings), *_drift(report, settings), *_facts(report)]
    return sorted(found, key=lambda a: a.level != "alert")

