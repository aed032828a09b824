"""The same feature expression and scoring path on Spark local mode, against the DuckDB engine.

One SparkSession for the module (local[2], 4 shuffle partitions, no UI, bound to 127.0.0.1). On the same
generated events, the Spark feature table must equal the DuckDB one, and the per-partition batch (mapInPandas)
must give the audience records of the one-machine batch. Skipped when PySpark or Java 17+ is missing.
"""

from __future__ import annotations

import itertools
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.integration.spark_support import SPARK_MARKS, skip_without_spark

pytestmark = SPARK_MARKS
skip_without_spark()

from features.build.builder import build_features
from features.build.spark import build_features_spark, read_features_meta, sample_users, session_of
from features.simulate.shop import GeneratorConfig, generate
from features.spec.definition import FeatureInputError, FeatureSpec, integer_columns, output_columns, trend_column
from serving.activation.actions import ActivationConfig
from serving.batch.run import PublishRefusedError, score_chunks
from serving.batch.spark import SparkBatchError, iter_audience_chunks, run_batch_spark
from serving.store.base import encode_chunk, open_store

CONFIG = GeneratorConfig(n_users=800, days=45, chunk_users=800)
AS_OF = CONFIG.start_utc + timedelta(days=40)
SPEC = FeatureSpec()
TOL = 1e-9
EXACT_RHYTHM = {"active_gap_mean_days", "active_gap_median_days", "purchase_gap_median_days",
                *(trend_column(b, SPEC) for b in ("view", "fav", "cart", "buy", "visit", "event"))}
"""Rhythm columns equal to the last bit on both engines: exact medians (DuckDB ``percentile_cont``, Spark
``percentile``) of whole-day gaps, ratios of whole numbers and the same float operations on counts."""


@pytest.fixture(scope="module")
def events_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(CONFIG, tmp_path_factory.mktemp("spark_shop")).events_dir


@pytest.fixture(scope="module")
def con(spark_con: Any) -> Any:
    return spark_con


@pytest.fixture(scope="module")
def duck(events_dir: Path) -> pd.DataFrame:
    return build_features(events_dir, AS_OF, SPEC)


@pytest.fixture(scope="module")
def features_dir(events_dir: Path, con: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("spark_out") / "features"
    build_features_spark(events_dir, AS_OF, SPEC, con, out_dir=out, n_buckets=4)
    return out


@pytest.fixture(scope="module")
def spark_features(features_dir: Path, con: Any) -> Any:
    return session_of(con).read.parquet(str(features_dir))


def _tiny_bundle(target: str, raw: pd.DataFrame, events_dir: Path, seed: int) -> Any:
    """A small calibrated LightGBM bundle on labels derived from the features (as the service fixtures do)."""
    import lightgbm as lgb

    from features.segments.segmenter import Segmenter
    from training.bundle import ModelBundle, design_matrix
    from training.calibration import Calibrator
    from training.labels import LabelSpec

    segmenter = Segmenter().fit(events_dir, raw, AS_OF)
    x, names = design_matrix(segmenter.transform(raw), SPEC)
    rng = np.random.default_rng(seed)
    signal = np.nan_to_num(x[:, seed % 8], nan=0.0)
    y = (signal + rng.normal(0, signal.std() + 1e-9, len(x)) < np.median(signal)).astype(int)
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 20, "seed": seed,
              "deterministic": True, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y, feature_name=names), num_boost_round=15)
    calibrator = Calibrator(kind="platt").fit(booster.predict(x), y)
    return ModelBundle(target=target, booster=booster, calibrator=calibrator, segmenter=segmenter, spec=SPEC,
                       label_spec=LabelSpec(), feature_names=names, meta={"version": str(seed)})


@pytest.fixture(scope="module")
def bundles(duck: pd.DataFrame, events_dir: Path) -> dict[str, Any]:
    return {t: _tiny_bundle(t, duck, events_dir, seed=3 + i) for i, t in enumerate(("last_mile_buyer", "lapse_risk"))}


@pytest.fixture(scope="module")
def spark_batch(features_dir: Path, bundles: dict[str, Any], con: Any, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("spark_batch")
    store = open_store(root / "scores.sqlite")
    done: list[tuple[int, int | None]] = []
    result = run_batch_spark(
        features_dir, AS_OF, bundles, store, root / "audience", con=con, created_at=AS_OF + timedelta(hours=2),
        chunk_rows=300, progress=lambda d, t: done.append((d, t)),
    )
    try:
        yield result, store, done
    finally:
        store.close()


def _assert_frames_close(left: pd.DataFrame, right: pd.DataFrame, exact: set[str]) -> None:
    assert list(left.columns) == list(right.columns)
    assert left["user_id"].tolist() == right["user_id"].tolist()
    for name in left.columns:
        a, b = left[name], right[name]
        if name in exact or not pd.api.types.is_float_dtype(a):
            assert [_plain(v) for v in a] == [_plain(v) for v in b], name
        else:
            np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=0, atol=TOL, err_msg=name)


def _text(output: str) -> str:
    """Printed output without table borders, whitespace collapsed (a wrapped cell reads as one line)."""
    return " ".join(output.replace("│", " ").split())


def _plain(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x) for x in v]
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


def test_spark_features_equal_duckdb_for_every_feature(features_dir: Path, spark_features: Any, duck: pd.DataFrame):
    assert list(spark_features.columns) == output_columns(SPEC)
    spark = sample_users(spark_features, 1.0, spec=SPEC)  # the whole table, finalized like build_features output
    assert len(duck) > 500
    assert list(spark.columns) == output_columns(SPEC)
    assert (spark.dtypes == duck.dtypes).all()
    _assert_frames_close(spark, duck, exact=set(integer_columns(SPEC)) | {"user_id", "aipl_layer"} | EXACT_RHYTHM)
    # the rhythm columns are exercised: even and odd gap counts, both trend signs, survival inside (0, 1)
    assert (duck.active_gap_median_days % 1 == 0.5).any() and (duck.active_gap_median_days % 1 == 0).any()
    assert duck.purchase_gap_median_days.notna().sum() > 20
    assert (duck.event_trend_7d_vs_28d > 0).any() and (duck.event_trend_7d_vs_28d < 0).any()
    assert duck.active_survival.between(0, 1, inclusive="neither").sum() > 100
    files = sorted(features_dir.glob("part-*.parquet"))
    assert 1 < len(files) <= 4 and not list(features_dir.glob("*=*"))  # one file per bucket, no partition folders
    users = [pd.read_parquet(f, columns=["user_id"])["user_id"].tolist() for f in files]
    assert all(u == sorted(u) for u in users)  # sorted inside a file
    assert sorted(x for u in users for x in u) == sorted(duck["user_id"])  # every user in exactly one file
    assert not list(features_dir.parent.glob("features.partial-*"))  # written aside, then renamed into place


def test_feature_files_of_both_engines_are_equal_column_for_column(
    features_dir: Path, duck: pd.DataFrame, tmp_path: Path
) -> None:
    """`propensity features` writes the same columns, in the same order and types, on either engine."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from features.build.builder import write_features

    duck_file = write_features(duck, tmp_path / "features.parquet", AS_OF, SPEC)

    def columns(schema: Any) -> list[tuple[str, str]]:
        return [(f.name, str(f.type).replace("large_string", "string")) for f in schema]

    spark_schema = pads.dataset(str(features_dir), format="parquet", partitioning="hive").schema
    assert len(spark_schema) == len(output_columns(SPEC)) == len(pq.read_schema(duck_file))
    assert columns(spark_schema) == columns(pq.read_schema(duck_file))
    from_spark, from_duck = pd.read_parquet(features_dir), pd.read_parquet(duck_file)
    assert list(from_spark.columns) == list(from_duck.columns) and (from_spark.dtypes == from_duck.dtypes).all()


def test_feature_directory_records_spec_as_of_and_rows(features_dir: Path, duck: pd.DataFrame):
    meta = read_features_meta(features_dir)
    assert meta["spec"] == SPEC and meta["as_of"] == AS_OF
    assert meta["rows"] == len(duck) and meta["n_buckets"] == 4


def test_batch_scores_equal_the_one_machine_batch(spark_batch, duck: pd.DataFrame, bundles: dict[str, Any]):
    result, _, _ = spark_batch
    expected = pd.concat(list(score_chunks(duck, bundles, AS_OF, ActivationConfig(), 250)), ignore_index=True)
    got = pd.concat(list(iter_audience_chunks(result.audience_path, 200)), ignore_index=True)
    got = got.sort_values("user_id", kind="stable").reset_index(drop=True)
    expected = expected.sort_values("user_id", kind="stable").reset_index(drop=True)
    assert result.users == len(duck)
    assert result.action_counts == {str(k): int(v) for k, v in expected["action"].value_counts().items()}
    assert result.mean_p_buy == pytest.approx(expected["p_buy"].mean(), abs=TOL)
    _assert_frames_close(got, expected, exact=set())
    assert {p.name.split("=")[1] for p in result.audience_path.glob("action=*")} == set(expected["action"])


def test_published_snapshot_serves_the_same_records(spark_batch, duck: pd.DataFrame, bundles: dict[str, Any]):
    result, store, progress = spark_batch
    snapshot = store.current()
    assert snapshot is not None and snapshot == result.snapshot
    assert snapshot.rows == len(duck) and snapshot.meta["engine"] == "spark"
    assert snapshot.meta["defaults"]["aipl_layer"] == "none"
    assert progress[-1] == (len(duck), len(duck)) and len(progress) >= len(duck) // 300
    expected = pd.concat(list(score_chunks(duck, bundles, AS_OF, ActivationConfig(), 1000)), ignore_index=True)
    none = expected["aipl_layer"] == "none"
    assert none.any()  # the defaults for unknown users: the mean over every layer-none user, computed exactly
    assert snapshot.meta["defaults"]["p_buy"] == pytest.approx(float(expected.loc[none, "p_buy"].mean()), rel=1e-12)
    ids, payloads = encode_chunk(expected)
    _, found = store.lookup(ids)
    assert set(found) == set(ids)
    for uid, payload in zip(ids, payloads, strict=False):
        want, got = json.loads(payload), json.loads(found[uid])
        assert list(got) == list(want)
        for key, value in want.items():
            assert got[key] == (pytest.approx(value, abs=TOL) if isinstance(value, float) else value), (uid, key)


def test_user_sample_is_deterministic_nested_and_exact(spark_features: Any, duck: pd.DataFrame):
    small = sample_users(spark_features, 0.3, seed=7, spec=SPEC)
    again = sample_users(spark_features, 0.3, seed=7, spec=SPEC)
    large = sample_users(spark_features, 0.6, seed=7, spec=SPEC)
    other = sample_users(spark_features, 0.3, seed=8, spec=SPEC)
    assert small["user_id"].tolist() == again["user_id"].tolist()
    assert set(small["user_id"]) < set(large["user_id"])
    assert set(small["user_id"]) != set(other["user_id"])
    assert 0.2 * len(duck) < len(small) < 0.4 * len(duck)
    rows = duck[duck["user_id"].isin(small["user_id"])].reset_index(drop=True)
    _assert_frames_close(small, rows, exact=set(integer_columns(SPEC)) | {"user_id", "aipl_layer"})
    with pytest.raises(FeatureInputError, match="fraction must be in"):
        sample_users(spark_features, 0.0)


def test_bad_inputs_give_clear_errors(features_dir: Path, bundles: dict[str, Any], con: Any, tmp_path: Path):
    other = {t: _with_spec(b, FeatureSpec(browse_days=10)) for t, b in bundles.items()}
    with pytest.raises(SparkBatchError, match="rebuild the features with the models' spec"):
        run_batch_spark(features_dir, AS_OF, other, None, tmp_path / "a", con=con, created_at=AS_OF)
    with pytest.raises(SparkBatchError, match="are as of"):
        run_batch_spark(features_dir, AS_OF + timedelta(days=1), bundles, None, tmp_path / "a", con=con,
                        created_at=AS_OF)
    with pytest.raises(FeatureInputError, match="does not exist"):
        build_features_spark(tmp_path / "missing", AS_OF, SPEC, con, out_dir=tmp_path / "f")
    assert not (tmp_path / "a").exists() and not (tmp_path / "f").exists()


def test_spark_batch_refuses_to_publish_a_much_smaller_batch_unless_forced(
    spark_batch, spark_features: Any, bundles: dict[str, Any], con: Any, tmp_path: Path
) -> None:
    from serving.batch.spark import publish_audience

    result, _, _ = spark_batch
    store = open_store(tmp_path / "scores.sqlite")
    try:
        served = publish_audience(store, result.audience_path, {"created_at": AS_OF, "rows": result.users})
        few = spark_features.limit(20)
        with pytest.raises(PublishRefusedError, match=(
            f"^refusing to publish: the batch scored 20 users, under 50% of the {result.users:,} in the served "
            f"snapshot {served.snapshot_id}; .*--force$"
        )):
            run_batch_spark(few, AS_OF, bundles, store, tmp_path / "few", con=con, created_at=AS_OF)
        assert store.current() == served and not (tmp_path / "few").exists()  # refused before any Spark job
        forced = run_batch_spark(few, AS_OF, bundles, store, tmp_path / "few", con=con, created_at=AS_OF,
                                 force=True)
        assert forced.users == 20 and store.current() == forced.snapshot and forced.snapshot.rows == 20
    finally:
        store.close()


def _with_spec(bundle: Any, spec: FeatureSpec) -> Any:
    from dataclasses import replace

    return replace(bundle, spec=spec)


def test_redis_publish_from_partitions_is_atomic(spark_batch, redis_server: Any, tmp_path: Path):
    """The driver-side publish of the written audience switches Redis at once, and a publish that breaks half-way
    (an unreadable file after valid ones) leaves the previous snapshot served, complete."""
    import shutil
    import uuid

    from serving.batch.spark import publish_audience
    from serving.store.redis import RedisScoreStore

    result, sqlite_store, _ = spark_batch
    redis_server.ensure_running()
    store = RedisScoreStore(redis_server.url, prefix=f"spark-{uuid.uuid4().hex[:8]}", batch_rows=100)
    try:
        meta = {"created_at": AS_OF + timedelta(hours=3), "rows": result.users}
        first = publish_audience(store, result.audience_path, meta, chunk_rows=150)
        assert first.rows == result.users
        ids = [u for chunk in iter_audience_chunks(result.audience_path) for u in chunk["user_id"]]
        _, from_redis = store.lookup(ids)
        _, from_sqlite = sqlite_store.lookup(ids)
        assert from_redis == from_sqlite  # byte-identical payloads, whichever store

        broken = tmp_path / "audience"
        shutil.copytree(result.audience_path, broken)
        (broken / "action=zzz_broken").mkdir()
        (broken / "action=zzz_broken" / "part-0.parquet").write_bytes(b"PAR1 not a parquet file PAR1")
        with pytest.raises(Exception, match="(?i)parquet|magic|invalid|corrupt"):
            publish_audience(store, broken, {"created_at": AS_OF + timedelta(hours=4)}, chunk_rows=150)
        assert store.current() == first
        _, again = store.lookup(ids)
        assert again == from_redis
    finally:
        store.close()


def test_in_memory_events_give_the_duckdb_features(con: Any):
    """Events from pandas (an Ibis memtable, as the online path builds them) run on Spark too, sub-second times
    included (ages are whole microseconds on both engines)."""
    from features.build.builder import events_table, finalize_features

    t0 = pd.Timestamp(AS_OF)
    frame = pd.DataFrame({
        "user_id": ["a", "a", "b", "b", "c"],
        "ts": [t0 - pd.Timedelta(days=1, microseconds=1), t0 - pd.Timedelta(days=3, milliseconds=250),
               t0 - pd.Timedelta(seconds=0.5), t0 - pd.Timedelta(days=15), t0],
        "behavior": ["view", "buy", "cart", "view", "view"],
        "channel": ["ad", None, "search", "recommend", "ad"],
        "amount": [None, 20.5, None, None, None],
    })
    from features.build.spark import feature_frame_spark

    spark = finalize_features(feature_frame_spark(events_table(frame), AS_OF, SPEC, con).toPandas(), SPEC)
    duck = build_features(frame, AS_OF, SPEC)
    assert spark["user_id"].tolist() == ["a", "b"]  # c's only event is at as_of: excluded
    _assert_frames_close(spark, duck, exact=set(integer_columns(SPEC)) | {"user_id", "aipl_layer"} | EXACT_RHYTHM)
    assert spark.loc[1, "days_since_last_cart"] == pytest.approx(0.5 / 86_400, abs=1e-15)


def test_training_reads_a_user_sample_of_the_spark_features(events_dir: Path, con: Any, tmp_path: Path) -> None:
    from features.build.spark import feature_frame_spark, sample_users
    from training.job import TrainConfig, run_training
    from training.models import BoosterParams
    from training.registry import Registry

    seen: dict[Any, pd.DataFrame] = {}

    def source(as_of: Any) -> pd.DataFrame:
        seen[as_of] = sample_users(feature_frame_spark(str(events_dir), as_of, SPEC, con), 0.6, 5, spec=SPEC)
        return seen[as_of]

    cfg = TrainConfig(
        events_path=events_dir, out_dir=tmp_path / "plots", lapse_days=7, n_cutoffs=3, cutoff_spacing_days=3,
        min_positives=3, min_negatives=3, targets=("last_mile_buyer",), feature_source=source,
        data_end=CONFIG.end, params=BoosterParams(num_boost_round=20, min_data_in_leaf=5),
    )
    report = run_training(cfg, Registry(f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "artifacts"))
    outcome = report.outcomes["last_mile_buyer"]
    users = {t: set(f["user_id"]) for t, f in seen.items()}
    ordered = [users[t] for t in sorted(users)]
    assert all(a <= b for a, b in itertools.pairwise(ordered))  # the same draw at every cutoff (population grows)
    full = set(build_features(events_dir, outcome.cutoffs[-1], SPEC)["user_id"])
    assert users[outcome.cutoffs[-1]] < full  # a strict sample of the users
    assert set(outcome.result.bundle.feature_names) and outcome.version == "1"


def test_the_online_history_written_on_spark_equals_duckdbs_and_gives_the_batch_features(
    events_dir: Path, con: Any, duck: pd.DataFrame, tmp_path: Path
) -> None:
    """The per-user state of fresh scoring is built on either engine: the same events per user, and features
    from it equal to the batch feature table on every column."""
    from features.build.builder import events_table
    from features.online.compute import online_feature_table
    from features.online.history import History, write_history

    write_history(con.read_parquet(str(events_dir)), tmp_path / "spark")
    write_history(events_table(events_dir), tmp_path / "duck")
    on_spark, on_duck = History(tmp_path / "spark"), History(tmp_path / "duck")
    assert len(on_spark) == len(on_duck) > 0
    users = list(duck.user_id)
    for uid in users[:50]:
        a, b = on_spark.events(uid), on_duck.events(uid)
        order_a, order_b = np.lexsort((a.behavior, a.ts_us)), np.lexsort((b.behavior, b.ts_us))
        for name in ("ts_us", "behavior", "channel", "item", "category", "amount"):
            np.testing.assert_array_equal(getattr(a, name)[order_a], getattr(b, name)[order_b], err_msg=name)
    live = online_feature_table(((u, on_spark.events(u)) for u in users), AS_OF, SPEC)
    pd.testing.assert_frame_equal(live, duck, check_exact=False, rtol=TOL, atol=TOL)


def test_a_published_spark_batch_keeps_the_event_history_that_fresh_lookups_read(
    events_dir: Path, con: Any, bundles: dict[str, Any], duck: pd.DataFrame, tmp_path: Path, monkeypatch, capsys,
) -> None:
    """``propensity score --engine spark`` publishes and, like the DuckDB batch, writes each user's events next to
    the snapshot (otherwise its snapshots are served without fresh rescoring). It keeps the Spark feature state,
    and the next night's batch moves it on and scores the users as a batch built from all events would."""
    from features.build.builder import events_table
    from features.online.history import History, write_history
    from propensity.cli.serving import run_score
    from propensity.config import Settings
    from serving.fresh import LOG_SEQ_KEY
    from training.registry import Registry

    monkeypatch.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    cfg = Settings(data_dir=tmp_path / "data", store_path=tmp_path / "scores.sqlite",
                   tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", artifact_root=tmp_path / "mlruns",
                   features={"state_buckets": 3})
    registry = Registry(cfg.tracking_uri, cfg.artifact_root)
    for bundle in bundles.values():
        example = pd.DataFrame(np.zeros((3, len(bundle.feature_names))), columns=bundle.feature_names)
        _, version = registry.log_challenger(bundle, params={}, metrics={}, plots={}, input_example=example)
        registry.promote(bundle.target, version)
    result = run_score(cfg, events_dir, AS_OF, engine="spark", spark_master=session_of(con), log_seq=7)
    state = cfg.feature_state_dir_spark
    assert len(list(state.glob("gen-*/bucket-*"))) == 3  # features.state_buckets
    assert result.snapshot is not None and result.users == len(duck)
    kept = History(cfg.online_dir / result.snapshot.snapshot_id)
    assert kept.meta[LOG_SEQ_KEY] == 7
    write_history(events_table(events_dir), tmp_path / "duck")
    reference = History(tmp_path / "duck")
    assert len(kept) == len(reference) > 0
    for uid in list(duck.user_id)[:20]:
        np.testing.assert_array_equal(kept.events(uid).ts_us, reference.events(uid).ts_us)
    assert "built from all events (no kept feature state" in _text(capsys.readouterr().out)

    night = AS_OF + timedelta(days=1)
    moved = run_score(cfg, events_dir, night, engine="spark", spark_master=session_of(con), log_seq=7)
    out = _text(capsys.readouterr().out)
    assert "moved on 1 night(s) from the kept state" in out and "read again for events after the last cutoff" in out
    table = build_features(events_dir, night, SPEC)
    expected = pd.concat(list(score_chunks(table, bundles, night, ActivationConfig(), 250)), ignore_index=True)
    got = pd.concat(list(iter_audience_chunks(moved.audience_path, 200)), ignore_index=True)
    assert moved.users == len(table) > len(duck) // 2
    for frame in (got, expected):
        frame.sort_values("user_id", kind="stable", inplace=True, ignore_index=True)
    same = [c for c in expected.columns if not c.startswith("model_")]  # versions: registry's, not the bundles'
    _assert_frames_close(got[same], expected[same], exact=set())
