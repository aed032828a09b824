"""Sustained ``POST /events`` ingestion against the real service on loopback, then count in = count in the history.

What it does:

1. starts the real service (``propensity.service.launch.serve_args``: ``bentoml serve``, one worker, no models, a
   temp data dir, so the event log is ``<tmp>/data/events/log.db``);
2. sends ``--rate`` events/s for ``--duration`` s on an open-loop schedule: a batch of ``--batch`` events is due
   every ``batch / rate`` seconds whatever the previous ones did (latency is measured from the due time, so
   queueing behind a slow answer counts), over keep-alive connections (httpx, at most 64 at once). The events
   are distinct (one user in 50,000, ts a millisecond apart, half of them with an ``event_id``); ``--resend-share``
   of the batches are sent a second time later, and must come back as duplicates;
3. stops the service, reopens the log and exports it into a clean history folder as the next batch would
   (``EventLog.export``), then counts: events acknowledged (the answers' ``accepted``), events in the log, rows of
   the exported Parquet parts read back through the feature builder's reader. ``lost`` is acknowledged minus stored:
   the target is 0, with the log count equal to the distinct events sent;
4. prints the latency percentiles per request, the rate achieved, the server's CPU time per event (its processes,
   user + system) and the counts (``--out`` also writes them as JSON). Exit code 1 when an event was lost or a
   request failed.

Run from the project root::

    .venv/bin/python benchmarks/bench_ingest.py --rate 5000 --duration 60 --batch 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_load_publish import free_port, stop
from bench_lookup import tree_cpu_seconds, wait_http

TOKEN = "bench-token"
BEHAVIORS = ("view", "view", "view", "fav", "cart", "buy", "visit")
CHANNELS = ("search", "recommend", "ad", None)


def batches(n_batches: int, size: int, seed: int = 7) -> list[bytes]:
    """``n_batches`` request bodies of ``size`` distinct events each (seeded), ts ending a minute before now."""
    import random

    rng = random.Random(seed)
    total = n_batches * size
    end = datetime.now(UTC) - timedelta(minutes=1)
    bodies = []
    for b in range(n_batches):
        events = []
        for k in range(size):
            i = b * size + k
            behavior = BEHAVIORS[rng.randrange(len(BEHAVIORS))]
            event: dict[str, Any] = {
                "user_id": f"u{rng.randrange(50_000):06d}",
                "ts": (end - timedelta(milliseconds=total - i)).isoformat(),
                "behavior": behavior,
                "item_id": f"i{rng.randrange(200_000)}",
                "category_id": f"c{rng.randrange(500)}",
            }
            channel = CHANNELS[rng.randrange(len(CHANNELS))]
            if channel is not None:
                event["channel"] = channel
            if behavior == "buy":
                event["amount"] = round(rng.uniform(5, 300), 2)
            if i % 2:
                event["event_id"] = f"bench-{i}"
            events.append(event)
        bodies.append(json.dumps({"events": events}).encode())
    return bodies


async def open_loop(port: int, bodies: list[bytes], plan: list[int], interval_s: float,
                    max_conns: int = 64) -> dict[str, Any]:
    """Send ``bodies[plan[j]]`` at ``t0 + j * interval_s``; returns latencies (ms) and the summed answers."""
    import httpx

    limits = httpx.Limits(max_connections=max_conns, max_keepalive_connections=max_conns, keepalive_expiry=3.0)
    headers = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    out: dict[str, Any] = {"latency_ms": [], "accepted": 0, "duplicates": 0, "errors": {}, "acked_batches": set()}

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits,
                                 timeout=30.0) as client:

        async def one(j: int, due: float) -> None:
            try:
                r = await client.post("/events", content=bodies[plan[j]])
            except httpx.HTTPError as exc:
                out["errors"][type(exc).__name__] = out["errors"].get(type(exc).__name__, 0) + 1
                return
            if r.status_code != 200:
                key = f"{r.status_code} {r.text[:80]}"
                out["errors"][key] = out["errors"].get(key, 0) + 1
                return
            out["latency_ms"].append((time.perf_counter() - due) * 1000)
            doc = r.json()
            out["accepted"] += doc["accepted"]
            out["duplicates"] += doc["duplicates"]
            out["acked_batches"].add(plan[j])

        t0 = time.perf_counter() + 0.05
        tasks = []
        for j in range(len(plan)):
            due = t0 + j * interval_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(j, due)))
        await asyncio.gather(*tasks)
        out["elapsed_s"] = time.perf_counter() - t0
    return out


def start_service(work: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    from propensity.config import Settings
    from propensity.service.launch import serve_args

    port = free_port()
    settings = Settings(data_dir=work / "data", store_path=work / "scores.sqlite", serving={"api_token": TOKEN})
    (work / "no-models").mkdir(exist_ok=True)
    argv, env = serve_args(settings, "127.0.0.1", port, 1, model_dir=work / "no-models", reload_interval_s=30)
    env["BENTOML_HOME"] = str(work / "bentoml-home")
    with open(work / "service.log", "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(port, "/healthz", proc)
    return proc, port, settings.events_log_path


def pct(sorted_ms: list[float], q: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 2) if sorted_ms else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=5000.0, help="events per second")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of sustained load")
    ap.add_argument("--batch", type=int, default=100, help="events per request")
    ap.add_argument("--resend-share", type=float, default=0.05, help="share of batches sent a second time")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    import random

    from features.build.builder import events_table
    from features.events.log import PART_GLOB, EventLog

    n_batches = int(round(args.rate * args.duration / args.batch))
    t = time.perf_counter()
    bodies = batches(n_batches, args.batch)
    rng = random.Random(11)
    resend = sorted(rng.sample(range(n_batches), int(n_batches * args.resend_share)))
    plan = list(range(n_batches))
    for b in resend:  # each resend some seconds after the original
        plan.insert(min(len(plan), plan.index(b) + rng.randint(50, 500)), b)
    print(f"built {n_batches:,} batches of {args.batch} events in {time.perf_counter() - t:.1f} s; "
          f"{len(resend):,} sent twice", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        proc, port, log_path = start_service(work)
        try:
            cpu0 = tree_cpu_seconds(proc.pid)
            run = asyncio.run(open_loop(port, bodies, plan, args.duration / len(plan)))
            cpu_s = tree_cpu_seconds(proc.pid) - cpu0
        finally:
            stop(proc)
        with EventLog(log_path) as log:
            stored = log.count()
            t = time.perf_counter()
            exported = log.export(work / "clean")
            export_s = time.perf_counter() - t
        parts = sorted((work / "clean").glob(PART_GLOB))
        history = events_table(work / "clean" / PART_GLOB).count().to_pyarrow().as_py() if parts else 0
    lat = sorted(run["latency_ms"])
    sent_events = n_batches * args.batch
    acked_events = len(run["acked_batches"]) * args.batch
    result = {
        "rate_events_s": args.rate, "duration_s": args.duration, "batch": args.batch,
        "requests": len(plan), "distinct_events_sent": sent_events, "resent_events": len(resend) * args.batch,
        "acknowledged_events": acked_events, "accepted": run["accepted"], "duplicates": run["duplicates"],
        "errors": run["errors"], "elapsed_s": round(run["elapsed_s"], 2),
        "achieved_events_s": round((len(plan) * args.batch) / run["elapsed_s"], 1),
        "p50_ms": pct(lat, 0.50), "p95_ms": pct(lat, 0.95), "p99_ms": pct(lat, 0.99),
        "max_ms": round(lat[-1], 2) if lat else float("nan"),
        "server_cpu_s": round(cpu_s, 2), "server_cpu_us_per_event": round(cpu_s / (len(plan) * args.batch) * 1e6, 1),
        "log_count": stored, "exported_rows": exported.rows if exported else 0, "export_s": round(export_s, 2),
        "history_rows": history, "parts": len(parts), "lost": acked_events - stored,
        "loadavg_1m_at_end": os.getloadavg()[0], "cpus": os.cpu_count(),
    }
    print("| events/s | s | batch | requests | p50 ms | p95 ms | p99 ms | max ms | achieved ev/s | "
          "server CPU us/event |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.rate:,.0f} | {args.duration:g} | {args.batch} | {len(plan):,} | {result['p50_ms']} | "
          f"{result['p95_ms']} | {result['p99_ms']} | {result['max_ms']} | {result['achieved_events_s']:,} | "
          f"{result['server_cpu_us_per_event']} |")
    print(f"acknowledged {acked_events:,} distinct events (accepted {run['accepted']:,}, duplicates "
          f"{run['duplicates']:,} of {len(resend) * args.batch:,} resent); errors {run['errors'] or 'none'}")
    print(f"event log {stored:,}; exported {result['exported_rows']:,} rows in {len(parts)} part(s) in "
          f"{export_s:.2f} s; history read back {history:,}; lost {result['lost']}")
    print(f"load average (1 min) at the end: {result['loadavg_1m_at_end']:.2f} on {os.cpu_count()} cores")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    ok = (result["lost"] == 0 and not run["errors"] and stored == sent_events == history
          and run["accepted"] == sent_events and run["duplicates"] == len(resend) * args.batch)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
