"""SQLite score store: one file, WAL mode, one WITHOUT ROWID table per snapshot.

Layout of the database file:

- ``snapshots(seq, snapshot_id, state, created_at, rows, meta)``: one row per snapshot; ``state`` is
  ``building`` while a publish writes it and ``ready`` once complete; ``seq`` orders snapshots by publish.
- ``pointer(id = 1, snapshot_id)``: the snapshot being served.
- ``scores_<snapshot id>(user_id TEXT PRIMARY KEY, payload TEXT) WITHOUT ROWID``: one per snapshot.

A publish registers the snapshot as ``building``, bulk-inserts in large transactions with
``synchronous=NORMAL``, then marks it ``ready`` and moves the pointer in one transaction. Readers use one
connection per thread and read the pointer and the rows inside one read transaction, so a lookup always
sees a single snapshot (WAL gives each read transaction a stable view, even if the publisher drops the
snapshot's table meanwhile). Only one publish runs at a time per file (an exclusive ``flock`` on
``<file>.lock``); it drops the leftovers of a crashed publish first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from serving.store.encode import ProgressFn, iter_encoded, normalize_user_ids
from serving.store.errors import SnapshotNotFoundError, StoreError, StoreInputError, StoreUnavailableError
from serving.store.protocol import BaseScoreStore, Draft
from serving.store.records import (
    SnapshotInfo,
    expired_snapshots,
    info_from_parts,
    rollback_target,
    validate_snapshot_id,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TABLE_PREFIX = "scores_"
_MAX_PARAMS = 500  # ids per SELECT ... IN (...)
_READY_NEWEST_FIRST = "SELECT snapshot_id FROM snapshots WHERE state = 'ready' ORDER BY seq DESC"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('building', 'ready')),
    created_at TEXT NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    meta TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pointer (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    snapshot_id TEXT
);
INSERT OR IGNORE INTO pointer (id, snapshot_id) VALUES (1, NULL);
"""


def table_name(snapshot_id: str) -> str:
    """The table of a snapshot, built only from a validated id (safe to put in SQL text)."""
    return TABLE_PREFIX + validate_snapshot_id(snapshot_id).replace("-", "_")


class SQLiteScoreStore(BaseScoreStore):
    """Score snapshots in one SQLite file (see the module docstring); publishing follows :class:`BaseScoreStore`.

    Args:
        path: database file (created with its parent directory when missing).
        keep: complete snapshots to retain (>= 1; the current one is never deleted).
        commit_rows: rows per bulk-insert transaction during a publish.
        busy_timeout_s: how long a statement waits for a lock held by another connection.
        mmap_mb: memory-mapped read window of each reader connection (0 turns it off).
    """

    _errors = (sqlite3.Error,)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        keep: int = 3,
        commit_rows: int = 200_000,
        busy_timeout_s: float = 5.0,
        mmap_mb: int = 1024,
    ) -> None:
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise StoreInputError(f"SQLite score store needs a file path, got {str(path)!r}")
        self.path = Path(path)
        super().__init__(str(self.path), keep)
        self.commit_rows = max(1, int(commit_rows))
        self._busy_ms = int(busy_timeout_s * 1000)
        self._mmap_bytes = int(mmap_mb) * 2**20
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._write_lock = threading.Lock()
        self._readers_lock = threading.Lock()
        self._readers: dict[int, tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = {}
        self._local = threading.local()
        self._pid = os.getpid()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect(create=True)
            self._init_schema(self._writer)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create score store {self.path}: {exc}") from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------------------------------- connections
    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        """A connection in autocommit mode; only ``create=True`` may create a missing file."""
        target, uri = (str(self.path), False) if create else (self.path.resolve().as_uri() + "?mode=rw", True)
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, cached_statements=256, uri=uri)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        return conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA page_size = 16384")  # new files only: ~25% less CPU per insert for ~250 B rows
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreUnavailableError(f"score store {self.path}: cannot enable WAL mode (got {mode!r})")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"score store {self.path} has schema version {version}; this code reads up to {SCHEMA_VERSION}"
            )
        with self._transaction(conn, immediate=True):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use, reopened after a fork)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if self._closed:
            raise StoreError(f"score store {self.path} is closed")
        forked = conn is not None
        conn = self._connect()
        conn.execute("PRAGMA query_only = ON")
        conn.execute(f"PRAGMA mmap_size = {self._mmap_bytes}")  # random point reads without read() calls
        local.conn, local.pid = conn, os.getpid()
        with self._readers_lock:
            if forked:  # forked: drop the parent's connections, never use them here
                self._readers.clear()
            for key, (ref, old) in list(self._readers.items()):  # close connections of finished threads
                thread = ref()
                if thread is None or not thread.is_alive():
                    old.close()
                    del self._readers[key]
            current = threading.current_thread()
            self._readers[id(conn)] = (weakref.ref(current), conn)
        return conn

    @staticmethod
    @contextmanager
    def _transaction(conn: sqlite3.Connection, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _error(self, exc: Exception) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError):
            return StoreError(f"score store {self.path}: {exc}")
        return StoreUnavailableError(f"score store {self.path} is unavailable: {exc}")

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """This process's write lock, then an exclusive ``flock`` on ``<file>.lock`` (one publish per file)."""
        with self._write_lock:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(f"another publish to {self.path} is in progress") from None
                if self._pid != os.getpid():  # forked: never use the parent's connection
                    self._writer, self._pid = self._connect(), os.getpid()
                yield
            finally:
                os.close(fd)  # releases the flock

    # ------------------------------------------------------------------------------------- reads
    def _info(self, conn: sqlite3.Connection, snapshot_id: str) -> SnapshotInfo:
        info = self._infos.get(snapshot_id)
        if info is None:
            row = conn.execute(
                "SELECT snapshot_id, created_at, rows, meta FROM snapshots WHERE snapshot_id = ? AND state = 'ready'",
                (snapshot_id,),
            ).fetchone()
            if row is None:
                raise SnapshotNotFoundError(f"snapshot {snapshot_id} not found in {self.path}")
            info = self._infos[snapshot_id] = info_from_parts(*row)
        return info

    def lookup(self, user_ids: Sequence[str]) -> tuple[SnapshotInfo | None, dict[str, str]]:
        """The current snapshot and ``{user_id: JSON payload}`` of the users found in it (one snapshot)."""
        ids = normalize_user_ids(user_ids)
        try:
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                row = conn.execute("SELECT snapshot_id FROM pointer WHERE id = 1").fetchone()
                if row is None or row[0] is None:
                    return None, {}
                snapshot_id = row[0]
                info = self._info(conn, snapshot_id)
                table = table_name(snapshot_id)
                found: dict[str, str] = {}
                for start in range(0, len(ids), _MAX_PARAMS):
                    batch = ids[start : start + _MAX_PARAMS]
                    where = "user_id = ?" if len(batch) == 1 else f"user_id IN ({','.join('?' * len(batch))})"
                    found.update(conn.execute(f'SELECT user_id, payload FROM "{table}" WHERE {where}', batch))
                return info, found
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def snapshots(self) -> list[SnapshotInfo]:
        """Every complete snapshot kept, last published first."""
        try:
            rows = self._reader().execute(
                "SELECT snapshot_id, created_at, rows, meta FROM snapshots WHERE state = 'ready' ORDER BY seq DESC"
            ).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return [info_from_parts(*row) for row in rows]

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` when the database cannot be read."""
        if not self.path.exists():
            raise StoreUnavailableError(f"score store {self.path} is unavailable: the file does not exist")
        try:
            self._reader().execute("SELECT snapshot_id FROM pointer WHERE id = 1").fetchone()
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------------------------------- publish hooks
    def _register(self, draft: Draft) -> None:
        """Insert the ``building`` record and create the snapshot's table, in one transaction."""
        conn, info = self._writer, draft.info
        with self._transaction(conn, immediate=True):
            conn.execute(
                "INSERT INTO snapshots (snapshot_id, state, created_at, rows, meta) VALUES (?, 'building', ?, 0, ?)",
                (info.snapshot_id, info.created_at.isoformat(), draft.meta_json),
            )
            conn.execute(
                f'CREATE TABLE "{table_name(info.snapshot_id)}"'
                " (user_id TEXT PRIMARY KEY NOT NULL, payload TEXT NOT NULL) WITHOUT ROWID"
            )

    def _write(
        self, draft: Draft, chunks: Iterable[pd.DataFrame], total: int | None, progress: ProgressFn | None
    ) -> int:
        """Bulk-insert in transactions of ``commit_rows`` rows with ``synchronous=NORMAL``."""
        conn = self._writer
        sql = f'INSERT INTO "{table_name(draft.info.snapshot_id)}" (user_id, payload) VALUES (?, ?)'
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB of pages while bulk-inserting
        rows = pending = 0
        conn.execute("BEGIN")
        for n_chunk, (ids, payloads) in enumerate(iter_encoded(chunks, total, progress)):
            try:
                conn.executemany(sql, zip(ids, payloads, strict=True))
            except sqlite3.IntegrityError:
                raise StoreInputError(
                    f"duplicate user_id in chunk {n_chunk} (each user must appear once per snapshot)"
                ) from None
            rows += len(ids)
            pending += len(ids)
            if pending >= self.commit_rows:
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                pending = 0
        conn.execute("COMMIT")
        conn.execute("PRAGMA cache_size = -2000")  # back to SQLite's default
        return rows

    def _switch(self, draft: Draft) -> None:
        """Mark the snapshot ``ready`` and move the pointer in one durable transaction."""
        conn, info = self._writer, draft.info
        conn.execute("PRAGMA synchronous = FULL")
        with self._transaction(conn, immediate=True):
            conn.execute(
                "UPDATE snapshots SET state = 'ready', rows = ? WHERE snapshot_id = ?", (info.rows, info.snapshot_id)
            )
            conn.execute("UPDATE pointer SET snapshot_id = ? WHERE id = 1", (info.snapshot_id,))

    def _discard_partial(self, snapshot_id: str) -> None:
        conn = self._writer
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA cache_size = -2000")
        with self._transaction(conn, immediate=True):
            self._drop(conn, snapshot_id)

    @staticmethod
    def _drop(conn: sqlite3.Connection, snapshot_id: str) -> None:
        conn.execute(f'DROP TABLE IF EXISTS "{table_name(snapshot_id)}"')
        conn.execute("DELETE FROM snapshots WHERE snapshot_id = ?", (snapshot_id,))

    def _drop_unfinished(self) -> None:
        """Drop snapshots left ``building`` by a crashed publish, and unregistered snapshot tables."""
        conn = self._writer
        with self._transaction(conn, immediate=True):
            known = {sid: state for sid, state in conn.execute("SELECT snapshot_id, state FROM snapshots")}
            for sid, state in known.items():
                if state != "ready":
                    log.info("dropping unfinished snapshot %s from %s", sid, self.path)
                    self._drop(conn, sid)
            tables = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ?", (TABLE_PREFIX + "%",)
            ).fetchall()
            ready = {table_name(sid) for sid, state in known.items() if state == "ready"}
            for (name,) in tables:
                sid = name[len(TABLE_PREFIX) :].replace("_", "-", 1)
                if name not in ready and name == _safe_table(sid):
                    conn.execute(f'DROP TABLE IF EXISTS "{name}"')

    def _drop_expired(self, current: str) -> None:
        conn = self._writer
        with self._transaction(conn, immediate=True):
            ids = [r[0] for r in conn.execute(_READY_NEWEST_FIRST)]
            for sid in expired_snapshots(ids, current, self.keep):
                self._drop(conn, sid)
                self._infos.pop(sid, None)

    def _rollback(self, to: str | None) -> SnapshotInfo:
        """Move the pointer in one transaction of a connection of its own (no wait for a running publish)."""
        conn = self._connect()
        try:
            with self._transaction(conn, immediate=True):
                ids = [r[0] for r in conn.execute(_READY_NEWEST_FIRST)]
                current = conn.execute("SELECT snapshot_id FROM pointer WHERE id = 1").fetchone()[0]
                target = rollback_target(ids, current, to, str(self.path))
                conn.execute("UPDATE pointer SET snapshot_id = ? WHERE id = 1", (target,))
            return self._info(conn, target)
        finally:
            conn.close()

    # ------------------------------------------------------------------------------------- lifecycle
    def _close(self) -> None:
        with self._readers_lock:
            for _, conn in self._readers.values():
                conn.close()
            self._readers.clear()
        with self._write_lock:
            self._writer.close()

    def __repr__(self) -> str:
        return f"SQLiteScoreStore({str(self.path)!r}, keep={self.keep})"


def _safe_table(snapshot_id: str) -> str | None:
    try:
        return table_name(snapshot_id)
    except SnapshotNotFoundError:
        return None
