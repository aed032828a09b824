"""Redis score store: one hash per snapshot, a pointer key switched in one MULTI.

Keys (``P`` is the prefix, default ``propensity``):

- ``P:current``: id of the snapshot being served.
- ``P:snapshots``: hash ``snapshot id -> JSON record`` (seq, state ``building``/``ready``, created_at,
  rows, meta); ``seq`` (from ``INCR P:seq``) orders snapshots by publish.
- ``P:data:<snapshot id>``: hash ``user_id -> JSON payload``; one ``HMGET`` serves any number of ids.
- ``P:publish-lock``: held by the one publish allowed at a time, with a TTL that a heartbeat thread renews
  while the publish runs, so a crashed publisher blocks the next publish for at most ``lock_ttl_s``.

A publish registers the snapshot as ``building``, writes pipelines of multi-field ``HSET`` commands, then
marks it ``ready`` and sets ``P:current`` in one MULTI/EXEC. Retention removes records and data hashes
in one MULTI (``UNLINK`` frees memory in the background). A lookup reads ``P:current`` and the ``HMGET``
in one MULTI/EXEC, so its payloads always come from the snapshot it reports. The switch (WATCHing the lock)
and a rollback (WATCHing the pointer and the records) retry when another client touches those keys before
their EXEC, and give up with a :class:`StoreError` after ``WATCH_ATTEMPTS`` tries.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pandas as pd

from features.events.redis_log import REFRESH_LOCK, RELEASE_LOCK, redact_url
from serving.store.encode import ProgressFn, iter_encoded, normalize_user_ids
from serving.store.errors import StoreError, StoreInputError, StoreUnavailableError
from serving.store.protocol import BaseScoreStore, Draft
from serving.store.records import (
    SnapshotInfo,
    expired_snapshots,
    info_from_parts,
    rollback_target,
    snapshot_record,
    validate_snapshot_id,
)

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError:  # pragma: no cover - exercised only without the optional extra
    redis = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:{}-]{1,64}$")
_FIELDS_PER_HSET = 1_000
WATCH_ATTEMPTS = 10
"""Optimistic (WATCH/MULTI) updates give up after this many tries when another client keeps touching the keys."""
T = TypeVar("T")


class RedisScoreStore(BaseScoreStore):
    """Score snapshots in Redis (see the module docstring); publishing follows :class:`BaseScoreStore`.

    Args:
        url: ``redis://[:password@]host:port/db``.
        prefix: key prefix, so several stores can share a database.
        keep: complete snapshots to retain (>= 1; the current one is never deleted).
        socket_timeout: connect/read timeout in seconds for lookups and admin calls.
        publish_timeout: read timeout in seconds for the bulk writes of a publish.
        batch_rows: users written per pipeline round trip.
        lock_ttl_s: lifetime of the publish lock; refreshed every batch, so a crashed publisher blocks
            the next publish for at most this long.
    """

    _errors = (redis.RedisError,) if redis is not None else ()

    def __init__(
        self,
        url: str,
        prefix: str = "propensity",
        *,
        keep: int = 3,
        socket_timeout: float = 0.5,
        publish_timeout: float = 30.0,
        batch_rows: int = 10_000,
        lock_ttl_s: float = 60.0,
    ) -> None:
        if redis is None:
            raise StoreError("the Redis score store needs the 'redis' package: pip install 'redis>=5'")
        if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
            raise StoreInputError(f"Redis key prefix must be 1-64 characters of [A-Za-z0-9_.:{{}}-], got {prefix!r}")
        self.url = redact_url(url)
        self.prefix = prefix
        super().__init__(self.url, keep)
        self.batch_rows = max(1, int(batch_rows))
        self._lock_ttl_ms = int(lock_ttl_s * 1000)
        self._k_current = f"{prefix}:current"
        self._k_snapshots = f"{prefix}:snapshots"
        self._k_seq = f"{prefix}:seq"
        self._k_lock = f"{prefix}:publish-lock"
        self._data_keys: dict[str, str] = {}
        self._last_current: str | None = None
        try:
            common = {
                "decode_responses": True,
                "socket_connect_timeout": socket_timeout,
                "retry": Retry(NoBackoff(), 1),
            }
            self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout, **common)
            self._writer = redis.Redis.from_url(url, socket_timeout=publish_timeout, **common)
        except ValueError as exc:
            raise StoreInputError(f"bad Redis URL {self.url!r}: {exc}") from None
        self._refresh_lock = self._writer.register_script(REFRESH_LOCK)
        self._release_lock = self._writer.register_script(RELEASE_LOCK)

    def _data_key(self, snapshot_id: str) -> str:
        key = self._data_keys.get(snapshot_id)
        if key is None:
            if len(self._data_keys) > 256:
                self._data_keys.clear()
            key = self._data_keys[snapshot_id] = f"{self.prefix}:data:{validate_snapshot_id(snapshot_id)}"
        return key

    def _error(self, exc: Exception) -> StoreError:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return StoreUnavailableError(f"Redis score store at {self.url} is unavailable: {exc}")
        return StoreError(f"Redis score store at {self.url} failed: {exc}")

    # ------------------------------------------------------------------------------------- reads
    def _records(self, client: Any) -> dict[str, dict[str, Any]]:
        return {sid: json.loads(rec) for sid, rec in client.hgetall(self._k_snapshots).items()}

    @staticmethod
    def _ready_newest_first(records: Mapping[str, Mapping[str, Any]]) -> list[str]:
        ready = [(rec["seq"], sid) for sid, rec in records.items() if rec.get("state") == "ready"]
        return [sid for _, sid in sorted(ready, reverse=True)]

    def lookup(self, user_ids: Sequence[str]) -> tuple[SnapshotInfo | None, dict[str, str]]:
        """The current snapshot and ``{user_id: JSON payload}`` of the users found in it (one snapshot).

        One round trip when the pointer has not moved since the previous call: ``GET`` of the pointer and
        ``HMGET`` of the last known snapshot in one MULTI; when the pointer moved, repeat with the new id.
        """
        ids = normalize_user_ids(user_ids)
        try:
            expected = self._last_current
            for _ in range(5):
                if expected is None:
                    expected = self._client.get(self._k_current)
                    if expected is None:
                        return None, {}
                info = self._infos.get(expected)
                pipe = self._client.pipeline(transaction=True)
                pipe.get(self._k_current)
                if ids:
                    pipe.hmget(self._data_key(expected), ids)
                else:
                    pipe.echo("")  # keeps the reply positions fixed
                if info is None:  # read the record in the same MULTI: it may be pruned right after
                    pipe.hget(self._k_snapshots, expected)
                result = pipe.execute()
                if result[0] == expected:
                    self._last_current = expected
                    if info is None:
                        if result[2] is None:
                            raise StoreError(f"Redis score store at {self.url}: record of {expected} is missing")
                        info = self._infos[expected] = _to_info(expected, json.loads(result[2]))
                    return info, {u: v for u, v in zip(ids, result[1], strict=True) if v is not None} if ids else {}
                expected = result[0]
                if expected is None:
                    return None, {}
        except redis.RedisError as exc:
            raise self._error(exc) from None
        raise StoreError(f"Redis score store at {self.url}: the current snapshot kept changing during a lookup")

    def snapshots(self) -> list[SnapshotInfo]:
        """Every complete snapshot kept, last published first."""
        try:
            records = self._records(self._client)
        except redis.RedisError as exc:
            raise self._error(exc) from None
        return [_to_info(sid, records[sid]) for sid in self._ready_newest_first(records)]

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` when Redis does not answer."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            raise self._error(exc) from None

    # ------------------------------------------------------------------------------------- publish hooks
    @contextmanager
    def _lock(self) -> Iterator[str]:
        """``SET NX`` of the lock key with a TTL; yields the token that proves ownership, deletes it at the end."""
        token = secrets.token_hex(16)
        if not self._writer.set(self._k_lock, token, nx=True, px=self._lock_ttl_ms):
            ttl = max(0, self._writer.pttl(self._k_lock)) / 1000
            raise StoreError(
                f"another publish to {self.url} ({self.prefix}) is in progress (its lock expires in {ttl:.0f} s)"
            )
        try:
            yield token
        finally:
            try:
                self._release_lock(keys=[self._k_lock], args=[token])
            except redis.RedisError as exc:
                log.warning("could not release the publish lock %s: %s", self._k_lock, exc)

    def _register(self, draft: Draft) -> None:
        draft.seq = int(self._writer.incr(self._k_seq))
        record = snapshot_record(draft.info, seq=draft.seq, state="building")
        self._writer.hset(self._k_snapshots, draft.info.snapshot_id, record)

    def _write(
        self, draft: Draft, chunks: Iterable[pd.DataFrame], total: int | None, progress: ProgressFn | None
    ) -> int:
        """Pipelines of multi-field ``HSET``, each flush renewing the lock; a heartbeat renews it in between."""
        key, token = self._data_key(draft.info.snapshot_id), draft.lease
        pipe = self._writer.pipeline(transaction=False)
        rows = pending = 0

        def flush() -> None:
            self._refresh_lock(keys=[self._k_lock], args=[token, self._lock_ttl_ms], client=pipe)
            *added, owned = pipe.execute()
            if not owned:
                raise StoreError(f"publish lock {self._k_lock} was lost (the publish took longer than its TTL)")
            if sum(added) != pending:
                raise StoreInputError("duplicate user_id in the published chunks (each user must appear once)")

        heartbeat = _LockHeartbeat(self._refresh_lock, self._k_lock, token, self._lock_ttl_ms)
        heartbeat.start()
        try:
            for ids, payloads in iter_encoded(chunks, total, progress):
                for start in range(0, len(ids), _FIELDS_PER_HSET):
                    part_ids = ids[start : start + _FIELDS_PER_HSET]
                    args: list[str] = [None] * (2 * len(part_ids))  # type: ignore[list-item]
                    args[0::2] = part_ids
                    args[1::2] = payloads[start : start + _FIELDS_PER_HSET]
                    pipe.execute_command("HSET", key, *args)
                    pending += len(part_ids)
                    if pending >= self.batch_rows:
                        flush()
                        rows += pending
                        pending = 0
            if pending:
                flush()
                rows += pending
        finally:
            heartbeat.stop()  # its PEXPIRE would abort the WATCHed switch; the last flush renewed the lock
        return rows

    def _switch(self, draft: Draft) -> None:
        """Mark the snapshot ready and point at it in one MULTI, only while we hold the lock (WATCHed)."""
        info, seq = draft.info, draft.seq

        def attempt(pipe: Any) -> None:
            if pipe.get(self._k_lock) != draft.lease:
                raise StoreError(f"publish lock {self._k_lock} was lost before the switch; snapshot discarded")
            pipe.multi()
            pipe.hset(self._k_snapshots, info.snapshot_id, snapshot_record(info, seq=seq, state="ready"))
            pipe.set(self._k_current, info.snapshot_id)
            pipe.execute()

        self._watched(
            self._writer, [self._k_lock], attempt,
            f"another client kept touching the publish lock {self._k_lock} at {self.url}; gave up the switch after"
            f" {WATCH_ATTEMPTS} attempts, snapshot discarded (the served snapshot is unchanged)",
        )  # fmt: skip
        self._last_current = info.snapshot_id

    def _watched(self, client: Any, keys: Sequence[str], attempt: Callable[[Any], T], gave_up: str) -> T:
        """``attempt(pipe)`` under WATCH of ``keys``, again while another client touches them before its EXEC;
        after :data:`WATCH_ATTEMPTS` tries, :class:`StoreError` ``gave_up``."""
        with client.pipeline(transaction=True) as pipe:
            for _ in range(WATCH_ATTEMPTS):
                pipe.watch(*keys)
                try:
                    return attempt(pipe)
                except redis.WatchError:
                    continue
        raise StoreError(gave_up)

    def _delete(self, snapshot_ids: Sequence[str]) -> None:
        if not snapshot_ids:
            return
        with self._writer.pipeline(transaction=True) as pipe:
            pipe.hdel(self._k_snapshots, *snapshot_ids)
            pipe.unlink(*[self._data_key(sid) for sid in snapshot_ids])
            pipe.execute()
        for sid in snapshot_ids:
            self._infos.pop(sid, None)

    def _discard_partial(self, snapshot_id: str) -> None:
        self._delete([snapshot_id])

    def _drop_unfinished(self) -> None:
        """Drop snapshots left ``building`` by a crashed publish (called while holding the lock)."""
        records = self._records(self._writer)
        unfinished = [sid for sid, rec in records.items() if rec.get("state") != "ready"]
        if unfinished:
            log.info("dropping unfinished snapshots %s from %s", unfinished, self.url)
        self._delete(unfinished)

    def _drop_expired(self, current: str) -> None:
        records = self._records(self._writer)
        self._delete(expired_snapshots(self._ready_newest_first(records), current, self.keep))

    def _rollback(self, to: str | None) -> SnapshotInfo:
        """Set the pointer in a MULTI that fails when the pointer or the records changed since they were read."""

        def attempt(pipe: Any) -> SnapshotInfo:
            records = self._records(pipe)
            target = rollback_target(self._ready_newest_first(records), pipe.get(self._k_current), to, self.url)
            pipe.multi()
            pipe.set(self._k_current, target)
            pipe.execute()
            return _to_info(target, records[target])

        info = self._watched(
            self._client, [self._k_current, self._k_snapshots], attempt,
            f"another client kept changing the snapshot pointer {self._k_current} at {self.url}; rollback gave up"
            f" after {WATCH_ATTEMPTS} attempts and changed nothing",
        )  # fmt: skip
        self._last_current = info.snapshot_id
        return info

    # ------------------------------------------------------------------------------------- lifecycle
    def _close(self) -> None:
        self._client.close()
        self._writer.close()

    def __repr__(self) -> str:
        return f"RedisScoreStore({self.url!r}, prefix={self.prefix!r}, keep={self.keep})"


class _LockHeartbeat(threading.Thread):
    """Keeps the publish lock alive while the caller's chunk iterator is slow (e.g. scoring on the fly)."""

    def __init__(self, refresh: Any, key: str, token: str, ttl_ms: int) -> None:
        super().__init__(name=f"publish-lock {key}", daemon=True)
        self._refresh, self._key, self._token, self._ttl_ms = refresh, key, token, ttl_ms
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._ttl_ms / 3000):
            try:
                if not self._refresh(keys=[self._key], args=[self._token, self._ttl_ms]):
                    return  # lost: the next flush or the switch notices and aborts
            except redis.RedisError:
                continue  # Redis briefly away: the writes will fail and report it

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=5)


def _to_info(snapshot_id: str, record: Mapping[str, Any]) -> SnapshotInfo:
    return info_from_parts(snapshot_id, record["created_at"], record["rows"], record["meta"])


__all__ = ["RedisScoreStore"]
