"""``/lookup`` under open-loop load while a new snapshot is published and a new champion is promoted.

What it does (``main``):

1. trains two tiny models (the integration tests' helpers: 1,500 simulated users), registers and promotes them
   in a temp MLflow registry, pre-trains a second ``last_mile_buyer`` bundle, and publishes a snapshot of
   ``--users`` synthetic score records to a temp SQLite store;
2. starts the real service (``propensity.service.launch.serve_args``: ``bentoml serve``, one worker, champions
   followed in the registry every 2 s) on 127.0.0.1;
3. runs the load generator in its own process (``drive``, below) at ``--rate`` requests/s for ``--duration`` s;
   at ``--publish-at`` s it publishes a new snapshot of the same size, at ``--promote-at`` s it registers and
   promotes the new champion and waits until ``/readyz`` reports it;
4. prints latency percentiles overall and per phase (steady, publish, promotion), failed requests, and the
   snapshots the answers came from (``--out`` writes them as JSON).

The load generator (``drive``) is open-loop: request ``i`` is due at ``t0 + i / rate`` whatever the previous
ones did, and latency is measured from the due time, so queueing behind a slow answer counts. Requests go over
keep-alive connections opened on demand (not reused after 3 s idle); each answer is checked (status 200, the
asked user in ``results``, ``found`` true exactly for known users) and a request without a complete answer in
``--timeout`` s counts as failed. Nothing but the standard library is imported at module level, so the driver
starts fast; uvloop is used when installed.

Run from the project root::

    .venv/bin/python benchmarks/bench_load_publish.py --users 200000 --rate 500 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-load-token"
IDLE_REUSE_S = 3.0  # the server drops keep-alive connections idle for 5 s


# ------------------------------------------------------------------------------------------------ load generator
async def open_loop(
    port: int, token: str, known: list[str], unknown: list[str], *, rate: float, min_s: float, max_s: float,
    stop_file: Path | None = None, started_file: Path | None = None, timeout_s: float = 5.0,
    unknown_share: float = 0.1, seed: int = 1, max_conns: int = 512, fresh_seen: set[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Send one-user ``/lookup`` requests open-loop at ``rate``/s on 127.0.0.1:``port``.

    Runs at least ``min_s`` seconds, then until ``stop_file`` exists (immediately when None), at most ``max_s``;
    ``started_file`` is created just before the first request is sent.
    Returns the report: counts, errors by kind, latency percentiles in ms, ``snapshots`` (snapshot id -> answers)
    and ``samples`` ``[due offset s, latency ms]`` of each successful request. ``fresh_seen`` (optional) collects
    ``(user_id, scored_at)`` of every answer marked ``fresh``: its size is the number of distinct rescorings seen.
    """
    rng = random.Random(seed)
    pool: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
    samples: list[tuple[float, float]] = []
    errors: Counter[str] = Counter()
    snapshots: Counter[str] = Counter()
    open_conns = 0
    perf = time.perf_counter
    auth = f"Bearer {token}".encode()

    def request(uid: str) -> bytes:
        body = json.dumps({"user_ids": [uid]}).encode()
        return (b"POST /lookup HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: %s\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (auth, len(body), body))

    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> tuple[int, bytes]:
        writer.write(req)
        head = await reader.readuntil(b"\r\n\r\n")
        i = head.lower().find(b"content-length:")
        body = await reader.readexactly(int(head[i + 15 : head.index(b"\r\n", i)]))
        return int(head[9:12]), body

    async def one(uid: str, is_known: bool, due: float) -> None:
        nonlocal open_conns
        conn = None
        while pool:
            reader, writer, since = pool.pop()
            if perf() - since < IDLE_REUSE_S:
                conn = (reader, writer)
                break
            writer.close()
            open_conns -= 1
        try:
            if conn is None:
                if open_conns >= max_conns:
                    errors["too many open connections"] += 1
                    return
                open_conns += 1
                conn = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
            status, body = await asyncio.wait_for(exchange(*conn, request(uid)), timeout_s - (perf() - due))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            errors["timeout" if isinstance(exc, TimeoutError) else type(exc).__name__] += 1
            if conn is not None:
                open_conns -= 1
                conn[1].close()
            return
        latency_ms = (perf() - due) * 1000
        pool.append((conn[0], conn[1], perf()))
        if status != 200:
            errors[f"HTTP {status}: {body[:120].decode(errors='replace')}"] += 1
            return
        try:
            doc = json.loads(body)
            result = doc["results"][0]
            good = len(doc["results"]) == 1 and result["user_id"] == uid and result["found"] is is_known
        except (ValueError, KeyError, IndexError, TypeError):
            good = False
        if not good:
            errors[f"wrong answer: {body[:160].decode(errors='replace')}"] += 1
            return
        snapshots[doc["snapshot_id"]] += 1
        if fresh_seen is not None and result.get("fresh") is True:
            fresh_seen.add((uid, result["scored_at"]))
        samples.append((round(due - t0, 4), round(latency_ms, 3)))

    tasks: set[asyncio.Task[None]] = set()
    # The caller's long-lived objects (a benchmark's generated shop, models, setup) out of the collector's way: a
    # full collection of them paused this loop for 120-135 ms once per 10 s run of bench_fresh_lookup.py, at the
    # same point every time, which the open loop counted as the latency of the ~70 requests due meanwhile.
    gc.collect()
    gc.freeze()
    t0 = perf() + 0.05
    t0_epoch = time.time() + 0.05
    sent = 0
    if started_file is not None:
        started_file.touch()
    while True:
        due = t0 + sent / rate
        if due - t0 >= max_s or (due - t0 >= min_s and (stop_file is None or stop_file.exists())):
            break
        delay = due - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        is_known = rng.random() >= unknown_share
        uid = rng.choice(known) if is_known else rng.choice(unknown)
        task = asyncio.create_task(one(uid, is_known, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout_s + 5)
    elapsed = perf() - t0
    for _, writer, _ in pool:
        writer.close()
    errors["no answer at the end"] += sum(1 for t in tasks if not t.done())
    lat = sorted(ms for _, ms in samples)
    report = {"rate": rate, "sent": sent, "ok": len(samples), "failed": sent - len(samples),
              "errors": {k: v for k, v in errors.items() if v}, "elapsed_s": round(elapsed, 2),
              "achieved_rps": round(sent / elapsed, 1), "snapshots": dict(snapshots), **percentiles(lat),
              "t0_epoch": t0_epoch, "samples": samples}
    return report


def percentiles(sorted_ms: list[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of sorted latencies in ms (None when empty)."""

    def q(p: float) -> float | None:
        return round(sorted_ms[min(len(sorted_ms) - 1, int(p * len(sorted_ms)))], 2) if sorted_ms else None

    return {"p50_ms": q(0.50), "p95_ms": q(0.95), "p99_ms": q(0.99), "max_ms": q(1.0)}


def describe(report: dict[str, Any]) -> str:
    """One line: counts, achieved rate and latency percentiles of a :func:`open_loop` report."""
    return (f"sent {report['sent']}, failed {report['failed']}, {report['achieved_rps']} req/s achieved, "
            f"p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms, p99 {report['p99_ms']} ms, "
            f"max {report['max_ms']} ms, snapshots {report['snapshots']}")


def run_async(coro: Any) -> Any:
    """Run ``coro`` on uvloop when installed (a lighter load generator), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def drive(args: argparse.Namespace) -> int:
    """The ``drive`` command: run :func:`open_loop` and write its report (JSON) to ``--out``."""
    ids = json.loads(Path(args.ids).read_text())
    report = run_async(open_loop(
        args.port, args.token, ids["known"], ids.get("unknown") or ["nobody"], rate=args.rate,
        min_s=args.min_duration, max_s=args.max_duration, stop_file=Path(args.stop_file) if args.stop_file else None,
        started_file=Path(args.started_file) if args.started_file else None, timeout_s=args.timeout, seed=args.seed,
    ))  # fmt: skip
    Path(args.out).write_text(json.dumps(report))
    print(describe(report), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------ benchmark
def synthetic_scores(n: int, seed: int, prefix: str = "u") -> Any:
    """``n`` score records shaped like the batch output (about 400 bytes of JSON each), ids ``<prefix>%08d``."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    reasons = np.array(["days_since_last_view", "decay_browse", "event_count_15d", "cart_count_3d", "ad_count_7d"])
    picks = [list(reasons[rng.permutation(5)[:3]]) for _ in range(64)]
    return pd.DataFrame({
        "user_id": [f"{prefix}{i:08d}" for i in range(n)],
        "aipl_layer": rng.choice(["A", "I", "P", "L"], n),
        "lifecycle": rng.choice(["new", "growth", "mature", "silent", "churned"], n),
        "rfm_group": rng.choice(["champions", "at_risk", "new_customers", "no_purchase"], n),
        "rule_score": rng.random(n) * 5,
        "p_buy": rng.random(n),
        "reasons_buy": [picks[i % 64] for i in range(n)],
        "model_buy": "1",
        "p_lapse": rng.random(n),
        "reasons_lapse": [picks[(i * 7) % 64] for i in range(n)],
        "model_lapse": "1",
        "batch": f"seed{seed}",
    })  # fmt: skip


def publish(store_path: Path, frame: Any, created_at: Any) -> Any:
    from serving.store.base import open_store

    store = open_store(store_path)
    try:
        meta = {"created_at": created_at, "as_of": "2026-07-21T00:00:00+00:00", "rows": len(frame),
                "defaults": {"p_buy": 0.02, "p_lapse": 0.35, "aipl_layer": "none"}}
        return store.publish([frame.iloc[i : i + 50_000] for i in range(0, len(frame), 50_000)], meta)
    finally:
        store.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group of ``proc`` (a server started with ``start_new_session``), SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ready_models(port: int) -> dict[str, Any] | None:
    """The ``/readyz`` document's models when the server answers 200, else None."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return json.loads(r.read())["models"] if r.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def phase_stats(samples: list[list[float]], start: float, end: float) -> dict[str, Any]:
    lat = sorted(ms for due, ms in samples if start <= due < end)
    return {"window_s": [round(start, 1), round(end, 1)], "requests": len(lat), **percentiles(lat)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command")
    d = sub.add_parser("drive", help="only run the load generator against a running server")
    d.add_argument("--port", type=int, required=True)
    d.add_argument("--token", required=True)
    d.add_argument("--ids", required=True, help='JSON file {"known": [...], "unknown": [...]}')
    d.add_argument("--rate", type=float, default=500)
    d.add_argument("--min-duration", type=float, default=10.0)
    d.add_argument("--max-duration", type=float, default=60.0)
    d.add_argument("--stop-file", default=None, help="after --min-duration, stop once this file exists")
    d.add_argument("--started-file", default=None, help="created when the first request is about to be sent")
    d.add_argument("--timeout", type=float, default=5.0, help="seconds before a request counts as failed")
    d.add_argument("--seed", type=int, default=1)
    d.add_argument("--out", required=True)
    ap.add_argument("--users", type=int, default=200_000, help="users in each published snapshot")
    ap.add_argument("--rate", type=int, default=500, help="lookups per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    ap.add_argument("--publish-at", type=float, default=15.0, help="second of the load when the new snapshot starts")
    ap.add_argument("--promote-at", type=float, default=35.0, help="second of the load when the new champion starts")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.command == "drive":
        return drive(args)
    return run_benchmark(args)


def run_benchmark(args: argparse.Namespace) -> int:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    from datetime import UTC, datetime

    import pandas as pd

    from features.build.builder import build_features
    from features.simulate.shop import GeneratorConfig, generate
    from propensity.config import Settings
    from propensity.service.launch import serve_args
    from tests.integration.conftest import AS_OF, START, Trained, register, train_bundle

    with tempfile.TemporaryDirectory(prefix="bench-load-publish-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        data = generate(GeneratorConfig(n_users=1500, days=60, start=START, chunk_users=1500), work / "gen")
        events = pd.read_parquet(data.events_dir)
        raw = build_features(events, AS_OF)
        trained = Trained(root=work, events=events, raw=raw, tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                          artifact_root=work / "mlruns", store_path=work / "scores.sqlite")
        for i, target in enumerate(("last_mile_buyer", "lapse_risk")):
            register(trained, *train_bundle(target, raw, events, seed=11 + i))
        challenger = train_bundle("last_mile_buyer", raw, events, seed=99, rounds=8)
        first = synthetic_scores(args.users, seed=1)
        publish(trained.store_path, first, datetime(2026, 7, 21, 1, tzinfo=UTC))
        second = synthetic_scores(args.users, seed=2)
        print(f"set-up (models, registry, first snapshot) in {time.perf_counter() - t:.1f} s", flush=True)

        port = free_port()
        settings = Settings(store_path=trained.store_path, tracking_uri=trained.tracking_uri,
                            artifact_root=trained.artifact_root, serving={"api_token": TOKEN})
        argv, env = serve_args(settings, "127.0.0.1", port, 1, reload_interval_s=2.0)
        env["BENTOML_HOME"] = str(work / "bentoml-home")
        with open(work / "server.log", "wb") as log:
            server = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while (before := ready_models(port)) is None:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server not ready:\n{(work / 'server.log').read_text()[-3000:]}")
                time.sleep(0.3)
            ids = work / "ids.json"
            ids.write_text(json.dumps({"known": list(first["user_id"].iloc[:: max(1, args.users // 5000)]),
                                       "unknown": [f"ghost{i}" for i in range(100)]}))
            driver = [sys.executable, __file__, "drive", "--port", str(port), "--token", TOKEN, "--ids", str(ids)]
            subprocess.run([*driver, "--rate", "250", "--min-duration", "3", "--out", str(work / "warm.json")],
                           check=True, capture_output=True)  # warm-up
            load = subprocess.Popen([*driver, "--rate", str(args.rate), "--min-duration", str(args.duration),
                                     "--max-duration", str(args.duration), "--out", str(work / "load.json")],
                                    stdout=subprocess.DEVNULL)
            t0 = time.time()
            events_at: dict[str, float] = {}
            time.sleep(max(0.0, t0 + args.publish_at - time.time()))
            events_at["publish_start"] = time.time() - t0
            publish(trained.store_path, second, datetime(2026, 7, 22, 1, tzinfo=UTC))
            events_at["publish_end"] = time.time() - t0
            time.sleep(max(0.0, t0 + args.promote_at - time.time()))
            events_at["promote_start"] = time.time() - t0
            version = register(trained, *challenger)
            events_at["promote_registered"] = time.time() - t0
            while (models := ready_models(port)) is None or models["last_mile_buyer"] != version:
                if time.time() - t0 > args.duration + 30:
                    raise RuntimeError("the new champion was never loaded")
                time.sleep(0.1)
            events_at["promote_swapped"] = time.time() - t0
            if load.wait(timeout=args.duration + 120) != 0:
                raise RuntimeError("the load generator failed")
        finally:
            stop(server)
        report = json.loads((work / "load.json").read_text())

    shift = report["t0_epoch"] - t0  # the driver's clock starts a few ms after t0
    samples = [[due + shift, ms] for due, ms in report.pop("samples")]
    phases = {
        "steady (before the publish)": phase_stats(samples, 0.0, events_at["publish_start"]),
        "publish (start to end + 1 s)": phase_stats(samples, events_at["publish_start"], events_at["publish_end"] + 1),
        "promotion (register to swap + 2 s)": phase_stats(samples, events_at["promote_start"],
                                                          events_at["promote_swapped"] + 2),
        "whole run": phase_stats(samples, -1.0, 1e9),
    }
    print(f"\nPOST /lookup at {args.rate}/s for {args.duration:.0f} s, {args.users} users per snapshot, "
          f"champion {before['last_mile_buyer']} -> {version}")
    print(describe(report))
    print("| phase                               | requests | p50 ms | p95 ms | p99 ms |  max ms |")
    print("|-------------------------------------|----------|--------|--------|--------|---------|")
    for name, s in phases.items():
        print(f"| {name:<35} | {s['requests']:>8} | {s['p50_ms']:>6} | {s['p95_ms']:>6} | {s['p99_ms']:>6} | "
              f"{s['max_ms']:>7} |")
    print(f"events (s after the load started): { {k: round(v, 2) for k, v in events_at.items()} }")
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"users": args.users, "rate": args.rate, "duration_s": args.duration, "cpus": os.cpu_count(),
               "loadavg_1m_at_end": os.getloadavg()[0], "events_s": events_at, "phases": phases, "report": report,
               "champion": {"before": before["last_mile_buyer"], "after": version}}
        args.out.write_text(json.dumps(doc, indent=1))
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
