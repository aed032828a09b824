"""The per-user history: written from an event source, read back per user, features equal to the batch's."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features, events_table
from features.online.arrays import EventArrays
from features.online.compute import online_feature_table
from features.online.history import History, HistoryError, extend_history, write_history
from features.spec.definition import FeatureSpec

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def events() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    n = 3_000
    return pd.DataFrame({
        "user_id": rng.choice([f"u{i:03d}" for i in range(150)], n),
        "ts": pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(-86_400, 200 * 86_400, n), unit="s"),
        "behavior": rng.choice(["view", "fav", "cart", "buy", "visit"], n, p=[0.5, 0.1, 0.1, 0.1, 0.2]),
        "item_id": rng.choice([f"i{i}" for i in range(40)] + [None], n),
        "category_id": rng.choice(["c0", "c1", "c2", None], n),
        "channel": rng.choice(["search", "ad", "recommend", "live", None], n),
        "amount": np.where(rng.random(n) < 0.8, rng.gamma(2.0, 20.0, n), np.nan),
    })


def test_history_returns_each_users_events_and_batch_equal_features(events, tmp_path):
    info = write_history(events_table(events), tmp_path / "h", batch_rows=700, snapshot_id="s1")  # users span batches
    assert (info.events, info.users) == (len(events), events.user_id.nunique())
    history = History(tmp_path / "h")
    assert history.meta["snapshot_id"] == "s1" and len(history) == info.users
    for uid, rows in events.groupby("user_id"):
        got = history.events(uid)
        assert sorted(got.ts_us.tolist()) == sorted(EventArrays.from_frame(rows).ts_us.tolist())
    assert len(history.events("nobody")) == 0 and len(history.events("u999")) == 0
    spec = FeatureSpec(target_categories=("c1",))
    live = online_feature_table(((u, history.events(u)) for u in sorted(events.user_id.unique())), AS_OF, spec)
    batch = build_features(events, AS_OF, spec)
    pd.testing.assert_frame_equal(live, batch, check_exact=False, rtol=1e-9, atol=1e-9)


def test_rewriting_replaces_the_history_whole(events, tmp_path):
    write_history(events_table(events), tmp_path / "h")
    write_history(events_table(events.head(10)), tmp_path / "h")
    assert History(tmp_path / "h").meta["events"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["h"]  # no partial or old directory left behind


def _rows(a: EventArrays) -> list[tuple]:
    return sorted(zip(a.ts_us.tolist(), a.behavior.tolist(), a.item.tolist(), a.category.tolist(),
                      a.channel.tolist(), np.nan_to_num(a.amount, nan=-1.0).tolist(), strict=True))


def _same_events(history: History, events: pd.DataFrame) -> None:
    """Every user of ``events`` has exactly their events in ``history`` (as a multiset of rows)."""
    for uid, rows in events.groupby("user_id"):
        assert _rows(history.events(uid)) == _rows(EventArrays.from_frame(rows)), uid


def test_extending_a_history_gives_every_user_the_events_of_a_whole_write(events, tmp_path):
    old, new, newer = events.iloc[:2000], events.iloc[2000:2600], events.iloc[2600:]
    write_history(events_table(old), tmp_path / "s1", log_seq=3, snapshot_id="s1")
    base_meta = (tmp_path / "s1" / "meta.json").read_text()
    info = extend_history(tmp_path / "s1", events_table(new), tmp_path / "s2", batch_rows=170, snapshot_id="s2")
    extend_history(tmp_path / "s2", events_table(newer), tmp_path / "s3", snapshot_id="s3")
    assert (tmp_path / "s1" / "meta.json").read_text() == base_meta  # the linked base is left as it was
    both = pd.concat([old, new])
    assert (info.events, info.users) == (len(both), both.user_id.nunique())
    for name in ("s1", "s2"):  # the base may go: the later histories hold their own links
        shutil.rmtree(tmp_path / name)
    history = History(tmp_path / "s3")
    assert history.deltas == 2 and history.meta["snapshot_id"] == "s3" and history.meta["log_seq"] == 3
    assert (history.meta["events"], len(history)) == (len(events), events.user_id.nunique())
    _same_events(history, events)
    spec = FeatureSpec(target_categories=("c1",))
    live = online_feature_table(((u, history.events(u)) for u in sorted(events.user_id.unique())), AS_OF, spec)
    pd.testing.assert_frame_equal(live, build_features(events, AS_OF, spec), check_exact=False, rtol=1e-9,
                                  atol=1e-9)


def test_extending_with_nothing_keeps_the_segments_and_other_columns_are_refused(events, tmp_path):
    write_history(events_table(events.iloc[:100]), tmp_path / "s1")
    info = extend_history(tmp_path / "s1", None, tmp_path / "s2", snapshot_id="s2")
    assert info.events == 100 and History(tmp_path / "s2").deltas == 0
    assert History(tmp_path / "s2").meta["snapshot_id"] == "s2"
    with pytest.raises(HistoryError, match="differ"):
        extend_history(tmp_path / "s1", events_table(events.drop(columns="amount")), tmp_path / "s3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1", "s2"]  # nothing half-written left
