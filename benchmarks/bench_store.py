"""Score store benchmark: publish time and lookup latency, SQLite and Redis, with same-run baselines.

    python benchmarks/bench_store.py --users 1000000 [--redis-url redis://...] [--json out.json]

Publishes the same synthetic score table (ten columns: two probabilities, ranks, segments, a list of
reason codes, model versions) twice into each backend (the second publish also prunes), then times
warm lookups of 1 and 100 random known ids. Baselines measured in the same run:

- ``encode only``: turning the chunks into JSON payloads, the floor of any publish;
- ``dict + json.dumps``: an in-memory dict of row dicts, encoding the rows per request;
- ``raw sqlite SELECT``: the same table read with one statement (same mmap set-up), without the snapshot
  pointer and read transaction;
- ``raw redis HMGET``: one HMGET on the snapshot hash, without the pointer check.

Without ``--redis-url`` a private ``redis-server`` from PATH is started on a free port (skipped if absent).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.store.base import encode_chunk
from serving.store.sqlite import SQLiteScoreStore, table_name

REASONS = np.array(["cart_24h", "fav_24h", "ad_click_3d", "repeat_cycle", "search_click", "views_7d", "price_drop"])


def make_chunks(users: int, chunk_rows: int, seed: int = 0) -> list[pd.DataFrame]:
    """Synthetic score table split into chunks (built once, reused by every publish)."""
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, users, chunk_rows):
        n = min(chunk_rows, users - start)
        picks = rng.integers(0, len(REASONS), size=(n, 3))
        n_reasons = rng.integers(0, 4, n)
        chunks.append(
            pd.DataFrame(
                {
                    "user_id": [f"u{i:09d}" for i in range(start, start + n)],
                    "p_buy": rng.random(n),
                    "p_lapse": rng.random(n),
                    "priority": rng.integers(1, 1_000_000, n),
                    "aipl": rng.choice(["A", "I", "P", "L"], n),
                    "stage": rng.choice(["new", "growth", "mature", "silent", "churned"], n),
                    "action": rng.choice(["retarget_ad", "coupon", "push", "none"], n),
                    "reasons": [list(REASONS[row[:k]]) for row, k in zip(picks, n_reasons, strict=False)],
                    "model_buy": "last_mile_buyer@champion:7",
                    "model_lapse": "lapse_risk@champion:4",
                }
            )
        )
    return chunks


def percentiles(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """p50/p99/mean latency in microseconds of ``fn`` (after a short warm-up)."""
    for _ in range(min(200, repeats)):
        fn()
    times = np.empty(repeats)
    clock = time.perf_counter_ns
    for i in range(repeats):
        t0 = clock()
        fn()
        times[i] = clock() - t0
    times /= 1000.0
    p50, p99 = np.percentile(times, [50, 99])
    return {"p50_us": float(p50), "p99_us": float(p99), "mean_us": float(times.mean())}


def id_sampler(users: int, k: int, seed: int) -> Callable[[], list[str]]:
    rng = np.random.default_rng(seed)
    pool = [[f"u{i:09d}" for i in rng.integers(0, users, k)] for _ in range(256)]
    state = {"i": 0}

    def next_ids() -> list[str]:
        state["i"] = (state["i"] + 1) % len(pool)
        return pool[state["i"]]

    return next_ids


def time_lookups(name: str, lookup: Callable[[list[str]], Any], users: int, repeats: int) -> list[dict[str, Any]]:
    out = []
    for k in (1, 100):
        ids = id_sampler(users, k, seed=k)
        stats = percentiles(lambda ids=ids: lookup(ids()), repeats)
        out.append({"what": name, "ids": k, **stats})
    return out


def meta(users: int, n: int) -> dict[str, Any]:
    return {"created_at": datetime(2026, 11, 24, 1, 2, n, tzinfo=UTC), "rows": users, "as_of": "2026-11-23"}


# ------------------------------------------------------------------------------------------ baselines
def bench_baselines(chunks: list[pd.DataFrame], users: int, repeats: int) -> tuple[list[dict], list[dict]]:
    t0, c0 = time.perf_counter(), time.process_time()
    for chunk in chunks:
        encode_chunk(chunk)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    publishes = [{"what": "encode only (baseline)", "seconds": wall, "cpu_seconds": cpu}]
    rows: dict[str, dict[str, Any]] = {}
    for chunk in chunks[: max(1, len(chunks) // 10)]:  # a tenth is enough for dict lookups
        for rec in chunk.to_dict("records"):
            rows[rec["user_id"]] = rec
    n_dict = len(rows)
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def dict_lookup(ids: list[str]) -> dict[str, str]:
        return {u: dumps(rows[u]) for u in ids if u in rows}

    lookups = time_lookups("dict + json.dumps (baseline)", dict_lookup, n_dict, repeats)
    rows.clear()
    return publishes, lookups


# ------------------------------------------------------------------------------------------ sqlite
def bench_sqlite(chunks: list[pd.DataFrame], users: int, repeats: int, workdir: Path) -> tuple[list, list, dict]:
    path = workdir / "scores.db"
    store = SQLiteScoreStore(path)
    publishes = []
    for n in (1, 2):
        t0, c0 = time.perf_counter(), time.process_time()
        info = store.publish(iter(chunks), meta(users, n))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        publishes.append({"what": f"sqlite publish #{n}", "seconds": wall, "cpu_seconds": cpu, "rows": info.rows})
    lookups = time_lookups("sqlite store.lookup", store.lookup, users, repeats)
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute(f"PRAGMA mmap_size = {2**30}")  # same read set-up as the store's reader connections
    table = table_name(info.snapshot_id)

    def raw_lookup(ids: list[str]) -> dict[str, str]:
        sql = f'SELECT user_id, payload FROM "{table}" WHERE user_id IN ({",".join("?" * len(ids))})'
        return dict(raw.execute(sql, ids))

    lookups += time_lookups("raw sqlite SELECT (baseline)", raw_lookup, users, repeats)
    raw.close()
    store.close()
    extra = {"sqlite_file_mb": round(path.stat().st_size / 2**20, 1)}
    return publishes, lookups, extra


# ------------------------------------------------------------------------------------------ redis
def start_redis(workdir: Path) -> tuple[str | None, subprocess.Popen | None]:
    binary = shutil.which("redis-server") or shutil.which("/usr/bin/redis-server")
    if binary is None:
        return None, None
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(workdir)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.05)
    proc.terminate()
    return None, None


def bench_redis(chunks: list[pd.DataFrame], users: int, repeats: int, url: str) -> tuple[list, list, dict]:
    import redis

    from serving.store.redis import RedisScoreStore

    prefix = f"bench-{os.getpid()}"
    store = RedisScoreStore(url, prefix=prefix)
    publishes = []
    for n in (1, 2):
        t0, c0 = time.perf_counter(), time.process_time()
        info = store.publish(iter(chunks), meta(users, n))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        publishes.append({"what": f"redis publish #{n}", "seconds": wall, "cpu_seconds": cpu, "rows": info.rows})
    lookups = time_lookups("redis store.lookup", store.lookup, users, repeats)
    raw = redis.Redis.from_url(url, decode_responses=True)
    key = f"{prefix}:data:{info.snapshot_id}"

    def raw_lookup(ids: list[str]) -> dict[str, str]:
        return {u: v for u, v in zip(ids, raw.hmget(key, ids), strict=False) if v is not None}

    lookups += time_lookups("raw redis HMGET (baseline)", raw_lookup, users, repeats)
    extra = {"redis_used_memory_mb": round(raw.info("memory")["used_memory"] / 2**20, 1)}
    for k in raw.keys(f"{prefix}:*"):
        raw.unlink(k)
    raw.close()
    store.close()
    try:
        import hiredis  # noqa: F401

        extra["redis_parser"] = "hiredis"
    except ImportError:
        extra["redis_parser"] = "python"
    return publishes, lookups, extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3000, help="lookups timed per case")
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting redis-server")
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    chunks = make_chunks(args.users, args.chunk_rows)
    print(f"generated {args.users:,} users in {time.perf_counter() - t0:.1f} s", flush=True)
    publishes, lookups = bench_baselines(chunks, args.users, args.repeats)
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        p, lk, ex = bench_sqlite(chunks, args.users, args.repeats, Path(tmp))
        publishes, lookups, extra = publishes + p, lookups + lk, {**extra, **ex}
        proc = None
        url = args.redis_url
        if not args.no_redis and url is None:
            url, proc = start_redis(Path(tmp))
            if url is None:
                print("redis-server not found: Redis skipped", flush=True)
        try:
            if url and not args.no_redis:
                p, lk, ex = bench_redis(chunks, args.users, args.repeats, url)
                publishes, lookups, extra = publishes + p, lookups + lk, {**extra, **ex}
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)

    print(f"\nusers={args.users:,}  python {platform.python_version()}  cpus={os.cpu_count()}  {extra}\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average at the end: {load:.1f} (wall times grow with other processes; CPU is this process only)\n")
    print("| publish | wall s | client CPU s | users/s (wall) |\n|---|---|---|---|")
    for r in publishes:
        print(f"| {r['what']} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {args.users / r['seconds']:,.0f} |")
    print("\n| lookup | ids | p50 (us) | p99 (us) | mean (us) |\n|---|---|---|---|---|")
    for r in lookups:
        print(f"| {r['what']} | {r['ids']} | {r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['mean_us']:.0f} |")
    if args.json:
        results = {"users": args.users, "publish": publishes, "lookup": lookups, **extra}
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
