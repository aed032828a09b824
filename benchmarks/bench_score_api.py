"""Benchmark: ``/score``'s feature path (the online execution of the spec) against ``build_features`` on DuckDB.

    make demo && .venv/bin/python benchmarks/bench_score_api.py [--users 60]

Uses the demo's clean events and champions (run ``make demo`` first). For each of ``--users`` random users, one at a
time, it times ``serving.http.runtime._score`` (what ``POST /score`` runs: online features, then
``score_features``) and ``serving.scoring.score_events`` (DuckDB features, then the same scoring) on that user's
events at the last event time, skips 5 warm-up users, prints p50/p99 of each and checks that both give the same
p_buy and p_lapse (to 1e-9).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from propensity.cli.serving import registry
    from propensity.config import load_settings
    from serving.http.runtime import _score
    from serving.scoring import score_events
    from training.job import load_champions

    cfg = load_settings()
    bundles = load_champions(registry(cfg))
    events = pd.read_parquet(cfg.clean_dir / "events.parquet")
    as_of = events.ts.max().to_pydatetime()
    users = events.user_id.drop_duplicates().sample(args.users, random_state=args.seed).tolist()
    times: dict[str, list[float]] = {"online": [], "duckdb": []}
    worst = 0.0
    for uid in users:
        part = events[events.user_id == uid].reset_index(drop=True)
        outs = {}
        for name, fn in (("online", _score), ("duckdb", score_events)):
            t = time.perf_counter()
            outs[name] = fn(part, as_of, bundles)
            times[name].append(time.perf_counter() - t)
        for col in ("p_buy", "p_lapse"):
            a, b = outs["online"][col].to_numpy(float), outs["duckdb"][col].to_numpy(float)
            worst = max(worst, float(np.nanmax(np.abs(a - b))) if np.isfinite(a).any() else 0.0)
    for name, values in times.items():
        ms = np.array(values[5:]) * 1e3
        print(f"{name}: p50 {np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms")
    ratio = np.percentile(times["duckdb"][5:], 50) / np.percentile(times["online"][5:], 50)
    print(f"ratio duckdb / online (p50): {ratio:.1f}x")
    print(f"largest p_buy / p_lapse difference: {worst:.2e}")
    assert worst <= 1e-9


if __name__ == "__main__":
    main()
