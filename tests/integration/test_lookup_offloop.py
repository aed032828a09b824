"""A score store that hangs never holds the event loop: a private Redis paused with SIGSTOP (connections accepted by
the kernel, no answer: what an overloaded or partitioned Redis looks like) behind the real server, and behind a
:class:`serving.http.runtime.ServiceRuntime` in this process."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.integration.conftest import TOKEN, start_server

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.redis]

USERS = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "p_buy": [0.1, 0.2, 0.3], "aipl_layer": ["A", "I", "P"]})


def fresh_snapshot(url: str) -> None:
    """Drop the service's keys from the shared test Redis and publish a three-user snapshot."""
    import redis as redis_lib

    from serving.store.base import open_store

    client = redis_lib.Redis.from_url(url)
    keys = client.keys("propensity:*")
    if keys:
        client.delete(*keys)
    client.close()
    store = open_store("unused.sqlite", url)
    try:
        store.publish([USERS], {"created_at": datetime.now(UTC), "as_of": "2026-07-01T00:00:00+00:00",
                                "defaults": {"p_buy": 0.01}})
    finally:
        store.close()


@contextmanager
def paused(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) inside the block, resumed (SIGCONT) after it, whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_healthz_readyz_and_metrics_answer_while_redis_hangs(redis_server: Any, tmp_path: Path) -> None:
    from propensity.config import Settings

    fresh_snapshot(redis_server.url)
    (tmp_path / "models").mkdir()
    settings = Settings(store_path=tmp_path / "unused.sqlite", redis_url=redis_server.url,
                        serving={"api_token": TOKEN})
    srv = start_server(settings, tmp_path / "server.log", require_ready=False, model_dir=tmp_path / "models")
    statuses: list[Any] = []
    stop = threading.Event()

    def hammer() -> None:  # lookups that each hold a lookup thread for the store's timeout
        with httpx.Client(base_url=srv.base, timeout=30, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            while not stop.is_set():
                try:
                    r = c.post("/lookup", json={"user_ids": ["u1"]})
                    statuses.append((r.status_code, r.json()["error"] if r.status_code != 200 else None))
                except httpx.HTTPError as exc:
                    statuses.append((f"transport error {exc}", None))

    try:
        assert srv.client.post("/lookup", json={"user_ids": ["u1"]}).json()["results"][0]["found"] is True
        with paused(redis_server.proc.pid):
            threads = [threading.Thread(target=hammer, daemon=True) for _ in range(6)]
            for t in threads:
                t.start()
            time.sleep(0.5)  # every lookup thread is now waiting for Redis
            waits = []
            for _ in range(20):
                t0 = time.perf_counter()
                r = srv.anon.get("/healthz")
                waits.append(time.perf_counter() - t0)
                assert r.status_code == 200
                time.sleep(0.05)
            t0 = time.perf_counter()
            ready = srv.anon.get("/readyz")
            ready_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            metrics = srv.anon.get("/metrics")
            metrics_s = time.perf_counter() - t0
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert max(waits) < 0.1, f"/healthz waited {max(waits) * 1000:.0f} ms while the store hung"
        assert ready.status_code == 503 and "store unavailable" in ready.json()["reason"], ready.text
        assert ready_s < 3.0 and metrics_s < 3.0, (ready_s, metrics_s)
        assert metrics.status_code == 200 and "propensity_lookups_in_flight" in metrics.text
        seen = {s for s, _ in statuses}
        assert seen <= {200, 503}, statuses[:5]
        assert (503, "store_unavailable") in statuses
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # Redis answers again: so does /lookup
            r = srv.client.post("/lookup", json={"user_ids": ["u2"]})
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.json()["results"][0]["p_buy"] == 0.2, r.text
    finally:
        stop.set()
        srv.stop()


def test_lookups_past_the_waiting_limit_are_refused_at_once(redis_server: Any, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from serving.http.metrics import ServiceMetrics
    from serving.http.models import DirectorySource, ModelManager
    from serving.http.options import ServiceOptions
    from serving.http.runtime import LookupUnavailable, ServiceRuntime
    from serving.store.base import open_store

    fresh_snapshot(redis_server.url)
    registry = CollectorRegistry()
    options = ServiceOptions(token=TOKEN, allow_no_auth=False, max_request_bytes=10_000, lookup_max_ids=10,
                             score_max_users=1, score_max_events=1, future_tolerance_s=0.0, reload_interval_s=60.0,
                             model_dir=None)
    rt = ServiceRuntime(options, open_store("unused.sqlite", redis_server.url), ModelManager(DirectorySource(tmp_path)),
                        metrics=ServiceMetrics(registry=registry), lookup_threads=1, max_waiting=2)

    async def scenario() -> None:
        assert b'"found":true' in await rt.lookup(["u1"])
        with paused(redis_server.proc.pid):
            first = asyncio.create_task(rt.lookup(["u1"]))
            second = asyncio.create_task(rt.lookup(["u2"]))
            await asyncio.sleep(0.05)
            assert rt.in_flight == 2
            t0 = time.perf_counter()
            with pytest.raises(LookupUnavailable, match="2 lookups are already waiting for the store"):
                await rt.lookup(["u3"])
            assert time.perf_counter() - t0 < 0.05
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)  # the loop itself is free
            assert time.perf_counter() - t0 < 0.05
            outcomes = await asyncio.gather(first, second, return_exceptions=True)
        assert all(isinstance(o, LookupUnavailable) and "store unavailable" in str(o) for o in outcomes), outcomes
        assert rt.in_flight == 0
        assert b'"found":true' in await rt.lookup(["u3"])
        await rt.stop()

    asyncio.run(scenario())
    assert registry.get_sample_value("propensity_store_errors_total", {"kind": "busy"}) == 1
    assert registry.get_sample_value("propensity_store_errors_total", {"kind": "error"}) == 2
    assert registry.get_sample_value("propensity_lookup_users_total", {"outcome": "found"}) == 2


def test_a_hanging_redis_event_log_never_holds_the_loop_and_lookups_get_the_stored_rows(
    durable_redis_server: Any, tmp_path: Path
) -> None:
    """Fresh scores over the Redis event log: the probe "has this user newer events" is a network round trip, so
    it runs in a lookup thread; when the log hangs, the lookup answers the stored row after the log's read
    timeout and the event loop stays free meanwhile."""
    from features.events.redis_log import RedisEventLog
    from serving.activation.actions import ActivationConfig
    from serving.fresh import FreshScorer
    from serving.http.models import DirectorySource, ModelManager
    from serving.http.options import ServiceOptions
    from serving.http.runtime import ServiceRuntime
    from serving.store.base import open_store

    store = open_store(tmp_path / "scores.sqlite")
    store.publish([USERS], {"created_at": datetime.now(UTC), "as_of": "2026-07-01T00:00:00+00:00",
                            "defaults": {"p_buy": 0.01}})
    log = RedisEventLog(durable_redis_server.url, prefix=f"offloop-{os.getpid()}")
    log.append_records([{"user_id": "u1", "ts": datetime.now(UTC), "behavior": "cart"}])
    options = ServiceOptions(token=TOKEN, allow_no_auth=False, max_request_bytes=10_000, lookup_max_ids=10,
                             score_max_users=1, score_max_events=1, future_tolerance_s=0.0, reload_interval_s=60.0,
                             model_dir=None)
    rt = ServiceRuntime(options, store, ModelManager(DirectorySource(tmp_path)))
    rt.fresh = FreshScorer(log, tmp_path / "online", ActivationConfig())
    assert rt.fresh.probe_inline is False

    async def scenario() -> None:
        assert b'"found":true' in await rt.lookup(["u1"])  # no history for the snapshot: the stored row
        with paused(durable_redis_server.proc.pid):
            t0 = time.perf_counter()
            pending = asyncio.create_task(rt.lookup(["u2"]))
            await asyncio.sleep(0.01)
            assert time.perf_counter() - t0 < 0.1  # the loop runs while the probe waits for Redis
            body = await pending
            assert 0.5 < time.perf_counter() - t0 < 5.0
        assert b'"user_id":"u2"' in body and b'"found":true' in body and b'"fresh"' not in body
        await rt.stop()

    try:
        asyncio.run(scenario())
    finally:
        log.close()
        store.close()
