"""Fresh ``/lookup``: rescoring one user who has events newer than the served snapshot, in process and end to end.

    .venv/bin/python benchmarks/bench_fresh_lookup.py [--users 20000] [--rescore-users 300] [--rate 500]
        [--duration 10] [--workers 1] [--no-service | --no-rescore] [--save FILE | --compare FILE] [--profile FILE]
        [--batch-rows N] [--work DIR] [--out FILE]

1. Setup (the way the nightly batch leaves it): a generated shop of ``--users`` users (cached with
   ``bench_quality.make_shop``) and both champions trained on it (``bench_quality.trained_bundles``, cached); the
   feature table at the end of the data, ``serving.batch.run.run_batch`` publishing its scores to a temp SQLite
   store, and the per-user event history of that snapshot (``features.online.history.write_history``, log_seq 0).
2. In process: ``--rescore-users`` users each get one new event in a private event log
   (``features.events.log.EventLog``: a view, visit, fav, cart or purchase an hour after the snapshot), then
   ``serving.fresh.FreshScorer.rescore`` is timed for one user at a time (wall p50/p99/max per rescore and CPU per
   rescore over the whole loop, after a warm-up). The same users rescored in one call (a frame of all of them,
   the batch-sized path) must give byte-identical payloads: the one-row path is the batch's path.
   ``--save`` writes the payloads (JSON), ``--compare`` checks them byte for byte against a saved run, so an
   optimisation can be shown to change no output.
3. End to end (unless ``--no-service``): the real service (``propensity.service.launch.serve_args``,
   ``--workers`` processes, the bundles pinned with ``model_dir``) on 127.0.0.1; a new event for each of the
   ``--rescore-users`` users is posted to ``POST /events`` (one request), then ``/lookup`` is driven open loop at
   ``--rate`` req/s for ``--duration`` s (``bench_load_publish.open_loop``: latency from each request's due time,
   every answer checked) twice: once over users without new events (the stored row: the same-run baseline) and
   once over the users with a new event (each answer a rescoring: ``fresh: true``, checked on one lookup per user
   afterwards). Printed: p50/p95/p99/max ms, errors and the server's CPU time per request (all its processes).
4. With ``--batch-rows N``: the batch's side of the same functions, ``score_chunks`` over N rows (the feature
   table repeated), without and with reasons, twice each (wall and CPU seconds): making one user cheap must not
   make a million users slower.

Same-run baseline: the stored-row ``/lookup`` at the same rate on the same server. ``--work DIR`` keeps the setup
for the next run (and lets the same runs be repeated on another checkout of the code, for a before/after).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "benchmarks"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench_load_publish import free_port, open_loop, run_async, stop
from bench_lookup import format_row, summarize, tree_cpu_seconds, wait_http
from bench_quality import CACHE, bundle_dir, load_note, make_shop, trained_bundles

TOKEN = "bench-fresh-token"
BEHAVIORS = ("view", "visit", "fav", "cart", "buy")


def prepare(work: Path, users: int) -> dict[str, Any]:
    """Shop, champions, published snapshot and its event history under ``work`` (reused when ``work`` already
    holds them: ``setup.json``); returns what the runs need."""
    from features.build.builder import build_features, events_table
    from features.online.history import write_history
    from serving.activation.actions import ActivationConfig
    from serving.batch.run import run_batch
    from serving.fresh import LOG_SEQ_KEY
    from serving.store.base import open_store

    t0 = time.perf_counter()
    shop = make_shop(users, truth=False)
    bundles = trained_bundles(users)
    done = work / "setup.json"
    if done.is_file():
        doc = json.loads(done.read_text())
        if doc["users"] == users:
            print(f"setup reused from {work}: snapshot {doc['snapshot_id']}", flush=True)
            return {"bundles": bundles, "as_of": datetime.fromisoformat(doc["as_of"]), "user_ids": doc["user_ids"],
                    "snapshot_id": doc["snapshot_id"], "bundle_dir": bundle_dir(users, 120, 7, 30, CACHE),
                    "users": users}
    spec = next(iter(bundles.values())).spec
    as_of = shop.end
    raw = build_features(shop.events_dir, as_of, spec)
    store = open_store(work / "scores.sqlite")
    try:
        result = run_batch(None, as_of, bundles, store, work / "audience.parquet", activation=ActivationConfig(),
                           created_at=as_of + timedelta(hours=1), features=raw)
    finally:
        store.close()
    assert result.snapshot is not None
    snapshot_id = result.snapshot.snapshot_id
    events = events_table(shop.events_dir)
    write_history(events.filter(events.ts < as_of), work / "data" / "online" / snapshot_id, **{LOG_SEQ_KEY: 0})
    print(f"setup: {shop.users} users, {shop.events:,} events, snapshot {snapshot_id} of {result.users} users, "
          f"history written ({time.perf_counter() - t0:.1f} s)", flush=True)
    user_ids = raw.user_id.astype(str).tolist()
    done.write_text(json.dumps({"users": users, "as_of": as_of.isoformat(), "snapshot_id": snapshot_id,
                                "user_ids": user_ids}))
    return {"bundles": bundles, "as_of": as_of, "user_ids": user_ids, "snapshot_id": snapshot_id,
            "bundle_dir": bundle_dir(users, 120, 7, 30, CACHE), "users": users}


def new_events(user_ids: list[str], at: datetime, seed: int = 5) -> list[dict[str, Any]]:
    """One event per user at ``at`` (+ i ms; ``ts`` a datetime), behaviors drawn at random so every activation rule
    gets exercised."""
    rng = np.random.default_rng(seed)
    out = []
    for i, uid in enumerate(user_ids):
        behavior = BEHAVIORS[int(rng.integers(len(BEHAVIORS)))]
        out.append({
            "user_id": uid, "ts": at + timedelta(milliseconds=i), "behavior": behavior,
            "item_id": f"fresh-item-{i % 50}", "category_id": f"fresh-cat-{i % 7}",
            "channel": "ad" if i % 3 == 0 else "search", "amount": 42.5 if behavior == "buy" else None,
        })
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def in_process(setup: dict[str, Any], work: Path, n_users: int, args: argparse.Namespace) -> dict[str, Any]:
    """Time ``FreshScorer.rescore`` for one user at a time; check the one-row payloads against the all-rows call."""
    from features.events.log import EventLog
    from serving.activation.actions import ActivationConfig
    from serving.fresh import FreshScorer

    rng = np.random.default_rng(11)
    users = sorted(rng.choice(np.array(setup["user_ids"], dtype=object), n_users, replace=False).tolist())
    as_of, bundles, snapshot_id = setup["as_of"], setup["bundles"], setup["snapshot_id"]
    for old in work.glob("micro-log.db*"):
        old.unlink()
    log = EventLog(work / "micro-log.db")
    try:
        log.append_records(new_events(users, as_of + timedelta(hours=1)))
        scorer = FreshScorer(log, work / "data" / "online", ActivationConfig())
        now = as_of + timedelta(hours=2)
        warm = users[: min(20, len(users))]
        for uid in warm:
            scorer.rescore([uid], snapshot_id, bundles, now)
        wall: list[float] = []
        profiler = cProfile.Profile() if args.profile else None
        c0 = time.process_time()
        t_all = time.perf_counter()
        for i, uid in enumerate(users):  # each lookup at its own time, as the service's clock gives it
            at = now + timedelta(milliseconds=i)
            t = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            got = scorer.rescore([uid], snapshot_id, bundles, at)
            if profiler is not None:
                profiler.disable()
            wall.append(time.perf_counter() - t)
            assert list(got) == [uid]
        elapsed = time.perf_counter() - t_all
        cpu = time.process_time() - c0
        if profiler is not None:
            profiler.dump_stats(args.profile)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        one: dict[str, str] = {}  # the checks: every user alone and all together, at one time
        for uid in users:
            one.update(scorer.rescore([uid], snapshot_id, bundles, now))
        together = scorer.rescore(users, snapshot_id, bundles, now)
    finally:
        log.close()
    assert sorted(one) == users, "every user with a new event must be rescored"
    differ = [u for u in users if one[u] != together[u]]
    ms = [w * 1000 for w in wall]
    doc = {"users": len(users), "p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "max_ms": max(ms),
           "mean_ms": float(np.mean(ms)), "cpu_ms_per_rescore": cpu / len(users) * 1000,
           "rescores_per_s": len(users) / elapsed, "one_row_vs_all_rows_differ": len(differ)}
    print(f"rescore one user ({len(users)} users, after {len(warm)} warm-up): p50 {doc['p50_ms']:.2f} ms, "
          f"p99 {doc['p99_ms']:.2f} ms, max {doc['max_ms']:.2f} ms, mean {doc['mean_ms']:.2f} ms, "
          f"CPU {doc['cpu_ms_per_rescore']:.2f} ms per rescore; one-row payloads differing from the all-rows call: "
          f"{len(differ)}", flush=True)
    if differ:
        print(f"  first difference ({differ[0]}):\n  one row  {one[differ[0]]}\n  all rows {together[differ[0]]}")
    if args.save:
        args.save.write_text(json.dumps(one, indent=0, sort_keys=True))
        print(f"payloads written to {args.save}")
    if args.compare:
        saved = json.loads(args.compare.read_text())
        changed = [u for u in users if saved.get(u) != one[u]]
        doc["changed_vs_saved"] = len(changed)
        print(f"payloads differing from {args.compare}: {len(changed)} of {len(users)}")
        for u in changed[:3]:
            print(f"  {u}\n  saved {saved.get(u)}\n  now   {one[u]}")
    return doc


def batch_timing(setup: dict[str, Any], rows: int) -> dict[str, Any]:
    """The batch's side of the shared code: ``score_chunks`` over ``rows`` rows (the shop's feature table repeated,
    user ids made unique; chunks of 200,000 as ``run_batch``), without and with reasons (best-profit audiences),
    twice each; wall and CPU seconds of each run."""
    import pandas as pd

    from features.build.builder import build_features
    from serving.activation.actions import ActivationConfig
    from serving.batch.run import score_chunks

    bundles, as_of = setup["bundles"], setup["as_of"]
    shop = make_shop(setup["users"], truth=False)
    raw = build_features(shop.events_dir, as_of, next(iter(bundles.values())).spec)
    copies = max(1, -(-rows // len(raw)))
    big = pd.concat([raw.assign(user_id=raw["user_id"] + f"-{i}") for i in range(copies)], ignore_index=True)
    big = big.iloc[:rows].reset_index(drop=True)
    now = as_of + timedelta(hours=5)
    runs = []
    for reasons in (False, True, False, True):
        t, c = time.perf_counter(), time.process_time()
        n = sum(len(chunk) for chunk in score_chunks(big, bundles, now, ActivationConfig(), 200_000, reasons))
        runs.append({"reasons": reasons, "rows": n, "wall_s": round(time.perf_counter() - t, 3),
                     "cpu_s": round(time.process_time() - c, 3)})
        print(f"score_chunks over {n:,} rows, reasons={reasons}: {runs[-1]['wall_s']:.2f} s wall, "
              f"{runs[-1]['cpu_s']:.2f} s CPU", flush=True)
    return {"runs": runs}


def start_service(
    setup: dict[str, Any], work: Path, log_path: Path, workers: int, ttl_s: float = 0.0
) -> tuple[subprocess.Popen[bytes], int]:
    from propensity.config import Settings
    from propensity.service.launch import serve_args

    port = free_port()
    settings = Settings(data_dir=work / "data", store_path=work / "scores.sqlite",
                        serving={"api_token": TOKEN, "fresh_ttl_s": ttl_s},
                        tracking_uri=f"sqlite:///{work / 'mlflow.db'}", artifact_root=work / "mlruns")
    argv, env = serve_args(settings, "127.0.0.1", port, workers, model_dir=setup["bundle_dir"], reload_interval_s=30)
    env["BENTOML_HOME"] = str(work / "bentoml-home")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(port, "/readyz", proc)
    return proc, port


def post_events(client: Any, events: list[dict[str, Any]]) -> None:
    body = [{k: v.isoformat() if k == "ts" else v for k, v in e.items() if v is not None} for e in events]
    r = client.post("/events", json={"events": body})
    assert r.status_code == 200, r.text[:400]


class EventStream:
    """Posts one new event per request to ``POST /events`` at ``rate``/s for random users of ``user_ids`` in a
    thread (users acting while they are looked up: each event makes that user's next lookup a rescoring)."""

    def __init__(self, port: int, user_ids: list[str], rate: float, seed: int = 31) -> None:
        import threading

        self.port, self.user_ids, self.rate, self.sent = port, user_ids, rate, 0
        self.rng = np.random.default_rng(seed)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import httpx

        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30.0,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            t0 = time.perf_counter()
            while not self.done.is_set():
                delay = t0 + self.sent / self.rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                uid = self.user_ids[int(self.rng.integers(len(self.user_ids)))]
                post_events(client, new_events([uid], datetime.now(UTC), seed=self.sent))
                self.sent += 1

    def __enter__(self) -> EventStream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


def end_to_end(setup: dict[str, Any], work: Path, n_users: int, rate: int, duration: float, workers: int,
               ttl_s: float, event_rate: float) -> list[Any]:
    """Stored-row and fresh ``/lookup`` open loop at ``rate`` on the real service started with ``fresh_ttl_s``
    ``ttl_s``: once over users without new events, once over users with one, and (``event_rate`` > 0) once more
    while new events for those users arrive at ``event_rate``/s; returns the results."""
    import httpx

    all_ids = np.array(setup["user_ids"], dtype=object)
    rng = np.random.default_rng(23)
    chosen = rng.choice(all_ids, 2 * n_users, replace=False).tolist()
    fresh_ids, stored_ids = chosen[:n_users], chosen[n_users:]
    log_path = work / "service.log"
    shutil.rmtree(work / "data" / "events", ignore_errors=True)  # the service's event log: only this run's events
    proc, port = start_service(setup, work, log_path, workers, ttl_s)
    results = []
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        post_events(client, new_events(fresh_ids, datetime.now(UTC) - timedelta(seconds=2)))

        def run(ids: list[str], seconds: float, seed: int, seen: set[tuple[str, str]] | None = None) -> dict[str, Any]:
            return run_async(open_loop(port, TOKEN, ids, ["nobody"], rate=rate, min_s=seconds, max_s=seconds,
                                       unknown_share=0.0, seed=seed, max_conns=256, fresh_seen=seen))

        run(stored_ids, 2.0, 1)  # warm up the routes and the store
        for uid in fresh_ids[:20]:  # and the rescoring path (history maps, models)
            client.post("/lookup", json={"user_ids": [uid]})
        print(f"service: {workers} worker(s), fresh_ttl_s {ttl_s:g}")
        print("| lookup                         |  rate |   sent | errs | p50 ms  | p95 ms  | p99 ms  |  max ms  "
              "|  rps    | cpu us/req | rescored |")
        print("|--------------------------------|-------|--------|------|---------|---------|---------|----------|"
              "---------|------------|----------|")
        runs = [("stored row (baseline)", stored_ids, 2, 0.0), (f"fresh, ttl {ttl_s:g} s", fresh_ids, 3, 0.0)]
        if event_rate > 0:
            runs.append((f"fresh, ttl {ttl_s:g} s, {event_rate:g} ev/s", fresh_ids, 4, event_rate))
        for name, ids, seed, events_per_s in runs:
            time.sleep(1.0)
            seen: set[tuple[str, str]] = set()
            cpu0 = tree_cpu_seconds(proc.pid)
            if events_per_s > 0:
                with EventStream(port, ids, events_per_s) as stream:
                    report = run(ids, duration, seed, seen)
                name = f"{name} ({stream.sent} sent)"
            else:
                report = run(ids, duration, seed, seen)
            res = summarize(name, rate, report["sent"], [ms / 1000 for _, ms in report["samples"]],
                            dict(report["errors"]), report["elapsed_s"], tree_cpu_seconds(proc.pid) - cpu0)
            res.rescored = len(seen)  # distinct (user, scored_at) among the answers: rescorings seen by the client
            results.append(res)
            row = format_row(res).replace(f"| {name:<28} ", f"| {name:<30} ")
            print(f"{row} {len(seen):>8} |", flush=True)
        fresh_answers = 0
        for uid in fresh_ids:
            doc = client.post("/lookup", json={"user_ids": [uid]}).json()
            fresh_answers += int(doc["results"][0].get("fresh") is True)
        print(f"users with a new event answered fresh: {fresh_answers} of {len(fresh_ids)}")
        client.close()
    except Exception:
        print(log_path.read_text(errors="replace")[-3000:])
        raise
    finally:
        stop(proc)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=20_000, help="users in the generated shop (and the snapshot)")
    ap.add_argument("--rescore-users", type=int, default=300, help="users given a new event")
    ap.add_argument("--rate", type=int, default=500, help="open-loop /lookup rate (req/s)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per open-loop run")
    ap.add_argument("--workers", type=int, default=1, help="service worker processes")
    ap.add_argument("--ttl", type=float, nargs="+", default=[0.0],
                    help="serving.fresh_ttl_s values to run the service with (one service start each; 0: every "
                         "lookup of a user with a new event rescores)")
    ap.add_argument("--event-rate", type=float, default=0.0,
                    help="also run the fresh lookups while new events for those users arrive at this rate (ev/s)")
    ap.add_argument("--no-service", action="store_true", help="only the in-process rescoring")
    ap.add_argument("--no-rescore", action="store_true", help="only the service (skip the in-process timing)")
    ap.add_argument("--batch-rows", type=int, default=0,
                    help="also time score_chunks over this many rows (the batch's side of the shared code)")
    ap.add_argument("--save", type=Path, default=None, help="write the one-user payloads here (JSON)")
    ap.add_argument("--compare", type=Path, default=None, help="check the payloads against a --save file")
    ap.add_argument("--profile", type=Path, default=None, help="cProfile the timed rescorings into this file")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep the setup (store, history) here and reuse it on the next run (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-fresh-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        setup = prepare(work, args.users)
        doc: dict[str, Any] = {"users": args.users, "cpus": os.cpu_count(), "load_at_start": load_note()}
        if not args.no_rescore:
            doc["rescore"] = in_process(setup, work, args.rescore_users, args)
        if args.batch_rows:
            doc["batch"] = batch_timing(setup, args.batch_rows)
        if not args.no_service:
            doc["service"] = []
            for ttl in args.ttl:
                rows = [r.__dict__ for r in end_to_end(setup, work, args.rescore_users, args.rate, args.duration,
                                                        args.workers, ttl, args.event_rate)]
                doc["service"].append({"ttl_s": ttl, "runs": rows})
                base = rows[0]
                for fresh in rows[1:]:
                    if base["p99_ms"] and fresh["p99_ms"]:
                        print(f"{fresh['server']}: p99 {fresh['p99_ms'] / base['p99_ms']:.2f}x the stored rows', "
                              f"server CPU per request "
                              f"{fresh['server_cpu_us_per_req'] / base['server_cpu_us_per_req']:.1f}x")
        doc["load_at_end"] = load_note()
        print(doc["load_at_end"])
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
