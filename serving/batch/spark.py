"""Nightly batch on Spark: features (Spark) -> champion scores per partition -> audience Parquet -> snapshot.

Scoring runs where the data is: :func:`score_partitions` ships the champion bundles to the executors and calls
:func:`serving.batch.run.score_chunks` (``score_features`` + ``recommend``, the code path of the one-machine batch)
on each Arrow batch of each partition through ``mapInPandas``. The audience is written as Parquet partitioned by
``action`` (one folder per campaign action, what an activation channel reads).

Publishing: the score store switches snapshots atomically (``ScoreStore.publish``). The Redis store offers no
separate begin / write / commit steps that executors could share, so :func:`publish_audience` streams the
written audience files from the driver into one ``store.publish`` call, chunk by chunk: the old snapshot stays
served until every row is in. docs/spark.md describes the per-partition Redis publish this would become. The same
publish guard as the one-machine batch applies (:func:`serving.batch.run.check_publish`), before any Spark job.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from features.build.builder import finalize_features
from features.build.spark import META_FILE, build_features_spark, read_features_meta, write_parquet_dir
from features.spec.definition import FeatureSpec, output_columns
from features.spec.table import as_utc
from serving.activation.actions import ActivationConfig
from serving.batch.run import (
    DEFAULT_MIN_SHARE,
    LIST_COLUMNS,
    PUBLISH_CHUNK_ROWS,
    BatchResult,
    PopulationStats,
    check_publish,
    read_audience_chunks,
    score_chunks,
    snapshot_meta,
)
from serving.store.base import ScoreStore, SnapshotInfo
from training.bundle import ModelBundle

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

Progress = Callable[[int, int | None], None]

AUDIENCE_PARTITION = "action"


class SparkBatchError(ValueError):
    """The Spark batch cannot run with these inputs (spec or as_of mismatch, missing columns, no models)."""

    exit_code = 1  # CLI exit code: bad input


def _spec_of(bundles: Mapping[str, ModelBundle]) -> FeatureSpec:
    if not bundles:
        raise SparkBatchError("no models to score with")
    spec = next(iter(bundles.values())).spec
    if any(b.spec != spec for b in bundles.values()):
        raise SparkBatchError("the champion models use different feature specs; retrain both targets together")
    return spec


# --------------------------------------------------------------------------------------------- scoring
def audience_schema(sample: pd.DataFrame) -> StructType:
    """Spark schema of audience records shaped like ``sample`` (``score_chunks`` output): lists of reasons are
    ``array<string>``, integers ``bigint``, other numbers ``double``, everything else ``string``."""
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

    fields = []
    for name in sample.columns:
        dtype = sample[name].dtype
        if name in LIST_COLUMNS:
            kind: Any = ArrayType(StringType())
        elif pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_integer_dtype(dtype):
            kind = LongType()
        elif pd.api.types.is_numeric_dtype(dtype):
            kind = DoubleType()
        else:
            kind = StringType()
        fields.append(StructField(str(name), kind, True))
    return StructType(fields)


def _conform(frame: pd.DataFrame, schema: StructType) -> pd.DataFrame:
    """``frame`` with exactly the schema's columns, numbers in the schema's types, lists as lists."""
    from pyspark.sql.types import ArrayType, DoubleType, LongType

    out = {}
    for field in schema.fields:
        col = frame[field.name] if field.name in frame.columns else pd.Series([None] * len(frame), dtype=object)
        if isinstance(field.dataType, DoubleType):
            col = pd.to_numeric(col).astype("float64")
        elif isinstance(field.dataType, LongType):
            col = col.astype("int64")
        elif isinstance(field.dataType, ArrayType):
            col = pd.Series([None if v is None else list(v) for v in col.tolist()], dtype=object)
        else:
            col = pd.Series([None if _missing(v) else str(v) for v in col.tolist()], dtype=object)
        out[field.name] = col.reset_index(drop=True)
    return pd.DataFrame(out)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def score_partitions(
    features: DataFrame,
    bundles: Mapping[str, ModelBundle],
    as_of: datetime,
    activation: ActivationConfig = ActivationConfig(),
    *,
    sample_rows: int = 64,
) -> DataFrame:
    """Audience records (the :data:`serving.batch.run.AUDIENCE_COLUMNS` the bundles produce) for every user of a
    Spark feature table, scored per partition. Lazy: nothing runs until an action.

    ``features`` has the feature columns of the bundles' spec (extra columns such as ``user_bucket`` are
    ignored). Each Arrow batch goes through ``finalize_features`` and :func:`serving.batch.run.score_chunks`, so the
    records equal those of the one-machine batch for the same features. The output schema comes from scoring
    ``sample_rows`` users on the driver first (which also fails fast, before the cluster job, on a bad bundle).
    """
    spec = _spec_of(bundles)
    as_of = as_utc(as_of)
    missing = [c for c in output_columns(spec) if c not in features.columns]
    if missing:
        raise SparkBatchError(f"feature table lacks columns {missing[:5]} of the models' spec (spec mismatch?)")
    frame = features.select(*output_columns(spec))
    sample = finalize_features(frame.limit(max(1, sample_rows)).toPandas(), spec)
    if sample.empty:
        raise SparkBatchError("the feature table has no users to score")
    scored_sample = next(score_chunks(sample, bundles, as_of, activation, max(1, len(sample))))
    schema = audience_schema(scored_sample)
    bundles = dict(bundles)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if batch.empty:
                continue
            raw = finalize_features(batch, spec)
            for chunk in score_chunks(raw, bundles, as_of, activation, len(raw)):
                yield _conform(chunk, schema)

    return frame.mapInPandas(score, schema=schema)


# --------------------------------------------------------------------------------------------- audience files
def iter_audience_chunks(audience_dir: str | Path, chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Audience records from a Parquet directory written by :func:`run_batch_spark`, ``chunk_rows`` at a time.

    Columns come back in :data:`AUDIENCE_COLUMNS` order (the partition column ``action`` is moved back into
    place, as a string), reasons as lists; the same records as :func:`serving.batch.run.score_chunks` yields
    (:func:`serving.batch.run.read_audience_chunks`).
    """
    return read_audience_chunks(audience_dir, chunk_rows)


def publish_audience(
    store: ScoreStore,
    audience_dir: str | Path,
    meta: Mapping[str, Any],
    *,
    chunk_rows: int = 200_000,
    progress: Progress | None = None,
) -> SnapshotInfo:
    """Publish a written audience directory as one new snapshot (atomic switch; on failure the old one stays).

    ``meta`` needs ``created_at`` (see :meth:`ScoreStore.publish`); ``rows``, when an int, is the progress total.
    """
    return store.publish(iter_audience_chunks(audience_dir, min(chunk_rows, PUBLISH_CHUNK_ROWS)), meta,
                         progress=progress)


# --------------------------------------------------------------------------------------------- the job
def run_batch_spark(
    events: Any,
    as_of: datetime,
    bundles: Mapping[str, ModelBundle],
    store: ScoreStore | None,
    out_dir: Path | str,
    *,
    con: Any = None,
    activation: ActivationConfig = ActivationConfig(),
    features_dir: Path | str | None = None,
    n_buckets: int = 8,
    chunk_rows: int = 200_000,
    created_at: datetime,
    progress: Progress | None = None,
    force: bool = False,
    min_share: float = DEFAULT_MIN_SHARE,
) -> BatchResult:
    """Score everyone with an event before ``as_of`` on Spark and publish the snapshot (when ``store`` is given).

    ``events``: canonical event Parquet (path or URL) or a Spark feature table (DataFrame, or the path of a
    directory written by :func:`features.build.spark.build_features_spark`, whose spec and as_of must match).
    ``features_dir``: where to write the features built from events (default ``<out_dir>.features``).
    ``out_dir``: the audience directory (Parquet, partitioned by ``action``). ``created_at`` is the publish time
    recorded in the snapshot. ``progress(done, total)`` counts published rows (total = users).

    With a ``store``, a feature table of no users, or of fewer than ``min_share`` times the served snapshot's users,
    raises :class:`serving.batch.run.PublishRefusedError` before scoring unless ``force`` (an empty table cannot be
    scored on Spark even when forced). The defaults for unknown users are computed over every scored user.
    """
    spec = _spec_of(bundles)
    as_of = as_utc(as_of)
    features = _features(events, as_of, spec, con, features_dir or f"{str(out_dir).rstrip('/')}.features", n_buckets)
    if store is not None:
        check_publish(features.count(), store.current(), min_share=min_share, force=force)
    audience = score_partitions(features, bundles, as_of, activation)
    written = write_parquet_dir(audience, out_dir, partition_by=AUDIENCE_PARTITION)
    counts, stats = _audience_totals(written)
    total = stats.rows
    meta = snapshot_meta(as_of, created_at, total, bundles, stats.defaults(), Path(str(out_dir)), engine="spark")
    snapshot = None
    if store is not None:
        snapshot = publish_audience(store, out_dir, meta, chunk_rows=chunk_rows, progress=progress)
    elif progress:
        progress(total, total)
    return BatchResult(
        users=total, audience_path=Path(str(out_dir)), snapshot=snapshot, action_counts=counts,
        mean_p_buy=stats.p_buy_sum / stats.p_buy_n if stats.p_buy_n else float("nan"),
    )


def _audience_totals(written: DataFrame) -> tuple[dict[str, int], PopulationStats]:
    """Users per action and the :class:`serving.batch.run.PopulationStats` of a written audience, exact over every
    user, in one Spark aggregation (grouped by action and by layer ``none`` or not)."""
    from pyspark.sql import functions as F

    aggs = [F.count(F.lit(1)).alias("n")]
    if "p_buy" in written.columns:
        known = F.col("p_buy").isNotNull() & ~F.isnan("p_buy")
        aggs += [F.sum(F.when(known, F.col("p_buy"))).alias("p"), F.count(F.when(known, F.lit(1))).alias("k")]
    none = (F.col("aipl_layer") == F.lit("none")).alias("is_none")
    counts: dict[str, int] = {}
    stats = PopulationStats()
    for row in written.groupBy(AUDIENCE_PARTITION, none).agg(*aggs).collect():
        doc = row.asDict()
        n, p, k = int(doc["n"]), float(doc.get("p") or 0.0), int(doc.get("k") or 0)
        action = str(doc[AUDIENCE_PARTITION])
        counts[action] = counts.get(action, 0) + n
        stats.rows, stats.p_buy_sum, stats.p_buy_n = stats.rows + n, stats.p_buy_sum + p, stats.p_buy_n + k
        if doc["is_none"]:
            stats.none_rows += n
            stats.none_p_buy_sum += p
            stats.none_p_buy_n += k
    return counts, stats


def _features(
    events: Any, as_of: datetime, spec: FeatureSpec, con: Any, features_dir: str, n_buckets: int
) -> DataFrame:
    """The Spark feature table for ``as_of``: given, read from a feature directory, or built from events."""
    if hasattr(events, "mapInPandas"):  # a Spark DataFrame
        return events
    path = Path(str(events))
    if "://" not in str(events) and (path / META_FILE).exists():
        meta = read_features_meta(path)
        if meta["spec"] != spec:
            raise SparkBatchError(
                f"features in {path} were built with spec {meta['spec'].fingerprint()}, the models use "
                f"{spec.fingerprint()}; rebuild the features with the models' spec"
            )
        if as_utc(meta["as_of"]) != as_of:
            raise SparkBatchError(f"features in {path} are as of {meta['as_of'].isoformat()}, not {as_of.isoformat()}")
        from features.build.spark import session_of, spark_connection

        session = session_of(con) if con is not None else session_of(spark_connection())
        return session.read.parquet(str(path))
    return build_features_spark(events, as_of, spec, con, out_dir=features_dir, n_buckets=n_buckets)


__all__ = [
    "AUDIENCE_PARTITION", "SparkBatchError", "audience_schema", "iter_audience_chunks",
    "publish_audience", "run_batch_spark", "score_partitions",
]
