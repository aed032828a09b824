"""Hostile input to the validator: random bytes, wrong types, huge fields, unicode, NaN/inf, extreme timestamps.

Whatever arrives, validation either returns a report whose accounting adds up or raises one of the documented,
user-facing errors (EventsError) with a message; it never crashes with anything else.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.events.validate import EventsError, ValidationConfig, validate_events

NOW = datetime(2026, 11, 1, tzinfo=UTC)
CFG = ValidationConfig(as_of=NOW, max_bad_share=1.0)
HEADER = "user_id,ts,behavior,item_id,category_id,channel,amount\n"

cells = st.one_of(
    st.text(max_size=12),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=3000),  # huge unicode field
    st.sampled_from(["NaN", "nan", "inf", "-inf", "1e309", "-0", "", " ", '"', "\\N", "NULL", "null"]),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0001-01-01", "9999-12-31T23:59:59", "1970-01-01", "-62135596800", "253402300799"]),
    st.sampled_from(["view", "pv", "buy", "cart", "fav", "visit", "wishlist"]),
)
rows = st.lists(st.lists(cells, min_size=0, max_size=9).map(lambda r: ",".join(c.replace("\n", " ") for c in r)),
                max_size=25)


def _check(source: Path, out: Path) -> None:
    try:
        report = validate_events(source, out, CFG, now=NOW)
    except EventsError as exc:
        assert str(exc)  # a message for the user
        return
    assert report.rows_in == report.accepted + report.quarantined + report.duplicates
    assert sum(report.by_reason.values()) == report.quarantined


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body=rows)
def test_random_csv_text_never_crashes(body: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "events.csv"
        source.write_text(HEADER + "\n".join(body) + ("\n" if body else ""), encoding="utf-8")
        _check(source, Path(tmp) / "out")


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.binary(max_size=2000))
def test_random_bytes_never_crash(blob: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "events.csv"
        source.write_bytes(HEADER.encode() + blob)
        _check(source, Path(tmp) / "out")
