"""Score store: versioned per-user score snapshots with an atomic switch.

The nightly batch publishes one *snapshot* (every user's score record) and the online path looks up one or
a few users in a fraction of a millisecond. A snapshot is written in full under a new id, then a single
pointer is switched atomically, so readers see either the old snapshot or the new one, never a mix, and a
publish that fails or crashes half-way leaves the old snapshot served (its partial data is invisible and
is removed by the next publish).

Each user's record is stored as one pre-serialised compact JSON object (see :mod:`serving.store.encode`), so a
lookup is one indexed read and no re-encoding.

:class:`ScoreStore` is the interface. :class:`BaseScoreStore` (:mod:`serving.store.protocol`) owns the publish
protocol (lock, register, write, switch, discard on failure, prune) and the store's life cycle; its two backends
fill in small hooks: :class:`~serving.store.sqlite.SQLiteScoreStore` (default, a single file) and
:class:`~serving.store.redis.RedisScoreStore`. :func:`open_store` picks one.

This module is the package's front door: it re-exports the shared pieces (errors from :mod:`serving.store.errors`,
snapshot records from :mod:`serving.store.records`, JSON encoding from :mod:`serving.store.encode`), so callers
import from one place. The backends import those modules directly, never this one (no import cycle).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.store.encode import ProgressFn, dumps_compact, encode_chunk, iter_encoded, normalize_user_ids
from serving.store.errors import SnapshotNotFoundError, StoreError, StoreInputError, StoreUnavailableError
from serving.store.protocol import BaseScoreStore, Draft, ScoreStore
from serving.store.records import (
    SNAPSHOT_ID_RE,
    SnapshotInfo,
    check_keep,
    encode_meta,
    expired_snapshots,
    info_from_parts,
    new_snapshot_id,
    parse_created_at,
    progress_total,
    rollback_target,
    snapshot_record,
    validate_snapshot_id,
)

if TYPE_CHECKING:  # pragma: no cover
    from serving.store.redis import RedisScoreStore
    from serving.store.sqlite import SQLiteScoreStore

__all__ = [
    "SNAPSHOT_ID_RE", "BaseScoreStore", "Draft", "ProgressFn", "RedisScoreStore", "SQLiteScoreStore", "ScoreStore",
    "SnapshotInfo", "SnapshotNotFoundError", "StoreError", "StoreInputError", "StoreUnavailableError", "check_keep",
    "dumps_compact", "encode_chunk", "encode_meta", "expired_snapshots", "info_from_parts", "iter_encoded",
    "new_snapshot_id", "normalize_user_ids", "open_store", "parse_created_at", "progress_total", "rollback_target",
    "snapshot_record", "validate_snapshot_id",
]


# --------------------------------------------------------------------------------------------- factory
def open_store(sqlite_path: Path | str, redis_url: str | None = None, **kwargs: Any) -> ScoreStore:
    """A Redis store when ``redis_url`` is given, else a SQLite store at ``sqlite_path``.

    Extra keyword arguments (``keep``, timeouts, ``prefix`` for Redis) go to the backend constructor.
    """
    if redis_url:
        from serving.store.redis import RedisScoreStore

        return RedisScoreStore(redis_url, **kwargs)
    from serving.store.sqlite import SQLiteScoreStore

    return SQLiteScoreStore(sqlite_path, **kwargs)


def __getattr__(name: str) -> Any:
    """Lazy re-exports of the backends (Redis support needs the optional ``redis`` package)."""
    if name == "SQLiteScoreStore":
        from serving.store.sqlite import SQLiteScoreStore

        return SQLiteScoreStore
    if name == "RedisScoreStore":
        from serving.store.redis import RedisScoreStore

        return RedisScoreStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
