"""``propensity monitor``: realized quality of every kept snapshot, drift, and alerts (exit code 5)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import ALERT, DataDir, events_path, settings, time_option, utc
from propensity.cli.inputs import InputError, check_events
from propensity.cli.ui import console, frame_table
from propensity.config import Settings
from propensity.paths import check_output, replace_atomically

EventsOpt = Annotated[list[Path] | None, typer.Option(
    "--events", help="Clean events (Parquet from `propensity validate`), repeatable, not overlapping: the days after "
    "each snapshot's as_of for its labels, and the history before it for the feature drift.",
    show_default="<data-dir>/clean/events.parquet", metavar="FILE")]
LATEST = "latest.json"


def monitor(
    events: EventsOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the report as JSON here.")] = None,
    since: Annotated[datetime | None, time_option(
        "--since", help="The events are complete from this time.",
        show_default="midnight (UTC) of the first event's day")] = None,
    until: Annotated[datetime | None, time_option(
        "--until", help="The events are complete up to this time.", show_default="the last event")] = None,
    data_dir: DataDir = None,
) -> None:
    """Backtest every kept score snapshot against what its users did next (an estimate while its label window is
    open), measure drift against the previous snapshot and the models' training reference, log it all to MLflow.
    Exit code 5 when monitoring alerts (realized AUC too far below the test AUC, calibration error or score PSI over
    its threshold)."""
    cfg = settings(data_dir=data_dir)
    if json_out is not None:
        check_output(json_out, cfg)
    report = run_monitor(cfg, events, since=utc(since), until=utc(until))
    if json_out is not None:
        text = report.to_json()
        replace_atomically(json_out, lambda tmp: tmp.write_text(text))
        console().print(f"report written to {json_out}")
    if report.alert:
        raise typer.Exit(ALERT)


def event_paths(cfg: Settings, events: list[Path] | None) -> list[Path]:
    """The checked clean-event inputs: ``--events`` or the settings' clean events."""
    if not events:
        return [check_events(events_path(cfg, None), default=True)]
    return [check_events(p) for p in events]


def run_monitor(cfg: Settings, events: list[Path] | None, *, since: datetime | None = None,
                until: datetime | None = None, quiet: bool = False) -> Any:
    """Monitor the kept snapshots with the events, log the report to MLflow, keep it as ``<data-dir>/monitoring/
    latest.json``, print it (unless ``quiet``) and return it (:class:`serving.monitoring.MonitorReport`)."""
    import pandas as pd

    from features.build.builder import default_connection, events_table
    from serving.monitoring import load_version_bundle, log_monitoring, monitor
    from serving.store.base import open_store
    from training.labels import LabelSpec
    from training.registry import Registry

    con = default_connection()
    tables = [events_table(p, con) for p in event_paths(cfg, events)]
    table = tables[0] if len(tables) == 1 else tables[0].union(*tables[1:])
    first, last = table.aggregate(t0=table.ts.min(), t1=table.ts.max()).to_pandas().iloc[0]
    if pd.isna(first):
        raise InputError("the events are empty: pass the events after the snapshots' as_of (and their history)")
    first = pd.Timestamp(first).tz_convert("UTC") if pd.Timestamp(first).tzinfo else pd.Timestamp(first, tz="UTC")
    last = pd.Timestamp(last).tz_convert("UTC") if pd.Timestamp(last).tzinfo else pd.Timestamp(last, tz="UTC")
    store = open_store(cfg.store_path, cfg.redis_url, keep=cfg.serving.keep_snapshots)
    try:
        kept = store.snapshots()
    finally:
        store.close()
    reg = Registry(cfg.tracking_uri, cfg.artifact_root)
    report = monitor(
        kept, table, settings=cfg.monitoring,
        default_spec=LabelSpec(cfg.training.horizon_days, cfg.training.lapse_days or LabelSpec().lapse_days),
        events_start=since or first.floor("D").to_pydatetime(), events_end=until or last.to_pydatetime(),
        history_start=first.to_pydatetime(), checked_at=datetime.now(UTC), client=reg.client,
        load_bundle=lambda target, version: load_version_bundle(cfg.tracking_uri, target, version),
        seed=cfg.seed, con=con,
    )
    run_id = log_monitoring(report, cfg.tracking_uri, experiment=cfg.monitoring.experiment,
                            artifact_root=cfg.artifact_root)
    text = report.to_json()
    replace_atomically(cfg.monitoring_dir / LATEST, lambda tmp: tmp.write_text(text))
    if not quiet:
        print_report(report)
        console().print(f"MLflow run {run_id} in experiment '{cfg.monitoring.experiment}' at {cfg.tracking_uri}; "
                        f"latest report in {cfg.monitoring_dir / LATEST}", soft_wrap=True)
    return report


def _num(value: Any, fmt: str = "{:.3f}") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else fmt.format(value)


def quality_frame(report: Any) -> Any:
    """One row per snapshot and target: status, users, realized / expected AUC and ECE, test AUC, lift, precision."""
    import pandas as pd

    rows = []
    for snap in report.snapshots:
        for target, q in snap.targets.items():
            version = snap.models.get(target)
            facts = report.versions.get(target, {}).get(version or "?")
            real = q.realized or {}
            rows.append({
                "snapshot": snap.snapshot_id, "target": target, "version": version or "?", "status": q.status,
                "users": f"{q.users:,}", "AUC": _num(real.get("auc")), "expected AUC": _num(q.expected.get("auc")),
                "test AUC": _num(facts.test.get("auc") if facts else None), "ECE": _num(real.get("ece")),
                "expected ECE": _num(q.expected.get("ece")), "lift@5%": _num(real.get("lift_top5"), "{:.2f}"),
                "precision@audience": (f"{_num(real.get('precision_audience'))} of {q.audience_size:,}"
                                       if q.audience_size else "-"),
            })
        if not snap.targets:
            rows.append({"snapshot": snap.snapshot_id, "target": "-", "status": "unreadable"})
    return pd.DataFrame(rows).set_index("snapshot") if rows else pd.DataFrame()


def drift_frame(report: Any, features: int = 10) -> Any:
    """Score rows, then the ``features`` feature rows with the highest PSI."""
    import pandas as pd

    scores = [d for d in report.drift if d.kind == "score"]
    moved = sorted((d for d in report.drift if d.kind == "feature"), key=lambda d: -d.psi)[:features]
    rows = [{"column": d.column, "against": f"{d.scope} ({d.baseline})", "PSI": _num(d.psi), "level": d.level,
             "missing": f"{_num(d.missing_baseline, '{:.1%}')} -> {_num(d.missing_now, '{:.1%}')}"}
            for d in [*scores, *moved]]
    rows += [{"column": f"{m.column} mix", "against": f"{m.scope} ({m.baseline})", "PSI": _num(m.psi),
              "level": m.level, "missing": ""} for m in report.mix]
    return pd.DataFrame(rows).set_index("column") if rows else pd.DataFrame()


def print_report(report: Any) -> None:
    """The quality table, the drift table, then the alerts and warnings (one line each) and the summary."""
    out = console()
    quality = quality_frame(report)
    if not quality.empty:
        out.print(frame_table("models in production: realized (closed windows) vs expected quality", quality))
    drift = drift_frame(report)
    if not drift.empty:
        out.print(frame_table("drift (population stability index)", drift))
    for note in report.notes:
        out.print(f"  {note}", soft_wrap=True, highlight=False)
    for finding in report.findings:
        style = "bold red" if finding.level == "alert" else "yellow"
        out.print(f"[{style}]{finding.level}:[/] {finding.message}", soft_wrap=True, highlight=False)
    style = "bold red" if report.alert else "green"
    out.print(f"[{style}]{report.summary()}[/]", soft_wrap=True, highlight=False)

