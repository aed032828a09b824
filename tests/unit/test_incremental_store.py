"""The kept feature state on disk: a saved state moves on exactly as the one in memory; bad states are refused; its
feature table gives each column an array of its own."""

from __future__ import annotations

import json
from datetime import timedelta

import numpy as np
import pytest

from features.build.builder import build_features
from features.incremental.build import advance_to, state_from_events
from features.incremental.store import StateError, load_state, save_state
from features.incremental.table import feature_frame
from features.spec.definition import FeatureSpec
from tests.property.test_online_parity import AS_OF, CART_EDGES, DAY, assert_parity, frame

LATER = [(("u9", "fav", "i3", "c2", "ad", None), DAY // 2), (("u0", "view", "i1", "c0", None, None), DAY // 4)]


def test_a_saved_state_moves_on_like_the_one_in_memory(tmp_path):
    events = frame(CART_EDGES + LATER)
    before = AS_OF - timedelta(days=1)
    state = state_from_events(events, before, FeatureSpec())
    save_state(state, tmp_path / "state", extra={"note": "kept"})
    rollup = min((tmp_path / "state" / "rollups").rglob("*.npy"))
    keys = tmp_path / "state" / "arrays" / "pair_item_keys.npy"
    first, first_keys = rollup.stat().st_ino, keys.stat().st_ino
    save_state(load_state(tmp_path / "state"), tmp_path / "state")  # saved again: rolled-up days, keys linked
    assert rollup.stat().st_ino == first and rollup.stat().st_nlink == 1  # the same file; the old state's link gone
    assert keys.stat().st_ino == first_keys and keys.stat().st_nlink == 1
    loaded = load_state(tmp_path / "state", FeatureSpec())
    assert_parity(feature_frame(state), feature_frame(loaded), FeatureSpec())
    spare = dict(loaded.bases)  # saved with spare rows for new users
    assert all(len(base) > loaded.n_users for base in spare.values())
    users = loaded.n_users
    day = events[events.ts >= before]
    moved = advance_to(loaded, day, AS_OF)
    assert moved.n_users > users  # u9 is new: it takes a spare row of every per-user array
    assert all(moved.bases[key] is base for key, base in spare.items())
    assert_parity(build_features(events, AS_OF, FeatureSpec()), feature_frame(moved), FeatureSpec())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]  # no temporary folder left


def test_a_missing_damaged_or_other_spec_state_is_refused(tmp_path):
    with pytest.raises(StateError, match="no kept feature state"):
        load_state(tmp_path / "nothing")
    save_state(state_from_events(frame(CART_EDGES), AS_OF, FeatureSpec()), tmp_path / "state")
    with pytest.raises(StateError, match="another feature spec"):
        load_state(tmp_path / "state", FeatureSpec(windows=(1, 7)))
    (tmp_path / "state" / "arrays" / "order.npy").write_bytes(b"not numpy")
    with pytest.raises(StateError, match="damaged"):
        load_state(tmp_path / "state")
    (tmp_path / "state" / "meta.json").write_text("{")
    with pytest.raises(StateError, match="damaged"):
        load_state(tmp_path / "state")


def test_a_state_kept_before_fresh_runs_is_read_with_empty_ones(tmp_path):
    """Format 1 kept each pair state and day gaps in one run, and per-user arrays without spare rows."""
    events = frame(CART_EDGES + LATER)
    before = AS_OF - timedelta(days=1)
    save_state(state_from_events(events, before, FeatureSpec()), tmp_path / "state")
    meta = json.loads((tmp_path / "state" / "meta.json").read_text())
    (tmp_path / "state" / "meta.json").write_text(json.dumps({**meta, "format": 1}))
    for file in (tmp_path / "state" / "arrays").glob("*.npy"):
        if file.name.startswith(("fresh_", "gf_")):
            file.unlink()
        elif file.name.startswith(("p_", "w_")):
            np.save(file, np.load(file)[: meta["users"]])
    loaded = load_state(tmp_path / "state", FeatureSpec())
    assert all(len(keys) == 0 for keys, _ in loaded.fresh.values())
    moved = advance_to(loaded, events[events.ts >= before], AS_OF)
    assert_parity(build_features(events, AS_OF, FeatureSpec()), feature_frame(moved), FeatureSpec())


def test_an_unchanged_array_whose_file_is_gone_is_saved_from_memory(tmp_path):
    """The arrays a night left unchanged are linked to the files they were read from; when one cannot be linked it
    is written from the memory still mapped."""
    events = frame(CART_EDGES + LATER)
    save_state(state_from_events(events, AS_OF, FeatureSpec()), tmp_path / "state")
    loaded = load_state(tmp_path / "state")
    (tmp_path / "state" / "arrays" / "pair_item_keys.npy").unlink()
    save_state(loaded, tmp_path / "state")
    assert (tmp_path / "state" / "arrays" / "pair_item_keys.npy").exists()
    assert_parity(build_features(events, AS_OF, FeatureSpec()), feature_frame(load_state(tmp_path / "state")),
                  FeatureSpec())


def test_the_feature_tables_columns_share_no_memory():
    """Without an amount column the three amount columns are all missing; each still gets an array of its own, so
    that a caller writing one column does not change another."""
    events = frame(CART_EDGES + LATER).drop(columns=["amount"])
    table = feature_frame(state_from_events(events, AS_OF, FeatureSpec()))
    columns = [table[name].to_numpy() for name in table.columns if table[name].dtype.kind in "if"]
    shared = [(a, b) for i, a in enumerate(columns) for b in columns[i + 1:] if np.shares_memory(a, b)]
    assert not shared and len(columns) > 90
