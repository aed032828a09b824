"""Hostile input over HTTP against the real server (module-scoped ``server`` fixture: ``bentoml serve`` on 127.0.0.1).

Hypothesis generates JSON documents (near-valid requests with hostile values, and arbitrary JSON), raw byte bodies,
random ``Authorization`` headers and odd methods and paths. Whatever arrives, the server answers within a few
seconds, never with a 5xx, and every 4xx of the service's routes is a JSON object with ``error`` and a readable
``message``. The security checks that need a running server live here too: every route but the health, readiness
and metrics probes requires the bearer token, and the token never reaches the server log or any process's
command line. Generation is derandomized (the same examples every run) and bounded (about 100-150 requests per
route).
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import AS_OF, TOKEN, Server, Trained

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TIMEOUT_S = 5.0  # a request without an answer by then is a hang
POST_ROUTES = ("/lookup", "/score", "/audience")
PUBLIC = {"/healthz", "/readyz", "/metrics", "/livez"}  # probes, open by design
DOCS = {"/", "/docs", "/openapi.json", "/docs.json", "/schema.json"}  # API descriptions, open by design (see below)
BENTOML_ROUTES = {"/livez": {"GET"}, "/schema.json": {"GET"}}  # BentoML's own routes, not in the service's document
WRONG_TOKEN = TOKEN + "-but-wrong"


def fuzz(n: int) -> Any:
    """Derandomized, no example database, and no shrinking: a failure reports the raw example in bounded time."""
    return settings(max_examples=n, derandomize=True, database=None, deadline=None, print_blob=False,
                    phases=[Phase.explicit, Phase.generate],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ------------------------------------------------------------------------------------------------- strategies
NASTY_TEXT = ["", " ", "\x00", "\ud800", "a\udfffb", "\u202e\u0130", "'; DROP TABLE snapshots; --", '"', "\\",
              "%s%n", "../../etc/passwd", "u0000001\n", "ｕ０１", "🙂" * 50, "x" * 5000, "NaN", "1e400", "-0"]
HUGE_INTS = [2**63, -(2**63) - 1, 10**20, 10**400, -(10**400), 2**1024]
texts = st.text(max_size=20) | st.sampled_from(NASTY_TEXT)
integers = st.integers() | st.sampled_from(HUGE_INTS)
numbers = integers | st.floats(allow_nan=True, allow_infinity=True)
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4), max_leaves=10
)
known_ids = st.sampled_from([f"u{i:07d}" for i in range(1, 60)])
user_ids = known_ids | texts | integers | json_values

offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
zones = st.none() | st.just(UTC) | offsets.map(timezone)
moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones)
ts_values = (moments.map(datetime.isoformat) | st.integers(-(2 * 10**11), 2 * 10**11) | st.floats()
             | st.integers(-(2 * 10**11), 2 * 10**11).map(str) | numbers | texts | json_values)
behaviors = st.sampled_from(["view", "fav", "cart", "buy", "visit", "pv", "addtocart", "transaction", " PV "])
channels = st.sampled_from(["search", "recommend", "ad", "live", "promo", "other", "Search", ""])
optional_event = {"item_id": user_ids, "category_id": user_ids, "channel": channels | texts | json_values,
                  "amount": numbers | json_values, "bogus": json_values}
hostile_events = st.fixed_dictionaries(
    {"user_id": user_ids, "ts": ts_values, "behavior": behaviors | texts | json_values}, optional=optional_event
)


@st.composite
def plausible_score_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Bodies that pass the contract more often than not: events before ``as_of``, odd ids, dates, amounts."""
    as_of = draw(st.datetimes(min_value=datetime(1201, 1, 1), max_value=datetime(5000, 1, 1), timezones=zones))
    as_of_utc = as_of.astimezone(UTC) if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    events = []
    for _ in range(draw(st.integers(1, 8))):
        ago = draw(st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=800)))
        moment = as_of_utc - ago
        ts: Any = moment.isoformat() if draw(st.booleans()) else moment.timestamp()
        event = {"user_id": draw(known_ids | texts.filter(str.strip) | st.integers()), "ts": ts,
                 "behavior": draw(behaviors)}
        event.update(draw(st.fixed_dictionaries({}, optional={
            "item_id": known_ids | st.integers(0, 10**6), "category_id": st.integers(0, 50) | texts,
            "channel": channels, "amount": st.floats(0, 1e9) | st.integers(0, 10**6)})))
        events.append(event)
    return {"as_of": as_of.isoformat(), "events": events}


lookup_bodies = json_values | st.fixed_dictionaries(
    {"user_ids": st.lists(user_ids, max_size=60) | json_values}, optional={"extra": json_values}
)
score_bodies = plausible_score_bodies() | json_values | st.fixed_dictionaries(
    {"as_of": moments.map(datetime.isoformat) | texts | json_values, "events": st.lists(hostile_events, max_size=5)
     | json_values}, optional={"extra": json_values}
)
actions = st.sampled_from(["coupon_24h", "ad_retarget", "repurchase_reminder", "win_back", "nurture"])
audience_bodies = json_values | st.fixed_dictionaries(
    {"action": actions | texts | json_values},
    optional={"budget": numbers | json_values, "top_k": numbers | json_values, "limit": numbers | json_values},
)
raw_bodies = st.binary(max_size=300) | st.sampled_from([
    b"", b"{", b"[" * 5000, b'{"user_ids": ["u1"]', b"\xff\xfe{\x00}\x00", b"\xef\xbb\xbf{}", b"null", b"1e999999",
    b'{"user_ids": ["\\ud800"]}', b'{"a": ' * 2000, b"\x00" * 100, "{\"é\": 1}".encode("latin-1"),
])  # fmt: skip
header_bytes = set(range(0x20, 0x7F)) | set(range(0x80, 0x100)) | {0x09}
auth_headers = st.none() | (st.binary(max_size=80).map(lambda b: bytes(x for x in b if x in header_bytes)) | (
    st.sampled_from(["Bearer ", "bearer ", "Basic ", "Token ", "Bearer  ", ""])
    .flatmap(lambda s: st.sampled_from([TOKEN[:-1], WRONG_TOKEN, TOKEN.upper(), "", TOKEN + "\t x", "null"])
             .map(lambda t: (s + t).encode()))
)).map(bytes.strip)  # fmt: skip  (a header value cannot start or end with white space)


# ------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    """A client with the right token and a short timeout (a slower answer counts as a hang)."""
    with httpx.Client(base_url=server.base, timeout=TIMEOUT_S, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture(scope="module")
def audience_published(server: Server, trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Publish a batch with its audience file, so ``/audience`` requests reach the selection code."""
    from serving.batch.run import run_batch
    from serving.store.base import open_store
    from training.registry import Registry

    registry = Registry(trained.tracking_uri, trained.artifact_root)
    bundles = {t: registry.load_bundle(t)[0] for t in ("last_mile_buyer", "lapse_risk")}
    store = open_store(trained.store_path)
    try:
        result = run_batch(trained.events, AS_OF, bundles, store, tmp_path_factory.mktemp("fuzz") / "audience.parquet",
                           created_at=AS_OF + timedelta(hours=3))
    finally:
        store.close()
    return result.snapshot.snapshot_id


def post(client: httpx.Client, path: str, body: bytes, **headers: str) -> httpx.Response:
    try:
        return client.post(path, content=body, headers={"content-type": "application/json", **headers})
    except httpx.TimeoutException:
        pytest.fail(f"POST {path} got no answer within {TIMEOUT_S} s; body {body[:200]!r}")


def encode(doc: Any) -> bytes:
    """JSON text as a hostile client would send it: NaN/Infinity allowed, lone surrogates as escapes."""
    return json.dumps(doc, allow_nan=True).encode()


def check_answer(r: httpx.Response, what: str) -> None:
    """Never a 5xx; every 4xx a JSON object with ``error`` and a non-empty ``message``; no token echoed."""
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text[:400]}"
    if 400 <= r.status_code < 500:
        assert r.headers.get("content-type", "").startswith("application/json"), f"{what}: {r.status_code} {r.text!r}"
        doc = r.json()
        assert isinstance(doc, dict) and isinstance(doc.get("error"), str), f"{what}: {doc}"
        assert isinstance(doc.get("message"), str) and doc["message"].strip(), f"{what}: {doc}"
    assert TOKEN not in r.text


def raw_http(port: int, request: bytes) -> bytes:
    """Send raw bytes on a fresh connection; the whole answer (the server closes, or the timeout fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            pytest.fail(f"no complete answer within {TIMEOUT_S} s to {request[:120]!r}; got {out[:200]!r}")
    return out


# ------------------------------------------------------------------------------------------------- hostile bodies
@fuzz(150)
@given(doc=lookup_bodies)
def test_lookup_answers_any_json_without_5xx(http: httpx.Client, doc: Any) -> None:
    r = post(http, "/lookup", encode(doc))
    check_answer(r, f"/lookup {encode(doc)[:300]!r}")
    if r.status_code == 200:
        results = r.json()["results"]
        assert [x["user_id"] for x in results] == [u if isinstance(u, str) else str(u) for u in doc["user_ids"]]


@fuzz(130)
@given(doc=score_bodies)
def test_score_answers_any_json_without_5xx(http: httpx.Client, doc: Any) -> None:
    r = post(http, "/score", encode(doc))
    check_answer(r, f"/score {encode(doc)[:400]!r}")
    if r.status_code == 200:
        doc_out = r.json()
        assert all(0.0 <= x["p_buy"] <= 1.0 for x in doc_out["results"] if x["scored"] and x["p_buy"] is not None)


@fuzz(120)
@given(doc=audience_bodies)
def test_audience_answers_any_json_without_5xx(http: httpx.Client, audience_published: str, doc: Any) -> None:
    r = post(http, "/audience", encode(doc))
    check_answer(r, f"/audience {encode(doc)[:300]!r}")
    if r.status_code == 200:
        assert r.json()["snapshot_id"] == audience_published


@pytest.mark.parametrize("path", POST_ROUTES)
def test_raw_bytes_never_get_a_5xx(http: httpx.Client, path: str) -> None:
    @fuzz(40)
    @given(body=raw_bodies, ctype=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form"]))
    def run(body: bytes, ctype: str) -> None:
        r = post(http, path, body, **{"content-type": ctype})
        check_answer(r, f"{path} {body[:200]!r}")

    run()


@pytest.mark.parametrize(
    ("path", "doc"),
    [
        ("/score", {"as_of": "2026-07-21T00:00:00", "events": [{"user_id": "u1", "ts": 10**400, "behavior": "view"}]}),
        ("/score", {"as_of": "2026-07-21T00:00:00", "events": [{"user_id": "u1", "ts": -99_999_999_999,
                                                                 "behavior": "view"}]}),
        ("/score", {"as_of": "2026-07-21T00:00:00", "events": [{"user_id": "u1", "ts": "2026-07-01", "behavior": "buy",
                                                                 "amount": 10**400}]}),
        ("/score", {"as_of": "2026-07-21T00:00:00", "events": [{"user_id": "\ud800", "ts": "2026-07-01",
                                                                 "behavior": "view"}]}),
        ("/score", {"as_of": "2026-07-21T00:00:00", "events": [{"user_id": "u1", "ts": "2026-07-01",
                                                                 "behavior": "view", "item_id": "a\udfffb"}]}),
        ("/audience", {"action": "nurture", "budget": 10**400}),
    ],
    ids=["ts-huge-int", "ts-before-year-1", "amount-huge-int", "user-id-lone-surrogate", "item-id-lone-surrogate",
         "budget-huge-int"],
)
def test_out_of_range_numbers_and_broken_unicode_get_a_422(
    http: httpx.Client, audience_published: str, path: str, doc: Any
) -> None:
    """Values a JSON parser accepts but Python cannot convert (found by the fuzzers above), pinned as cases."""
    r = post(http, path, encode(doc))
    check_answer(r, f"{path} {encode(doc)[:200]!r}")
    assert r.status_code == 422, r.text


# ------------------------------------------------------------------------------------------------- protocol
def test_declared_huge_body_is_refused_at_once_and_broken_http_gets_a_400(server: Server) -> None:
    port = int(server.base.rsplit(":", 1)[1])
    head = f"POST /lookup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n"
    answer = raw_http(port, (head + "Content-Length: 1000000000\r\n\r\n{}").encode())  # 1 GB announced, 2 B sent
    assert answer.startswith(b"HTTP/1.1 413") and b"exceeds the limit" in answer, answer[:300]
    for broken in (head + "Content-Length: abc\r\n\r\n{}", head + "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
                   "GARBAGE\r\n\r\n", "GET /" + "a" * 70_000 + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        answer = raw_http(port, broken.encode())
        assert answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.1 413", b"HTTP/1.1 414", b"HTTP/1.1 431") or answer == b"", (
            broken[:60], answer[:200])
    traversal = raw_http(port, b"GET /static_content/../../../../etc/passwd HTTP/1.1\r\nHost: x\r\n"
                               b"Connection: close\r\n\r\n")
    assert traversal.startswith(b"HTTP/1.1 404") and b"root:" not in traversal


@fuzz(100)
@given(
    method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "POST"]),
    path=st.sampled_from([*POST_ROUTES, *PUBLIC, *DOCS, "/", "//lookup", "/lookup/", "/Lookup", "/lookup%00",
                          "/score/../lookup", "/%2e%2e/%2e%2e/etc/passwd", "/static_content/x"])
    | st.text(st.sampled_from("abcdz/._-~%0123456789"), max_size=30).map(lambda s: "/" + s),
)
def test_odd_methods_and_paths_never_get_a_5xx_or_hang(http: httpx.Client, method: str, path: str) -> None:
    try:
        r = http.request(method, path, content=b'{"user_ids": ["u0000001"]}' if method != "GET" else None)
    except httpx.TimeoutException:
        pytest.fail(f"{method} {path} got no answer within {TIMEOUT_S} s")
    assert r.status_code < 500, f"{method} {path}: {r.status_code} {r.text[:300]}"
    assert b"root:" not in r.content and TOKEN not in r.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/lookup", 405), ("PUT", "/score", 405), ("DELETE", "/audience", 405), ("POST", "/healthz", 405),
     ("GET", "/no-such-route", 404), ("POST", "/lookups", 404)],
)
def test_wrong_method_or_unknown_path_gets_a_json_error(
    http: httpx.Client, method: str, path: str, status: int
) -> None:
    r = http.request(method, path, content=b"{}" if method != "GET" else None)
    assert r.status_code == status
    check_answer(r, f"{method} {path}")


# ------------------------------------------------------------------------------------------------- auth
def served_routes(server: Server) -> dict[str, set[str]]:
    """Every route the server answers: the service's own (``build_app``, and its OpenAPI document) and BentoML's."""
    from serving.http.app import AppState, build_app

    routes: dict[str, set[str]] = {path: set(methods) for path, methods in BENTOML_ROUTES.items()}
    for route in build_app(AppState()).routes:
        routes.setdefault(route.path, set()).update(route.methods - {"HEAD"})
    for path, ops in server.anon.get("/openapi.json").json()["paths"].items():
        routes.setdefault(path, set()).update(op.upper() for op in ops)
    return routes


def test_every_route_but_the_probes_requires_the_token(server: Server, http: httpx.Client) -> None:
    routes = served_routes(server)
    assert {"/lookup", "/score", "/audience"} <= set(routes) and set(routes) >= PUBLIC, routes
    protected = {path: methods for path, methods in routes.items() if path not in PUBLIC | DOCS}
    assert protected, routes
    for path, methods in sorted(protected.items()):
        for method in sorted(methods):
            for headers in ({}, {"Authorization": f"Bearer {WRONG_TOKEN}"}, {"Authorization": f"Basic {TOKEN}"},
                            {"Authorization": TOKEN}, {"Authorization": "Bearer"}):
                r = server.anon.request(method, path, content=b'{"user_ids": ["u0000001"]}', headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:200])
                check_answer(r, f"{method} {path}")
                assert r.headers["www-authenticate"] == "Bearer"
            assert http.request(method, path, content=b'{"user_ids": ["u0000001"]}').status_code != 401
    for path in sorted(PUBLIC):
        assert server.anon.get(path).status_code in (200, 503), path  # open; 503 only means "not ready"
    for path in sorted(DOCS):  # open API descriptions: no secret, no score data (no user id, no snapshot)
        r = server.anon.get(path, follow_redirects=True)
        assert r.status_code == 200 and TOKEN not in r.text and "u0000001" not in r.text, path
        snapshot = server.anon.get("/readyz").json()["store"]["snapshot_id"]
        assert snapshot and snapshot not in r.text, path


@fuzz(80)
@given(auth=auth_headers, path=st.sampled_from(POST_ROUTES), body=lookup_bodies.map(encode) | raw_bodies)
def test_any_authorization_but_the_token_gets_a_401(server: Server, auth: bytes | None, path: str, body: bytes) -> None:
    scheme, _, given_token = (auth or b"").partition(b" ")
    if scheme.lower() == b"bearer" and given_token.strip() == TOKEN.encode():
        return  # the right token, spelled legally
    headers = {"content-type": "application/json"} | ({"authorization": auth} if auth is not None else {})
    try:
        r = server.anon.post(path, content=body, headers=headers, timeout=TIMEOUT_S)
    except httpx.TimeoutException:
        pytest.fail(f"POST {path} without the token got no answer within {TIMEOUT_S} s")
    assert r.status_code == 401, (auth, r.status_code, r.text[:200])
    check_answer(r, f"POST {path} with Authorization {auth!r}")


def test_token_never_reaches_the_log_nor_any_command_line(server: Server, http: httpx.Client) -> None:
    """Runs last in this module: the log then holds every request above, right and wrong tokens alike."""
    import psutil

    assert http.post("/lookup", json={"user_ids": ["u0000001"]}).status_code == 200
    assert server.anon.post("/lookup", json={"user_ids": ["u1"]}, headers={"Authorization": f"Bearer {WRONG_TOKEN}"},
                            ).status_code == 401
    assert http.post("/score", json={"as_of": "2026-07-21T00:00:00", "events": [
        {"user_id": "u1", "ts": "2026-07-01", "behavior": "view", "item_id": TOKEN}]}).status_code == 200
    log = Path(server.log_path).read_text(errors="replace")
    assert log.strip(), "the server wrote no log at all; this check would be vacuous"
    assert TOKEN not in log and WRONG_TOKEN not in log
    processes = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    assert len(processes) >= 2, processes  # the bentoml parent and its worker(s)
    for proc in processes:
        cmdline = " ".join(proc.cmdline())
        assert TOKEN not in cmdline, f"the token is on the command line of {proc.pid}: {cmdline[:200]}"


def test_fuzz_helpers_catch_what_they_claim() -> None:
    """The oracle above can fail: a 5xx, a plain-text 4xx and a 4xx without a message are all rejected."""
    req = httpx.Request("POST", "http://x/lookup")
    for bad in (httpx.Response(500, json={"error": "internal", "message": "boom"}, request=req),
                httpx.Response(405, text="Method Not Allowed", request=req),
                httpx.Response(422, json={"error": "invalid", "message": " "}, request=req),
                httpx.Response(401, json={"error": "unauthorized", "message": f"bad token {TOKEN}"}, request=req)):
        with pytest.raises(AssertionError):
            check_answer(bad, "self-check")
    check_answer(httpx.Response(422, json={"error": "invalid", "message": "user_ids[0] must be a string"},
                                request=req), "self-check")
    assert math.isnan(json.loads(encode(float("nan"))))
