"""Benchmark: the per-user event history fresh scores start from, against the batch's feature build.

    python benchmarks/bench_history.py --events 10000000 --users 200000

Synthetic canonical events (``bench_features.synthetic_events``, grouped by user as clean events are) are written
once to Parquet. The script then times, on the same file and in the same process: ``build_features`` at the
cutoff (the batch's own feature build: the same-run baseline) and ``write_history`` (what ``propensity score``
adds after publishing), the history's size on disk, and reading one user's events back from it (the lookup's
share of the work). Features of a sample of users computed from the history are checked equal to the build's.

The next night: ``--new-events`` events of the day after the cutoff (1% of ``--events`` by default) go to a second
file in the same folder, and the script times ``features.online.sources.keep_history`` extending the first history
with that file (what the next ``propensity score`` does) against writing the history of both files whole, and
checks the features of the sample at the next cutoff from the extended history against the build's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_features import AS_OF, next_day_events, synthetic_events  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--new-events", type=int, default=None, help="events of the next day (default: 1%%)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "history")
    args = parser.parse_args()

    from features.build.builder import build_features, default_connection
    from features.online.history import History
    from features.online.sources import keep_history

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    source = args.out / "clean"
    source.mkdir()
    path = source / "events.parquet"
    pq.write_table(synthetic_events(args.events, args.users, args.seed), path, row_group_size=1_000_000)
    con = default_connection()

    t0 = time.perf_counter()
    raw = build_features(path, AS_OF)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = keep_history(source, args.out / "online" / "night1", con=con).info
    history_s = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in (args.out / "online" / "night1").iterdir())

    history = History(args.out / "online" / "night1")
    rng = np.random.default_rng(args.seed)
    sample = sorted(rng.choice(raw.user_id.to_numpy(dtype=object), 2_000, replace=False))
    reads, worst = _read_and_check(history, sample, raw, AS_OF)
    night = _next_night(args, source, sample, con)
    result = {
        "events": info.events, "users": info.users, "feature_build_s": round(build_s, 2),
        "write_history_s": round(history_s, 2), "ratio_history_to_build": round(history_s / build_s, 2),
        "history_mb": round(size / 2**20, 1), "bytes_per_event": round(size / info.events, 1),
        "read_one_user_us_p50": round(float(np.percentile(reads, 50)) * 1e6, 1),
        "read_one_user_us_p99": round(float(np.percentile(reads, 99)) * 1e6, 1),
        "max_abs_diff_vs_build_on_2000_users": worst,
        **night,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(args.out, ignore_errors=True)


def _read_and_check(history, sample: list, raw, as_of) -> tuple[list[float], float]:
    """Seconds to read each sampled user's events from ``history``, and the largest difference between their
    features at ``as_of`` from the history and the build's table ``raw``."""
    from features.online.compute import online_feature_table

    reads = []
    for uid in sample:
        t = time.perf_counter()
        history.events(uid)
        reads.append(time.perf_counter() - t)
    live = online_feature_table(((u, history.events(u)) for u in sample), as_of)
    expected = raw[raw.user_id.isin(sample)].reset_index(drop=True)
    numeric = [c for c in live.columns if live[c].dtype.kind in "fi"]
    return reads, float(np.nanmax(np.abs(live[numeric].to_numpy(float) - expected[numeric].to_numpy(float))))


def _next_night(args: argparse.Namespace, source: Path, sample: list, con) -> dict:
    """Add a file of the next day's events to ``source``; time extending the first night's history with it
    against writing the history of both files whole; check the sample's features at the next cutoff."""
    from features.build.builder import build_features
    from features.online.history import History
    from features.online.sources import keep_history

    n_new = args.new_events if args.new_events is not None else max(args.events // 100, 1)
    pq.write_table(next_day_events(n_new, args.users, args.seed + 1), source / "ingested-1.parquet",
                   row_group_size=1_000_000)
    t0 = time.perf_counter()
    kept = keep_history(source, args.out / "online" / "night2", con=con)
    extend_s = time.perf_counter() - t0
    assert kept.base is not None and kept.added_events == n_new, kept
    t0 = time.perf_counter()
    whole = keep_history(source, args.out / "whole" / "night2", con=con)
    whole_s = time.perf_counter() - t0
    assert whole.base is None and whole.info.events == kept.info.events
    as_of = AS_OF + timedelta(days=1)
    history = History(args.out / "online" / "night2")
    reads, worst = _read_and_check(history, sample, build_features(source, as_of), as_of)
    return {
        "next_day_events": n_new, "extend_history_s": round(extend_s, 2),
        "write_whole_history_s": round(whole_s, 2), "ratio_extend_to_whole": round(extend_s / whole_s, 3),
        "extended_read_one_user_us_p50": round(float(np.percentile(reads, 50)) * 1e6, 1),
        "extended_read_one_user_us_p99": round(float(np.percentile(reads, 99)) * 1e6, 1),
        "next_cutoff_max_abs_diff_on_2000_users": worst,
    }


if __name__ == "__main__":
    main()
