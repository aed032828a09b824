"""What every route of :mod:`serving.http.app` shares: the process state, JSON answers and errors, the bearer-token
check, the size-limited JSON body, and :class:`PostEndpoint`, the base of the ``POST`` routes (``/lookup``,
``/score``, ``/audience`` in :mod:`serving.http.audience` and ``/events`` in :mod:`serving.http.events`).
"""

from __future__ import annotations

import hmac
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from serving.http.runtime import ServiceRuntime

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_NOT_READY = b'{"error":"starting","message":"the service is still starting"}'


class AppState:
    """Holds the process's :class:`ServiceRuntime` once the server has created it, the activation economics
    (costs, margin, lifts) the entry point resolved from its settings (None: the library defaults), and the
    :class:`serving.http.metrics.ServiceMetrics` that :class:`serving.http.app.FastPathMiddleware` records requests in
    (None: none), where and how ``/audience`` records its campaigns, and the monitoring report whose alert
    ``/metrics`` carries (:func:`serving.http.metrics.watch_monitoring`), and the event log ``/events`` writes to."""

    def __init__(self, runtime: ServiceRuntime | None = None, activation: Any = None, metrics: Any = None,
                 campaigns_dir: Path | None = None, campaigns: Any = None, monitoring_file: Path | None = None,
                 events_log: Any = None, events_log_error: str | None = None) -> None:
        self.runtime = runtime
        self.activation = activation
        self.metrics = metrics
        self.campaigns_dir = campaigns_dir  # where /audience records its campaigns (None: no record)
        self.campaigns = campaigns  # serving.settings.CampaignSettings
        self.monitoring_file = monitoring_file  # the latest `propensity monitor` report (None: no alert gauge)
        self.events_log = events_log  # features.events.log.EventLog that /events appends to (None: no ingestion)
        self.events_log_error = events_log_error  # why there is no event log, for the 503 of /events


class HTTPError(Exception):
    """An error answer: ``status``, machine-readable ``code``, a readable ``message`` and, for a refused ``/events``
    request, the ``index`` of its first bad event."""

    def __init__(self, status: int, code: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.index = status, code, message, index


def error_body(code: str, message: str, index: int | None = None) -> bytes:
    doc: dict[str, Any] = {"error": code, "message": message}
    if index is not None:
        doc["index"] = index
    return json.dumps(doc, ensure_ascii=False).encode()


async def send_json(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete JSON response."""
    hdrs = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if headers:
        hdrs.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, err: HTTPError) -> int:
    """Send the error answer; returns its status."""
    headers = [(b"www-authenticate", b"Bearer")] if err.status == 401 else None
    await send_json(send, err.status, error_body(err.code, err.message, err.index), headers)
    return err.status


def check_auth(scope: Scope, token: bytes | None) -> int:
    """Check the bearer token; return the declared Content-Length (-1 when absent). Raises 401 :class:`HTTPError`."""
    auth: bytes | None = None
    length = -1
    for name, value in scope["headers"]:
        if name == b"authorization":
            auth = value
        elif name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                raise HTTPError(400, "bad_request", "Content-Length is not an integer") from None
    if token is None:
        return length
    if auth is None:
        raise HTTPError(401, "unauthorized", "missing bearer token: send the header 'Authorization: Bearer <token>'")
    scheme, _, given = auth.partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token):
        raise HTTPError(401, "unauthorized", "invalid bearer token")
    return length


async def read_json(receive: Receive, declared: int, limit: int) -> Any:
    """Read the request body (at most ``limit`` bytes, else 413) and decode it as JSON (else 400)."""
    if declared > limit:
        raise HTTPError(413, "too_large", f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    msg = await receive()
    body = msg.get("body", b"")
    if msg.get("more_body"):
        chunks, size = [body], len(body)
        while msg.get("more_body"):
            msg = await receive()
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
    elif len(body) > limit:
        raise HTTPError(413, "too_large", f"request body exceeds the limit of {limit} bytes")
    if msg["type"] == "http.disconnect":
        raise HTTPError(400, "bad_request", "client disconnected")
    if not body:
        raise HTTPError(400, "bad_json", "the request body is empty; send a JSON object")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, "bad_json", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "bad_json", "the request body nests JSON too deeply") from None


class PostEndpoint(ABC):
    """A JSON ``POST`` route as a raw ASGI app: auth, size-limited JSON body, then :meth:`handle`.

    Errors raised as :class:`HTTPError` become their 4xx/503 answer; anything else is logged and answered 500
    with a generic message (the fuzz tests check that no request reaches that branch). Calling the endpoint
    returns the status it answered with (for the request metrics).
    """

    path = "/"

    def __init__(self, state: AppState) -> None:
        self.state = state

    @abstractmethod
    async def handle(self, rt: ServiceRuntime, doc: Any) -> bytes:
        """The answer body for a decoded, authorised request; raise :class:`HTTPError` for a 4xx/503."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        rt = self.state.runtime
        if rt is None:
            await send_json(send, 503, _NOT_READY)
            return 503
        try:
            declared = check_auth(scope, rt.token_bytes)
            doc = await read_json(receive, declared, rt.options.max_request_bytes)
            body = await self.handle(rt, doc)
        except HTTPError as err:
            return await send_error(send, err)
        except Exception as exc:
            log.exception("%s failed", self.path)
            await send_json(send, 500, error_body("internal", f"{self.path} failed: {type(exc).__name__}"))
            return 500
        await send_json(send, 200, body)
        return 200
