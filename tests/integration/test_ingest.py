"""Event ingestion end to end: ``POST /events`` through the real app (in process and as the real server, killed
with ``kill -9`` while clients post), ``propensity ingest`` on files, and the export that makes ``propensity score``
read the acknowledged events."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import AS_OF, TOKEN, Trained, cli_invoker, start_server

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def posted(n: int, seed: int = 1, *, prefix: str = "u", ids: bool = False) -> list[dict[str, Any]]:
    """``n`` seeded events as a client posts them (ISO text or epoch seconds, aliases, integer ids)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ts = NOW - timedelta(days=rng.randint(1, 30), seconds=rng.randint(0, 86_399))
        event: dict[str, Any] = {
            "user_id": f"{prefix}{rng.randint(0, 40)}",
            "ts": ts.isoformat() if i % 2 else ts.timestamp(),
            "behavior": rng.choice(["view", "pv", "fav", "cart", "buy", "visit"]),
            "item_id": rng.randint(1, 500),
            "channel": rng.choice(["search", "ad", "recommend", "tv", None]),
        }
        if event["behavior"] == "buy":
            event["amount"] = round(rng.uniform(1, 90), 2)
        if ids:
            event["event_id"] = f"{prefix}-{seed}-{i}"
        out.append(event)
    return out


def log_ids(path: Path) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT event_id FROM events")}
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------- in process
class App:
    """The service's ASGI app in this process with an event log and no models or store."""

    def __init__(self, tmp_path: Path, *, with_log: bool = True) -> None:
        from starlette.testclient import TestClient

        from features.events.log import EventLog
        from serving.http.app import AppState, build_app
        from serving.http.models import DirectorySource, ModelManager
        from serving.http.options import ServiceOptions
        from serving.http.runtime import ServiceRuntime

        (tmp_path / "models").mkdir(parents=True, exist_ok=True)
        options = ServiceOptions(token=TOKEN, allow_no_auth=False, max_request_bytes=2_000_000, lookup_max_ids=10,
                                 score_max_users=10, score_max_events=100, future_tolerance_s=3600.0,
                                 reload_interval_s=60.0, model_dir=None)
        runtime = ServiceRuntime(options, None, ModelManager(DirectorySource(tmp_path / "models")))
        self.log = EventLog(tmp_path / "log.db") if with_log else None
        self.state = AppState(runtime, events_log=self.log, events_log_error=None if with_log else "no log here")
        self.http = TestClient(build_app(self.state), headers={"Authorization": f"Bearer {TOKEN}"})

    def post(self, body: Any, **kwargs: Any) -> httpx.Response:
        return self.http.post("/events", content=json.dumps(body), **kwargs)

    def close(self) -> None:
        self.http.close()
        if self.log is not None:
            self.log.close()


@pytest.fixture()
def app(tmp_path: Path) -> Iterator[App]:
    served = App(tmp_path)
    try:
        yield served
    finally:
        served.close()


def schema_errors(status: int, body: Any) -> list[str]:
    """Where ``body`` breaks the OpenAPI document's answer of ``POST /events`` with ``status`` (closed objects)."""
    from jsonschema import Draft202012Validator

    from serving.http.openapi import openapi_document
    from tests.integration.test_service import closed

    doc = openapi_document()
    schema = doc["paths"]["/events"]["post"]["responses"][str(status)]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**schema, "components": closed(doc["components"])})
    return [e.message for e in validator.iter_errors(body)]


def test_good_events_are_stored_once_and_the_answer_counts_them(app: App) -> None:
    events = posted(300)
    r = app.post({"events": events})
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 300, "duplicates": 0, "last_seq": 300} and not schema_errors(200, r.json())
    again = app.post({"events": events[:100] + posted(50, seed=2)})  # 100 resent, 50 new
    assert again.status_code == 200 and again.json()["accepted"] == 50 and again.json()["duplicates"] == 100
    assert app.log.count() == 350
    stored = app.log.user_events(str(events[0]["user_id"]))
    assert set(stored["behavior"]) <= {"view", "fav", "cart", "buy", "visit"}  # aliases are canonical in the log
    assert set(stored["channel"].dropna()) <= {"search", "ad", "recommend", "other"}


def test_event_ids_make_a_resent_event_a_duplicate(app: App) -> None:
    events = posted(20, ids=True)
    assert app.post({"events": events}).json()["accepted"] == 20
    changed = [{**e, "behavior": "visit"} for e in events[:5]]  # same ids, other content: already stored
    assert app.post({"events": changed}).json() == {"accepted": 0, "duplicates": 5, "last_seq": app.log.last_seq()}
    assert app.log.count() == 20


def test_a_request_with_one_bad_event_is_refused_with_its_index_and_stores_nothing(app: App) -> None:
    app.post({"events": posted(10, seed=7)})
    before = app.log.count()
    for bad, where in ((({"user_id": "", "ts": NOW.isoformat(), "behavior": "view"}), "user_id"),
                       ({"user_id": "x", "ts": "yesterday", "behavior": "view"}, "ts"),
                       ({"user_id": "x", "ts": NOW.isoformat(), "behavior": "teleport"}, "behavior"),
                       ({"user_id": "x", "ts": NOW.isoformat(), "behavior": "buy", "amount": -3}, "amount"),
                       ({"user_id": "x", "ts": (NOW + timedelta(days=2)).isoformat(), "behavior": "view"}, "later"),
                       ({"user_id": "x", "ts": NOW.isoformat(), "behavior": "view", "colour": "red"}, "colour"),
                       ({"user_id": "x", "ts": NOW.isoformat(), "behavior": "view", "event_id": "e" * 201},
                        "event_id")):
        events = posted(40, seed=8)
        events.insert(17, bad)
        events.append({"user_id": "", "ts": "never", "behavior": "?"})  # a later bad event is not the one named
        r = app.post({"events": events})
        assert r.status_code == 422, r.text
        doc = r.json()
        assert doc["error"] == "invalid" and doc["index"] == 17 and "events[17]" in doc["message"], doc
        assert where in doc["message"] and "events[41]" not in doc["message"], doc
        assert not schema_errors(422, doc)
    assert app.log.count() == before  # none of the 40 good events of each request was stored


def test_limits_auth_and_a_missing_log_are_answered(app: App, tmp_path: Path) -> None:
    assert app.post({"events": []}).status_code == 422
    big = app.post({"events": posted(10_001)})
    assert big.status_code == 413 and "10001 > 10000" in big.json()["message"], big.text
    assert app.post({"events": posted(10_000, seed=3)}).json()["accepted"] == 10_000
    for body in ([], {"events": "many"}, {"event": posted(1)}, {"events": [1, 2]}):
        r = app.post(body)
        assert r.status_code == 422 and r.json()["error"] == "invalid", (body, r.text)
    assert app.http.post("/events", content=b"{").status_code == 400
    anon = app.http.post("/events", content=json.dumps({"events": posted(1)}), headers={"Authorization": ""})
    assert anon.status_code == 401
    assert app.log.count() == 10_000
    missing = App(tmp_path / "other", with_log=False)
    try:
        r = missing.post({"events": posted(1)})
        assert r.status_code == 503 and r.json()["error"] == "ingest_unavailable" and "no log here" in r.text
    finally:
        missing.close()


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    served = App(tmp_path_factory.mktemp("ingest-fuzz"))
    try:
        yield served
    finally:
        served.close()


def _events_bodies() -> Any:
    from hypothesis import strategies as st

    from tests.integration.test_http_fuzz import behaviors, channels, hostile_events, json_values, known_ids, texts

    @st.composite
    def plausible(draw: st.DrawFn) -> dict[str, Any]:
        ago = draw(st.timedeltas(min_value=timedelta(hours=-2), max_value=timedelta(days=800)))
        ts: Any = (NOW - ago).isoformat() if draw(st.booleans()) else (NOW - ago).timestamp()
        event = {"user_id": draw(known_ids | texts | st.integers()), "ts": ts, "behavior": draw(behaviors)}
        event.update(draw(st.fixed_dictionaries({}, optional={
            "item_id": known_ids | st.integers(), "channel": channels, "amount": st.floats(-1, 1e9),
            "event_id": texts | st.integers() | json_values})))
        return event

    return json_values | st.fixed_dictionaries(
        {"events": st.lists(plausible() | hostile_events, max_size=6) | json_values}, optional={"extra": json_values})


def test_any_json_gets_a_json_answer_and_a_refused_request_stores_nothing(fuzz_app: App) -> None:
    from hypothesis import given

    from tests.integration.test_http_fuzz import fuzz

    @fuzz(300)
    @given(body=_events_bodies())
    def check(body: Any) -> None:
        before = fuzz_app.log.count()
        try:
            content = json.dumps(body, allow_nan=True)
        except ValueError:  # a lone surrogate: not encodable as a request body
            return
        r = fuzz_app.http.post("/events", content=content)
        doc = r.json()
        assert r.status_code in (200, 413, 422), (r.status_code, r.text[:300])
        if r.status_code == 200:
            assert doc["accepted"] + doc["duplicates"] == len(body["events"]), doc
            assert fuzz_app.log.count() == before + doc["accepted"]
            return
        assert set(doc) <= {"error", "message", "index"} and doc["message"], doc
        assert fuzz_app.log.count() == before, doc
        if "index" in doc:
            assert 0 <= doc["index"] < len(body["events"]) and f"events[{doc['index']}]" in doc["message"], doc

    check()


def test_the_document_and_the_typed_client_describe_the_route(app: App) -> None:
    from serving.http.client import PropensityClient
    from serving.http.openapi import openapi_document

    op = openapi_document()["paths"]["/events"]["post"]
    assert set(op["responses"]) == {"200", "400", "401", "413", "422", "503"} and "security" not in op
    with PropensityClient("http://testserver", TOKEN, transport=app.http._transport) as client:
        answer = client.post_events(posted(5, seed=4, ids=True))
        assert (answer.accepted, answer.duplicates, answer.last_seq) == (5, 0, 5)
        assert client.post_events(posted(5, seed=4, ids=True)).duplicates == 5


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)
    for var in ("PROPENSITY_DATA_DIR", "PROPENSITY_STORE_PATH", "PROPENSITY_CONFIG", "PROPENSITY_SERVING__EVENTS_LOG",
                "PROPENSITY_REDIS_URL"):  # the SQLite log: with a Redis URL the log would be there
        monkeypatch.delenv(var, raising=False)
    return cli_invoker()


def write_csv(path: Path, events: list[dict[str, Any]], bad: int = 0) -> Path:
    rows = ["user_id,ts,behavior,item_id,category_id,channel,amount"]
    for e in events:
        ts = e["ts"] if isinstance(e["ts"], str) else datetime.fromtimestamp(e["ts"], UTC).isoformat()
        rows.append(f"{e['user_id']},{ts},{e['behavior']},{e.get('item_id') or ''},,{e.get('channel') or ''},"
                    f"{e.get('amount') or ''}")
    rows += [f"b{i},not-a-time,view,,,," for i in range(bad)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_cli_ingest_quarantines_bad_rows_stores_each_event_once_and_exports_to_the_history(
    run: Any, tmp_path: Path
) -> None:
    from features.build.builder import events_table
    from propensity.cli.common import events_path
    from propensity.cli.inputs import check_events
    from propensity.config import load_settings

    first = write_csv(tmp_path / "first.csv", posted(200, seed=11), bad=3)
    result = run("ingest", str(first), "--max-bad-share", "0.1")
    assert result.exit_code == 0, result.output
    log_path = tmp_path / "data" / "events" / "log.db"
    stored = len(log_ids(log_path))
    assert 190 <= stored <= 200  # the file's own exact repeats are dropped by the validator
    quarantine = list((tmp_path / "data" / "events" / "ingest").glob("*/quarantine.csv"))
    assert len(quarantine) == 1 and len(pd.read_csv(quarantine[0])) == 3
    assert not list((tmp_path / "data" / "events" / "ingest").glob("*/events.parquet"))

    second = write_csv(tmp_path / "second.csv", posted(200, seed=11) + posted(30, seed=12, prefix="n"))
    again = run("ingest", str(first), str(second), "--max-bad-share", "0.1", "--export")
    assert again.exit_code == 0, again.output
    assert "already in the log" in again.output and "exported" in again.output
    total = len(log_ids(log_path))
    assert stored < total <= stored + 30

    refused = run("ingest", str(write_csv(tmp_path / "third.csv", posted(20, seed=13, prefix="z"), bad=10)))
    assert refused.exit_code == 3 and "quarantined" in refused.output
    assert len(log_ids(log_path)) == total  # nothing of the failing file

    cfg = load_settings()
    source = check_events(events_path(cfg, None), default=True)
    assert str(source).endswith("*.parquet")
    assert events_table(source).count().to_pyarrow().as_py() == total  # count in == count in the history
    assert run("ingest", "--export").output.startswith("no event to export")
    usage = run("ingest")
    assert usage.exit_code == 2 and "--export" in usage.output


def test_a_full_export_repeating_ingested_events_is_kept_once(run: Any, tmp_path: Path) -> None:
    """Events posted to /events (the log's own checks) or ingested from a file, then sent again in a full export
    to `validate` (into the clean folder) or `retrain` (its staging folder plus the ingested parts): every event
    is in the clean history once."""
    from features.build.builder import events_table
    from propensity.cli.common import events_path
    from propensity.cli.data import run_validation
    from propensity.cli.events import with_ingested
    from propensity.config import load_settings

    events = posted(120, seed=21)
    distinct = len({(e["user_id"], round(float(datetime.fromisoformat(e["ts"]).timestamp() if isinstance(e["ts"], str)
                                                  else e["ts"]), 6), e["behavior"].replace("pv", "view"),
                     e["item_id"], e["channel"], e.get("amount")) for e in events})
    cfg = load_settings()
    served = App(cfg.events_log_path.parent)  # the service's /events on the configured log
    try:
        assert served.post({"events": events[:40]}).json()["accepted"] == 40
    finally:
        served.close()
    assert run("ingest", str(write_csv(tmp_path / "some.csv", events[40:70]))).exit_code == 0
    full = write_csv(tmp_path / "full.csv", events)
    validated = run("validate", str(full))
    assert validated.exit_code == 0, validated.output
    assert "already ingested" in validated.output
    report = json.loads((cfg.clean_dir / "validation.json").read_text())
    assert report["already_known"] == 70 and report["accepted"] == distinct - 70
    assert events_table(events_path(cfg, None)).count().to_pyarrow().as_py() == distinct

    staging = tmp_path / "data" / "retrain" / "run"
    again = run_validation(cfg, [full], out=staging, against_ingested=True)
    assert again.already_known == 70
    source = with_ingested(cfg, staging, again.events_path)
    assert events_table(source).count().to_pyarrow().as_py() == distinct
    elsewhere = run_validation(cfg, [full], out=tmp_path / "elsewhere")  # not the clean folder: a full copy
    assert elsewhere.already_known == 0 and elsewhere.accepted == distinct

    clean = (cfg.clean_dir / "events.parquet").read_bytes()
    repeat = run("validate", str(write_csv(tmp_path / "again.csv", events[:70])))  # only events already ingested
    assert repeat.exit_code == 1 and "Traceback" not in repeat.output
    assert "no event of this export is left to store" in repeat.output and "are kept" in repeat.output
    assert (cfg.clean_dir / "events.parquet").read_bytes() == clean
    assert events_table(events_path(cfg, None)).count().to_pyarrow().as_py() == distinct


def test_retrain_trains_on_its_validated_events_and_the_ingested_ones(tmp_path: Path) -> None:
    from features.build.builder import events_table
    from features.events.log import EventLog
    from propensity.cli.events import with_ingested
    from propensity.config import load_settings

    cfg = load_settings(data_dir=tmp_path / "data")
    staging = tmp_path / "data" / "retrain" / "run"
    staging.mkdir(parents=True)
    validated = staging / "events.parquet"
    assert with_ingested(cfg, staging, validated) == validated  # no log yet: the validated events alone
    frame = pd.DataFrame({"user_id": ["a", "b"], "ts": pd.to_datetime(["2026-11-01", "2026-11-02"], utc=True),
                          "behavior": ["view", "buy"], "item_id": [None, None], "category_id": [None, None],
                          "channel": [None, None], "amount": [None, 3.0]})
    frame.to_parquet(validated)
    with EventLog(cfg.events_log_path) as log:
        log.append_records([{"user_id": "c", "ts": NOW, "behavior": "cart"}])
    source = with_ingested(cfg, staging, validated)
    assert source == staging / "*.parquet" and len(list(cfg.clean_dir.glob("ingested-*.parquet"))) == 1
    assert events_table(source).count().to_pyarrow().as_py() == 3
    assert with_ingested(cfg, staging, validated) == source  # again: nothing new, the same parts


def test_score_exports_the_log_first_so_the_batch_holds_every_acknowledged_event(
    cli: Any, trained: Trained, tmp_path: Path
) -> None:
    validated = cli("validate", "events.parquet")
    assert validated.exit_code == 0, validated.output
    fresh = [{"user_id": "fresh-user", "ts": (AS_OF - timedelta(hours=h)).isoformat(), "behavior": b}
             for h, b in ((30, "view"), (20, "cart"), (5, "buy"))]
    fresh[2]["amount"] = 42.0
    ingested = cli("ingest", str(write_csv(tmp_path / "fresh.csv", fresh)))
    assert ingested.exit_code == 0, ingested.output
    scored = cli("score", "--as-of", AS_OF.isoformat(), "--no-reasons")
    assert scored.exit_code == 0, scored.output
    assert "exported 3 ingested events" in scored.output
    audience = pd.read_parquet(next((tmp_path / "data" / "scores").glob("audience_*.parquet")))
    assert "fresh-user" in set(audience["user_id"])
    assert len(audience) == trained.raw["user_id"].nunique() + 1


# ------------------------------------------------------------------------------------------------- kill -9
class Poster:
    """Posts batches of events with ids in a thread until stopped or the server is gone; keeps the ids of every
    acknowledged batch."""

    def __init__(self, base: str, name: str, batch: int = 200) -> None:
        self.base, self.name, self.batch = base, name, batch
        self.acked: set[str] = set()
        self.batches = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        with httpx.Client(base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            while not self._stop.is_set():
                events = posted(self.batch, seed=n, prefix=self.name, ids=True)
                n += 1
                try:
                    r = http.post("/events", json={"events": events})
                except httpx.HTTPError as exc:  # the server is gone: this batch was in flight, unacknowledged
                    self.failures.append(type(exc).__name__)
                    return
                if r.status_code == 200:
                    assert r.json()["accepted"] == self.batch, r.text
                    self.acked.update(e["event_id"] for e in events)
                    self.batches += 1
                else:
                    self.failures.append(str(r.status_code))

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=60)


def kill_9(pid: int) -> None:
    """SIGKILL to ``pid`` and every process below it at once (BentoML's worker runs in a session of its own, so
    killing the arbiter's process group would leave it serving)."""
    import psutil

    root = psutil.Process(pid)
    procs = [*root.children(recursive=True), root]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=30)


@pytest.mark.slow
def test_kill_9_during_ingestion_loses_no_acknowledged_event(tmp_path: Path) -> None:
    from features.events.log import EventLog
    from propensity.config import Settings
    from serving.http.client import PropensityClient

    (tmp_path / "models").mkdir()
    settings = Settings(data_dir=tmp_path / "data", store_path=tmp_path / "store.sqlite",
                        serving={"api_token": TOKEN})
    server = start_server(settings, tmp_path / "server.log", require_ready=False, model_dir=tmp_path / "models")
    log_path = settings.events_log_path
    posters: list[Poster] = []
    try:
        with PropensityClient(server.base, TOKEN) as client:
            first = client.post_events(posted(50, seed=99, prefix="w", ids=True))
            assert (first.accepted, first.duplicates) == (50, 0)
        posters = [Poster(server.base, f"p{i}") for i in range(3)]
        for p in posters:
            p.thread.start()
        kill_after = random.Random("ingest-kill").randint(8, 20)  # acknowledged batches before the kill
        deadline = time.monotonic() + 120
        while sum(p.batches for p in posters) < kill_after and time.monotonic() < deadline:
            time.sleep(0.01)
        kill_9(server.proc.pid)  # the arbiter and its worker (in a process group of its own), mid-request
        server.proc.wait(timeout=30)
    finally:
        for p in posters:
            p.stop()
        server.stop()
    acked = set().union(*(p.acked for p in posters))
    print(f"\nkill -9 after {len(acked):,} acknowledged events; in flight at the kill: "
          f"{sum(map(len, (p.failures for p in posters)))} batches ({[p.failures for p in posters]})")
    assert len(acked) >= kill_after * 200 and any(p.failures for p in posters), [p.failures for p in posters]
    with EventLog(log_path) as log:  # reopened after the crash: WAL recovery, then every acknowledged event is there
        ids = log_ids(log_path)
        assert not acked - ids, f"{len(acked - ids)} acknowledged events lost"
        assert {f"w-99-{i}" for i in range(50)} <= ids
        assert log.count() == len(ids) >= len(acked) + 50  # unacknowledged in-flight batches may have landed too
        print(f"log after the crash: {len(ids):,} events, {len(ids) - len(acked) - 50:,} of them unacknowledged")
        con = sqlite3.connect(log_path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
        exported = log.export(tmp_path / "data" / "clean")
        assert exported is not None and exported.rows == log.count()
