"""The nightly build from the kept state: added files moved on, carried events read again, fallbacks said."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest

from features.build.builder import build_features
from features.incremental.nightly import KeptFeatures, keep_state, kept_features, start_state
from features.spec.definition import FeatureSpec
from tests.property.test_online_parity import AS_OF, CART_EDGES, DAY, assert_parity, frame

SPEC = FeatureSpec()
BEFORE = AS_OF - timedelta(days=1)


@pytest.fixture
def source(tmp_path):
    """A source folder with the history before ``BEFORE`` kept as a state in ``tmp_path / 'state'``."""
    folder = tmp_path / "events"
    folder.mkdir()
    history = frame(CART_EDGES)
    history = history[history.ts < BEFORE]
    history.to_parquet(folder / "events.parquet")
    start_state(_files(folder), BEFORE, SPEC, tmp_path / "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events", "state"]  # the roll-ups' folder is gone
    return folder


def _files(folder):
    return sorted(folder.glob("*.parquet"))


def _all(folder):
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in _files(folder)], ignore_index=True)


def test_an_added_file_moves_the_state_on_and_the_table_equals_a_full_build(source, tmp_path):
    day = frame([(("u0", "cart", "i2", "c1", "ad", None), DAY // 2), (("u7", "view", "i1", "c0", None, None), 60)])
    day.to_parquet(source / "ingested-1.parquet")
    kept = kept_features(tmp_path / "state", _files(source), AS_OF, SPEC)
    assert isinstance(kept, KeptFeatures), kept
    assert (kept.nights, kept.events, kept.files) == (1, 2, 1)
    assert_parity(build_features(_all(source), AS_OF, SPEC), kept.table, SPEC)


def test_events_after_the_cutoff_are_read_again_the_next_night(source, tmp_path):
    day = frame([(("u1", "buy", "i0", "c0", None, 9.0), DAY // 2), (("u1", "fav", "i3", "c2", None, None), -60)])
    day.to_parquet(source / "ingested-1.parquet")  # the fav is after tonight's cutoff
    kept = kept_features(tmp_path / "state", _files(source), AS_OF, SPEC)
    assert kept.events == 1
    keep_state(kept.state, tmp_path / "state", _files(source))
    later = AS_OF + timedelta(days=1)
    again = kept_features(tmp_path / "state", _files(source), later, SPEC)
    assert isinstance(again, KeptFeatures) and (again.events, again.files, again.carried) == (1, 0, 1)
    table = again.table.set_index("user_id")
    assert table.loc["u1", "fav_count_1d"] == 1
    assert_parity(build_features(_all(source), later, SPEC), again.table, SPEC)


def test_a_changed_file_a_late_event_or_an_odd_cutoff_falls_back_with_the_reason(source, tmp_path):
    late = frame([(("u2", "view", "i0", "c0", None, None), 2 * DAY)])  # before the kept state's cutoff
    late.to_parquet(source / "ingested-1.parquet")
    assert "before the kept state" in kept_features(tmp_path / "state", _files(source), AS_OF, SPEC)
    os.remove(source / "ingested-1.parquet")
    assert "whole number of days" in kept_features(tmp_path / "state", _files(source), AS_OF + timedelta(hours=5),
                                                   SPEC)
    assert "before the kept state's" in kept_features(tmp_path / "state", _files(source), BEFORE - timedelta(days=1),
                                                      SPEC)
    assert "another feature spec" in kept_features(tmp_path / "state", _files(source), AS_OF,
                                                   FeatureSpec(windows=(1, 7)))
    (source / "ingested-2.parquet").write_bytes(b"not parquet")
    assert "could not be read" in kept_features(tmp_path / "state", _files(source), AS_OF, SPEC)
    os.remove(source / "ingested-2.parquet")
    frame(CART_EDGES).to_parquet(source / "events.parquet")  # the validated events rewritten
    assert "changed or removed" in kept_features(tmp_path / "state", _files(source), AS_OF, SPEC)
    assert "no kept feature state" in kept_features(tmp_path / "nowhere", _files(source), AS_OF, SPEC)
