"""Event reading, validation and quarantine on tiny hand-computed files."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events.schema import arrow_schema
from features.events.validate import (
    MissingColumnError,
    ReadOptions,
    SourceError,
    TooManyBadRowsError,
    ValidationConfig,
    load_events,
    validate_events,
)

NOW = datetime(2017, 12, 4, tzinfo=UTC)
LENIENT = ValidationConfig(max_bad_share=1.0)
EPOCH = 1511848894  # 2017-11-28T06:01:34Z
EPOCH_TS = pd.Timestamp("2017-11-28T06:01:34Z")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run(tmp_path: Path, src, config=LENIENT, options=ReadOptions(), **kw):
    return validate_events(src, tmp_path / "out", config, options, now=NOW, **kw)


def quarantine_rows(report) -> list[dict[str, str]]:
    with open(report.quarantine_path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def events(report) -> pd.DataFrame:
    return load_events(report.events_path)


# --- quarantine reasons ------------------------------------------------------------------------


def test_each_reason_is_counted_with_row_number_raw_values_and_first_matching_reason(tmp_path):
    future = (NOW + timedelta(hours=2)).isoformat()
    near_future = (NOW + timedelta(minutes=30)).isoformat()
    src = write(
        tmp_path / "e.csv",
        "user_id,ts,behavior,amount\n"
        f"u1,{EPOCH},view,\n"  # line 2: good
        f",{EPOCH},view,\n"  # 3: null user
        f"   ,{EPOCH},view,\n"  # 4: whitespace user
        "u2,yesterday,view,\n"  # 5: bad ts
        f"u3,{EPOCH},like,\n"  # 6: unknown behavior
        f"u4,{EPOCH},buy,-1\n"  # 7: negative amount
        f"u5,{EPOCH},buy,nan\n"  # 8: NaN amount
        f"u6,{EPOCH},buy,inf\n"  # 9: infinite amount
        f"u7,{EPOCH},buy,12 EUR\n"  # 10: unparseable amount
        f"u8,{future},view,\n"  # 11: future
        f"u9,{near_future},view,\n"  # 12: within tolerance: good
        ",garbage,like,-5\n"  # 13: every problem: first reason wins
        "u10,garbage,like,-5\n"  # 14: bad ts before unknown behavior
        f"u11,{EPOCH},like,-5\n",  # 15: unknown behavior before bad amount
    )
    report = run(tmp_path, src)
    assert report.by_reason == {
        "malformed_row": 0,
        "null_user_id": 3,
        "bad_ts": 2,
        "unknown_behavior": 2,
        "bad_amount": 4,
        "future_ts": 1,
    }
    assert (report.rows_in, report.accepted, report.quarantined, report.duplicates) == (14, 2, 12, 0)
    assert report.bad_share == pytest.approx(12 / 14)
    rows = quarantine_rows(report)
    assert [(int(r["source_row"]), r["reason"]) for r in rows] == [
        (3, "null_user_id"),
        (4, "null_user_id"),
        (5, "bad_ts"),
        (6, "unknown_behavior"),
        (7, "bad_amount"),
        (8, "bad_amount"),
        (9, "bad_amount"),
        (10, "bad_amount"),
        (11, "future_ts"),
        (13, "null_user_id"),
        (14, "bad_ts"),
        (15, "unknown_behavior"),
    ]
    by_line = {int(r["source_row"]): r for r in rows}
    assert by_line[5]["ts"] == "yesterday" and by_line[5]["user_id"] == "u2"
    assert by_line[10]["amount"] == "12 EUR"
    assert by_line[4]["user_id"] == "   "
    assert all(r["source_file"] == str(src.resolve()) for r in rows)
    assert sorted(events(report)["user_id"]) == ["u1", "u9"]


def test_future_ts_uses_as_of_over_now_and_the_tolerance(tmp_path):
    as_of = datetime(2017, 11, 28, tzinfo=UTC)
    src = write(
        tmp_path / "e.csv",
        "user_id,ts,behavior\n"
        "a,2017-11-28T00:59:59Z,view\n"  # within 1 h tolerance
        "b,2017-11-28T01:00:01Z,view\n",  # beyond
    )
    report = run(tmp_path, src, ValidationConfig(as_of=as_of, max_bad_share=1.0))
    assert report.by_reason["future_ts"] == 1
    assert report.cutoff == as_of + timedelta(hours=1)
    assert list(events(report)["user_id"]) == ["a"]
    strict = run(tmp_path, src, ValidationConfig(as_of=as_of, future_tolerance=timedelta(0), max_bad_share=1.0))
    assert strict.by_reason["future_ts"] == 2


def test_malformed_csv_line_is_quarantined_and_later_rows_keep_their_line_numbers(tmp_path):
    src = write(
        tmp_path / "e.csv",
        f"user_id,ts,behavior\nu1,{EPOCH},view\nu2,{EPOCH},view,extra\nu3,{EPOCH},view\nu4,bad,view\n",
    )
    report = run(tmp_path, src)
    assert report.by_reason["malformed_row"] == 1 and report.by_reason["bad_ts"] == 1
    assert (report.rows_in, report.accepted) == (4, 2)
    rows = quarantine_rows(report)
    assert [(int(r["source_row"]), r["reason"]) for r in rows] == [(3, "malformed_row"), (5, "bad_ts")]
    assert rows[0]["raw_line"] == f"u2,{EPOCH},view,extra"


# --- normalisation -----------------------------------------------------------------------------


def test_behavior_aliases_case_and_whitespace(tmp_path):
    raw = ["pv", " PV ", "click", "Cart", "addtocart", "add_to_cart", "favorite", "collect", "transaction",
           "purchase", "order", "BUY", "session", "visit", "fav"]  # fmt: skip
    expected = ["view", "view", "view", "cart", "cart", "cart", "fav", "fav", "buy",
                "buy", "buy", "buy", "visit", "visit", "fav"]  # fmt: skip
    lines = "".join(f"u{i:02d},{EPOCH},{b}\n" for i, b in enumerate(raw))
    report = run(tmp_path, write(tmp_path / "e.csv", "user_id,ts,behavior\n" + lines))
    got = events(report).sort_values("user_id")["behavior"].tolist()
    assert got == expected and report.quarantined == 0


def test_timestamps_epoch_iso_offset_and_naive_in_source_tz_are_one_instant(tmp_path):
    src = write(
        tmp_path / "e.csv",
        "user_id,ts,behavior\n"
        f"u,{EPOCH},view\n"
        f"u,{EPOCH}.0,view\n"
        "u,2017-11-28T06:01:34Z,view\n"
        "u,2017-11-28 14:01:34+08:00,view\n"
        "u,2017-11-28 14:01:34,view\n"  # naive, read in Asia/Shanghai
        f"u,{EPOCH}.5,view\n",  # half a second later: a different event
    )
    report = run(tmp_path, src, options=ReadOptions(source_tz="Asia/Shanghai"))
    frame = events(report)
    assert (report.accepted, report.duplicates) == (2, 4)
    assert frame["ts"].tolist() == [EPOCH_TS, EPOCH_TS + pd.Timedelta(milliseconds=500)]
    # the same naive text read as UTC is 8 hours later
    utc = validate_events(src, tmp_path / "utc", LENIENT, ReadOptions(source_tz="UTC"), now=NOW)
    assert pd.Timestamp("2017-11-28T14:01:34Z") in set(events(utc)["ts"])


def test_epoch_unit_milliseconds(tmp_path):
    src = write(tmp_path / "e.csv", f"user_id,ts,behavior\nu,{EPOCH}123,view\n")
    report = run(tmp_path, src, options=ReadOptions(epoch_unit="ms"))
    assert events(report)["ts"].tolist() == [EPOCH_TS + pd.Timedelta(milliseconds=123)]
    # read as seconds the same number is tens of thousands of years away: not a timestamp
    assert run(tmp_path, src).by_reason["bad_ts"] == 1


def test_ids_as_text_channel_and_amount(tmp_path):
    src = write(
        tmp_path / "e.csv",
        "user_id,ts,behavior,item_id,category_id,channel,amount\n"
        f"999477,{EPOCH},buy,2200475.0, c1 ,Search,12.50\n"
        f"999478,{EPOCH},view,,,TikTok,\n"
        f"999479,{EPOCH},view,7,8,,0\n",
    )
    frame = events(run(tmp_path, src)).set_index("user_id")
    assert frame.loc["999477", "item_id"] == "2200475"
    assert frame.loc["999477", "category_id"] == "c1"
    assert frame.loc["999477", "channel"] == "search"
    assert frame.loc["999477", "amount"] == 12.5
    assert frame.loc["999478", "channel"] == "other"
    assert pd.isna(frame.loc["999478", "item_id"]) and pd.isna(frame.loc["999478", "amount"])
    assert pd.isna(frame.loc["999479", "channel"]) and frame.loc["999479", "amount"] == 0.0


def test_duplicates_identical_after_normalisation_are_dropped_and_counted(tmp_path):
    src = write(
        tmp_path / "e.csv",
        "user_id,ts,behavior,item_id\n"
        f"u1,{EPOCH},pv,i1\n"
        f"u1,{EPOCH},view,i1\n"  # same after alias
        f" u1 ,{EPOCH},PV,i1\n"  # same after trimming and case
        f"u1,{EPOCH},view,i2\n"  # other item: kept
        f"u1,{EPOCH},view,i2\n",  # exact copy
    )
    report = run(tmp_path, src)
    assert (report.rows_in, report.accepted, report.quarantined, report.duplicates) == (5, 2, 0, 3)
    assert events(report)["item_id"].tolist() == ["i1", "i2"]


def test_rows_already_in_known_history_files_are_left_out_and_counted(tmp_path):
    """An export repeating events already in the history (e.g. ingested through /events) keeps them once."""
    ingested = write(
        tmp_path / "ingested.csv",
        "user_id,ts,behavior,item_id,amount\n"
        f"u1,{EPOCH},view,i1,\n"
        f"u2,{EPOCH},buy,,12.5\n",  # no item: nulls must match nulls
    )
    known = validate_events(ingested, tmp_path / "known", LENIENT, now=NOW).events_path
    src = write(
        tmp_path / "export.csv",
        "user_id,ts,behavior,item_id,amount\n"
        f"u1,{EPOCH},view,i1,\n"  # in the history
        f"u2,{EPOCH},buy,,12.5\n"  # in the history
        f"u2,{EPOCH},buy,,12.5\n"  # and repeated in the export
        f"u2,{EPOCH},buy,,13.0\n"  # another amount: new
        f"u1,{EPOCH + 1},view,i1,\n"  # a second later: new
        f"u3,{EPOCH},view,i1,\n",
    )
    report = run(tmp_path, src, known=[known])
    assert (report.rows_in, report.accepted, report.quarantined, report.duplicates) == (6, 3, 0, 3)
    assert report.already_known == 2 and report.to_dict()["already_known"] == 2
    got = events(report)
    assert sorted(zip(got.user_id, got.amount.fillna(0), strict=True)) == [("u1", 0), ("u2", 13.0), ("u3", 0)]
    assert run(tmp_path, src).already_known == 0  # without known files every distinct row is kept


def test_a_run_with_nothing_left_to_store_keeps_the_stored_events(tmp_path):
    from features.events.validate import NothingToStoreError

    good = write(tmp_path / "good.csv", f"user_id,ts,behavior\nu1,{EPOCH},view\nu2,{EPOCH},buy\n")
    stored = run(tmp_path, good).events_path
    before = stored.read_bytes()
    known = validate_events(good, tmp_path / "known", LENIENT, now=NOW).events_path
    empty = write(tmp_path / "empty.csv", "user_id,ts,behavior\n")
    for src, kw, already in ((empty, {}, 0), (good, {"known": [known]}, 2)):
        with pytest.raises(NothingToStoreError, match="no event of this export is left to store") as caught:
            run(tmp_path, src, keep_nonempty=True, **kw)
        assert caught.value.report.already_known == already and caught.value.report.events_path is None
        assert stored.read_bytes() == before  # the 2 stored events stay
    assert run(tmp_path, empty).accepted == 0 and len(load_events(stored)) == 0  # without the guard: replaced


# --- reading -----------------------------------------------------------------------------------


def test_header_and_headerless_files_give_the_same_events(tmp_path):
    body = f"u1,i1,c1,pv,{EPOCH}\nu2,i2,c2,buy,{EPOCH + 60}\n"
    names = ("user_id", "item_id", "category_id", "behavior", "ts")
    with_header = write(tmp_path / "h.csv", ",".join(names) + "\n" + body)
    without = write(tmp_path / "n.csv", body)
    a = events(validate_events(with_header, tmp_path / "a", LENIENT, ReadOptions(), now=NOW))
    b = events(validate_events(without, tmp_path / "b", LENIENT, ReadOptions(names=names), now=NOW))
    c = events(validate_events(without, tmp_path / "c", LENIENT, ReadOptions.taobao(), now=NOW))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, c)
    assert len(a) == 2


def test_semicolon_delimiter_is_detected(tmp_path):
    src = write(tmp_path / "e.csv", f"user_id;ts;behavior\nu1;{EPOCH};view\n")
    assert events(run(tmp_path, src))["user_id"].tolist() == ["u1"]


def test_column_mapping_renames_source_columns_and_ignores_others(tmp_path):
    src = write(
        tmp_path / "retail.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        f"{EPOCH}000,257597,view,355908,\n"
        f"{EPOCH}000,257597,transaction,355908,42\n",
    )
    options = ReadOptions(
        columns={"timestamp": "ts", "visitorid": "user_id", "event": "behavior", "itemid": "item_id"},
        epoch_unit="ms",
    )
    report = run(tmp_path, src, options=options)
    frame = events(report)
    assert frame["behavior"].tolist() == ["buy", "view"]
    assert set(frame["item_id"]) == {"355908"} and set(frame["ts"]) == {EPOCH_TS}
    assert report.columns["ts"] == "timestamp"


def test_missing_required_column_names_it_and_the_columns_seen(tmp_path):
    src = write(tmp_path / "e.csv", f"user,ts,event\nu1,{EPOCH},view\n")
    with pytest.raises(MissingColumnError) as err:
        run(tmp_path, src)
    msg = str(err.value)
    assert "user_id" in msg and "behavior" in msg and "columns seen: user, ts, event" in msg
    assert not (tmp_path / "out" / "events.parquet").exists()


def test_headerless_file_without_names_explains_what_to_pass(tmp_path):
    src = write(tmp_path / "e.csv", f"u1,{EPOCH},view\nu2,{EPOCH},buy\n")
    with pytest.raises(MissingColumnError, match="names="):
        run(tmp_path, src)


def test_parquet_file_directory_and_glob_with_native_types(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    naive = pa.array([datetime(2017, 11, 28, 14, 1, 34), datetime(2017, 11, 28, 15, 0, 0)], pa.timestamp("ms"))
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([999477, 999478], pa.int64()),
                "ts": naive,
                "behavior": ["pv", "buy"],
                "item_id": pa.array([2200475.0, None], pa.float64()),
                "amount": pa.array([None, 9.5]),
            }
        ),
        parts / "part-0.parquet",
    )
    pq.write_table(
        pa.table({"user_id": pa.array([1, None], pa.int64()), "ts": naive, "behavior": ["cart", "cart"]}),
        parts / "part-1.parquet",
    )
    (parts / "_SUCCESS").write_text("")
    options = ReadOptions(source_tz="Asia/Shanghai")
    for src in (parts, str(parts / "*.parquet"), sorted(parts.glob("*.parquet"))):
        report = validate_events(src, tmp_path / "out", LENIENT, options, now=NOW)
        assert (report.rows_in, report.accepted, report.quarantined) == (4, 3, 1)
        frame = events(report)
        first = frame[frame["user_id"] == "999477"].iloc[0]
        assert first["ts"] == EPOCH_TS and first["item_id"] == "2200475" and first["behavior"] == "view"
        assert frame[frame["user_id"] == "999478"]["amount"].tolist() == [9.5]
        (bad,) = quarantine_rows(report)
        assert bad["source_file"].endswith("part-1.parquet") and bad["source_row"] == "2"
        assert bad["reason"] == "null_user_id"


def test_purchase_only_order_export_validates(tmp_path):
    src = write(
        tmp_path / "orders.csv",
        "user_id,ts,behavior,amount\n"
        "c1,2017-11-20T10:00:00Z,purchase,19.90\n"
        "c1,2017-11-25T10:00:00Z,purchase,5\n"
        "c2,2017-11-26T08:30:00+01:00,purchase,120\n",
    )
    report = run(tmp_path, src, ValidationConfig())
    frame = events(report)
    assert report.passed and report.accepted == 3
    assert set(frame["behavior"]) == {"buy"} and frame["amount"].sum() == pytest.approx(144.9)
    assert frame["item_id"].isna().all()


# --- outputs, threshold, errors ------------------------------------------------------------------


def test_outputs_follow_the_canonical_schema_sorted_with_a_json_report(tmp_path):
    src = write(
        tmp_path / "e.csv",
        f"user_id,ts,behavior\nb,{EPOCH + 5},view\na,{EPOCH + 9},view\nb,{EPOCH},buy\na,{EPOCH},cart\n",
    )
    calls: list[tuple[int, int | None]] = []
    report = run(tmp_path, src, progress=lambda done, total: calls.append((done, total)))
    assert pq.read_schema(report.events_path) == arrow_schema()
    frame = events(report)
    assert list(zip(frame["user_id"], frame["behavior"], strict=True)) == [
        ("a", "cart"), ("a", "view"), ("b", "buy"), ("b", "view"),
    ]  # fmt: skip
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]" and frame["amount"].dtype == "float64"
    on_disk = json.loads(report.report_path.read_text())
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert on_disk["rows_in"] == 4 and on_disk["passed"] is True
    assert calls[0] == (0, 4) and calls[-1] == (4, 4) and len(calls) >= 3
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no leftovers


def test_too_many_bad_rows_writes_quarantine_and_report_then_raises(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "events.parquet").write_bytes(b"stale")
    lines = "".join(f"u{i},{EPOCH},view\n" for i in range(8)) + "x,not-a-time,view\ny,2017-13-45,view\n"
    src = write(tmp_path / "e.csv", "user_id,when,behavior\n" + lines)
    options = ReadOptions(columns={"when": "ts"})
    with pytest.raises(TooManyBadRowsError) as err:
        validate_events(src, out, ValidationConfig(max_bad_share=0.1), options, now=NOW)
    e = err.value
    assert e.exit_code == 3
    msg = str(e)
    assert "20.00% of 10 rows" in msg and "10.00%" in msg
    assert "ts (source column 'when'): 2 rows unparseable" in msg and "'not-a-time'" in msg
    assert (e.report.rows_in, e.report.quarantined, e.report.accepted) == (10, 2, 8)
    assert e.report.events_path is None and not (out / "events.parquet").exists()
    assert len(quarantine_rows(e.report)) == 2
    assert json.loads((out / "validation.json").read_text())["passed"] is False
    # exactly at the limit passes
    ok = validate_events(src, out, ValidationConfig(max_bad_share=0.2), options, now=NOW)
    assert ok.passed and (out / "events.parquet").exists()


def test_source_errors_are_clear(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        run(tmp_path, tmp_path / "missing.csv")
    with pytest.raises(SourceError, match="no event files match"):
        run(tmp_path, str(tmp_path / "*.csv"))
    with pytest.raises(SourceError, match="empty"):
        run(tmp_path, write(tmp_path / "empty.csv", ""))
    a = write(tmp_path / "a.csv", f"user_id,ts,behavior\nu,{EPOCH},view\n")
    pq.write_table(pa.table({"user_id": ["u"]}), tmp_path / "b.parquet")
    with pytest.raises(SourceError, match="mix CSV"):
        run(tmp_path, [a, tmp_path / "b.parquet"])


def test_multiple_csv_files_number_rows_per_file(tmp_path):
    a = write(tmp_path / "a.csv", f"user_id,ts,behavior\nu1,{EPOCH},view\nu2,bad,view\n")
    b = write(tmp_path / "b.csv", f"user_id,ts,behavior\nu3,bad,view\nu4,{EPOCH},view\n")
    report = run(tmp_path, [a, b])
    rows = quarantine_rows(report)
    assert [(Path(r["source_file"]).name, r["source_row"]) for r in rows] == [("a.csv", "3"), ("b.csv", "2")]
    assert report.accepted == 2 and report.rows_in == 4


def test_header_only_file_gives_empty_outputs(tmp_path):
    report = run(tmp_path, write(tmp_path / "e.csv", "user_id,ts,behavior\n"), ValidationConfig())
    assert (report.rows_in, report.accepted, report.bad_share) == (0, 0, 0.0)
    assert len(events(report)) == 0


def test_config_and_options_reject_bad_values():
    with pytest.raises(ValueError, match="timezone-aware"):
        ValidationConfig(as_of=datetime(2017, 12, 1))
    with pytest.raises(ValueError, match="max_bad_share"):
        ValidationConfig(max_bad_share=1.5)
    with pytest.raises(ValueError, match="unknown column"):
        ReadOptions(columns={"x": "userid"})
    with pytest.raises(ValueError, match="IANA"):
        ReadOptions(source_tz="Mars/Olympus")


def test_naive_now_is_refused(tmp_path):
    src = write(tmp_path / "e.csv", f"user_id,ts,behavior\nu,{EPOCH},view\n")
    with pytest.raises(ValueError, match="timezone-aware"):
        validate_events(src, tmp_path / "o", LENIENT, now=datetime(2017, 12, 4))


def test_load_events_rejects_a_non_canonical_file(tmp_path):
    pq.write_table(pa.table({"user_id": ["u"]}), tmp_path / "x.parquet")
    with pytest.raises(MissingColumnError, match="ts"):
        load_events(tmp_path / "x.parquet")


def test_gzipped_csv_is_read(tmp_path):
    import gzip

    src = tmp_path / "e.csv.gz"
    src.write_bytes(gzip.compress(f"user_id,ts,behavior\nu1,{EPOCH},pv\n".encode()))
    assert events(run(tmp_path, src))["behavior"].tolist() == ["view"]


def test_parquet_epoch_integers_and_tz_aware_timestamps(tmp_path):
    pq.write_table(
        pa.table({"user_id": ["a"], "ts": pa.array([EPOCH], pa.int64()), "behavior": ["buy"], "amount": ["-2"]}),
        tmp_path / "epoch.parquet",
    )
    report = run(tmp_path, tmp_path / "epoch.parquet")
    assert report.by_reason["bad_amount"] == 1
    (bad,) = quarantine_rows(report)
    assert (bad["ts"], bad["amount"], bad["source_row"]) == (str(EPOCH), "-2", "1")
    aware = pa.array([EPOCH_TS.to_pydatetime()], pa.timestamp("us", tz="America/New_York"))
    pq.write_table(pa.table({"user_id": ["a"], "ts": aware, "behavior": ["buy"]}), tmp_path / "aware.parquet")
    frame = events(validate_events(tmp_path / "aware.parquet", tmp_path / "o2", LENIENT, now=NOW))
    assert frame["ts"].tolist() == [EPOCH_TS]


def test_broken_accounting_raises_invariant_error(tmp_path):
    from features.events.validate import InvariantError, _check_invariant

    src = write(tmp_path / "e.csv", f"user_id,ts,behavior\nu1,{EPOCH},view\nu1,{EPOCH},view\nu2,bad,view\n")
    report = run(tmp_path, src)
    _check_invariant(report, parsed=3, valid=2, written_quarantine=1)  # the real accounting holds
    with pytest.raises(InvariantError, match="reader yields 4 rows"):
        _check_invariant(report, parsed=4, valid=2, written_quarantine=1)
    with pytest.raises(InvariantError, match="quarantine file has 0 rows"):
        _check_invariant(report, parsed=3, valid=2, written_quarantine=0)
