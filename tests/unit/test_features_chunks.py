"""The feature build in user ranges: range planning from Parquet statistics, and the same table as one piece."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.build.builder import _arrow_events, build_features, duckdb_connection
from features.build.chunks import UserRange, parquet_files, plan_user_ranges
from features.events.schema import arrow_schema

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
BEHAVIORS = np.array(["view", "view", "view", "visit", "fav", "cart", "buy"])
CHANNELS = np.array([None, "search", "recommend", "ad", "live"], dtype=object)


def random_events(seed: int, n_users: int = 240, n_events: int = 6_000) -> pd.DataFrame:
    """Seeded canonical events; user ids of mixed lengths and scripts so text order differs from number order."""
    rng = np.random.default_rng(seed)
    names = np.array([f"{'uüu'[i % 3]}{i}" for i in range(n_users)], dtype=object)
    users = names[rng.zipf(1.3, n_events) % n_users]
    age_s = rng.exponential(40 * 86_400, n_events).clip(0, 420 * 86_400)
    behavior = BEHAVIORS[rng.integers(0, len(BEHAVIORS), n_events)]
    category = rng.integers(0, 12, n_events)
    frame = pd.DataFrame({
        "user_id": users,
        "ts": [AS_OF - timedelta(seconds=float(s)) for s in age_s],
        "behavior": behavior,
        "item_id": [f"i{c * 10 + k}" for c, k in zip(category, rng.integers(0, 10, n_events), strict=True)],
        "category_id": [f"c{c}" for c in category],
        "channel": CHANNELS[rng.integers(0, len(CHANNELS), n_events)],
        "amount": np.where(behavior == "buy", rng.gamma(2.0, 20.0, n_events).round(2), np.nan),
    })
    return frame.sort_values(["user_id", "ts"], kind="stable").reset_index(drop=True)


def write_events(frame: pd.DataFrame, path: Path, row_group_size: int) -> Path:
    table = _arrow_events(frame)
    assert table.schema.equals(arrow_schema())
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture(scope="module")
def sorted_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_events(random_events(11), tmp_path_factory.mktemp("chunks") / "events.parquet", 250)


def test_ranges_are_ordered_disjoint_and_sized_from_statistics(sorted_file: Path) -> None:
    ranges = plan_user_ranges([sorted_file], 1_000)
    assert 3 <= len(ranges) <= 6  # 6,000 rows in row groups of 250, cut after every 1,000 (a big user spans groups)
    assert ranges[0].lo is None and ranges[-1].hi is None
    for left, right in itertools.pairwise(ranges):
        assert left.hi == right.lo and left.hi is not None
    bounds = [r.hi for r in ranges[:-1]]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds)


@pytest.mark.parametrize("chunk_events", [1, 700, 2_500])
def test_ranges_give_the_same_table_as_one_piece(sorted_file: Path, chunk_events: int) -> None:
    whole = build_features(sorted_file, AS_OF, chunk_events=None)
    calls: list[tuple[int, int]] = []
    pieces = build_features(sorted_file, AS_OF, chunk_events=chunk_events, progress=lambda d, t: calls.append((d, t)))
    pd.testing.assert_frame_equal(pieces, whole)
    n_ranges = len(plan_user_ranges([sorted_file], chunk_events))
    assert n_ranges > 1
    assert calls == [(i, n_ranges + 2) for i in range(1, n_ranges + 3)]


def test_every_user_lands_in_exactly_one_range(sorted_file: Path) -> None:
    users = pd.read_parquet(sorted_file, columns=["user_id"]).user_id.unique()
    ranges = plan_user_ranges([sorted_file], 300)
    for user in users:
        inside = [r for r in ranges if (r.lo is None or r.lo <= user) and (r.hi is None or user < r.hi)]
        assert len(inside) == 1, user


def test_unsorted_or_unusable_sources_are_built_in_one_piece(tmp_path: Path) -> None:
    frame = random_events(5, n_events=2_000)
    shuffled = write_events(frame.sample(frac=1.0, random_state=3), tmp_path / "shuffled.parquet", 100)
    assert plan_user_ranges([shuffled], 100) == [UserRange()]
    small = write_events(frame, tmp_path / "small.parquet", 100)
    assert plan_user_ranges([small], 5_000) == [UserRange()]
    numeric = tmp_path / "numeric.parquet"
    pq.write_table(pa.table({"user_id": np.arange(1_000), "x": np.ones(1_000)}), numeric, row_group_size=100)
    assert plan_user_ranges([numeric], 100) == [UserRange()]
    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("not a parquet file")
    assert plan_user_ranges([not_parquet], 100) == [UserRange()]
    with pytest.raises(ValueError, match="chunk_events"):
        plan_user_ranges([small], 0)
    with pytest.raises(ValueError, match="chunk_events"):
        build_features(frame, AS_OF, chunk_events=0)
    pd.testing.assert_frame_equal(
        build_features(shuffled, AS_OF, chunk_events=50), build_features(frame, AS_OF)
    )


def test_a_directory_of_sorted_files_is_ranged_across_files(tmp_path: Path) -> None:
    """Daily files each sorted by user (every file spans all users): each range reads a slice of every file."""
    frame = random_events(8, n_events=4_000)
    day = (AS_OF - frame.ts).dt.days % 3
    folder = tmp_path / "events"
    folder.mkdir()
    for d in range(3):
        write_events(frame[day == d], folder / f"day={d}.parquet", 120)
    files = parquet_files(str(folder / "**" / "*.parquet"))
    assert len(files) == 3
    assert len(plan_user_ranges(files, 1_000)) >= 3
    con = duckdb_connection(threads=1)
    pd.testing.assert_frame_equal(
        build_features(folder, AS_OF, con=con, chunk_events=1_000), build_features(frame, AS_OF)
    )


def test_the_validators_output_is_built_in_ranges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The product's chain: validated events (sorted by user, one row group per write batch) plan into ranges."""
    from features.events import passes as events_passes
    from features.events.validate import ReadOptions, ValidationConfig, validate_events

    frame = random_events(21, n_events=3_000)
    raw = write_events(frame.sample(frac=1.0, random_state=4), tmp_path / "export.parquet", 3_000)
    monkeypatch.setattr(events_passes, "BATCH_ROWS", 400)
    report = validate_events(raw, tmp_path / "clean", ValidationConfig(max_bad_share=0.0), ReadOptions(), now=AS_OF)
    ranges = plan_user_ranges([report.events_path], 900)
    assert len(ranges) >= 3
    pd.testing.assert_frame_equal(
        build_features(report.events_path, AS_OF, chunk_events=900), build_features(frame, AS_OF)
    )
