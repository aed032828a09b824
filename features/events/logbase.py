"""What both event logs share after storage: the append entry points, the reads built on the backend's, and the
exactly-once export into the clean history.

:class:`BaseEventLog` turns events into checked rows (:mod:`features.events.rows`) and hands them to the backend's
``_commit``; a backend (:class:`features.events.log.EventLog` on SQLite,
:class:`features.events.redis_log.RedisEventLog` on Redis) provides the storage hooks listed on the class.

The export writes the events with seq above the watermark as canonical Parquet parts
(:func:`features.events.schema.arrow_schema`, sorted by user_id, ts, seq like the validator's output) named by
their seq range, ``ingested-<from>-<to>-<log id 8>.parquet`` (seqs zero-padded to 12 digits), whose footer
metadata names the log and the range. Each part is written under a temporary name, fsynced, renamed, the folder
fsynced, and then the watermark is committed; a part renamed before a crash is recognised by the next export (its
footer names this log and its range), which advances the watermark instead of writing the rows again.
"""

from __future__ import annotations

import json
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.events.rows import AppendResult, EventLogError, EventLogInputError, Row, frame_rows, record_rows
from features.events.schema import CANONICAL_COLUMNS, arrow_schema

__all__ = [
    "EXPORT_BATCH_ROWS", "MAX_PART_ROWS", "PART_GLOB", "BaseEventLog", "ExportResult", "arrow_batch", "user_arrays",
]

PART_GLOB = "ingested-*.parquet"
"""Names of the exported part files in the history directory."""
_PART = re.compile(r"^ingested-(\d+)-(\d+)-([0-9a-f]{8})\.parquet$")
_PART_META = b"propensity.event_log"
EXPORT_BATCH_ROWS = 200_000
"""Rows read from the log and written to Parquet at a time during an export (one row group each)."""
MAX_PART_ROWS = 2_000_000
"""Most rows of one exported part file; a larger backlog is exported as several parts in one call."""
_DICTIONARY_COLUMNS = ["user_id", "behavior", "category_id", "channel"]  # as the validator writes them


@dataclass(frozen=True)
class ExportResult:
    """One export: ``rows`` events written to ``paths`` (parts in seq order) covering seqs ``first_seq`` to
    ``last_seq``; ``recovered`` is the seq up to which parts written before a crash were recognised (0: none)."""

    rows: int
    paths: tuple[Path, ...]
    first_seq: int
    last_seq: int
    recovered: int = 0

    @property
    def path(self) -> Path:
        """The last part written."""
        return self.paths[-1]


T = TypeVar("T")


class BaseEventLog(ABC):
    """The public interface of an event log over a backend's storage hooks:

    - ``_commit(batches)``: store each list of rows all or none on its own, durably, as one commit; an
      :class:`EventLogError` in ``batches`` stands for a refused batch and is returned in its place;
    - ``last_seq``, ``count``, ``exported_seq``, ``users_after``, ``has_events_after``, ``user_event_arrays``;
    - ``_export_lock()`` (a context manager held by one export at a time across processes), ``_part_end``,
      ``_part_tables`` (the rows of a seq range as Arrow tables, sorted) and ``_set_watermark``;
    - ``close``; and the attributes ``log_id`` (32 hex digits) and ``location`` (text naming the log for messages).
    """

    log_id: str
    location: str
    remote: bool = False
    """True when a read is a network round trip (callers on an event loop then read it from a thread)."""
    max_one_append: int | None = None
    """The most events one append should hold, when an append holds a server shared with other clients (None: no
    limit; a longer append is still stored whole)."""

    # ------------------------------------------------------------------------------------------ backend hooks
    @abstractmethod
    def _commit(self, batches: list[list[Row] | EventLogError]) -> list[AppendResult | EventLogError]:
        """Store each list of rows all or none on its own, durably, in one commit (see the class docstring)."""

    @abstractmethod
    def last_seq(self) -> int:
        """The highest seq in the log (0 when it is empty)."""

    @abstractmethod
    def count(self) -> int:
        """Events in the log."""

    @abstractmethod
    def exported_seq(self) -> int:
        """The export watermark: every event with ``seq`` up to it is in an exported part."""

    @abstractmethod
    def users_after(self, seq: int) -> set[str]:
        """The users with an event of ``seq`` above ``seq``."""

    @abstractmethod
    def has_events_after(self, user_id: str, seq: int) -> bool:
        """Whether ``user_id`` has an event of ``seq`` above ``seq``."""

    @abstractmethod
    def user_event_arrays(self, user_id: str, after_seq: int = 0) -> dict[str, np.ndarray]:
        """The events of ``user_id`` with ``seq`` above ``after_seq``, ordered by ts then seq, as aligned arrays:
        ``seq`` and ``ts_us`` (UTC epoch microseconds) int64, ``behavior``, ``item_id``, ``category_id``,
        ``channel`` object (None for null), ``amount`` float64 (NaN for null)."""

    @abstractmethod
    def close(self) -> None:
        """Release the log's connections (it cannot be used afterwards)."""

    @abstractmethod
    def _export_lock(self) -> AbstractContextManager[None]:
        """Held by one export at a time, across processes (and hosts, for a shared backend)."""

    @abstractmethod
    def _part_end(self, after: int, last: int, max_rows: int) -> int:
        """The seq that ends a part starting after ``after``: ``last``, or the ``max_rows``-th seq after ``after``."""

    @abstractmethod
    def _part_tables(self, after: int, upto: int, schema: pa.Schema) -> Iterator[pa.Table]:
        """The events with ``after < seq <= upto`` as tables of ``schema``, in (user_id, ts, seq) order across
        all of them. Raises :class:`EventLogError` when the log cannot be read."""

    @abstractmethod
    def _set_watermark(self, seq: int) -> None:
        """Commit the export watermark (never moved back)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ append
    def append(self, events: pd.DataFrame) -> AppendResult:
        """Store ``events`` (canonical columns of :data:`features.events.schema.CANONICAL_COLUMNS`, ``ts`` as
        timestamps (naive = UTC), plus an optional text column ``event_id``) in one commit: all of them or,
        on any error, none. An event whose id is already in the log (or earlier in the batch) counts as a duplicate
        and is not stored again. Durable when it returns.

        Raises :class:`EventLogInputError` (a row breaks the contract; the message names it) or
        :class:`EventLogError` (the log cannot be written).
        """
        return self._append(frame_rows(events, time.time_ns() // 1000) if len(events) else [])

    def append_records(self, records: Sequence[Mapping[str, Any]]) -> AppendResult:
        """:meth:`append` for event mappings (keys of :data:`CANONICAL_COLUMNS` and an optional ``event_id``; ``ts``
        an aware datetime (naive = UTC) or UTC epoch microseconds; a missing key is null), without pandas: the
        ingestion path of ``POST /events``."""
        return self._append(record_rows(records, time.time_ns() // 1000))

    def append_groups(self, groups: Sequence[Sequence[Mapping[str, Any]]]) -> list[AppendResult | EventLogError]:
        """Append several independent batches of event mappings (as :meth:`append_records`) in one commit, so
        one disk sync makes them all durable (a group commit): each batch is stored all or none on its own. Returns
        one result per batch, in order: its :class:`AppendResult`, or the :class:`EventLogError`
        (:class:`EventLogInputError` for a contract breach) that kept it out. Durable when it returns; raises
        :class:`EventLogError` when the commit itself fails (then no batch was stored)."""
        received = time.time_ns() // 1000
        prepared: list[list[Row] | EventLogError] = []
        for group in groups:
            try:
                prepared.append(record_rows(group, received))
            except EventLogInputError as exc:
                prepared.append(exc)
        return self._commit(prepared)

    def _append(self, rows: list[Row]) -> AppendResult:
        result = self._commit([rows])[0]
        if isinstance(result, EventLogError):
            raise result
        return result

    # ------------------------------------------------------------------------------------------ reads
    def user_events(self, user_id: str, after_seq: int = 0) -> pd.DataFrame:
        """The events of ``user_id`` with ``seq`` above ``after_seq`` as a canonical frame ordered by ts (columns
        :data:`CANONICAL_COLUMNS`; ``ts`` ``datetime64[us, UTC]``, ``amount`` float64, the others strings)."""
        a = self.user_event_arrays(user_id, after_seq)
        return pd.DataFrame({
            "user_id": np.full(len(a["seq"]), user_id, dtype=object),
            "ts": pd.to_datetime(a["ts_us"], unit="us", utc=True).as_unit("us"),
            "behavior": a["behavior"], "item_id": a["item_id"], "category_id": a["category_id"],
            "channel": a["channel"], "amount": a["amount"],
        }, columns=list(CANONICAL_COLUMNS))

    # ------------------------------------------------------------------------------------------ export
    def export(self, dest_dir: Path, *, max_part_rows: int = MAX_PART_ROWS) -> ExportResult | None:
        """Write the events not yet exported into ``dest_dir`` as canonical Parquet parts of at most
        ``max_part_rows`` rows (see the module docstring), each then recorded by the watermark; None when there is
        nothing to export. Parts of this log renamed into ``dest_dir`` before a crash are recognised, never written
        twice. Raises :class:`EventLogError` when the log or the folder cannot be used."""
        return self.export_then(dest_dir, lambda _watermark: None, max_part_rows=max_part_rows)[0]

    def export_then(
        self, dest_dir: Path, read: Callable[[int], T], *, max_part_rows: int = MAX_PART_ROWS
    ) -> tuple[ExportResult | None, T]:
        """:meth:`export`, then ``read(watermark)`` while the export lock is still held: another export waits, so
        the parts ``read`` finds in ``dest_dir`` hold exactly this log's events up to the watermark it is given
        (a batch lists its event files this way). Returns the export's result and what ``read`` returned."""
        if max_part_rows < 1:
            raise ValueError(f"max_part_rows must be >= 1, got {max_part_rows}")
        dest_dir = Path(dest_dir)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EventLogError(f"cannot create the history folder {dest_dir}: {exc.strerror}") from None
        with self._export_lock():
            before = self.exported_seq()
            watermark = self._recover(dest_dir)
            recovered = watermark if watermark > before else 0
            last = self.last_seq()
            paths: list[Path] = []
            rows = 0
            first = watermark + 1
            while watermark < last:
                upto = self._part_end(watermark, last, max_part_rows)
                path, n = self._write_part(dest_dir, watermark, upto)
                self._set_watermark(upto)
                paths.append(path)
                rows += n
                watermark = upto
            found = read(watermark)
        if not paths:
            return None, found
        return ExportResult(rows=rows, paths=tuple(paths), first_seq=first, last_seq=watermark,
                            recovered=recovered), found

    def _part_name(self, after: int, upto: int) -> str:
        return f"ingested-{after + 1:012d}-{upto:012d}-{self.log_id[:8]}.parquet"

    def _write_part(self, dest_dir: Path, after: int, upto: int) -> tuple[Path, int]:
        """Write the events with ``after < seq <= upto`` (sorted by user_id, ts, seq) as one part: a temporary file,
        fsynced, renamed into place, the folder fsynced. Returns (path, rows). Does not move the watermark."""
        path = dest_dir / self._part_name(after, upto)
        tmp = dest_dir / f".{path.name}.tmp"
        schema = arrow_schema().with_metadata({
            _PART_META: json.dumps({"log_id": self.log_id, "first_seq": after + 1, "last_seq": upto}).encode(),
        })
        rows = 0
        try:
            with open(tmp, "wb") as fh:
                with pq.ParquetWriter(fh, schema, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS) as writer:
                    for table in self._part_tables(after, upto, schema):
                        writer.write_table(table)
                        rows += table.num_rows
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(dest_dir)
        except EventLogError:
            tmp.unlink(missing_ok=True)
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EventLogError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path, rows

    def _recover(self, dest_dir: Path) -> int:
        """The watermark after recognising this log's parts in ``dest_dir`` that lie beyond it (written and renamed
        by an export that crashed before it recorded them); leftover temporary files of such exports are removed."""
        watermark = self.exported_seq()
        for tmp in dest_dir.glob(".ingested-*.parquet.tmp"):
            if tmp.name.endswith(f"-{self.log_id[:8]}.parquet.tmp"):
                tmp.unlink(missing_ok=True)
        parts: dict[int, tuple[int, Path]] = {}
        for path in dest_dir.glob(PART_GLOB):
            m = _PART.match(path.name)
            if m is None or m.group(3) != self.log_id[:8]:
                continue
            first, last = int(m.group(1)), int(m.group(2))
            if last > watermark and self._is_ours(path, first, last):
                parts[first] = (last, path)
        advanced = watermark
        while advanced + 1 in parts:
            advanced = parts.pop(advanced + 1)[0]
        if parts:
            raise EventLogError(
                f"{dest_dir} holds parts of this event log beyond its export watermark {advanced} that do not follow "
                f"it ({', '.join(p.name for _, p in parts.values())}); move them away and export again")
        if advanced > watermark:
            self._set_watermark(advanced)
        return advanced

    def _is_ours(self, path: Path, first: int, last: int) -> bool:
        try:
            meta = pq.read_schema(path).metadata or {}
            doc = json.loads(meta.get(_PART_META, b"{}"))
        except (OSError, pa.ArrowException, ValueError):
            return False
        return doc == {"log_id": self.log_id, "first_seq": first, "last_seq": last}


def user_arrays(rows: Sequence[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """Rows ``(seq, ts_us, behavior, item_id, category_id, channel, amount)`` (already in order) as the aligned
    arrays of ``user_event_arrays``: ``seq`` and ``ts_us`` int64, the texts object (None for null), ``amount``
    float64 (NaN for null)."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    out = {
        "seq": np.asarray(cols[0], dtype=np.int64),
        "ts_us": np.asarray(cols[1], dtype=np.int64),
        "amount": np.asarray([np.nan if a is None else a for a in cols[6]], dtype=np.float64),
    }
    for name, values in zip(("behavior", "item_id", "category_id", "channel"), cols[2:6], strict=True):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        out[name] = arr
    return out


def arrow_batch(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` from rows ``(user_id, ts_us, behavior, item_id, category_id, channel, amount)``
    (``ts_us`` UTC epoch microseconds, nulls as None)."""
    cols = list(zip(*rows, strict=True)) if rows else [()] * 7
    arrays = [
        pa.array(cols[0], pa.string()),
        pa.array(cols[1], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array(cols[2], pa.string()),
        pa.array(cols[3], pa.string()),
        pa.array(cols[4], pa.string()),
        pa.array(cols[5], pa.string()),
        pa.array(cols[6], pa.float64()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
