"""Benchmark: the nightly feature build from the kept state on Spark against a full Spark build of the same night.

    python benchmarks/bench_incremental_spark.py --events 10000000 --users 1000000

The events are those of ``bench_incremental.py`` (``--events`` over 400 days before ``AS_OF``, then one day of
``--events / 100``). The kept Spark state at ``AS_OF`` is computed from all events in ``--buckets`` user buckets
(``first_state_s``, a one-off). The timed night (``night_s``) is what ``propensity score --engine spark`` runs:
check the added file, move every bucket on in its Spark task, write the feature directory and switch the state to
the new generation. The same run then times ``build_features_spark`` on both files (the baseline) and checks the two
feature directories equal (every column; floats to 1e-9). Each phase runs in its own process and Spark session, as
each batch does (JIT warm-up included, session start-up timed apart). ``--reuse`` keeps the files and the first
state (the night runs on a hard-linked copy of it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_features import AS_OF, child, next_day_events, synthetic_events  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--buckets", type=int, default=8, help="user buckets of the kept state")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g", help="local mode: the driver is also the executor")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "incremental_spark")
    parser.add_argument("--reuse", action="store_true", help="Keep the files and the first state between runs.")
    parser.add_argument("--no-full", action="store_true", help="Time the night only (no baseline, no check).")
    args = parser.parse_args()

    from features.incremental.spark import CURRENT

    source, state = args.out / "events", args.out / "state"
    files = [source / "events.parquet", source / "ingested-1.parquet"]
    if not (args.reuse and files[1].exists()):
        shutil.rmtree(args.out, ignore_errors=True)
        source.mkdir(parents=True)
        pq.write_table(synthetic_events(args.events, args.users, args.seed), files[0], row_group_size=1_000_000)
        pq.write_table(next_day_events(max(args.events // 100, 1), args.users, args.seed + 1), files[1])
    session = (args.master, args.driver_memory)
    first = None
    if not (args.reuse and (state / CURRENT).exists()):
        shutil.rmtree(state, ignore_errors=True)
        first = child(_run, "first", session, [str(files[0])], str(state), args.buckets, "")
    night_state = args.out / "state-night"
    shutil.rmtree(night_state, ignore_errors=True)
    shutil.copytree(state, night_state, copy_function=os.link)  # the night leaves the kept files as they are
    night = child(_run, "night", session, [str(f) for f in files], str(night_state), args.buckets,
                  str(args.out / "features-night"))
    full, equal, worst = None, None, 0.0
    if not args.no_full:
        full = child(_run, "full", session, [str(source)], "", args.buckets, str(args.out / "features-full"))
        equal, worst = _compare(args.out / "features-full", args.out / "features-night")
    result = {
        "events": args.events, "users": args.users, "new_day_events": night["events"], "buckets": args.buckets,
        "master": args.master, "session_start_s": night["startup_s"],
        "first_state_s": first and first["seconds"], "night_s": night["seconds"],
        "full_build_s": full and full["seconds"],
        "night_over_full": full and round(night["seconds"] / full["seconds"], 3),
        "state_mb": round(sum(f.stat().st_size for f in night_state.rglob("*") if f.is_file()) / 2**20),
        "tables_equal": equal, "worst_relative_float_difference": worst,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(night_state, ignore_errors=True)
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)


def _run(what: str, session: tuple[str, str], paths: list[str], state: str, buckets: int, out: str, queue) -> None:
    """One timed phase in a fresh Spark session (as each ``propensity score`` has): ``first`` state, ``night`` or
    ``full`` build; puts ``{"seconds", "startup_s", "events"}`` on ``queue``."""
    from features.build.spark import build_features_spark, session_of, spark_connection
    from features.incremental.spark import kept_features_spark, start_state_spark
    from features.spec.definition import FeatureSpec

    t0 = time.perf_counter()
    master, memory = session
    con = spark_connection(master, app_name=f"bench-incremental-spark-{what}", conf={
        "spark.driver.memory": memory, "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1"})
    session_of(con).sparkContext.setLogLevel("ERROR")
    startup_s, events = time.perf_counter() - t0, None
    spec, t0 = FeatureSpec(), time.perf_counter()
    if what == "first":
        start_state_spark(con, Path(state), [Path(p) for p in paths], AS_OF, spec, n_buckets=buckets)
    elif what == "night":
        kept = kept_features_spark(con, Path(state), [Path(p) for p in paths], AS_OF + timedelta(days=1), spec, out)
        if isinstance(kept, str):
            raise SystemExit(f"the state could not be moved on: {kept}")
        events = kept.events
    else:
        build_features_spark(paths[0], AS_OF + timedelta(days=1), spec, con, out_dir=out, n_buckets=buckets)
    seconds = time.perf_counter() - t0
    session_of(con).stop()
    queue.put({"seconds": round(seconds, 2), "startup_s": round(startup_s, 1), "events": events})


def _compare(full_dir: Path, night_dir: Path) -> tuple[bool, float]:
    """Whether the two feature directories hold the same rows (every column; floats to 1e-9 relative), and the
    largest relative float difference."""
    full = pd.read_parquet(full_dir).sort_values("user_id", ignore_index=True)
    night = pd.read_parquet(night_dir).sort_values("user_id", ignore_index=True)
    equal, worst = list(full.columns) == list(night.columns) and len(full) == len(night), 0.0
    for name in full.columns if equal else ():
        a, b = full[name].to_numpy(), night[name].to_numpy()
        if a.dtype.kind == "f":
            diff = np.nanmax(np.abs(a - b) / np.maximum(1.0, np.abs(a)), initial=0.0)
            worst = max(worst, float(diff))
            equal &= np.array_equal(np.isnan(a), np.isnan(b)) and diff <= 1e-9
        else:
            equal &= a.tolist() == b.tolist()
    return bool(equal), worst


if __name__ == "__main__":
    main()
