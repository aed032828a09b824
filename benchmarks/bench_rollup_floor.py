"""Benchmark: the least work a nightly feature build from daily roll-ups would do, against a full build.

    python benchmarks/bench_rollup_floor.py --events 100000000 --users 1000000

An exact nightly build from stored state must, at the least, (1) roll up the new day's events, (2) take out of
every windowed sum the day that leaves the window overnight (one day per window edge), (3) find which of the new
day's (user, item) pairs were already seen in the distinct-items window, and (4) join those changes onto the last
night's feature rows and hand the table over. This script builds the best-case stored state for that (untimed):
roll-ups per (user code, day, behavior, channel) sorted by day, the last-seen day of every (user, item) pair of
the distinct-items window, and the last night's feature table, all in DuckDB tables in memory. It then times
those four steps, with integer user codes and nothing written to disk, and the full build of the next night
(``build_features`` on the same files: the same-run baseline).

The four steps leave out, and so the real build would add: the distinct categories, the comparison-shopping
maxima, the unbought carts, the active- and purchase-day gaps and medians, and writing the new state back.
Their sum is therefore a floor, not an estimate, of what such a build costs.
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
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_features import AS_OF, synthetic_events  # noqa: E402

DAY_US = 86_400_000_000
BEHAVIORS = ("view", "fav", "cart", "buy", "visit")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "rollup_floor")
    args = parser.parse_args()

    import duckdb

    from features.build.builder import build_features
    from features.spec.aggregate import _slots
    from features.spec.definition import FeatureSpec

    shutil.rmtree(args.out, ignore_errors=True)
    source = args.out / "clean"
    source.mkdir(parents=True)
    pq.write_table(synthetic_events(args.events, args.users, args.seed), source / "events.parquet",
                   row_group_size=1_000_000)
    n_new = max(args.events // 100, 1)
    _write_next_day(source / "ingested-1.parquet", n_new, args.users, args.seed + 1)
    next_cutoff = AS_OF + timedelta(days=1)
    spec = FeatureSpec()
    edges = _slots(spec)

    last_night = build_features(source / "events.parquet", AS_OF)  # the state the night starts from
    con = duckdb.connect(config={"memory_limit": "14GB", "temp_directory": str(args.out / "spill")})
    t_us = int(next_cutoff.timestamp()) * 1_000_000
    state = _stored_state(con, source / "events.parquet", last_night, t_us, spec.distinct_days, edges)
    del last_night
    stored = args.out / "last_night.arrow"
    with pa.OSFile(str(stored), "wb") as sink:  # uncompressed Arrow IPC: read back memory-mapped, without copies
        table = con.sql("SELECT * EXCLUDE (uid) FROM s ORDER BY uid").to_arrow_table().combine_chunks()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        del table

    timed = {}
    t0 = time.perf_counter()
    last = {name: col.to_numpy(zero_copy_only=False) for name, col in zip(*_read(stored), strict=True)}
    timed["read_last_night_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    con.execute(f"""CREATE TABLE r0 AS SELECT u.uid, 0 AS day, {_codes()}, count(*) AS n, sum(amount) AS amount,
        count(amount) AS n_amount, sum({_mult()}) AS m, sum({_mult()} * epoch_us(ts)) AS mt,
        min(epoch_us(ts)) AS first_us, max(epoch_us(ts)) AS last_us
        FROM read_parquet('{source / "ingested-1.parquet"}') e JOIN users u USING (user_id) GROUP BY ALL""")
    timed["roll_up_new_day_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    leaving = ", ".join(str(w) for w in edges)
    parts = con.execute(f"""SELECT uid, day, b, c, n, amount, m, mt FROM r WHERE day IN ({leaving})
        UNION ALL SELECT uid, day, b, c, n, amount, m, mt FROM r0""").fetchnumpy()
    delta = _delta_arrays(parts, (0, *edges), state["users"])
    del parts
    timed["window_edges_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    con.execute(f"""CREATE TABLE n AS SELECT DISTINCT u.uid, e.item_id
        FROM read_parquet('{source / "ingested-1.parquet"}') e JOIN users u USING (user_id)""")
    con.execute(f"""CREATE TABLE seen AS SELECT n.uid, count(*) AS again FROM n JOIN pairs p
        ON n.uid = p.uid AND n.item_id = p.item_id AND p.last_day < {spec.distinct_days} GROUP BY n.uid""")
    timed["item_pairs_probe_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = _moved_on(last, delta, (0, *edges))
    timed["join_and_hand_over_s"] = time.perf_counter() - t0
    floor_s = sum(timed.values())

    t0 = time.perf_counter()
    full = build_features(source, next_cutoff)
    full_s = time.perf_counter() - t0
    assert len(table) == state["users"] and len(full) >= state["users"]
    moved = [c for c in table.columns if "_count_" in c and c.split("_count_")[0] in (*BEHAVIORS, "event", "ad")]
    same = full.set_index("user_id").loc[table.user_id, moved].to_numpy() == table[moved].to_numpy()
    result = {
        "events": args.events, "users": state["users"], "next_day_events": n_new,
        "full_build_s": round(full_s, 2), **{k: round(v, 2) for k, v in timed.items()},
        "floor_s": round(floor_s, 2), "moved_count_columns": len(moved),
        "moved_counts_equal_to_full_build": bool(same.all()), "floor_over_full": round(floor_s / full_s, 3),
        "rollup_rows_of_leaving_days": state["rollup_rows"],
        "item_pairs_in_window": state["pairs"],
        "new_day_item_pairs": con.execute("SELECT count(*) FROM n").fetchall()[0][0],
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(args.out, ignore_errors=True)


def _write_next_day(path: Path, n: int, n_users: int, seed: int) -> None:
    """``n`` events of the day after the cutoff (``AS_OF``), written to ``path``."""
    new = synthetic_events(n, n_users, seed)
    rng = np.random.default_rng(seed)
    start = int(AS_OF.timestamp()) * 1_000_000
    ts = pa.array(np.sort(start + rng.integers(0, DAY_US, n)), pa.timestamp("us", tz="UTC"))
    pq.write_table(new.set_column(new.schema.get_field_index("ts"), "ts", ts), path, row_group_size=1_000_000)


def _codes() -> str:
    """Behavior code (contract order) and channel class (1 ad, 2 search, 3 recommend, 0 other, null) of ``e``."""
    behavior = " ".join(f"WHEN '{b}' THEN {i}" for i, b in enumerate(BEHAVIORS))
    return (f"CASE e.behavior {behavior} ELSE 5 END AS b, CASE WHEN e.channel IS NULL THEN NULL WHEN e.channel = 'ad' "
            "THEN 1 WHEN e.channel = 'search' THEN 2 WHEN e.channel = 'recommend' THEN 3 ELSE 0 END AS c")


def _mult() -> str:
    return "CASE e.channel WHEN 'ad' THEN 2.0 WHEN 'search' THEN 1.5 WHEN 'recommend' THEN 0.8 ELSE 1.0 END"


def _stored_state(con, events: Path, last_night, t_us: int, distinct_days: int, edges: tuple[int, ...]) -> dict:
    """Untimed: user codes, roll-ups by (user, day before ``t_us``, behavior, channel) of the days that leave a
    window tonight (the only ones the night reads; a real state holds every day, sorted by day so that the night
    reads only these), the last-seen day of the (user, item) pairs of the distinct-items window, and the last
    night's features."""
    con.execute(f"CREATE TABLE users AS SELECT user_id, (row_number() OVER () - 1)::INTEGER AS uid FROM "
                f"(SELECT DISTINCT user_id FROM read_parquet('{events}'))")
    day = f"(({t_us} - epoch_us(e.ts) - 1) // {DAY_US})::INTEGER"  # day k: t - (k + 1) days <= ts < t - k days
    con.execute(f"""CREATE TABLE r AS SELECT u.uid, {day} AS day, {_codes()}, count(*) AS n, sum(amount) AS amount,
        count(amount) AS n_amount, sum({_mult()}) AS m, sum({_mult()} * epoch_us(ts)) AS mt,
        min(epoch_us(ts)) AS first_us, max(epoch_us(ts)) AS last_us
        FROM read_parquet('{events}') e JOIN users u USING (user_id)
        WHERE {day} IN ({", ".join(map(str, edges))}) GROUP BY ALL ORDER BY day, uid""")
    con.execute(f"""CREATE TABLE pairs AS SELECT u.uid, e.item_id, min({day}) AS last_day
        FROM read_parquet('{events}') e JOIN users u USING (user_id) WHERE {day} <= {distinct_days}
        GROUP BY ALL ORDER BY uid""")
    con.register("last_night", last_night)
    con.execute("CREATE TABLE s AS SELECT u.uid, l.* FROM last_night l JOIN users u USING (user_id)")
    con.unregister("last_night")
    count = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    return {"users": count("SELECT count(*) FROM s"), "rollup_rows": count("SELECT count(*) FROM r"),
            "pairs": count("SELECT count(*) FROM pairs")}


def _read(path: Path) -> tuple[list[str], list[pa.Array]]:
    """The columns of an Arrow IPC file of one record batch, memory-mapped (names, arrays)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return table.column_names, [table.column(i).chunk(0) for i in range(table.num_columns)]


def _delta_arrays(parts: dict, days: tuple[int, ...], n_users: int) -> dict[str, np.ndarray]:
    """Per day of ``days`` (the new day 0, then the day leaving each window edge) and user (user code): events per
    behavior, shape (days, users, 6); per channel class (other, ad, search, recommend, none), shape
    (days, users, 5); buy amounts, decay parts (multiplier sums, multiplier x time sums) and whether the user was
    active or bought, shape (days, users)."""
    index = np.full(max(days) + 1, -1, dtype=np.int64)
    index[list(days)] = np.arange(len(days))
    k = len(days)
    no_channel = np.ma.getmaskarray(parts["c"])
    parts = {name: np.ma.getdata(values) for name, values in parts.items()}  # plain arrays: masked maths is slow
    cell = index[parts["day"]] * n_users + parts["uid"]  # day-major: the rows come sorted by day and user
    n = parts["n"].astype(np.float64)
    channel = np.where(no_channel, 4, parts["c"])
    size = n_users * k

    def per_cell(weights, classes=None, n_classes=1):
        key = cell if classes is None else cell * n_classes + classes
        shape = (k, n_users) if classes is None else (k, n_users, n_classes)
        return np.bincount(key, weights=weights, minlength=size * n_classes).reshape(shape)

    buys = parts["b"] == 3
    amount = np.where(buys, np.nan_to_num(parts["amount"]), 0.0)
    return {
        "behavior": per_cell(n, parts["b"].astype(np.int64), 6),
        "channel": per_cell(n, np.asarray(channel, dtype=np.int64), 5),
        "amount": per_cell(amount), "m": per_cell(np.asarray(parts["m"], dtype=np.float64)),
        "mt": per_cell(np.asarray(parts["mt"], dtype=np.float64)), "active": per_cell(None) > 0,
        "buy_day": per_cell(buys.astype(np.float64)) > 0,
    }


def _moved_on(last: dict[str, np.ndarray], delta: dict[str, np.ndarray], days: tuple[int, ...]):
    """Last night's feature columns (``last``: column -> array in user-code order) with every windowed count moved
    on by a day (``+ new day - leaving day``), the rest carried over, as the pandas table a build hands over."""
    import pandas as pd

    at = {d: i for i, d in enumerate(days)}
    out = {}
    for col, values in last.items():
        beh, _, window = col.partition("_count_")
        if window and beh in (*BEHAVIORS, "event", "ad"):
            w = at[int(window.rstrip("d"))]
            if beh == "event":
                moved = delta["behavior"][0].sum(axis=1) - delta["behavior"][w].sum(axis=1)
            elif beh == "ad":
                moved = delta["channel"][0, :, 1] - delta["channel"][w, :, 1]
            else:
                b = BEHAVIORS.index(beh)
                moved = delta["behavior"][0, :, b] - delta["behavior"][w, :, b]
            out[col] = values + moved.astype(np.int64)
        else:
            out[col] = values
    return pd.DataFrame(out)


if __name__ == "__main__":
    main()
