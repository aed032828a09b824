"""Benchmark: the least work a nightly feature build from daily roll-ups would do, against a full build.

    python benchmarks/bench_rollup_floor.py --events 100000000 --users 1000000

An exact nightly build from stored state must, at the least: read the last night's rows back; roll up the new
day's events; read the roll-ups of the days that leave a window overnight (one day per window edge); find which of
the new day's (user, item) and (user, category) pairs were already seen in the distinct-count window and keep
those pair states; keep the (user, category, item) views of the comparison window and take each user's maxima;
add the new day's gaps between active days and take each user's median; move the windowed counts on by a day and
hand the table over (pandas, as ``build_features`` does); and keep tonight's rows for tomorrow.

This script builds the best-case stored state for those steps, untimed:
- integer user codes, and item and category codes (the new day's new items included);
- roll-ups per (user, day, behavior, channel) of the days that leave a window tonight, sorted by day, in DuckDB
  in memory;
- the pairs of the distinct-count window and the views of the comparison window as sorted numpy keys (user code
  << 32 | codes) with their last-seen days, probed with ``searchsorted`` (:mod:`rollup_pieces`);
- each user's gaps between active days as sorted keys (user code << 16 | days), and most recent active day;
- the last night's feature table as uncompressed Arrow, read memory-mapped.

It times those steps, then the full build of the next night (``build_features`` on the same files: the same-run
baseline). Checks: the 50 moved window counts, the comparison maxima and the active-gap medians equal the full
build's for every user; the pairs found again equal a plain join's; the kept pair states equal states built
afresh from both files.

The same pair states are also kept log-structured (:func:`rollup_pieces.last_seen`, :func:`rollup_pieces.merge_runs`):
a base folded ``LSM_NIGHTS`` nights ago plus one sorted run per night since. The script times the night before a
fold (the base and 6 runs probed) and the fold of 7 runs, counts 1/7 of the fold per night
(``floor_log_structured_s``), and checks the fold equal to the sorted states.

The steps leave out what the real build would add: the other windowed sums (channel shares, amounts, decay,
active and purchase days, trends), the unbought carts, the purchase-day gaps and median and the other rhythm
columns, the global aggregates of the new day (recency, first seen, totals), codes for new users and items, and
storing the new day's roll-ups. Their sum is therefore a floor, not an estimate, of what such a build costs.
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

from bench_features import AS_OF, next_day_events, synthetic_events  # noqa: E402
from rollup_pieces import ITEM_BITS, comparison_maxima, gap_medians, keep_pairs, last_seen, merge_runs  # noqa: E402

DAY_US = 86_400_000_000
LSM_NIGHTS = 7
"""The log-structured pair states are folded every this many nights; the script times the last night before a
fold (the most runs to probe) and the fold, which counts for 1/LSM_NIGHTS of it per night."""
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
    pq.write_table(next_day_events(n_new, args.users, args.seed + 1), source / "ingested-1.parquet",
                   row_group_size=1_000_000)
    next_cutoff = AS_OF + timedelta(days=1)
    spec = FeatureSpec()
    edges = _slots(spec)

    last_night = build_features(source / "events.parquet", AS_OF)  # the state the night starts from
    con = duckdb.connect(config={"memory_limit": "14GB", "temp_directory": str(args.out / "spill")})
    t_us = int(next_cutoff.timestamp()) * 1_000_000
    state = _stored_state(con, source / "events.parquet", source / "ingested-1.parquet", last_night, t_us, spec,
                          edges)
    del last_night
    stored = args.out / "last_night.arrow"
    _write(con.sql("SELECT * EXCLUDE (uid) FROM s ORDER BY uid").to_arrow_table(), stored)

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
    new, old = (_numpy(con, f"SELECT uid, day, b, c, n FROM {sql} ORDER BY day")
                for sql in ("r0", f"r WHERE day IN ({leaving})"))
    rows = {name: np.concatenate([new[name], old[name]]) for name in new}
    del new, old
    timed["read_leaving_days_s"] = time.perf_counter() - t0

    seen = {}
    for kind, column in (("item", "item_id"), ("category", "category_id")):
        t0 = time.perf_counter()
        got = con.execute(f"""SELECT DISTINCT u.uid, d.code FROM read_parquet('{source / "ingested-1.parquet"}') e
            JOIN users u USING (user_id) JOIN {kind}_codes d ON e.{column} = d.key""").fetchnumpy()
        keys = np.sort(np.ma.getdata(got["uid"]).astype(np.int64) << 32 | np.ma.getdata(got["code"]))
        timed[f"{kind}_new_day_pairs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        stored_keys, last_day = state[kind]
        at = np.minimum(np.searchsorted(stored_keys, keys), len(stored_keys) - 1)
        again = (stored_keys[at] == keys) & (last_day[at] < spec.distinct_days)
        seen[kind] = np.bincount(keys[again] >> 32, minlength=state["users"])
        state[f"new_{kind}_keys"] = keys
        timed[f"{kind}_pairs_probe_s"] = time.perf_counter() - t0
        state[f"new_day_{kind}_pairs_probed"] = len(keys)

    lsm = {}
    for kind in ("item", "category"):
        base, runs = state[f"{kind}_runs"]
        t0 = time.perf_counter()
        seen_lsm = last_seen(base, runs, state[f"new_{kind}_keys"]) < spec.distinct_days
        lsm[f"{kind}_again"] = np.bincount(state[f"new_{kind}_keys"][seen_lsm] >> 32, minlength=state["users"])
        lsm[f"{kind}_pairs_probe_{LSM_NIGHTS - 1}_runs_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        lsm[f"{kind}_state"] = merge_runs(base, [*runs, (0, state[f"new_{kind}_keys"])], spec.distinct_days)
        lsm[f"{kind}_fold_{LSM_NIGHTS}_runs_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tonight = {kind: keep_pairs(*state[kind], state[f"new_{kind}_keys"], spec.distinct_days)
               for kind in ("item", "category")}
    timed["pair_states_upkeep_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    views = con.execute(f"""SELECT DISTINCT {_view_key()} AS k FROM read_parquet('{source / "ingested-1.parquet"}') e
        JOIN users u USING (user_id) JOIN category_codes c ON e.category_id = c.key
        JOIN item_codes i ON e.item_id = i.key WHERE e.behavior = 'view'""").fetchnumpy()
    window = max(spec.comparison_windows)
    views = keep_pairs(*state["views"], np.sort(np.ma.getdata(views["k"])), window)
    maxima = comparison_maxima(*views, spec.comparison_windows, state["users"])
    timed["comparison_maxima_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    active = np.ma.getdata(con.execute("SELECT DISTINCT uid FROM r0").fetchnumpy()["uid"])
    _, _, medians = gap_medians(state["gaps"], state["gap_count"], state["newest"], active,
                                last["active_gap_median_days"])
    timed["gap_medians_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = _moved_on(last, rows, (0, *edges), state["users"])
    timed["move_counts_and_hand_over_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    _write(table, args.out / "tonight.arrow")
    timed["keep_for_tomorrow_s"] = time.perf_counter() - t0
    floor_s = sum(timed.values())

    t0 = time.perf_counter()
    full = build_features(source, next_cutoff)
    full_s = time.perf_counter() - t0
    assert len(table) == state["users"] and len(full) >= state["users"]
    moved = [c for c in table.columns if "_count_" in c and c.split("_count_")[0] in (*BEHAVIORS, "event", "ad")]
    expected = full.set_index("user_id").loc[table.user_id]
    same = expected[moved].to_numpy() == table[moved].to_numpy()
    pieces = {
        "pair_states_equal_to_a_fresh_build": all(
            _equal(tonight[kind], _pairs(con, kind, [source / "events.parquet", source / "ingested-1.parquet"],
                                         t_us, spec.distinct_days - 1)) for kind in ("item", "category")),
        "comparison_maxima_equal_to_full_build": all(
            np.array_equal(maxima[w], expected[f"max_items_per_category_{w}d"].to_numpy())
            for w in spec.comparison_windows),
        "gap_medians_equal_to_full_build": bool(np.array_equal(
            medians, expected["active_gap_median_days"].to_numpy(dtype=float), equal_nan=True)),
        "view_triplets_in_window": len(views[0]),
    }
    flat = sum(timed[k] for k in ("item_pairs_probe_s", "category_pairs_probe_s", "pair_states_upkeep_s"))
    logged = sum(v for k, v in lsm.items() if k.endswith("_runs_s") and "_probe_" in k)
    folds = sum(v for k, v in lsm.items() if k.endswith("_runs_s") and "_fold_" in k)
    log_structured = {
        **{k: round(v, 2) for k, v in lsm.items() if k.endswith("_s")},
        "floor_log_structured_s": round(floor_s - flat + logged + folds / LSM_NIGHTS, 2),
        "floor_log_structured_over_full": round((floor_s - flat + logged + folds / LSM_NIGHTS) / full_s, 3),
        "log_structured_equal_to_kept_states": all(
            _equal(lsm[f"{kind}_state"], tonight[kind]) and np.array_equal(lsm[f"{kind}_again"], seen[kind])
            for kind in ("item", "category")),
    }
    result = {
        "events": args.events, "users": state["users"], "next_day_events": n_new,
        "full_build_s": round(full_s, 2), **{k: round(v, 2) for k, v in timed.items()},
        "floor_s": round(floor_s, 2), "moved_count_columns": len(moved),
        "moved_counts_equal_to_full_build": bool(same.all()), "floor_over_full": round(floor_s / full_s, 3),
        **pieces, **log_structured, "rollup_rows_of_leaving_days": state["rollup_rows"],
        **{f"{kind}_pairs_in_window": len(state[kind][0]) for kind in ("item", "category")},
        **{f"new_day_{kind}_pairs_probed": state[f"new_day_{kind}_pairs_probed"] for kind in ("item", "category")},
        "pairs_seen_again_equal_to_a_join": all(int(seen[kind].sum()) == _seen_again(con, kind, source, spec)
                                                for kind in ("item", "category")),
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(args.out, ignore_errors=True)


def _codes() -> str:
    """Behavior code (contract order) and channel class (1 ad, 2 search, 3 recommend, 0 other, null) of ``e``."""
    behavior = " ".join(f"WHEN '{b}' THEN {i}" for i, b in enumerate(BEHAVIORS))
    return (f"CASE e.behavior {behavior} ELSE 5 END AS b, CASE WHEN e.channel IS NULL THEN NULL WHEN e.channel = 'ad' "
            "THEN 1 WHEN e.channel = 'search' THEN 2 WHEN e.channel = 'recommend' THEN 3 ELSE 0 END AS c")


def _mult() -> str:
    return "CASE e.channel WHEN 'ad' THEN 2.0 WHEN 'search' THEN 1.5 WHEN 'recommend' THEN 0.8 ELSE 1.0 END"


def _stored_state(con, events: Path, new_day: Path, last_night, t_us: int, spec, edges: tuple[int, ...]) -> dict:
    """Untimed: user codes; item and category codes (those of the new day's new items too); roll-ups by (user, day
    before ``t_us``, behavior, channel) of the days that leave a window tonight (the only ones the night reads; a
    real state holds every day, sorted by day so that the night reads only these); the last-seen day of the (user,
    item), (user, category) and viewed (user, category, item) keys of their windows; each user's gaps between
    active days and most recent active day; the last night's features."""
    distinct_days, comparison_days = spec.distinct_days, max(spec.comparison_windows)
    con.execute(f"CREATE TABLE users AS SELECT user_id, (row_number() OVER () - 1)::INTEGER AS uid FROM "
                f"(SELECT DISTINCT user_id FROM read_parquet('{events}'))")
    day = _day(t_us)
    con.execute(f"""CREATE TABLE r AS SELECT u.uid, {day} AS day, {_codes()}, count(*) AS n
        FROM read_parquet('{events}') e JOIN users u USING (user_id)
        WHERE {day} IN ({", ".join(map(str, edges))}) GROUP BY ALL ORDER BY day, uid""")
    pairs = {}
    for kind, column in (("item", "item_id"), ("category", "category_id")):
        con.execute(f"""CREATE TABLE {kind}_codes AS SELECT key, (row_number() OVER () - 1)::BIGINT AS code
            FROM (SELECT DISTINCT {column} AS key FROM read_parquet(['{events}', '{new_day}']))""")
        con.execute(f"""CREATE TABLE {kind}_pairs AS SELECT u.uid, d.key, min({day}) AS last_day
            FROM read_parquet('{events}') e JOIN users u USING (user_id) JOIN {kind}_codes d ON e.{column} = d.key
            WHERE {day} <= {distinct_days} GROUP BY ALL""")
        pairs[kind] = _pairs(con, kind, [events], t_us, distinct_days)
        pairs[f"{kind}_runs"] = (  # log-structured: folded into a base LSM_NIGHTS nights ago, a run per night since
            _pairs(con, kind, [events], t_us, distinct_days - 1 + LSM_NIGHTS, LSM_NIGHTS),
            [(d, _pairs(con, kind, [events], t_us, d, d)[0]) for d in range(1, LSM_NIGHTS)])
    got = con.execute(f"""SELECT {_view_key()} AS k, min({day})::SMALLINT AS last_day FROM read_parquet('{events}') e
        JOIN users u USING (user_id) JOIN category_codes c ON e.category_id = c.key
        JOIN item_codes i ON e.item_id = i.key WHERE e.behavior = 'view' AND {day} <= {comparison_days}
        GROUP BY k ORDER BY k""").fetchnumpy()
    pairs["views"] = (np.ma.getdata(got["k"]), np.ma.getdata(got["last_day"]))
    got = con.execute(f"""WITH d AS (SELECT DISTINCT u.uid, {day} AS day FROM read_parquet('{events}') e
            JOIN users u USING (user_id)),
        g AS (SELECT uid, lead(day) OVER (PARTITION BY uid ORDER BY day) - day AS gap FROM d)
        SELECT (uid::BIGINT << 16) | gap AS k FROM g WHERE gap IS NOT NULL ORDER BY k""").fetchnumpy()
    pairs["gaps"] = np.ma.getdata(got["k"])
    got = con.execute(f"""SELECT u.uid, min({day}) AS newest FROM read_parquet('{events}') e JOIN users u
        USING (user_id) GROUP BY u.uid""").fetchnumpy()
    newest = np.full(int(got["uid"].max()) + 1, -1, dtype=np.int64)
    newest[np.ma.getdata(got["uid"])] = np.ma.getdata(got["newest"])
    pairs["newest"] = newest
    pairs["gap_count"] = np.bincount(pairs["gaps"] >> 16, minlength=len(newest))
    con.register("last_night", last_night)
    con.execute("CREATE TABLE s AS SELECT u.uid, l.* FROM last_night l JOIN users u USING (user_id)")
    con.unregister("last_night")
    count = lambda sql: con.execute(sql).fetchall()[0][0]  # noqa: E731
    return {"users": count("SELECT count(*) FROM s"), "rollup_rows": count("SELECT count(*) FROM r"),
            **pairs}


def _day(t_us: int) -> str:
    """Day ``k`` of an event ``e``: ``t - (k + 1) days <= ts < t - k days`` (``t_us``: tonight's cutoff)."""
    return f"(({t_us} - epoch_us(e.ts) - 1) // {DAY_US})::INTEGER"


def _view_key() -> str:
    """The (user, category, item) key of a view ``e`` (users ``u``, category codes ``c``, item codes ``i``)."""
    return f"(u.uid::BIGINT << 32) | (c.code << {ITEM_BITS}) | i.code"


def _pairs(con, kind: str, files: list[Path], t_us: int, last_day: int, first_day: int = 0
           ) -> tuple[np.ndarray, np.ndarray]:
    """The (user, item or category) pairs of the events of ``files`` from day ``first_day`` to day ``last_day``:
    sorted keys (user code << 32 | code) and their most recent days in that span (int16)."""
    column = {"item": "item_id", "category": "category_id"}[kind]
    paths = ", ".join(f"'{f}'" for f in files)
    got = con.execute(f"""SELECT (u.uid::BIGINT << 32) | d.code AS k, min({_day(t_us)})::SMALLINT AS last_day
        FROM read_parquet([{paths}]) e JOIN users u USING (user_id) JOIN {kind}_codes d ON e.{column} = d.key
        WHERE {_day(t_us)} BETWEEN {first_day} AND {last_day} GROUP BY k ORDER BY k""").fetchnumpy()
    return np.ma.getdata(got["k"]), np.ma.getdata(got["last_day"])


def _equal(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _seen_again(con, kind: str, source: Path, spec) -> int:
    """Untimed check: the new day's distinct (user, key) pairs already in the window, counted by a plain join."""
    column = {"item": "item_id", "category": "category_id"}[kind]
    return con.execute(f"""SELECT count(*) FROM (SELECT DISTINCT u.uid, e.{column} AS key
        FROM read_parquet('{source / "ingested-1.parquet"}') e JOIN users u USING (user_id)) n
        JOIN {kind}_pairs p ON n.uid = p.uid AND n.key = p.key AND p.last_day < {spec.distinct_days}
        """).fetchall()[0][0]


def _write(table, path: Path) -> None:
    """``table`` (Arrow or pandas) as uncompressed Arrow IPC, one record batch: the cheapest form to read back."""
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    table = table.combine_chunks()
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read(path: Path) -> tuple[list[str], list[pa.Array]]:
    """The columns of an Arrow IPC file of one record batch, memory-mapped (names, arrays)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    return table.column_names, [table.column(i).chunk(0) for i in range(table.num_columns)]


def _numpy(con, sql: str) -> dict[str, np.ndarray]:
    """The result of ``sql`` as plain numpy columns (a null channel class as 4)."""
    cols = con.execute(sql).fetchnumpy()
    out = {name: np.ma.getdata(values) for name, values in cols.items()}
    out["c"] = np.where(np.ma.getmaskarray(cols["c"]), 4, out["c"])
    return out


def _moved_on(last: dict[str, np.ndarray], rows: dict[str, np.ndarray], days: tuple[int, ...], n_users: int):
    """Last night's feature columns (``last``: column -> array in user-code order) with every windowed event, ad and
    per-behavior count moved on by a day (``+ the new day - the day leaving the window``), the rest carried over,
    as the pandas table a build hands over. ``rows``: roll-up rows (user code, day, behavior code, channel class,
    events) of the new day (day 0) and of the days leaving a window, sorted by day."""
    import pandas as pd

    bounds = dict(zip(days, zip(np.searchsorted(rows["day"], days, "left"), np.searchsorted(rows["day"], days,
                                                                                             "right"), strict=True),
                      strict=True))

    def events(day: int, what: str) -> np.ndarray:
        lo, hi = bounds[day]
        uid, n = rows["uid"][lo:hi], rows["n"][lo:hi]
        if what != "event":
            keep = rows["c"][lo:hi] == 1 if what == "ad" else rows["b"][lo:hi] == BEHAVIORS.index(what)
            uid, n = uid[keep], n[keep]
        return np.bincount(uid, weights=n, minlength=n_users).astype(np.int64)

    new_day = {what: events(0, what) for what in (*BEHAVIORS, "event", "ad")}
    out = {}
    for col, values in last.items():
        what, _, window = col.partition("_count_")
        if window and what in new_day:
            moved = values + new_day[what]
            moved -= events(int(window.rstrip("d")), what)
            out[col] = moved
        else:
            out[col] = values
    return pd.DataFrame(out)


if __name__ == "__main__":
    main()
