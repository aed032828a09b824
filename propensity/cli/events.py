"""Event ingestion command: ``propensity ingest FILE... [--export]``.

Each file is checked like ``propensity validate`` (bad rows quarantined with their reasons and not ingested; too
many of them stop the command with exit code 3) and its good rows are appended to the event log in one transaction:
all of the file's events or none. One append holds a Redis log's server for its length (about 20 us per event), so
there a file of more than 200,000 events is refused in one line unless ``--split`` stores it in appends of that
size, each whole. The log is the SQLite file ``Settings.events_log_path``, or, when ``redis_url`` is
set, the Redis log under ``events_redis_prefix`` (:func:`propensity.cli.eventlog.open_log`). Events already in the
log count as duplicates, so ingesting a file twice stores it once. ``--export`` (and ``propensity score`` before it
reads the clean events) moves the log's events not yet exported into ``<data-dir>/clean`` as ``ingested-*.parquet``
parts, where every command reading the clean events finds them; ``propensity validate`` into that folder and
``propensity retrain`` leave out the rows of a new export those parts already hold, and ``retrain`` trains on its
newly validated events together with the parts (:func:`with_ingested`).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import DataDir, settings
from propensity.cli.eventlog import export_history, open_log
from propensity.cli.inputs import InputError
from propensity.cli.ui import console, kv_table
from propensity.config import Settings
from propensity.paths import check_output


def ingest(
    files: Annotated[list[Path] | None, typer.Argument(
        help="Event file(s), CSV or Parquet, checked like `propensity validate`; each is stored in one "
             "transaction.", show_default=False)] = None,
    export: Annotated[bool, typer.Option(
        "--export", help="Then move the log's events not yet exported into <data-dir>/clean, where `propensity "
                         "score`, `train` and `features` read them.")] = False,
    taobao: Annotated[bool, typer.Option(help="Input is the Taobao UserBehavior CSV (no header).")] = False,
    source_tz: Annotated[str | None, typer.Option(
        help="IANA time zone of naive timestamps, e.g. Asia/Shanghai.", show_default="UTC")] = None,
    max_bad_share: Annotated[float | None, typer.Option(
        help="Share of bad rows that stops the file (exit code 3).", min=0.0, max=1.0, show_default="0.01")] = None,
    split: Annotated[bool, typer.Option(
        "--split", help="With a Redis event log: store a file of more than 200,000 events in parts of that size, "
                        "each whole (one append holds Redis for its length). A part that fails leaves the ones "
                        "before it stored; ingesting the same file again stores only the rest.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Append event files to the event log, each exactly once (events already stored count as duplicates); bad
    rows are quarantined as by `propensity validate`. With --export, move the new events into the clean history."""
    if not files and not export:
        raise typer.BadParameter("give event FILE(s) to ingest, --export, or both", param_hint="FILE")
    cfg = settings(data_dir=data_dir)
    for n, file in enumerate(files or [], start=1):
        ingest_file(cfg, file, n, taobao=taobao, source_tz=source_tz, max_bad_share=max_bad_share, split=split)
    if export:
        result = export_history(cfg)
        if result is None:
            console().print(f"no event to export: {cfg.clean_dir} already holds every event of the log")


def ingest_file(cfg: Settings, file: Path, n: int = 1, *, taobao: bool = False, source_tz: str | None = None,
                max_bad_share: float | None = None, split: bool = False) -> Any:
    """Validate ``file`` into a staging folder under ``<data-dir>/events/ingest`` and append its good rows to the
    event log; print and return the :class:`features.events.rows.AppendResult`. The staging folder keeps the
    quarantine file and report when rows were quarantined (and when the file fails its threshold), else it goes.

    A log with a ``max_one_append`` (Redis) refuses a file of more good events than that with an
    :class:`InputError`, storing nothing, unless ``split``: then the events go in parts of that size, each whole."""
    from features.events.validate import load_events
    from propensity.cli.data import run_validation

    staging = check_output(cfg.data_dir / "events" / "ingest" / f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{n}", cfg,
                           is_dir=True)
    report = run_validation(cfg, [file], out=staging, taobao=taobao, source_tz=source_tz,
                            max_bad_share=max_bad_share)
    from features.events.rows import AppendResult

    frame = load_events(report.events_path)
    with open_log(cfg) as log:
        where = log.location
        parts = _append_parts(frame, log.max_one_append, split, file, where, staging)
        results = [log.append(part) for part in parts]
    result = AppendResult(sum(r.accepted for r in results), sum(r.duplicates for r in results),
                          results[-1].last_seq)
    report.events_path.unlink(missing_ok=True)
    rows: dict[str, Any] = {
        "rows in": report.rows_in, "quarantined": report.quarantined, "repeated in the file": report.duplicates,
        "stored": result.accepted, "already in the log": result.duplicates, "last seq": result.last_seq,
        "event log": where,
    }
    if len(parts) > 1:
        rows["appends"] = len(parts)
    if report.quarantined:
        rows["quarantine"] = report.quarantine_path
    else:
        shutil.rmtree(staging, ignore_errors=True)
    console().print(kv_table(f"ingested {file}", rows))
    return result


def _append_parts(frame: Any, limit: int | None, split: bool, file: Path, where: str, staging: Path) -> list[Any]:
    """``frame`` (the file's good events) as the appends to make: one, or parts of ``limit`` rows with ``split``.
    Raises :class:`InputError` (removing ``staging``, so nothing of the run is left) when ``frame`` holds more
    than ``limit`` events and ``split`` is off."""
    n = len(frame)
    if limit is None or n <= limit:
        return [frame]
    if not split:
        shutil.rmtree(staging, ignore_errors=True)
        raise InputError(
            f"{file}: {n:,} events in one append would hold the event log's Redis ({where}) for about "
            f"{n * 20e-6:.0f} s, and its other clients get BUSY after 5 s; nothing was stored: ingest it with "
            f"--split (appends of {limit:,} events) or in files of at most {limit:,} events")
    return [frame.iloc[start:start + limit] for start in range(0, n, limit)]


def with_ingested(cfg: Settings, staging: Path, events: Path) -> Path:
    """``events`` (a validation run's ``events.parquet`` in ``staging``) together with the ingested history: the
    event log is exported first, its parts in ``<data-dir>/clean`` are linked into ``staging`` (copied when a link
    is not possible) and the source is ``staging/*.parquet``; ``events`` itself when nothing was ingested."""
    import os

    from features.events.logbase import PART_GLOB

    export_history(cfg)
    parts = sorted(cfg.clean_dir.glob(PART_GLOB))
    if not parts:
        return events
    for part in parts:
        target = staging / part.name
        if not target.exists():
            try:
                os.link(part, target)
            except OSError:
                shutil.copy2(part, target)
    console().print(f"training on the validated events and {len(parts)} part(s) of ingested events")
    return staging / "*.parquet"
