"""The OpenAPI 3.1 document of the HTTP API, generated from the models of :mod:`serving.http.api`, and its docs page.

:func:`openapi_document` builds the document (``GET /openapi.json``): the request body and every answer of
``/lookup``, ``/score``, ``/audience``, ``/events``, ``/healthz``, ``/readyz`` and ``/metrics`` with their JSON
schemas, the bearer-token scheme, and the running service's limits (``maxItems`` of ``user_ids`` and ``events``).
:func:`docs_html` renders it as one self-contained HTML page (``GET /docs``): inline CSS, no script, no font or
stylesheet from the network, so it works on an air-gapped host.
"""

from __future__ import annotations

import html
import json
import re
from importlib import metadata
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.http import api
from serving.http.options import ServiceOptions
from serving.http.schemas import MAX_INGEST_EVENTS

__all__ = ["docs_html", "openapi_document"]

_REF = "#/components/schemas/{model}"
_ERRORS = {
    "400": "The body is not JSON (or is empty, or nests too deeply).",
    "401": "Missing or wrong bearer token (send 'Authorization: Bearer <token>').",
    "413": "The body is larger than serving.max_request_bytes.",
    "422": "Valid JSON that breaks the contract; the message names the field.",
    "503": "The score store or the models are unavailable; the message says which.",
}
_REQUEST_MODELS: tuple[type[BaseModel], ...] = (
    api.LookupRequest, api.ScoreRequest, api.AudienceRequest, api.EventsRequest,
)
_RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    api.LookupResponse, api.ScoreResponse, api.AudienceResponse, api.EventsResponse, api.HealthResponse,
    api.ReadinessResponse, api.ErrorResponse,
)


def _version() -> str:
    try:
        return metadata.version("audience-propensity")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": _REF.format(
        model=model.__name__)}}}}


def _post(summary: str, description: str, request: type[BaseModel], response: type[BaseModel]) -> dict[str, Any]:
    responses = {"200": _json(response, summary)}
    responses.update({status: _json(api.ErrorResponse, text) for status, text in _ERRORS.items()})
    return {
        "post": {
            "summary": summary,
            "description": description,
            "operationId": request.__name__.removesuffix("Request").lower(),
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "$ref": _REF.format(model=request.__name__)}}}},
            "responses": responses,
        }
    }


def _get(summary: str, responses: dict[str, Any], operation_id: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "operationId": operation_id, "security": [], "responses": responses}}


def openapi_document(options: ServiceOptions | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document (a JSON-ready dict); ``options`` puts the service's request limits into it."""
    pairs = [(m, "validation") for m in _REQUEST_MODELS] + [(m, "serialization") for m in _RESPONSE_MODELS]
    _, defs = models_json_schema(pairs, ref_template=_REF)
    schemas: dict[str, Any] = defs["$defs"]
    lookup_ids = schemas["LookupRequest"]["properties"]["user_ids"]
    events = schemas["ScoreRequest"]["properties"]["events"]
    events["minItems"] = 1
    ingest = schemas["EventsRequest"]["properties"]["events"]
    ingest.update(minItems=1, maxItems=MAX_INGEST_EVENTS)
    limits = ""
    if options is not None:
        lookup_ids["maxItems"] = options.lookup_max_ids
        events["maxItems"] = options.score_max_events
        limits = (
            f" Limits of this service: {options.lookup_max_ids} ids per /lookup, {options.score_max_events} events "
            f"and {options.score_max_users} distinct users per /score, request bodies up to "
            f"{options.max_request_bytes} bytes."
        )
    paths = {
        "/lookup": _post(
            "Stored scores of a few users",
            "The served snapshot's record of each user, in request order; a user the snapshot does not hold gets "
            "`found: false` and the snapshot's population defaults. The online path: answers in a few "
            "milliseconds.",
            api.LookupRequest, api.LookupResponse,
        ),
        "/score": _post(
            "Fresh scores from posted events",
            "Scores the users of the posted events as of `as_of` with the champion models, through the same "
            "feature and scoring code as the nightly batch. Events at or after `as_of` are not feature input.",
            api.ScoreRequest, api.ScoreResponse,
        ),
        "/audience": _post(
            "The audience of one action",
            "The budget-aware audience for one action from the served snapshot's audience file: its expected "
            "outcome and the selected user ids, best first.",
            api.AudienceRequest, api.AudienceResponse,
        ),
        "/events": _post(
            "Ingest behavior events",
            f"Stores 1 to {MAX_INGEST_EVENTS} events of the event contract in the event log, all or none, and "
            "answers once they are committed (an acknowledged event survives a crash of the service). Each event "
            "is stored once: a resent `event_id`, or without one the same full event, counts as a duplicate. A "
            "request with a bad event is refused with 422 and stores nothing; `index` names the first bad event. "
            "The next batch and training read the stored events. 413: more events than the limit.",
            api.EventsRequest, api.EventsResponse,
        ),
        "/healthz": _get("Liveness: the process answers", {"200": _json(api.HealthResponse, "Alive.")}, "healthz"),
        "/readyz": _get("Readiness: models loaded and a snapshot served", {
            "200": _json(api.ReadinessResponse, "Ready."),
            "503": _json(api.ReadinessResponse, "Not ready; `reason` says why."),
        }, "readyz"),
        "/metrics": _get("Prometheus metrics (text exposition format)", {"200": {
            "description": "Request counts and latency per route and status, lookups found and not found, snapshot "
                           "age, model versions.",
            "content": {"text/plain": {"schema": {"type": "string"}}}}}, "metrics"),
        "/openapi.json": _get("This document", {"200": {"description": "The OpenAPI document.", "content": {
            "application/json": {"schema": {"type": "object"}}}}}, "openapi"),
        "/docs": _get("The API reference as an HTML page that needs no network", {"200": {
            "description": "HTML page.", "content": {"text/html": {"schema": {"type": "string"}}}}}, "docs"),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Propensity scoring service",
            "version": _version(),
            "description": "Scores of last-mile buyers (`p_buy`) and lapse risk (`p_lapse`) per user: stored "
                           "lookups, fresh scoring from events, and activation audiences. Every route but the "
                           "probes, `/metrics` and this documentation needs the bearer token. Errors are JSON "
                           "objects `{error, message}`; probabilities are in [0, 1], money in the shop's currency, "
                           "times ISO 8601 in UTC." + limits,
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


# ------------------------------------------------------------------------------------------------- docs page
_CODE = re.compile(r"``?([^`]+?)``?")
_CSS = """
body{font:15px/1.5 system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#1d232b}
h1{margin-bottom:.2em} h2{border-top:1px solid #ccd;padding-top:1em;margin-top:2em}
code,.t{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px}
.m{display:inline-block;min-width:3.5em;padding:1px 6px;border-radius:3px;color:#fff;background:#35a;
   font-weight:600;text-align:center} .m.get{background:#287a3e}
table{border-collapse:collapse;width:100%;margin:.5em 0 1em} td,th{border:1px solid #dde;padding:4px 8px;
   text-align:left;vertical-align:top} th{background:#f3f4f8} .req{color:#b00} .muted{color:#667}
"""


def _text(text: str) -> str:
    """Escaped prose with its `code` spans (single or double backticks) as <code>."""
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def _type(schema: dict[str, Any]) -> str:
    """A short readable type of a JSON schema (HTML; ``$ref`` becomes a link to the schema's section)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    if "anyOf" in schema or "oneOf" in schema:
        return " | ".join(_type(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    if "const" in schema:
        return f"<code>{html.escape(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{html.escape(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return html.escape(str(kind))


def _limits(schema: dict[str, Any]) -> str:
    names = {"minimum": ">=", "maximum": "<=", "minItems": "items >=", "maxItems": "items <=", "default": "default"}
    parts = [f"{label} {json.dumps(schema[key])}" for key, label in names.items() if key in schema]
    for option in schema.get("anyOf", []):
        parts += [f"{label} {json.dumps(option[key])}" for key, label in names.items() if key in option]
    return html.escape(", ".join(parts))


def _schema_table(name: str, schema: dict[str, Any]) -> str:
    rows = []
    required = set(schema.get("required", ()))
    for prop, sub in schema.get("properties", {}).items():
        mark = ' <span class="req">required</span>' if prop in required else ""
        rows.append(
            f"<tr><td><code>{html.escape(prop)}</code>{mark}</td><td class=t>{_type(sub)}</td>"
            f"<td>{_text(sub.get('description', ''))}<div class=muted>{_limits(sub)}</div></td></tr>"
        )
    body = "".join(rows) or "<tr><td colspan=3 class=muted>no fields</td></tr>"
    return (
        f'<h3 id="schema-{html.escape(name)}">{html.escape(name)}</h3>'
        f"<p>{_text(schema.get('description', ''))}</p>"
        f"<table><tr><th>field</th><th>type</th><th>meaning</th></tr>{body}</table>"
    )


def _content_type(response: dict[str, Any]) -> str:
    content = response.get("content", {})
    parts = []
    for media, spec in content.items():
        parts.append(f"<code>{html.escape(media)}</code> {_type(spec.get('schema', {}))}")
    return "; ".join(parts)


def docs_html(doc: dict[str, Any]) -> str:
    """One self-contained HTML page describing ``doc`` (an OpenAPI 3.1 document): routes, bodies, answers, schemas."""
    info = doc["info"]
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(info['title'])} {html.escape(info['version'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(info['title'])}</h1>",
        f"<p class=muted>version {html.escape(info['version'])} &middot; OpenAPI document: "
        + '<a href="openapi.json">openapi.json</a></p>',
        f"<p>{_text(info.get('description', ''))}</p><ul>",
    ]
    for path, ops in doc["paths"].items():
        for method in ops:
            out.append(f'<li><a href="#op-{method}-{html.escape(path)}"><code>{method.upper()} '
                       f"{html.escape(path)}</code></a> {_text(ops[method].get('summary', ''))}</li>")
    out.append("</ul>")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            auth = "no token" if op.get("security", doc.get("security")) == [] else "bearer token"
            out.append(
                f'<h2 id="op-{method}-{html.escape(path)}"><span class="m {method}">{method.upper()}</span> '
                f"<code>{html.escape(path)}</code></h2><p><b>{_text(op.get('summary', ''))}</b> "
                f"<span class=muted>({auth})</span></p><p>{_text(op.get('description', ''))}</p>"
            )
            body = op.get("requestBody")
            if body:
                out.append(f"<p>Request body: {_content_type(body)}</p>")
            out.append("<table><tr><th>status</th><th>answer</th><th>meaning</th></tr>")
            for status, response in op["responses"].items():
                out.append(f"<tr><td>{html.escape(status)}</td><td class=t>{_content_type(response)}</td>"
                           f"<td>{_text(response.get('description', ''))}</td></tr>")
            out.append("</table>")
    out.append("<h2>Schemas</h2>")
    for name, schema in doc["components"]["schemas"].items():
        out.append(_schema_table(name, schema))
    out.append("</body></html>")
    return "\n".join(out)
