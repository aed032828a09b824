"""The API models, the OpenAPI document generated from them and its docs page, without a server: the models cover
every field the handlers write, the hand-written ``/lookup`` parser accepts exactly what :class:`LookupRequest`
describes, every schema of the document is valid JSON Schema 2020-12 and every reference resolves, and the docs
page loads nothing from the network."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from serving.http import api
from serving.http.app import HTTPError, lookup_ids
from serving.http.openapi import docs_html, openapi_document
from serving.http.options import ServiceOptions

OPTIONS = ServiceOptions(token="t", allow_no_auth=False, max_request_bytes=10_000, lookup_max_ids=7,
                         score_max_users=3, score_max_events=11, future_tolerance_s=60.0, reload_interval_s=1.0,
                         model_dir=None)


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


# ------------------------------------------------------------------------------------------------- models
def test_lookup_result_declares_every_column_a_snapshot_stores() -> None:
    from serving.batch.run import AUDIENCE_COLUMNS, PopulationStats

    fields = set(api.LookupResult.model_fields)
    assert set(AUDIENCE_COLUMNS) | {"found"} <= fields, set(AUDIENCE_COLUMNS) - fields
    stats = PopulationStats(rows=2, p_buy_sum=0.5, p_buy_n=2)
    assert set(stats.defaults()) <= fields  # what unknown users get


def test_score_result_declares_every_column_of_the_scoring_function() -> None:
    from serving.scoring import BTYD_OUTPUT, REASONS_COLUMN, SEGMENT_OUTPUT, VERSION_COLUMN
    from training.bundle import SCORE_COLUMN

    written = {"user_id", *SEGMENT_OUTPUT, *SCORE_COLUMN.values(), *REASONS_COLUMN.values(), *VERSION_COLUMN.values(),
               *BTYD_OUTPUT, "as_of"}
    assert written | {"scored"} <= set(api.ScoreResult.model_fields), written - set(api.ScoreResult.model_fields)


def test_audience_response_is_the_summary_plus_snapshot_campaign_and_ids() -> None:
    from serving.activation.audiences import AudienceSummary

    summary = {f.name for f in dataclasses.fields(AudienceSummary)}
    extra = {"snapshot_id", "campaign_id", "control_size", "user_ids"}
    assert set(api.AudienceResponse.model_fields) == summary | extra


def _parses(doc: Any) -> bool:
    try:
        lookup_ids(doc, 10**6)
    except HTTPError:
        return False
    return True


def _validates(doc: Any) -> bool:
    try:
        api.LookupRequest.model_validate(doc)
    except ValidationError:
        return False
    return True


ids = (st.text(max_size=8) | st.integers() | st.booleans() | st.none() | st.floats()
       | st.lists(st.integers(), max_size=2))


@settings(max_examples=300, derandomize=True, database=None)
@given(doc=st.fixed_dictionaries({}, optional={"user_ids": st.lists(ids, max_size=4) | ids, "other": ids})
       | st.lists(ids, max_size=2) | ids)
def test_lookup_parser_accepts_exactly_what_the_request_model_describes(doc: Any) -> None:
    assert _parses(doc) == _validates(doc), doc


@pytest.mark.parametrize(("doc", "ok"), [({"user_ids": ["a", 1]}, True), ({"user_ids": []}, False),
                                         ({"user_ids": [True]}, False), ({"user_ids": "a"}, False), ([], False)])
def test_lookup_parser_and_model_on_pinned_cases(doc: Any, ok: bool) -> None:
    assert _parses(doc) is ok and _validates(doc) is ok


def test_audience_request_refuses_what_the_handler_cannot_use() -> None:
    ok = api.AudienceRequest.model_validate({"action": "nurture", "budget": 5, "top_k": 2, "extra": 1})
    assert ok.budget == 5.0 and ok.limit == 1000
    for bad in ({"action": "spam"}, {"action": "nurture", "budget": 10**400}, {"action": "nurture", "budget": -1},
                {"action": "nurture", "budget": float("nan")}, {"action": "nurture", "top_k": True},
                {"action": "nurture", "limit": 10**10}, {"action": "nurture", "budget": "5"}):
        with pytest.raises(ValidationError):
            api.AudienceRequest.model_validate(bad)


# ------------------------------------------------------------------------------------------------- document
def test_document_schemas_are_valid_and_every_reference_resolves() -> None:
    doc = openapi_document(OPTIONS)
    assert doc["openapi"].startswith("3.1") and doc["info"]["version"]
    schemas = doc["components"]["schemas"]
    for name, schema in schemas.items():
        Draft202012Validator.check_schema(schema)
        assert schema.get("description"), f"{name} has no description"
    for ref in refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    assert {"/lookup", "/score", "/audience", "/healthz", "/readyz", "/metrics"} <= set(doc["paths"])
    for path in ("/lookup", "/score", "/audience"):
        op = doc["paths"][path]["post"]
        assert set(op["responses"]) == {"200", "400", "401", "413", "422", "503"}
        assert "security" not in op  # the document-wide bearer requirement applies
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}


def test_document_carries_the_service_limits() -> None:
    doc = openapi_document(OPTIONS)
    schemas = doc["components"]["schemas"]
    assert schemas["LookupRequest"]["properties"]["user_ids"]["maxItems"] == 7
    assert schemas["ScoreRequest"]["properties"]["events"]["maxItems"] == 11
    assert "3 distinct users" in doc["info"]["description"]
    assert "maxItems" not in openapi_document()["components"]["schemas"]["LookupRequest"]["properties"]["user_ids"]


def test_request_schemas_agree_with_the_models_on_examples() -> None:
    schemas = openapi_document(OPTIONS)["components"]

    def valid(name: str, instance: Any) -> bool:
        return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": schemas}).is_valid(instance)

    assert valid("LookupRequest", {"user_ids": ["u1", 2]})
    assert not valid("LookupRequest", {"user_ids": [f"u{i}" for i in range(8)]})  # over this service's limit
    assert not valid("LookupRequest", {"user_ids": []})
    event = {"user_id": "u1", "ts": "2026-07-01T00:00:00", "behavior": "view"}
    assert valid("ScoreRequest", {"as_of": "2026-07-02", "events": [event]})
    assert not valid("ScoreRequest", {"as_of": "2026-07-02", "events": [{**event, "colour": 1}]})
    assert valid("AudienceRequest", {"action": "win_back", "budget": 10.5})
    assert not valid("AudienceRequest", {"action": "win_back", "budget": -1})


def test_docs_page_is_self_contained_and_lists_every_route() -> None:
    doc = openapi_document(OPTIONS)
    page = docs_html(doc)
    assert page.startswith("<!doctype html>") and "</html>" in page
    assert "<script" not in page.lower() and "@import" not in page
    links = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert links and all(link.startswith("#") or link == "openapi.json" for link in links), links
    assert not re.search(r"https?:|//[a-z]", page.replace("http.response", "")), "the page names a network address"
    for path, ops in doc["paths"].items():
        for method in ops:
            assert f'id="op-{method}-{path}"' in page
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page
    assert "<code>found: false</code>" in page  # backticks become code spans
    json.dumps(doc)  # JSON-ready
