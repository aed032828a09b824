"""Benchmark: the feature table on Spark local mode against DuckDB, same events, same run.

    python benchmarks/bench_spark.py --events 10000000

Synthetic canonical events (``bench_features.synthetic_events``, seeded) are written once to Parquet under
``benchmarks/out/``. Each engine then runs in its own child process on that file: DuckDB through
``build_features`` (+ ``write_features``), Spark through ``build_features_spark`` (Parquet partitioned by user
bucket). The Spark session start-up is timed apart from the feature build. The two outputs are compared column
by column (floats to 1e-9) before the ratio is printed; results go to ``benchmarks/out/bench_spark.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_features import AS_OF, child, synthetic_events

CLUSTER_NOTE = (
    "What a cluster changes: the same plan runs as parallel tasks over the event files and the user buckets, so "
    "the build time falls with executor cores until the input scan and the shuffle dominate, and memory is no "
    "longer bounded by one machine; the fixed cost (here {startup:.0f} s session start, plus planning and JIT "
    "warm-up inside the {spark:.0f} s) does not shrink, so Spark pays off only once the events outgrow DuckDB "
    "on one machine."
)


def run_duckdb(path: str, out: str, threads: int | None, queue: mp.Queue) -> None:
    from features.build.builder import build_features, duckdb_connection, write_features
    from features.spec.definition import FeatureSpec

    start = time.perf_counter()
    features = build_features(Path(path), AS_OF, con=duckdb_connection(threads=threads))
    write_features(features, Path(out), AS_OF, FeatureSpec())
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put({"seconds": seconds, "rows": len(features), "peak_rss_mb": rss})


def run_spark(path: str, out: str, master: str, memory: str, buckets: int, queue: mp.Queue) -> None:
    from features.build.spark import build_features_spark, session_of, spark_connection

    start = time.perf_counter()
    con = spark_connection(master, app_name="bench-spark", conf={
        "spark.driver.memory": memory, "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
    })
    session = session_of(con)
    session.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - start
    start = time.perf_counter()
    frame = build_features_spark(path, AS_OF, None, con, out_dir=out, n_buckets=buckets)
    seconds = time.perf_counter() - start
    rows = frame.count()
    jvm_rss = _jvm_peak_rss_mb(session)
    session.stop()
    queue.put({"seconds": seconds, "startup_seconds": startup, "rows": rows, "jvm_peak_rss_mb": jvm_rss})


def _jvm_peak_rss_mb(session) -> float | None:
    try:
        pid = session.sparkContext._gateway.proc.pid  # the local JVM launched by PySpark
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (AttributeError, OSError, ValueError):
        return None
    return None


def compare(duck_path: Path, spark_dir: Path) -> tuple[int, list[str]]:
    """(columns compared, columns that differ): ints and strings exactly, floats to 1e-9 absolute."""
    import pandas as pd

    from features.build.builder import finalize_features
    from features.spec.definition import FeatureSpec

    spec = FeatureSpec()
    a = pd.read_parquet(duck_path)
    b = finalize_features(pd.read_parquet(spark_dir), spec)
    if not a["user_id"].equals(b["user_id"]):
        return len(a.columns), ["user_id"]
    bad = []
    for name in a.columns:
        x, y = a[name], b[name]
        if pd.api.types.is_float_dtype(x):
            same = np.allclose(x.to_numpy(float), y.to_numpy(float), rtol=0, atol=1e-9, equal_nan=True)
        else:
            same = x.equals(y)
        if not same:
            bad.append(name)
    return len(a.columns), bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=None, help="default: events / 50")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g", help="local mode: the driver is also the executor")
    parser.add_argument("--buckets", type=int, default=8, help="user buckets (Parquet partitions) of the output")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: CPU count)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--keep", action="store_true", help="keep the generated events and both outputs")
    args = parser.parse_args()
    n_users = args.users or max(1, args.events // 50)
    args.out.mkdir(parents=True, exist_ok=True)
    events = args.out / f"bench_spark_events_{args.events}.parquet"
    duck_out = args.out / "bench_spark_duckdb.parquet"
    spark_out = args.out / "bench_spark_features"

    start = time.perf_counter()
    pq.write_table(synthetic_events(args.events, n_users, args.seed), events, row_group_size=1_000_000)
    print(f"generated {args.events:,} events for up to {n_users:,} users in {time.perf_counter() - start:.1f} s")

    load_before = os.getloadavg()[0]  # the machine may be shared: read the ratio with this in mind
    duck = child(run_duckdb, str(events), str(duck_out), args.threads)
    spark = child(run_spark, str(events), str(spark_out), args.master, args.driver_memory, args.buckets)
    n_cols, differing = compare(duck_out, spark_out)
    result = {
        "events": args.events,
        "load_avg_1m_before": round(load_before, 2),
        "users": duck["rows"],
        "master": args.master,
        "duckdb_seconds": round(duck["seconds"], 2),
        "duckdb_peak_rss_mb": round(duck["peak_rss_mb"]),
        "spark_startup_seconds": round(spark["startup_seconds"], 2),
        "spark_seconds": round(spark["seconds"], 2),
        "spark_jvm_peak_rss_mb": round(spark["jvm_peak_rss_mb"]) if spark["jvm_peak_rss_mb"] else None,
        "spark_over_duckdb": round(spark["seconds"] / duck["seconds"], 2),
        "spark_rows": spark["rows"],
        "columns_compared": n_cols,
        "columns_differing": differing,
    }
    for key, value in result.items():
        print(f"{key:>22}: {value:,}" if isinstance(value, int) else f"{key:>22}: {value}")
    print(CLUSTER_NOTE.format(startup=spark["startup_seconds"], spark=spark["seconds"]))
    (args.out / "bench_spark.json").write_text(json.dumps(result, indent=1))
    if not args.keep:
        events.unlink(missing_ok=True)
        duck_out.unlink(missing_ok=True)
        shutil.rmtree(spark_out, ignore_errors=True)
    if differing or spark["rows"] != duck["rows"]:
        raise SystemExit(f"Spark and DuckDB feature tables differ in {differing or 'row count'}")


if __name__ == "__main__":
    main()
