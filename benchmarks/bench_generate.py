"""Throughput and peak memory of the behavior generator.

Usage: ``python benchmarks/bench_generate.py --users 150000 [--days 120] [--chunk-users 50000]
[--truth-paths 1] [--out DIR]``. Prints wall and CPU time, events/s and the peak resident set size
(``resource``); on a shared machine CPU time is the steadier number. Writes into a temporary
directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from features.simulate.shop import GeneratorConfig, generate


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=150_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--chunk-users", type=int, default=50_000)
    ap.add_argument("--truth-paths", type=int, default=GeneratorConfig.truth_paths)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-truth", action="store_true", help="skip the ground truth (to measure its share)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    config = GeneratorConfig(
        n_users=args.users,
        days=args.days,
        chunk_users=args.chunk_users,
        truth_paths=args.truth_paths,
        seed=args.seed,
        truth_cutoffs=() if args.no_truth else None,
    )
    rss_before = _peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0, c0 = time.perf_counter(), time.process_time()
        data = generate(config, out)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        size = sum(p.stat().st_size for p in data.events_dir.glob("*.parquet"))
    print(
        f"users={data.n_users} days={config.days} chunk_users={config.chunk_users} "
        f"truth_paths={config.truth_paths} cutoffs={len(data.cutoffs)}"
    )
    print(f"events={data.n_events} ({data.n_events / data.n_users:.1f} per user), parquet={size / 2**20:.0f} MiB")
    print(f"elapsed={elapsed:.1f} s (cpu {cpu:.1f} s)  events/s={data.n_events / elapsed:,.0f}")
    print(f"peak RSS={_peak_rss_mib():.0f} MiB (after imports: {rss_before:.0f} MiB)")


if __name__ == "__main__":
    main()
