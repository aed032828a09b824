"""The training user sample: seeded, order-free, nested, exact size."""

from __future__ import annotations

import ibis
import pandas as pd
import pytest

from features.build.builder import duckdb_connection
from training.sampling import pick_users, sampled_events

IDS = pd.Series([f"u{i}" for i in range(5000)])


def test_sample_has_the_requested_size_and_only_known_ids():
    picked = pick_users(IDS, 1200, seed=3)
    assert len(picked) == 1200 and picked.is_unique
    assert set(picked) <= set(IDS)
    assert list(picked) == sorted(picked)


def test_sample_depends_on_ids_and_seed_only():
    shuffled = IDS.sample(frac=1.0, random_state=1)
    repeated = pd.concat([IDS, IDS.head(100)])
    assert pick_users(IDS, 700, seed=3).equals(pick_users(shuffled, 700, seed=3))
    assert pick_users(IDS, 700, seed=3).equals(pick_users(repeated, 700, seed=3))
    assert not pick_users(IDS, 700, seed=3).equals(pick_users(IDS, 700, seed=4))


def test_a_larger_sample_keeps_every_user_of_a_smaller_one():
    small, large = set(pick_users(IDS, 500, seed=9)), set(pick_users(IDS, 2000, seed=9))
    assert small < large


def test_fewer_users_than_the_limit_keeps_everyone():
    assert list(pick_users(IDS.head(10), 1000)) == sorted(IDS.head(10))
    with pytest.raises(ValueError, match="max_users"):
        pick_users(IDS, 0)


def test_sampled_events_keep_all_events_of_the_picked_users_and_drop_the_table_after():
    con = duckdb_connection(threads=1)
    frame = pd.DataFrame({"user_id": [f"u{i % 300}" for i in range(3000)], "v": range(3000)})
    events = ibis.memtable(frame)
    def tables() -> set[str]:
        rows = con.raw_sql("SELECT table_name FROM information_schema.tables").fetchall()
        return {r[0] for r in rows if r[0].startswith("_train_sample_")}

    before = tables()
    with sampled_events(events, 100, 5, con) as (table, n_users):
        got = con.to_pandas(table)
        assert n_users == 300
        assert set(got["user_id"]) == set(pick_users(frame["user_id"], 100, 5))
        assert len(got) == 100 * 10  # every event of every picked user
        assert len(tables() - before) == 1  # the sample, materialised once
    assert tables() == before
    with sampled_events(events, None, 5, con) as (table, n_users):
        assert table is events and n_users == 300
