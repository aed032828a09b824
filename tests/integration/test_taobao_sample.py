"""The real Taobao UserBehavior sample reads end to end (no header, pv alias, epoch seconds)."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.events.schema import arrow_schema
from features.events.validate import ReadOptions, TooManyBadRowsError, ValidationConfig, load_events, validate_events

SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/taobao_user_behavior_sample.csv"
pytestmark = pytest.mark.skipif(not SAMPLE.exists(), reason=f"sample data not found at {SAMPLE}")


def _raw_rows() -> list[list[str]]:
    with SAMPLE.open(newline="") as fh:
        return list(csv.reader(fh))


def test_sample_reads_with_the_documented_counts(tmp_path):
    report = validate_events(
        SAMPLE, tmp_path, ValidationConfig(), ReadOptions.taobao(), now=datetime(2017, 12, 4, tzinfo=UTC)
    )
    raw = _raw_rows()
    # the sample has no exact duplicate lines, so nothing is dropped
    assert len({tuple(r) for r in raw}) == len(raw) == 10_000
    assert (report.rows_in, report.accepted, report.quarantined, report.duplicates) == (10_000, 10_000, 0, 0)
    frame = load_events(report.events_path)
    assert frame["user_id"].nunique() == 114
    assert (frame["behavior"] == "buy").sum() == 206
    assert set(frame["behavior"]) == {"view", "fav", "cart", "buy"}
    assert pq.read_schema(report.events_path) == arrow_schema()
    # epoch seconds are absolute: 2017-11-24 .. 2017-12-03 in Beijing time
    local = frame["ts"].dt.tz_convert("Asia/Shanghai")
    assert local.min() >= pd.Timestamp("2017-11-24", tz="Asia/Shanghai")
    assert local.max() < pd.Timestamp("2017-12-04", tz="Asia/Shanghai")
    first = raw[0]
    row = frame[(frame["user_id"] == first[0]) & (frame["item_id"] == first[1])].iloc[0]
    assert row["ts"] == pd.Timestamp(int(first[4]), unit="s", tz="UTC")
    assert row["category_id"] == first[2]


def test_an_early_cutoff_quarantines_exactly_the_later_events(tmp_path):
    as_of = datetime(2017, 12, 2, tzinfo=UTC)
    limit = as_of.timestamp() + 3600
    later = sum(int(r[4]) > limit for r in _raw_rows())
    config = ValidationConfig(as_of=as_of, max_bad_share=0.5)
    report = validate_events(SAMPLE, tmp_path, config, ReadOptions.taobao(), now=datetime(2017, 12, 4, tzinfo=UTC))
    assert later > 0
    assert report.by_reason["future_ts"] == report.quarantined == later
    assert report.accepted == 10_000 - later
    with pytest.raises(TooManyBadRowsError, match="later than the cutoff"):
        validate_events(
            SAMPLE, tmp_path, ValidationConfig(as_of=as_of), ReadOptions.taobao(), now=datetime(2017, 12, 4, tzinfo=UTC)
        )
