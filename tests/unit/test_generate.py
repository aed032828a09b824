"""The behavior generator: determinism, schema, event rules, ground truth, helpers."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from features.events.schema import BEHAVIORS, CANONICAL_COLUMNS, CHANNELS, arrow_schema
from features.simulate import process as proc
from features.simulate.dirty import DEFECTS
from features.simulate.shop import (
    GeneratedData,
    GeneratorConfig,
    GeneratorConfigError,
    generate,
    purchase_only,
    truth_schema,
)
from features.simulate.truth import p_buy, p_lapse

START = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> GeneratedData:
    """3000 users over 60 days in 3 chunks, default cutoffs (days 8, 15, ..., 57)."""
    config = GeneratorConfig(n_users=3000, days=60, chunk_users=1000, dirty_share=0.1, dirty_sample_rows=900)
    return generate(config, tmp_path_factory.mktemp("gen"))


@pytest.fixture(scope="module")
def con(data: GeneratedData) -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute(f"CREATE VIEW ev AS SELECT * FROM read_parquet('{data.events_dir}/*.parquet')")
    c.execute(f"CREATE VIEW tr AS SELECT * FROM read_parquet('{data.truth_path}')")
    # realised labels next to the truth: any buy in (T, T+H], no event at all in (T, T+N]
    c.execute(
        """
        CREATE TABLE lab AS
        SELECT tr.*,
          EXISTS (SELECT 1 FROM ev WHERE ev.user_id = tr.user_id AND ev.behavior = 'buy'
                  AND ev.ts > tr.as_of AND ev.ts <= tr.as_of + to_days(tr.horizon_days))::INT AS y_buy,
          (NOT EXISTS (SELECT 1 FROM ev WHERE ev.user_id = tr.user_id
                  AND ev.ts > tr.as_of AND ev.ts <= tr.as_of + to_days(tr.lapse_days)))::INT AS y_lapse,
          (SELECT max(ts) FROM ev WHERE ev.user_id = tr.user_id AND ev.ts < tr.as_of) AS last_ts,
          EXISTS (SELECT 1 FROM ev WHERE ev.user_id = tr.user_id AND ev.ts < tr.as_of
                  AND ev.ts >= tr.as_of - INTERVAL 1 DAY
                  AND (ev.behavior = 'cart' OR ev.channel = 'ad')) AS hot_1d
        FROM tr
        """
    )
    return c


def _tiny(seed: int = 7) -> GeneratorConfig:
    return GeneratorConfig(n_users=400, days=30, chunk_users=150, seed=seed)


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate(_tiny(), tmp_path / "a")
    b = generate(_tiny(), tmp_path / "b")
    c = generate(_tiny(seed=8), tmp_path / "c")
    parts_a = sorted(a.events_dir.glob("part-*.parquet"))
    assert [p.name for p in parts_a] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for pa_ in parts_a:
        assert pa_.read_bytes() == (b.events_dir / pa_.name).read_bytes()
    assert a.truth_path.read_bytes() == b.truth_path.read_bytes()
    ev_a = pq.read_table(a.events_dir)
    ev_c = pq.read_table(c.events_dir)
    assert not ev_a.equals(ev_c)
    assert not pq.read_table(a.truth_path).equals(pq.read_table(c.truth_path))


def test_rerun_into_same_dir_replaces_stale_parts(tmp_path: Path) -> None:
    generate(GeneratorConfig(n_users=300, days=20, chunk_users=100), tmp_path)
    small = generate(GeneratorConfig(n_users=300, days=20, chunk_users=300), tmp_path)
    assert [p.name for p in small.events_dir.glob("part-*.parquet")] == ["part-00000.parquet"]
    assert pq.read_table(small.events_dir).num_rows == small.n_events


def test_event_files_follow_the_canonical_schema(data: GeneratedData) -> None:
    for part in data.events_dir.glob("part-*.parquet"):
        assert pq.read_schema(part).equals(arrow_schema(), check_metadata=False)
    assert pq.read_schema(data.truth_path).equals(truth_schema(), check_metadata=False)
    assert pq.read_table(data.events_dir).num_rows == data.n_events


def test_event_rows_obey_the_contract(data: GeneratedData, con: duckdb.DuckDBPyConnection) -> None:
    end = START + timedelta(days=data.config.days)
    row = con.execute(
        f"""
        SELECT count(*) FILTER (WHERE NOT regexp_full_match(user_id, 'u[0-9]{{7}}')),
               count(*) FILTER (WHERE behavior NOT IN {tuple(BEHAVIORS)}),
               count(*) FILTER (WHERE channel IS NULL OR channel NOT IN {tuple(CHANNELS)}),
               count(*) FILTER (WHERE (behavior = 'buy') <> (amount IS NOT NULL)),
               count(*) FILTER (WHERE amount < 0),
               count(*) FILTER (WHERE (behavior = 'visit') <> (item_id IS NULL)),
               count(*) FILTER (WHERE (item_id IS NULL) <> (category_id IS NULL)),
               epoch_us(min(ts)), epoch_us(max(ts)), count(DISTINCT behavior), count(DISTINCT channel)
        FROM ev
        """
    ).fetchone()
    assert row[:7] == (0, 0, 0, 0, 0, 0, 0)
    assert START.timestamp() * 1e6 <= row[7] and row[8] < end.timestamp() * 1e6
    assert row[9] == len(BEHAVIORS) and row[10] == len(CHANNELS)


def test_rows_are_time_sorted_within_each_part(data: GeneratedData) -> None:
    for part in data.events_dir.glob("part-*.parquet"):
        ts = pq.read_table(part, columns=["ts"]).column("ts").to_numpy()
        assert np.all(ts[1:] >= ts[:-1])


def test_funnel_shape_matches_a_shop(con: duckdb.DuckDBPyConnection, data: GeneratedData) -> None:
    per_user = con.execute(
        """
        SELECT count(*) / count(DISTINCT user_id),
               count(DISTINCT user_id) FILTER (WHERE behavior = 'buy'),
               count(DISTINCT user_id)
        FROM ev
        """
    ).fetchone()
    repeat = con.execute(
        "SELECT count(*) FROM (SELECT user_id FROM ev WHERE behavior = 'buy' "
        "GROUP BY user_id HAVING count(DISTINCT ts::DATE) >= 2)"
    ).fetchone()[0]
    events_per_user, buyers, users = per_user
    assert 15 < events_per_user < 150  # 60 days here; ~65 per user over the default 120 days
    assert 0.05 * users < buyers < 0.6 * users  # many never buy
    assert repeat > 0.2 * buyers  # loyal repeat buyers exist
    # an ad click is followed by a purchase far more often than an organic view
    conv = con.execute(
        """
        WITH s AS (SELECT user_id, ts::DATE AS d, bool_or(channel = 'ad') AS ad, bool_or(behavior = 'buy') AS buy
                   FROM ev GROUP BY ALL)
        SELECT avg(buy::INT) FILTER (WHERE ad), avg(buy::INT) FILTER (WHERE NOT ad) FROM s
        """
    ).fetchone()
    assert conv[0] > 1.5 * conv[1]


def test_truth_has_one_row_per_user_and_cutoff(data: GeneratedData, con: duckdb.DuckDBPyConnection) -> None:
    expected = tuple(START + timedelta(days=d) for d in (8, 15, 22, 29, 36, 43, 50, 57))
    assert data.cutoffs == expected
    rows, users, cutoffs, bad_p, h, n = con.execute(
        """
        SELECT count(*), count(DISTINCT user_id), count(DISTINCT as_of),
               count(*) FILTER (WHERE NOT (p_buy_true BETWEEN 0 AND 1 AND p_lapse_true BETWEEN 0 AND 1)),
               min(horizon_days), max(lapse_days)
        FROM tr
        """
    ).fetchone()
    assert (rows, users, cutoffs, bad_p, h, n) == (3000 * 8, 3000, 8, 0, 3, 30)


def test_truth_flags_agree_with_the_events(con: duckdb.DuckDBPyConnection) -> None:
    mismatches = con.execute(
        """
        SELECT
          count(*) FILTER (WHERE bought_before <> EXISTS (SELECT 1 FROM ev WHERE ev.user_id = lab.user_id
                           AND ev.behavior = 'buy' AND ev.ts < lab.as_of)),
          count(*) FILTER (WHERE active_15d <> coalesce(last_ts >= as_of - INTERVAL 15 DAY, false))
        FROM lab
        """
    ).fetchone()
    assert mismatches == (0, 0)


def test_true_buy_probability_is_high_after_cart_or_ad_click_and_low_when_idle(
    con: duckdb.DuckDBPyConnection,
) -> None:
    hot, idle, never_seen = con.execute(
        """
        SELECT avg(p_buy_true) FILTER (WHERE hot_1d),
               avg(p_buy_true) FILTER (WHERE last_ts < as_of - INTERVAL 10 DAY),
               max(p_buy_true) FILTER (WHERE last_ts IS NULL AND NOT bought_before)
        FROM lab
        """
    ).fetchone()
    assert hot > 4 * idle
    assert hot > 0.05
    assert never_seen < 0.5  # users without history can still join and buy, but rarely with certainty


def test_true_lapse_probability_rises_with_idleness(con: duckdb.DuckDBPyConnection) -> None:
    recent, idle = con.execute(
        """
        SELECT avg(p_lapse_true) FILTER (WHERE last_ts >= as_of - INTERVAL 2 DAY),
               avg(p_lapse_true) FILTER (WHERE last_ts < as_of - INTERVAL 20 DAY)
        FROM lab
        """
    ).fetchone()
    assert idle > 3 * recent
    assert idle > 0.3


def test_positive_rate_of_active_users_is_rare(con: duckdb.DuckDBPyConnection) -> None:
    realised, truth = con.execute(
        "SELECT avg(y_buy), avg(p_buy_true) FROM lab WHERE active_15d AND as_of >= TIMESTAMPTZ '2026-06-16'"
    ).fetchone()
    assert 0.01 <= realised <= 0.05
    assert 0.01 <= truth <= 0.05


def test_realised_labels_agree_with_truth_in_expectation(con: duckdb.DuckDBPyConnection) -> None:
    buy = con.execute(
        "SELECT sum(y_buy), sum(p_buy_true), sum(p_buy_true * (1 - p_buy_true)) FROM lab WHERE last_ts IS NOT NULL"
    ).fetchone()
    assert buy[1] > 100
    assert abs(buy[0] - buy[1]) < 4 * np.sqrt(buy[2])
    # lapse windows must lie inside the simulated 60 days: cutoffs up to day 29
    lapse = con.execute(
        """
        SELECT sum(y_lapse), sum(p_lapse_true), sum(p_lapse_true * (1 - p_lapse_true))
        FROM lab WHERE last_ts IS NOT NULL AND as_of <= TIMESTAMPTZ '2026-06-30'
        """
    ).fetchone()
    assert lapse[1] > 100
    assert abs(lapse[0] - lapse[1]) < 4 * np.sqrt(lapse[2])
    # and the truth ranks better than chance by a wide margin (mean p of buyers vs non-buyers)
    pos, neg = con.execute(
        "SELECT avg(p_buy_true) FILTER (WHERE y_buy = 1), avg(p_buy_true) FILTER (WHERE y_buy = 0) FROM lab"
    ).fetchone()
    assert pos > 5 * neg


def test_truth_matches_brute_force_simulation_per_user() -> None:
    """Clone a few users' hidden state many times, run the real daily process forward, count outcomes."""
    rng = np.random.default_rng(3)
    cal = proc.make_calendar(START, 120)
    users = proc.draw_users(rng, 600, 60, 40)
    state = proc.initial_state(users)
    day = 50
    for d in range(day):
        proc.step_day(rng, users, state, d, cal)
    rough = p_buy(np.random.default_rng(4), users, state, day, 3, cal, paths=1)
    picks = np.argsort(rough)[[-1, -2, -4, -8, -15, -30, -60, -120]]  # a spread of purchase probabilities
    u0, s0 = users.take(picks), state.take(picks)
    # horizon 3: every coin of days 1-2 branched; horizon 5: days 3-4 sampled as well
    pb3 = p_buy(np.random.default_rng(4), u0, s0, day, 3, cal, paths=400)
    pb5 = p_buy(np.random.default_rng(4), u0, s0, day, 5, cal, paths=400)
    pl = p_lapse(u0, s0, day, 10, cal)
    clones = 20_000
    rep = np.repeat(np.arange(len(picks)), clones)
    u, st = u0.take(rep), s0.take(rep)
    first_buy = np.full(rep.shape[0], 99)
    silent = np.ones(rep.shape[0], bool)
    sim = np.random.default_rng(5)
    for d in range(day, day + 10):
        idx, _, bought = proc.step_day(sim, u, st, d, cal)
        b = idx[bought]
        first_buy[b] = np.minimum(first_buy[b], d - day)
        silent[idx] = False
    for p, hits in ((pb3, first_buy < 3), (pb5, first_buy < 5), (pl, silent)):
        freq = hits.reshape(len(picks), clones).mean(axis=1)
        var = p * (1 - p) / clones + 1e-12
        np.testing.assert_array_less(np.abs(freq - p), 4 * np.sqrt(var))
        assert abs((freq - p).sum()) < 3.5 * np.sqrt(var.sum())  # no systematic bias across users
    assert pb3.max() > 0.15 and pb3.min() < 0.1
    assert np.all(pb5 >= pb3)
    assert pl.max() > 0.2


def test_purchase_only_writes_only_buy_rows_with_amount(
    data: GeneratedData, con: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    n_buys = con.execute("SELECT count(*) FROM ev WHERE behavior = 'buy'").fetchone()[0]
    out = tmp_path / "orders.parquet"
    assert purchase_only(data.events_dir, out) == n_buys
    orders = pq.read_table(out)
    assert orders.column_names == ["user_id", "ts", "behavior", "item_id", "category_id", "amount"]
    assert orders.num_rows == n_buys
    assert set(orders.column("behavior").to_pylist()) == {"buy"}
    assert orders.column("amount").null_count == 0
    csv_out = tmp_path / "orders.csv"
    assert purchase_only(data.events_dir / "part-00001.parquet", csv_out) > 0
    with open(csv_out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["behavior"] == "buy" and float(r["amount"]) >= 0 for r in rows)


def test_purchase_only_rejects_unknown_output_format(data: GeneratedData, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.parquet or \.csv"):
        purchase_only(data.events_dir, tmp_path / "orders.xlsx")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        purchase_only(tmp_path / "missing", tmp_path / "orders.csv")


def test_dirty_csv_mixes_valid_and_malformed_rows(data: GeneratedData) -> None:
    assert data.raw_dirty_path is not None
    with open(data.raw_dirty_path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CANONICAL_COLUMNS
        rows = list(reader)
    kinds = {
        "null_user_id": sum(r["user_id"] == "" for r in rows),
        "bad_ts": sum(r["ts"] == "not-a-timestamp" for r in rows),
        "unknown_behavior": sum(r["behavior"] == "wishlist" for r in rows),
        "negative_amount": sum(r["amount"].startswith("-") for r in rows),
        "future_ts": sum(r["ts"].startswith("2099") for r in rows),
    }
    assert set(kinds) == set(DEFECTS) and min(kinds.values()) >= 15
    n_bad = sum(kinds.values())
    assert n_bad == 100  # 900 valid rows, 10% of 1000 malformed
    valid = [r for r in rows if r["user_id"] and r["behavior"] in BEHAVIORS and r["ts"][:4] == "2026"]
    assert len(valid) >= 900
    assert all(datetime.fromisoformat(r["ts"]).tzinfo is not None for r in valid)


def test_no_dirty_csv_by_default(tmp_path: Path) -> None:
    out = generate(GeneratorConfig(n_users=50, days=10, truth_cutoffs=()), tmp_path)
    assert out.raw_dirty_path is None and not (tmp_path / "raw_dirty.csv").exists()
    assert pq.read_table(out.truth_path).num_rows == 0


def test_progress_reports_users_done_per_chunk(tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    config = GeneratorConfig(n_users=250, days=10, chunk_users=100)
    generate(config, tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 250), (100, 250), (200, 250), (250, 250)]


def test_explicit_cutoffs_include_the_last_day(tmp_path: Path) -> None:
    cut = (START + timedelta(days=10), START + timedelta(days=5))
    out = generate(GeneratorConfig(n_users=100, days=10, truth_cutoffs=cut), tmp_path)
    assert out.cutoffs == tuple(sorted(cut))
    assert pq.read_table(out.truth_path).num_rows == 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_users": 0}, "n_users must be a positive integer"),
        ({"start": datetime(2026, 6, 1)}, "timezone-aware"),
        ({"start": datetime(2026, 6, 1, 12, tzinfo=UTC)}, "UTC midnight"),
        ({"dirty_share": 0.9}, r"dirty_share must be in \[0, 0.5\]"),
        ({"truth_cutoffs": (datetime(2026, 6, 3, 12, tzinfo=UTC),)}, "whole number of days"),
        ({"days": 10, "truth_cutoffs": (START + timedelta(days=11),)}, r"in \[1, 10\]"),
    ],
)
def test_bad_config_is_rejected_with_a_clear_message(kwargs: dict, match: str) -> None:
    with pytest.raises(GeneratorConfigError, match=match):
        GeneratorConfig(**kwargs)
