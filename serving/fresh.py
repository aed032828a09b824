"""Fresh scores: a user with events newer than the served snapshot is rescored when looked up.

The nightly batch publishes a snapshot and, next to it, the per-user event history it read
(:mod:`features.online.history`, one directory per snapshot id, with ``log_seq``: the event-log sequence number
up to which ingested events are inside it). At lookup, a user with events in the event log above ``log_seq``
gets features recomputed from the history plus those events at the lookup time
(:func:`features.online.compute.user_features`, proven equal to the batch table), scores from the champion models
and the action, deadline and priority from the very code the batch runs (:func:`serving.batch.run.score_chunks`).
A cart ingested at 10:00 therefore opens its ``coupon_24h`` window on the next lookup, not at the next night's
batch. Users without newer events keep the stored row (no extra work beyond one indexed log probe).

The users' features enter that code as numpy columns (:mod:`features.columns`), not a DataFrame, and the record
is encoded value by value (:func:`serving.store.encode.encode_chunk`'s few-row path, the same bytes): per-call
pandas and Arrow costs, not the arithmetic, were nearly all of a one-user rescoring.

An ad system looks the same user up at every ad request, far more often than the user acts. With ``ttl_s`` above 0
a rescored row is kept in memory and served again to that user for up to ``ttl_s`` seconds, as long as the user has
no newer event in the log, the served snapshot is the same and the champion models are the same objects; it keeps
its ``scored_at``, so the caller sees how old it is. A new event, a new snapshot or new models rescore at the next
lookup. At most :data:`MAX_CACHED_USERS` rows are kept (the oldest go first).
"""

from __future__ import annotations

import itertools
import logging
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from features.events.logbase import BaseEventLog
from features.events.rows import EventLogError
from features.online.arrays import EventArrays, behavior_codes, channel_codes, id_codes
from features.online.compute import as_of_us, feature_arrays, user_features
from features.online.history import History
from serving.activation.actions import ActivationConfig
from serving.batch.run import score_chunks
from serving.store.encode import dumps_compact, encode_chunk
from training.bundle import ModelBundle

log = logging.getLogger(__name__)

RETRY_MISSING_S = 2.0
"""Seconds before a snapshot without a history (not written yet, or never) is looked at again."""
MAX_CACHED_USERS = 50_000
"""Most rescored rows kept for reuse (about 1-2 kB each)."""
NOTHING, CACHED, RESCORE = 0, 1, 2
""":meth:`FreshScorer.pending` answers: no looked-up user has newer events; all that have are served from rescored
rows still valid; at least one must be rescored."""
LOG_SEQ_KEY = "log_seq"
"""History metadata: every event-log event with a sequence number up to this one is inside the history."""


def log_arrays(rows: Mapping[str, np.ndarray]) -> EventArrays:
    """``user_event_arrays`` output of an event log (:mod:`features.events.logbase`) as :class:`EventArrays`."""
    return EventArrays(
        ts_us=np.asarray(rows["ts_us"], dtype=np.int64),
        behavior=behavior_codes(rows["behavior"]),
        channel=channel_codes(rows["channel"]),
        item=id_codes(rows["item_id"]),
        category=id_codes(rows["category_id"]),
        amount=np.asarray(rows["amount"], dtype=np.float64),
    )


@dataclass(frozen=True)
class _Cached:
    """A rescored row kept for reuse: valid for ``snapshot_id`` while the user has no event above ``covered`` (a
    log position read before the user's events were) until ``expires`` (``time.monotonic()`` seconds)."""

    snapshot_id: str
    covered: int
    expires: float
    payload: str


class FreshScorer:
    """Rescoring of looked-up users who have events after the served snapshot (thread-safe).

    ``history_root`` holds one history directory per snapshot id; ``log`` is the event log ingestion writes to
    (SQLite or Redis);
    ``ttl_s``: seconds a rescored row may be served again (0: rescore at every lookup; see the module docstring);
    ``metrics``: a :class:`serving.http.metrics.ServiceMetrics` told of every rescoring call (users rescored and
    reused, seconds) and of every time the log could not be read (None: nothing is counted).
    """

    def __init__(
        self, log: BaseEventLog, history_root: Path, activation: ActivationConfig, *, ttl_s: float = 0.0,
        metrics: Any = None,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        self.metrics = metrics
        self.log = log
        self.history_root = Path(history_root)
        self.activation = activation
        self.ttl_s = float(ttl_s)
        self._cache: dict[str, _Cached] = {}
        self._models: tuple[object, ...] = ()  # the bundles the cached rows were scored with
        self._lock = threading.Lock()
        self._histories: dict[str, History | None] = {}
        self._missing_since = 0.0  # monotonic time the served snapshot's history was last found missing
        self._seq = 0  # log_seq of the history last used: events above it are not in the served scores
        # users with a logged event above _seq -> a log position at or after their last such event (as of _seen)
        self._recent: dict[str, int] = {}
        self._seen = 0
        self._warned = 0.0  # monotonic time of the last "event log unavailable" warning
        self.probe_inline = not getattr(log, "remote", False)
        """Whether :meth:`pending` may run on an event loop: the log is a local file, not a network round trip."""

    def _unavailable(self, exc: EventLogError) -> None:
        """Log (at most once a minute) that the event log cannot be read: the stored rows are served meanwhile."""
        if self.metrics is not None:
            self.metrics.fresh_paused()
        now = time.monotonic()
        if now - self._warned >= 60.0:
            self._warned = now
            log.warning("fresh scores paused, the stored rows are served: %s", exc)

    def pending(self, user_ids: Sequence[str]) -> int:
        """Whether any of ``user_ids`` has an event in the log above the served history's ``log_seq`` (before any
        history is loaded, any logged event counts): :data:`NOTHING`, :data:`CACHED` (every such user has a valid
        rescored row: no scoring needed) or :data:`RESCORE` (falsy only for NOTHING). One read of the log's last
        position per call; the users with newer events are kept in memory and only the log's new entries are read,
        so a lookup of many ids costs dict lookups, not a query per id. An unreadable log answers NOTHING (the
        stored rows are served)."""
        try:
            last = self.log.last_seq()
            if last <= self._seq:
                return NOTHING
            recent = self._notice(last)
        except EventLogError as exc:
            self._unavailable(exc)
            return NOTHING
        answer = NOTHING
        now = time.monotonic()
        for uid in user_ids:
            mark = recent.get(uid)
            if mark is None:
                continue
            hit = self._cache.get(uid)
            if hit is None or hit.covered < mark or hit.expires <= now:
                return RESCORE
            answer = CACHED
        return answer

    def _notice(self, last: int) -> dict[str, int]:
        """Read the users of the log's entries since the last call, up to position ``last``; returns the users
        with events above the served history's ``log_seq``, each with a position at or after their last event."""
        with self._lock:
            if last > self._seen:
                for uid in self.log.users_after(max(self._seen, self._seq)):
                    self._recent[uid] = last
                self._seen = last
            return self._recent

    def _use_seq(self, seq: int) -> None:
        """The served history holds the log up to ``seq``: forget the users whose new events it now holds."""
        with self._lock:
            if seq != self._seq:
                self._seq, self._seen, self._recent = seq, seq, {}
                self._cache = {}

    def _reuse(self, user_ids: list[str], snapshot_id: str, bundles: Mapping[str, ModelBundle]) -> dict[str, str]:
        """The still valid rescored rows of ``user_ids`` (see the module docstring); drops them all when the models
        changed."""
        if self.ttl_s <= 0:
            return {}
        models = tuple(bundles.values())
        with self._lock:
            if len(models) != len(self._models) or any(a is not b for a, b in zip(models, self._models, strict=False)):
                self._models, self._cache = models, {}
                return {}
            cache, recent = self._cache, self._recent
        now = time.monotonic()
        out = {}
        for uid in user_ids:
            hit = cache.get(uid)
            if (hit is not None and hit.snapshot_id == snapshot_id and hit.expires > now
                    and hit.covered >= recent.get(uid, 0)):
                out[uid] = hit.payload
        return out

    def _keep(self, payloads: Mapping[str, str], snapshot_id: str, covered: int) -> None:
        if self.ttl_s <= 0 or not payloads:
            return
        expires = time.monotonic() + self.ttl_s
        with self._lock:
            cache = self._cache
            for uid, payload in payloads.items():
                cache.pop(uid, None)  # re-inserted last: the dict's order is the age order
                cache[uid] = _Cached(snapshot_id, covered, expires, payload)
            for uid in list(itertools.islice(cache, max(0, len(cache) - MAX_CACHED_USERS))):
                del cache[uid]

    def history(self, snapshot_id: str) -> History | None:
        """The history published with ``snapshot_id`` (None when that snapshot has none: no rescoring).

        The batch writes the history just after it publishes the snapshot, so a missing one is looked for again
        after :data:`RETRY_MISSING_S` seconds instead of being given up on."""
        found = self._histories.get(snapshot_id)
        if found is not None:
            return found
        if snapshot_id in self._histories and time.monotonic() - self._missing_since < RETRY_MISSING_S:
            return None
        with self._lock:
            path = self.history_root / snapshot_id
            try:
                history: History | None = History(path)
            except (OSError, ValueError, KeyError):
                history = None
                self._missing_since = time.monotonic()
            self._histories = {snapshot_id: history}  # keep only the served snapshot's maps
            return history

    def rescore(
        self, user_ids: Sequence[str], snapshot_id: str, bundles: Mapping[str, ModelBundle], now: datetime,
    ) -> dict[str, str]:
        """``{user_id: /lookup payload}`` for the users of ``user_ids`` with events after the snapshot, scored at
        ``now`` (aware UTC): the stored record's fields recomputed, plus ``fresh: true`` and ``scored_at``; users
        without newer events are absent (serve their stored row). With ``ttl_s`` above 0, a user's row rescored
        before and still valid is served again as it was (its own ``scored_at``). When the event log cannot be
        read, nobody is rescored (the stored rows are served)."""
        try:
            return self._rescore(user_ids, snapshot_id, bundles, now)
        except EventLogError as exc:
            self._unavailable(exc)
            return {}

    def _rescore(
        self, user_ids: Sequence[str], snapshot_id: str, bundles: Mapping[str, ModelBundle], now: datetime,
    ) -> dict[str, str]:
        history = self.history(snapshot_id)
        if history is None or not bundles:
            return {}
        started = time.perf_counter()
        seq = int(history.meta.get(LOG_SEQ_KEY, 0))
        self._use_seq(seq)
        wanted = list(dict.fromkeys(user_ids))
        covered = self.log.last_seq()  # read before the events: every event up to it is in what is read below
        self._notice(covered)
        reused = self._reuse(wanted, snapshot_id, bundles)
        fresh = [u for u in wanted if u not in reused and self.log.has_events_after(u, seq)]
        if not fresh:
            self._count(0, len(reused), None)
            return reused
        spec = next(iter(bundles.values())).spec
        t = as_of_us(now)
        rows = []
        for uid in fresh:
            events = EventArrays.concat([history.events(uid), log_arrays(self.log.user_event_arrays(uid, seq))])
            row = user_features(events, t, spec)  # the log has every column: items and amounts are known
            if row is not None:
                row["user_id"] = uid
                rows.append(row)
        if not rows:
            self._count(0, len(reused), None)
            return reused
        raw = feature_arrays(rows, spec)  # the feature table of these users as columns: no pandas on this path
        records = next(score_chunks(raw, bundles, now, self.activation, len(rows), reasons=True, explain="actions"))
        ids, payloads = encode_chunk(records)
        head = '{"found":true,"fresh":true,"scored_at":' + dumps_compact(now.isoformat()) + ","
        scored = {uid: head + payload[1:] for uid, payload in zip(ids, payloads, strict=True)}
        self._keep(scored, snapshot_id, covered)
        self._count(len(scored), len(reused), time.perf_counter() - started)
        return reused | scored

    def _count(self, rescored: int, reused: int, seconds: float | None) -> None:
        if self.metrics is not None and (rescored or reused):
            self.metrics.fresh(rescored, reused, seconds)

    def positions(self, snapshot_id: str | None) -> tuple[int, int | None]:
        """``(last seq of the event log, log_seq of the history of snapshot_id)`` (the second None when that snapshot
        has no history); blocking (a remote log is a round trip), raises :class:`EventLogError` when the log cannot
        be read."""
        last = self.log.last_seq()
        history = self.history(snapshot_id) if snapshot_id else None
        return last, (None if history is None else int(history.meta.get(LOG_SEQ_KEY, 0)))


def prune_histories(history_root: Path, keep: Sequence[str]) -> list[str]:
    """Remove the history directories of snapshots not in ``keep`` (snapshot ids); returns the removed ids."""
    removed = []
    root = Path(history_root)
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        if path.is_dir() and not path.name.startswith(".") and path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed
