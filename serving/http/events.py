"""``POST /events``: ingest behavior events into the event log (:class:`features.events.log.EventLog`).

The body is ``{"events": [event, ...]}`` with 1 to :data:`serving.http.schemas.MAX_INGEST_EVENTS` events of the
event contract (the ``/score`` rules, :func:`serving.http.schemas.parse_events`), each with an optional
``event_id``. A request with a bad event is refused whole (422, the message and ``index`` name the first bad event);
otherwise its events are appended all or none and the answer ``{"accepted", "duplicates", "last_seq"}`` is sent
only after the commit, so an acknowledged event survives a ``kill -9`` of the service.

Appends run in one dedicated thread (SQLite has one writer at a time), never on the event loop, as group commits
(:class:`GroupCommitter`): the requests that arrive while a commit is on disk are stored together by the next one,
each under its own savepoint, so one disk sync acknowledges them all. A commit costs a sync of a few milliseconds
whatever its size; one per request would cap the rate at a few hundred requests per second.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from serving.http.base import AppState, HTTPError, PostEndpoint
from serving.http.runtime import ServiceRuntime
from serving.http.schemas import EventsRequestError, parse_events

__all__ = ["EventsEndpoint", "GroupCommitter"]


class GroupCommitter:
    """Appends batches of event mappings to ``log`` from one thread, each waiting request's batch in the next group
    commit (:meth:`features.events.log.EventLog.append_groups`). :meth:`append` resolves after the commit."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        self._lock = threading.Lock()
        self._pending: list[tuple[list[dict[str, Any]], asyncio.Future[Any], asyncio.AbstractEventLoop]] = []
        self._running = False

    async def append(self, records: list[dict[str, Any]]) -> Any:
        """The :class:`AppendResult` of ``records`` once committed; raises the :class:`EventLogError` that kept them
        out."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        with self._lock:
            self._pending.append((records, fut, loop))
            start = not self._running
            self._running = True
        if start:
            self._pool.submit(self._drain)
        return await fut

    def _drain(self) -> None:
        """In the ingest thread: commit whatever waits, until nothing does."""
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._running = False
                    return
            try:
                results: list[Any] = self.log.append_groups([records for records, _, _ in batch])
            except BaseException as exc:  # the transaction failed: no batch of this group was stored
                results = [exc] * len(batch)
            for (_, fut, loop), result in zip(batch, results, strict=True):
                loop.call_soon_threadsafe(_settle, fut, result)


def _settle(fut: asyncio.Future[Any], result: Any) -> None:
    if fut.done():  # the request was cancelled (client gone): its events are stored all the same
        return
    if isinstance(result, BaseException):
        fut.set_exception(result)
    else:
        fut.set_result(result)


class EventsEndpoint(PostEndpoint):
    """``POST /events``: check the events, append them to ``state.events_log`` through the group committer, answer
    the counts (503 when the service has no event log or cannot write it)."""

    path = "/events"

    def __init__(self, state: AppState) -> None:
        super().__init__(state)
        self._committer: GroupCommitter | None = None

    def _committer_for(self, log: Any) -> GroupCommitter:
        if self._committer is None or self._committer.log is not log:
            self._committer = GroupCommitter(log)
        return self._committer

    async def handle(self, rt: ServiceRuntime, doc: Any) -> bytes:
        from features.events.log import EventLogError, EventLogInputError

        log = self.state.events_log
        if log is None:
            reason = self.state.events_log_error or "this service has no event log configured"
            raise HTTPError(503, "ingest_unavailable", f"cannot ingest events: {reason}")
        try:
            events = parse_events(doc, now=datetime.now(UTC), future_tolerance_s=rt.options.future_tolerance_s)
        except EventsRequestError as exc:
            code = "too_large" if exc.status == 413 else "invalid"
            raise HTTPError(exc.status, code, str(exc), exc.index) from None
        records = [e.__dict__ for e in events]  # the validated field values (model_dump would serialise them again)
        try:
            result = await self._committer_for(log).append(records)
        except EventLogInputError as exc:  # the parser lets through nothing the log refuses; kept as a 422 anyway
            raise HTTPError(422, "invalid", str(exc)) from None
        except EventLogError as exc:
            raise HTTPError(503, "ingest_unavailable", f"cannot store the events: {exc}") from None
        rt.metrics.ingested(result.accepted, result.duplicates)
        return json.dumps(result.to_dict()).encode()
