"""Fresh scores: a user with ingested events after the snapshot is rescored exactly as a batch at that time would.

Real pieces: the fixture's champion bundles from MLflow, the SQLite event log, a history written from the
generated events, and the batch's own scoring path as the reference.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features, events_table
from features.events.log import EventLog, EventLogError
from features.online.history import write_history
from serving.activation.actions import ActivationConfig
from serving.batch.run import score_chunks
from serving.fresh import LOG_SEQ_KEY, FreshScorer
from tests.integration.conftest import AS_OF, Trained, metric, scrape, start_server
from training.job import load_champions
from training.registry import Registry

SNAPSHOT = "20260721T010000Z-abcdef"


@pytest.fixture(scope="module")
def bundles(trained: Trained):
    return load_champions(Registry(trained.tracking_uri, trained.artifact_root))


def new_events(user: str, start, behaviors: list[str]) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": user, "ts": [start + timedelta(minutes=10 * i) for i in range(len(behaviors))],
        "behavior": behaviors, "item_id": [f"fresh-{i}" for i in range(len(behaviors))], "category_id": "c-new",
        "channel": "search", "amount": [25.0 if b == "buy" else np.nan for b in behaviors],
    })


@pytest.fixture()
def scorer(trained: Trained, tmp_path):
    before = trained.events[trained.events.ts < pd.Timestamp(AS_OF)]
    log = EventLog(tmp_path / "log.db")
    write_history(events_table(before), tmp_path / "online" / SNAPSHOT, **{LOG_SEQ_KEY: log.last_seq()})
    yield FreshScorer(log, tmp_path / "online", ActivationConfig()), before
    log.close()


def test_a_user_with_new_events_is_rescored_as_the_batch_would_score_them(trained, bundles, scorer):
    fresh, before = scorer
    users = list(trained.raw.user_id[:3])
    added = pd.concat([new_events(users[0], AS_OF + timedelta(hours=10), ["view", "cart"]),
                       new_events("first-seen", AS_OF + timedelta(hours=11), ["visit", "view", "fav"])])
    fresh.log.append(added)
    now = AS_OF + timedelta(hours=12)
    got = fresh.rescore([users[0], users[1], "first-seen", "nobody"], SNAPSHOT, bundles, now)
    assert sorted(got) == sorted([users[0], "first-seen"])  # users without new events keep the stored row
    everything = pd.concat([before, added], ignore_index=True)
    raw = build_features(everything, now, bundles["last_mile_buyer"].spec)
    raw = raw[raw.user_id.isin([users[0], "first-seen"])].reset_index(drop=True)
    expected = next(score_chunks(raw, bundles, now, ActivationConfig(), len(raw), explain="actions"))
    for _, row in expected.iterrows():
        doc = json.loads(got[row.user_id])
        assert doc["fresh"] is True and doc["found"] is True and doc["scored_at"] == now.isoformat()
        for name in ("p_buy", "p_lapse", "rule_score", "action_p", "expected_profit", "priority"):
            if pd.isna(row[name]):
                assert doc[name] is None, name  # NaN is written as null
            else:
                assert doc[name] == pytest.approx(row[name], rel=1e-9, abs=1e-12), name
        for name in ("aipl_layer", "lifecycle", "action", "action_deadline"):
            assert doc[name] == row[name], name
    doc = json.loads(got[users[0]])
    assert doc["action"] == "coupon_24h"  # the cart at 10:20 opened the 24-hour coupon window
    assert doc["action_deadline"].startswith((AS_OF + timedelta(hours=34, minutes=10)).strftime("%Y-%m-%dT%H:%M"))


def test_without_a_history_for_the_served_snapshot_nothing_is_rescored(trained, bundles, scorer):
    fresh, _ = scorer
    fresh.log.append(new_events("u-x", AS_OF + timedelta(hours=1), ["cart"]))
    assert fresh.rescore(["u-x"], "20990101T000000Z-000000", bundles, AS_OF + timedelta(hours=2)) == {}
    assert fresh.rescore(["u-x"], SNAPSHOT, bundles, AS_OF + timedelta(hours=2))


def test_an_event_posted_to_the_service_is_reflected_by_lookup_within_a_second(trained: Trained, tmp_path):
    """The real server: POST /events with a cart, then /lookup of that user answers a fresh row opening the
    coupon window; a user without new events keeps the stored row. ``/metrics`` counts the events ingested, the
    users rescored and reused, and how many logged events the served snapshot does not hold."""
    from datetime import UTC, datetime

    from serving.store.base import open_store

    settings = trained.settings()
    store = open_store(trained.store_path)
    snapshot_id = store.current().snapshot_id
    store.close()
    before = trained.events[trained.events.ts < pd.Timestamp(AS_OF)]
    write_history(events_table(before), settings.online_dir / snapshot_id, **{LOG_SEQ_KEY: 0})
    server = start_server(settings, tmp_path / "server.log")
    try:
        before = scrape(server)
        assert metric(before, "propensity_event_log_last_seq") == 0
        assert metric(before, "propensity_events_after_snapshot") == 0
        user, other = trained.raw.user_id.iloc[0], trained.raw.user_id.iloc[1]
        now = datetime.now(UTC)
        cart = {"user_id": user, "ts": (now - timedelta(seconds=5)).isoformat(), "behavior": "cart",
                "item_id": "sku-1", "category_id": "c-1", "channel": "ad"}
        t0 = time.monotonic()
        assert server.client.post("/events", json={"events": [cart]}).status_code == 200
        doc = server.client.post("/lookup", json={"user_ids": [user, other]}).json()
        elapsed = time.monotonic() - t0
        fresh_row, stored_row = doc["results"]
        assert elapsed < 1.0, elapsed
        assert fresh_row["fresh"] is True and fresh_row["action"] == "coupon_24h", fresh_row
        assert datetime.fromisoformat(fresh_row["scored_at"]) >= now
        assert "fresh" not in stored_row and stored_row["found"] is True
        again = server.client.post("/lookup", json={"user_ids": [user]}).json()["results"][0]
        assert again == fresh_row  # no newer event: the rescored row is served again, its scored_at unchanged
        buy = dict(cart, ts=(now - timedelta(seconds=1)).isoformat(), behavior="buy", amount=30.0)
        t0 = time.monotonic()
        assert server.client.post("/events", json={"events": [buy]}).status_code == 200
        after = server.client.post("/lookup", json={"user_ids": [user]}).json()["results"][0]
        assert time.monotonic() - t0 < 1.0
        assert after["scored_at"] > fresh_row["scored_at"] and after["action"] != "coupon_24h", after
        assert server.client.post("/events", json={"events": [buy]}).json()["duplicates"] == 1
        seen = scrape(server)

        def delta(name: str, **labels: str) -> float:
            return metric(seen, name, **labels) - metric(before, name, **labels)

        assert delta("propensity_events_ingested_total", result="accepted") == 2
        assert delta("propensity_events_ingested_total", result="duplicate") == 1
        assert delta("propensity_fresh_users_total", outcome="rescored") == 2  # the cart, then the buy
        assert delta("propensity_fresh_users_total", outcome="reused") == 1  # the lookup between them
        assert delta("propensity_fresh_rescore_duration_seconds_count") == 2
        assert 0 < delta("propensity_fresh_rescore_duration_seconds_sum") < 1.0
        assert delta("propensity_fresh_paused_total") == 0
        assert metric(seen, "propensity_event_log_last_seq") == 2
        assert metric(seen, "propensity_events_after_snapshot") == 2  # the history holds the log up to seq 0
    finally:
        server.stop()


def test_an_event_log_that_cannot_be_opened_at_start_is_taken_up_once_it_can(trained: Trained, tmp_path):
    """The real server, started while its event log cannot be opened (here a file holds the name of the log's folder;
    in production, a Redis that is not up yet): ``/events`` answers 503 with the reason and lookups serve the stored
    rows. Once the log can be opened, the next model check takes it up, without a restart: events are accepted and
    the next lookup is fresh."""
    from datetime import UTC, datetime

    from serving.store.base import open_store

    store = open_store(trained.store_path)
    snapshot_id = store.current().snapshot_id
    store.close()
    blocked = tmp_path / "blocked"
    blocked.write_text("not a folder")
    settings = trained.settings(events_log=blocked / "log.db")
    before = trained.events[trained.events.ts < pd.Timestamp(AS_OF)]
    write_history(events_table(before), settings.online_dir / snapshot_id, **{LOG_SEQ_KEY: 0})
    server = start_server(settings, tmp_path / "server.log", reload_interval_s=0.5)
    try:
        user = trained.raw.user_id.iloc[0]
        cart = {"user_id": user, "ts": (datetime.now(UTC) - timedelta(seconds=5)).isoformat(), "behavior": "cart",
                "item_id": "sku-1", "category_id": "c-1"}
        refused = server.client.post("/events", json={"events": [cart]})
        assert refused.status_code == 503 and "cannot create the folder" in refused.json()["message"], refused.text
        assert "fresh" not in server.client.post("/lookup", json={"user_ids": [user]}).json()["results"][0]
        ready = server.anon.get("/readyz")
        assert ready.status_code == 200, ready.text  # models and store: the log does not count towards readiness
        status = ready.json()["events_log"]
        assert status["ok"] is False and status["fresh_scores"] is False
        assert "cannot create the folder" in status["error"]
        blocked.unlink()
        deadline = time.monotonic() + 10
        while (answer := server.client.post("/events", json={"events": [cart]})).status_code == 503:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.2)
        assert answer.status_code == 200 and answer.json()["accepted"] == 1, answer.text
        row = server.client.post("/lookup", json={"user_ids": [user]}).json()["results"][0]
        assert row["fresh"] is True and row["action"] == "coupon_24h", row
        assert server.anon.get("/readyz").json()["events_log"] == {"ok": True, "fresh_scores": True, "error": None}
    finally:
        server.stop()


def test_pending_follows_the_log_and_forgets_what_the_served_history_holds(trained, bundles, scorer, tmp_path):
    fresh, before = scorer
    assert not fresh.pending(["u-a", "u-b"])
    fresh.log.append(new_events("u-a", AS_OF + timedelta(hours=1), ["view"]))
    assert fresh.pending(["u-b", "u-a"]) and not fresh.pending(["u-b"])
    fresh.log.append(new_events("u-b", AS_OF + timedelta(hours=2), ["cart"]))
    assert fresh.pending(["u-b"])  # only the log's new entries are read
    newer = "20260722T010000Z-abcdef"
    write_history(events_table(before), tmp_path / "online" / newer, **{LOG_SEQ_KEY: fresh.log.last_seq()})
    assert fresh.rescore(["u-a"], newer, bundles, AS_OF + timedelta(hours=3)) == {}  # the history holds them
    assert not fresh.pending(["u-a", "u-b"])


def test_a_history_written_after_its_snapshot_is_published_is_found(trained, bundles, scorer, tmp_path,
                                                                    monkeypatch):
    """The batch publishes, then writes the history: a lookup in between must not turn fresh scores off for good."""
    import serving.fresh as fresh_module

    fresh, before = scorer
    late = "20260723T010000Z-abcdef"
    fresh.log.append(new_events("u-late", AS_OF + timedelta(hours=1), ["cart"]))
    now = AS_OF + timedelta(hours=2)
    assert fresh.rescore(["u-late"], late, bundles, now) == {}  # not written yet
    write_history(events_table(before), tmp_path / "online" / late, **{LOG_SEQ_KEY: 0})
    monkeypatch.setattr(fresh_module, "RETRY_MISSING_S", 0.0)
    assert "u-late" in fresh.rescore(["u-late"], late, bundles, now)


def test_a_rescored_row_is_served_again_until_the_user_acts_the_time_runs_out_or_the_models_change(
        trained, bundles, tmp_path):
    from serving.fresh import CACHED, NOTHING, RESCORE

    before = trained.events[trained.events.ts < pd.Timestamp(AS_OF)]
    with EventLog(tmp_path / "log.db") as log:
        write_history(events_table(before), tmp_path / "online" / SNAPSHOT, **{LOG_SEQ_KEY: 0})
        fresh = FreshScorer(log, tmp_path / "online", ActivationConfig(), ttl_s=0.5)
        user, other = trained.raw.user_id.iloc[0], trained.raw.user_id.iloc[1]
        log.append(new_events(user, AS_OF + timedelta(hours=1), ["view"]))
        assert fresh.pending([user]) == RESCORE and fresh.pending([other]) == NOTHING
        t1, t2 = AS_OF + timedelta(hours=2), AS_OF + timedelta(hours=3)
        first = fresh.rescore([user], SNAPSHOT, bundles, t1)
        assert fresh.pending([other, user]) == CACHED
        assert fresh.rescore([user], SNAPSHOT, bundles, t2) == first  # the same row, its own scored_at
        log.append(new_events(user, AS_OF + timedelta(hours=2), ["cart"]))
        assert fresh.pending([user]) == RESCORE
        after_cart = json.loads(fresh.rescore([user], SNAPSHOT, bundles, t2)[user])
        assert after_cart["scored_at"] == t2.isoformat() and after_cart["action"] == "coupon_24h"
        other_models = {k: copy.copy(b) for k, b in bundles.items()}  # a new champion: new objects
        assert json.loads(fresh.rescore([user], SNAPSHOT, other_models, t1)[user])["scored_at"] == t1.isoformat()
        time.sleep(0.6)
        assert fresh.pending([user]) == RESCORE  # older than ttl_s
        assert json.loads(fresh.rescore([user], SNAPSHOT, other_models, t2)[user])["scored_at"] == t2.isoformat()
        unkept = FreshScorer(log, tmp_path / "online", ActivationConfig())  # ttl_s 0: every lookup rescored
        assert json.loads(unkept.rescore([user], SNAPSHOT, bundles, t1)[user])["scored_at"] == t1.isoformat()
        assert json.loads(unkept.rescore([user], SNAPSHOT, bundles, t2)[user])["scored_at"] == t2.isoformat()
        assert unkept.pending([user]) == RESCORE


def test_the_redis_event_log_gives_the_same_fresh_rows_as_sqlite(trained, bundles, durable_redis_server, tmp_path):
    import os

    from features.events.redis_log import RedisEventLog

    before = trained.events[trained.events.ts < pd.Timestamp(AS_OF)]
    write_history(events_table(before), tmp_path / "online" / SNAPSHOT, **{LOG_SEQ_KEY: 0})
    user = trained.raw.user_id.iloc[0]
    added = pd.concat([new_events(user, AS_OF + timedelta(hours=10), ["view", "cart"]),
                       new_events("first-seen", AS_OF + timedelta(hours=11), ["visit", "fav"])])
    now = AS_OF + timedelta(hours=12)
    rows = []
    for log in (EventLog(tmp_path / "log.db"), RedisEventLog(durable_redis_server.url, prefix=f"fresh-{os.getpid()}")):
        with log:
            log.append(added)
            fresh = FreshScorer(log, tmp_path / "online", ActivationConfig())
            assert fresh.pending([user]) and fresh.probe_inline is (not log.remote)
            rows.append(fresh.rescore([user, "first-seen", "nobody"], SNAPSHOT, bundles, now))
    assert rows[0] == rows[1] and sorted(rows[0]) == sorted([user, "first-seen"])


def test_an_unreadable_event_log_leaves_the_stored_rows_and_is_counted(trained, bundles, scorer):
    from prometheus_client import CollectorRegistry

    from serving.http.metrics import ServiceMetrics

    fresh, _ = scorer
    registry = CollectorRegistry()
    fresh.metrics = ServiceMetrics(registry=registry)
    fresh.log.append(new_events("u-gone", AS_OF + timedelta(hours=1), ["cart"]))
    assert fresh.pending(["u-gone"])
    assert fresh.positions(SNAPSHOT) == (1, 0) and fresh.positions("20990101T000000Z-000000") == (1, None)
    fresh.log.close()  # every read now fails
    assert not fresh.pending(["u-gone"])
    assert fresh.rescore(["u-gone"], SNAPSHOT, bundles, AS_OF + timedelta(hours=2)) == {}
    assert registry.get_sample_value("propensity_fresh_paused_total") == 2  # the probe, then the rescoring
    assert registry.get_sample_value("propensity_fresh_users_total", {"outcome": "rescored"}) == 0
    with pytest.raises(EventLogError):
        fresh.positions(SNAPSHOT)  # /metrics then leaves the gauges out


def test_lookups_rescored_together_get_the_rows_each_would_get_alone(trained, bundles, scorer, tmp_path):
    """The service rescores the lookups that queue up behind a rescoring in one call: each request's body must be
    the one it gets on its own at the same time (its users only, in its order, the same rows)."""
    import asyncio
    from unittest import mock

    from serving.http.models import DirectorySource, ModelManager
    from serving.http.options import ServiceOptions
    from serving.http.runtime import ServiceRuntime
    from serving.store.base import open_store

    fresh, _ = scorer
    models = tmp_path / "models"
    for target, bundle in bundles.items():
        bundle.save(models / target)
    store = open_store(tmp_path / "scores.sqlite")
    users = list(trained.raw.user_id[:6])
    store.publish([trained.scores[trained.scores.user_id.isin(users)]],
                  {"created_at": AS_OF, "as_of": AS_OF.isoformat(), "defaults": {"p_buy": 0.01}})
    snapshot = store.current().snapshot_id
    (tmp_path / "online" / SNAPSHOT).rename(tmp_path / "online" / snapshot)  # the history of the served snapshot
    for i, uid in enumerate(users[:4]):
        fresh.log.append(new_events(uid, AS_OF + timedelta(hours=1 + i), ["view", "cart"][: 1 + i % 2]))
    options = ServiceOptions(token="t", allow_no_auth=False, max_request_bytes=10_000, lookup_max_ids=10,
                             score_max_users=1, score_max_events=1, future_tolerance_s=0.0, reload_interval_s=60.0,
                             model_dir=None)
    rt = ServiceRuntime(options, store, ModelManager(DirectorySource(models)))
    rt.models.refresh()
    rt.fresh = fresh
    requests = [[users[0], users[4]], [users[1]], [users[2], users[3], users[0]], [users[5]]]
    now = AS_OF + timedelta(hours=6)
    with mock.patch("serving.http.runtime.datetime") as clock:
        clock.now.return_value = now
        together = rt.fresh_lookup_bodies(requests)
        alone = [rt.fresh_lookup_bodies([ids])[0] for ids in requests]
    assert together == alone
    docs = [json.loads(body) for body in together]
    assert [[r["user_id"] for r in d["results"]] for d in docs] == requests
    assert docs[2]["results"][0]["fresh"] is True and "fresh" not in docs[0]["results"][1]
    asyncio.run(rt.stop())
