"""The DuckDB passes over the event sources (helpers of :mod:`features.events.validate`).

Pass 1 keeps only the quarantined rows (small) with their source row numbers, in table ``bad``,
and the CSV lines the parser rejected, in table ``malformed``. Pass 2 streams the good rows,
de-duplicated and sorted, straight into Parquet. Neither pass holds the whole input in memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.events.schema import OPTIONAL_COLUMNS, arrow_schema
from features.events.sources import (
    ColumnPlan,
    CsvLayout,
    SourceError,
    SourceFiles,
    plan_columns,
    query,
    sniff_csv_layout,
    sql_path_list,
    sql_str,
)
from features.events.sql import OUTPUT_COLUMNS, normalised_select

FILE_COL = "_src_file"
BATCH_ROWS = 1_000_000
# low-cardinality columns; item ids are often too many for a dictionary to pay off
_DICTIONARY_COLUMNS = ["user_id", "behavior", "category_id", "channel"]
_NULLABLE = frozenset(OPTIONAL_COLUMNS)


@dataclass(frozen=True)
class SourcePlan:
    """Everything needed to read the sources the same way in every pass."""

    files: SourceFiles
    layout: CsvLayout | None  # None for Parquet
    columns: ColumnPlan
    epoch_unit: str
    cutoff_sql: str  # TIMESTAMPTZ literal of cutoff + tolerance

    @property
    def is_csv(self) -> bool:
        return self.layout is not None

    @property
    def header_lines(self) -> int:
        return int(self.layout.header) if self.layout is not None else 0


def duck_message(exc: BaseException) -> str:
    """First line of a DuckDB error, for messages that do not drown the user in detail."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_call(layout: CsvLayout | None, paths: tuple[Path, ...], *, rejects: bool) -> str:
    """SQL table function reading ``paths``; CSV rows that do not parse are stored or skipped."""
    if layout is None:
        return (
            f"read_parquet({sql_path_list(paths)}, filename = {sql_str(FILE_COL)}, "
            "file_row_number = true, union_by_name = true)"
        )
    args = [
        "all_varchar = true",
        f"header = {str(layout.header).lower()}",
        f"delim = {sql_str(layout.delimiter)}",
        "store_rejects = true" if rejects else "ignore_errors = true",
    ]
    if layout.names:
        args.append("names = [" + ", ".join(sql_str(n) for n in layout.names) + "]")
    return f"read_csv({sql_path_list(paths)}, {', '.join(args)})"


def plan_source(
    con: duckdb.DuckDBPyConnection,
    files: SourceFiles,
    *,
    header: bool | None,
    delimiter: str | None,
    names: tuple[str, ...] | None,
    mapping: dict[str, str],
    epoch_unit: str,
    cutoff_sql: str,
) -> SourcePlan:
    """Sniff the CSV layout (if CSV), read the column names and types, map them to canonical ones."""
    layout = None
    if files.format == "csv":
        layout = sniff_csv_layout(
            con, files.paths[0], header=header, delimiter=delimiter, names=names, columns=mapping
        )
    call = _read_call(layout, files.paths, rejects=False)
    try:
        described = query(con, f"DESCRIBE SELECT * FROM {call}")
    except duckdb.Error as exc:
        raise SourceError(f"cannot read {files.paths[0]}: {duck_message(exc)}") from None
    internal = {FILE_COL, "file_row_number"} if layout is None else set()
    columns = plan_columns([(r[0], r[1]) for r in described if r[0] not in internal], mapping)
    return SourcePlan(files, layout, columns, epoch_unit, cutoff_sql)


def _normalised(plan: SourcePlan, call: str, *, file_col: str, row_col: str | None) -> str:
    return normalised_select(
        call,
        plan.columns.source,
        plan.columns.types,
        cutoff_sql=plan.cutoff_sql,
        epoch_unit=plan.epoch_unit,
        file_col=file_col,
        row_col=row_col,
    )


def _run(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    try:
        query(con, sql)
    except duckdb.Error as exc:
        raise SourceError(f"cannot read the event sources: {duck_message(exc)}") from None


def find_bad_rows(con: duckdb.DuckDBPyConnection, plan: SourcePlan) -> None:
    """Pass 1: create ``bad`` (quarantined parsed rows) and ``malformed`` (rejected CSV lines).

    ``bad`` columns: ``_file``, ``_row`` (1-based row among the parsed rows of the file),
    ``raw_<column>`` for the seven canonical columns, ``reason``.
    """
    keep = "_file, _row, " + ", ".join(f"raw_{c}" for c in OUTPUT_COLUMNS) + ", reason"
    if not plan.is_csv:
        call = _read_call(None, plan.files.paths, rejects=False)
        select = _normalised(plan, call, file_col=FILE_COL, row_col="file_row_number + 1")
        _run(con, f"CREATE TABLE bad AS SELECT {keep} FROM ({select}) WHERE reason IS NOT NULL")
        query(con, "CREATE TABLE malformed (_file VARCHAR, line BIGINT, raw_line VARCHAR)")
        return
    for i, path in enumerate(plan.files.paths):
        call = _read_call(plan.layout, (path,), rejects=True)
        # row_number() OVER () follows the file's row order (DuckDB preserves insertion order).
        select = _normalised(plan, call, file_col=sql_str(str(path)), row_col="row_number() OVER ()")
        head = "CREATE TABLE bad AS" if i == 0 else "INSERT INTO bad BY NAME"
        _run(con, f"{head} SELECT {keep} FROM ({select}) WHERE reason IS NOT NULL")
    query(
        con,
        "CREATE TABLE malformed AS SELECT s.file_path AS _file, e.line AS line, "
        "min(e.csv_line) AS raw_line FROM reject_errors e "
        "JOIN reject_scans s USING (scan_id, file_id) GROUP BY ALL"
    )


def count_parsed_rows(con: duckdb.DuckDBPyConnection, plan: SourcePlan) -> int:
    """Rows the reader yields (CSV: parsed records, malformed ones excluded; Parquet: from metadata)."""
    if not plan.is_csv:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in plan.files.paths)
    call = _read_call(plan.layout, plan.files.paths, rejects=False)
    try:
        rows = query(con, f"SELECT count(*) FROM {call}")
    except duckdb.Error as exc:
        raise SourceError(f"cannot read the event sources: {duck_message(exc)}") from None
    return int(rows[0][0])


def _same_as_previous(batch: pa.RecordBatch, previous: pa.RecordBatch | None) -> pa.Array:
    """Boolean mask: row i equals row i-1 in every column (NULL equals NULL, as in SQL DISTINCT).

    Row 0 is compared with ``previous`` (the last row of the preceding batch), or is never a repeat.
    """
    same: pa.Array | None = None
    for i in range(batch.num_columns):
        col = batch.column(i)
        head = previous.column(i) if previous is not None else pa.nulls(1, col.type)
        prev = pa.concat_arrays([head, col.slice(0, len(col) - 1)])
        eq = pc.or_(
            pc.fill_null(pc.equal(col, prev), False),
            pc.and_(pc.is_null(col), pc.is_null(prev)),
        )
        same = eq if same is None else pc.and_(same, eq)
    assert same is not None
    if previous is None:
        same = pa.concat_arrays([pa.array([False]), same.slice(1)])
    return same


def _known_mark(known: Sequence[Path]) -> str:
    """A select-list expression: whether the row ``g`` equals an event of the canonical Parquet files ``known``
    (every column, nulls equal to nulls)."""
    if not known:
        return "FALSE"
    match = " AND ".join(f"k.{c} IS NOT DISTINCT FROM g.{c}" if c in _NULLABLE else f"k.{c} = g.{c}"
                         for c in OUTPUT_COLUMNS)
    return f"EXISTS (SELECT 1 FROM read_parquet({sql_path_list(known)}) k WHERE {match})"


def write_good_rows(
    con: duckdb.DuckDBPyConnection, plan: SourcePlan, path: Path, known: Sequence[Path] = ()
) -> tuple[int, int, int]:
    """Pass 2: stream the good rows sorted by all output columns into ``path`` (Parquet with
    :func:`arrow_schema`), dropping exact duplicates (adjacent after the sort) and the rows equal to an event of
    ``known`` (canonical Parquet files of events already in the history, e.g. the event log's exported parts).

    Returns (good rows read, distinct rows written, distinct rows dropped because ``known`` holds them).
    """
    call = _read_call(plan.layout, plan.files.paths, rejects=False)
    select = _normalised(plan, call, file_col="NULL::VARCHAR", row_col=None)
    cols = ", ".join(OUTPUT_COLUMNS)
    query_sql = (f"SELECT {cols}, {_known_mark(known)} AS _known FROM ({select}) g WHERE reason IS NULL "
                 f"ORDER BY {cols}")
    schema = arrow_schema()
    valid = written = already = 0
    previous: pa.RecordBatch | None = None
    try:
        reader = con.sql(query_sql).to_arrow_reader(BATCH_ROWS)
        with pq.ParquetWriter(path, schema, compression="zstd", use_dictionary=_DICTIONARY_COLUMNS) as writer:
            for marked in reader:
                if marked.num_rows == 0:
                    continue
                is_known = marked.column(len(OUTPUT_COLUMNS))
                batch = pa.RecordBatch.from_arrays(marked.columns[: len(OUTPUT_COLUMNS)],
                                                   names=list(OUTPUT_COLUMNS)).cast(schema)
                valid += batch.num_rows
                first = pc.invert(_same_as_previous(batch, previous))
                previous = batch.slice(batch.num_rows - 1, 1)
                keep = pc.and_(first, pc.invert(pc.fill_null(is_known, False)))
                already += pc.sum(pc.and_(first, pc.fill_null(is_known, False)).cast(pa.int64())).as_py() or 0
                kept = batch.filter(keep)
                written += kept.num_rows
                writer.write_batch(kept)
    except duckdb.Error as exc:
        path.unlink(missing_ok=True)
        raise SourceError(f"cannot read the event sources: {duck_message(exc)}") from None
    return valid, written, already


def bad_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Quarantined rows per reason (``malformed_row`` included)."""
    counts = {str(r): int(n) for r, n in query(con, "SELECT reason, count(*) FROM bad GROUP BY reason")}
    counts["malformed_row"] = int(query(con, "SELECT count(*) FROM malformed")[0][0])
    return counts


def write_quarantine(con: duckdb.DuckDBPyConnection, plan: SourcePlan, path: Path) -> int:
    """Write ``quarantine.csv`` (atomically); returns the number of rows written.

    Columns: ``source_file``, ``source_row``, the seven canonical columns as raw text,
    ``raw_line`` (the unsplit line of a malformed CSV row) and ``reason``. ``source_row`` is 1-based:
    for Parquet the row within its file; for CSV the record number counting the header as record 1,
    which is the line number unless a quoted field spans lines.
    """
    if plan.is_csv:
        # The k-th parsed record follows the j-th rejected record (at line L_j) when
        # k > L_j - header - j, so its line is k + header + (number of such j).
        query(
            con,
            "CREATE TEMP TABLE reject_marks AS SELECT _file, line - ? - "
            "row_number() OVER (PARTITION BY _file ORDER BY line) AS mark FROM malformed",
            [plan.header_lines],
        )
        row = (
            f"(b._row + {plan.header_lines} + (SELECT count(*) FROM reject_marks m "
            "WHERE m._file = b._file AND m.mark < b._row))"
        )
    else:
        row = "b._row"
    raw = ", ".join(f"b.raw_{c} AS {c}" for c in OUTPUT_COLUMNS)
    nulls = ", ".join(f"NULL::VARCHAR AS {c}" for c in OUTPUT_COLUMNS)
    tmp = path.with_name(path.name + ".tmp")
    result = query(
        con,
        f"COPY (SELECT b._file AS source_file, {row} AS source_row, {raw}, "
        f"NULL::VARCHAR AS raw_line, b.reason FROM bad b "
        f"UNION ALL SELECT _file, line, {nulls}, raw_line, 'malformed_row' FROM malformed "
        f"ORDER BY source_file, source_row) TO {sql_str(str(tmp))} (FORMAT csv, HEADER true)",
    )
    os.replace(tmp, path)
    return int(result[0][0]) if result else 0


_EXAMPLE_COLUMN = {
    "null_user_id": "raw_user_id",
    "bad_ts": "raw_ts",
    "future_ts": "raw_ts",
    "unknown_behavior": "raw_behavior",
    "bad_amount": "raw_amount",
}


def examples(con: duckdb.DuckDBPyConnection, per_reason: int = 3) -> dict[str, list[str]]:
    """The most frequent raw values of the offending column, per reason (repr'd; '(null)' for NULL)."""
    value = "CASE reason " + " ".join(f"WHEN '{r}' THEN {c}" for r, c in _EXAMPLE_COLUMN.items()) + " END"
    rows = query(
        con,
        f"SELECT reason, v FROM (SELECT reason, {value} AS v, count(*) AS n FROM bad GROUP BY ALL) "
        f"QUALIFY row_number() OVER (PARTITION BY reason ORDER BY n DESC, v NULLS FIRST) <= {per_reason} "
        "ORDER BY reason, n DESC, v NULLS FIRST",
    )
    rows += query(con, f"SELECT 'malformed_row', raw_line FROM malformed ORDER BY _file, line LIMIT {per_reason}")
    out: dict[str, list[str]] = {}
    for reason, v in rows:
        out.setdefault(str(reason), []).append("(null)" if v is None else repr(v))
    return out
