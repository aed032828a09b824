"""Benchmark: build_features (Ibis on DuckDB) against a straightforward pandas groupby baseline.

    python benchmarks/bench_features.py --events 10000000

Synthetic canonical events (numpy, seeded) are written once to Parquet under ``benchmarks/out/``. Each engine then
runs in its own child process, reading that same file, so the peak RSS printed for each is its own (the
parent's data generation does not count). The pandas baseline computes only the core families (recency per
behavior, window counts per behavior, decay sums per layer); ``build_features`` computes every feature. The
script checks that the shared columns agree before printing the ratio. ``--order`` chooses the row order of the
events file: grouped by user and time (default, as the event validator writes clean events) or random; the order
changes the build time (hash aggregation is faster when a user's rows arrive together), not the features.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
BEHAVIOR_P = {"view": 0.80, "fav": 0.04, "cart": 0.06, "buy": 0.03, "visit": 0.07}
CHANNEL_P = {None: 0.30, "search": 0.20, "recommend": 0.30, "ad": 0.10, "live": 0.05, "promo": 0.05}


def synthetic_events(n: int, n_users: int, seed: int, order: str = "user") -> pa.Table:
    """``n`` canonical events over ``n_users`` users, ages skewed towards the recent past (0-400 days).

    ``order="user"``: rows sorted by user id (as text) and by time within a user, as the event validator writes
    clean events; ``order="random"``: rows in draw order. Both hold the same events (same seed), so the same features.
    """
    from features.events.schema import arrow_schema

    rng = np.random.default_rng(seed)
    activity = rng.lognormal(0.0, 1.2, n_users)
    users = rng.choice(n_users, n, p=activity / activity.sum())
    ages_s = np.minimum(rng.exponential(60 * 86_400, n), 400 * 86_400).astype(np.int64) + 1
    ts = (np.int64(AS_OF.timestamp()) - ages_s) * 1_000_000
    behaviors = rng.choice(len(BEHAVIOR_P), n, p=list(BEHAVIOR_P.values()))
    channels = rng.choice(len(CHANNEL_P), n, p=list(CHANNEL_P.values()))
    categories = rng.integers(0, 2_000, n)
    items = categories * 500 + rng.integers(0, 500, n)
    amount = np.where(behaviors == list(BEHAVIOR_P).index("buy"), rng.gamma(2.0, 40.0, n).round(2), np.nan)
    if order == "user":  # by the id's text, as the validator's ORDER BY user_id sorts it
        label_rank = np.argsort(np.argsort(np.char.add("u", np.arange(n_users).astype(str)), kind="stable"))
        rows = np.lexsort((ts, label_rank[users]))
        del label_rank
        users, ts, behaviors, channels = users[rows], ts[rows], behaviors[rows], channels[rows]
        categories, items, amount = categories[rows], items[rows], amount[rows]
        del rows

    def dictionary(codes: np.ndarray, labels: list[str | None]) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(labels, pa.string()))

    def ids(codes: np.ndarray, prefix: str) -> pa.Array:
        uniques, inverse = np.unique(codes, return_inverse=True)
        return dictionary(inverse, [f"{prefix}{u}" for u in uniques]).cast(pa.string())

    columns = {
        "user_id": ids(users, "u"),
        "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        "behavior": dictionary(behaviors, list(BEHAVIOR_P)).cast(pa.string()),
        "item_id": ids(items, "i"),
        "category_id": ids(categories, "c"),
        "channel": dictionary(channels, list(CHANNEL_P)).cast(pa.string()),
        "amount": pa.array(amount, pa.float64(), from_pandas=True),
    }
    return pa.table(columns, schema=arrow_schema())


def next_day_events(n: int, n_users: int, seed: int, day: int = 0) -> pa.Table:
    """``n`` canonical events of the ``day``-th day after ``AS_OF`` (times uniform over
    ``[AS_OF + day days, AS_OF + day + 1 days)``, sorted), drawn otherwise as :func:`synthetic_events` draws them."""
    new = synthetic_events(n, n_users, seed)
    rng = np.random.default_rng(seed)
    start = (int(AS_OF.timestamp()) + day * 86_400) * 1_000_000
    ts = pa.array(np.sort(start + rng.integers(0, 86_400 * 1_000_000, n)), pa.timestamp("us", tz="UTC"))
    return new.set_column(new.schema.get_field_index("ts"), "ts", ts)


def peak_rss_mb() -> float:
    """This process's peak resident set (MiB). ``VmHWM`` belongs to the current address space; ``ru_maxrss`` would
    also count the parent's size at the fork that started this child, since Linux keeps it across ``exec``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_ibis(path: str, threads: int | None, memory_limit: str | None, chunk_events: int | None,
             queue: mp.Queue) -> None:
    from features.build.builder import build_features, duckdb_connection

    start = time.perf_counter()
    con = duckdb_connection(threads=threads, memory_limit=memory_limit)
    features = build_features(Path(path), AS_OF, con=con, chunk_events=chunk_events)
    seconds = time.perf_counter() - start
    out = Path(path).with_name("ibis_features.parquet")
    features.to_parquet(out)
    queue.put({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rows": len(features), "out": str(out)})


def run_pandas(path: str, queue: mp.Queue) -> None:
    import pandas as pd

    start = time.perf_counter()
    features = pandas_core_features(pd.read_parquet(path), AS_OF)
    seconds = time.perf_counter() - start
    out = Path(path).with_name("pandas_features.parquet")
    features.to_parquet(out)
    queue.put({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "rows": len(features), "out": str(out)})


def pandas_core_features(df, as_of: datetime):
    """Baseline: recency per behavior, counts per behavior and window, decay sums per layer (pandas groupby)."""
    import pandas as pd

    from features.spec.definition import FeatureSpec

    spec = FeatureSpec()
    df = df[df["ts"] < pd.Timestamp(as_of)]
    age = (pd.Timestamp(as_of) - df["ts"]).dt.total_seconds().to_numpy() / 86_400
    df = df.assign(age=age)
    user = df["user_id"]
    out = pd.DataFrame(index=pd.Index(np.sort(user.unique()), name="user_id"))
    for b in BEHAVIOR_P:
        sel = df[df["behavior"] == b]
        out[f"days_since_last_{b}"] = sel.groupby("user_id")["age"].min()
        for w in spec.windows:
            counts = sel[sel["age"] <= w].groupby("user_id").size()
            out[f"{b}_count_{w}d"] = counts.reindex(out.index, fill_value=0).astype("int64")
    out["days_since_last_event"] = df.groupby("user_id")["age"].min()
    channel = df["channel"]
    mult = np.select(
        [channel == "ad", channel.isin(["search", "ad"]), channel == "recommend"],
        [spec.ad_multiplier, spec.active_multiplier, spec.passive_multiplier],
        1.0,
    )
    layers = {
        "browse": (("view", "visit"), spec.decay_browse_days),
        "interest": (("fav", "cart"), spec.decay_interest_days),
        "purchase": (("buy",), spec.decay_purchase_days),
    }
    for layer, (behaviors, span) in layers.items():
        weight = np.clip(1 - df["age"].to_numpy() / span, 0, None) * mult
        weight = np.where(df["behavior"].isin(behaviors).to_numpy(), weight, 0.0)
        out[f"decay_{layer}"] = pd.Series(weight, index=df.index).groupby(user).sum().reindex(out.index)
    return out.reset_index()


def compare(ibis_path: str, pandas_path: str) -> tuple[int, int]:
    """(columns compared, columns that differ) between the two outputs on the shared columns."""
    import pandas as pd

    a = pd.read_parquet(ibis_path).set_index("user_id").sort_index()
    b = pd.read_parquet(pandas_path).set_index("user_id").sort_index()
    shared = [c for c in b.columns if c in a.columns]
    bad = [c for c in shared if not np.allclose(a[c].to_numpy(float), b[c].to_numpy(float), equal_nan=True)]
    if not a.index.equals(b.index):
        bad.append("user_id")
    return len(shared), len(bad)


def child(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000,
                        help="users drawn from (default 1M: the Taobao UserBehavior data set has 988k users)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: CPU count)")
    parser.add_argument("--memory-limit", default=None,
                        help="DuckDB memory limit, e.g. 6GB (default: half the RAM); beyond it DuckDB spills to disk")
    parser.add_argument("--chunk-events", type=int, default=None,
                        help="events per user range of the build (default: the library's); 0 builds in one piece")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the generated events and both outputs")
    parser.add_argument("--reuse", action="store_true", help="use (and keep) the events file of an earlier --keep run")
    parser.add_argument("--order", choices=("user", "random"), default="user",
                        help="row order of the events file: grouped by user and time, as the validator writes clean "
                        "events (default), or random")
    args = parser.parse_args()
    n_users = max(1, min(args.users, args.events))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench_events_{args.events}_{n_users}u_{args.order}.parquet"

    start = time.perf_counter()
    reused = args.reuse and path.exists()
    if reused:
        print(f"reusing {path} (--reuse; kept afterwards)")
    else:
        pq.write_table(synthetic_events(args.events, n_users, args.seed, args.order), path, row_group_size=1_000_000)
        print(f"generated {args.events:,} events for up to {n_users:,} users in {time.perf_counter() - start:.1f} s")

    from features.build.chunks import DEFAULT_CHUNK_EVENTS, parquet_files, plan_user_ranges

    chunk_events = DEFAULT_CHUNK_EVENTS if args.chunk_events is None else (args.chunk_events or None)
    n_ranges = len(plan_user_ranges(parquet_files(str(path)), chunk_events)) if chunk_events else 1
    ibis_res = child(run_ibis, str(path), args.threads, args.memory_limit, chunk_events)
    result = {
        "events": args.events,
        "users": ibis_res["rows"],
        "event_order": args.order,
        "ibis_duckdb_seconds": round(ibis_res["seconds"], 2),
        "ibis_events_per_s": round(args.events / ibis_res["seconds"]),
        "ibis_peak_rss_mb": round(ibis_res["peak_rss_mb"]),
        "duckdb_memory_limit": args.memory_limit or "half the RAM",
        "chunk_events": chunk_events or "one piece",
        "user_ranges": n_ranges,
    }
    if not args.skip_pandas:
        pandas_res = child(run_pandas, str(path))
        n_cols, n_bad = compare(ibis_res["out"], pandas_res["out"])
        result.update(
            pandas_seconds=round(pandas_res["seconds"], 2),
            pandas_events_per_s=round(args.events / pandas_res["seconds"]),
            pandas_peak_rss_mb=round(pandas_res["peak_rss_mb"]),
            speedup_vs_pandas=round(pandas_res["seconds"] / ibis_res["seconds"], 2),
            columns_compared=n_cols,
            columns_differing=n_bad,
        )
    for key, value in result.items():
        print(f"{key:>22}: {value:,}" if isinstance(value, int) else f"{key:>22}: {value}")
    (args.out / "bench_features.json").write_text(json.dumps(result, indent=1))
    if not args.keep:
        inputs = () if reused else (path,)
        for leftover in (*inputs, Path(ibis_res["out"]), args.out / "pandas_features.parquet"):
            leftover.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
