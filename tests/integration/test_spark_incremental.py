"""The kept feature state on Spark (``features.incremental.spark``) against the batch feature table.

Simulated shop events plus users with events a second either side of every window edge of every night, and a user
first seen on the last day, split into the files a nightly export would add. A Spark state of 3 user buckets is
computed from all events three nights before the cutoff, then moved on one night at a time with only the added
files (and the events after the last cutoff of the files it already holds); every night its table must equal
:func:`build_features` on all events for every column. Skipped when PySpark or Java 17+ is missing.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features.build.builder import build_features, finalize_features
from features.build.spark import read_features_meta
from features.incremental.spark import CURRENT, kept_cutoff_spark, kept_features_spark, start_state_spark
from features.simulate.shop import GeneratorConfig, generate
from features.spec.definition import FeatureSpec
from tests.integration.spark_support import SPARK_MARKS, skip_without_spark
from tests.property.test_online_parity import assert_parity

pytestmark = SPARK_MARKS
skip_without_spark()


CONFIG = GeneratorConfig(n_users=600, days=45, chunk_users=600)
AS_OF = CONFIG.start_utc + timedelta(days=40)
FIRST = AS_OF - timedelta(days=3)
SPEC = FeatureSpec()
EDGES = (1, 2, 3, 7, 15, 30, 35, 90, 365)


def _edge_rows() -> pd.DataFrame:
    """Per night, a user with a view, cart and buy one second either side of (and at) each window edge; and a user
    first seen on the last day."""
    rows = []
    for night in range(4):
        cutoff = FIRST + timedelta(days=night)
        for d in EDGES:
            for s in (-1, 0, 1):
                ts = cutoff - timedelta(days=d, seconds=s)
                for b, amount in (("view", None), ("cart", None), ("buy", 4.5)):
                    rows.append((f"edge{night}", ts, b, f"i{d % 4}", f"c{d % 3}", "ad" if s else "search", amount))
    rows.append(("newcomer", AS_OF - timedelta(hours=5), "cart", "i9", "c1", "recommend", None))
    columns = ["user_id", "ts", "behavior", "item_id", "category_id", "channel", "amount"]
    return pd.DataFrame(rows, columns=columns).astype({"ts": "datetime64[us, UTC]"})


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The history until a day after the first cutoff, then one file per day, the last one running past the
    cutoff (its later events must be ignored, then read again)."""
    root = tmp_path_factory.mktemp("spark_state_events")
    shop = pd.read_parquet(generate(CONFIG, root / "shop").events_dir)
    events = pd.concat([shop, _edge_rows()], ignore_index=True)
    ts = pd.to_datetime(events["ts"], utc=True)
    bounds = [FIRST + timedelta(days=1), FIRST + timedelta(days=2)]
    parts = [ts < bounds[0], (ts >= bounds[0]) & (ts < bounds[1]), ts >= bounds[1]]
    out = []
    for i, keep in enumerate(parts):
        out.append(root / f"events-{i}.parquet")
        events[keep].to_parquet(out[-1])
    return out


def _table(kept: Any) -> pd.DataFrame:
    return finalize_features(kept.table.toPandas(), SPEC).sort_values("user_id").reset_index(drop=True)


def _batch(files: list[Path], cutoff) -> pd.DataFrame:
    return build_features(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), cutoff, SPEC)


def test_the_spark_state_equals_the_batch_table_every_night(spark_con: Any, files: list[Path], tmp_path: Path):
    state = tmp_path / "state"
    users = start_state_spark(spark_con, state, files[:1], FIRST, SPEC, n_buckets=3)
    assert users == len(_batch(files[:1], FIRST)) > 300
    # (night, files listed, files added, files read again, nights moved)
    nights = [(0, files[:1], 0, 1, 0), (1, files[:1], 0, 1, 1), (2, files[:2], 1, 0, 1), (3, files, 1, 0, 1)]
    for night, listed, added, carried, nights_moved in nights:
        cutoff = FIRST + timedelta(days=night)
        kept = kept_features_spark(spark_con, state, listed, cutoff, SPEC, tmp_path / f"features-{night}")
        assert not isinstance(kept, str), kept
        batch = _batch(listed, cutoff)
        assert_parity(batch, _table(kept), SPEC)
        assert (kept.nights, kept.files, kept.carried) == (nights_moved, added, carried)
        ts = pd.concat([pd.read_parquet(f, columns=["ts"]) for f in listed])["ts"]
        assert kept.events == int(((ts >= cutoff - timedelta(days=nights_moved)) & (ts < cutoff)).sum())
        assert kept_cutoff_spark(state) == cutoff
        assert len(list(state.glob("gen-*"))) == 1  # the last night's generation is gone once this one is kept
        assert len(list((state / json.loads((state / CURRENT).read_text())["generation"]).glob("bucket-*"))) == 3
    written = tmp_path / "features-3"
    assert read_features_meta(written)["rows"] == len(batch) and read_features_meta(written)["as_of"] == AS_OF
    users = [pd.read_parquet(f, columns=["user_id"])["user_id"].tolist() for f in sorted(written.glob("*.parquet"))]
    assert len(users) == 3 and all(u == sorted(u) for u in users)  # a file per bucket, sorted by user
    assert sorted(x for u in users for x in u) == list(batch["user_id"])  # every user in exactly one file
    assert not list(tmp_path.glob("*.partial-*"))  # written aside, then renamed into place
    table = _table(kept).set_index("user_id")
    assert table.loc["newcomer", "cart_count_1d"] == 1 and table.loc["newcomer", "aipl_layer"] == "I"
    assert {f"edge{n}" for n in range(4)} <= set(table.index)


def test_a_late_event_or_a_changed_file_falls_back_and_leaves_the_state(
    spark_con: Any, files: list[Path], tmp_path: Path
) -> None:
    state = tmp_path / "state"
    start_state_spark(spark_con, state, files[:1], FIRST, SPEC, n_buckets=2)
    kept_before = (state / CURRENT).read_text()
    late = tmp_path / "late.parquet"
    frame = pd.read_parquet(files[1])
    frame.assign(ts=frame["ts"] - timedelta(days=2)).to_parquet(late)
    cutoff = FIRST + timedelta(days=1)
    assert kept_features_spark(spark_con, state, [files[0], late], cutoff, SPEC, tmp_path / "f1") == (
        "events before the kept state's cutoff")
    copy = tmp_path / "moved.parquet"
    shutil.copy(files[0], copy)
    assert kept_features_spark(spark_con, state, [copy], cutoff, SPEC, tmp_path / "f2") == (
        "an event file the kept state holds was changed or removed since")
    assert kept_features_spark(spark_con, state, files[:1], FIRST - timedelta(days=1), SPEC, tmp_path / "f3") == (
        "the cutoff is before the kept state's")
    assert "another feature spec" in kept_features_spark(
        spark_con, state, files[:1], cutoff, FeatureSpec(windows=(1, 7)), tmp_path / "f4")
    assert (state / CURRENT).read_text() == kept_before and not (tmp_path / "f1").exists()


def test_a_failed_night_leaves_the_kept_state_as_it_was(spark_con: Any, files: list[Path], tmp_path: Path):
    state = tmp_path / "state"
    start_state_spark(spark_con, state, files[:1], FIRST, SPEC, n_buckets=2)
    current = json.loads((state / CURRENT).read_text())
    generation = state / current["generation"]
    damaged = generation / "bucket-00001" / "arrays" / "order.npy"
    saved = damaged.read_bytes()
    damaged.write_bytes(b"not an array")
    with pytest.raises(Exception, match="damaged"):
        kept_features_spark(spark_con, state, files[:2], FIRST + timedelta(days=2), SPEC, tmp_path / "f")
    assert json.loads((state / CURRENT).read_text()) == current
    assert [p.name for p in state.glob("gen-*")] == [generation.name]  # the half-written generation is removed
    from propensity.cli.serving import _kept_features_spark
    from propensity.config import Settings

    cfg = Settings(data_dir=tmp_path / "data")  # the batch's way in: the failed night is a one-line reason
    shutil.copytree(state, cfg.feature_state_dir_spark)
    reason = _kept_features_spark(cfg, spark_con, files[:2], FIRST + timedelta(days=2), SPEC, str(tmp_path / "g"))
    assert reason.startswith("the kept state could not be moved on on Spark: ") and "damaged" in reason
    assert "\n" not in reason and json.loads((cfg.feature_state_dir_spark / CURRENT).read_text()) == current
    damaged.write_bytes(saved)
    kept = kept_features_spark(spark_con, state, files[:2], FIRST + timedelta(days=2), SPEC, tmp_path / "f")
    assert not isinstance(kept, str) and kept.nights == 2
    assert_parity(_batch(files[:2], FIRST + timedelta(days=2)), _table(kept), SPEC)


def test_each_bucket_has_a_partition_of_its_own(spark_con: Any, files: list[Path]):
    """A night runs one task per bucket: the buckets' events are spread one bucket per partition, none empty."""
    from pyspark.sql import functions as F

    from features.build.spark import session_of
    from features.incremental.spark import BUCKET, _bucketed, partition_keys

    session = session_of(spark_con)
    for n in (1, 3, 8, 13):
        keys = partition_keys(session, n)
        hashed = session.createDataFrame([(k,) for k in keys], "k long").select(F.pmod(F.hash("k"), F.lit(n)))
        assert [r[0] for r in hashed.collect()] == list(range(n))
    events = _bucketed(session, session.read.parquet(str(files[1])), 5)
    per_partition = events.groupBy(F.spark_partition_id().alias("p")).agg(F.countDistinct(BUCKET).alias("b"))
    assert sorted((r["p"], r["b"]) for r in per_partition.collect()) == [(p, 1) for p in range(5)]
