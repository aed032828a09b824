"""Score store against real backends: a SQLite file and a private redis-server (see tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from serving.store.base import (
    BaseScoreStore,
    ScoreStore,
    SnapshotInfo,
    SnapshotNotFoundError,
    StoreError,
    StoreInputError,
    StoreUnavailableError,
    open_store,
)
from serving.store.sqlite import SQLiteScoreStore
from tests.conftest import backend_redis_url
from tests.integration.store_support import Backend, frames, meta_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b = Backend(request.param, tmp_path, backend_redis_url(request))
    yield b
    b.close()


def test_a_closed_store_refuses_to_publish_and_keeps_what_it_served(backend: Backend) -> None:
    with backend.make() as store:
        assert isinstance(store, BaseScoreStore)
        old = store.publish(frames("old", n_chunks=1), meta_for("old"))
    with pytest.raises(StoreError, match="is closed"):
        store.publish(frames("new", n_chunks=1), meta_for("new"))
    assert backend.make().current() == old and backend.stored() == (1, 1)


def test_publish_then_lookup_returns_each_users_record(backend: Backend) -> None:
    store = backend.make()
    assert isinstance(store, ScoreStore)
    assert store.current() is None and store.lookup(["u0_1"]) == (None, {})
    chunk = pd.DataFrame(
        {
            "user_id": ["a", "b", "c"],
            "p_buy": [0.1234567890123456, float("nan"), 1.0],
            "orders": [3, 0, 12],
            "reasons": [["cart_24h", 'said "hi"'], [], ["ad_click"]],
            "segment": ["L", None, "A"],
        }
    )
    info = store.publish([chunk, pd.DataFrame({"user_id": [7], "p_buy": [0.5]})], meta_for("x"))
    assert isinstance(info, SnapshotInfo) and info.rows == 4
    got_info, found = store.lookup(["a", "b", "7", "c"])
    assert got_info == info == store.current()
    assert set(found) == {"a", "b", "c", "7"}
    assert json.loads(found["a"]) == {
        "user_id": "a", "p_buy": 0.1234567890123456, "orders": 3,
        "reasons": ["cart_24h", 'said "hi"'], "segment": "L",
    }  # fmt: skip
    assert json.loads(found["b"]) == {"user_id": "b", "p_buy": None, "orders": 0, "reasons": [], "segment": None}
    assert found["c"] == '{"user_id":"c","p_buy":1.0,"orders":12,"reasons":["ad_click"],"segment":"A"}'
    assert json.loads(found["7"]) == {"user_id": "7", "p_buy": 0.5}
    # integer ids are looked up by their decimal string too
    assert store.lookup([7])[1] == {"7": found["7"]}


def test_unknown_users_are_absent(backend: Backend) -> None:
    store = backend.make()
    info = store.publish(frames("a"), meta_for("a"))
    got, found = store.lookup(["u0_0", "nobody", "u2_19", "u9_9", "u0_0"])
    assert got == info
    assert set(found) == {"u0_0", "u2_19"}
    assert store.lookup([]) == (info, {})
    many = [f"u{c}_{i}" for c in range(3) for i in range(20)] + [f"ghost{i}" for i in range(700)]
    assert len(store.lookup(many)[1]) == 60


def test_snapshot_meta_round_trips(backend: Backend) -> None:
    store = backend.make()
    meta = meta_for("a", rows=60, models={"p_buy": "3", "p_lapse": "7"}, defaults={"p_buy": 0.02, "p_lapse": 0.4})
    info = store.publish(frames("a"), meta)
    assert info.snapshot_id.startswith("20261124T010203Z-")
    assert info.created_at.isoformat() == "2026-11-24T01:02:03+00:00"
    assert info.rows == 60
    assert info.meta == meta
    reopened = backend.make()
    assert reopened.current() == info
    assert reopened.snapshots() == [info]


def test_publish_reports_progress(backend: Backend) -> None:
    store = backend.make()
    seen: list[tuple[int, int | None]] = []
    store.publish(frames("a"), meta_for("a", rows=60), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(20, 60), (40, 60), (60, 60)]


def test_retention_keeps_the_last_k_snapshots(backend: Backend) -> None:
    store = backend.make(keep=2)
    infos = [store.publish(frames(tag, n_chunks=1), meta_for(tag)) for tag in "abcd"]
    assert [s.snapshot_id for s in store.snapshots()] == [infos[3].snapshot_id, infos[2].snapshot_id]
    assert backend.stored() == (2, 2)
    assert store.current() == infos[3]
    with pytest.raises(SnapshotNotFoundError, match="not found"):
        store.rollback(infos[0].snapshot_id)


def test_rollback_to_previous_and_to_explicit_id(backend: Backend) -> None:
    store = backend.make(keep=3)
    a, b, c = (store.publish(frames(tag, n_chunks=1), meta_for(tag)) for tag in "abc")
    assert store.rollback() == b
    info, found = store.lookup(["u0_3"])
    assert info == b and json.loads(found["u0_3"])["batch"] == "b"
    assert store.rollback() == a
    with pytest.raises(SnapshotNotFoundError, match="oldest snapshot kept"):
        store.rollback()
    assert store.rollback(c.snapshot_id) == c
    assert store.lookup(["u0_3"])[0] == c
    # after a rollback, the next publish becomes current and retention still never drops it
    store.rollback(a.snapshot_id)
    d = store.publish(frames("d", n_chunks=1), meta_for("d"))
    assert store.current() == d
    assert [s.snapshot_id for s in store.snapshots()] == [d.snapshot_id, c.snapshot_id, b.snapshot_id]


def test_rollback_errors_name_the_problem(backend: Backend) -> None:
    store = backend.make()
    with pytest.raises(SnapshotNotFoundError, match="no snapshot is being served"):
        store.rollback()
    store.publish(frames("a", n_chunks=1), meta_for("a"))
    with pytest.raises(SnapshotNotFoundError, match="not a snapshot id"):
        store.rollback("scores; DROP TABLE snapshots")
    with pytest.raises(SnapshotNotFoundError, match="20991231T000000Z-abcdef not found"):
        store.rollback("20991231T000000Z-abcdef")


def failing_frames(batch: str) -> Iterator[pd.DataFrame]:
    chunks = frames(batch, n_chunks=5)
    yield next(chunks)
    yield next(chunks)
    raise RuntimeError("feature build failed")


def test_failed_publish_keeps_the_old_snapshot(backend: Backend) -> None:
    store = backend.make(keep=3)
    old = store.publish(frames("old"), meta_for("old"))
    with pytest.raises(RuntimeError, match="feature build failed"):
        store.publish(failing_frames("new"), meta_for("new"))
    info, found = store.lookup(["u0_1", "u2_1"])
    assert info == old and {json.loads(v)["batch"] for v in found.values()} == {"old"}
    assert store.snapshots() == [old]
    assert backend.stored() == (1, 1)
    new = store.publish(frames("new"), meta_for("new"))
    assert store.current() == new and store.snapshots() == [new, old]


def test_bad_chunks_are_rejected_and_the_old_snapshot_kept(backend: Backend) -> None:
    store = backend.make()
    old = store.publish(frames("old"), meta_for("old"))
    dup = [pd.DataFrame({"user_id": ["x", "y"], "v": [1, 2]}), pd.DataFrame({"user_id": ["z", "x"], "v": [3, 4]})]
    with pytest.raises(StoreInputError, match="duplicate user_id"):
        store.publish(dup, meta_for("dup"))
    with pytest.raises(StoreInputError, match="no 'user_id' column"):
        store.publish([pd.DataFrame({"id": ["x"]})], meta_for("bad"))
    with pytest.raises(StoreInputError, match="missing user_id"):
        store.publish([pd.DataFrame({"user_id": ["x", None]})], meta_for("bad"))
    with pytest.raises(StoreInputError, match="created_at.*required"):
        store.publish(frames("bad"), {"as_of": "2026-11-23"})
    with pytest.raises(StoreInputError, match="single string"):
        store.lookup("u0_1")
    assert store.current() == old and store.snapshots() == [old]
    assert backend.stored() == (1, 1)


CRASHING_PUBLISHER = textwrap.dedent(
    """
    import os, sys, time
    import pandas as pd
    from serving.store.redis import RedisScoreStore
    from serving.store.sqlite import SQLiteScoreStore

    kind, target, prefix = sys.argv[1:4]
    if kind == "sqlite":
        store = SQLiteScoreStore(target, commit_rows=10)
    else:
        store = RedisScoreStore(target, prefix=prefix, batch_rows=10, lock_ttl_s=1.0)

    def written():  # whether the publish has stored rows yet (it writes while later chunks are read ahead)
        if kind == "sqlite":
            return True  # the snapshot's table exists from the start of the publish
        import redis
        with redis.Redis.from_url(target) as client:
            return bool(client.keys(f"{prefix}:data:*"))

    def chunks():
        for c in range(5):
            if c == 3:
                for _ in range(200):  # die only once rows of the partial snapshot are stored
                    if written():
                        break
                    time.sleep(0.05)
                os._exit(3)  # the process dies mid-publish, without any clean-up
            yield pd.DataFrame({"user_id": [f"u{c}_{i}" for i in range(20)], "batch": "crashed"})

    store.publish(chunks(), {"created_at": "2026-11-25T00:00:00Z"})
    """
)


def test_crashed_publish_is_invisible_and_cleaned_up_by_the_next_publish(backend: Backend) -> None:
    store = backend.make()
    old = store.publish(frames("old"), meta_for("old"))
    target = str(backend.db) if backend.kind == "sqlite" else backend.redis_url
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_PUBLISHER, backend.kind, target, backend.prefix],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert backend.stored() == (2, 2)  # the partial snapshot is physically there...
    info, found = store.lookup(["u0_1", "u1_1"])
    assert info == old and {json.loads(v)["batch"] for v in found.values()} == {"old"}  # ...but not served
    assert store.snapshots() == [old]
    if backend.kind == "redis":
        time.sleep(1.1)  # the dead publisher's lock expires
    new = store.publish(frames("new"), meta_for("new"))
    assert store.snapshots() == [new, old]
    assert backend.stored() == (2, 2)


def test_second_concurrent_publish_is_refused(backend: Backend) -> None:
    store, other = backend.make(), backend.make()
    started = threading.Event()
    result: dict[str, Any] = {}

    def slow() -> Iterator[pd.DataFrame]:
        started.set()
        yield from frames("slow", n_chunks=4, delay=0.3)

    thread = threading.Thread(target=lambda: result.setdefault("info", store.publish(slow(), meta_for("slow"))))
    thread.start()
    assert started.wait(10)
    time.sleep(0.1)
    with pytest.raises(StoreError, match="in progress"):
        other.publish(frames("other"), meta_for("other"))
    thread.join(30)
    assert other.current() == result["info"]


@pytest.mark.parametrize("keep", [1, 2])
def test_readers_never_see_a_mixed_snapshot_during_publishes(backend: Backend, keep: int) -> None:
    store = backend.make(keep=keep)
    store.publish(frames("v0", n_chunks=10, per_chunk=30), meta_for("v0"))
    ids = [f"u{c}_{i}" for c in range(10) for i in range(0, 30, 3)]  # 100 ids spread over every chunk
    stop = threading.Event()
    problems: list[str] = []
    seen: list[set[str]] = []

    def reader(n: int) -> None:
        own = backend.make() if n % 2 else store  # shared store (a connection per thread) and a private one
        batches: set[str] = set()
        while not stop.is_set():
            try:
                info, found = own.lookup(ids)
            except Exception as exc:  # noqa: BLE001 - reported below, not lost
                problems.append(repr(exc))
                break
            values = {json.loads(v)["batch"] for v in found.values()}
            if len(found) != len(ids) or values != {info.meta["batch"]}:
                problems.append(f"{info.snapshot_id}: {len(found)} found, batches {values} vs {info.meta['batch']}")
            batches.add(info.meta["batch"])
        seen.append(batches)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        for n in range(1, 4):
            store.publish(frames(f"v{n}", n_chunks=10, per_chunk=30, delay=0.02), meta_for(f"v{n}"))
    finally:
        time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(10)
    assert problems == []
    assert len(seen) == 3 and all(len(batches) >= 2 for batches in seen), seen  # readers saw switches
    assert store.current().meta["batch"] == "v3"


def test_sqlite_ping_fails_when_the_file_is_gone(tmp_path: Path) -> None:
    store = SQLiteScoreStore(tmp_path / "scores.db")
    store.ping()
    (tmp_path / "scores.db").unlink()
    with pytest.raises(StoreUnavailableError, match="does not exist"):
        store.ping()
    failures: list[BaseException] = []

    def lookup_in_new_thread() -> None:  # a fresh reader connection must not recreate an empty file
        try:
            store.lookup(["u1"])
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            failures.append(exc)

    thread = threading.Thread(target=lookup_in_new_thread)
    thread.start()
    thread.join(10)
    assert len(failures) == 1 and isinstance(failures[0], StoreUnavailableError)
    assert not (tmp_path / "scores.db").exists()
    store.close()


def test_open_store_picks_the_backend(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = open_store(tmp_path / "sub" / "scores.db", None, keep=4)
    assert isinstance(store, SQLiteScoreStore) and store.keep == 4 and (tmp_path / "sub" / "scores.db").exists()
    store.close()
    with pytest.raises(StoreInputError, match="keep"):
        open_store(tmp_path / "x.db", None, keep=0)
    with pytest.raises(StoreInputError, match="file path"):
        open_store(":memory:", None)
