"""The event log: a durable, idempotent record of ingested events (SQLite), exported into the clean history.

``POST /events`` and ``propensity ingest`` append canonical events here; an append that returned is committed
(WAL journal, ``synchronous=FULL``: the commit survives ``kill -9`` of the process and a power cut), and an event
is stored once whatever the number of times it is sent: its key is the client's ``event_id`` when given, else a
SHA-256 of the full canonical event (:func:`event_key`), so a resent identical event is a duplicate.

Table ``events``: ``seq`` (INTEGER, ascending in append order, never reused; a refused duplicate uses up a number,
so there are gaps), ``event_id`` (TEXT, unique),
``user_id``, ``ts_us`` (INTEGER, UTC epoch microseconds), ``behavior``, ``item_id``, ``category_id``, ``channel``
(TEXT), ``amount`` (REAL, currency) and ``received_at_us`` (INTEGER, UTC epoch microseconds of the append); an
index on ``(user_id, seq)`` answers "the events of this user since seq N". Table ``meta``: the log's id, its schema
version and the export watermark.

:meth:`EventLog.export` moves the events not yet exported into the clean history directory as one canonical
Parquet part per call (:func:`features.events.schema.arrow_schema`, sorted by user_id and ts like the validator's
output), named by its seq range: ``ingested-<from>-<to>-<log id>.parquet``. The part is written under a temporary
name, renamed, and then the watermark is committed; a part renamed before a crash is recognised by the next export
(its footer names this log and its range), which advances the watermark instead of writing the rows again. So every
acknowledged event reaches the history exactly once.

One :class:`EventLog` may be shared by threads (appends are serialised by a lock, reads use one connection per
thread) and several processes may open the same file (SQLite's locking, a busy timeout of ``busy_timeout_s``);
exports are serialised across processes by an ``flock`` on ``<log>.export.lock``. The file must be on a local disk
(WAL does not work over a network file system).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.events.schema import BEHAVIORS, CANONICAL_COLUMNS, CHANNELS, REQUIRED_COLUMNS, arrow_schema

__all__ = [
    "PART_GLOB", "AppendResult", "EventLog", "EventLogError", "EventLogInputError", "ExportResult", "event_key",
]

SCHEMA_VERSION = 1
PART_GLOB = "ingested-*.parquet"
"""Names of the exported part files in the history directory."""
_PART = re.compile(r"^ingested-(\d+)-(\d+)-([0-9a-f]{8})\.parquet$")
_PART_META = b"propensity.event_log"
EXPORT_BATCH_ROWS = 200_000
"""Rows fetched from SQLite and written to Parquet at a time during an export (bounds its memory)."""
MAX_PART_ROWS = 2_000_000
"""Most rows of one exported part file; a larger backlog is exported as several parts in one call."""
_DICTIONARY_COLUMNS = ["user_id", "behavior", "category_id", "channel"]  # as the validator writes them
_COLUMNS = ("user_id", "ts_us", "behavior", "item_id", "category_id", "channel", "amount")

_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT UNIQUE NOT NULL,
    user_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    behavior TEXT NOT NULL,
    item_id TEXT,
    category_id TEXT,
    channel TEXT,
    amount REAL,
    received_at_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_user_seq ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_INSERT = (
    "INSERT OR IGNORE INTO events (event_id, user_id, ts_us, behavior, item_id, category_id, channel, amount, "
    "received_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class EventLogError(Exception):
    """The event log cannot be opened, read or written (locked too long, not a log, disk full, closed)."""

    exit_code = 6  # CLI exit code: unavailable


class EventLogInputError(EventLogError, ValueError):
    """Events given to :meth:`EventLog.append` break the canonical contract; nothing of the batch was stored."""

    exit_code = 1  # CLI exit code: bad input


@dataclass(frozen=True)
class AppendResult:
    """One append: ``accepted`` events stored now, ``duplicates`` already in the log (or repeated within the batch),
    ``last_seq`` the log's highest seq after the append (0 for an empty log)."""

    accepted: int
    duplicates: int
    last_seq: int

    def to_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "last_seq": self.last_seq}


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


def event_key(user_id: str, ts_us: int, behavior: str, item_id: str | None, category_id: str | None,
              channel: str | None, amount: float | None) -> str:
    """The id of an event sent without ``event_id``: SHA-256 (hex) of its canonical fields as compact JSON
    (``ts_us`` in UTC epoch microseconds, a null or NaN ``amount`` as null), so an identical event gets the same id
    in every process."""
    if amount is not None:
        amount = None if math.isnan(amount) else float(amount) + 0.0  # -0.0 and 0.0 are one amount
    text = json.dumps([user_id, int(ts_us), behavior, item_id, category_id, channel, amount],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_BEHAVIOR_SET = frozenset(BEHAVIORS)
_CHANNEL_SET = frozenset(CHANNELS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _plain(values: list[Any]) -> list[Any]:
    """``values`` with every kind of null (None, NaN, pd.NA, NaT) as None."""
    return [None if v is None or v is pd.NA or v is pd.NaT or (type(v) is float and v != v) else v for v in values]


def _ts_us(value: Any) -> int | None:
    """UTC epoch microseconds of a datetime (naive = UTC) or of an integer already in microseconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _US
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise EventLogInputError(f"ts {value!r} is neither a datetime nor epoch microseconds; nothing was stored")


def _checked_rows(columns: dict[str, list[Any]], received_at_us: int) -> list[tuple[Any, ...]]:
    """The insert rows of aligned column lists (nulls as None, ``ts`` in UTC epoch microseconds), each checked
    against the contract; :class:`EventLogInputError` names the first bad row."""
    users, ts_us, behaviors = columns["user_id"], columns["ts"], columns["behavior"]
    items, cats, chans, amounts, given = (columns["item_id"], columns["category_id"], columns["channel"],
                                          columns["amount"], columns["event_id"])
    n = len(users)
    out = []

    def bad(i: int, what: str) -> EventLogInputError:
        return EventLogInputError(f"event {i} (of {n}) {what}; nothing was stored")

    for i, (u, t, b, item, cat, chan, a, key) in enumerate(
        zip(users, ts_us, behaviors, items, cats, chans, amounts, given, strict=True)
    ):
        if type(u) is not str or not u:
            raise bad(i, "has no user_id text")
        if t is None:
            raise bad(i, "has no ts")
        if b not in _BEHAVIOR_SET:
            raise bad(i, f"has behavior {b!r}, not one of {', '.join(BEHAVIORS)}")
        if chan is not None and chan not in _CHANNEL_SET:
            raise bad(i, f"has channel {chan!r}, not one of {', '.join(CHANNELS)}")
        if (item is not None and type(item) is not str) or (cat is not None and type(cat) is not str):
            raise bad(i, "has an item_id or category_id that is not text")
        if a is not None:
            try:
                a = float(a) + 0.0
            except (TypeError, ValueError):
                raise bad(i, f"has amount {a!r}, not a number") from None
            if a != a:
                a = None
            elif not 0.0 <= a < math.inf:
                raise bad(i, f"has amount {a!r}, not a finite number >= 0")
        if key is not None and type(key) is not str:
            raise bad(i, "has an event_id that is not text")
        if not key:
            key = event_key(u, t, b, item, cat, chan, a)
        out.append((key, u, t, b, item, cat, chan, a, received_at_us))
    return out


def _frame_rows(events: pd.DataFrame, received_at_us: int) -> list[tuple[Any, ...]]:
    """The insert rows of a canonical frame (see :meth:`EventLog.append`)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise EventLogInputError(f"the events lack column(s) {', '.join(missing)}; columns seen: "
                                 f"{', '.join(map(str, events.columns))}")
    n = len(events)
    try:
        ts = pd.to_datetime(events["ts"], utc=True)
    except (ValueError, TypeError) as exc:
        raise EventLogInputError(f"ts is not a timestamp column: {exc}; nothing was stored") from None
    nat = np.flatnonzero(ts.isna().to_numpy())
    if len(nat):
        raise EventLogInputError(f"event {int(nat[0])} (of {n}) has no ts; nothing was stored")
    columns = {c: _plain(events[c].tolist()) if c in events.columns else [None] * n
               for c in (*CANONICAL_COLUMNS, "event_id") if c != "ts"}
    columns["ts"] = ts.dt.as_unit("us").astype("int64").tolist()
    return _checked_rows(columns, received_at_us)


def _record_rows(records: Sequence[Mapping[str, Any]], received_at_us: int) -> list[tuple[Any, ...]]:
    """The insert rows of event mappings (see :meth:`EventLog.append_records`)."""
    names = (*CANONICAL_COLUMNS, "event_id")
    columns = {c: _plain([r.get(c) for r in records]) for c in names}
    columns["ts"] = [_ts_us(t) for t in columns["ts"]]
    return _checked_rows(columns, received_at_us)


class EventLog:
    """The event log at ``path`` (created with its folder when missing; see the module docstring).

    Raises :class:`EventLogError` when the file cannot be opened as an event log.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()  # serialises appends, exports' watermark updates and close
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()  # never held during a commit: a first read does not wait for the disk
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EventLogError(f"cannot create the folder of the event log {self.path}: {exc.strerror}") from None
        self._writer = self._connect()
        try:
            self._init_schema()
        except BaseException:
            self._writer.close()
            raise

    # ------------------------------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        try:
            con = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                                  check_same_thread=False)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot open the event log {self.path}: {exc}") from None
        try:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise EventLogError(f"the event log {self.path} cannot use a WAL journal (got {mode!r}); "
                                    "put it on a local disk")
            con.execute("PRAGMA synchronous=FULL")
            con.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        except sqlite3.Error as exc:
            con.close()
            raise EventLogError(f"{self.path} is not a usable event log: {exc}") from None
        except EventLogError:
            con.close()
            raise
        return con

    def _init_schema(self) -> None:
        con = self._writer
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA_SQL.split(";"):
                    if statement.strip():
                        con.execute(statement)
                found = dict(con.execute("SELECT key, value FROM meta").fetchall())
                if not found:
                    con.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                    [("schema_version", str(SCHEMA_VERSION)), ("log_id", uuid.uuid4().hex),
                                     ("exported_seq", "0")])
                elif found.get("schema_version") != str(SCHEMA_VERSION):
                    raise EventLogError(f"the event log {self.path} has schema version "
                                        f"{found.get('schema_version')}, this code reads {SCHEMA_VERSION}")
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            self.log_id = self._meta("log_id", con)
        except sqlite3.Error as exc:
            raise EventLogError(f"{self.path} is not a usable event log: {exc}") from None

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise EventLogError(f"the event log {self.path} is closed")
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._connect()
            self._local.con = con
            with self._readers_lock:
                self._readers.append(con)
        return con

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read the event log {self.path}: {exc}") from None

    def _meta(self, key: str, con: sqlite3.Connection | None = None) -> str:
        rows = (con or self._reader()).execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchall()
        if not rows:
            raise EventLogError(f"the event log {self.path} has no {key!r} entry: it was not made by this code")
        return str(rows[0][0])

    def close(self) -> None:
        """Close every connection (waits for an append in progress); later calls raise :class:`EventLogError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writer.close()
            with self._readers_lock:
                for con in self._readers:
                    con.close()
                self._readers.clear()

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ append
    def append(self, events: pd.DataFrame) -> AppendResult:
        """Store ``events`` (canonical columns of :data:`features.events.schema.CANONICAL_COLUMNS`, ``ts`` as
        timestamps (naive = UTC), plus an optional text column ``event_id``) in one transaction: all of them or,
        on any error, none. An event whose id is already in the log (or earlier in the batch) counts as a duplicate
        and is not stored again. Durable when it returns.

        Raises :class:`EventLogInputError` (a row breaks the contract; the message names it) or
        :class:`EventLogError` (the log cannot be written).
        """
        return self._append(_frame_rows(events, time.time_ns() // 1000) if len(events) else [])

    def append_records(self, records: Sequence[Mapping[str, Any]]) -> AppendResult:
        """:meth:`append` for event mappings (keys of :data:`CANONICAL_COLUMNS` and an optional ``event_id``; ``ts``
        an aware datetime (naive = UTC) or UTC epoch microseconds; a missing key is null), without pandas: the
        ingestion path of ``POST /events``."""
        return self._append(_record_rows(records, time.time_ns() // 1000))

    def append_groups(self, groups: Sequence[Sequence[Mapping[str, Any]]]) -> list[AppendResult | EventLogError]:
        """Append several independent batches of event mappings (as :meth:`append_records`) in one transaction, so
        one disk sync makes them all durable (a group commit): each batch is stored all or none on its own (a
        savepoint each). Returns one result per batch, in order: its :class:`AppendResult`, or the
        :class:`EventLogError` (:class:`EventLogInputError` for a contract breach) that kept it out. Durable when it
        returns; raises :class:`EventLogError` when the transaction itself fails (then no batch was stored)."""
        received = time.time_ns() // 1000
        prepared: list[list[tuple[Any, ...]] | EventLogError] = []
        for group in groups:
            try:
                prepared.append(_record_rows(group, received))
            except EventLogInputError as exc:
                prepared.append(exc)
        return self._commit(prepared)

    def _append(self, rows: list[tuple[Any, ...]]) -> AppendResult:
        result = self._commit([rows])[0]
        if isinstance(result, EventLogError):
            raise result
        return result

    def _commit(self, batches: list[list[tuple[Any, ...]] | EventLogError]) -> list[AppendResult | EventLogError]:
        """Insert every batch (each under its own savepoint) and commit once."""
        results: list[AppendResult | EventLogError] = []
        with self._lock:
            if self._closed:
                raise EventLogError(f"the event log {self.path} is closed")
            con = self._writer
            try:
                con.execute("BEGIN IMMEDIATE")
                try:
                    for rows in batches:
                        if isinstance(rows, EventLogError):
                            results.append(rows)
                            continue
                        before = con.total_changes
                        con.execute("SAVEPOINT batch")
                        try:
                            if rows:
                                con.executemany(_INSERT, rows)
                        except sqlite3.Error as exc:
                            con.execute("ROLLBACK TO batch")
                            con.execute("RELEASE batch")
                            results.append(EventLogError(
                                f"cannot append to the event log {self.path}: {exc}; nothing was stored"))
                            continue
                        con.execute("RELEASE batch")
                        accepted = con.total_changes - before
                        last = con.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
                        results.append(AppendResult(accepted=accepted, duplicates=len(rows) - accepted,
                                                    last_seq=int(last)))
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise EventLogError(f"cannot append to the event log {self.path}: {exc}; nothing was stored") from None
        return results

    # ------------------------------------------------------------------------------------------ reads
    def last_seq(self) -> int:
        """The highest seq in the log (0 when it is empty)."""
        return int(self._query("SELECT max(seq) FROM events")[0][0] or 0)

    def count(self) -> int:
        """Events in the log."""
        return int(self._query("SELECT count(*) FROM events")[0][0])

    def exported_seq(self) -> int:
        """The export watermark: every event with ``seq`` up to it is in an exported part."""
        try:
            return int(self._meta("exported_seq"))
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read the event log {self.path}: {exc}") from None

    def users_after(self, seq: int) -> set[str]:
        """The users with an event of ``seq`` above ``seq``."""
        return {r[0] for r in self._query("SELECT DISTINCT user_id FROM events WHERE seq > ?", (int(seq),))}

    def has_events_after(self, user_id: str, seq: int) -> bool:
        """Whether ``user_id`` has an event of ``seq`` above ``seq``."""
        rows = self._query("SELECT 1 FROM events WHERE user_id = ? AND seq > ? LIMIT 1", (user_id, int(seq)))
        return bool(rows)

    def user_event_arrays(self, user_id: str, after_seq: int = 0) -> dict[str, np.ndarray]:
        """The events of ``user_id`` with ``seq`` above ``after_seq``, ordered by ts then seq, as aligned arrays:
        ``seq`` and ``ts_us`` (UTC epoch microseconds) int64, ``behavior``, ``item_id``, ``category_id``,
        ``channel`` object (None for null), ``amount`` float64 (NaN for null)."""
        rows = self._query(
            "SELECT seq, ts_us, behavior, item_id, category_id, channel, amount FROM events "
            "WHERE user_id = ? AND seq > ? ORDER BY ts_us, seq", (user_id, int(after_seq)))
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
        if not paths:
            return None
        return ExportResult(rows=rows, paths=tuple(paths), first_seq=first, last_seq=watermark, recovered=recovered)

    @contextmanager
    def _export_lock(self) -> Iterator[None]:
        lock = self.path.with_name(self.path.name + ".export.lock")
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EventLogError(f"cannot open the export lock {lock}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # the kernel drops it when the holder dies, even by kill -9
            yield
        finally:
            os.close(fd)

    def _part_end(self, after: int, last: int, max_rows: int) -> int:
        """The seq that ends a part starting after ``after``: ``last``, or the ``max_rows``-th seq after ``after``."""
        rows = self._query("SELECT seq FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT 1 OFFSET ?",
                           (after, last, max_rows - 1))
        return int(rows[0][0]) if rows else last

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
        cur = self._reader().cursor()
        rows = 0
        try:
            cur.execute(
                "SELECT user_id, ts_us, behavior, item_id, category_id, channel, amount FROM events NOT INDEXED "
                "WHERE seq > ? AND seq <= ? ORDER BY user_id, ts_us, seq", (after, upto))
            with open(tmp, "wb") as fh:
                with pq.ParquetWriter(fh, schema, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS) as writer:
                    while batch := cur.fetchmany(EXPORT_BATCH_ROWS):
                        writer.write_table(_arrow_batch(batch, schema))
                        rows += len(batch)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
            _fsync_dir(dest_dir)
        except sqlite3.Error as exc:
            tmp.unlink(missing_ok=True)
            raise EventLogError(f"cannot read the event log {self.path}: {exc}") from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EventLogError(f"cannot write {path}: {exc.strerror or exc}") from None
        finally:
            cur.close()
        return path, rows

    def _set_watermark(self, seq: int) -> None:
        """Commit the export watermark (never moved back)."""
        with self._lock:
            if self._closed:
                raise EventLogError(f"the event log {self.path} is closed")
            try:
                self._writer.execute("UPDATE meta SET value = ? WHERE key = 'exported_seq' AND CAST(value AS INTEGER) "
                                     "< ?", (str(int(seq)), int(seq)))
            except sqlite3.Error as exc:
                raise EventLogError(f"cannot record the export in the event log {self.path}: {exc}") from None

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


def _arrow_batch(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    cols = list(zip(*rows, strict=True))
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
