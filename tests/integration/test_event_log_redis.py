"""The event log in Redis against private redis-servers (tests/conftest.py): the durability check when it opens,
processes appending at once, ``kill -9`` of an appending process and of Redis itself, Redis refusing a write for
memory, the export lock shared by hosts, and ``propensity ingest`` / ``propensity lookup`` with ``redis_url`` set.
The behaviour both backends share is tested on both in tests/unit/test_event_log.py."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis

from features.events.log import PART_GLOB, EventLogError
from features.events.redis_log import RedisEventLog
from tests.integration.conftest import cli_invoker
from tests.unit.test_event_log import Backend, backend_of, events

pytestmark = [pytest.mark.integration, pytest.mark.redis]

REPO = Path(__file__).resolve().parents[2]

# Appends `batches` batches of `size` events with ids to one log, printing "acked <batch> <accepted> <duplicates>"
# after each answer; half of each batch has ids shared by every appender (`shared`), the other half its own. With
# a `go` file it first prints "ready" and waits for the file, so several appenders start together.
APPENDER = textwrap.dedent(
    """
    import random, sys, time
    from pathlib import Path

    kind, target, prefix, name, batches, size, go = sys.argv[1:]
    if kind == "redis":
        from features.events.redis_log import RedisEventLog
        log = RedisEventLog(target, prefix)
    else:
        from features.events.log import EventLog
        log = EventLog(Path(target))
    if go != "-":
        print("ready", flush=True)
        while not Path(go).exists():
            time.sleep(0.005)
    rng = random.Random(name)
    for b in range(int(batches)):
        events = [{"user_id": f"u{rng.randrange(300)}", "ts": 1_790_000_000_000_000 + rng.randrange(10**12),
                   "behavior": rng.choice(["view", "cart", "buy"]),
                   "event_id": f"shared-{b}-{i}" if i % 2 else f"{name}-{b}-{i}"} for i in range(int(size))]
        result = log.append_records(events)
        print("acked", b, result.accepted, result.duplicates, flush=True)
    """
)


def start_appender(backend: Backend, name: str, batches: int, size: int, go: Path | None = None) -> Any:
    target = backend.url if backend.kind == "redis" else str(backend.tmp_path / "events" / "log.db")
    return subprocess.Popen(
        [sys.executable, "-c", APPENDER, backend.kind, str(target), backend.prefix(), name, str(batches), str(size),
         str(go) if go else "-"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def batch_ids(name: str, b: int, size: int) -> set[str]:
    return {f"shared-{b}-{i}" if i % 2 else f"{name}-{b}-{i}" for i in range(size)}


def stored_ids(backend: Backend) -> set[str]:
    if backend.kind == "sqlite":
        import sqlite3

        con = sqlite3.connect(backend.tmp_path / "events" / "log.db")
        try:
            return {r[0] for r in con.execute("SELECT event_id FROM events")}
        finally:
            con.close()
    with backend.client() as client:
        return {k.decode() for k in client.hkeys(f"{backend.prefix()}:ids")}


def assert_consistent(backend: Backend) -> int:
    """Every key of the Redis log agrees with the others (no half-stored append); returns the number of events."""
    p = backend.prefix()
    with backend.client() as client:
        seq = int(client.get(f"{p}:seq") or 0)
        entries = client.xrange(f"{p}:stream")
        assert [int(sid.split(b"-")[0]) for sid, _ in entries] == list(range(1, seq + 1))
        assert client.hlen(f"{p}:ids") == seq and sorted(map(int, client.hvals(f"{p}:ids"))) == list(range(1, seq + 1))
        by_user: dict[str, list[int]] = {}
        for sid, fields in entries:
            by_user.setdefault(fields[b"u"].decode(), []).append(int(sid.split(b"-")[0]))
        for user, seqs in by_user.items():
            assert [int(s) for s in client.zrange(f"{p}:user:{user}", 0, -1)] == seqs
            assert client.zscore(f"{p}:users", user) == max(seqs)
        assert client.zcard(f"{p}:users") == len(by_user)
    return seq


@pytest.fixture()
def durable(durable_redis_server: Any, tmp_path: Path) -> Iterator[Backend]:
    durable_redis_server.ensure_running()
    made = Backend("redis", tmp_path, durable_redis_server.url)
    try:
        yield made
    finally:
        made.clean()


@pytest.fixture(params=["sqlite", "redis"])
def any_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from backend_of(request, tmp_path)


# ------------------------------------------------------------------------------------------------- opening
def test_a_redis_that_can_lose_acknowledged_events_is_refused_in_one_line(redis_server: Any, caplog: Any) -> None:
    redis_server.ensure_running()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    with pytest.raises(EventLogError) as caught:
        RedisEventLog(redis_server.url, prefix)
    message = str(caught.value)
    assert "\n" not in message and caught.value.exit_code == 6
    assert "appendonly no" in message and "appendonly yes and appendfsync always" in message, message
    with redis.Redis.from_url(redis_server.url) as client:
        assert not list(client.scan_iter(match=f"{prefix}:*"))  # refused before writing anything
    with (caplog.at_level(logging.WARNING, logger="features.events.redis_log"),
          RedisEventLog(redis_server.url, prefix, allow_volatile=True) as log):  # explicitly allowed
        assert log.append(events(5)).accepted == 5
    assert "opened anyway" in caplog.text
    with redis.Redis.from_url(redis_server.url) as client:
        client.delete(*client.scan_iter(match=f"{prefix}:*"))


def test_a_redis_that_does_not_allow_config_is_trusted_with_a_warning(durable: Backend, caplog: Any) -> None:
    user, password = f"evlog-{durable.run}", uuid.uuid4().hex
    with durable.client() as client:
        client.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "&*", "+@all", "-config")
    try:
        url = durable.url.replace("redis://", f"redis://{user}:{password}@")
        with (caplog.at_level(logging.WARNING, logger="features.events.redis_log"),
              RedisEventLog(url, durable.prefix()) as log):
            assert log.append(events(3)).accepted == 3
            assert password not in log.location and "***" in log.location
        assert "cannot check that the event log's Redis" in caplog.text and password not in caplog.text
    finally:
        with durable.client() as client:
            client.execute_command("ACL", "DELUSER", user)


def test_keys_that_are_not_a_log_and_a_redis_that_is_down_are_clear_errors(durable: Backend) -> None:
    with durable.client() as client:
        client.set(f"{durable.prefix()}:meta", "something else")
    with pytest.raises(EventLogError, match="not a usable event log"):
        durable.open()
    with pytest.raises(EventLogError, match="cannot reach") as caught:
        RedisEventLog("redis://127.0.0.1:1/0", durable.prefix(), timeout_s=1.0)
    assert "\n" not in str(caught.value)


# ------------------------------------------------------------------------------------------------- appends
def test_processes_appending_at_once_lose_nothing_and_store_each_event_once(any_backend: Backend,
                                                                               tmp_path: Path) -> None:
    go = tmp_path / "go"
    any_backend.open().close()  # created before the race, as the service does at start
    procs = [start_appender(any_backend, f"p{i}", batches=30, size=100, go=go) for i in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr.read()
    go.touch()
    acked: list[tuple[int, int]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        acked += [(int(line.split()[2]), int(line.split()[3])) for line in out.splitlines()]
    assert len(acked) == 60 and all(a + d == 100 for a, d in acked)
    expected = set().union(*(batch_ids(f"p{i}", b, 100) for i in range(2) for b in range(30)))
    assert stored_ids(any_backend) == expected  # each shared id stored by exactly one of the two
    assert sum(a for a, _ in acked) == len(expected) == 30 * 150
    with any_backend.open() as log:
        assert log.count() == len(expected)
    if any_backend.kind == "redis":
        assert assert_consistent(any_backend) == len(expected)


def wait_for_acks(proc: Any, n: int) -> list[int]:
    """The batch numbers the appender acknowledged, read until ``n`` of them (or its end)."""
    acked = []
    assert proc.stdout is not None
    while len(acked) < n:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(int(line.split()[1]))
    return acked


def check_after_crash(backend: Backend, acked: list[int], size: int) -> None:
    ids = stored_ids(backend)
    for b in range(max(acked) + 2):  # acknowledged batches are there; the one in flight is whole or absent
        found = len(batch_ids("k", b, size) & ids)
        assert found == size if b in acked else found in (0, size), (b, found)
    assert len(ids) in (len(acked) * size, (len(acked) + 1) * size)


def test_kill_9_of_an_appending_process_loses_no_acknowledged_event(any_backend: Backend) -> None:
    any_backend.open().close()
    proc = start_appender(any_backend, "k", batches=10_000, size=2_000)
    acked = wait_for_acks(proc, 5)
    proc.kill()  # most likely while it sends or waits for the next batch
    proc.wait(timeout=30)
    acked += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("acked")]
    assert len(acked) >= 5, proc.stderr.read()
    check_after_crash(any_backend, acked, 2_000)
    if any_backend.kind == "redis":
        assert_consistent(any_backend)
    with any_backend.open() as log:
        assert log.append_records([{"user_id": "after", "ts": 1, "behavior": "view"}]).accepted == 1


def test_kill_9_of_redis_loses_no_acknowledged_event(durable: Backend, durable_redis_server: Any) -> None:
    durable.open().close()
    proc = start_appender(durable, "k", batches=10_000, size=2_000)
    acked = wait_for_acks(proc, 5)
    durable_redis_server.kill_9()  # Redis dies mid-append: only what reached its append-only file comes back
    try:
        out, err = proc.communicate(timeout=60)
        acked += [int(line.split()[1]) for line in out.splitlines() if line.startswith("acked")]
        assert proc.returncode != 0 and "cannot" in err, err[-500:]
    finally:
        durable_redis_server.start()  # reloads the append-only file
    check_after_crash(durable, acked, 2_000)
    assert assert_consistent(durable) >= len(acked) * 2_000


def test_a_write_refused_for_memory_stores_nothing_of_the_batch(durable: Backend) -> None:
    with durable.open() as log, durable.client() as client:
        log.append(events(50))
        try:
            client.config_set("maxmemory", max(1, int(client.info("memory")["used_memory"]) // 2))
            with pytest.raises(EventLogError, match="OOM.*nothing was stored"):
                log.append(events(100, seed=8))
            results = log.append_groups([events(10, seed=9).to_dict("records"), []])
            assert "OOM" in str(results[0]) and results[1].accepted == 0
        finally:
            client.config_set("maxmemory", 0)
        assert log.count() == 50 and assert_consistent(durable) == 50
        assert log.append(events(100, seed=8)).accepted == 100


def test_an_append_larger_than_one_request_is_staged_and_still_all_or_nothing(durable: Backend,
                                                                               monkeypatch: Any) -> None:
    import features.events.redis_log as module

    monkeypatch.setattr(module, "CHUNK_EVENTS", 100)
    monkeypatch.setattr(module, "STAGE_ABOVE", 250)
    with durable.open() as log:
        batch = events(1_000, seed=4, users=50)
        assert log.append(batch).accepted == 1_000
        durable.fail_user(log, "boom")
        with pytest.raises(EventLogError, match="holds a string.*nothing was stored"):
            log.append(pd.concat([events(600, seed=5), events(1, seed=6).assign(user_id="boom")], ignore_index=True))
        result = log.append(pd.concat([batch, events(400, seed=7)], ignore_index=True))
        assert (result.accepted, result.duplicates) == (400, 1_000)
    with durable.client() as client:
        assert not list(client.scan_iter(match=f"{durable.prefix()}:staging:*"))
    assert assert_consistent(durable) == 1_400


# ------------------------------------------------------------------------------------------------- export
def test_exports_from_two_hosts_write_each_event_once(durable: Backend, tmp_path: Path) -> None:
    dest = tmp_path / "clean"
    with durable.open() as a, durable.open(lock_wait_s=0.3) as b, durable.client() as client:
        a.append(events(3_000, seed=2, users=200))
        client.set(f"{durable.prefix()}:export-lock", "another-host", px=60_000)
        with pytest.raises(EventLogError, match="another export .* has held"):
            b.export(dest)
        client.delete(f"{durable.prefix()}:export-lock")
        b.lock_wait_s = 60.0
        results: list[Any] = []

        def export(log: Any) -> None:
            try:
                results.append(log.export(dest, max_part_rows=700))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results.append(exc)

        threads = [threading.Thread(target=export, args=(log,)) for log in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not [r for r in results if isinstance(r, Exception)], results
        assert sum(r.rows for r in results if r is not None) == 3_000
        frames = [pd.read_parquet(p) for p in sorted(dest.glob(PART_GLOB))]
        assert sum(map(len, frames)) == 3_000 and a.exported_seq() == 3_000
        with a._export_lock():  # the lock expired and another exporter took it: the watermark stays
            client.set(f"{durable.prefix()}:export-lock", "another-host")
            a.append(events(10, seed=3))
            with pytest.raises(EventLogError, match="lost its lock"):
                a._set_watermark(3_010)
        assert a.exported_seq() == 3_000
        client.delete(f"{durable.prefix()}:export-lock")


# ------------------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.chdir(tmp_path)
    for var in ("PROPENSITY_DATA_DIR", "PROPENSITY_STORE_PATH", "PROPENSITY_CONFIG", "PROPENSITY_SERVING__EVENTS_LOG",
                "PROPENSITY_EVENTS_REDIS_ALLOW_VOLATILE"):
        monkeypatch.delenv(var, raising=False)
    return cli_invoker()


def test_cli_ingest_with_redis_url_stores_in_redis_and_exports(run: Any, durable: Backend, tmp_path: Path,
                                                               monkeypatch: Any) -> None:
    from propensity.cli.eventlog import exported_seq
    from propensity.cli.serving import fresh_rows
    from propensity.config import load_settings
    from tests.integration.test_ingest import posted, write_csv

    monkeypatch.setenv("PROPENSITY_REDIS_URL", durable.url)
    monkeypatch.setenv("PROPENSITY_EVENTS_REDIS_PREFIX", durable.prefix())
    cfg = load_settings()
    assert exported_seq(cfg) == 0 and fresh_rows(cfg, ["u1"], "no-snapshot", datetime.now(UTC)) == {}
    with durable.client() as client:
        assert not list(client.scan_iter(match=f"{durable.prefix()}:*"))  # looking for a log creates none

    first = run("ingest", str(write_csv(tmp_path / "a.csv", posted(120, seed=21))))
    assert first.exit_code == 0, first.output
    assert durable.prefix() in first.output and not cfg.events_log_path.exists()  # nothing in SQLite
    with durable.open() as log:
        stored = log.count()
    assert 100 <= stored <= 120  # the file's own exact repeats are dropped by the validator
    again = run("ingest", str(tmp_path / "a.csv"), "--export")
    assert again.exit_code == 0 and "already in the log" in again.output and "exported" in again.output, again.output
    with durable.open() as log:
        assert log.count() == stored and exported_seq(cfg) == log.last_seq() == stored
    assert sum(len(pd.read_parquet(p)) for p in cfg.clean_dir.glob(PART_GLOB)) == stored


def test_cli_ingest_into_a_volatile_redis_is_refused_in_one_line(run: Any, redis_server: Any, tmp_path: Path,
                                                                  monkeypatch: Any) -> None:
    from tests.integration.test_ingest import posted, write_csv

    redis_server.ensure_running()
    monkeypatch.setenv("PROPENSITY_REDIS_URL", redis_server.url)
    monkeypatch.setenv("PROPENSITY_EVENTS_REDIS_PREFIX", f"test-{uuid.uuid4().hex[:8]}")
    result = run("ingest", str(write_csv(tmp_path / "a.csv", posted(20, seed=3))))
    assert result.exit_code == 6, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "appendfsync always" in lines[0], result.output



def test_cli_ingest_of_a_file_too_long_for_one_redis_append_is_refused_or_stored_in_parts(
        run: Any, durable: Backend, tmp_path: Path, monkeypatch: Any) -> None:
    """One append holds the shared Redis for its length, so a file of more events than ``MAX_ONE_APPEND`` is refused
    in one line with nothing stored (its staging folder removed too); ``--split`` stores it in whole parts of that
    size, and ingesting it again stores nothing new (a run cut short between parts is finished by a rerun)."""
    import features.events.redis_log as redis_log
    from propensity.config import load_settings
    from tests.integration.test_ingest import posted, write_csv

    monkeypatch.setenv("PROPENSITY_REDIS_URL", durable.url)
    monkeypatch.setenv("PROPENSITY_EVENTS_REDIS_PREFIX", durable.prefix())
    monkeypatch.setattr(redis_log, "MAX_ONE_APPEND", 40)
    cfg = load_settings()
    path = write_csv(tmp_path / "big.csv", posted(120, seed=21))

    refused = run("ingest", str(path))
    assert refused.exit_code == 1, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--split" in lines[0] and "nothing was stored" in lines[0], refused.output
    with durable.open() as log:
        assert log.count() == 0
    assert not any((cfg.data_dir / "events" / "ingest").glob("*"))

    stored = run("ingest", str(path), "--split")
    assert stored.exit_code == 0, stored.output
    with durable.open() as log:
        n = log.count()
        assert 100 <= n <= 120 and log.last_seq() == n
    with durable.client() as client:
        seqs = [int(entry_id.split(b"-")[0]) for entry_id, _ in client.xrange(f"{durable.prefix()}:stream")]
    assert seqs == list(range(1, n + 1))
    assert "appends" in stored.output and str(-(-n // 40)) in stored.output, stored.output

    again = run("ingest", str(path), "--split")
    assert again.exit_code == 0 and "already in the log" in again.output, again.output
    with durable.open() as log:
        assert log.count() == n
