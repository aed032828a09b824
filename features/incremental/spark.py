"""The kept feature state on Spark: users split into buckets, each bucket's state moved on by one Spark task.

Each bucket ``pmod(xxhash64(user_id), n_buckets)`` keeps the state of :mod:`features.incremental` (the same
:class:`~features.incremental.state.FeatureState`, nights and table, proven equal to the feature spec by
``tests/property/test_incremental_parity.py``). Spark reads the event files, routes every event to its user's
bucket and runs one ``applyInPandas`` group per bucket: load the bucket's state, move it on with that bucket's
events, write it back, and write its users' feature rows as one Parquet file of the feature directory (written by
the task with pyarrow: the rows never pass through the JVM). A bucket without new events still moves on (every user
ages a night), so every bucket gets a group.

Layout of ``state_dir``: ``current.json`` (format, generation, bucket count, spec, cutoff, source flags, the event
files held and those to read again) and ``gen-<id>/bucket-<k>/`` (one :mod:`features.incremental.store` folder per
bucket). A night writes a new generation beside the current one (day roll-ups linked, not copied) and switches
``current.json`` to it only once every bucket is written; a failed night leaves the kept state as it was.
The state folder and the feature directory must be at the same path for the driver and every executor (any local
path with ``local[N]``; a shared file system on a cluster).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.incremental.build import advance_to, state_from_events
from features.incremental.nightly import carried_files, files_to_add, other_columns
from features.incremental.rollup import DAY_US
from features.incremental.store import StateError, load_state, save_state
from features.incremental.table import feature_frame
from features.online.arrays import ts_micros
from features.online.compute import as_of_us
from features.online.sources import manifest
from features.spec.definition import (
    FEATURE_TABLE_KEY,
    FeatureSpec,
    categorical_columns,
    integer_columns,
    output_columns,
)

if TYPE_CHECKING:  # pragma: no cover
    import ibis
    from pyspark.sql import DataFrame, SparkSession

FORMAT = 1
CURRENT = "current.json"
BUCKET = "_state_bucket"
_PART = "_state_partition"
DEFAULT_BUCKETS = 8


@dataclass(frozen=True)
class SparkKept:
    """A night moved on from the kept state on Spark: ``table`` (the feature directory, read back), ``nights``
    moved, ``events`` taken in, from ``files`` added since and ``carried`` files read again."""

    table: DataFrame
    nights: int
    events: int
    files: int
    carried: int = 0


def read_current(state_dir: Path, spec: FeatureSpec | None = None) -> dict[str, Any]:
    """The ``current.json`` of a kept Spark state; :class:`StateError` when there is none, it is damaged, its
    generation folder is gone, or (with ``spec``) it was kept for another spec."""
    file = Path(state_dir) / CURRENT
    try:
        meta = json.loads(file.read_text())
        generation = Path(state_dir) / meta["generation"]
    except FileNotFoundError as exc:
        raise StateError(f"no kept feature state in {state_dir}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateError(f"the kept feature state in {state_dir} is damaged: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise StateError(f"the kept feature state in {state_dir} has format {meta.get('format')}, not {FORMAT}")
    if not generation.is_dir():
        raise StateError(f"the kept feature state in {state_dir} is damaged: {generation.name} is missing")
    if spec is not None and meta.get("fingerprint") != spec.fingerprint():
        raise StateError(f"the kept feature state in {state_dir} is of another feature spec")
    return meta


def kept_cutoff_spark(state_dir: Path) -> datetime | None:
    """The cutoff of the Spark state kept in ``state_dir`` (UTC), None when there is none that can be read."""
    try:
        us = int(read_current(state_dir)["as_of_us"])
    except (StateError, KeyError, TypeError, ValueError):
        return None
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


def kept_features_spark(con: ibis.BaseBackend, state_dir: Path, files: Sequence[Path], as_of: datetime,
                        spec: FeatureSpec, out_dir: str | Path) -> SparkKept | str:
    """Tonight's feature table moved on from the Spark state kept in ``state_dir`` with the event ``files`` added
    since (``files``: all of tonight's source), written to ``out_dir`` as a Spark feature directory (as
    :func:`features.build.spark.build_features_spark` writes it: each user in one file, one file per bucket, sorted
    by user inside it; spec, ``as_of`` and rows in its side file; written aside and renamed into place); or why the
    state cannot be moved on (one line)."""
    from features.build.spark import session_of

    if "://" in str(out_dir):
        return f"the kept state writes its feature files to a path of the file system, not to {out_dir}"
    try:
        meta = read_current(state_dir, spec)
    except StateError as exc:
        return str(exc)
    before, cutoff = int(meta["as_of_us"]), as_of_us(as_of)
    added = files_to_add(meta["sources"], files, before, cutoff)
    if isinstance(added, str):
        return added
    carry = list(meta["carry"])
    try:
        counts = [_check(Path(p), meta, before, cutoff) for p in added]
        counts += [_check(Path(p), meta, before, cutoff, carried=True) for p in carry]
    except OSError as exc:
        return f"an event file could not be read ({exc})"
    if reason := next((c for c in counts if isinstance(c, str)), None):
        return reason
    session = session_of(con)
    old, new = Path(state_dir) / meta["generation"], _new_generation(state_dir)
    out_dir = Path(out_dir)
    parts = out_dir.with_name(f"{out_dir.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        parts.mkdir(parents=True)
        events = _bucketed(session, _read(session, added, carry, before), meta["n_buckets"])
        night = _night(old, new, parts, spec, as_of)
        done = events.groupBy(_PART, BUCKET).applyInPandas(night, f"{BUCKET} long, users long")
        users = int(sum(r["users"] for r in done.collect()))
        _finish_table(parts, out_dir, as_of, spec, meta["n_buckets"], users)
        _commit(state_dir, new.name, {**meta, "as_of_us": cutoff, "sources": manifest(files),
                                      "carry": carried_files(files, cutoff)})
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(parts, ignore_errors=True)
        raise
    table = session.read.parquet(str(out_dir))
    return SparkKept(table, (cutoff - before) // DAY_US, sum(counts), len(added), len(carry))


def start_state_spark(con: ibis.BaseBackend, state_dir: Path, files: Sequence[Path], as_of: datetime,
                      spec: FeatureSpec, *, n_buckets: int = DEFAULT_BUCKETS) -> int:
    """Keep in ``state_dir`` a Spark state at ``as_of`` computed from all events of ``files``, in ``n_buckets``
    user buckets (the first night, or after a fallback); returns the number of users it holds. Each bucket's
    events must fit in one task's memory: take more buckets for more events."""
    from features.build.spark import session_of

    if not files:
        raise StateError("no event files to keep a feature state of")
    session = session_of(con)
    names = set(pq.read_schema(files[0]).names)
    new = _new_generation(state_dir)
    try:
        events = _bucketed(session, session.read.parquet(*[str(f) for f in files]), n_buckets)
        done = events.groupBy(_PART, BUCKET).applyInPandas(_first(new, spec, as_of), f"{BUCKET} long, users long")
        users = int(sum(r["users"] for r in done.collect()))
        meta = {"format": FORMAT, "n_buckets": n_buckets, "fingerprint": spec.fingerprint(),
                "has_item": "item_id" in names, "has_amount": "amount" in names}
        cutoff = as_of_us(as_of)
        _commit(state_dir, new.name, {**meta, "as_of_us": cutoff, "sources": manifest(files),
                                      "carry": carried_files(files, cutoff)})
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    return users


# ------------------------------------------------------------------------------------------------ tasks
def _night(old: Path, new: Path, parts: Path, spec: FeatureSpec, as_of: datetime
           ) -> Callable[[tuple, pd.DataFrame], pd.DataFrame]:
    """The task of one bucket on a night: its state moved on with its events and written to ``new``, its users'
    feature rows written to ``parts`` as one Parquet file (sorted by user); returns the bucket's user count."""

    def run(key: tuple, frame: pd.DataFrame) -> pd.DataFrame:
        bucket = int(key[1])
        events = _events_of(frame)
        state = load_state(old / _bucket_name(bucket), spec)
        advance_to(state, events if len(events) else None, as_of)
        save_state(state, new / _bucket_name(bucket))
        table = pa.Table.from_pandas(feature_frame(state), schema=arrow_schema(spec), preserve_index=False)
        pq.write_table(table, parts / f"part-{bucket:05d}.parquet")
        return pd.DataFrame({BUCKET: [bucket], "users": [table.num_rows]})

    return run


def _first(new: Path, spec: FeatureSpec, as_of: datetime) -> Callable[[tuple, pd.DataFrame], pd.DataFrame]:
    """The task of one bucket on the first night: its state from all its events, written to ``new``."""

    def run(key: tuple, frame: pd.DataFrame) -> pd.DataFrame:
        state = state_from_events(_events_of(frame), as_of, spec)
        save_state(state, new / _bucket_name(int(key[1])))
        return pd.DataFrame({BUCKET: [int(key[1])], "users": [state.n_users]})

    return run


def _events_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The events of a bucket's group (without the marker row that gives every bucket a group)."""
    return frame[frame[FEATURE_TABLE_KEY].notna()].drop(columns=[BUCKET, _PART]).reset_index(drop=True)


def arrow_schema(spec: FeatureSpec) -> pa.Schema:
    """The Arrow schema of the feature files (as :func:`features.build.spark.conform_features` types the columns:
    text for the user and categorical columns, 64-bit integers for counts and flags, doubles elsewhere)."""
    ints, strings = set(integer_columns(spec)), {FEATURE_TABLE_KEY, *categorical_columns(spec)}
    return pa.schema([(c, pa.string() if c in strings else pa.int64() if c in ints else pa.float64())
                      for c in output_columns(spec)])


# ------------------------------------------------------------------------------------------------ driver
def _check(path: Path, meta: dict[str, Any], before: int, cutoff: int, carried: bool = False) -> int | str:
    """How many events of ``path`` the night takes in (``carried``: only those at or after ``before``), or why
    the file does not fit the state (other columns, or a late event before the state's cutoff)."""
    if reason := other_columns(path, set(pq.read_schema(path).names), meta["has_item"], meta["has_amount"]):
        return reason
    ts = ts_micros(pq.read_table(path, columns=["ts"]).column("ts").to_pandas())
    if not carried and (ts < before).any():
        return "events before the kept state's cutoff"
    return int(((ts >= before) & (ts < cutoff)).sum())


def _read(session: SparkSession, added: Sequence[str], carry: Sequence[str], before: int) -> DataFrame:
    """The events of the ``added`` files and those at or after ``before`` of the ``carry`` files."""
    from pyspark.sql import functions as F

    parts = []
    if added:
        parts.append(session.read.parquet(*added))
    if carry:
        again = session.read.parquet(*carry)
        parts.append(again.filter(F.unix_micros(F.col("ts")) >= F.lit(before)))
    if not parts:
        return None
    frame = parts[0]
    for part in parts[1:]:
        frame = frame.unionByName(part, allowMissingColumns=True)
    return frame


def _bucketed(session: SparkSession, events: DataFrame | None, n_buckets: int) -> DataFrame:
    """``events`` with their user's bucket, one marker row per bucket (so each bucket gets a group), hash-partitioned
    into one bucket per partition: on a partition key chosen per bucket so that Spark's hash partitioning sends
    bucket ``k`` to partition ``k`` (a hash of the bucket numbers themselves would put several in one partition and
    leave others empty; a range partitioning would first read the events once more to sample them). Adaptive
    execution does not merge the partitions of an explicit repartition."""
    from pyspark.sql import functions as F

    markers = session.range(n_buckets).select(F.col("id").alias(BUCKET))
    if events is not None:
        bucket = F.pmod(F.xxhash64(F.col(FEATURE_TABLE_KEY).cast("string")), F.lit(n_buckets))
        markers = events.withColumn(BUCKET, bucket).unionByName(markers, allowMissingColumns=True)
    keys = F.array(*[F.lit(k).cast("long") for k in partition_keys(session, n_buckets)])  # hashed as longs
    return markers.withColumn(_PART, F.element_at(keys, F.col(BUCKET).cast("int") + 1)).repartition(n_buckets, _PART)


def partition_keys(session: SparkSession, n: int) -> list[int]:
    """For each partition ``k < n``, the smallest non-negative long that Spark's hash partitioning into ``n``
    partitions (``pmod(hash(key), n)``, Murmur3 with seed 42) sends to ``k``."""
    from pyspark.sql import functions as F

    found: dict[int, int] = {}
    start, size = 0, 64 * n  # about 64 candidates per partition: all are hit at the first try as a rule
    while len(found) < n:
        ids = session.range(start, start + size).select("id", F.pmod(F.hash("id"), F.lit(n)).alias("p"))
        for row in ids.groupBy("p").agg(F.min("id").alias("id")).collect():
            found.setdefault(int(row["p"]), int(row["id"]))
        start += size
    return [found[k] for k in range(n)]


def _finish_table(parts: Path, out_dir: Path, as_of: datetime, spec: FeatureSpec, n_buckets: int, rows: int
                  ) -> None:
    """Give the buckets' files the side file of a Spark feature directory and rename them into ``out_dir`` (an
    existing directory is replaced only then)."""
    from features.build.spark import META_FILE, replace_dir

    meta = {"spec_version": spec.version, "as_of": as_of.astimezone(UTC).isoformat(), "spec": spec.to_dict(),
            "n_buckets": n_buckets, "rows": rows}
    (parts / META_FILE).write_text(json.dumps(meta, sort_keys=True))
    replace_dir(parts, out_dir)


def _bucket_name(bucket: int) -> str:
    return f"bucket-{bucket:05d}"


def _new_generation(state_dir: Path) -> Path:
    path = Path(state_dir) / f"gen-{uuid.uuid4().hex[:12]}"
    path.mkdir(parents=True)
    return path


def _commit(state_dir: Path, generation: str, meta: dict[str, Any]) -> None:
    """Point ``current.json`` at ``generation`` (written whole, then renamed) and remove the other generations."""
    state_dir = Path(state_dir)
    tmp = state_dir / f".{CURRENT}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.write_text(json.dumps({**meta, "generation": generation}, indent=1))
    os.replace(tmp, state_dir / CURRENT)
    for other in state_dir.glob("gen-*"):
        if other.name != generation:
            shutil.rmtree(other, ignore_errors=True)
