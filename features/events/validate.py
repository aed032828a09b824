"""Read, validate and quarantine behavior events (CSV or Parquet) into the canonical contract.

:func:`validate_events` streams the sources through DuckDB (so inputs far larger than memory work),
normalises every row to the canonical schema of :mod:`features.events.schema`, writes the good rows to
``events.parquet``, every bad row with its reason to ``quarantine.csv`` and the counts to
``validation.json``. ``rows_in == accepted + quarantined + duplicates`` holds for every run.

Outputs in ``out_dir``:

- ``events.parquet``: canonical events (:func:`features.events.schema.arrow_schema`), exact duplicates
  removed, sorted by all columns (user_id, ts first). Not written when the run fails its threshold. With
  ``known`` (the event log's exported parts next to it), events equal to one of theirs are left out as
  duplicates too, so an export that repeats events already ingested through ``/events`` does not count them
  twice.
- ``quarantine.csv``: one row per bad input row: ``source_file``, ``source_row`` (1-based; the
  line number for CSV with a header counted as line 1, the row index for Parquet), the raw values
  of the seven canonical columns as text, ``raw_line`` (only for CSV lines that could not be split
  into columns) and ``reason`` (see :data:`REASONS`).
- ``validation.json``: :meth:`ValidationReport.to_dict`.

The work runs in DuckDB with a memory limit (spilling to a temporary folder inside ``out_dir``):
pass 1 keeps only the bad rows with their row numbers, a count pass checks the accounting, pass 2
streams the good rows, sorted, into Parquet.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.events.passes import (
    bad_counts,
    count_parsed_rows,
    examples,
    find_bad_rows,
    plan_source,
    write_good_rows,
    write_quarantine,
)
from features.events.schema import CANONICAL_COLUMNS, arrow_schema
from features.events.sources import EventsError, MissingColumnError, SourceError, query, resolve_sources, sql_str
from features.events.sql import EPOCH_FACTORS, REASON_TEXT, REASONS, set_timezone_sql

__all__ = [
    "REASONS",
    "EventsError",
    "InvariantError",
    "MissingColumnError",
    "NothingToStoreError",
    "ReadOptions",
    "SourceError",
    "TooManyBadRowsError",
    "ValidationConfig",
    "ValidationReport",
    "load_events",
    "validate_events",
]

Progress = Callable[[int, int | None], None]
_STAGES = 4


@dataclass(frozen=True)
class ReadOptions:
    """How to read the event sources.

    ``header``: None auto-detects (a first line naming a known column is always a header).
    ``names``: column names for header-less CSV (they replace the header when there is one).
    ``delimiter``: None auto-detects. These three apply to CSV only.
    ``columns``: source name -> canonical name; unmapped source columns keep their name when it is
    canonical (case-insensitive) and are ignored otherwise.
    ``source_tz``: IANA zone of naive timestamps (text without offset, Parquet TIMESTAMP without
    zone); all timestamps are stored as UTC. ``epoch_unit``: unit of numeric timestamps
    ("s", "ms", "us", "ns"). ``format``: "csv" or "parquet" to override detection by file suffix.
    """

    header: bool | None = None
    names: tuple[str, ...] | None = None
    columns: Mapping[str, str] = field(default_factory=dict, hash=False)
    source_tz: str = "UTC"
    delimiter: str | None = None
    epoch_unit: str = "s"
    format: str | None = None

    def __post_init__(self) -> None:
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "columns", MappingProxyType(dict(self.columns)))
        bad = sorted(v for v in self.columns.values() if v not in CANONICAL_COLUMNS)
        if bad:
            raise ValueError(
                f"ReadOptions.columns maps to unknown column(s) {bad}; "
                f"canonical columns are {', '.join(CANONICAL_COLUMNS)}"
            )
        try:
            ZoneInfo(self.source_tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"ReadOptions.source_tz {self.source_tz!r} is not an IANA time zone") from None
        if self.epoch_unit not in EPOCH_FACTORS:
            raise ValueError(f"ReadOptions.epoch_unit must be one of {list(EPOCH_FACTORS)}")
        if self.format not in (None, "csv", "parquet"):
            raise ValueError("ReadOptions.format must be None, 'csv' or 'parquet'")
        if self.delimiter == "":
            raise ValueError("ReadOptions.delimiter must not be empty (None auto-detects)")

    @classmethod
    def taobao(cls, **overrides: Any) -> ReadOptions:
        """The Taobao UserBehavior format: no header, ``user_id,item_id,category_id,behavior,ts``,
        comma-separated, ts in epoch seconds, behaviors pv/fav/cart/buy."""
        base: dict[str, Any] = {
            "header": False,
            "names": ("user_id", "item_id", "category_id", "behavior", "ts"),
            "delimiter": ",",
            "epoch_unit": "s",
            "format": "csv",
        }
        base.update(overrides)
        return cls(**base)


@dataclass(frozen=True)
class ValidationConfig:
    """Validation thresholds.

    ``as_of``: the run's cutoff (tz-aware); None uses the caller's ``now``. Rows with
    ``ts > as_of + future_tolerance`` are quarantined as ``future_ts``. The run fails when more than
    ``max_bad_share`` (a fraction, 0.01 = 1%) of the input rows are quarantined. ``memory_limit`` caps
    DuckDB's memory (it spills to disk beyond it).
    """

    as_of: datetime | None = None
    future_tolerance: timedelta = timedelta(hours=1)
    max_bad_share: float = 0.01
    memory_limit: str = "2GB"

    def __post_init__(self) -> None:
        if self.as_of is not None and self.as_of.utcoffset() is None:
            raise ValueError("ValidationConfig.as_of must be timezone-aware (e.g. UTC)")
        if not 0.0 <= self.max_bad_share <= 1.0:
            raise ValueError(f"ValidationConfig.max_bad_share must be in [0, 1], got {self.max_bad_share}")
        if self.future_tolerance < timedelta(0):
            raise ValueError("ValidationConfig.future_tolerance must not be negative")


@dataclass(frozen=True)
class ValidationReport:
    """Counts and output paths of one validation run (``rows_in == accepted + quarantined + duplicates``).

    ``bad_share`` is ``quarantined / rows_in`` (0 for empty input). ``already_known`` is the part of
    ``duplicates`` left out because the ``known`` files already hold them. ``by_reason`` counts quarantined
    rows per reason (every reason listed, zeros included); ``examples`` holds up to three of the most
    frequent raw values per reason. ``events_path`` is None when the run failed its threshold.
    """

    rows_in: int
    accepted: int
    quarantined: int
    duplicates: int
    by_reason: dict[str, int]
    events_path: Path | None
    quarantine_path: Path
    report_path: Path
    bad_share: float
    max_bad_share: float
    cutoff: datetime
    sources: tuple[str, ...]
    columns: dict[str, str]
    examples: dict[str, list[str]]
    passed: bool
    already_known: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (paths as strings, cutoff as ISO 8601)."""
        return {
            "passed": self.passed,
            "rows_in": self.rows_in,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "duplicates": self.duplicates,
            "already_known": self.already_known,
            "bad_share": self.bad_share,
            "max_bad_share": self.max_bad_share,
            "by_reason": dict(self.by_reason),
            "examples": {k: list(v) for k, v in self.examples.items()},
            "cutoff": self.cutoff.isoformat(),
            "sources": list(self.sources),
            "columns": dict(self.columns),
            "events_path": None if self.events_path is None else str(self.events_path),
            "quarantine_path": str(self.quarantine_path),
            "report_path": str(self.report_path),
        }


class TooManyBadRowsError(EventsError):
    """More than ``max_bad_share`` of the rows were quarantined. ``report`` holds the counts;
    the quarantine file and report were written. The CLI exits with ``exit_code``."""

    exit_code = 3  # CLI exit code: too many bad rows

    def __init__(self, report: ValidationReport, message: str) -> None:
        super().__init__(message)
        self.report = report


class NothingToStoreError(EventsError):
    """No event of the run is left to store, and ``events.parquet`` in the output folder holds events: that file is
    kept (the report and quarantine file were written). ``report`` holds the counts."""

    exit_code = 1  # CLI exit code: bad input

    def __init__(self, report: ValidationReport, message: str) -> None:
        super().__init__(message)
        self.report = report


class InvariantError(RuntimeError):
    """The row accounting did not add up (a bug, never bad input)."""


def _cutoff(config: ValidationConfig, now: datetime) -> datetime:
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
    base = config.as_of if config.as_of is not None else now
    return (base + config.future_tolerance).astimezone(UTC)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _failure_message(report: ValidationReport) -> str:
    lines = [
        (
            f"{report.bad_share:.2%} of {report.rows_in:,} rows were quarantined, above the limit of "
            f"{report.max_bad_share:.2%} (max_bad_share={report.max_bad_share:g}):"
        )
    ]
    for reason in REASONS:
        n = report.by_reason.get(reason, 0)
        if not n:
            continue
        col, text = REASON_TEXT[reason]
        source = report.columns.get(col)
        if source is not None and source != col:
            col = f"{col} (source column {source!r})"
        if reason == "future_ts":
            text += f" ({report.cutoff.isoformat()})"
        eg = report.examples.get(reason)
        suffix = f", e.g. {', '.join(eg)}" if eg else ""
        lines.append(f"  {col}: {n:,} row{'' if n == 1 else 's'} {text}{suffix}")
    lines.append(f"Quarantined rows: {report.quarantine_path}; report: {report.report_path}")
    return "\n".join(lines)


def _check_invariant(report: ValidationReport, parsed: int, valid: int, written_quarantine: int) -> None:
    """Raise :class:`InvariantError` unless every input row is accounted for exactly once."""
    problems = []
    r = report
    if r.rows_in != r.accepted + r.quarantined + r.duplicates or r.duplicates < 0:
        problems.append(
            f"rows_in {r.rows_in} != accepted {r.accepted} + quarantined {r.quarantined} "
            f"+ duplicates {r.duplicates}"
        )
    parsed_quarantined = r.quarantined - r.by_reason.get("malformed_row", 0)
    if parsed != valid + parsed_quarantined:
        problems.append(f"the reader yields {parsed} rows, but {valid} good + {parsed_quarantined} bad were classified")
    if written_quarantine != r.quarantined:
        problems.append(f"quarantine file has {written_quarantine} rows, expected {r.quarantined}")
    if problems:
        raise InvariantError("row accounting broken: " + "; ".join(problems))


def validate_events(
    sources: str | Path | Sequence[str | Path],
    out_dir: Path,
    config: ValidationConfig,
    options: ReadOptions = ReadOptions(),
    *,
    now: datetime,
    progress: Progress | None = None,
    known: Sequence[Path] = (),
    keep_nonempty: bool = False,
) -> ValidationReport:
    """Validate event sources into ``out_dir/events.parquet``, ``quarantine.csv`` and ``validation.json``.

    ``sources``: a CSV or Parquet file, a directory of Parquet parts, a glob, or a sequence of these
    (one format). ``now`` (tz-aware) is the cutoff when ``config.as_of`` is None. Output events
    follow :func:`features.events.schema.arrow_schema`, without exact duplicates (first copy kept), sorted
    by user_id, ts. ``progress(done, total)`` is called with pipeline stages done (of 4). ``known``: canonical
    Parquet files of events already in the history (the event log's exported parts); a row equal to one of their
    events (every column) is left out and counted as a duplicate (``already_known``). ``keep_nonempty``: a run
    with no event left to store does not replace an ``events.parquet`` that holds events (the clean history):
    :class:`NothingToStoreError` after the report is written.

    Raises :class:`SourceError` (unreadable input), :class:`MissingColumnError` (required column
    absent) and, after writing the quarantine file and report (but no events file),
    :class:`TooManyBadRowsError` when ``quarantined / rows_in > config.max_bad_share``.
    """
    cutoff = _cutoff(config, now)
    files = resolve_sources(sources, options.format)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path = out_dir / "events.parquet"
    quarantine_path = out_dir / "quarantine.csv"
    report_path = out_dir / "validation.json"
    if progress:
        progress(0, _STAGES)
    work = Path(tempfile.mkdtemp(prefix=".validate-", dir=out_dir))
    events_tmp = work / "events.parquet"
    con = duckdb.connect(
        str(work / "staging.duckdb"),
        config={"memory_limit": config.memory_limit, "temp_directory": str(work / "spill")},
    )
    try:
        query(con, set_timezone_sql(options.source_tz))
        plan = plan_source(
            con,
            files,
            header=options.header,
            delimiter=options.delimiter,
            names=options.names,
            mapping=dict(options.columns),
            epoch_unit=options.epoch_unit,
            cutoff_sql=f"TIMESTAMPTZ {sql_str(cutoff.isoformat())}",
        )
        find_bad_rows(con, plan)
        written_q = write_quarantine(con, plan, quarantine_path)
        counts = bad_counts(con)
        if progress:
            progress(1, _STAGES)
        parsed = count_parsed_rows(con, plan)
        if progress:
            progress(2, _STAGES)
        valid, accepted, already = write_good_rows(con, plan, events_tmp, known)
        if progress:
            progress(3, _STAGES)
        by_reason = {r: counts.get(r, 0) for r in REASONS}
        quarantined = sum(by_reason.values())
        rows_in = valid + quarantined
        bad_share = quarantined / rows_in if rows_in else 0.0
        passed = bad_share <= config.max_bad_share
        kept = _stored_rows(events_path) if keep_nonempty and passed and accepted == 0 else 0
        report = ValidationReport(
            rows_in=rows_in,
            accepted=accepted,
            quarantined=quarantined,
            duplicates=valid - accepted,
            by_reason=by_reason,
            events_path=events_path if passed and not kept else None,
            quarantine_path=quarantine_path,
            report_path=report_path,
            bad_share=bad_share,
            max_bad_share=config.max_bad_share,
            cutoff=cutoff,
            sources=tuple(str(p) for p in files.paths),
            columns=dict(plan.columns.source),
            examples=examples(con) if quarantined else {},
            passed=passed,
            already_known=already,
        )
        _check_invariant(report, parsed, valid, written_q)
        if kept:
            pass  # nothing new: the events already stored stay
        elif passed:
            os.replace(events_tmp, events_path)
        else:
            events_path.unlink(missing_ok=True)  # never leave a stale file next to a failed report
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)
    _atomic_write_text(report_path, json.dumps(report.to_dict(), indent=2) + "\n")
    if progress:
        progress(4, _STAGES)
    if not passed:
        raise TooManyBadRowsError(report, _failure_message(report))
    if kept:
        raise NothingToStoreError(report, (
            f"no event of this export is left to store ({report.quarantined:,} quarantined, {report.duplicates:,} "
            f"duplicates, {report.already_known:,} of them already in the history); {events_path} and its "
            f"{kept:,} events are kept"))
    return report


def _stored_rows(path: Path) -> int:
    """Rows of an existing events file (0 when there is none or it cannot be read)."""
    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except (OSError, pa.ArrowException):
        return 0


def load_events(path: Path) -> pd.DataFrame:
    """Read a canonical events file (or directory of parts) into pandas, for small data.

    Columns as :data:`features.events.schema.CANONICAL_COLUMNS`; ``ts`` is ``datetime64[us, UTC]``,
    ``amount`` float64, the others strings. Raises :class:`MissingColumnError` for a non-canonical file.
    """
    table = pq.read_table(path)
    missing = [c for c in CANONICAL_COLUMNS if c not in table.column_names]
    if missing:
        raise MissingColumnError(
            f"{path} is not a canonical events file: missing {', '.join(missing)}; "
            f"columns seen: {', '.join(table.column_names)}"
        )
    schema = pa.schema([f.with_nullable(True) for f in arrow_schema()])
    table = table.select(list(CANONICAL_COLUMNS)).cast(schema)
    frame = table.to_pandas()
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    frame["amount"] = frame["amount"].astype("float64")
    return frame
