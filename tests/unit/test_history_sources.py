"""The nightly history: extended with the event files added since the last one, written whole otherwise."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.build.builder import default_connection
from features.online.history import History
from features.online.sources import added_files, keep_history

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


def _events(seed: int, n: int, users: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user_id": rng.choice([f"u{i:03d}" for i in range(users)], n),
        "ts": pd.Timestamp(AS_OF) - pd.to_timedelta(rng.integers(0, 90 * 86_400, n), unit="s"),
        "behavior": rng.choice(["view", "cart", "buy"], n),
        "item_id": rng.choice(["i1", "i2", "i3"], n),
        "category_id": rng.choice(["c1", "c2"], n),
        "channel": rng.choice(["search", "ad", None], n),
        "amount": rng.gamma(2.0, 20.0, n),
    })


def _per_user(history: History, users) -> dict[str, list[int]]:
    return {u: sorted(history.events(u).ts_us.tolist()) for u in users}


def test_added_files_are_the_new_ones_and_any_change_to_an_old_one_means_a_whole_write():
    a = {"path": "/s/a.parquet", "size": 10, "mtime_ns": 5, "ino": 1}
    b = {"path": "/s/b.parquet", "size": 20, "mtime_ns": 6, "ino": 2}
    assert added_files([a], [a, b]) == ["/s/b.parquet"]
    assert added_files([a, b], [a, b]) == []
    assert added_files([a, b], [a]) is None  # removed
    assert added_files([a], [{**a, "size": 11}, b]) is None
    assert added_files([a], [{**a, "mtime_ns": 7}]) is None
    assert added_files([a], [{**a, "ino": 9}]) is None  # replaced by a rename, size and time kept


def test_the_next_history_reads_only_the_added_file_and_equals_a_whole_write(tmp_path: Path):
    con = default_connection()
    src, root = tmp_path / "clean", tmp_path / "online"
    src.mkdir()
    first, later = _events(1, 1_500), _events(2, 300, users=80)  # later: new users too
    first.to_parquet(src / "events.parquet")
    one = keep_history(src, root / "s1", con=con, log_seq=0)
    assert one.base is None and one.added_events == 1_500
    later.to_parquet(src / "ingested-000000000001-000000000300-abcd.parquet")
    two = keep_history(src / "*.parquet", root / "s2", con=con, log_seq=300)
    assert (two.base, two.added_files, two.added_events) == (root / "s1", 1, 300)
    history = History(root / "s2")
    assert history.deltas == 1 and history.meta["log_seq"] == 300
    whole = keep_history(src, tmp_path / "whole" / "w", con=con)
    assert whole.base is None
    users = sorted(set(first.user_id) | set(later.user_id))
    assert (history.meta["events"], len(history)) == (1_800, len(users)) == (whole.info.events, whole.info.users)
    assert _per_user(history, users) == _per_user(History(tmp_path / "whole" / "w"), users)
    same = keep_history(src, root / "s3", con=con)  # nothing added: the segments are linked, none is written
    assert (same.base, same.added_events) == (root / "s2", 0) and History(root / "s3").deltas == 1


def test_a_changed_file_or_too_many_segments_write_the_history_whole(tmp_path: Path):
    con = default_connection()
    src, root = tmp_path / "clean", tmp_path / "online"
    src.mkdir()
    _events(1, 500).to_parquet(src / "a.parquet")
    keep_history(src, root / "s1", con=con, max_deltas=2)
    _events(2, 50).to_parquet(src / "b.parquet")
    assert keep_history(src, root / "s2", con=con, max_deltas=2).base == root / "s1"
    _events(3, 50).to_parquet(src / "c.parquet")
    assert keep_history(src, root / "s3", con=con, max_deltas=2).base == root / "s2"
    _events(4, 50).to_parquet(src / "d.parquet")
    capped = keep_history(src, root / "s4", con=con, max_deltas=2)  # s3 has 2 segments already
    assert capped.base is None and History(root / "s4").deltas == 0 and capped.info.events == 650
    smaller = _events(5, 400)
    smaller.to_parquet(src / "tmp.parquet")
    os.replace(src / "tmp.parquet", src / "a.parquet")  # the validated events rewritten
    changed = keep_history(src, root / "s5", con=con, max_deltas=2)
    assert changed.base is None and changed.info.events == 550
    assert keep_history(src, root / "s6", con=con, max_deltas=0).base is None


def test_a_damaged_last_history_is_not_extended_but_written_whole(tmp_path: Path):
    con = default_connection()
    src, root = tmp_path / "clean", tmp_path / "online"
    src.mkdir()
    _events(1, 300).to_parquet(src / "a.parquet")
    keep_history(src, root / "s1", con=con)
    (root / "s1" / "offsets.npy").unlink()  # e.g. a disk cleanup gone wrong
    for name, text in (("junk1", '{"sources": []}'), ("junk2", "not json"), ("junk3", '{"events": "x", "sources": 3}')):
        (root / name).mkdir()
        (root / name / "meta.json").write_text(text)
    _events(2, 30).to_parquet(src / "b.parquet")
    kept = keep_history(src, root / "s2", con=con)
    assert kept.base is None and kept.info.events == 330 and History(root / "s2").deltas == 0
    assert sorted(p.name for p in root.iterdir()) == ["junk1", "junk2", "junk3", "s1", "s2"]  # no partial left


def test_a_file_exported_while_the_batch_runs_is_left_to_the_next_history_once(tmp_path: Path):
    con = default_connection()
    src, root = tmp_path / "clean", tmp_path / "online"
    src.mkdir()
    _events(1, 400).to_parquet(src / "events.parquet")
    listed = sorted(src.glob("*.parquet"))  # as the batch lists them when it starts
    _events(2, 40).to_parquet(src / "ingested-late.parquet")  # exported by another command meanwhile
    first = keep_history(listed, root / "s1", con=con)
    assert first.info.events == 400  # not the late part: its events are above the batch's log_seq
    second = keep_history(src, root / "s2", con=con)
    assert (second.base, second.added_events, second.info.events) == (root / "s1", 40, 440)  # added once
