"""Benchmark: the nightly feature build from the kept state against a full build of the same night.

    python benchmarks/bench_incremental.py --events 100000000 --users 1000000

Writes ``--events`` synthetic events (400 days before ``AS_OF``) and one more day of ``--events / 100`` events. The
kept state at ``AS_OF`` is computed from all events at once and kept (``first_state_s``, timed apart: a one-off).
The timed night loads it, reads the new day's file, moves the state on a day and hands over the feature table
(``table_ready_s``), then keeps the moved state for the next night (``nightly_s`` with it; ``propensity score``
writes it while it scores). The same run then times ``build_features`` on both files at the next cutoff (the
baseline) and checks the two tables equal (every column; floats to 1e-9). ``--reuse`` keeps the files and the first
state between runs; ``--no-full`` times the night only. ``--nights N`` moves on N nights in a row, each in a process
of its own from the state the night before kept (``each_night``: the fresh runs grow night by night and are merged
into the main ones now and then); the last one is timed and compared as above.
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

from bench_features import AS_OF, child, next_day_events, peak_rss_mb, synthetic_events  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "incremental")
    parser.add_argument("--reuse", action="store_true",
                        help="Keep the files and the first state, and start from them when they are there.")
    parser.add_argument("--no-full", action="store_true", help="Time the night only (no baseline, no check).")
    parser.add_argument("--nights", type=int, default=1,
                        help="Move the state on this many nights, each from the state the last one kept (a day of "
                             "--events / 100 events each); the last night is compared with the full build.")
    parser.add_argument("--cold", action="store_true",
                        help="Empty the page cache before the night and before the full build (needs root).")
    args = parser.parse_args()

    from features.build.builder import build_features
    from features.incremental.nightly import start_state
    from features.spec.definition import FeatureSpec

    source = args.out / "events"
    n_new = max(args.events // 100, 1)
    next_cutoff = AS_OF + timedelta(days=args.nights)
    first_state_s = None
    if not (args.reuse and (args.out / "state" / "meta.json").exists()):
        if not (args.reuse and (source / "ingested-1.parquet").exists()):
            shutil.rmtree(args.out, ignore_errors=True)
            source.mkdir(parents=True)
            pq.write_table(synthetic_events(args.events, args.users, args.seed), source / "events.parquet",
                           row_group_size=1_000_000)
            pq.write_table(next_day_events(n_new, args.users, args.seed + 1), source / "ingested-1.parquet")
        t0 = time.perf_counter()
        start_state([source / "events.parquet"], AS_OF, FeatureSpec(), args.out / "state")
        first_state_s = time.perf_counter() - t0

    for night in range(2, args.nights + 1):  # later days' files, when asked for
        if not (source / f"ingested-{night}.parquet").exists():
            pq.write_table(next_day_events(n_new, args.users, args.seed + night, day=night - 1),
                           source / f"ingested-{night}.parquet")
    nights = [child(_child_night, str(args.out), night) for night in range(1, args.nights)]  # a process each
    cold = args.cold and _drop_caches()
    timed, table = _night(args.out, args.nights)  # the last night here, to compare its table
    nights.append(timed)
    kept = args.out / f"state-next-{args.nights}"
    nightly_s = sum(timed.values())
    table_ready_s = nightly_s - timed["save_state_s"]  # `propensity score` writes the state while it scores
    peak_mb = peak_rss_mb()

    worst, equal, full_s = 0.0, None, None
    if not args.no_full:
        cold = cold and _drop_caches()
        t0 = time.perf_counter()
        full = build_features(source, next_cutoff)
        full_s = time.perf_counter() - t0
        equal = list(full.columns) == list(table.columns) and len(full) == len(table)
        for name in full.columns if equal else ():
            a, b = full[name].to_numpy(), table[name].to_numpy()
            if a.dtype.kind == "f":
                same_nan = np.array_equal(np.isnan(a), np.isnan(b))
                diff = np.nanmax(np.abs(a - b) / np.maximum(1.0, np.abs(a)), initial=0.0)
                worst = max(worst, float(diff))
                equal &= same_nan and diff <= 1e-9
            else:
                equal &= a.tolist() == b.tolist()
    result = {
        "events": args.events, "users": len(table), "new_day_events": n_new, "cold_page_cache": bool(cold),
        "first_state_s": first_state_s and round(first_state_s, 1),
        **{k: round(v, 2) for k, v in timed.items()}, "table_ready_s": round(table_ready_s, 2),
        "table_ready_over_full": full_s and round(table_ready_s / full_s, 3), "nightly_s": round(nightly_s, 2),
        "full_build_s": full_s and round(full_s, 2), "nightly_over_full": full_s and round(nightly_s / full_s, 3),
        "state_mb": round(sum(f.stat().st_size for f in kept.rglob("*") if f.is_file()) / 2**20),
        "peak_rss_mb_before_full_build": round(peak_mb), "tables_equal": equal if equal is None else bool(equal),
        "worst_relative_float_difference": worst,
    }
    if args.nights > 1:
        result["each_night"] = [{"table_ready_s": round(sum(t.values()) - t["save_state_s"], 2),
                                 **{k: round(v, 2) for k, v in t.items()}} for t in nights]
    print(json.dumps(result, indent=2))
    for night in range(1, args.nights + 1):
        shutil.rmtree(args.out / f"state-next-{night}", ignore_errors=True)
    if not args.reuse:
        shutil.rmtree(args.out, ignore_errors=True)


def _night(out: Path, night: int) -> tuple[dict[str, float], object]:
    """Night ``night``: the state the night before kept (``out/state`` for the first), moved on with that night's
    file and kept in ``out/state-next-<night>``; the phases' times (s) and the feature table."""
    from features.incremental.build import advance_to
    from features.incremental.store import load_state, save_state
    from features.incremental.table import feature_frame

    timed = {}
    t0 = time.perf_counter()
    state = load_state(out / "state" if night == 1 else out / f"state-next-{night - 1}")
    timed["load_state_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    day = pq.read_table(out / "events" / f"ingested-{night}.parquet").to_pandas()
    timed["read_new_day_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    advance_to(state, day, AS_OF + timedelta(days=night))
    timed["advance_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = feature_frame(state)
    timed["feature_table_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    save_state(state, out / f"state-next-{night}")
    timed["save_state_s"] = time.perf_counter() - t0
    return timed, table


def _child_night(out: str, night: int, queue) -> None:
    queue.put(_night(Path(out), night)[0])


def _drop_caches() -> bool:
    """Write the dirty pages out and empty the page cache, so that both builds read their files from disk."""
    import os

    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


if __name__ == "__main__":
    main()
