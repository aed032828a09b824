"""The event log, on both backends (a SQLite file, and Redis: the private durable redis-server of
tests/conftest.py): idempotent appends (on event_id and on the full event), all or nothing, reads by user, and the
export into the clean history exactly once, including after a crash between the part's rename and the watermark."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.events.log import PART_GLOB, EventLog, EventLogError, EventLogInputError, event_key
from features.events.logbase import BaseEventLog
from features.events.schema import CANONICAL_COLUMNS, arrow_schema
from tests.conftest import backend_redis_url

T0 = pd.Timestamp("2026-11-01", tz="UTC")


def events(n: int, seed: int = 3, users: int = 20) -> pd.DataFrame:
    """``n`` seeded canonical events of ``users`` users, distinct by construction (ts in whole seconds)."""
    rng = np.random.default_rng(seed)
    behaviors = rng.choice(["view", "fav", "cart", "buy", "visit"], n)
    return pd.DataFrame({
        "user_id": [f"u{u:03d}" for u in rng.integers(0, users, n)],
        "ts": T0 + pd.to_timedelta(rng.permutation(n) * 7 + rng.integers(0, 3, n), unit="s"),
        "behavior": behaviors,
        "item_id": [None if i % 5 == 0 else f"i{i}" for i in rng.integers(0, 50, n)],
        "category_id": [f"c{c}" for c in rng.integers(0, 5, n)],
        "channel": rng.choice(["search", "recommend", "ad", None], n),
        "amount": np.where(behaviors == "buy", rng.uniform(1, 100, n).round(2), np.nan),
    })


class Backend:
    """Opens event logs of one kind: SQLite files under ``tmp_path``, or logs under prefixes of one test run in the
    Redis at ``url`` (removed by :meth:`clean`)."""

    def __init__(self, kind: str, tmp_path: Path, url: str | None = None) -> None:
        self.kind, self.tmp_path, self.url = kind, tmp_path, url
        self.run = f"test-{uuid.uuid4().hex[:8]}"

    def open(self, name: str = "log", **kwargs: Any) -> BaseEventLog:
        """The log called ``name`` of this test (the same storage each time)."""
        if self.kind == "sqlite":
            return EventLog(self.tmp_path / "events" / f"{name}.db", **kwargs)
        from features.events.redis_log import RedisEventLog

        return RedisEventLog(self.url, self.prefix(name), **kwargs)

    def prefix(self, name: str = "log") -> str:
        return f"{self.run}:{name}"

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)

    def fail_user(self, log: BaseEventLog, user_id: str) -> str:
        """Make any append holding an event of ``user_id`` fail inside the backend; returns words of its error."""
        if self.kind == "sqlite":
            con = sqlite3.connect(log.path)
            con.execute(f"CREATE TRIGGER boom BEFORE INSERT ON events WHEN NEW.user_id = '{user_id}' "
                        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
            con.commit()
            con.close()
            return "refused by the test"
        with self.client() as client:
            client.set(f"{log.prefix}:user:{user_id}", "not a sorted set")  # its index cannot take the event
        return "holds a string"

    def clean(self) -> None:
        if self.kind == "redis":
            with self.client() as client:
                keys = list(client.scan_iter(match=f"{self.run}:*", count=1000))
                if keys:
                    client.delete(*keys)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=[pytest.mark.redis, pytest.mark.integration])])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from backend_of(request, tmp_path)


def backend_of(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The body of a fixture parametrized by backend kind: the :class:`Backend`, cleaned up afterwards (the
    durable redis-server is started for the Redis kind)."""
    made = Backend(request.param, tmp_path, backend_redis_url(request, "durable_redis_server"))
    try:
        yield made
    finally:
        made.clean()


@pytest.fixture()
def log(backend: Backend) -> Iterator[BaseEventLog]:
    with backend.open() as opened:
        yield opened


def stored(log: BaseEventLog) -> pd.DataFrame:
    """Every event in the log as a canonical frame sorted by user, ts."""
    frames = [log.user_events(u) for u in sorted(log.users_after(0))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(CANONICAL_COLUMNS))


def key(frame: pd.DataFrame) -> list[tuple]:
    out = frame[list(CANONICAL_COLUMNS)].astype(object).where(frame[list(CANONICAL_COLUMNS)].notna(), None)
    return sorted(map(tuple, out.itertuples(index=False)), key=repr)


# ------------------------------------------------------------------------------------------------- append
def test_append_stores_each_full_event_once(log: BaseEventLog) -> None:
    batch = events(200)
    first = log.append(batch)
    assert (first.accepted, first.duplicates, first.last_seq) == (200, 0, 200)
    again = log.append(batch)
    assert (again.accepted, again.duplicates, again.last_seq) == (0, 200, 200)
    changed = batch.head(3).assign(amount=[1.0, 2.0, 3.0])  # another amount is another event
    assert log.append(pd.concat([changed, batch.head(2)])).accepted == 3
    assert log.count() == 203 and log.last_seq() >= 203  # a refused duplicate uses up a seq
    assert key(stored(log)) == key(pd.concat([batch, changed]))


def test_append_is_idempotent_on_the_client_event_id(log: BaseEventLog) -> None:
    batch = events(10).assign(event_id=[f"e{i}" for i in range(10)])
    assert log.append(batch).accepted == 10
    resent = events(10, seed=99).assign(event_id=[f"e{i}" for i in range(5, 15)])  # other content, ids 5..14
    result = log.append(resent)
    assert (result.accepted, result.duplicates) == (5, 5)
    assert log.count() == 15


def test_records_and_frames_give_an_event_the_same_key(log: BaseEventLog) -> None:
    """An event posted to /events (records) and the same event in a file (a frame) are one event."""
    batch = events(60)
    records = batch.to_dict("records")  # ts as pandas Timestamps, a missing amount as NaN
    assert log.append_records(records[:30]).accepted == 30
    result = log.append(batch)
    assert (result.accepted, result.duplicates) == (30, 30)
    as_us = [{**r, "ts": int(r["ts"].value // 1000), "amount": None if r["amount"] != r["amount"] else r["amount"]}
             for r in records]
    assert log.append_records(as_us).duplicates == 60
    naive = [{**r, "ts": r["ts"].tz_convert(None).to_pydatetime()} for r in records[:5]]  # naive = UTC
    assert log.append_records(naive).duplicates == 5
    with pytest.raises(EventLogInputError, match="event 2 .*item_id"):
        log.append_records([*records[:2], {**records[2], "item_id": 7}])
    assert log.count() == 60


def test_duplicates_within_one_batch_are_counted(log: BaseEventLog) -> None:
    batch = events(50)
    result = log.append(pd.concat([batch, batch.iloc[[3, 3, 7]]], ignore_index=True))
    assert (result.accepted, result.duplicates) == (50, 3)


def test_the_event_key_is_the_full_canonical_event() -> None:
    base = ("u1", 1_767_225_600_000_000, "buy", "i1", None, "ad", 12.5)
    assert event_key(*base) == event_key(*base) and len(event_key(*base)) == 64
    assert event_key(*base[:6], -0.0) == event_key(*base[:6], 0.0)
    assert event_key(*base[:6], float("nan")) == event_key(*base[:6], None)
    for i in range(7):
        other = list(base)
        other[i] = {0: "u2", 1: base[1] + 1, 2: "view", 3: None, 4: "c", 5: None, 6: 12.0}[i]
        assert event_key(*other) != event_key(*base), i


def test_a_batch_failing_inside_the_transaction_stores_nothing(log: BaseEventLog, backend: Backend) -> None:
    log.append(events(20))
    backend.fail_user(log, "boom")
    batch = pd.concat([events(30, seed=5), events(1, seed=6).assign(user_id="boom")], ignore_index=True)
    with pytest.raises(EventLogError, match="nothing was stored"):
        log.append(batch)  # the 30 good rows were inserted before the last one failed: all rolled back
    assert log.count() == 20 and log.last_seq() == 20
    assert log.append(events(30, seed=5)).accepted == 30  # and the log still takes appends


def test_a_group_commit_stores_each_batch_all_or_none_on_its_own(log: BaseEventLog, backend: Backend) -> None:
    refused = backend.fail_user(log, "boom")
    first, third = events(10, seed=1).to_dict("records"), events(10, seed=3).to_dict("records")
    failing = [*events(10, seed=2).to_dict("records"), {**first[0], "user_id": "boom"}]
    breaching = [*events(10, seed=4).to_dict("records"), {**first[0], "behavior": "teleport"}]
    results = log.append_groups([first, failing, breaching, third, first[:4]])
    assert [type(r).__name__ for r in results] == ["AppendResult", "EventLogError", "EventLogInputError",
                                                   "AppendResult", "AppendResult"]
    assert refused in str(results[1]) and "event 10 (of 11)" in str(results[2])
    assert (results[0].accepted, results[3].accepted, results[4].duplicates) == (10, 10, 4)
    assert results[0].last_seq < results[3].last_seq == log.last_seq()
    assert log.count() == 20 and log.users_after(0).isdisjoint({"boom"})


def test_a_batch_breaking_the_contract_is_refused_whole_with_the_row(log: BaseEventLog) -> None:
    batch = events(10)
    for column, value, what in (("behavior", "zap", "event 4 .*behavior"), ("user_id", None, "event 4 .*user_id"),
                                ("ts", pd.NaT, "event 4 .*ts"), ("amount", -1.0, "event 4 .*amount"),
                                ("channel", "tv", "event 4 .*channel")):
        bad = batch.copy()
        bad[column] = bad[column].astype(object)
        bad.loc[4, column] = value
        with pytest.raises(EventLogInputError, match=what) as caught:
            log.append(bad)
        assert caught.value.exit_code == 1
    with pytest.raises(EventLogInputError, match="lack column"):
        log.append(batch.drop(columns=["behavior"]))
    assert log.count() == 0


def test_appends_from_many_threads_all_land(log: BaseEventLog) -> None:
    batches = [events(100, seed=s) for s in range(8)]
    results = []

    def run(frame: pd.DataFrame) -> None:
        results.append(log.append(frame))

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.accepted for r in results) == log.count() == len({*map(tuple, pd.concat(batches).astype(str).values)})


def test_appended_events_survive_a_reopen(backend: Backend) -> None:
    with backend.open() as log:
        log.append(events(40))
        log_id = log.log_id
    with backend.open() as log:
        assert log.count() == 40 and log.log_id == log_id and len(log_id) == 32
        if backend.kind == "sqlite":
            assert (log.path.read_bytes()[:16]) == b"SQLite format 3\x00"


def test_a_file_that_is_not_a_log_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(EventLogError, match="not a usable event log") as caught:
        EventLog(path)
    assert caught.value.exit_code == 6


def test_a_new_log_opened_while_another_process_creates_it_waits_for_it(tmp_path: Path) -> None:
    """The workers of one service open a new log at the same moment: the one that finds the other half way through
    creating it (holding the write lock before the switch to WAL) waits, instead of coming up without a log."""
    path = tmp_path / "log.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.3, lambda: (other.execute("COMMIT"), other.close()))
    timer.start()
    try:
        with EventLog(path, busy_timeout_s=5.0) as log:  # SQLite answered "database is locked" at once
            assert log.append(events(3)).accepted == 3
    finally:
        timer.join()
    with pytest.raises(EventLogError, match="database is locked"):  # a lock that outlives the timeout still fails
        blocker = sqlite3.connect(tmp_path / "held.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            EventLog(tmp_path / "held.db", busy_timeout_s=0.2)
        finally:
            blocker.close()


def test_a_closed_log_refuses_appends_and_reads(backend: Backend) -> None:
    log = backend.open()
    log.close()
    with pytest.raises(EventLogError, match="closed"):
        log.append(events(1))
    with pytest.raises(EventLogError, match="closed"):
        log.last_seq()


# ------------------------------------------------------------------------------------------------- reads
def test_user_events_are_ordered_by_ts_and_filtered_by_seq(log: BaseEventLog) -> None:
    late = pd.DataFrame({"user_id": ["a"] * 3, "ts": [T0 + pd.Timedelta(hours=h) for h in (5, 1, 3)],
                         "behavior": ["buy", "view", "cart"], "amount": [9.5, None, None]})
    log.append(late)  # seqs 1..3
    log.append(pd.DataFrame({"user_id": ["b", "a"], "ts": [T0, T0], "behavior": ["view", "fav"]}))  # seqs 4, 5
    frame = log.user_events("a")
    assert list(frame.columns) == list(CANONICAL_COLUMNS)
    assert frame["behavior"].tolist() == ["fav", "view", "cart", "buy"]
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]" and frame["amount"].dtype == "float64"
    assert frame["amount"].iloc[3] == 9.5 and frame["amount"].isna().sum() == 3
    assert log.user_events("a", after_seq=3)["behavior"].tolist() == ["fav"]
    assert log.user_events("nobody").empty
    arrays = log.user_event_arrays("a", after_seq=1)
    assert arrays["seq"].tolist() == [5, 2, 3] and arrays["ts_us"].dtype == np.int64
    assert arrays["behavior"].tolist() == ["fav", "view", "cart"] and np.isnan(arrays["amount"]).all()
    assert (np.diff(arrays["ts_us"]) >= 0).all() and log.user_event_arrays("a", after_seq=5)["seq"].size == 0
    assert log.users_after(3) == {"a", "b"} and log.users_after(4) == {"a"} and log.users_after(5) == set()
    assert log.has_events_after("b", 3) and not log.has_events_after("b", 4)


# ------------------------------------------------------------------------------------------------- export
def parts(dest: Path) -> list[Path]:
    return sorted(dest.glob(PART_GLOB))


def exported(dest: Path) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in parts(dest)], ignore_index=True)


def test_export_writes_each_event_once_in_canonical_parquet(log: BaseEventLog, tmp_path: Path) -> None:
    dest = tmp_path / "clean"
    assert log.export(dest) is None  # nothing yet
    log.append(events(300))
    first = log.export(dest)
    assert first is not None and (first.rows, first.first_seq, first.last_seq) == (300, 1, 300)
    assert first.path.name.startswith("ingested-000000000001-000000000300-")
    schema = pq.read_schema(first.path)
    assert schema.remove_metadata().equals(arrow_schema())
    table = pd.read_parquet(first.path)
    assert table[["user_id", "ts"]].equals(table[["user_id", "ts"]].sort_values(["user_id", "ts"]).reset_index(
        drop=True))
    assert log.export(dest) is None and log.exported_seq() == 300
    log.append(events(300))  # all duplicates: nothing new
    assert log.export(dest) is None
    log.append(events(120, seed=8))
    second = log.export(dest)
    assert second is not None and (second.first_seq, second.last_seq) == (301, log.last_seq())
    assert len(parts(dest)) == 2 and not list(dest.glob(".*"))
    assert key(exported(dest)) == key(stored(log))
    assert len(exported(dest)) == log.count() == 420


def test_what_is_listed_after_an_export_holds_the_log_exactly_up_to_its_watermark(
    log: BaseEventLog, backend: Backend, tmp_path: Path
) -> None:
    dest = tmp_path / "clean"
    log.append(events(50))
    other = threading.Thread(target=lambda: backend.open().export(dest))  # another command's export

    def listing(watermark: int) -> tuple[int, list[str], bool]:
        log.append(events(20, seed=9))  # ingested meanwhile
        other.start()
        other.join(timeout=0.5)  # it waits for the lock this export still holds
        return watermark, [p.name for p in parts(dest)], other.is_alive()

    result, (watermark, listed, waited) = log.export_then(dest, listing)
    other.join(timeout=10)
    assert result is not None and watermark == result.last_seq == 50
    assert waited and len(listed) == 1 and listed[0].startswith("ingested-000000000001-000000000050-")
    assert len(parts(dest)) == 2 and log.exported_seq() == 70  # the other export ran after: seq 51 to 70


def test_a_large_backlog_is_exported_in_parts(log: BaseEventLog, tmp_path: Path) -> None:
    log.append(events(250))
    result = log.export(tmp_path / "clean", max_part_rows=100)
    assert result is not None and result.rows == 250 and len(result.paths) == 3
    assert [pq.read_metadata(p).num_rows for p in result.paths] == [100, 100, 50]


def test_a_crash_after_the_rename_never_exports_the_rows_twice(log: BaseEventLog, tmp_path: Path) -> None:
    dest = tmp_path / "clean"
    dest.mkdir()
    log.append(events(100))
    path, rows = log._write_part(dest, log.exported_seq(), log.last_seq())  # renamed; the watermark not recorded
    assert rows == 100 and log.exported_seq() == 0
    log.append(events(30, seed=4))
    result = log.export(dest)  # the next run recognises the part and writes only the new events
    assert result is not None and result.recovered == 100 and (result.first_seq, result.last_seq) == (101, 130)
    assert parts(dest) == sorted([path, result.path])
    assert len(exported(dest)) == log.count() == 130
    assert key(exported(dest)) == key(stored(log))
    log._write_part(dest, 130, 130)  # an empty range: still one file per range, recognised and kept once
    assert log.export(dest) is None and log.exported_seq() == 130


def test_a_crash_before_the_rename_leaves_no_trace(log: BaseEventLog, tmp_path: Path, monkeypatch) -> None:
    import features.events.log as module

    dest = tmp_path / "clean"
    log.append(events(50))

    def crash(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module.os, "replace", crash)
    with pytest.raises(EventLogError, match="No space left"):
        log.export(dest)
    monkeypatch.undo()
    assert parts(dest) == [] and log.exported_seq() == 0
    (dest / f".ingested-000000000001-000000000050-{log.log_id[:8]}.parquet.tmp").write_bytes(b"half")  # a kill -9
    result = log.export(dest)
    assert result is not None and result.rows == 50 and list(dest.iterdir()) == [result.path]


def test_two_logs_can_share_a_history_folder(backend: Backend, tmp_path: Path) -> None:
    dest = tmp_path / "clean"
    with backend.open("a") as a, backend.open("b") as b:
        a.append(events(10))
        b.append(events(15, seed=9))
        ra, rb = a.export(dest), b.export(dest)
        assert ra is not None and rb is not None and ra.path != rb.path
        assert a.export(dest) is None and b.export(dest) is None  # neither takes the other's part as its own
        assert (a.exported_seq(), b.exported_seq()) == (10, 15)
    assert len(exported(dest)) == 25


def test_a_part_that_does_not_follow_the_watermark_is_refused(log: BaseEventLog, tmp_path: Path) -> None:
    dest = tmp_path / "clean"
    dest.mkdir()
    log.append(events(40))
    log._write_part(dest, 20, 40)  # rows 21..40 exported while 1..20 never were: a history with a hole
    with pytest.raises(EventLogError, match="do not follow"):
        log.export(dest)
