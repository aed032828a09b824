"""The event log on SQLite: a durable, idempotent record of ingested events, exported into the clean history.

``POST /events`` and ``propensity ingest`` append canonical events here (or to
:class:`features.events.redis_log.RedisEventLog` when Redis is configured, see :mod:`features.events.backends`); an
append that returned is committed (WAL journal, ``synchronous=FULL``: the commit survives ``kill -9`` of the process
and a power cut), and an event is stored once whatever the number of times it is sent: its key is the client's
``event_id`` when given, else a SHA-256 of the full canonical event (:func:`event_key`), so a resent identical event
is a duplicate.

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
acknowledged event reaches the history exactly once (:mod:`features.events.logbase`).

One :class:`EventLog` may be shared by threads (appends are serialised by a lock, reads use one connection per
thread) and several processes may open the same file (SQLite's locking, a busy timeout of ``busy_timeout_s``);
exports are serialised across processes by an ``flock`` on ``<log>.export.lock``. The file must be on a local disk
(WAL does not work over a network file system).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

from features.events.logbase import (
    EXPORT_BATCH_ROWS,
    MAX_PART_ROWS,
    PART_GLOB,
    BaseEventLog,
    ExportResult,
    arrow_batch,
    user_arrays,
)
from features.events.rows import AppendResult, EventLogError, EventLogInputError, Row, event_key

__all__ = [
    "EXPORT_BATCH_ROWS", "MAX_PART_ROWS", "PART_GLOB", "AppendResult", "EventLog", "EventLogError",
    "EventLogInputError", "ExportResult", "event_key",
]

SCHEMA_VERSION = 1

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


T = TypeVar("T")


def retry_locked(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()``, called again for up to ``timeout_s`` seconds while SQLite answers "database is locked".

    The workers of one service open the log at the same moment; when the file is new they contend for the switch to
    WAL and for the schema, and there SQLite can answer at once instead of calling its busy handler (it does not wait
    where waiting could deadlock). Without the retry such a worker came up without a log: no ``/events`` and no
    fresh scores in that process.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.002
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


class EventLog(BaseEventLog):
    """The event log at ``path`` (created with its folder when missing; see the module docstring); the public
    methods are those of :class:`features.events.logbase.BaseEventLog`.

    Raises :class:`EventLogError` when the file cannot be opened as an event log.
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
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
            mode = retry_locked(lambda: con.execute("PRAGMA journal_mode=WAL").fetchone()[0], self.busy_timeout_s)
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
            retry_locked(lambda: con.execute("BEGIN IMMEDIATE"), self.busy_timeout_s)
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

    # ------------------------------------------------------------------------------------------ append
    def _commit(self, batches: list[list[Row] | EventLogError]) -> list[AppendResult | EventLogError]:
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
        return user_arrays(rows)

    # ------------------------------------------------------------------------------------------ export
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

    def _part_tables(self, after: int, upto: int, schema: pa.Schema) -> Iterator[pa.Table]:
        cur = self._reader().cursor()
        try:
            cur.execute(
                "SELECT user_id, ts_us, behavior, item_id, category_id, channel, amount FROM events NOT INDEXED "
                "WHERE seq > ? AND seq <= ? ORDER BY user_id, ts_us, seq", (after, upto))
            while batch := cur.fetchmany(EXPORT_BATCH_ROWS):
                yield arrow_batch(batch, schema)
        except sqlite3.Error as exc:
            raise EventLogError(f"cannot read the event log {self.path}: {exc}") from None
        finally:
            cur.close()

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

