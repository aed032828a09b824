"""A typed Python client of the HTTP API (the models of :mod:`serving.http.api`)::

    from serving.http.client import PropensityClient

    with PropensityClient("http://127.0.0.1:3000", token) as client:
        answer = client.lookup(["u0000001", 42])
        print(answer.results[0].p_buy)

Every call returns the route's response model; an error answer (4xx/5xx) raises :class:`PropensityAPIError` with
the server's status, error code and one-line message; a server that cannot be reached raises it too (status 0).
One keep-alive connection pool per client; the client is thread-safe (httpx).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from serving.http.api import (
    AudienceResponse,
    EventsResponse,
    HealthResponse,
    LookupResponse,
    ReadinessResponse,
    ScoreResponse,
)

__all__ = ["PropensityAPIError", "PropensityClient"]

M = TypeVar("M", bound=BaseModel)


class PropensityAPIError(Exception):
    """The service answered with an error, or could not be reached (``status`` 0).

    ``status`` is the HTTP status, ``code`` the machine-readable error (``invalid``, ``unauthorized``,
    ``store_unavailable``, ...; ``unreachable`` or ``bad_answer`` from the client itself), ``message`` the server's
    one-line explanation.
    """

    def __init__(self, method: str, path: str, status: int, code: str, message: str) -> None:
        super().__init__(f"{method} {path} failed with {status} {code}: {message}" if status else
                         f"{method} {path} failed: {message}")
        self.status, self.code, self.message = status, code, message


class PropensityClient:
    """Client of one propensity service at ``base_url`` with the bearer ``token`` (None: send no token).

    ``timeout`` is in seconds per request; ``transport`` is an optional :class:`httpx.BaseTransport` (e.g. an
    ASGI transport in tests that run the app in process).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    # ------------------------------------------------------------------------------------------ routes
    def lookup(self, user_ids: Sequence[str | int]) -> LookupResponse:
        """Stored scores of ``user_ids`` (strings or integers), in request order."""
        return self._call("POST", "/lookup", LookupResponse, {"user_ids": list(user_ids)})

    def score(self, as_of: datetime | str, events: Sequence[Mapping[str, Any]]) -> ScoreResponse:
        """Fresh scores of the users of ``events`` (dicts of the event contract) as of ``as_of`` (naive = UTC)."""
        when = as_of.isoformat() if isinstance(as_of, datetime) else as_of
        return self._call("POST", "/score", ScoreResponse, {"as_of": when, "events": [dict(e) for e in events]})

    def audience(
        self, action: str, *, budget: float | None = None, top_k: int | None = None, limit: int | None = None
    ) -> AudienceResponse:
        """The audience of ``action``, cut by ``budget`` (currency), ``top_k`` users; ``limit`` ids returned."""
        body: dict[str, Any] = {"action": action}
        for key, value in (("budget", budget), ("top_k", top_k), ("limit", limit)):
            if value is not None:
                body[key] = value
        return self._call("POST", "/audience", AudienceResponse, body)

    def post_events(self, events: Sequence[Mapping[str, Any]]) -> EventsResponse:
        """Ingest ``events`` (1 to 10,000 dicts of the event contract, each with an optional ``event_id``): all are
        committed to the service's event log or, on an error, none. Sending the same events again is safe (they
        count as duplicates)."""
        return self._call("POST", "/events", EventsResponse, {"events": [dict(e) for e in events]})

    def health(self) -> HealthResponse:
        """Liveness (``GET /healthz``)."""
        return self._call("GET", "/healthz", HealthResponse)

    def ready(self) -> ReadinessResponse:
        """Readiness (``GET /readyz``): the document with ``ready`` true or false (a 503 is an answer, not an error)."""
        return self._call("GET", "/readyz", ReadinessResponse, accept=(200, 503))

    def metrics(self) -> str:
        """The Prometheus text exposition of ``GET /metrics``."""
        return self._send("GET", "/metrics", None, (200,)).text

    def openapi(self) -> dict[str, Any]:
        """The service's OpenAPI document."""
        return self._send("GET", "/openapi.json", None, (200,)).json()

    # ------------------------------------------------------------------------------------------ plumbing
    def _send(self, method: str, path: str, body: Any, accept: tuple[int, ...]) -> httpx.Response:
        content = None if body is None else json.dumps(body).encode()
        headers = None if body is None else {"content-type": "application/json"}
        try:
            r = self._http.request(method, path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise PropensityAPIError(method, path, 0, "unreachable",
                                     f"no answer from {self._http.base_url}: {type(exc).__name__}: {exc}") from None
        if r.status_code not in accept:
            raise PropensityAPIError(method, path, r.status_code, *_error_of(r))
        return r

    def _call(self, method: str, path: str, model: type[M], body: Any = None, *,
              accept: tuple[int, ...] = (200,)) -> M:
        r = self._send(method, path, body, accept)
        try:
            return model.model_validate_json(r.content)
        except ValidationError as exc:
            raise PropensityAPIError(method, path, r.status_code, "bad_answer",
                                     f"the answer does not match {model.__name__}: {exc.errors()[:3]}") from None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_of(r: httpx.Response) -> tuple[str, str]:
    """``(code, message)`` of an error answer: the service's ``{error, message}``, else the status text and body."""
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):
        return str(doc.get("error", "error")), doc["message"]
    text = r.text.strip().splitlines()[0][:200] if r.text.strip() else r.reason_phrase
    return "http_error", text
