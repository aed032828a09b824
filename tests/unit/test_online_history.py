"""The per-user history: written from an event source, read back per user, features equal to the batch's."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features, events_table
from features.online.arrays import EventArrays
from features.online.compute import online_feature_table
from features.online.history import History, write_history
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
