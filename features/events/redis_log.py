"""The event log on Redis: the same durable, idempotent record of ingested events as the SQLite log
(:class:`features.events.log.EventLog`), for services that share one Redis across hosts.

Keys (``P`` is the prefix, default ``propensity:events``):

- ``P:meta``: hash of ``log_id`` (32 hex digits), ``schema_version`` and ``exported_seq`` (the export watermark);
- ``P:seq``: the highest seq given (an integer; 0 when missing);
- ``P:ids``: hash ``event key -> seq`` (the client's ``event_id`` or :func:`features.events.rows.event_key`);
- ``P:stream``: a stream with one entry per stored event, its id ``<seq>-0``, its fields ``u`` user_id, ``t`` ts
  (UTC epoch microseconds), ``b`` behavior, ``i`` item_id, ``c`` category_id, ``h`` channel, ``a`` amount (Python
  float text), ``r`` received_at (UTC epoch microseconds) and ``n`` the nulls (bits 1 item_id, 2 category_id,
  4 channel, 8 amount; a null field holds "");
- ``P:users``: sorted set ``user_id -> the seq of the user's last event``: "users with events above N" and "has
  user U events above N" without reading events;
- ``P:user:<user_id>``: sorted set of the user's seqs (member and score): their events above N;
- ``P:export-lock``: the export lock, ``SET NX PX`` with a random token, renewed by a thread while the export
  runs and released by compare-and-delete, so one export at a time runs across hosts and a dead exporter blocks the
  next for at most ``lock_ttl_s``; the watermark is only moved while the token still holds the lock;
- ``P:staging:<token>``: the chunks of an append too large for one request (see below), removed after it.

An append (or a group commit of several batches) is one Lua script, so it runs alone and whole: per batch, the
events' keys are checked with ``HSETNX P:ids`` (an event already there, or earlier in the batch, is a duplicate),
and each new event gets the next seq, its stream entry and its sorted-set entries; ``P:seq`` is set last. Before its
first write the script checks the type of every key it will write and that the stream's last id is below the next
seq, so a write cannot fail halfway: Redis refuses a script's writes for memory (``maxmemory``) only until its
first write, and that first write is made with ``pcall``, so such a refusal stores nothing of the batch. The events
go to the script as JSON chunks of :data:`CHUNK_EVENTS`; an append of more than :data:`STAGE_ABOVE` events is
first pushed in chunks to a staging list and the script reads them from there. Either way the script holds Redis
for the whole append, about 20 us per event (10,000 events: 0.2 s, on par with the SQLite log): while it runs other
clients of that Redis wait, and after ``busy-reply-threshold`` (5 s, some 250,000 events) they get BUSY errors, so
`propensity ingest` refuses a file of more than :data:`MAX_ONE_APPEND` events unless told to store it in parts.

Durability: Redis answers a script after writing its effects to the append-only file, and with
``appendfsync always`` after an fsync of that file, so an append that returned survives ``kill -9`` of Redis and a
power cut of its host only with ``appendonly yes`` and ``appendfsync always``. Redis 7.0 has no WAITAOF, so the log
checks these settings when it opens (``CONFIG GET``) and refuses a Redis without them with an
:class:`EventLogError` naming the settings to change, unless ``allow_volatile=True``. A managed Redis that does not
allow ``CONFIG`` is trusted with a warning in the log. Replicas are not waited for: a failover to a replica that
had not received the last appends loses them.

Not for Redis Cluster (the per-user keys are named inside the script). An append whose answer is lost (a timeout,
a dropped connection) may or may not have been stored; sending it again is safe (a stored event is a duplicate).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.events.logbase import EXPORT_BATCH_ROWS, BaseEventLog, user_arrays
from features.events.rows import AppendResult, EventLogError, EventLogInputError, Row

__all__ = [
    "CHUNK_EVENTS", "DEFAULT_PREFIX", "MAX_ONE_APPEND", "REFRESH_LOCK", "RELEASE_LOCK", "STAGE_ABOVE", "RedisEventLog",
    "redact_url", "redis_log_exists",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "propensity:events"
SCHEMA_VERSION = 1
CHUNK_EVENTS = 10_000
"""Events per JSON chunk sent to the append script."""
STAGE_ABOVE = 50_000
"""An append (all batches of a group commit together) of more events is staged in Redis before the script runs."""
MAX_ONE_APPEND = 200_000
"""The most events `propensity ingest` puts in one append (about 4 s of Redis at ~20 us per event, under Redis's
5 s ``busy-reply-threshold``): a larger file is refused, or stored in parts of this size with ``--split``."""
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:{}-]{1,64}$")
T = TypeVar("T")

# KEYS: P:ids, P:seq, P:stream, P:users. ARGV[1]: the prefix of the per-user keys; then per batch: the chunk count
# (or -1), the received time, and the chunks (or the name of the staging list holding them). A chunk is a JSON
# array of events [key, user, ts, behavior, item, category, channel, amount, nulls], all texts.
# Returns per batch {1, accepted, duplicates, last seq} or {0, why nothing of it was stored}.
_APPEND = r"""
local ids, seqkey, stream, users = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local uprefix = ARGV[1]
local function kind(key) return redis.call('TYPE', key)['ok'] end
for key, want in pairs({[ids] = 'hash', [seqkey] = 'string', [stream] = 'stream', [users] = 'zset'}) do
  local t = kind(key)
  if t ~= want and t ~= 'none' then
    return redis.error_reply('key ' .. key .. ' holds a ' .. t .. ', not the ' .. want .. ' of an event log')
  end
end
local cur = tonumber(redis.call('GET', seqkey) or '0')
if kind(stream) == 'stream' then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' and tonumber(string.match(info[i + 1], '^(%d+)')) > cur then
      return redis.error_reply('stream ' .. stream .. ' is ahead of ' .. seqkey .. ' (' .. info[i + 1] .. ')')
    end
  end
end
local batches, pos = {}, 2
while pos <= #ARGV do
  local n = tonumber(ARGV[pos])
  if n < 0 then
    batches[#batches + 1] = {staged = ARGV[pos + 2], received = ARGV[pos + 1]}
    pos = pos + 3
  else
    batches[#batches + 1] = {first = pos + 2, n = n, received = ARGV[pos + 1]}
    pos = pos + 2 + n
  end
end
local function chunks(b)
  if b.staged then return redis.call('LLEN', b.staged) end
  return b.n
end
local function chunk(b, i)
  if b.staged then return cjson.decode(redis.call('LINDEX', b.staged, i - 1)) end
  return cjson.decode(ARGV[b.first + i - 1])
end
local out, wrote = {}, false
for bi, b in ipairs(batches) do
  local nchunks, bad = chunks(b), nil
  for ci = 1, nchunks do
    local seen = {}
    for _, e in ipairs(chunk(b, ci)) do
      local ukey = uprefix .. e[2]
      if not seen[ukey] then
        seen[ukey] = true
        local t = kind(ukey)
        if t ~= 'zset' and t ~= 'none' then bad = 'key ' .. ukey .. ' holds a ' .. t .. ', not a user index' end
      end
      if bad then break end
    end
    if bad then break end
  end
  local accepted, duplicates = 0, 0
  for ci = 1, (bad and 0 or nchunks) do
    for _, e in ipairs(chunk(b, ci)) do
      local sid = string.format('%d', cur + 1)
      local new
      if wrote then
        new = redis.call('HSETNX', ids, e[1], sid)
      else
        new = redis.pcall('HSETNX', ids, e[1], sid)
        if type(new) == 'table' then bad = new['err'] break end
      end
      if new == 1 then
        wrote, cur, accepted = true, cur + 1, accepted + 1
        redis.call('XADD', stream, sid .. '-0', 'u', e[2], 't', e[3], 'b', e[4], 'i', e[5], 'c', e[6], 'h', e[7],
                   'a', e[8], 'n', e[9], 'r', b.received)
        redis.call('ZADD', uprefix .. e[2], sid, sid)
        redis.call('ZADD', users, sid, e[2])
      else
        duplicates = duplicates + 1
      end
    end
    if bad then break end
  end
  if bad then
    out[bi] = {0, bad}
  else
    if accepted > 0 then redis.call('SET', seqkey, string.format('%d', cur)) end
    out[bi] = {1, accepted, duplicates, cur}
  end
end
return out
"""

# KEYS: P:user:<id>, P:stream; ARGV: the seq after which. The user's stream entries above it, in seq order.
_USER_EVENTS = r"""
local out = {}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')) do
  local e = redis.call('XRANGE', KEYS[2], s .. '-0', s .. '-0')[1]
  if e then out[#out + 1] = e end
end
return out
"""

# KEYS: P:meta; ARGV: a new log id, the schema version. Creates the log's meta when missing; returns id, version.
_OPEN = r"""
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= 'hash' and t ~= 'none' then return redis.error_reply('key ' .. KEYS[1] .. ' holds a ' .. t) end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'log_id', ARGV[1], 'schema_version', ARGV[2], 'exported_seq', '0')
end
return redis.call('HMGET', KEYS[1], 'log_id', 'schema_version')
"""

# KEYS: P:meta, P:export-lock; ARGV: seq, the lock token. Moves the watermark up, only while the token holds the lock.
_WATERMARK = r"""
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return redis.error_reply('LOSTLOCK') end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[1], 'exported_seq') or '0') then
  redis.call('HSET', KEYS[1], 'exported_seq', ARGV[1])
end
return 1
"""
REFRESH_LOCK = (  # extend a lock only while its token still holds it (also the score store's)
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
RELEASE_LOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def redact_url(url: str) -> str:
    """The URL without its password (for messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rsplit('@', 1)[1]}"))


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise EventLogInputError(f"the event log's Redis key prefix must be 1-64 characters of [A-Za-z0-9_.:{{}}-], "
                                 f"got {prefix!r}")
    return prefix


def _redis_package() -> Any:
    try:
        import redis
    except ImportError:
        raise EventLogError("the Redis event log needs the 'redis' package: pip install 'redis>=5'") from None
    return redis


def _client(url: str, timeout_s: float, retries: int) -> Any:
    redis = _redis_package()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                    retry=Retry(NoBackoff(), retries))
    except ValueError as exc:
        raise EventLogInputError(f"bad Redis URL {redact_url(url)!r} for the event log: {exc}") from None


def redis_log_exists(url: str, prefix: str = DEFAULT_PREFIX, *, timeout_s: float = 5.0) -> bool:
    """Whether the Redis at ``url`` holds an event log under ``prefix`` (one ``EXISTS``; nothing is created).
    Raises :class:`EventLogError` when Redis does not answer."""
    redis = _redis_package()
    client = _client(url, timeout_s, 1)
    try:
        return bool(client.exists(f"{_check_prefix(prefix)}:meta"))
    except redis.RedisError as exc:
        raise EventLogError(f"cannot reach the event log's Redis at {redact_url(url)}: {exc}") from None
    finally:
        client.close()


def _chunks(rows: list[Row]) -> list[bytes]:
    """``rows`` as the append script's JSON chunks (see the module docstring)."""
    out = []
    for start in range(0, len(rows), CHUNK_EVENTS):
        events = []
        for key, u, t, b, item, cat, chan, a, _ in rows[start:start + CHUNK_EVENTS]:
            nulls = (item is None) | (cat is None) << 1 | (chan is None) << 2 | (a is None) << 3
            events.append([key, u, str(t), b, item or "", cat or "", chan or "", "" if a is None else repr(a),
                           str(nulls)])
        text = json.dumps(events, ensure_ascii=False, separators=(",", ":"))
        try:
            out.append(text.encode("utf-8"))
        except UnicodeEncodeError:
            bad = next(i for i, e in enumerate(events) if not _encodable(e))
            raise EventLogInputError(f"event {start + bad} (of {len(rows)}) has text that is not valid Unicode (a "
                                     "lone surrogate); nothing was stored") from None
    return out


def _encodable(event: list[str]) -> bool:
    try:
        json.dumps(event, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fields(raw: Any) -> dict[bytes, bytes]:
    """A stream entry's fields from redis-py's dict or the flat list a script returns."""
    return raw if isinstance(raw, dict) else dict(zip(raw[::2], raw[1::2], strict=True))


def _event(f: dict[bytes, bytes]) -> tuple[int, str | None, str | None, str | None, float | None]:
    """(ts_us, item_id, category_id, channel, amount) of a stream entry's fields."""
    nulls = int(f[b"n"])
    return (int(f[b"t"]), None if nulls & 1 else f[b"i"].decode(), None if nulls & 2 else f[b"c"].decode(),
            None if nulls & 4 else f[b"h"].decode(), None if nulls & 8 else float(f[b"a"]))


def _page_table(entries: list[Any], schema: pa.Schema) -> pa.Table:
    """Stream entries ``(id, fields)`` as a table of ``schema`` plus a last column ``seq`` (int64)."""
    cols: list[list[Any]] = [[] for _ in range(8)]  # user_id, ts_us, behavior, item, category, channel, amount, seq
    for sid, raw in entries:
        f = _fields(raw)
        ts, item, cat, chan, amount = _event(f)
        for col, value in zip(cols, (f[b"u"].decode(), ts, f[b"b"].decode(), item, cat, chan, amount,
                                     int(sid.split(b"-", 1)[0])), strict=True):
            col.append(value)
    arrays = [pa.array(values, pa.int64() if field.name == "ts" else field.type)
              for field, values in zip(schema, cols[:7], strict=True)]
    arrays[1] = arrays[1].cast(schema.field("ts").type)
    return pa.Table.from_arrays([*arrays, pa.array(cols[7], pa.int64())],
                                schema=schema.append(pa.field("seq", pa.int64(), nullable=False)))


class RedisEventLog(BaseEventLog):
    """The event log in the Redis at ``url`` under ``prefix`` (created when missing; see the module docstring); the
    public methods are those of :class:`features.events.logbase.BaseEventLog`.

    Args:
        url: ``redis://[[user]:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: key prefix, so several logs (and the score store) can share a database.
        allow_volatile: open a Redis without ``appendonly yes`` + ``appendfsync always`` (acknowledged events may
            be lost when Redis or its host crashes).
        timeout_s: connect and answer timeout of appends and exports, in seconds.
        read_timeout_s: answer timeout of the reads (``last_seq``, ``users_after``, ``user_event_arrays``...).
        lock_ttl_s: lifetime of the export lock, renewed every third of it while an export runs.
        lock_wait_s: how long an export waits for another one to finish before it gives up.

    Raises :class:`EventLogError` when Redis does not answer, is not durable (see ``allow_volatile``), or its keys
    under ``prefix`` are not an event log of this version.
    """

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, *, allow_volatile: bool = False,
                 timeout_s: float = 10.0, read_timeout_s: float = 1.0, lock_ttl_s: float = 30.0,
                 lock_wait_s: float = 600.0) -> None:
        self.remote = True
        self.max_one_append = MAX_ONE_APPEND
        self._redis = _redis_package()
        self.url = redact_url(url)
        self.prefix = _check_prefix(prefix)
        self.location = f"{self.url} (keys {prefix}:*)"
        self.lock_ttl_s, self.lock_wait_s = float(lock_ttl_s), float(lock_wait_s)
        self._k_meta, self._k_seq, self._k_ids = f"{prefix}:meta", f"{prefix}:seq", f"{prefix}:ids"
        self._k_stream, self._k_users, self._k_lock = f"{prefix}:stream", f"{prefix}:users", f"{prefix}:export-lock"
        self._user_prefix = f"{prefix}:user:"
        self._lock = threading.Lock()  # serialises appends and close
        self._lock_token: str | None = None  # the export lock's token while this object holds it
        self._closed = False
        self._writes = _client(url, timeout_s, 0)  # an append is never sent twice by the client library
        self._reads = _client(url, read_timeout_s, 1)
        try:
            self._scripts = {name: self._writes.register_script(text) for name, text in (
                ("append", _APPEND), ("user", _USER_EVENTS), ("open", _OPEN), ("watermark", _WATERMARK),
                ("refresh", REFRESH_LOCK), ("release", RELEASE_LOCK))}
            self._check_durable(allow_volatile)
            self.log_id = self._open()
        except BaseException:
            self._closed = True
            self._writes.close()
            self._reads.close()
            raise

    # ------------------------------------------------------------------------------------------ connection
    def _do(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with Redis errors as :class:`EventLogError` ("cannot <what> ...")."""
        if self._closed:
            raise EventLogError(f"the event log {self.location} is closed")
        try:
            return fn(*args, **kwargs)
        except self._redis.RedisError as exc:
            raise EventLogError(f"cannot {what} the event log {self.location}: {exc}") from None

    def _check_durable(self, allow_volatile: bool) -> None:
        try:
            conf = self._writes.config_get("append*")
        except self._redis.ResponseError as exc:  # CONFIG renamed or not granted (a managed Redis)
            log.warning("cannot check that the event log's Redis at %s persists every append (CONFIG GET: %s); "
                        "trusting it to run with appendonly yes and appendfsync always", self.url, exc)
            return
        except self._redis.RedisError as exc:
            raise EventLogError(f"cannot reach the event log's Redis at {self.url}: {exc}") from None
        conf = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                for k, v in conf.items()}
        aof, fsync = conf.get("appendonly"), conf.get("appendfsync")
        if aof == "yes" and fsync == "always":
            return
        why = (f"the Redis at {self.url} would lose acknowledged events in a crash (appendonly {aof}, appendfsync "
               f"{fsync})")
        if not allow_volatile:
            raise EventLogError(f"{why}: set appendonly yes and appendfsync always in its configuration (or CONFIG "
                                "SET them and CONFIG REWRITE), or allow a volatile event log explicitly "
                                "(allow_volatile, setting events_redis_allow_volatile)")
        log.warning("%s; opened anyway (allow_volatile)", why)

    def _open(self) -> str:
        try:
            log_id, version = self._scripts["open"](keys=[self._k_meta], args=[uuid.uuid4().hex, SCHEMA_VERSION])
        except self._redis.ResponseError as exc:
            raise EventLogError(f"{self.location} is not a usable event log: {exc}") from None
        except self._redis.RedisError as exc:
            raise EventLogError(f"cannot reach the event log's Redis at {self.url}: {exc}") from None
        if log_id is None or version != str(SCHEMA_VERSION).encode():
            raise EventLogError(f"the event log {self.location} has schema version "
                                f"{version.decode() if version else None}, this code reads {SCHEMA_VERSION}")
        return log_id.decode()

    def close(self) -> None:
        """Close the connections (waits for an append in progress); later calls raise :class:`EventLogError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._writes.close()
            self._reads.close()

    # ------------------------------------------------------------------------------------------ append
    def _commit(self, batches: list[list[Row] | EventLogError]) -> list[AppendResult | EventLogError]:
        """Run the append script once for every batch that passed the checks (see the module docstring)."""
        if self._closed:
            raise EventLogError(f"the event log {self.location} is closed")
        results: list[AppendResult | EventLogError | None] = []
        sent: list[tuple[int, list[bytes], int]] = []  # (index in batches, chunks, received_at_us)
        for rows in batches:
            results.append(rows if isinstance(rows, EventLogError) else None)
            if not isinstance(rows, EventLogError):
                try:
                    sent.append((len(results) - 1, _chunks(rows), rows[0][8] if rows else 0))
                except EventLogInputError as exc:
                    results[-1] = exc
        if sent:
            with self._lock:
                answers = self._run_append(sent, stage=sum(len(r) for r in batches if isinstance(r, list)) >
                                           STAGE_ABOVE)
            for (i, _, _), answer in zip(sent, answers, strict=True):
                if answer[0] == 1:
                    results[i] = AppendResult(accepted=int(answer[1]), duplicates=int(answer[2]),
                                              last_seq=int(answer[3]))
                else:
                    why = answer[1].decode(errors="replace")
                    results[i] = EventLogError(f"cannot append to the event log {self.location}: {why}; "
                                               "nothing was stored")
        return [r for r in results if r is not None]

    def _run_append(self, sent: list[tuple[int, list[bytes], int]], *, stage: bool) -> list[list[Any]]:
        args: list[Any] = [self._user_prefix]
        staged: list[str] = []
        try:
            for _, chunks, received in sent:
                if stage:
                    key = f"{self.prefix}:staging:{uuid.uuid4().hex}"
                    staged.append(key)
                    self._do("stage an append to", self._stage, key, chunks)
                    args += [-1, received, key]
                else:
                    args += [len(chunks), received, *chunks]
            if self._closed:
                raise EventLogError(f"the event log {self.location} is closed")
            try:
                return self._scripts["append"](keys=[self._k_ids, self._k_seq, self._k_stream, self._k_users],
                                               args=args)
            except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:  # sent, perhaps run
                raise EventLogError(f"cannot append to the event log {self.location}: {exc}; the events may or may "
                                    "not be stored (a resent event is stored once)") from None
            except self._redis.RedisError as exc:
                raise EventLogError(f"cannot append to the event log {self.location}: {exc}; nothing was "
                                    "stored") from None
        finally:
            if staged:
                with suppress(self._redis.RedisError):  # else they expire within the hour
                    self._writes.delete(*staged)

    def _stage(self, key: str, chunks: list[bytes]) -> None:
        pipe = self._writes.pipeline(transaction=False)
        for start in range(0, len(chunks), 10):
            pipe.rpush(key, *chunks[start:start + 10])
            pipe.expire(key, 3600)
            pipe.execute()

    # ------------------------------------------------------------------------------------------ reads
    def last_seq(self) -> int:
        """The highest seq in the log (0 when it is empty)."""
        return int(self._do("read", self._reads.get, self._k_seq) or 0)

    def count(self) -> int:
        """Events in the log."""
        return int(self._do("read", self._reads.xlen, self._k_stream))

    def exported_seq(self) -> int:
        """The export watermark: every event with ``seq`` up to it is in an exported part."""
        return int(self._do("read", self._reads.hget, self._k_meta, "exported_seq") or 0)

    def users_after(self, seq: int) -> set[str]:
        """The users with an event of ``seq`` above ``seq``."""
        found = self._do("read", self._reads.zrangebyscore, self._k_users, f"({int(seq)}", "+inf")
        return {u.decode() for u in found}

    def has_events_after(self, user_id: str, seq: int) -> bool:
        """Whether ``user_id`` has an event of ``seq`` above ``seq``."""
        last = self._do("read", self._reads.zscore, self._k_users, user_id)
        return last is not None and last > seq

    def user_event_arrays(self, user_id: str, after_seq: int = 0) -> dict[str, np.ndarray]:
        """The events of ``user_id`` with ``seq`` above ``after_seq``, ordered by ts then seq, as aligned arrays:
        ``seq`` and ``ts_us`` (UTC epoch microseconds) int64, ``behavior``, ``item_id``, ``category_id``,
        ``channel`` object (None for null), ``amount`` float64 (NaN for null)."""
        entries = self._do("read", self._scripts["user"], keys=[self._user_prefix + user_id, self._k_stream],
                           args=[int(after_seq)], client=self._reads)
        rows = []
        for sid, raw in entries:
            f = _fields(raw)
            ts, item, cat, chan, amount = _event(f)
            rows.append((int(sid.split(b"-", 1)[0]), ts, f[b"b"].decode(), item, cat, chan, amount))
        rows.sort(key=lambda r: (r[1], r[0]))  # by ts, then seq
        return user_arrays(rows)

    # ------------------------------------------------------------------------------------------ export
    @contextmanager
    def _export_lock(self) -> Iterator[None]:
        token = uuid.uuid4().hex
        ttl_ms = max(1, int(self.lock_ttl_s * 1000))
        deadline = time.monotonic() + self.lock_wait_s
        while not self._do("lock the export of", self._writes.set, self._k_lock, token, nx=True, px=ttl_ms):
            if time.monotonic() > deadline:
                raise EventLogError(f"another export of the event log {self.location} has held {self._k_lock} for "
                                    f"over {self.lock_wait_s:.0f} s; try again later")
            time.sleep(0.05)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lock_ttl_s / 3):
                try:
                    if not self._scripts["refresh"](keys=[self._k_lock], args=[token, ttl_ms]):
                        return  # lost: the watermark script refuses to move the watermark
                except self._redis.RedisError:
                    continue  # Redis away for a moment: try again at the next tick

        renewer = threading.Thread(target=renew, name="event-log-export-lock", daemon=True)
        renewer.start()
        self._lock_token = token
        try:
            yield
        finally:
            self._lock_token = None
            stop.set()
            renewer.join()
            with suppress(self._redis.RedisError):  # else it expires after lock_ttl_s
                self._scripts["release"](keys=[self._k_lock], args=[token])

    def _part_end(self, after: int, last: int, max_rows: int) -> int:
        # seqs are given only to stored events, without gaps: the max_rows-th seq after `after` is after + max_rows
        return min(last, after + max_rows)

    def _part_tables(self, after: int, upto: int, schema: pa.Schema) -> Iterator[pa.Table]:
        # read in pages, each turned into Arrow at once (about 60 bytes an event, where Python objects take 400),
        # then sorted as a whole: the stream is in seq order, a part in (user_id, ts, seq) order
        pages: list[pa.Table] = []
        start = after + 1
        while start <= upto:
            page = self._do("read", self._writes.xrange, self._k_stream, f"{start}-0", f"{upto}-0",
                            count=EXPORT_BATCH_ROWS)
            if not page:
                break
            pages.append(_page_table(page, schema))
            start = pages[-1].column("seq")[-1].as_py() + 1
        table = pa.concat_tables(pages) if pages else _page_table([], schema)
        order = pc.sort_indices(table, sort_keys=[("user_id", "ascending"), ("ts", "ascending"), ("seq", "ascending")])
        table = table.drop_columns(["seq"]).take(order)
        for offset in range(0, table.num_rows, EXPORT_BATCH_ROWS):
            yield table.slice(offset, EXPORT_BATCH_ROWS)

    def _set_watermark(self, seq: int) -> None:
        """Commit the export watermark (never moved back), only while this export holds the lock."""
        try:
            self._do("record the export in", self._scripts["watermark"], keys=[self._k_meta, self._k_lock],
                     args=[int(seq), self._lock_token or ""])
        except EventLogError as exc:
            if "LOSTLOCK" not in str(exc):
                raise
            raise EventLogError(f"the export of the event log {self.location} lost its lock {self._k_lock} "
                                f"(not renewed within {self.lock_ttl_s:.0f} s); the parts written are recognised "
                                "by the next export") from None
