"""Inputs the feature builder accepts (pandas, Parquet file/dir/glob, Ibis tables, partial schemas), its output
contract (columns, dtypes, order), the feature file round trip, clear errors, and the real Taobao sample."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.build.builder import (
    _arrow_events,
    build_features,
    duckdb_connection,
    finalize_features,
    read_features,
    run_feature_table,
    write_features,
)
from features.events.schema import arrow_schema
from features.spec.definition import (
    FEATURE_TABLE_KEY,
    FeatureInputError,
    FeatureSpec,
    FeatureSpecError,
    categorical_columns,
    feature_columns,
    integer_columns,
)
from features.spec.table import feature_table

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
TAOBAO = Path(__file__).resolve().parents[3] / "shared/data/taobao_user_behavior_sample.csv"


def sample_events() -> pd.DataFrame:
    rows = [
        ("u2", 0.5, "view", "i1", "c1", "search", None),
        ("u2", 1.5, "cart", "i1", "c1", "ad", None),
        ("u2", 3.0, "buy", "i1", "c1", None, 12.5),
        ("u1", 20.0, "fav", "i2", "c2", "recommend", None),
        ("u1", 200.0, "buy", "i3", "c2", "promo", 3.0),
        ("u3", 2.0, "visit", None, None, None, None),
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "age", "behavior", "item_id", "category_id", "channel", "amount"])
    frame["ts"] = [AS_OF - timedelta(days=a) for a in frame.pop("age")]
    return frame


def to_arrow(frame: pd.DataFrame) -> pa.Table:
    table = _arrow_events(frame)
    assert table.schema.equals(arrow_schema())
    return table


def test_output_contract_columns_dtypes_and_sort_order():
    spec = FeatureSpec(target_categories=("c1",))
    f = build_features(sample_events(), AS_OF, spec)
    assert list(f.columns) == [FEATURE_TABLE_KEY, *feature_columns(spec), *categorical_columns(spec)]
    assert f.user_id.tolist() == ["u1", "u2", "u3"] and list(f.index) == [0, 1, 2]
    ints = set(integer_columns(spec))
    for col in feature_columns(spec):
        assert str(f[col].dtype) == ("int64" if col in ints else "float64"), col
    assert f.aipl_layer.tolist() == ["P", "P", "A"]
    assert len(feature_columns(spec)) == len(set(feature_columns(spec)))


def test_parquet_file_directory_and_glob_give_the_same_table_as_pandas(tmp_path):
    frame = sample_events()
    expected = build_features(frame, AS_OF)
    pq.write_table(to_arrow(frame.iloc[:3]), tmp_path / "part-0.parquet")
    pq.write_table(to_arrow(frame.iloc[3:]), tmp_path / "part-1.parquet")
    pq.write_table(to_arrow(frame), tmp_path.parent / f"{tmp_path.name}-single.parquet")
    for source in (tmp_path, str(tmp_path / "*.parquet"), tmp_path.parent / f"{tmp_path.name}-single.parquet"):
        pd.testing.assert_frame_equal(build_features(source, AS_OF), expected)


def test_ibis_table_on_a_given_connection_and_both_execution_paths_agree(tmp_path):
    con = duckdb_connection(threads=1, memory_limit="512MB")
    pq.write_table(to_arrow(sample_events()), tmp_path / "events.parquet")
    table = con.read_parquet(tmp_path / "events.parquet")
    spec = FeatureSpec(target_categories=("c2",), lookback_days=10)
    fast = build_features(table, AS_OF, spec, con=con)
    plain = finalize_features(con.to_pandas(feature_table(table, AS_OF, spec)), spec)
    pd.testing.assert_frame_equal(fast, plain)
    assert fast.user_id.tolist() == ["u2", "u3"]
    raw = run_feature_table(table, AS_OF, spec, con=con)
    assert isinstance(raw, pa.Table)
    pd.testing.assert_frame_equal(finalize_features(raw, spec), fast)
    reversed_rows = raw.take(pa.array(range(raw.num_rows - 1, -1, -1)))
    pd.testing.assert_frame_equal(finalize_features(reversed_rows, spec), fast)


def test_raw_pandas_input_int_ids_epoch_seconds_and_aliases_match_canonical():
    canonical = sample_events()
    raw = canonical.copy()
    raw["user_id"] = raw["user_id"].str[1:].astype(int)
    raw["ts"] = raw["ts"].map(lambda t: int(t.timestamp()))
    raw["behavior"] = raw["behavior"].replace({"view": "pv", "cart": "addtocart", "buy": "Purchase"})
    got = build_features(raw, AS_OF)
    want = build_features(canonical.assign(user_id=canonical.user_id.str[1:]), AS_OF)
    pd.testing.assert_frame_equal(got, want)


def test_naive_as_of_is_utc_and_aware_as_of_is_converted():
    frame = sample_events()
    naive = build_features(frame, AS_OF.replace(tzinfo=None))
    shanghai = build_features(frame, AS_OF.astimezone(timezone(timedelta(hours=8))))
    pd.testing.assert_frame_equal(naive, shanghai)


def test_purchase_only_input_produces_every_feature_it_can():
    rows = pd.DataFrame(
        {
            "user_id": ["a", "a", "b"],
            "ts": [AS_OF - timedelta(days=d) for d in (3, 40, 400)],
            "behavior": ["buy", "buy", "buy"],
            "amount": [10.0, 30.0, 5.0],
        }
    )
    f = build_features(rows, AS_OF).set_index("user_id")
    assert f.loc["a", "aipl_layer"] == "L" and f.loc["b", "aipl_layer"] == "none"
    assert f.loc["a", "amount_total"] == 40.0 and f.loc["a", "purchase_gap_mean_days"] == 37.0
    assert f.loc["a", "view_count_30d"] == 0 and np.isnan(f.loc["a", "days_since_last_view"])
    assert f.loc["a", "max_items_per_category_7d"] == 0 and f.loc["a", "carts_unbought_90d"] == 0
    assert np.isnan(f.loc["a", "active_channel_share_30d"])
    assert f.loc["a", "days_since_last_event"] == 3.0


def test_required_columns_only_input_works():
    rows = sample_events()[["user_id", "ts", "behavior"]]
    f = build_features(rows, AS_OF).set_index("user_id")
    assert f.loc["u2", "view_count_1d"] == 1 and f.loc["u2", "distinct_items_30d"] == 0
    assert np.isnan(f.loc["u2", "amount_total"]) and np.isnan(f.loc["u2", "days_since_last_ad"])


def test_no_events_before_as_of_gives_an_empty_table_with_the_contract():
    frame = sample_events()
    f = build_features(frame, AS_OF - timedelta(days=1000))
    assert f.empty and f.columns[0] == "user_id" and str(f["buy_count"].dtype) == "int64"


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"user_id": ["a"], "behavior": ["view"]}), "required column"),
        (pd.DataFrame({"user_id": ["a"], "ts": ["not a date"], "behavior": ["view"]}), "'ts'"),
        (pd.DataFrame({"user_id": ["a"], "ts": [AS_OF], "behavior": ["teleport"]}), "unknown value"),
        (pd.DataFrame({"user_id": [None], "ts": [AS_OF], "behavior": ["view"]}), "user_id"),
        (pd.DataFrame({"user_id": ["a"], "ts": [AS_OF], "behavior": ["buy"], "amount": ["x"]}), "amount"),
    ],
)
def test_bad_pandas_input_raises_a_clear_error(frame, message):
    with pytest.raises(FeatureInputError, match=message):
        build_features(frame, AS_OF)


def test_bad_paths_and_types_raise_clear_errors(tmp_path):
    with pytest.raises(FeatureInputError, match="does not exist"):
        build_features(tmp_path / "missing.parquet", AS_OF)
    with pytest.raises(FeatureInputError, match="no \\*.parquet"):
        build_features(tmp_path, AS_OF)
    with pytest.raises(FeatureInputError, match="no Parquet file matches"):
        build_features(str(tmp_path / "*.parquet"), AS_OF)
    with pytest.raises(FeatureInputError, match="events must be"):
        build_features([1, 2, 3], AS_OF)  # type: ignore[arg-type]
    with pytest.raises(FeatureInputError, match="as_of must be a datetime"):
        build_features(sample_events(), "2024-03-01")  # type: ignore[arg-type]
    with pytest.raises(FeatureInputError, match="'ts' must be a timestamp"):
        feature_table(ibis.memtable({"user_id": ["a"], "ts": ["x"], "behavior": ["view"]}), AS_OF)


def test_feature_file_round_trip_keeps_frame_and_metadata(tmp_path):
    spec = FeatureSpec(target_categories=("c1",))
    f = build_features(sample_events(), AS_OF, spec)
    path = write_features(f, tmp_path / "out" / "features.parquet", AS_OF, spec)
    back, meta = read_features(path)
    pd.testing.assert_frame_equal(back, f)
    assert meta["spec_version"] == spec.version and meta["as_of"] == AS_OF and meta["spec"] == spec
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(FeatureInputError, match="not a feature file"):
        read_features(tmp_path / "plain.parquet")


def test_spec_dict_round_trip_fingerprint_and_validation():
    spec = FeatureSpec(target_categories=("c1", "c2"), lookback_days=60)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.fingerprint() == FeatureSpec.from_dict(spec.to_dict()).fingerprint()
    assert spec.fingerprint() != FeatureSpec().fingerprint()
    with pytest.raises(FeatureSpecError, match="unknown FeatureSpec fields"):
        FeatureSpec.from_dict({"nope": 1})
    with pytest.raises(FeatureSpecError, match="population"):
        FeatureSpec(population="everyone")
    with pytest.raises(FeatureSpecError, match="lookback_days"):
        FeatureSpec(lookback_days=0)


@pytest.mark.skipif(not TAOBAO.exists(), reason="Taobao sample not present")
def test_taobao_sample_builds_one_row_per_user_matching_direct_pandas_counts():
    raw = pd.read_csv(TAOBAO, header=None, names=["user_id", "item_id", "category_id", "behavior", "ts"])
    raw["behavior"] = raw["behavior"].replace({"pv": "view"})
    raw["ts"] = pd.to_datetime(raw["ts"], unit="s", utc=True)
    as_of = datetime(2017, 12, 2, tzinfo=timezone(timedelta(hours=8)))  # midnight Beijing time
    f = build_features(raw, as_of).set_index("user_id")
    assert len(f) == 114
    before = raw[raw.ts < pd.Timestamp(as_of)]
    start7 = pd.Timestamp(as_of) - pd.Timedelta(days=7)
    views7 = before[(before.behavior == "view") & (before.ts >= start7)].groupby("user_id").size()
    views7.index = views7.index.astype(str)
    assert (f["view_count_7d"] == views7.reindex(f.index, fill_value=0)).all()
    last_buy = before[before.behavior == "buy"].groupby("user_id").ts.max()
    last_buy.index = last_buy.index.astype(str)
    expected = (pd.Timestamp(as_of) - last_buy).dt.total_seconds() / 86_400
    assert np.allclose(f["days_since_last_buy"].dropna().sort_index(), expected.sort_index())
    assert set(f.aipl_layer) <= {"L", "P", "I", "A"} and (f.days_since_last_event >= 0).all()
    assert ((f.aipl_layer == "L") == (f.purchase_days_365d >= 2)).all()


def test_ibis_memtable_with_integer_ids_and_epoch_seconds_matches_the_pandas_path():
    epoch = int(AS_OF.timestamp())
    raw = pd.DataFrame(
        {"user_id": [1, 1, 2], "ts": [epoch - 86_400, epoch - 3_600, epoch], "behavior": ["view", "buy", "view"]}
    )
    via_ibis = build_features(ibis.memtable(raw), AS_OF)
    pd.testing.assert_frame_equal(via_ibis, build_features(raw, AS_OF))
    assert via_ibis.user_id.tolist() == ["1"] and via_ibis.loc[0, "view_count_1d"] == 1
    assert via_ibis.loc[0, "days_since_last_buy"] == pytest.approx(1 / 24)


def test_duckdb_fast_path_equals_the_plain_expression_at_microsecond_boundaries_in_any_zone(tmp_path):
    """The DuckDB path reads zoned timestamps as naive UTC; windows, day buckets and ages must not move by 1 us."""
    us = timedelta(microseconds=1)
    offsets = [us, timedelta(days=1) - us, timedelta(days=1), timedelta(days=1) + us, timedelta(days=7),
               timedelta(days=30, microseconds=1), timedelta(days=400)]
    rows = [(f"u{i}", AS_OF - off, b) for i, off in enumerate(offsets) for b in ("view", "buy")]
    rows.append(("u0", AS_OF, "view"))  # at as_of: excluded
    frame = pd.DataFrame(rows, columns=["user_id", "ts", "behavior"])
    con = duckdb_connection(threads=1, memory_limit="512MB")
    for zone in ("UTC", "Asia/Shanghai", "America/Los_Angeles"):
        zoned = frame.assign(ts=frame.ts.dt.tz_convert(zone))
        path = tmp_path / f"{zone.replace('/', '_')}.parquet"
        pq.write_table(pa.Table.from_pandas(zoned, preserve_index=False), path)
        table = con.read_parquet(path)
        assert table.schema()["ts"].timezone is not None
        fast = build_features(table, AS_OF, con=con)
        plain = finalize_features(con.to_pandas(feature_table(table, AS_OF, FeatureSpec())), FeatureSpec())
        pd.testing.assert_frame_equal(fast, plain)
    by_user = fast.set_index("user_id")
    assert by_user.view_count_1d.tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert by_user.active_days_30d.tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert by_user.days_since_last_view["u1"] == pytest.approx(1 - 1e-6 / 86_400, abs=1e-12)
