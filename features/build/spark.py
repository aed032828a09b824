"""The feature expression on PySpark: the same :func:`features.spec.table.feature_table`, run by Spark.

Nothing here defines a feature. :func:`build_features_spark` hands the one Ibis expression to the Ibis PySpark
backend, turns the compiled query into a Spark DataFrame and writes it as a Parquet directory of ``n_buckets``
files hashed by user (each user in exactly one file, sorted by ``user_id`` inside it), so downstream per-partition
jobs (batch scoring, publish) see each user exactly once and in a bounded slice. The files hold exactly the columns
of the DuckDB feature file, in the same order and types (:func:`conform_features`). :func:`sample_users` brings a
deterministic user sample of a Spark feature table back to pandas, so models are still trained on one machine.

Engines: ``local[N]`` (default ``local[2]``), any Spark master URL (``spark://``, ``yarn``, ``k8s://``), a Spark
Connect URL (``sc://host:15002``, needs ``pyspark[connect]``) or an existing ``SparkSession``. PySpark 4.0 needs
Java 17 or newer on the machine that starts the driver. The Spark session time zone is set to UTC (Ibis does it
on connect, and the feature SQL relies on it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ibis

from features.build.builder import finalize_features
from features.spec.definition import (
    FEATURE_TABLE_KEY,
    FeatureInputError,
    FeatureSpec,
    categorical_columns,
    integer_columns,
    output_columns,
)
from features.spec.table import as_utc, feature_table

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

Progress = Callable[[int, int | None], None]

BUCKET_COLUMN = "user_bucket"
"""Partition column of Spark feature directories written before they matched the DuckDB file column for column;
dropped when such a directory is read (:func:`sample_users`; the batch selects the spec's columns)."""
META_FILE = "_propensity_features.json"
"""Side file of a Spark feature directory: spec, as_of, bucket count (Spark and Arrow skip ``_`` files)."""
MIN_JAVA = 17
LOCAL_DEFAULTS: Mapping[str, str] = {
    "spark.sql.shuffle.partitions": "8",
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.session.timeZone": "UTC",
}
"""Conf applied to sessions this module creates (``conf`` overrides it)."""


class SparkUnavailableError(RuntimeError):
    """PySpark, Java or the Spark cluster is missing or cannot be started; the message says what to install."""

    exit_code = 6  # CLI exit code: unavailable


# --------------------------------------------------------------------------------------------- environment
def java_major_version(java: str | None = None) -> int | None:
    """Major version of the ``java`` found via ``JAVA_HOME`` or ``PATH`` (e.g. 17), None when there is none."""
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else None
        java = java or shutil.which("java")
    if java is None:
        return None
    try:
        done = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def spark_unavailable_reason(local: bool = True) -> str | None:
    """Why a Spark session cannot be started here (None when it can): PySpark missing, or (``local``) Java missing
    or older than 17."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed: install the 'spark' extra (pip install 'audience-propensity[spark]')"
    if local:
        major = java_major_version()
        if major is None:
            return (
                "no Java runtime found (JAVA_HOME or PATH); PySpark 4 needs Java 17+, "
                "e.g. apt-get install default-jre-headless"
            )
        if major < MIN_JAVA:
            return f"Java {major} found; PySpark 4 needs Java {MIN_JAVA}+ (set JAVA_HOME to a newer runtime)"
    return None


# --------------------------------------------------------------------------------------------- connection
def spark_connection(
    master: str | SparkSession = "local[2]",
    app_name: str = "propensity-features",
    conf: Mapping[str, str] | None = None,
) -> ibis.BaseBackend:
    """An Ibis PySpark backend.

    ``master``: a Spark master (``local[2]``, ``spark://host:7077``, ``yarn``...), a Spark Connect URL
    (``sc://host:15002``) or an existing ``SparkSession`` (used as is). ``conf`` adds to or overrides
    :data:`LOCAL_DEFAULTS` for a new session; on a running one (given, or reused by Spark's ``getOrCreate``)
    only the ``spark.sql.*`` settings take effect. A local master runs the Python workers with this
    interpreter unless ``PYSPARK_PYTHON`` says otherwise. Raises :class:`SparkUnavailableError` with the fix
    when PySpark or Java is missing or the session cannot start.
    """
    settings = {**LOCAL_DEFAULTS, **{str(k): str(v) for k, v in (conf or {}).items()}}
    if not isinstance(master, str):
        session = master
        if not hasattr(session, "sql") or not hasattr(session, "read"):
            raise SparkUnavailableError(f"master must be a master URL or a SparkSession, got {type(master).__name__}")
        settings = {str(k): str(v) for k, v in (conf or {}).items()}
    else:
        remote = master.startswith("sc://")
        reason = spark_unavailable_reason(local=not remote)
        if reason:
            raise SparkUnavailableError(reason)
        session = _start_session(master, app_name, settings, remote)
    try:
        return ibis.pyspark.connect(session, **_runtime_conf(settings))
    except Exception as exc:
        raise SparkUnavailableError(f"could not use the Spark session: {_first_line(exc)}") from exc


def _start_session(master: str, app_name: str, settings: Mapping[str, str], remote: bool) -> SparkSession:
    from pyspark.sql import SparkSession

    if master.startswith("local"):  # Python workers must run this interpreter (it has the project installed)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    builder = builder.remote(master) if remote else builder.master(master)
    for key, value in settings.items():
        builder = builder.config(key, value)
    try:
        return builder.getOrCreate()
    except ImportError as exc:  # Spark Connect without grpc & co.
        raise SparkUnavailableError(f"Spark Connect needs 'pyspark[connect]': {exc}") from exc
    except Exception as exc:
        raise SparkUnavailableError(f"could not start a Spark session on {master!r}: {_first_line(exc)}") from exc


def _runtime_conf(settings: Mapping[str, str]) -> dict[str, str]:
    """The settings that may change on a running session (SQL settings); the rest is start-up only."""
    return {k: v for k, v in settings.items() if k.startswith("spark.sql.")}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:500]


_RAISED = re.compile(r"^[A-Za-z_][\w.]*: (?P<message>\S.*)$")


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong: for an error raised in a Spark task's Python worker (whose message is
    "An exception was thrown from the Python worker" and a traceback), the message of the Python exception it
    raised; otherwise the first line of the message."""
    lines = str(exc).splitlines()
    raised = [m["message"] for line in lines if (m := _RAISED.match(line)) and not m["message"].startswith("Traceback")]
    if len(lines) > 1 and raised:
        return raised[-1][:500]
    return _first_line(exc)


def session_of(con: ibis.BaseBackend) -> SparkSession:
    """The ``SparkSession`` behind an Ibis PySpark backend."""
    if getattr(con, "name", None) != "pyspark":
        raise FeatureInputError(f"expected an Ibis PySpark backend, got {getattr(con, 'name', type(con).__name__)!r}")
    return con._session  # the backend exposes no public accessor; the attribute is set in do_connect


# --------------------------------------------------------------------------------------------- features
def feature_frame_spark(
    events: str | Path | ibis.Table, as_of: datetime, spec: FeatureSpec | None, con: ibis.BaseBackend
) -> DataFrame:
    """The feature table as a lazy Spark DataFrame (columns :func:`features.spec.definition.output_columns`, Spark
    types: strings, longs for counts, doubles elsewhere). ``events``: canonical Parquet (file, directory, glob, any
    URL Spark reads) or an Ibis table of ``con``. Nothing runs until an action."""
    spec = spec or FeatureSpec()
    table = events if isinstance(events, ibis.Table) else _read_events(events, con)
    expr = feature_table(table, as_utc(as_of), spec)
    register = getattr(con, "_run_pre_execute_hooks", None)  # registers in-memory tables (ibis.memtable) with Spark
    if register is not None:
        register(expr)
    return con.raw_sql(con.compile(expr))


def _read_events(path: str | Path, con: ibis.BaseBackend) -> ibis.Table:
    text = str(path)
    if "://" not in text and not any(ch in text for ch in "*?["):
        local = Path(text)
        if not local.exists():
            raise FeatureInputError(f"events path {local} does not exist")
        if local.is_dir() and not any(local.rglob("*.parquet")):
            raise FeatureInputError(f"directory {local} holds no *.parquet file")
    try:
        return con.read_parquet(text)
    except Exception as exc:
        raise FeatureInputError(f"Spark could not read events from {text}: {_first_line(exc)}") from exc


def build_features_spark(
    events: str | Path | ibis.Table,
    as_of: datetime,
    spec: FeatureSpec | None = None,
    con: ibis.BaseBackend | None = None,
    *,
    out_dir: str | Path | None = None,
    n_buckets: int = 8,
    progress: Progress | None = None,
) -> DataFrame:
    """Run :func:`feature_table` on Spark; with ``out_dir``, write it as a Parquet directory of ``n_buckets`` files.

    Returns a Spark DataFrame with exactly the columns of :func:`features.build.builder.build_features` output
    (:func:`conform_features`): read back from ``out_dir`` when given (so later actions do not recompute the
    features), else lazy. The rows are hash-partitioned by ``user_id`` into ``n_buckets`` files (each user in exactly
    one), sorted by ``user_id`` within a file. A local ``out_dir`` is written to a sibling temporary directory and
    renamed into place, so it is complete or absent; it also gets :data:`META_FILE` (spec, as_of, bucket count,
    rows). ``con`` defaults to a new :func:`spark_connection`. ``progress(done, 2)``: after planning, after writing.
    """
    if not isinstance(n_buckets, int) or isinstance(n_buckets, bool) or n_buckets < 1:
        raise FeatureInputError(f"n_buckets must be a positive integer, got {n_buckets!r}")
    spec = spec or FeatureSpec()
    as_of = as_utc(as_of)
    con = con or spark_connection()
    frame = conform_features(feature_frame_spark(events, as_of, spec, con), spec)
    if progress:
        progress(1, 2)
    if out_dir is None:
        if progress:
            progress(2, 2)
        return frame
    meta = {"spec_version": spec.version, "as_of": as_of.isoformat(), "spec": spec.to_dict(), "n_buckets": n_buckets}
    from pyspark.sql import functions as F

    # hashed on xxhash64(user_id), not user_id: Spark drops a repartition on the key the joins already partition by,
    # and adaptive execution then coalesces those small shuffle partitions into one file
    bucketed = frame.repartition(n_buckets, F.xxhash64(F.col(FEATURE_TABLE_KEY)))
    bucketed = bucketed.sortWithinPartitions(FEATURE_TABLE_KEY)
    written = write_parquet_dir(bucketed, out_dir, meta=(META_FILE, meta))
    if progress:
        progress(2, 2)
    return written


def conform_features(frame: DataFrame, spec: FeatureSpec) -> DataFrame:
    """``frame`` (a Spark feature table) with the columns and types of the DuckDB feature file: exactly
    :func:`features.spec.definition.output_columns` in that order, ``user_id`` and the categorical columns as
    strings, counts and flags as 64-bit integers (a missing count is 0, as :func:`finalize_features` makes it),
    every other feature as a double."""
    from pyspark.sql import functions as F

    missing = [c for c in output_columns(spec) if c not in frame.columns]
    if missing:
        raise FeatureInputError(f"Spark feature table lacks columns {missing[:5]} (spec mismatch?)")
    ints = set(integer_columns(spec))
    strings = {FEATURE_TABLE_KEY, *categorical_columns(spec)}
    cols = []
    for name in output_columns(spec):
        col = F.col(name)
        if name in strings:
            col = col.cast("string")
        elif name in ints:
            col = F.coalesce(col.cast("long"), F.lit(0).cast("long"))
        else:
            col = col.cast("double")
        cols.append(col.alias(name))
    return frame.select(*cols)


def write_parquet_dir(
    frame: DataFrame,
    out_dir: str | Path,
    *,
    partition_by: str | None = None,
    meta: tuple[str, Mapping[str, Any]] | None = None,
) -> DataFrame:
    """Write ``frame`` as a Parquet directory (hive partitions ``partition_by=value/`` when given) and return it
    read back from there.

    A local ``out_dir`` is written to a sibling temporary directory, gets ``meta = (file name, JSON doc)`` with
    ``rows`` added, and is then renamed into place (an existing directory is replaced only after the new one is
    complete), so readers see the old or the new directory, never a half-written one. A URL (``s3a://``,
    ``hdfs://``...) is written in place by Spark's output committer and gets no side file.
    """
    target = str(out_dir)
    local = "://" not in target
    write_to = f"{target.rstrip('/')}.partial-{uuid.uuid4().hex[:8]}" if local else target
    writer = frame.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    session = frame.sparkSession
    try:
        writer.parquet(write_to)
        if local:
            if meta is not None:
                name, doc = meta
                rows = session.read.parquet(write_to).count()
                (Path(write_to) / name).write_text(json.dumps({**doc, "rows": rows}, sort_keys=True))
            replace_dir(Path(write_to), Path(target))
    except BaseException:
        if local:
            shutil.rmtree(write_to, ignore_errors=True)
        raise
    return session.read.parquet(target)


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` (the old copy is removed only after the move)."""
    if dst.exists():
        old = dst.with_name(f"{dst.name}.old-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
        src.rename(dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        src.rename(dst)


def read_features_meta(path: str | Path) -> dict[str, Any]:
    """The :data:`META_FILE` of a Spark feature directory: ``spec`` (:class:`FeatureSpec`), ``as_of`` (aware
    datetime), ``spec_version``, ``n_buckets``, ``rows``. Raises :class:`FeatureInputError` when absent."""
    file = Path(path) / META_FILE
    if not file.exists():
        raise FeatureInputError(f"{path} is not a Spark feature directory (no {META_FILE})")
    meta = json.loads(file.read_text())
    meta["spec"] = FeatureSpec.from_dict(meta["spec"])
    meta["as_of"] = datetime.fromisoformat(meta["as_of"])
    return meta


# --------------------------------------------------------------------------------------------- training sample
def sample_users(
    features: DataFrame, fraction: float, seed: int = 0, *, spec: FeatureSpec | None = None
) -> pd.DataFrame:
    """A deterministic user sample of a Spark feature table, as pandas (one row per sampled user).

    A user is kept when ``pmod(xxhash64(seed, user_id), 2**53) / 2**53 < fraction``: the choice depends only on
    the user id and the seed (not on partitioning), so the same users are drawn at every cutoff and a larger
    fraction keeps every user of a smaller one. With ``spec`` the frame is finalized like
    :func:`features.build.builder.build_features` output (column order, dtypes, sorted by ``user_id``); without it, the
    columns are those of ``features`` (``user_bucket`` dropped).
    """
    from pyspark.sql import functions as F

    if not 0.0 < float(fraction) <= 1.0:
        raise FeatureInputError(f"fraction must be in (0, 1], got {fraction!r}")
    if FEATURE_TABLE_KEY not in features.columns:
        raise FeatureInputError(f"features have no {FEATURE_TABLE_KEY!r} column (columns: {features.columns[:8]})")
    unit = F.pmod(F.xxhash64(F.lit(int(seed)), F.col(FEATURE_TABLE_KEY)), F.lit(2**53)).cast("double") / float(2**53)
    picked = features.filter(unit < float(fraction))
    if BUCKET_COLUMN in picked.columns:
        picked = picked.drop(BUCKET_COLUMN)
    frame = picked.toPandas()
    if spec is not None:
        return finalize_features(frame, spec)
    return frame.sort_values(FEATURE_TABLE_KEY, kind="stable").reset_index(drop=True)
