"""Open-loop latency of ``POST /lookup``: the BentoML service against a bare-uvicorn floor, on loopback.

What it does:

1. publishes a snapshot of ``--users`` synthetic score records to a temp SQLite store;
2. starts the real service (``propensity.service.launch.serve_args``: ``bentoml serve``, ``--workers`` processes)
   and, unless ``--no-floor``, the *floor*: the very same routes (:func:`serving.http.app.build_app`) on bare
   uvicorn, one process, access log off: the same store read without BentoML around it;
3. for each rate in ``--rates`` sends ``rate * --duration`` one-user lookups on an open-loop schedule
   (request ``i`` is due at ``t0 + i / rate`` whatever the previous ones did; latency is measured from the
   due time, so queueing behind a slow response counts) over keep-alive connections opened on demand (and not
   reused after 3 s idle, as the server drops them at 5 s), with raw
   asyncio sockets so the load generator stays light (it shares the machine's cores with the server; the
   generator is ``bench_load_publish.open_loop``, which also checks that every answer is for the right user);
4. prints p50/p95/p99/max latency, error counts and the server's CPU time per request (all its processes,
   user + system; a measure that stays meaningful when other work shares the cores) per server and rate
   (``--out`` also writes them as JSON).

Unknown users (``--unknown-share``) are mixed in, as the ad system asks about users never scored.

Run from the project root::

    .venv/bin/python benchmarks/bench_lookup.py --users 100000 --rates 100,500,1000 --duration 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_load_publish import free_port, open_loop, run_async, stop

TOKEN = "bench-token"


@dataclass
class Result:
    server: str
    rate: int
    sent: int
    ok: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    achieved_rps: float
    server_cpu_us_per_req: float
    error_kinds: dict[str, int]


# ------------------------------------------------------------------------------------------------ setup
def publish_snapshot(store_path: Path, n_users: int, seed: int = 7) -> list[str]:
    """Write ``n_users`` realistic score records (about 400 bytes of JSON each); returns their ids."""
    import numpy as np
    import pandas as pd

    from serving.store.base import open_store

    rng = np.random.default_rng(seed)
    ids = [f"u{i:08d}" for i in range(n_users)]
    reasons = ["days_since_last_view", "decay_browse", "event_count_15d", "cart_count_3d", "ad_count_7d"]
    frame = pd.DataFrame(
        {
            "user_id": ids,
            "aipl_layer": rng.choice(["A", "I", "P", "L"], n_users),
            "lifecycle": rng.choice(["new", "growth", "mature", "silent", "churned"], n_users),
            "rfm_group": rng.choice(["champions", "at_risk", "new_customers", "no_purchase"], n_users),
            "rule_score": rng.random(n_users) * 5,
            "p_buy": rng.random(n_users),
            "reasons_buy": [list(rng.choice(reasons, 3, replace=False)) for _ in range(n_users)],
            "model_buy": "3",
            "p_lapse": rng.random(n_users),
            "reasons_lapse": [list(rng.choice(reasons, 3, replace=False)) for _ in range(n_users)],
            "model_lapse": "2",
            "as_of": "2026-11-23T00:00:00+00:00",
        }
    )
    store = open_store(store_path)
    try:
        meta = {
            "created_at": datetime(2026, 11, 23, 1, tzinfo=UTC),
            "as_of": "2026-11-23T00:00:00+00:00",
            "rows": n_users,
            "defaults": {"p_buy": 0.02, "p_lapse": 0.35, "aipl_layer": "none"},
        }
        store.publish([frame], meta)
    finally:
        store.close()
    return ids


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} did not answer {path} within {timeout} s")


def start_service(store_path: Path, model_dir: Path, workers: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    from propensity.config import Settings
    from propensity.service.launch import serve_args

    port = free_port()
    settings = Settings(store_path=store_path, serving={"api_token": TOKEN})
    argv, env = serve_args(settings, "127.0.0.1", port, workers, model_dir=model_dir, reload_interval_s=30)
    env["BENTOML_HOME"] = str(log.parent / "bentoml-home")
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(port, "/healthz", proc)
    return proc, port


def start_floor(store_path: Path, model_dir: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [sys.executable, __file__, "--serve-floor", str(port), "--store", str(store_path),
            "--model-dir", str(model_dir)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(port, "/healthz", proc)
    return proc, port


def serve_floor(port: int, store_path: Path, model_dir: Path) -> None:
    """The floor server: the service's own routes on bare uvicorn, no BentoML."""
    import uvicorn

    from propensity.config import Settings
    from propensity.service.options import service_options
    from serving.http.app import AppState, build_app
    from serving.http.models import DirectorySource
    from serving.http.runtime import ServiceRuntime
    from serving.store.base import open_store

    options = service_options(Settings(serving={"api_token": TOKEN}), {})
    runtime = ServiceRuntime.create(options, lambda: open_store(store_path), DirectorySource(model_dir))
    uvicorn.run(build_app(AppState(runtime)), host="127.0.0.1", port=port, access_log=False, log_level="warning")


# ------------------------------------------------------------------------------------------------ load
def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and all its descendants."""
    import psutil

    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return total


def summarize(
    server: str, rate: int, sent: int, lat: list[float], errors: dict[str, int], elapsed: float, cpu_s: float
) -> Result:
    lat = sorted(lat)

    def q(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else float("nan")

    return Result(server, rate, sent, len(lat), sum(errors.values()), q(0.50), q(0.95), q(0.99),
                  round(lat[-1] * 1000, 2) if lat else float("nan"), round(sent / elapsed, 1),
                  round(cpu_s / sent * 1e6, 1), errors)


def bench(port: int, pid: int, name: str, ids: list[str], rates: list[int], duration: float,
          unknown: float) -> list[Result]:
    """Each rate for ``duration`` s with the shared open-loop generator (``bench_load_publish.open_loop``, which
    also checks every answer: the right user, ``found`` as expected)."""
    strangers = [f"x{i:08d}" for i in range(1000)]

    def run(rate: float, seconds: float, seed: int) -> dict[str, Any]:
        return run_async(open_loop(port, TOKEN, ids, strangers, rate=rate, min_s=seconds, max_s=seconds,
                                   unknown_share=unknown, seed=seed, max_conns=256))

    run(250, 2.0, 99)  # warm up
    results = []
    for rate in rates:
        cpu0 = tree_cpu_seconds(pid)
        report = run(rate, duration, rate)
        latencies = [ms / 1000 for _, ms in report["samples"]]
        errors = dict(report["errors"])
        results.append(summarize(name, rate, report["sent"], latencies, errors, report["elapsed_s"],
                                 tree_cpu_seconds(pid) - cpu0))
        print(format_row(results[-1]), flush=True)
        time.sleep(1.0)
    return results


def format_row(r: Result) -> str:
    return (f"| {r.server:<28} | {r.rate:>5} | {r.sent:>6} | {r.errors:>4} | {r.p50_ms:>7.2f} | {r.p95_ms:>7.2f} | "
            f"{r.p99_ms:>7.2f} | {r.max_ms:>8.2f} | {r.achieved_rps:>7.1f} | {r.server_cpu_us_per_req:>10.1f} |"
            + (f" {r.error_kinds}" if r.error_kinds else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=100_000, help="users in the published snapshot")
    ap.add_argument("--rates", default="100,500,1000", help="comma-separated request rates (req/s)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--workers", type=int, default=1, help="BentoML worker processes")
    ap.add_argument("--unknown-share", type=float, default=0.1, help="share of lookups for unknown users")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare-uvicorn floor")
    ap.add_argument("--model-dir", type=Path, default=None, help="pinned bundles to load (default: none)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--serve-floor", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_floor is not None:
        serve_floor(args.serve_floor, args.store, args.model_dir)
        return 0
    rates = [int(r) for r in args.rates.split(",") if r.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-lookup-") as tmp:
        work = Path(tmp)
        model_dir = args.model_dir or (work / "no-models")
        model_dir.mkdir(exist_ok=True)
        t = time.perf_counter()
        ids = publish_snapshot(work / "scores.sqlite", args.users)
        print(f"published {args.users} users in {time.perf_counter() - t:.1f} s", flush=True)
        print("| server                       |  rate |   sent | errs | p50 ms  | p95 ms  | p99 ms  |  max ms  "
              "|  rps    | cpu us/req |")
        print("|------------------------------|-------|--------|------|---------|---------|---------|----------|---------|------------|")
        results: list[Result] = []
        servers = [] if args.no_floor else [("floor: bare uvicorn", "floor")]
        servers.append((f"bentoml service, {args.workers} worker(s)", "service"))
        for name, kind in servers:
            log = work / f"{kind}.log"
            if kind == "floor":
                proc, port = start_floor(work / "scores.sqlite", model_dir, log)
            else:
                proc, port = start_service(work / "scores.sqlite", model_dir, args.workers, log)
            try:
                results += bench(port, proc.pid, name, ids, rates, args.duration, args.unknown_share)
            finally:
                stop(proc)
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            doc = {"users": args.users, "duration_s": args.duration, "workers": args.workers,
                   "cpus": os.cpu_count(), "loadavg_1m_at_end": os.getloadavg()[0],
                   "results": [asdict(r) for r in results]}
            args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
