"""Run the feature expression: engines, input resolution, the executed feature table, and its Parquet file.

``build_features`` accepts an Ibis table (any backend), a pandas DataFrame (online scoring of a few users) or a
path to canonical Parquet (file, directory or glob) and returns a pandas DataFrame with a fixed column order and
fixed dtypes, sorted by ``user_id``. The default engine is an in-process DuckDB connection per thread; pass
``con=`` (any Ibis backend, e.g. PySpark) to run the very same expression elsewhere.
"""

from __future__ import annotations

import json
import math
import os
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.datatypes as dt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.build.chunks import DEFAULT_CHUNK_EVENTS, UserRange, parquet_files, plan_user_ranges
from features.events.schema import BEHAVIOR_ALIASES, BEHAVIORS, CANONICAL_COLUMNS, REQUIRED_COLUMNS, arrow_schema
from features.spec.definition import (
    FEATURE_TABLE_KEY,
    FeatureInputError,
    FeatureSpec,
    categorical_columns,
    integer_columns,
    output_columns,
)
from features.spec.table import PREPARED_SCHEMA, aggregate_features, as_utc, feature_table, prepare_events

Events = ibis.Table | pd.DataFrame | Path | str
Progress = Callable[[int, int | None], None]

META_SPEC_VERSION = b"spec_version"
META_AS_OF = b"as_of"
META_SPEC = b"feature_spec"

_local = threading.local()
_SQL_CACHE: dict[tuple[Any, ...], str] = {}
_SQL_LOCK = threading.Lock()
_PLACEHOLDER = "__propensity_prepared_events__"


def duckdb_connection(threads: int | None = None, memory_limit: str | None = None) -> ibis.BaseBackend:
    """A new in-memory DuckDB Ibis connection (session time zone UTC).

    ``threads`` defaults to the CPU count; ``memory_limit`` (DuckDB syntax, e.g. ``"4GB"``) defaults to half the
    physical memory, so a large build spills to disk instead of exhausting the machine.
    """
    threads = threads or os.cpu_count() or 1
    if memory_limit is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            memory_limit = f"{max(1, total // 2 // 2**20)}MB"
        except (ValueError, OSError, AttributeError):
            memory_limit = "4GB"
    return ibis.duckdb.connect(threads=threads, memory_limit=memory_limit, preserve_insertion_order=False)


def default_connection() -> ibis.BaseBackend:
    """This thread's default DuckDB connection, created on first use (a DuckDB connection is not thread-safe)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = duckdb_connection()
        _local.con = con
    return con


def events_table(events: Events, con: ibis.BaseBackend | None = None) -> ibis.Table:
    """Resolve ``events`` to an Ibis table.

    - Ibis table: returned as is;
    - pandas DataFrame: an Ibis memtable with canonical Arrow types (``ts`` as UTC; numeric ``ts`` is epoch
      seconds, naive datetimes are UTC; ids as strings; behavior aliases such as ``pv`` mapped, unknown
      behaviors rejected);
    - ``Path``/``str``: canonical Parquet read by ``con`` (default DuckDB): a file, a directory (every
      ``*.parquet`` below it) or a glob pattern.
    """
    if isinstance(events, ibis.Table):
        return events
    if isinstance(events, pd.DataFrame):
        return ibis.memtable(_arrow_events(events))
    if isinstance(events, (str, Path)):
        con = con or default_connection()
        return con.read_parquet(_parquet_source(Path(events)))
    raise FeatureInputError(
        f"events must be an Ibis table, a pandas DataFrame or a Parquet path, got {type(events).__name__}"
    )


def _parquet_source(path: Path) -> str:
    text = str(path)
    if any(ch in text for ch in "*?["):
        from glob import glob

        if not glob(text, recursive=True):
            raise FeatureInputError(f"no Parquet file matches {text}")
        return text
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise FeatureInputError(f"directory {path} holds no *.parquet file")
        return str(path / "**" / "*.parquet")
    if not path.exists():
        raise FeatureInputError(f"events file {path} does not exist")
    return text


def source_files(events: Path) -> list[Path]:
    """The Parquet files :func:`events_table` reads for the path ``events`` (a file, a directory or a glob
    pattern), sorted; raises :class:`FeatureInputError` when there is none."""
    return parquet_files(_parquet_source(Path(events)))


def _arrow_events(df: pd.DataFrame) -> pa.Table:
    """A pandas event frame as an Arrow table with canonical types for the columns it has."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise FeatureInputError(f"events lack required column(s) {missing}; columns present: {list(df.columns)}")
    canonical = arrow_schema()
    fields = [canonical.field(c) for c in CANONICAL_COLUMNS if c in df.columns]
    arrays = []
    for f in fields:
        col = df[f.name]
        if f.name == "ts":
            values = _utc_timestamps(col).dt.tz_convert(None).to_numpy(dtype="datetime64[us]")
            arrays.append(pa.array(values, type=f.type))
        elif f.name == "amount":
            try:
                values = pd.to_numeric(col, errors="raise").astype("float64").to_numpy()
            except (ValueError, TypeError) as exc:
                raise FeatureInputError(f"column 'amount' must be numeric: {exc}") from exc
            arrays.append(pa.array(values, type=f.type, from_pandas=True))
        elif f.name == "behavior":
            arrays.append(_behavior_array(col))
        else:
            if f.name == "user_id" and col.isna().any():
                raise FeatureInputError("column 'user_id' has null values")
            arrays.append(_string_array(col))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _behavior_array(col: pd.Series) -> pa.Array:
    """Behaviors lower-cased with aliases mapped (pv -> view, ...); unknown or null values raise."""
    if col.isna().any():
        raise FeatureInputError("column 'behavior' has null values")
    codes, uniques = pd.factorize(col, sort=False)
    canonical = [BEHAVIOR_ALIASES.get(str(u).strip().lower(), str(u).strip().lower()) for u in uniques]
    bad = sorted({c for c in canonical if c not in BEHAVIORS})
    if bad:
        raise FeatureInputError(f"column 'behavior' has unknown value(s) {bad[:5]}; expected one of {BEHAVIORS}")
    return pa.DictionaryArray.from_arrays(pa.array(codes, type=pa.int32()), pa.array(canonical)).cast(pa.string())


def _string_array(col: pd.Series) -> pa.Array:
    """Ids and labels as an Arrow string array (integers as their decimal text, nulls kept)."""
    try:
        if pd.api.types.is_float_dtype(col):  # integer ids with NaN arrive as float
            col = col.astype("Int64")
        arr = pa.array(col, from_pandas=True)
        return arr if pa.types.is_string(arr.type) else arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
        values = [None if _is_null(v) else str(v) for v in col.astype(object).tolist()]
        return pa.array(values, type=pa.string())


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


def _utc_timestamps(col: pd.Series) -> pd.Series:
    try:
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            ts = pd.to_datetime(col, unit="s", utc=True)
        else:
            ts = pd.to_datetime(col, utc=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise FeatureInputError(f"column 'ts' cannot be read as timestamps: {exc}") from exc
    if ts.isna().any():
        raise FeatureInputError("column 'ts' has null values")
    return ts.dt.as_unit("us")


def build_features(
    events: Events,
    as_of: datetime,
    spec: FeatureSpec | None = None,
    *,
    con: ibis.BaseBackend | None = None,
    progress: Progress | None = None,
    chunk_events: int | None = DEFAULT_CHUNK_EVENTS,
) -> pd.DataFrame:
    """Execute :func:`feature_table` and return one row per user (columns :func:`output_columns`).

    Dtypes: ``user_id`` and ``aipl_layer`` strings, counts and flags int64, everything else float64 (NaN where a
    feature is undefined); rows sorted by ``user_id`` with a fresh RangeIndex. Without ``con``, a pandas or
    Parquet input runs on this thread's DuckDB connection and an Ibis table on its own backend; a connection
    passed as ``con`` must not be used by several threads at once.

    A Parquet path sorted by ``user_id`` (as the event validator writes it) is built on DuckDB in user ranges of
    about ``chunk_events`` events (:mod:`features.build.chunks`), which bounds the peak memory; ``None`` builds it
    in one piece. ``progress(done, total)`` is called after resolving the input, after each range and at the end
    (``total`` = ranges + 2).
    """
    if chunk_events is not None and chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1 or None, got {chunk_events}")
    spec = spec or FeatureSpec()
    as_of = as_utc(as_of)
    table = events_table(events, con)
    con = con or _backend_of(table)
    ranges = [UserRange()]
    if isinstance(events, (str, Path)) and chunk_events is not None and getattr(con, "name", None) == "duckdb":
        ranges = plan_user_ranges(parquet_files(_parquet_source(Path(events))), chunk_events)
    total = len(ranges) + 2
    if progress:
        progress(1, total)
    pieces = []
    for i, user_range in enumerate(ranges, start=2):
        raw = run_feature_table(_in_range(table, user_range), as_of, spec, con=con)
        pieces.append(finalize_features(raw, spec))
        del raw
        if progress:
            progress(i, total)
    out = pieces[0] if len(pieces) == 1 else pd.concat(pieces, ignore_index=True)
    if len(pieces) > 1 and not out[FEATURE_TABLE_KEY].is_monotonic_increasing:  # pragma: no cover - ranges are ordered
        out = out.sort_values(FEATURE_TABLE_KEY, kind="stable").reset_index(drop=True)
    if progress:
        progress(total, total)
    return out


def _in_range(table: ibis.Table, user_range: UserRange) -> ibis.Table:
    """The events of the users in ``user_range`` (a pushed-down filter: DuckDB skips row groups outside it)."""
    if user_range.lo is not None:
        table = table.filter(table.user_id >= user_range.lo)
    if user_range.hi is not None:
        table = table.filter(table.user_id < user_range.hi)
    return table


def run_feature_table(table: ibis.Table, as_of: datetime, spec: FeatureSpec, *, con: ibis.BaseBackend) -> pa.Table:
    """Execute ``feature_table(table, as_of, spec)`` on ``con`` and return the raw result as an Arrow table.

    On DuckDB stage 1 (:func:`prepare_events`) is materialised once into a temporary table, which the stage-2
    subqueries then scan several times, and the as_of-independent stage 2 (:func:`aggregate_features`) is
    compiled once per spec and reused: this saves most of the per-call compile time (online scoring builds
    features for a few users per request) and a re-read of the source per subquery. Other backends run the Ibis
    expression directly. Both paths execute the same expression. The raw types are the engine's (DuckDB sums
    counts as 128-bit decimals); :func:`finalize_features` fixes them.
    """
    if getattr(con, "name", None) != "duckdb":
        return con.to_pyarrow(feature_table(table, as_of, spec))
    table = _naive_utc_ts(table)
    schema = table.schema()
    sql = _aggregate_sql(con, spec, "item_id" in schema, "amount" in schema)
    token = uuid.uuid4().hex
    view, prepared = f"_pf_view_{token}", f"_pf_prepared_{token}"
    con.create_view(view, prepare_events(table, as_of, spec))
    try:
        con.raw_sql(f'CREATE TEMP TABLE "{prepared}" AS SELECT * FROM "{view}"')
        return con.con.sql(sql.replace(f'"{_PLACEHOLDER}"', f'"{prepared}"')).to_arrow_table()
    finally:
        con.raw_sql(f'DROP TABLE IF EXISTS "{prepared}"')
        con.raw_sql(f'DROP VIEW IF EXISTS "{view}"')


@ibis.udf.scalar.builtin(name="epoch_us")
def _epoch_us(ts: dt.Timestamp(timezone="UTC")) -> dt.int64:  # type: ignore[empty-body]
    """DuckDB ``epoch_us``: microseconds since the Unix epoch of an instant."""


@ibis.udf.scalar.builtin(name="make_timestamp")
def _timestamp_from_us(us: dt.int64) -> dt.Timestamp(scale=6):  # type: ignore[empty-body]
    """DuckDB ``make_timestamp(bigint)``: the naive timestamp ``us`` microseconds after the epoch."""


def _naive_utc_ts(table: ibis.Table) -> ibis.Table:
    """``table`` with a time-zone-aware ``ts`` replaced by the same instant as a naive UTC timestamp (DuckDB only).

    The feature expression treats naive timestamps as UTC, so the features are unchanged. DuckDB computes the
    microseconds between two zoned timestamps through its calendar extension (about 0.2 us per value, three
    times per event), and between naive ones as a plain subtraction: on 10M events this is most of stage 1.
    """
    ts_type = table.schema().get("ts")
    if ts_type is None or not ts_type.is_timestamp() or ts_type.timezone is None:
        return table
    return table.mutate(ts=_timestamp_from_us(_epoch_us(table.ts)))


def _aggregate_sql(con: ibis.BaseBackend, spec: FeatureSpec, has_item: bool, has_amount: bool) -> str:
    key = (con.name, spec, has_item, has_amount)
    with _SQL_LOCK:
        sql = _SQL_CACHE.get(key)
    if sql is None:
        expr = aggregate_features(
            ibis.table(PREPARED_SCHEMA, name=_PLACEHOLDER), spec, has_item=has_item, has_amount=has_amount
        )
        sql = str(con.compile(expr))
        if f'"{_PLACEHOLDER}"' not in sql:  # pragma: no cover - guards against a change in identifier quoting
            raise RuntimeError("compiled feature SQL does not reference the prepared-events placeholder")
        with _SQL_LOCK:
            if len(_SQL_CACHE) > 64:
                _SQL_CACHE.clear()
            _SQL_CACHE[key] = sql
    return sql


def _backend_of(expr: ibis.Expr) -> ibis.BaseBackend:
    """The backend ``expr`` is bound to; this thread's default DuckDB when it reads only in-memory tables."""
    try:
        backends, _ = expr._find_backends()
    except AttributeError:  # pragma: no cover - guards against a private Ibis API moving
        backends = []
    return backends[0] if backends else default_connection()


def finalize_features(raw: pd.DataFrame | pa.Table, spec: FeatureSpec) -> pd.DataFrame:
    """Fix column order, dtypes and row order of an executed feature table (pandas or Arrow)."""
    cols = output_columns(spec)
    names = raw.column_names if isinstance(raw, pa.Table) else raw.columns
    missing = [c for c in cols if c not in names]
    if missing:
        raise FeatureInputError(f"feature table lacks columns {missing[:5]} (spec mismatch?)")
    if isinstance(raw, pa.Table):
        return _finalize_arrow(raw, spec, cols)
    ints = set(integer_columns(spec))
    strings = {FEATURE_TABLE_KEY, *categorical_columns(spec)}
    frame = raw.loc[:, cols].copy()
    for name in cols:
        col = frame[name]
        if name in strings:
            if col.dtype != "str":
                frame[name] = col.astype("str")
        elif name in ints:
            if col.dtype != "int64":
                frame[name] = col.fillna(0).astype("int64")
        elif col.dtype != "float64":
            frame[name] = pd.to_numeric(col).astype("float64")
    return frame.sort_values(FEATURE_TABLE_KEY, kind="stable").reset_index(drop=True)


def _finalize_arrow(raw: pa.Table, spec: FeatureSpec, cols: list[str]) -> pd.DataFrame:
    """:func:`finalize_features` on Arrow: the casts run in Arrow's compute kernels, then one conversion."""
    ints = set(integer_columns(spec))
    strings = {FEATURE_TABLE_KEY, *categorical_columns(spec)}
    arrays = []
    for name in cols:
        col = raw.column(name)
        if name in strings:
            target = pa.string()
        elif name in ints:
            target = pa.int64()
            if col.null_count:
                col = pc.fill_null(col.cast(target), 0)
        else:
            target = pa.float64()
        arrays.append(col if col.type == target else col.cast(target))
    table = pa.table(arrays, names=cols)
    keys = table.column(FEATURE_TABLE_KEY)
    if len(keys) > 1 and not pc.all(pc.greater_equal(keys[1:], keys[:-1])).as_py():  # DuckDB returns it sorted
        table = table.take(pc.sort_indices(table, sort_keys=[(FEATURE_TABLE_KEY, "ascending")]))
    return table.to_pandas()


def write_features(df: pd.DataFrame, path: Path, as_of: datetime, spec: FeatureSpec) -> Path:
    """Write a feature table to Parquet with ``spec_version``, ``as_of`` (ISO, UTC) and the spec in its metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[META_SPEC_VERSION] = spec.version.encode()
    meta[META_AS_OF] = as_utc(as_of).isoformat().encode()
    meta[META_SPEC] = json.dumps(spec.to_dict(), sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path


def read_features(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a feature file written by :func:`write_features`.

    Returns ``(df, meta)`` with ``meta = {"spec_version": str, "as_of": aware datetime, "spec": FeatureSpec}``.
    Raises :class:`FeatureInputError` when the file lacks that metadata.
    """
    path = Path(path)
    if not path.exists():
        raise FeatureInputError(f"feature file {path} does not exist")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    if META_SPEC_VERSION not in meta or META_AS_OF not in meta:
        raise FeatureInputError(f"{path} is not a feature file (no spec_version/as_of metadata)")
    info: dict[str, Any] = {
        "spec_version": meta[META_SPEC_VERSION].decode(),
        "as_of": datetime.fromisoformat(meta[META_AS_OF].decode()),
    }
    if META_SPEC in meta:
        info["spec"] = FeatureSpec.from_dict(json.loads(meta[META_SPEC]))
    return table.to_pandas(), info
