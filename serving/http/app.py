"""The HTTP routes as a plain ASGI/Starlette app (mounted inside the BentoML service, or run bare on uvicorn).

Routes (JSON in, JSON out; errors are ``{"error": code, "message": text}``):

- ``POST /lookup`` ``{"user_ids": [...]}`` -> stored scores of each user (unknown users: ``found: false`` and
  the snapshot's population defaults). The hot path: raw ASGI handler, no per-request objects beyond the
  body, the stored JSON payloads are spliced into the response without being decoded.
- ``POST /score`` ``{"as_of": ISO, "events": [...]}`` -> fresh scores from the champion models.
- ``POST /audience`` ``{"action": ..., "budget"?, "top_k"?, "limit"?}`` -> the audience of one action.
- ``POST /events`` ``{"events": [...]}`` -> ``{"accepted", "duplicates", "last_seq"}`` once the events are committed
  to the event log (:mod:`serving.http.events`).
- ``GET /healthz`` liveness, ``GET /readyz`` readiness (503 with the reason), both without authentication.
- ``GET /metrics`` Prometheus text (:mod:`serving.http.metrics`), without authentication.
- ``GET /openapi.json`` (also ``/docs.json``) the OpenAPI 3.1 document generated from :mod:`serving.http.api`;
  ``GET /docs`` the same as a self-contained HTML page (``GET /`` redirects there); open, like the probes.

The request and response models of every route are in :mod:`serving.http.api`; what the routes share (process
state, JSON errors, the token check, the size-limited body, :class:`PostEndpoint`) in :mod:`serving.http.base`.

Statuses: 400 body is not JSON; 401 missing/wrong bearer token; 413 body larger than
``serving.max_request_bytes``; 422 valid JSON that breaks the contract (types, missing fields, counts);
503 store or models unavailable. The token is compared in constant time and never logged.
"""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any

from starlette.applications import Starlette
from starlette.routing import Route

from serving.http.audience import AudienceEndpoint
from serving.http.base import (
    _JSON_HEADERS,
    AppState,
    HTTPError,
    PostEndpoint,
    Receive,
    Scope,
    Send,
    check_auth,
    error_body,
    read_json,
    send_error,
    send_json,
)
from serving.http.events import EventsEndpoint
from serving.http.metrics import ROUTES
from serving.http.runtime import LookupUnavailable, NoModelsError, ServiceRuntime
from serving.http.schemas import ScoreRequestError, parse_score_request

__all__ = [
    "AppState", "AudienceEndpoint", "DocsEndpoint", "FastPathMiddleware", "HTTPError", "LookupEndpoint",
    "MetricsEndpoint", "PostEndpoint", "ReadyzEndpoint", "ScoreEndpoint", "build_app", "check_auth", "error_body",
    "healthz", "lookup_ids", "read_json", "send_error", "send_json",
]

def lookup_ids(doc: Any, max_ids: int) -> list[str]:
    """The ``user_ids`` of a decoded ``/lookup`` body as strings (422 :class:`HTTPError` when invalid)."""
    if type(doc) is not dict:
        raise HTTPError(422, "invalid", f"the body must be a JSON object with 'user_ids', got {type(doc).__name__}")
    ids = doc.get("user_ids")
    if ids is None:
        raise HTTPError(
            422,
            "invalid",
            f"'user_ids' is required: a list of 1 to {max_ids:d} user ids",
        )
    if type(ids) is not list:
        raise HTTPError(422, "invalid", f"'user_ids' must be a list of strings or integers, got {type(ids).__name__}")
    n = len(ids)
    if n == 0 or n > max_ids:
        raise HTTPError(422, "invalid", f"'user_ids' must hold 1 to {max_ids} ids, got {n} (serving.lookup_max_ids)")
    out = ids
    for i, u in enumerate(ids):
        t = type(u)
        if t is str:
            if not u.isascii():
                try:
                    u.encode()
                except UnicodeEncodeError:
                    raise HTTPError(422, "invalid", f"user_ids[{i}] is not valid Unicode text") from None
            continue
        if t is int:
            if out is ids:
                out = list(ids)
            out[i] = str(u)
            continue
        raise HTTPError(422, "invalid", f"user_ids[{i}] must be a string or an integer, got {json.dumps(u)[:40]}")
    return out


class LookupEndpoint(PostEndpoint):
    """``POST /lookup``: the hot path (no decoding of the stored payloads; a network store is read in a lookup
    thread, see :meth:`ServiceRuntime.lookup`)."""

    path = "/lookup"

    async def handle(self, rt: ServiceRuntime, doc: Any) -> bytes:
        ids = lookup_ids(doc, rt.options.lookup_max_ids)
        try:
            return await rt.lookup(ids)
        except LookupUnavailable as exc:
            raise HTTPError(503, "store_unavailable", str(exc)) from None


class ScoreEndpoint(PostEndpoint):
    """``POST /score``: fresh scores from the champion models for the posted events."""

    path = "/score"

    async def handle(self, rt: ServiceRuntime, doc: Any) -> bytes:
        o = rt.options
        try:
            as_of, events, users = parse_score_request(
                doc, max_events=o.score_max_events, max_users=o.score_max_users,
                future_tolerance_s=o.future_tolerance_s,
            )
        except ScoreRequestError as exc:
            raise HTTPError(exc.status, "invalid", str(exc)) from None
        try:
            return await rt.score(events, as_of, users)
        except NoModelsError as exc:
            raise HTTPError(503, "models_unavailable", str(exc)) from None
        except ValueError as exc:  # feature input errors: the events do not fit the feature spec
            raise HTTPError(422, "invalid", f"cannot build features from these events: {exc}") from None


class ReadyzEndpoint:
    """``GET /readyz``: 200 with the status document when ready, else 503 with ``reason`` (checked in the probe
    thread, see :meth:`ServiceRuntime.probe`: a store that hangs makes it answer 503 within seconds). The document
    also says whether this worker holds its event log (``events_log``: ``/events`` and fresh scores), which does not
    count towards readiness."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        rt = self.state.runtime
        if rt is None:
            await send_json(send, 503, b'{"ready":false,"reason":"the service is still starting","errors":[]}')
            return 503
        ready, doc = await rt.probe()
        state = self.state
        doc = {**doc, "events_log": {"ok": state.events_log is not None, "fresh_scores": rt.fresh is not None,
                                     "error": state.events_log_error}}  # the probe's document is shared: a copy
        status = 200 if ready else 503
        await send_json(send, status, json.dumps(doc).encode())
        return status


async def healthz(scope: Scope, receive: Receive, send: Send) -> int:
    """``GET /healthz``: the process is alive."""
    await send_json(send, 200, b'{"status":"ok"}')
    return 200


class _HealthRoute:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await healthz(scope, receive, send)


class MetricsEndpoint:
    """``GET /metrics``: Prometheus text (see :mod:`serving.http.metrics`); open, like the probes."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        from serving.http.metrics import CONTENT_TYPE, exposition

        rt = self.state.runtime
        body = exposition() if rt is None else await rt.metrics_body()
        headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return 200


class DocsEndpoint:
    """``GET /openapi.json`` (and ``/docs.json``), ``GET /docs`` (HTML, no network needed) and ``GET /`` (a redirect
    to ``/docs``). Built once per set of service options (the document carries their limits), then served from
    memory."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._cache: tuple[Any, bytes, bytes] | None = None

    def _documents(self) -> tuple[bytes, bytes]:
        rt = self.state.runtime
        options = rt.options if rt is not None else None
        cached = self._cache
        if cached is None or cached[0] is not options:
            from serving.http.openapi import docs_html, openapi_document

            doc = openapi_document(options)
            cached = self._cache = (options, json.dumps(doc).encode(), docs_html(doc).encode())
        return cached[1], cached[2]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> int:
        path = scope["path"]
        if path in ("/", ""):
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", b"/docs"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return 307
        spec, page = self._documents()
        if path == "/docs":
            headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(page)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": page})
            return 200
        await send_json(send, 200, spec)
        return 200


DOC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/docs.json"})


async def _json_http_error(request: Any, exc: Any) -> Any:
    from starlette.responses import Response

    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    body = error_body(code, f"{request.method} {request.url.path}: {exc.detail}")
    return Response(body, status_code=exc.status_code, headers=exc.headers, media_type="application/json")


def build_app(state: AppState) -> Starlette:
    """The Starlette app with every route of the module docstring, reading the runtime from ``state``."""
    from starlette.exceptions import HTTPException

    docs = DocsEndpoint(state)
    return Starlette(
        exception_handlers={HTTPException: _json_http_error},
        routes=[
            Route("/lookup", LookupEndpoint(state), methods=["POST"]),
            Route("/score", ScoreEndpoint(state), methods=["POST"]),
            Route("/audience", AudienceEndpoint(state), methods=["POST"]),
            Route("/events", EventsEndpoint(state), methods=["POST"]),
            Route("/readyz", ReadyzEndpoint(state), methods=["GET", "HEAD"]),
            Route("/healthz", _HealthRoute(), methods=["GET", "HEAD"]),
            Route("/metrics", MetricsEndpoint(state), methods=["GET", "HEAD"]),
            *(Route(path, docs, methods=["GET", "HEAD"]) for path in sorted(DOC_PATHS)),
        ]
    )


class FastPathMiddleware:
    """Serves ``POST /lookup``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` and the documentation routes with
    the endpoints above, ahead of the host server's own routing; every other request passes through, its plain-text
    404/405 answers turned into JSON errors. Every HTTP request is counted and timed in ``state.metrics`` by route
    and status (:mod:`serving.http.metrics`).

    Inside BentoML this skips its router, the mount and the mounted app's middleware stack on the hot path
    (measured with ``benchmarks/bench_lookup.py`` at 1000 req/s: 389 -> 280 us of server CPU per lookup, the
    bare-uvicorn floor being 190 us), and lets ``/readyz`` carry its reasons instead of BentoML's plain-text
    probe. BentoML's outer middlewares (tracing, timeout) still apply; its own request metrics are turned off by
    the service definition, as this middleware records them.
    """

    def __init__(self, app: Any, state: AppState) -> None:
        self.app = app
        self.state = state
        self._lookup = LookupEndpoint(state)
        self._readyz = ReadyzEndpoint(state)
        self._docs = DocsEndpoint(state)
        self._metrics = MetricsEndpoint(state)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        path, method = scope["path"], scope["method"]
        status = 500
        try:
            if path == "/lookup" and method == "POST":
                status = await self._lookup(scope, receive, send)
            elif method in ("GET", "HEAD") and path in _OWN_GET:
                if path == "/healthz":
                    status = await healthz(scope, receive, send)
                elif path == "/readyz":
                    status = await self._readyz(scope, receive, send)
                elif path == "/metrics":
                    status = await self._metrics(scope, receive, send)
                else:  # ahead of BentoML's own index page and API description
                    status = await self._docs(scope, receive, send)
            else:
                relay = _Relay(scope, send)
                await self.app(scope, receive, relay)
                status = relay.status
        finally:
            metrics = self.state.metrics
            if metrics is not None:
                metrics.request(path if path in ROUTES else "other", status, perf_counter() - start)


_OWN_GET = frozenset({"/healthz", "/readyz", "/metrics", *DOC_PATHS})


class _Relay:
    """``send`` for a passed-through request: notes the answer's status and turns the host server's plain-text
    404/405 answers into JSON error bodies."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.scope, self.send, self.status = scope, send, 500
        self._held: dict[str, Any] | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = dict(message.get("headers", []))
            if message["status"] in (404, 405) and headers.get(b"content-type", b"").startswith(b"text/plain"):
                self._held = message
                return
        elif message["type"] == "http.response.body" and self._held is not None:
            if message.get("more_body"):
                return
            start, self._held = self._held, None
            code = "not_found" if start["status"] == 404 else "method_not_allowed"
            reason = "no such route" if start["status"] == 404 else "method not allowed"
            body = error_body(code, f"{self.scope['method']} {self.scope['path']}: {reason}")
            hdrs = [(k, v) for k, v in start.get("headers", []) if k not in (b"content-type", b"content-length")]
            hdrs += [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
            await self.send({**start, "headers": hdrs})
            await self.send({"type": "http.response.body", "body": body})
            return
        await self.send(message)
