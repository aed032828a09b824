"""The real BentoML server (``bentoml serve propensity.service.bento:PropensityService``) against a temp MLflow registry
and score store: lookups, fresh scores, auth, limits, bad input, hot reloads, readiness and a store outage."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Self

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import (
    AS_OF,
    START,
    TOKEN,
    Server,
    Trained,
    free_port,
    metric,
    publish,
    register,
    scrape,
    start_server,
    train_bundle,
)

pytestmark = pytest.mark.slow


def lookup(server: Server, ids: list[Any]) -> dict[str, Any]:
    """The ``/lookup`` answer through the typed client, as the JSON fields the server sent."""
    from serving.http.client import PropensityClient

    with PropensityClient(server.base, TOKEN) as client:
        return client.lookup(ids).model_dump(exclude_unset=True)


def closed(node: Any) -> Any:
    """A copy of a JSON schema whose objects admit only their declared properties (the published document leaves
    them open for later additions; the tests must see an undeclared field)."""
    if isinstance(node, dict):
        out = {k: closed(v) for k, v in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [closed(v) for v in node]
    return node


def answer_errors(doc: dict[str, Any], method: str, path: str, r: httpx.Response) -> list[str]:
    """Where the JSON answer ``r`` of ``method path`` breaks its schema in the OpenAPI ``doc`` (closed objects)."""
    from jsonschema import Draft202012Validator

    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(r.status_code) in responses, f"{method} {path} answered {r.status_code}, not in the document"
    schema = responses[str(r.status_code)]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": closed(doc["components"])})
    return [f"{e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(r.json())]


def request_events(events: pd.DataFrame) -> list[dict[str, Any]]:
    """Canonical event rows as the JSON a client posts (ISO timestamps, missing optional fields left out)."""
    out = []
    for rec in events.to_dict("records"):
        row = {"user_id": rec["user_id"], "ts": rec["ts"].isoformat(), "behavior": rec["behavior"]}
        for key in ("item_id", "category_id", "channel", "amount"):
            value = rec.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                row[key] = value
        out.append(row)
    return out


class Looper:
    """Calls ``fn`` in a background thread until stopped; keeps every (status, value) it saw."""

    def __init__(self, fn: Any) -> None:
        self.fn, self.seen, self._stop = fn, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.append(self.fn())
            except httpx.HTTPError as exc:
                self.seen.append((f"transport error: {exc}", None))

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join(timeout=60)


# ------------------------------------------------------------------------------------------------- lookup
def test_lookup_returns_stored_scores_and_defaults_for_unknown_users(server: Server, trained: Trained) -> None:
    scores = trained.scores.set_index("user_id")
    known = list(scores.index[:3])
    doc = lookup(server, [known[0], "no-such-user", known[1], 424242, known[2]])
    assert doc["as_of"] == AS_OF.isoformat()
    assert doc["snapshot_id"] and doc["scored_at"].startswith("2026-07-21T01:00:00")
    results = doc["results"]
    assert [r["user_id"] for r in results] == [known[0], "no-such-user", known[1], "424242", known[2]]
    for r in (results[0], results[2], results[4]):
        row = scores.loc[r["user_id"]]
        assert r["found"] is True
        assert r["p_buy"] == pytest.approx(row["p_buy"], abs=1e-12)
        assert r["aipl_layer"] == row["aipl_layer"] and r["lifecycle"] == row["lifecycle"]
        assert r["reasons_buy"] == list(row["reasons_buy"])
        # the readable reasons come with the stored record: a phrase with the user's values, feature in brackets
        assert r["reasons_buy_text"] == list(row["reasons_buy_text"]) and r["reasons_buy_text"]
        for text, feature in zip(r["reasons_buy_text"], r["reasons_buy"], strict=True):
            assert text.endswith(f" ({feature})") and len(text) > len(feature) + 3 and "nan" not in text.split()
        assert r["reasons_lapse_text"] == list(row["reasons_lapse_text"])
        assert (r["p_lapse"] is None) == bool(pd.isna(row["p_lapse"]))
    for r in (results[1], results[3]):
        assert r == {"user_id": r["user_id"], "found": False, **trained.defaults}


def test_lookup_rejects_missing_or_wrong_token(server: Server) -> None:
    body = {"user_ids": ["u0000001"]}
    r = server.anon.post("/lookup", json=body)
    assert r.status_code == 401 and "missing bearer token" in r.json()["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    r = server.anon.post("/lookup", json=body, headers={"Authorization": "Bearer wrong-token"})
    assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = server.anon.post("/score", json={"as_of": AS_OF.isoformat(), "events": []},
                         headers={"Authorization": f"Basic {TOKEN}"})
    assert r.status_code == 401
    assert server.anon.post("/lookup", json=body, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert server.anon.get(path).status_code == 200, path


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b'["u1"]', 422, "JSON object"),
        (b'{"ids": ["u1"]}', 422, "'user_ids' is required"),
        (b'{"user_ids": "u1"}', 422, "must be a list"),
        (b'{"user_ids": ["u1", 1.5]}', 422, "user_ids[1]"),
        (b'{"user_ids": [true]}', 422, "user_ids[0]"),
        (b'{"user_ids": [null]}', 422, "user_ids[0]"),
        (b'{"user_ids": []}', 422, "1 to 50"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "too deeply"),
        (b'{"user_ids": ["\\ud800"]}', 422, "not valid Unicode"),
    ],
)
def test_lookup_bad_input_gets_a_clear_4xx(server: Server, body: bytes, status: int, needle: str) -> None:
    r = server.client.post("/lookup", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]


def test_limits_answer_413_and_422(server: Server) -> None:
    r = server.client.post("/lookup", json={"user_ids": [f"u{i}" for i in range(51)]})
    assert r.status_code == 422 and "serving.lookup_max_ids" in r.json()["message"]
    big = {"user_ids": ["u1"], "pad": "x" * 1_100_000}
    r = server.client.post("/lookup", json=big)
    assert r.status_code == 413 and "exceeds the limit of 1000000 bytes" in r.json()["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming too
        yield b'{"user_ids": ["u1"], "pad": "'
        for _ in range(12):
            yield b"x" * 100_000
        yield b'"}'

    r = server.client.post("/lookup", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    events = [{"user_id": f"u{i}", "ts": "2026-07-01T00:00:00Z", "behavior": "view"} for i in range(31)]
    r = server.client.post("/score", json={"as_of": AS_OF.isoformat(), "events": events})
    assert r.status_code == 422 and "too many users: 31 > 30" in r.json()["message"]
    events = [{"user_id": "u1", "ts": 1780000000 + i, "behavior": "view"} for i in range(2001)]
    r = server.client.post("/score", json={"as_of": AS_OF.isoformat(), "events": events})
    assert r.status_code == 422 and "too many events: 2001 > 2000" in r.json()["message"]


# ------------------------------------------------------------------------------------------------- score
def _champions(trained: Trained) -> dict[str, Any]:
    from serving.http.models import RegistrySource

    source = RegistrySource(trained.tracking_uri, trained.artifact_root)
    return {t: source.load(t, "")[0] for t in ("last_mile_buyer", "lapse_risk")}


def test_score_equals_the_batch_scoring_function(server: Server, trained: Trained) -> None:
    from serving.scoring import score_events

    ev = trained.events
    users = sorted(ev.loc[ev["ts"] < AS_OF, "user_id"].unique())[:12]
    sample = ev[ev["user_id"].isin(users) & (ev["ts"] < AS_OF)].reset_index(drop=True)
    r = server.client.post("/score", json={"as_of": AS_OF.isoformat(), "events": request_events(sample)})
    assert r.status_code == 200, r.text
    doc = r.json()
    bundles = _champions(trained)
    assert doc["models"] == {t: b.meta["version"] for t, b in bundles.items()}
    expected = score_events(sample, AS_OF, bundles).set_index("user_id")
    got = {rec["user_id"]: rec for rec in doc["results"]}
    assert sorted(got) == sorted(users) and len(expected) == len(users)
    for uid, row in expected.iterrows():
        rec = got[uid]
        assert rec["scored"] is True
        for col in ("p_buy", "p_lapse", "rule_score"):
            if pd.isna(row[col]):
                assert rec[col] is None, (uid, col)
            else:
                assert abs(rec[col] - row[col]) <= 1e-9, (uid, col, rec[col], row[col])
        for col in ("aipl_layer", "lifecycle", "rfm_group", "model_buy", "model_lapse"):
            assert rec[col] == row[col], (uid, col)
        assert rec["reasons_buy"] == list(row["reasons_buy"]) and rec["reasons_lapse"] == list(row["reasons_lapse"])
        assert rec["reasons_buy_text"] == list(row["reasons_buy_text"])
        assert rec["reasons_lapse_text"] == list(row["reasons_lapse_text"])


def test_score_accepts_aliases_and_epoch_seconds_and_reports_users_without_history(server: Server) -> None:
    as_of = AS_OF.isoformat()
    epoch = int((AS_OF - timedelta(days=2)).timestamp())
    events = [
        {"user_id": 77, "ts": epoch, "behavior": " PV ", "channel": "Search"},
        {"user_id": "77", "ts": str(epoch + 60), "behavior": "addtocart", "item_id": 5, "amount": 0},
        {"user_id": "late", "ts": AS_OF.isoformat(), "behavior": "view"},  # at as_of: not a feature input
    ]
    r = server.client.post("/score", json={"as_of": as_of, "events": events})
    assert r.status_code == 200, r.text
    results = {rec["user_id"]: rec for rec in r.json()["results"]}
    assert results["77"]["scored"] is True and 0.0 <= results["77"]["p_buy"] <= 1.0
    assert results["late"] == {"user_id": "late", "scored": False, "reason": "no events before as_of"}


@pytest.mark.parametrize(
    ("event", "needle"),
    [
        ({"user_id": "u1", "ts": "2026-07-01T00:00:00Z", "behavior": "jump"}, "events[0].behavior"),
        ({"user_id": "u1", "ts": "2026-07-01T00:00:00Z", "behavior": "buy", "amount": -3}, "events[0].amount"),
        ({"user_id": "u1", "ts": "yesterday", "behavior": "view"}, "events[0].ts"),
        ({"user_id": "  ", "ts": "2026-07-01T00:00:00Z", "behavior": "view"}, "events[0].user_id"),
        ({"ts": "2026-07-01T00:00:00Z", "behavior": "view"}, "events[0].user_id"),
        ({"user_id": "u1", "ts": "2026-07-01T00:00:00Z", "behavior": "view", "colour": 1}, "events[0].colour"),
        ({"user_id": "u1", "ts": "2026-07-25T00:00:00Z", "behavior": "view"}, "later than as_of"),
        ({"user_id": [1], "ts": "2026-07-01T00:00:00Z", "behavior": "view"}, "events[0].user_id"),
    ],
)
def test_score_rejects_events_that_break_the_contract(server: Server, event: dict[str, Any], needle: str) -> None:
    ok = {"user_id": "u2", "ts": "2026-07-01T00:00:00Z", "behavior": "view"}
    r = server.client.post("/score", json={"as_of": AS_OF.isoformat(), "events": [event, ok]})
    assert r.status_code == 422, r.text
    assert needle in r.json()["message"]


def test_score_rejects_bad_as_of_and_empty_events(server: Server) -> None:
    ok = [{"user_id": "u2", "ts": "2026-07-01T00:00:00Z", "behavior": "view"}]
    assert "as_of" in server.client.post("/score", json={"events": ok}).json()["message"]
    assert server.client.post("/score", json={"as_of": "soon", "events": ok}).status_code == 422
    r = server.client.post("/score", json={"as_of": AS_OF.isoformat(), "events": []})
    assert r.status_code == 422 and "at least one event" in r.json()["message"]


# ------------------------------------------------------------------------------------------------- api document
def test_real_answers_match_the_openapi_document(server: Server, trained: Trained) -> None:
    """Answers of every route, successes and errors, validate against the served document's schemas, whose objects
    are closed here: a field the models do not declare fails."""
    from serving.http.client import PropensityClient

    with PropensityClient(server.base, TOKEN) as client:
        doc = client.openapi()
    assert doc["components"]["schemas"]["LookupRequest"]["properties"]["user_ids"]["maxItems"] == 50
    known = trained.scores["user_id"].iloc[:2].tolist()
    sample = trained.events[trained.events["user_id"].isin(known) & (trained.events["ts"] < AS_OF)]
    late = {"user_id": "late", "ts": AS_OF.isoformat(), "behavior": "view"}
    answers = [
        ("POST", "/lookup", server.client.post("/lookup", json={"user_ids": [*known, "nobody", 7]})),
        ("POST", "/score", server.client.post("/score", json={"as_of": AS_OF.isoformat(),
                                                               "events": [*request_events(sample), late]})),
        ("GET", "/healthz", server.anon.get("/healthz")),
        ("GET", "/readyz", server.anon.get("/readyz")),
        ("POST", "/lookup", server.client.post("/lookup", content=b"{", headers={"content-type": "application/json"})),
        ("POST", "/score", server.anon.post("/score", json={})),
        ("POST", "/lookup", server.client.post("/lookup", json={"user_ids": []})),
        ("POST", "/lookup", server.client.post("/lookup", json={"user_ids": ["u"], "pad": "x" * 1_100_000})),
        ("POST", "/audience", server.client.post("/audience", json={"action": "spam"})),
    ]
    statuses = [r.status_code for _, _, r in answers]
    assert statuses == [200, 200, 200, 200, 400, 401, 422, 413, 422], [
        (r.status_code, r.text[:300]) for *_, r in answers
    ]
    for method, path, r in answers:
        assert not answer_errors(doc, method, path, r), (
            method, path, r.status_code, answer_errors(doc, method, path, r)
        )
    results = answers[0][2].json()["results"]
    assert [x["found"] for x in results] == [True, True, False, False]
    scored = {x["user_id"]: x["scored"] for x in answers[1][2].json()["results"]}
    assert scored == {known[0]: True, known[1]: True, "late": False}
    # the check can fail: an undeclared field, an out-of-range probability and a wrong type are all caught
    good = answers[0][2]
    for broken in ({**good.json(), "extra": 1},
                   {**good.json(), "results": [{**results[0], "p_buy": 1.5}]},
                   {**good.json(), "results": [{**results[0], "found": "yes"}]}):
        assert answer_errors(doc, "POST", "/lookup", httpx.Response(200, json=broken))


def test_docs_page_works_offline_and_the_root_leads_to_it(server: Server) -> None:
    page = server.anon.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<script" not in text.lower() and "https:" not in text and "http:" not in text
    for path in ("/lookup", "/score", "/audience", "/healthz", "/readyz", "/metrics"):
        assert f"<code>{path}</code>" in text, path
    root = server.anon.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/docs"
    assert server.anon.get("/docs.json").json() == server.anon.get("/openapi.json").json()


def test_client_raises_the_servers_one_line_message(server: Server) -> None:
    from serving.http.client import PropensityAPIError, PropensityClient

    with PropensityClient(server.base, TOKEN) as client:
        assert client.health().status == "ok" and client.ready().ready is True
        with pytest.raises(PropensityAPIError, match=r"POST /lookup failed with 422 invalid: 'user_ids' must hold"):
            client.lookup([])
        with pytest.raises(PropensityAPIError) as err:
            client.audience("spam_everyone")
        assert err.value.status == 422 and "action" in err.value.message
    with PropensityClient(server.base, "wrong") as client, pytest.raises(PropensityAPIError) as err:
        client.lookup(["u1"])
    assert (err.value.status, err.value.code, err.value.message) == (401, "unauthorized", "invalid bearer token")
    with (PropensityClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2) as client,
          pytest.raises(PropensityAPIError, match="GET /healthz failed: no answer from") as err):
        client.health()
    assert err.value.status == 0 and err.value.code == "unreachable"


# ------------------------------------------------------------------------------------------------- ops
def test_readiness_and_metrics(server: Server, trained: Trained) -> None:
    r = server.anon.get("/readyz")
    doc = r.json()
    assert r.status_code == 200 and doc["ready"] is True and doc["errors"] == []
    assert doc["model_source"] == "registry" and set(doc["models"]) == {"last_mile_buyer", "lapse_risk"}
    assert doc["store"]["ok"] is True and doc["store"]["snapshot_id"]
    assert server.anon.get("/healthz").json() == {"status": "ok"}
    before = scrape(server)
    known = trained.scores["user_id"].iloc[:2].tolist()
    lookup(server, [*known, "nobody-here"])
    lookup(server, ["nobody-either"])
    assert server.client.post("/lookup", json={"user_ids": []}).status_code == 422
    assert server.anon.get("/no/such/route").status_code == 404
    t0 = time.time()
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("propensity_lookup_users_total", outcome="found") == 2
    assert delta("propensity_lookup_users_total", outcome="not_found") == 2
    assert delta("propensity_http_requests_total", route="/lookup", status="200") == 2
    assert delta("propensity_http_requests_total", route="/lookup", status="422") == 1
    assert delta("propensity_http_requests_total", route="other", status="404") == 1
    assert delta("propensity_http_requests_total", route="/metrics", status="200") == 1  # the first scrape
    assert delta("propensity_http_request_duration_seconds_count", route="/lookup", status="200") == 2
    assert delta("propensity_http_request_duration_seconds_bucket", route="/lookup", status="200", le="+Inf") == 2
    assert 0 < delta("propensity_http_request_duration_seconds_sum", route="/lookup", status="200") < 10
    assert not any(name.startswith("propensity_http_requests_total") and dict(labels).get("route") == "/no/such/route"
                   for name, labels in after)  # unknown paths share the "other" label
    assert not any(name.startswith("bentoml_service_request") for name, _ in after)  # counted once, here
    scored_at = datetime.fromisoformat(doc["store"]["scored_at"])
    age = metric(after, "propensity_snapshot_age_seconds")
    assert abs(age - (t0 - scored_at.timestamp())) < 30, (age, scored_at)
    assert metric(after, "propensity_snapshot_created_timestamp_seconds") == pytest.approx(scored_at.timestamp())
    assert metric(after, "propensity_snapshot_users") == len(trained.scores)
    assert metric(after, "propensity_ready") == 1
    for target, version in doc["models"].items():
        assert metric(after, "propensity_model_version_info", target=target, version=version, source="registry") == 1


def test_new_snapshot_is_served_at_once_without_failed_requests(server: Server, trained: Trained) -> None:
    uid = trained.scores["user_id"].iloc[5]
    old = float(trained.scores["p_buy"].iloc[5])
    new_scores = trained.scores.assign(p_buy=0.654321)

    def one() -> tuple[int, Any]:
        r = server.client.post("/lookup", json={"user_ids": [uid]})
        return r.status_code, (r.json()["results"][0]["p_buy"] if r.status_code == 200 else r.text)

    with Looper(one) as loop:
        time.sleep(0.3)
        sid = publish(trained.store_path, new_scores, trained.defaults, START + timedelta(days=51))
        time.sleep(0.3)
    statuses = {s for s, _ in loop.seen}
    values = [v for _, v in loop.seen]
    assert statuses == {200}, [x for x in loop.seen if x[0] != 200][:3]
    assert values[0] == pytest.approx(old) and values[-1] == pytest.approx(0.654321)
    switch = values.index(values[-1])
    assert all(v == pytest.approx(0.654321) for v in values[switch:])  # never back to the old snapshot
    assert lookup(server, [uid])["snapshot_id"] == sid


def test_new_champion_is_loaded_without_restart_or_failed_requests(server: Server, trained: Trained) -> None:
    before = server.anon.get("/readyz").json()["models"]["last_mile_buyer"]
    sample = trained.events[trained.events["user_id"].isin(["u0000003", "u0000004"]) & (trained.events["ts"] < AS_OF)]
    body = {"as_of": AS_OF.isoformat(), "events": request_events(sample)}

    def one() -> tuple[int, Any]:
        r = server.client.post("/score", json=body)
        return r.status_code, (r.json()["models"]["last_mile_buyer"] if r.status_code == 200 else r.text)

    with Looper(one) as loop:
        bundle, x, names = train_bundle("last_mile_buyer", trained.raw, trained.events, seed=99, rounds=8)
        version = register(trained, bundle, x, names)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.anon.get("/readyz").json()["models"]["last_mile_buyer"] != version:
            time.sleep(0.2)
        time.sleep(0.5)
    assert version != before
    assert server.anon.get("/readyz").json()["models"]["last_mile_buyer"] == version
    assert {s for s, _ in loop.seen} == {200}, [x for x in loop.seen if x[0] != 200][:3]
    assert loop.seen[0][1] == before and loop.seen[-1][1] == version


# ------------------------------------------------------------------------------------------------- config
def test_serve_refuses_to_start_without_a_token(trained: Trained) -> None:
    from propensity.config import Settings
    from propensity.service.launch import serve_args
    from propensity.service.options import ServiceConfigError

    settings = Settings(store_path=trained.store_path, serving={})
    env = {"PATH": "/usr/bin"}
    with pytest.raises(ServiceConfigError, match="no API token configured"):
        serve_args(settings, environ=env)
    argv, out_env = serve_args(settings, port=4321, environ={**env, "PROPENSITY_SERVING__ALLOW_NO_AUTH": "1"})
    assert argv[-6:] == ["--host", "127.0.0.1", "--port", "4321", "--working-dir", argv[-1]]
    shipped = json.loads(out_env["PROPENSITY_SETTINGS_JSON"])
    assert Path(shipped["store_path"]).is_absolute() and "api_token" not in shipped["serving"]
    token_file = trained.root / "token.txt"
    token_file.write_text("from-a-file\n")
    _, out_env = serve_args(Settings(serving={"api_token_file": token_file}), environ=env)
    assert "from-a-file" not in out_env["PROPENSITY_SETTINGS_JSON"]


# ------------------------------------------------------------------------------------------------- redis
@pytest.mark.redis
def test_redis_outage_gives_503_and_recovers_and_a_broken_model_keeps_the_old_one(
    redis_server: Any, trained: Trained, tmp_path: Path
) -> None:
    import redis as redis_lib

    from serving.store.base import open_store

    bundles = _champions(trained)
    pinned = tmp_path / "pinned"
    for target, bundle in bundles.items():
        bundle.save(pinned / target)
    client = redis_lib.Redis.from_url(redis_server.url)
    keys = client.keys("propensity:*")
    if keys:
        client.delete(*keys)
    client.close()
    settings = trained.settings().model_copy(update={"redis_url": redis_server.url})
    srv = start_server(settings, tmp_path / "server.log", require_ready=False, model_dir=pinned, reload_interval_s=1.0)
    try:
        r = srv.anon.get("/readyz")
        assert r.status_code == 503 and "no score snapshot has been published yet" in r.json()["reason"]
        assert r.json()["model_source"] == "directory"
        store = open_store(trained.store_path, redis_server.url)
        uid = trained.scores["user_id"].iloc[0]
        meta = {"created_at": START + timedelta(days=52), "as_of": AS_OF.isoformat(), "defaults": trained.defaults}
        store.publish([trained.scores], meta)
        assert srv.anon.get("/readyz").status_code == 200
        assert lookup(srv, [uid])["results"][0]["found"] is True

        redis_server.stop()
        t0 = time.monotonic()
        r = srv.client.post("/lookup", json={"user_ids": [uid]})
        assert r.status_code == 503 and time.monotonic() - t0 < 2.0
        assert r.json()["error"] == "store_unavailable" and "unavailable" in r.json()["message"]
        assert srv.anon.get("/readyz").status_code == 503

        redis_server.start()
        store.publish([trained.scores], meta)  # the private Redis keeps no data across restarts
        assert lookup(srv, [uid])["results"][0]["found"] is True
        store.close()

        (pinned / "lapse_risk" / "booster.txt").write_text("not a model")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not srv.anon.get("/readyz").json()["errors"]:
            time.sleep(0.2)
        doc = srv.anon.get("/readyz").json()
        assert doc["ready"] is True and doc["models"]["lapse_risk"] == bundles["lapse_risk"].meta["version"]
        assert any("model lapse_risk" in e and "failed to load" in e for e in doc["errors"]), doc
        assert lookup(srv, [uid])["results"][0]["found"] is True
    finally:
        redis_server.ensure_running()
        srv.stop()


# ------------------------------------------------------------------------------------------------- bento
def test_built_bento_serves_the_pinned_champions_without_the_registry(trained: Trained, tmp_path: Path) -> None:
    from propensity.service.launch import PROJECT_ROOT
    from serving.http.models import RegistrySource

    source = RegistrySource(trained.tracking_uri, trained.artifact_root)
    champions = source.current_keys(("last_mile_buyer", "lapse_risk"))
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}
    pin = (
        "from pathlib import Path; from propensity.config import Settings; "
        "from propensity.service.pin import pin_champions; "
        f"print(pin_champions(Settings(tracking_uri={trained.tracking_uri!r}, "
        f"artifact_root=Path({str(trained.artifact_root)!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", pin], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    pinned = Path(done.stdout.strip().splitlines()[-1])
    assert json.loads((pinned / "last_mile_buyer" / "bundle.json").read_text())["meta"]["version"] == champions[
        "last_mile_buyer"]
    done = subprocess.run([sys.executable, "-m", "bentoml", "build"], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    absent = tmp_path / "no-registry"
    settings = trained.settings().model_copy(update={"tracking_uri": f"sqlite:///{absent / 'mlflow.db'}"})
    srv = start_server(settings, tmp_path / "server.log", bento="propensity_service:latest")
    try:
        doc = srv.anon.get("/readyz").json()
        assert doc["ready"] is True and doc["model_source"] == "directory"
        assert doc["models"] == champions
        uid = trained.scores["user_id"].iloc[0]
        assert lookup(srv, [uid])["results"][0]["found"] is True
        sample = trained.events[(trained.events["user_id"] == uid) & (trained.events["ts"] < AS_OF)]
        r = srv.client.post("/score", json={"as_of": AS_OF.isoformat(), "events": request_events(sample)})
        assert r.status_code == 200 and r.json()["models"] == champions
        assert not absent.exists()  # the registry was never opened
    finally:
        srv.stop()


# ------------------------------------------------------------------------------------------------- audience
def test_audience_route_matches_the_cli_selection_on_the_published_batch(
    server: Server, trained: Trained, tmp_path: Path
) -> None:
    from serving.activation.actions import ActivationConfig
    from serving.activation.audiences import select_audience
    from serving.batch.run import run_batch
    from serving.store.base import open_store
    from training.registry import Registry

    registry = Registry(trained.tracking_uri, trained.artifact_root)
    bundles = {t: registry.load_bundle(t)[0] for t in ("last_mile_buyer", "lapse_risk")}
    store = open_store(trained.store_path)
    try:
        result = run_batch(trained.events, AS_OF, bundles, store, tmp_path / "audience.parquet",
                           created_at=AS_OF + timedelta(hours=5))
    finally:
        store.close()
    frame = pd.read_parquet(result.audience_path)
    acted = frame["action"] != "none"
    win_back = frame["action"] == "win_back"
    chosen = acted & frame["expected_profit"].gt(0)  # the users of each action's best-profit audience
    # reason codes only for the users a campaign sends to, from the score their action rides on; they equal the
    # full computation for those users
    assert frame.loc[~chosen | win_back, "reasons_buy"].map(len).eq(0).all()
    assert frame.loc[~chosen | ~win_back, "reasons_lapse"].map(len).eq(0).all()
    assert frame.loc[~chosen, ["reasons_buy_text", "reasons_lapse_text"]].map(len).eq(0).all().all()
    from serving.scoring import score_features

    full = score_features(trained.raw, bundles, AS_OF).set_index("user_id")
    buy_chosen = frame.loc[chosen & ~win_back, ["user_id", "reasons_buy", "reasons_buy_text"]]
    for uid, reasons, texts in buy_chosen.head(20).itertuples(index=False):
        assert list(reasons) == list(full.loc[uid, "reasons_buy"])
        assert list(texts) == list(full.loc[uid, "reasons_buy_text"])
    lapse_chosen = frame.loc[chosen & win_back, ["user_id", "reasons_lapse", "reasons_lapse_text"]]
    for uid, reasons, texts in lapse_chosen.head(20).itertuples(index=False):
        assert list(reasons) == list(full.loc[uid, "reasons_lapse"])
        assert list(texts) == list(full.loc[uid, "reasons_lapse_text"])
    assert buy_chosen["reasons_buy_text"].map(len).gt(0).any()
    # /lookup serves the phrases the batch stored for them
    explained = buy_chosen.loc[buy_chosen["reasons_buy_text"].map(len).gt(0)].head(3)
    looked = {r["user_id"]: r for r in lookup(server, explained["user_id"].tolist())["results"]}
    for uid, reasons, texts in explained.itertuples(index=False):
        assert looked[uid]["reasons_buy"] == list(reasons) and looked[uid]["reasons_buy_text"] == list(texts)
    # the lapse model scores past buyers only; the others have no p_lapse and no lapse reasons in the full scoring
    bought = trained.raw.set_index("user_id").loc[full.index, "purchase_days"].ge(1)
    assert full.loc[~bought, "p_lapse"].isna().all()
    assert full.loc[~bought, "reasons_lapse"].map(len).eq(0).all()
    assert full.loc[bought, "p_lapse"].notna().all()
    action = frame.loc[acted, "action"].value_counts().index[0]
    picked, expected = select_audience(frame, action, ActivationConfig(), top_k=80)
    r = server.client.post("/audience", json={"action": action, "top_k": 80})
    assert r.status_code == 200, r.text
    assert not answer_errors(server.anon.get("/openapi.json").json(), "POST", "/audience", r)
    doc = r.json()
    assert doc["snapshot_id"] == result.snapshot.snapshot_id
    assert doc["size"] == expected.size and doc["expected_profit"] == pytest.approx(expected.expected_profit)
    # the audience became a campaign: the answer is its send list (treatment only), the record is on disk
    record = trained.root / "data" / "campaigns" / doc["campaign_id"]
    members = pd.read_parquet(record / "members.parquet")
    treated = members.loc[members["group"] == "treatment", "user_id"].tolist()
    assert doc["control_size"] == (members["group"] == "control").sum() >= 10
    assert doc["user_ids"] == [u for u in picked["user_id"].astype(str) if u in set(treated)]
    assert set(members["user_id"]) == set(picked["user_id"].astype(str))
    # ... that `propensity outcomes` reads from the events after its as_of
    from typer.testing import CliRunner

    from propensity.cli.main import app

    trained.events.to_parquet(tmp_path / "events.parquet")
    read = CliRunner().invoke(app, ["outcomes", "--events", str(tmp_path / "events.parquet"), "--campaign",
                                    doc["campaign_id"], "--data-dir", str(trained.root / "data"),
                                    "--json", str(tmp_path / "read.json")],
                              env={"PROPENSITY_TRACKING_URI": trained.tracking_uri,
                                   "PROPENSITY_ARTIFACT_ROOT": str(trained.artifact_root)})
    assert read.exit_code == 0, read.output
    [outcome] = json.loads((tmp_path / "read.json").read_text())["campaigns"]
    assert outcome["campaign_id"] == doc["campaign_id"] and outcome["status"] == "closed"
    from serving.http.client import PropensityClient

    with PropensityClient(server.base, TOKEN) as client:
        typed = client.audience(action, top_k=80, limit=2)
    assert len(typed.user_ids) == 2 and typed.size == expected.size and typed.campaign_id != doc["campaign_id"]
    assert typed.action == action and typed.lift_source in ("prior", "measured")
    for uid in doc["user_ids"][:5]:  # the stored records of the selected users validate too
        stored = server.client.post("/lookup", json={"user_ids": [uid]})
        assert not answer_errors(server.anon.get("/openapi.json").json(), "POST", "/lookup", stored)
        assert stored.json()["results"][0]["action"] == action
    small = server.client.post("/audience", json={"action": action, "top_k": 3})
    assert small.status_code == 422 and "control" in small.json()["message"]
    bad = server.client.post("/audience", json={"action": "spam_everyone"})
    assert bad.status_code == 422 and "action" in bad.json()["message"]
    assert server.anon.post("/audience", json={"action": action}).status_code == 401


def test_cli_scores_a_prebuilt_feature_file_like_the_events(trained: Trained, tmp_path: Path, monkeypatch) -> None:
    """`propensity score --features` publishes the same audience as scoring from the events, and refuses a feature
    file of another cutoff with a one-line usage error."""
    from typer.testing import CliRunner

    from features.build.builder import write_features
    from features.spec.definition import FeatureSpec
    from propensity.cli.main import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROPENSITY_TRACKING_URI", trained.tracking_uri)
    monkeypatch.setenv("PROPENSITY_ARTIFACT_ROOT", str(trained.artifact_root))
    monkeypatch.delenv("PROPENSITY_REDIS_URL", raising=False)
    events = tmp_path / "events.parquet"
    trained.events.to_parquet(events)
    write_features(trained.raw, tmp_path / "f.parquet", AS_OF, FeatureSpec())
    runner = CliRunner()
    as_of = AS_OF.isoformat()
    common = ["score", "--as-of", as_of, "--events", str(events), "--no-publish"]
    built = runner.invoke(app, [*common, "--out", "a.parquet"])
    read = runner.invoke(app, [*common, "--out", "b.parquet", "--features", "f.parquet"])
    assert built.exit_code == 0 and read.exit_code == 0, built.output + read.output
    a, b = pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet")
    lists = ["reasons_buy", "reasons_buy_text", "reasons_lapse", "reasons_lapse_text"]
    pd.testing.assert_frame_equal(a.drop(columns=lists), b.drop(columns=lists))
    for col in lists:
        assert a[col].map(list).tolist() == b[col].map(list).tolist(), col
    assert a["reasons_buy"].map(len).gt(0).any()
    bare = runner.invoke(app, [*common, "--out", "c.parquet", "--features", "f.parquet", "--no-reasons"])
    assert bare.exit_code == 0, bare.output
    c = pd.read_parquet(tmp_path / "c.parquet")
    assert c["p_buy"].tolist() == a["p_buy"].tolist() and c["action"].tolist() == a["action"].tolist()
    assert c["reasons_buy"].map(len).eq(0).all() and c["reasons_lapse"].map(len).eq(0).all()
    other = runner.invoke(app, [*common[:2], (AS_OF + timedelta(days=1)).isoformat(), *common[3:],
                                "--features", "f.parquet"])
    assert other.exit_code == 2 and "holds features as of" in other.output and "Traceback" not in other.output


def test_batch_file_has_one_schema_when_a_chunk_has_no_reasons(trained: Trained, tmp_path: Path) -> None:
    """A chunk where nobody has an action (so no reason codes) after one with reasons writes the same schema."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.batch.run import run_batch

    bundles = _champions(trained)
    first = run_batch(None, AS_OF, bundles, None, tmp_path / "a.parquet", features=trained.raw, created_at=AS_OF)
    actions = pd.read_parquet(first.audience_path).set_index("user_id")["action"]
    acted = trained.raw["user_id"].map(actions).ne("none").to_numpy()
    assert 0 < acted.sum() < len(acted)
    ordered = pd.concat([trained.raw[acted], trained.raw[~acted]], ignore_index=True)  # chunk 2: nobody acted
    result = run_batch(None, AS_OF, bundles, None, tmp_path / "b.parquet", features=ordered,
                       chunk_users=int(acted.sum()), created_at=AS_OF)
    for name in ("reasons_buy", "reasons_buy_text", "reasons_lapse", "reasons_lapse_text"):
        field = pq.read_schema(result.audience_path).field(name)
        assert pa.types.is_list(field.type) and field.type.value_type == pa.string(), name
    frame = pd.read_parquet(result.audience_path)
    assert len(frame) == len(ordered)
    assert frame.loc[frame["action"].eq("none"), "reasons_buy"].map(len).eq(0).all()
    assert frame.loc[frame["action"].ne("none"), ["reasons_buy", "reasons_lapse"]].map(len).sum(axis=1).gt(0).any()
