"""One monitoring call over the kept snapshots: backtests, drift, and the findings that make it alert.

:func:`monitor` reads each snapshot's records (its audience file), backtests it (:func:`backtest`), looks up the model
versions that produced it (:func:`version_facts`), measures drift between consecutive snapshots and between the newest
snapshot and the training reference of its models (:mod:`serving.monitoring.reference`), and turns the thresholds of
``MonitoringSettings`` into findings (:func:`findings`):

- **alert**: the newest closed snapshot of a target has a realized AUC more than ``auc_drop`` below its model's test
  AUC, or a realized ECE above ``ece_max``; or a score PSI at or above ``psi_alert`` against the training reference
  (newest snapshot) or against the previous snapshot (newest pair, same model versions).
- **warn**: a score or feature PSI at or above ``psi_warn``, an AIPL / lifecycle mix shift, an open snapshot whose
  expected AUC is that far below the test AUC, a closed snapshot of a model no longer scoring, a version gone from
  the registry, a snapshot whose records cannot be read, a reference that cannot be rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from features.build.builder import build_features, default_connection, events_table
from serving.monitoring.backtest import backtest
from serving.monitoring.reference import (
    MIX_COLUMNS,
    design_frame,
    drift_rows,
    mix_rows,
    model_reference,
    records_profile,
)
from serving.monitoring.result import PREVIOUS, REFERENCE, DriftRow, MixShift, MonitorReport, SnapshotQuality
from serving.monitoring.rules import findings
from serving.monitoring.versions import VersionFacts, version_facts
from serving.settings import MonitoringSettings
from serving.store.records import SnapshotInfo
from training.bundle import SCORE_COLUMN, TARGETS, ModelBundle
from training.labels import LabelSpec
from training.sampling import sampled_events

__all__ = ["RECORD_COLUMNS", "MonitorError", "monitor", "read_snapshot_records"]

RECORD_COLUMNS = ("user_id", "p_buy", "p_lapse", "aipl_layer", "lifecycle", "action", "model_buy", "model_lapse")
VERSION_COLUMN = {"last_mile_buyer": "model_buy", "lapse_risk": "model_lapse"}
BundleLoader = Callable[[str, str], ModelBundle]


class MonitorError(RuntimeError):
    """Nothing to monitor: no snapshot kept, or no events to read."""

    exit_code = 6  # CLI exit code: unavailable (no snapshot)


def read_snapshot_records(info: SnapshotInfo) -> pd.DataFrame:
    """The records of a snapshot from its audience file (``meta["audience_path"]``): the :data:`RECORD_COLUMNS` it
    has, ``user_id`` as strings; :class:`FileNotFoundError` when the snapshot names no file or the file is gone."""
    path = info.meta.get("audience_path")
    if not path:
        raise FileNotFoundError(f"snapshot {info.snapshot_id} records no audience file")
    if not Path(path).exists():
        raise FileNotFoundError(f"the audience file of snapshot {info.snapshot_id} is gone: {path}")
    names = pq.read_schema(path).names if Path(path).is_file() else None
    columns = [c for c in RECORD_COLUMNS if names is None or c in names]
    frame = pd.read_parquet(path, columns=columns)
    frame["user_id"] = frame["user_id"].astype(str)
    return frame


def _models(info: SnapshotInfo, records: pd.DataFrame | None) -> dict[str, str | None]:
    found = dict(info.meta.get("models") or {})
    out: dict[str, str | None] = {}
    for target in TARGETS:
        version = found.get(target)
        column = VERSION_COLUMN[target]
        if not version and records is not None and column in records.columns and records[column].notna().any():
            version = records[column].dropna().iloc[0]
        out[target] = str(version) if version not in (None, "") else None
    return out


def _utc(value: Any) -> datetime:
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat()


def monitor(
    snapshots: Sequence[SnapshotInfo],
    events: Any,
    *,
    settings: MonitoringSettings,
    default_spec: LabelSpec,
    events_end: datetime,
    checked_at: datetime,
    events_start: datetime | None = None,
    history_start: datetime | None = None,
    client: Any = None,
    load_bundle: BundleLoader | None = None,
    read_records: Callable[[SnapshotInfo], pd.DataFrame] = read_snapshot_records,
    seed: int = 7,
    con: Any = None,
) -> MonitorReport:
    """Monitor ``snapshots`` (any order) with canonical ``events`` (DataFrame, Ibis table or Parquet path).

    ``events_start`` / ``events_end``: the events are complete from / up to these times (label windows outside stay
    open). ``history_start``: the first event; the feature drift is rebuilt only at cutoffs after it. ``client``: an
    ``MlflowClient`` of the registry (None: every version unknown); ``load_bundle(target, version)`` loads a version's
    bundle for the drift against its training reference (None: no reference drift). ``default_spec``: the label
    windows of a version that does not record its own. ``checked_at``: the time of this call (recorded only).
    """
    if not snapshots:
        raise MonitorError("no score snapshot to monitor: run `propensity score --as-of T` first")
    con = con or default_connection()
    table = events_table(events, con)
    report = MonitorReport(
        checked_at=_iso(checked_at) or "", events_start=_iso(events_start), events_end=_iso(events_end),
        thresholds={k: v for k, v in settings.model_dump().items() if isinstance(v, int | float)},
    )
    ordered = sorted(snapshots, key=lambda s: (_utc(s.meta.get("as_of", s.created_at)), s.created_at))
    records: dict[str, pd.DataFrame] = {}
    for info in ordered:
        quality, frame = _snapshot(info, table, read_records, report, client, default_spec, settings,
                                   events_start, events_end, con)
        report.snapshots.append(quality)
        if frame is not None:
            records[info.snapshot_id] = frame
    _consecutive(report, records, settings)
    readable = [s for s in report.snapshots if s.snapshot_id in records]
    if readable and load_bundle is not None:
        _reference(report, readable[-1], records[readable[-1].snapshot_id], table, settings, load_bundle,
                   history_start, seed, con)
    report.findings.extend(findings(report, settings))
    return report


def _snapshot(
    info: SnapshotInfo, table: Any, read_records: Callable[[SnapshotInfo], pd.DataFrame], report: MonitorReport,
    client: Any, default_spec: LabelSpec, settings: MonitoringSettings, events_start: datetime | None,
    events_end: datetime, con: Any,
) -> tuple[SnapshotQuality, pd.DataFrame | None]:
    as_of = _utc(info.meta.get("as_of", info.created_at))
    try:
        frame: pd.DataFrame | None = read_records(info)
    except (OSError, ValueError) as exc:
        frame = None
        note = str(exc)
    models = _models(info, frame)
    quality = SnapshotQuality(info.snapshot_id, as_of.isoformat(), info.created_at.isoformat(), info.rows, models,
                              info.meta.get("audience_path"))
    if frame is None:
        quality.note = note
        return quality, None
    facts = {t: _facts(report, client, t, v) for t, v in models.items()}
    horizon = facts["last_mile_buyer"].horizon_days or default_spec.horizon_days
    lapse = facts["lapse_risk"].lapse_days or default_spec.lapse_days
    quality.targets = backtest(frame, as_of, table, horizon_days=horizon, lapse_days=lapse, events_end=events_end,
                               events_start=events_start, n_bins=settings.ece_bins, con=con)
    return quality, frame


def _facts(report: MonitorReport, client: Any, target: str, version: str | None) -> VersionFacts:
    seen = report.versions.setdefault(target, {})
    key = version or "?"
    if key not in seen:
        seen[key] = (version_facts(client, target, version) if client is not None else
                     VersionFacts(target, version, False, note="no registry to look the version up in"))
    return seen[key]


def _consecutive(report: MonitorReport, records: dict[str, pd.DataFrame], settings: MonitoringSettings) -> None:
    """Score PSI and mix shifts of every readable snapshot against the readable one before it."""
    readable = [s for s in report.snapshots if s.snapshot_id in records]
    kinds = {**{c: "score" for c in SCORE_COLUMN.values()}, **{c: "mix" for c in MIX_COLUMNS}}
    warn, alert = settings.psi_warn, settings.psi_alert
    for before, after in pairwise(readable):
        profile = records_profile(records[before.snapshot_id], settings.psi_bins, kinds)
        common = {"snapshot_id": after.snapshot_id, "baseline": before.snapshot_id, "warn": warn, "alert": alert}
        for target in TARGETS:
            rows = drift_rows(target, profile, records[after.snapshot_id], None, **common)
            report.drift.extend(DriftRow(scope=PREVIOUS, **r) for r in rows)
        report.mix.extend(MixShift(scope=PREVIOUS, **m) for m in mix_rows(profile, records[after.snapshot_id],
                                                                         **common))


@contextmanager
def _feature_source(table: Any, settings: MonitoringSettings, seed: int, con: Any) -> Iterator[Callable[..., Any]]:
    """``raw(as_of, spec)``: the (cached) feature table of a seeded sample of at most ``drift_users`` users."""
    cache: dict[tuple[datetime, Any], pd.DataFrame] = {}
    with sampled_events(table, settings.drift_users, seed, con) as (sample, _users):
        def raw(as_of: datetime, spec: Any) -> pd.DataFrame:
            if (as_of, spec) not in cache:
                cache[(as_of, spec)] = build_features(sample, as_of, spec, con=con)
            return cache[(as_of, spec)]

        yield raw


def _reference(
    report: MonitorReport, latest: SnapshotQuality, records: pd.DataFrame, table: Any, settings: MonitoringSettings,
    load_bundle: BundleLoader, history_start: datetime | None, seed: int, con: Any,
) -> None:
    """Drift of the newest snapshot against the training reference of each of its models."""
    as_of = _utc(latest.as_of)
    warn, alert = settings.psi_warn, settings.psi_alert
    with _feature_source(table, settings, seed, con) as raw:
        mixed = False
        for target, version in latest.models.items():
            facts = report.versions.get(target, {}).get(version or "?")
            if version is None or facts is None or not facts.known:
                report.notes.append(f"{target}: no training reference (version {version or 'unknown'} not in the "
                                    "registry)")
                continue
            bundle = load_bundle(target, version)
            cutoff = _utc(facts.train_cutoff) if facts.train_cutoff else None
            usable = history_start is not None and cutoff is not None and _utc(history_start) < cutoff
            profile, source = model_reference(bundle, cutoff, raw if usable else None, top=settings.top_features,
                                              bins=settings.psi_bins)
            if profile is None:
                report.notes.append(source)
                continue
            report.notes.append(f"{target} v{version}: training reference {source}")
            current = (design_frame(bundle, raw(as_of, bundle.spec))
                       if history_start is not None and _utc(history_start) < as_of else None)
            baseline = f"{target} v{version} @ {cutoff:%Y-%m-%d}" if cutoff else f"{target} v{version}"
            common = {"snapshot_id": latest.snapshot_id, "baseline": baseline, "warn": warn, "alert": alert}
            report.drift.extend(DriftRow(scope=REFERENCE, **r) for r in drift_rows(target, profile, records, current,
                                                                                   **common))
            if not mixed:
                report.mix.extend(MixShift(scope=REFERENCE, **m) for m in mix_rows(profile, records, **common))
                mixed = True

