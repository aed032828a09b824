"""Redis score store against a private redis-server: outages, the publish lock, and writers that race it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from serving.store.base import StoreError, StoreUnavailableError, open_store
from serving.store.redis import WATCH_ATTEMPTS, RedisScoreStore
from tests.integration.store_support import Backend, frames, meta_for

pytestmark = pytest.mark.redis

# Another client that sends one command to Redis without pause, from a process of its own (no shared GIL), with
# replies turned off; its kernel send buffer stays full, so Redis runs the command between any two of ours.
ANOTHER_WRITER = textwrap.dedent(
    """
    import socket, sys

    def resp(args):
        out = [b"*%d\\r\\n" % len(args)]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\\r\\n%s\\r\\n" % (len(data), data))
        return b"".join(out)

    port, *command = sys.argv[1:]
    sock = socket.create_connection(("127.0.0.1", int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.sendall(resp(["CLIENT", "SETNAME", "another-writer"]) + resp(["CLIENT", "REPLY", "OFF"]))
    burst = resp(command) * 5000
    sock.sendall(burst)
    print("writing", flush=True)
    while True:
        sock.sendall(burst)
    """
)


@pytest.fixture
def backend(redis_server: Any, tmp_path: Path) -> Iterator[Backend]:
    redis_server.ensure_running()
    b = Backend("redis", tmp_path, redis_server.url)
    yield b
    b.close()


@pytest.fixture
def admin(redis_server: Any) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@contextmanager
def another_writer(redis_server: Any, admin: redis.Redis, *command: str) -> Iterator[None]:
    """Runs :data:`ANOTHER_WRITER` with ``command`` for the duration of the block; at its end, waits until Redis
    has run every command the writer sent (its connection is gone)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", ANOTHER_WRITER, str(redis_server.port), *command], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing", "the writer did not start"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 30
        while any(c.get("name") == "another-writer" for c in admin.client_list()):
            assert time.monotonic() < deadline, "Redis still serves the stopped writer's connection"
            time.sleep(0.02)


def outcome_within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``'s result or the exception it raised; fails the test when it is still running after ``seconds``."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the caller's assertions
            box.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still retrying after {seconds} s: the retries are not bounded")
    return box[0]


def watch_calls(admin: redis.Redis) -> int:
    """WATCH commands Redis has run so far (only the store under test sends WATCH)."""
    return int(admin.info("commandstats").get("cmdstat_watch", {}).get("calls", 0))


def test_rollback_gives_up_while_another_writer_keeps_changing_the_pointer(
    backend: Backend, admin: redis.Redis, redis_server: Any
) -> None:
    store = backend.make(keep=3)
    a, b = (store.publish(frames(tag, n_chunks=1), meta_for(tag)) for tag in "ab")
    before = watch_calls(admin)
    with another_writer(redis_server, admin, "SET", f"{backend.prefix}:current", b.snapshot_id):
        outcome = outcome_within(20, store.rollback)
    assert isinstance(outcome, StoreError), outcome
    assert "another client kept changing the snapshot pointer" in str(outcome) and "\n" not in str(outcome)
    assert f"after {WATCH_ATTEMPTS} attempts and changed nothing" in str(outcome)
    assert watch_calls(admin) - before == WATCH_ATTEMPTS == 10
    assert store.current() == b and store.snapshots() == [b, a]
    assert store.rollback() == a and store.current() == a  # the writer has stopped: the rollback goes through


def test_publish_gives_up_its_switch_while_another_writer_keeps_touching_its_lock(
    backend: Backend, admin: redis.Redis, redis_server: Any
) -> None:
    store = backend.make()
    old = store.publish(frames("old", n_chunks=1), meta_for("old"))
    lock = f"{backend.prefix}:publish-lock"
    before = watch_calls(admin)
    with another_writer(redis_server, admin, "PEXPIRE", lock, "60000"):  # touches the lock, keeps its value
        outcome = outcome_within(20, lambda: store.publish(frames("new", n_chunks=2), meta_for("new")))
    assert isinstance(outcome, StoreError), outcome
    assert "another client kept touching the publish lock" in str(outcome) and "snapshot discarded" in str(outcome)
    assert watch_calls(admin) - before == WATCH_ATTEMPTS
    assert store.current() == old and store.snapshots() == [old]
    assert backend.stored() == (1, 1) and not admin.exists(lock)  # partial snapshot removed, lock released
    new = store.publish(frames("new", n_chunks=2), meta_for("new"))
    assert store.current() == new and new.rows == 40


def test_redis_ping_fails_when_down_and_recovers_after_restart(redis_server: Any) -> None:
    redis_server.ensure_running()
    store = RedisScoreStore(redis_server.url, prefix=f"test-{uuid.uuid4().hex[:8]}", socket_timeout=0.5)
    try:
        store.publish(frames("a", n_chunks=1), meta_for("a"))
        store.ping()
        redis_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="unavailable"):
            store.ping()
        with pytest.raises(StoreUnavailableError):
            store.lookup(["u0_1"])
        with pytest.raises(StoreUnavailableError):
            store.publish(frames("b", n_chunks=1), meta_for("b"))
        assert time.monotonic() - started < 5
        redis_server.start()
        store.ping()
        assert store.lookup(["u0_1"]) == (None, {})  # the test server keeps nothing across restarts
        info = store.publish(frames("c", n_chunks=1), meta_for("c"))
        assert store.lookup(["u0_1"])[0] == info
    finally:
        redis_server.ensure_running()
        store.close()


def test_open_store_uses_redis_when_a_url_is_given(tmp_path: Path, redis_server: Any) -> None:
    store = open_store(tmp_path / "unused.db", redis_server.url, prefix="open-store-test")
    assert isinstance(store, RedisScoreStore) and store.prefix == "open-store-test"
    assert not (tmp_path / "unused.db").exists()
    store.close()


def test_redis_publish_keeps_its_lock_while_chunks_are_slow(backend: Backend) -> None:
    store = backend.make(lock_ttl_s=0.3)  # far shorter than the publish below
    info = store.publish(frames("slow", n_chunks=4, delay=0.25), meta_for("slow"))
    assert store.current() == info and info.rows == 80
