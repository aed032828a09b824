"""What one monitoring call found: per-snapshot quality, drift rows, mix shifts and the alerts (JSON-ready)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from serving.monitoring.backtest import TargetQuality
from serving.monitoring.versions import VersionFacts

__all__ = ["PREVIOUS", "REFERENCE", "Alert", "DriftRow", "MixShift", "MonitorReport", "SnapshotQuality"]

REFERENCE = "training reference"
PREVIOUS = "previous snapshot"


@dataclass
class SnapshotQuality:
    """One kept snapshot: its facts, the model version per target and each target's :class:`TargetQuality`."""

    snapshot_id: str
    as_of: str
    created_at: str
    rows: int
    models: dict[str, str | None]
    audience_path: str | None
    targets: dict[str, TargetQuality] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "targets"}
        return {**out, "targets": {t: q.to_dict() for t, q in self.targets.items()}}


@dataclass
class DriftRow:
    """PSI of one column between a baseline (``scope``: the model's training reference, or the previous snapshot
    ``baseline``) and snapshot ``snapshot_id``. ``kind``: ``score`` or ``feature``; ``level``: ok / warn / alert by the
    thresholds; missing rates are shares of rows in [0, 1]; ``n_*`` rows compared."""

    scope: str
    baseline: str
    snapshot_id: str
    target: str
    column: str
    kind: str
    psi: float
    level: str
    missing_baseline: float
    missing_now: float
    n_baseline: int
    n_now: int


@dataclass
class MixShift:
    """Shares of a segment column (``aipl_layer``, ``lifecycle``) in the baseline and the snapshot, and their PSI."""

    scope: str
    baseline: str
    snapshot_id: str
    column: str
    shares_baseline: dict[str, float]
    shares_now: dict[str, float]
    psi: float
    level: str


@dataclass
class Alert:
    """One finding. ``level`` ``alert`` makes the call alert (exit code 5); ``warn`` is reported only. ``kind``:
    ``auc_drop``, ``calibration``, ``score_drift``, ``feature_drift``, ``mix_shift``, ``estimated_auc_drop``,
    ``unknown_version``, ``unreadable_snapshot``, ``no_reference``."""

    level: str
    kind: str
    message: str
    target: str | None = None
    snapshot_id: str | None = None
    value: float | None = None
    threshold: float | None = None


@dataclass
class MonitorReport:
    """Everything one monitoring call found. Times ISO 8601 UTC; ``thresholds`` as configured."""

    checked_at: str
    events_start: str | None
    events_end: str | None
    thresholds: dict[str, float]
    snapshots: list[SnapshotQuality] = field(default_factory=list)
    versions: dict[str, dict[str, VersionFacts]] = field(default_factory=dict)
    drift: list[DriftRow] = field(default_factory=list)
    mix: list[MixShift] = field(default_factory=list)
    findings: list[Alert] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def alerts(self) -> list[Alert]:
        return [a for a in self.findings if a.level == "alert"]

    @property
    def warnings(self) -> list[Alert]:
        return [a for a in self.findings if a.level != "alert"]

    @property
    def alert(self) -> bool:
        """True when any finding is at the alert level (the CLI exits 5, the service's gauge reads 1)."""
        return bool(self.alerts)

    def summary(self) -> str:
        """One line: the alerts, or that there are none."""
        if not self.alerts:
            return f"no alert ({len(self.snapshots)} snapshots checked, {len(self.warnings)} warnings)"
        return f"{len(self.alerts)} alert(s): " + "; ".join(a.message for a in self.alerts)

    def to_dict(self) -> dict[str, Any]:
        return _clean({
            "checked_at": self.checked_at, "alert": self.alert, "summary": self.summary(),
            "events_start": self.events_start, "events_end": self.events_end, "thresholds": self.thresholds,
            "alerts": [asdict(a) for a in self.alerts], "warnings": [asdict(a) for a in self.warnings],
            "snapshots": [s.to_dict() for s in self.snapshots],
            "versions": {t: {v: f.to_dict() for v, f in vs.items()} for t, vs in self.versions.items()},
            "drift": [asdict(d) for d in self.drift], "mix": [asdict(m) for m in self.mix], "notes": self.notes,
        })

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def _clean(value: Any) -> Any:
    """NaN and infinity as None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
