"""Properties of event validation over random mixes of valid and invalid rows."""

from __future__ import annotations

import csv
import math
import re
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import given, settings
from hypothesis import strategies as st

from features.events.schema import BEHAVIOR_ALIASES, BEHAVIORS
from features.events.validate import ReadOptions, ValidationConfig, validate_events

NOW = datetime(2017, 12, 4, tzinfo=UTC)
NOW_S = int(NOW.timestamp())
PAST = st.integers(NOW_S - 30 * 86400, NOW_S)
WHITESPACE = st.sampled_from(["", " ", "  "])


def _iso(seconds: int, offset_hours: int) -> str:
    from datetime import timedelta, timezone

    tz = timezone(timedelta(hours=offset_hours))
    return datetime.fromtimestamp(seconds, tz).isoformat()


@st.composite
def valid_field_sets(draw):
    user = draw(st.sampled_from(["u1", "u2", "7", "7.0", "x-9"]))
    user = draw(WHITESPACE) + user + draw(WHITESPACE)
    seconds = draw(PAST)
    ts = draw(st.sampled_from(["epoch", "z", "offset"]))
    ts_text = {"epoch": str(seconds), "z": _iso(seconds, 0).replace("+00:00", "Z"), "offset": _iso(seconds, 8)}[ts]
    behavior = draw(st.sampled_from(list(BEHAVIORS) + list(BEHAVIOR_ALIASES)))
    behavior = draw(st.sampled_from([behavior, behavior.upper(), f" {behavior.title()} "]))
    amount = draw(st.one_of(st.just(""), st.integers(0, 10_000).map(lambda c: f"{c / 100:.2f}")))
    item = draw(st.sampled_from(["", "i1", "i2"]))
    return [user, ts_text, behavior, item, amount]


@st.composite
def rows(draw):
    """A CSV row (user_id, ts, behavior, item_id, amount), valid or broken in one or more ways."""
    fields = draw(valid_field_sets())
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["user", "ts", "future", "behavior", "amount"]))
        if kind == "user":
            fields[0] = draw(WHITESPACE)
        elif kind == "ts":
            fields[1] = draw(st.sampled_from(["never", "12:00", "2017-02-30 10:00:00", "1e99"]))
        elif kind == "future":
            fields[1] = str(NOW_S + draw(st.integers(3601, 40 * 86400)))
        elif kind == "behavior":
            fields[2] = draw(st.sampled_from(["like", "share", "views"]))
        else:
            fields[4] = draw(st.sampled_from(["-1.5", "nan", "inf", "abc"]))
    return fields


def _ts_seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def expected(row: list[str]) -> tuple[str | None, tuple | None]:
    """(reason, normalised tuple) by an independent reading of the contract."""
    user, ts, behavior, item, amount = (v.strip() for v in row)
    user = re.sub(r"^([+-]?\d+)\.0+$", r"\1", user)
    if not user:
        return "null_user_id", None
    seconds = _ts_seconds(ts)
    if seconds is None or abs(seconds) >= 1e11:
        return "bad_ts", None
    b = behavior.lower()
    b = BEHAVIOR_ALIASES.get(b, b)
    if b not in BEHAVIORS:
        return "unknown_behavior", None
    value = None
    if amount:
        try:
            value = float(amount)
        except ValueError:
            return "bad_amount", None
        if math.isnan(value) or value in (float("inf"), float("-inf")) or value < 0:
            return "bad_amount", None
    if seconds > NOW_S + 3600:
        return "future_ts", None
    return None, (user, int(seconds), b, item or None, value)


@settings(max_examples=50, derandomize=True, deadline=None)
@given(st.lists(rows(), min_size=1, max_size=25))
def test_invariant_holds_and_valid_rows_are_kept_unchanged(data):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "events.csv"
        with src.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["user_id", "ts", "behavior", "item_id", "amount"])
            writer.writerows(data)
        report = validate_events(
            src, Path(tmp) / "out", ValidationConfig(max_bad_share=1.0), ReadOptions(header=True), now=NOW
        )
        outcomes = [expected(r) for r in data]
        reasons = Counter(reason for reason, _ in outcomes if reason)
        valid = [t for reason, t in outcomes if reason is None]

        assert report.rows_in == len(data) == report.accepted + report.quarantined + report.duplicates
        assert {k: v for k, v in report.by_reason.items() if v} == dict(reasons)
        assert report.accepted == len(set(valid))
        assert report.duplicates == len(valid) - len(set(valid))

        table = pq.read_table(report.events_path).to_pylist()
        got = {
            (r["user_id"], int(r["ts"].timestamp()), r["behavior"], r["item_id"], r["amount"]) for r in table
        }
        assert len(got) == len(table)  # no duplicates left
        assert got == set(valid)
