"""``POST /events``: ingest behavior events into the event log (:class:`features.events.log.EventLog`).

The body is ``{"events": [event, ...]}`` with 1 to :data:`serving.http.schemas.MAX_INGEST_EVENTS` events of the
event contract (the ``/score`` rules, :func:`serving.http.schemas.parse_events_request`), each with an optional
``event_id``. A request with a bad event is refused whole (422, the message and ``index`` name the first bad event);
otherwise every event is appended in one transaction and the answer ``{"accepted", "duplicates", "last_seq"}`` is
sent only after the commit, so an acknowledged event survives a ``kill -9`` of the service. The append runs in one
dedicated thread (SQLite has one writer at a time), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from serving.http.base import AppState, HTTPError, PostEndpoint
from serving.http.runtime import ServiceRuntime
from serving.http.schemas import EventsRequestError, parse_events_request

__all__ = ["EventsEndpoint"]


class EventsEndpoint(PostEndpoint):
    """``POST /events``: check the events, append them to ``state.events_log`` in the ingest thread, answer the
    counts (503 when the service has no event log or cannot write it)."""

    path = "/events"

    def __init__(self, state: AppState) -> None:
        super().__init__(state)
        self._pool: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest")
        return self._pool

    async def handle(self, rt: ServiceRuntime, doc: Any) -> bytes:
        from features.events.log import EventLogError, EventLogInputError

        log = self.state.events_log
        if log is None:
            reason = self.state.events_log_error or "this service has no event log configured"
            raise HTTPError(503, "ingest_unavailable", f"cannot ingest events: {reason}")
        try:
            frame = parse_events_request(doc, now=datetime.now(UTC), future_tolerance_s=rt.options.future_tolerance_s)
        except EventsRequestError as exc:
            code = "too_large" if exc.status == 413 else "invalid"
            raise HTTPError(exc.status, code, str(exc), exc.index) from None
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor(), log.append, frame)
        except EventLogInputError as exc:  # the parser lets through nothing the log refuses; kept as a 422 anyway
            raise HTTPError(422, "invalid", str(exc)) from None
        except EventLogError as exc:
            raise HTTPError(503, "ingest_unavailable", f"cannot store the events: {exc}") from None
        return json.dumps(result.to_dict()).encode()
