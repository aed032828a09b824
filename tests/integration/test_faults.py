"""Faults against real processes: ``kill -9`` of a publisher at seeded moments (SQLite and Redis), and lookups at
500 req/s while a new snapshot is published and a new champion is promoted.

Kill test. A *zygote* process imports the store code once, then forks one publisher per kill point (a fresh
interpreter would cost seconds of imports per kill on a small machine; forking from a process that never opened
the store keeps SQLite's per-process lock bookkeeping clean). Each publisher writes ``ROWS`` users in chunks and
reports its progress; the test sends SIGKILL once the publisher has written a seeded fraction of the rows
(0 = right after it starts, 1 = after the last chunk, around the pointer switch). Meanwhile a reader thread looks
up users spread over every chunk: each lookup must show one complete snapshot (every payload carries the batch
marker of the snapshot it reports, every probed user is there) that is either the one served before the kill or
the killed publisher's (only if it got as far as the switch). After each kill the next publish must succeed
(for Redis within the dead publisher's short lock TTL) and leave no partial data behind.

Load test. The module's real ``bentoml serve`` process (``server`` fixture) answers open-loop ``/lookup``
traffic from a separate load-generator process (``benchmarks/bench_load_publish.py drive``) while this process
publishes a new snapshot and registers and promotes a new ``last_mile_buyer`` champion; every request must
succeed, and both snapshots and the new model must be seen while the load runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import pandas as pd
import pytest

from serving.store.base import StoreError
from serving.store.redis import RedisScoreStore
from serving.store.sqlite import SQLiteScoreStore
from tests.conftest import backend_redis_url
from tests.integration.conftest import START, TOKEN, Server, Trained, register, train_bundle

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
ROWS = 100_000  # users per publish
CHUNK = 5_000  # users per chunk (progress is reported after each one)
KILLS = 5  # kill points per backend
LOCK_TTL_S = 1.0  # publish-lock lifetime of the killed Redis publishers
CREATED_AT = "2026-11-24T01:00:00+00:00"
PROBE_IDS = [f"u{i:07d}" for i in range(0, ROWS, ROWS // 40)] + [f"u{ROWS - 1:07d}"]  # every chunk + the last user
UNKNOWN_IDS = ["nobody", "u9999999"]

ZYGOTE = r"""
import json, os, signal, sys
from serving.store.redis import RedisScoreStore
from serving.store.sqlite import SQLiteScoreStore
from tests.integration.test_faults import frames


def say(text):
    os.write(1, (text + "\n").encode())  # one small write: atomic on a pipe


def publisher(cmd):
    try:
        if cmd["backend"] == "sqlite":
            store = SQLiteScoreStore(cmd["target"], keep=cmd["keep"], commit_rows=cmd["commit_rows"])
        else:
            store = RedisScoreStore(cmd["target"], prefix=cmd["prefix"], keep=cmd["keep"],
                                    batch_rows=cmd["commit_rows"], lock_ttl_s=cmd["lock_ttl_s"])
        meta = {"created_at": cmd["created_at"], "batch": cmd["batch"], "rows": cmd["rows"]}
        info = store.publish(frames(cmd["batch"], cmd["rows"], cmd["chunk"]), meta,
                             progress=lambda done, total: say(f"progress {done}"))
        say(f"done {info.snapshot_id}")
    except BaseException as exc:
        say("error " + repr(exc).replace("\n", " "))
        os._exit(1)
    while True:  # finished: wait to be killed like the others
        signal.pause()


for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "publish":
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            publisher(cmd)
            os._exit(0)
        say(f"pid {pid}")
    elif cmd["op"] == "reap":
        _, status = os.waitpid(cmd["pid"], 0)
        say(f"reaped {os.waitstatus_to_exitcode(status)}")
"""


# ------------------------------------------------------------------------------------------------- helpers
def frames(batch: str, rows: int = ROWS, chunk: int = CHUNK) -> Iterator[pd.DataFrame]:
    """``rows`` users ``u0000000``... in chunks; every payload carries the ``batch`` marker of its snapshot."""
    import numpy as np

    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        yield pd.DataFrame(
            {
                "user_id": [f"u{i:07d}" for i in range(start, start + n)],
                "p_buy": np.linspace(0.0, 1.0, n),
                "rank": np.arange(start, start + n),
                "reasons": [["cart_24h", "ad_click_3d"]] * n,
                "batch": batch,
            }
        )


class Zygote:
    """The forking publisher host (see the module docstring); lines it and its children print land in a queue."""

    def __init__(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE], cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
        )  # fmt: skip
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.live: set[int] = set()  # forked publishers not reaped yet
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, _, value = line.strip().partition(" ")
            self.lines.put((kind, value))
        self.lines.put(("eof", ""))

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def next(self, timeout: float = 60.0) -> tuple[str, str]:
        try:
            kind, value = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no word from the publisher within {timeout} s") from None
        if kind == "eof":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the zygote exited with {self.proc.wait()}: {err[-2000:]}")
        if kind == "error":
            raise AssertionError(f"the publisher failed instead of being killed: {value}")
        return kind, value

    def close(self) -> None:
        for pid in self.live:  # left alive by a failed test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the zygote ends at EOF
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    z = Zygote()
    try:
        yield z
    finally:
        z.close()


class KillTarget:
    """One backend: the store this process reads and publishes with, and what is physically stored."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind = kind
        self.db = tmp_path / "scores.db"
        self.redis_url = redis_url
        self.prefix = f"faults-{uuid.uuid4().hex[:8]}"
        if kind == "sqlite":
            self.store: Any = SQLiteScoreStore(self.db, keep=2, commit_rows=25_000)
        else:
            self.store = RedisScoreStore(redis_url or "", prefix=self.prefix, keep=2, batch_rows=10_000)

    def publisher_cmd(self, batch: str) -> dict[str, Any]:
        return {
            "op": "publish", "backend": self.kind, "target": str(self.db) if self.kind == "sqlite" else self.redis_url,
            "prefix": self.prefix, "keep": 2, "commit_rows": 25_000 if self.kind == "sqlite" else 10_000,
            "lock_ttl_s": LOCK_TTL_S, "batch": batch, "rows": ROWS, "chunk": CHUNK, "created_at": CREATED_AT,
        }  # fmt: skip

    def stored(self) -> tuple[int, int, set[str]]:
        """(data tables/hashes, snapshot records, record states) physically present."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.db) as conn:
                tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'scores_%'").fetchone()[0]
                states = {s for (s,) in conn.execute("SELECT state FROM snapshots")}
                records = conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
            return tables, records, states
        import redis

        client = redis.Redis.from_url(self.redis_url or "", decode_responses=True)
        try:
            records = client.hgetall(f"{self.prefix}:snapshots")
            states = {json.loads(r)["state"] for r in records.values()}
            return len(client.keys(f"{self.prefix}:data:*")), len(records), states
        finally:
            client.close()

    def integrity(self) -> str:
        if self.kind != "sqlite":
            return "ok"
        with sqlite3.connect(self.db) as conn:
            return str(conn.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        self.store.close()
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.redis_url or "")
            try:
                keys = client.keys(f"{self.prefix}:*")
                if keys:
                    client.delete(*keys)
            finally:
                client.close()


class SnapshotReader:
    """Polls lookups in a thread; every answer must be one complete snapshot whose batch is allowed."""

    def __init__(self, store: Any, allowed: set[str]) -> None:
        self.store, self.allowed = store, allowed
        self.problems: list[str] = []
        self.seen: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        ids = PROBE_IDS + UNKNOWN_IDS
        while not self._stop.is_set():
            try:
                info, found = self.store.lookup(ids)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost
                self.problems.append(f"lookup raised {exc!r}")
                return
            batch = info.meta["batch"] if info is not None else None
            marks = {json.loads(v)["batch"] for v in found.values()}
            if batch not in self.allowed:
                self.problems.append(f"served batch {batch!r}, expected one of {sorted(self.allowed)}")
            elif sorted(found) != PROBE_IDS or marks != {batch} or info.rows != ROWS:
                self.problems.append(
                    f"{info.snapshot_id} ({batch}, {info.rows} rows): {len(found)}/{len(PROBE_IDS)} probed users, "
                    f"payload batches {sorted(marks)}"
                )
            self.seen[batch] += 1
            time.sleep(0.002)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def kill_points(kind: str) -> list[float]:
    """Seeded fractions of the rows written when the publisher is killed: start, three random points, the end."""
    rng = random.Random(f"kill-points-{kind}")
    return [0.0, *sorted(round(rng.uniform(0.05, 0.95), 3) for _ in range(KILLS - 2)), 1.0]


def kill_at(zygote: Zygote, target: KillTarget, batch: str, fraction: float) -> tuple[bool, int]:
    """Start a publisher, SIGKILL it once ``fraction`` of the rows are written; (it had finished, rows reported)."""
    zygote.send(**target.publisher_cmd(batch))
    pid, done, rows = None, False, 0
    threshold = int(fraction * ROWS)
    while True:
        kind, value = zygote.next()
        if kind == "pid":
            pid = int(value)
            zygote.live.add(pid)
        elif kind == "progress":
            rows = int(value)
        elif kind == "done":
            done = True
        if pid is not None and (rows >= threshold or done):
            break
    os.kill(pid, signal.SIGKILL)
    zygote.send(op="reap", pid=pid)
    while True:
        kind, value = zygote.next()
        if kind == "done":
            done = True
        elif kind == "progress":
            rows = int(value)
        elif kind == "reaped":
            zygote.live.discard(pid)
            assert int(value) == -signal.SIGKILL, f"publisher {pid} exited with {value}, not by SIGKILL"
            return done, rows


def publish_after_crash(target: KillTarget, batch: str) -> float:
    """Publish with this process's store, waiting out a dead publisher's lock; returns the seconds waited."""
    t0 = time.monotonic()
    while True:
        try:
            info = target.store.publish(frames(batch), {"created_at": CREATED_AT, "batch": batch, "rows": ROWS})
            assert info.rows == ROWS and info.meta["batch"] == batch
            return time.monotonic() - t0
        except StoreError as exc:
            if "in progress" not in str(exc) or time.monotonic() - t0 > LOCK_TTL_S + 5:
                raise
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------------- kill -9
@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def kill_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KillTarget]:
    target = KillTarget(request.param, tmp_path, backend_redis_url(request))
    try:
        yield target
    finally:
        target.close()


def test_sigkill_mid_publish_leaves_one_complete_snapshot_and_the_next_publish_succeeds(
    zygote: Zygote, kill_target: KillTarget
) -> None:
    target = kill_target
    served = "v0"
    publish_after_crash(target, served)
    outcomes = []
    for n, fraction in enumerate(kill_points(target.kind), start=1):
        killed = f"killed{n}"
        with SnapshotReader(target.store, {served, killed}) as reader:
            time.sleep(0.05)
            finished, rows = kill_at(zygote, target, killed, fraction)
            time.sleep(0.1)  # keep reading the state the dead publisher left
        assert reader.problems == [], (fraction, reader.problems[:5])
        assert sum(reader.seen.values()) >= 3, reader.seen
        current = target.store.current()
        assert current is not None and current.meta["batch"] in (served, killed), current
        if finished:
            assert current.meta["batch"] == killed  # a publish that returned is never lost
        if current.meta["batch"] == killed:
            assert rows == ROWS, f"a snapshot of {rows} written rows became current"
        outcomes.append((fraction, rows, current.meta["batch"] == killed))

        served = f"next{n}"
        waited = publish_after_crash(target, served)
        assert waited < LOCK_TTL_S + 3, f"the next publish waited {waited:.1f} s for the dead publisher's lock"
        tables, records, states = target.stored()
        kept = target.store.snapshots()
        assert tables == records == len(kept) <= 2 and states == {"ready"}, (tables, records, states)
        assert kept[0].meta["batch"] == served and target.store.current() == kept[0]
        _info, found = target.store.lookup(PROBE_IDS)
        assert len(found) == len(PROBE_IDS) and {json.loads(v)["batch"] for v in found.values()} == {served}
        assert target.integrity() == "ok"
    print(f"\n{target.kind}: (kill point, rows written when killed, killed snapshot served): {outcomes}")
    assert [f for f, _, _ in outcomes] == kill_points(target.kind)
    assert any(rows < ROWS for _, rows, _ in outcomes), outcomes  # some kills landed mid-write


# ------------------------------------------------------------------------------------------------- load
LOAD_RATE = 500
LOAD_MIN_S = 12.0
LOAD_MAX_S = 40.0


def _bench() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_load_publish", REPO / "benchmarks" / "bench_load_publish.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules.setdefault("bench_load_publish", module)
    spec.loader.exec_module(module)
    return module


def test_lookups_at_500_per_second_never_fail_during_a_publish_and_a_champion_promotion(
    server: Server, trained: Trained, tmp_path: Path
) -> None:
    from serving.store.base import open_store

    bench = _bench()
    known = list(trained.scores["user_id"].astype(str))
    old = server.client.post("/lookup", json={"user_ids": known[:1]}).json()["snapshot_id"]
    before = server.anon.get("/readyz").json()["models"]["last_mile_buyer"]
    bundle, x, names = train_bundle("last_mile_buyer", trained.raw, trained.events, seed=123, rounds=6)
    filler = trained.scores.iloc[[i % len(known) for i in range(48_500)]].reset_index(drop=True)
    filler["user_id"] = [f"filler{i:06d}" for i in range(len(filler))]  # a realistically sized snapshot to write
    bigger = pd.concat([trained.scores, filler], ignore_index=True)

    ids_file, report_file, stop_file, started = (tmp_path / n for n in ("ids.json", "report.json", "stop", "started"))
    ids_file.write_text(json.dumps({"known": known[:500], "unknown": [f"ghost{i}" for i in range(50)]}))
    port = server.base.rsplit(":", 1)[1]
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_load_publish.py"), "drive", "--port", port,
            "--token", TOKEN, "--ids", str(ids_file), "--rate", str(LOAD_RATE), "--min-duration", str(LOAD_MIN_S),
            "--max-duration", str(LOAD_MAX_S), "--stop-file", str(stop_file), "--started-file", str(started),
            "--out", str(report_file)]
    driver = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not started.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the load generator did not start"
        time.sleep(1.5)  # load on the old snapshot first
        store = open_store(trained.store_path)
        try:
            meta = {"created_at": START + timedelta(days=53), "as_of": "2026-07-21T00:00:00+00:00",
                    "rows": len(bigger), "defaults": trained.defaults}
            new = store.publish([bigger.iloc[i : i + 10_000] for i in range(0, len(bigger), 10_000)], meta)
        finally:
            store.close()
        version = register(trained, bundle, x, names)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.anon.get("/readyz").json()["models"]["last_mile_buyer"] != version:
            time.sleep(0.25)
        swapped = server.anon.get("/readyz").json()["models"]["last_mile_buyer"]
        time.sleep(1.0)
        stop_file.touch()
        _out, err = driver.communicate(timeout=LOAD_MAX_S + 60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, err[-3000:]
    report = json.loads(report_file.read_text())
    print(f"\n/lookup at {LOAD_RATE}/s during publish + promotion: {bench.describe(report)}")
    assert swapped == version != before, (before, swapped, version)
    assert report["failed"] == 0, report["errors"]
    assert report["sent"] == report["ok"] >= LOAD_RATE * LOAD_MIN_S * 0.95
    assert report["elapsed_s"] < LOAD_MAX_S, "the promotion took too long to be seen while the load ran"
    assert set(report["snapshots"]) == {old, new.snapshot_id}, report["snapshots"]  # both, and nothing else
    assert report["achieved_rps"] >= LOAD_RATE * 0.9, report
