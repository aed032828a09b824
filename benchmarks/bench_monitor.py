"""Monitoring: backtests, drift and the MLflow run for several kept snapshots of a large audience.

    .venv/bin/python benchmarks/bench_monitor.py --users 1000000 [--snapshots 5] [--no-reference]

1. A synthetic shop of ``--users`` users over ``--days`` days (default 120): each user has a rate of events per day
   (Gamma, mean ``--rate``), events uniform in time (views, visits, favs, carts, buys with amounts, items and
   categories), about 60M events at 1M users, written as canonical Parquet. Not timed.
2. ``--snapshots`` audience files a week apart (the last one's lapse window closes before the end of the data): every
   user with an event before the cutoff, ``p_buy`` and (past buyers) ``p_lapse`` from the user's true rate with
   noise in log-odds, AIPL layer, lifecycle and an action. Not timed.
3. Both models trained on a small generated shop (``--train-users``, cached with ``bench_quality.py``) and
   registered in a private MLflow registry with training cutoffs inside the synthetic period, so the drift against
   the training reference rebuilds features for a seeded sample of ``monitoring.drift_users`` users.
4. Timed: ``serving.monitoring.job`` over the snapshots (records, labels and metrics per snapshot, the estimate,
   drift between consecutive snapshots and against the reference) and ``log_monitoring`` (one MLflow run).
   Target: 5 snapshots of 1M users <= 60 s. Same-run baseline: one DuckDB scan counting the events in every label
   window (the least any backtest must read).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench_quality import cpu_seconds, load_note, peak_rss_mib, temp_registry, trained_bundles
from bench_training import Stopwatch, instrumented

START = datetime(2026, 3, 1, tzinfo=UTC)
BEHAVIORS = np.array(["view", "visit", "fav", "cart", "buy"])
SHARES = np.array([0.78, 0.10, 0.04, 0.04, 0.04])


def make_events(users: int, days: int, rate: float, path: Path, seed: int = 7) -> np.ndarray:
    """Write the synthetic events to ``path`` (row groups of 5M); return each user's rate (events per day)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.5, rate / 0.5, users)
    ids = pa.array([f"u{i:08d}" for i in range(users)], pa.string())
    items = pa.array([f"i{i:05d}" for i in range(5000)], pa.string())
    cats = pa.array([f"c{i:02d}" for i in range(40)], pa.string())
    channels = pa.array(["search", "recommend", "ad", "other"], pa.string())
    writer = None
    step = max(1, 5_000_000 // max(1, int(rate * days)))
    for lo in range(0, users, step):
        hi = min(users, lo + step)
        counts = rng.poisson(lam[lo:hi] * days)
        user = np.repeat(np.arange(lo, hi, dtype=np.int32), counts)
        n = user.size
        ts = START.timestamp() * 1e6 + rng.random(n) * days * 86_400e6
        behavior = rng.choice(len(BEHAVIORS), n, p=SHARES)
        item = rng.integers(0, 5000, n).astype(np.int32)
        amount = np.where(behavior == 4, rng.gamma(2.0, 30.0, n), np.nan)
        table = pa.table({
            "user_id": pa.DictionaryArray.from_arrays(pa.array(user), ids).cast(pa.string()),
            "ts": pa.array(ts.astype(np.int64), pa.timestamp("us", tz="UTC")),
            "behavior": pa.array(BEHAVIORS[behavior], pa.string()),
            "item_id": pa.DictionaryArray.from_arrays(pa.array(item), items).cast(pa.string()),
            "category_id": pa.DictionaryArray.from_arrays(pa.array((item % 40).astype(np.int32)), cats).cast(
                pa.string()),
            "channel": pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, 4, n).astype(np.int32)), channels)
            .cast(pa.string()),
            "amount": pa.array(amount, pa.float64()),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    assert writer is not None
    writer.close()
    return lam


def make_records(path: Path, events: Path, as_of: datetime, lam: np.ndarray, seed: int) -> int:
    """An audience file at ``as_of``: users with an event before it; scores from the true rates with noise."""
    import duckdb

    con = duckdb.connect()
    seen = con.execute(
        f"SELECT user_id, max(behavior = 'buy')::INT AS buyer, max(ts) AS last FROM read_parquet('{events}') "
        f"WHERE ts < ?::TIMESTAMPTZ GROUP BY user_id", [as_of.isoformat()]).df()
    rng = np.random.default_rng(seed)
    idx = seen["user_id"].str[1:].astype(int).to_numpy()
    rate = lam[idx]
    noise = rng.normal(0, 0.3, len(idx))
    p_buy = 1 / (1 + np.exp(-(np.log(-np.expm1(-rate * SHARES[4] * 3) + 1e-9) + noise)))
    p_lapse = np.where(seen["buyer"].to_numpy() == 1, np.exp(-rate * 30) * 0.98 + 0.01, np.nan)
    age = (pd.Timestamp(as_of) - pd.to_datetime(seen["last"], utc=True)).dt.days.to_numpy()
    layer = np.where(seen["buyer"] == 1, "P", np.where(age <= 15, "A", "none"))
    action = np.where(p_lapse > 0.5, "win_back", np.where(p_buy > 0.05, "coupon_24h", "none"))
    pd.DataFrame({
        "user_id": seen["user_id"], "p_buy": p_buy, "p_lapse": p_lapse, "aipl_layer": layer,
        "lifecycle": np.where(age > 30, "silent", "growth"), "action": action, "model_buy": "1", "model_lapse": "1",
    }).to_parquet(path)
    return len(seen)


def register(registry: Any, bundles: dict[str, Any], cutoffs: dict[str, list[datetime]]) -> None:
    """Log both bundles as version 1 with training cutoffs inside the synthetic period."""
    for target, bundle in bundles.items():
        x = pd.DataFrame(np.zeros((2, len(bundle.feature_names))), columns=bundle.feature_names)
        params = {"cutoffs": [c.isoformat() for c in cutoffs[target]], "test_as_of": cutoffs[target][-1].isoformat(),
                  "horizon_days": 3, "lapse_days": 30}
        registry.log_challenger(bundle, params=params, metrics={"lightgbm": {"auc": 0.85, "ece": 0.01}}, plots={},
                                input_example=x)


def window_scan(events: Path, as_ofs: list[datetime]) -> float:
    """Seconds of one DuckDB pass counting the events inside every snapshot's 30-day window."""
    import duckdb

    con = duckdb.connect()
    t0 = time.perf_counter()
    for as_of in as_ofs:
        con.execute(f"SELECT count(*) FROM read_parquet('{events}') WHERE ts > ?::TIMESTAMPTZ AND ts <= "
                    "?::TIMESTAMPTZ + INTERVAL 30 DAY", [as_of.isoformat(), as_of.isoformat()]).fetchall()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--snapshots", type=int, default=5)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--rate", type=float, default=0.5, help="mean events per user and day")
    parser.add_argument("--train-users", type=int, default=20_000)
    parser.add_argument("--no-reference", action="store_true", help="skip the drift against the training reference")
    args = parser.parse_args(argv)

    from mlflow import MlflowClient

    import serving.monitoring.job as mon
    from serving.monitoring import load_version_bundle, log_monitoring, monitor
    from serving.settings import MonitoringSettings
    from serving.store.records import SnapshotInfo, new_snapshot_id
    from training.labels import LabelSpec

    end = START + timedelta(days=args.days)
    last = (end - timedelta(days=31)).replace(hour=0, minute=0, second=0, microsecond=0)
    as_ofs = [last - timedelta(days=7 * k) for k in range(args.snapshots - 1, -1, -1)]
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        lam = make_events(args.users, args.days, args.rate, work / "events.parquet")
        n_events = pq.ParquetFile(work / "events.parquet").metadata.num_rows
        infos = []
        for i, as_of in enumerate(as_ofs):
            path = work / f"audience_{i}.parquet"
            rows = make_records(path, work / "events.parquet", as_of, lam, seed=i)
            created = as_of + timedelta(hours=1)
            infos.append(SnapshotInfo(new_snapshot_id(created), created, rows, {
                "as_of": as_of.isoformat(), "audience_path": str(path),
                "models": {"last_mile_buyer": "1", "lapse_risk": "1"}}))
        print(f"setup: {n_events:,} events, {args.snapshots} snapshots of {infos[-1].rows:,} users in "
              f"{time.perf_counter() - t0:.1f} s")
        bundles = None if args.no_reference else trained_bundles(args.train_users)
        registry = temp_registry(work)  # after the training above: MLflow's tracking URI is process-wide
        if bundles is not None:
            ref = as_ofs[0] - timedelta(days=14)
            register(registry, bundles, {
                "last_mile_buyer": [ref - timedelta(days=4 * k) for k in (2, 1, 0)],
                "lapse_risk": [ref - timedelta(days=30 + 4 * k) for k in (2, 1, 0)]})
        settings = MonitoringSettings()
        watch = Stopwatch()
        points = [(mon, "read_snapshot_records", "read records"), (mon, "backtest", "backtest (labels + metrics)"),
                  (mon, "_consecutive", "drift between snapshots"), (mon, "_reference", "drift vs training reference"),
                  (mon, "version_facts", "registry lookups")]
        c0, w0 = cpu_seconds(), time.perf_counter()
        with instrumented(watch, points):
            report = monitor(
                infos, str(work / "events.parquet"), settings=settings, default_spec=LabelSpec(3, 30),
                events_end=end, events_start=START, history_start=START, checked_at=end,
                client=MlflowClient(registry.tracking_uri),
                load_bundle=None if args.no_reference else (
                    lambda t, v: load_version_bundle(registry.tracking_uri, t, v)),
                read_records=lambda info: mon.read_snapshot_records(info))  # resolved at call time: timed
        w1 = time.perf_counter()
        log_monitoring(report, registry.tracking_uri, artifact_root=work / "artifacts")
        logged = time.perf_counter() - w1
        wall, cpu = time.perf_counter() - w0, cpu_seconds() - c0
        scan = window_scan(work / "events.parquet", as_ofs)

    print("\n| part | wall s (CPU s) |\n|---|---|")
    for name in ("read records", "backtest (labels + metrics)", "drift between snapshots",
                 "drift vs training reference", "registry lookups"):
        print(f"| {name} ({watch.calls[name]} calls) | {watch.wall[name]:.1f} ({watch.cpu[name]:.1f}) |")
    print(f"| log_monitoring (MLflow run) | {logged:.1f} |")
    print(f"| **monitor + log total** | **{wall:.1f} ({cpu:.1f})** |")
    print(f"| baseline: one scan of every 30-day label window | {scan:.1f} |")
    print(f"\n{args.snapshots} snapshots x {args.users:,} users: {wall:.1f} s (target 5 x 1M <= 60 s); "
          f"{len(report.drift)} drift rows, "
          f"{len(report.findings)} findings; peak RSS {peak_rss_mib():,.0f} MiB; {load_note()}")
    for snap in report.snapshots:
        q = snap.targets["last_mile_buyer"]
        print(f"  {snap.snapshot_id} {q.status}: realized AUC {q.realized['auc'] if q.realized else float('nan'):.3f}"
              f", expected {q.expected['auc']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
