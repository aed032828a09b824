"""Finding event files and describing them to DuckDB (helpers of :mod:`features.events.validate`).

Everything here works on file names and small samples; no function reads a whole file.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from features.events.schema import CANONICAL_COLUMNS, REQUIRED_COLUMNS


class EventsError(ValueError):
    """Base class of every error raised while reading or validating events."""

    exit_code = 1  # CLI exit code: bad input


class SourceError(EventsError):
    """The event source cannot be found or read (no such file, mixed formats, unreadable CSV)."""


class MissingColumnError(EventsError):
    """A required canonical column is absent after applying the column mapping."""


PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz", ".csv.zst", ".gz", ".zst")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class SourceFiles:
    """Resolved input: the files in reading order and their common format ("csv" or "parquet")."""

    paths: tuple[Path, ...]
    format: str


def query(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object] | None = None) -> list[tuple]:
    """Run ``sql`` and fetch every row (DuckDB results stream: an unfetched result blocks the connection)."""
    return con.execute(sql, params).fetchall() if params is not None else con.execute(sql).fetchall()


def sql_str(value: str) -> str:
    """A SQL string literal for ``value`` (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def sql_path_list(paths: Sequence[Path]) -> str:
    """A DuckDB list literal of file names, for ``read_csv([...])`` / ``read_parquet([...])``."""
    return "[" + ", ".join(sql_str(str(p)) for p in paths) + "]"


def _format_of(path: Path, forced: str | None) -> str:
    if forced is not None:
        return forced
    name = path.name.lower()
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise SourceError(f"cannot open event file {path}: {exc.strerror}") from None
    return "parquet" if magic == b"PAR1" else "csv"


def _expand_one(source: str | Path) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and not p.name.startswith((".", "_"))
        ]
        parquet = [p for p in files if p.name.lower().endswith(PARQUET_SUFFIXES)]
        if parquet:
            return parquet
        csv = [p for p in files if p.name.lower().endswith(CSV_SUFFIXES)]
        if csv:
            return csv
        raise SourceError(f"directory {path} holds no Parquet or CSV event files")
    text = str(source)
    if _GLOB_CHARS & set(text):
        matches = [Path(m) for m in sorted(glob.glob(text, recursive=True)) if Path(m).is_file()]
        if not matches:
            raise SourceError(f"no event files match the pattern {text!r}")
        return matches
    raise SourceError(f"event source {text!r} does not exist")


def resolve_sources(sources: str | Path | Sequence[str | Path], forced_format: str | None) -> SourceFiles:
    """Expand ``sources`` (file, directory of parts, glob, or a sequence of these) into files.

    Directories yield their ``*.parquet`` parts (or CSV files when there are none), skipping hidden
    and ``_``-prefixed marker files. Raises :class:`SourceError` when nothing is found, a file is
    empty (0 bytes) or CSV and Parquet files are mixed.
    """
    items: Sequence[str | Path] = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if not items:
        raise SourceError("no event sources given")
    paths: list[Path] = []
    for item in items:
        paths.extend(_expand_one(item))
    paths = [p.resolve() for p in paths]
    empty = [p for p in paths if p.stat().st_size == 0]
    if empty:
        raise SourceError(f"event file {empty[0]} is empty (0 bytes)")
    formats = {p: _format_of(p, forced_format) for p in paths}
    kinds = set(formats.values())
    if len(kinds) > 1:
        csv = next(p for p, k in formats.items() if k == "csv")
        pq = next(p for p, k in formats.items() if k == "parquet")
        raise SourceError(f"event sources mix CSV ({csv.name}) and Parquet ({pq.name}); pass one format")
    return SourceFiles(paths=tuple(paths), format=kinds.pop())


@dataclass(frozen=True)
class CsvLayout:
    """How to split the CSV files: delimiter, whether line 1 is a header, and explicit names."""

    delimiter: str
    header: bool
    names: tuple[str, ...] | None


def _known_names(columns: Mapping[str, str], names: Sequence[str] | None) -> set[str]:
    known = {c.lower() for c in CANONICAL_COLUMNS}
    known |= {k.strip().lower() for k in columns}
    if names:
        known |= {n.strip().lower() for n in names}
    return known


def sniff_csv_layout(
    con: duckdb.DuckDBPyConnection,
    first: Path,
    *,
    header: bool | None,
    delimiter: str | None,
    names: Sequence[str] | None,
    columns: Mapping[str, str],
) -> CsvLayout:
    """Decide delimiter and header for a CSV source from its first file.

    Explicit options win. Otherwise DuckDB's sniffer decides, except that a first line naming a known
    column (a canonical name, a key of ``columns`` or one of ``names``) is always taken as a header.
    """
    if header is not None and delimiter is not None:
        return CsvLayout(delimiter, header, tuple(names) if names else None)
    try:
        rows = query(
            con,
            "SELECT Delimiter, HasHeader FROM sniff_csv(?, sample_size = 20480, ignore_errors = true)",
            [str(first)],
        )
    except duckdb.Error as exc:
        raise SourceError(f"cannot read {first} as CSV: {str(exc).splitlines()[0]}") from None
    delim = delimiter if delimiter is not None else str(rows[0][0])
    if header is None:
        header = bool(rows[0][1])
        try:
            first_rows = query(
                con,
                "SELECT * FROM read_csv(?, header = false, all_varchar = true, delim = ?, "
                "ignore_errors = true) LIMIT 1",
                [str(first), delim],
            )
        except duckdb.Error:
            first_rows = []
        first_row = first_rows[0] if first_rows else None
        if first_row:
            values = {str(v).strip().lower() for v in first_row if v is not None}
            if values & _known_names(columns, names):
                header = True
    return CsvLayout(delim, header, tuple(names) if names else None)


@dataclass(frozen=True)
class ColumnPlan:
    """Which source column feeds each canonical column, with its DuckDB type."""

    source: dict[str, str]  # canonical name -> source column name
    types: dict[str, str]  # canonical name -> DuckDB type of the source column
    seen: tuple[str, ...]  # all source column names, in file order


def plan_columns(described: Sequence[tuple[str, str]], mapping: Mapping[str, str]) -> ColumnPlan:
    """Map source columns to canonical ones.

    ``described`` is ``[(column name, DuckDB type), ...]`` of the source. A column maps through
    ``mapping`` (exact name first, then case-insensitive), else by its own name when that is
    canonical (case-insensitive, surrounding spaces ignored); other columns are ignored. Raises
    :class:`MissingColumnError` naming the absent required columns and the columns seen, and
    :class:`SourceError` when two source columns claim one canonical column.
    """
    lower_map = {k.strip().lower(): v for k, v in mapping.items()}
    source: dict[str, str] = {}
    types: dict[str, str] = {}
    for name, dtype in described:
        target = mapping.get(name) or lower_map.get(name.strip().lower())
        if target is None and name.strip().lower() in CANONICAL_COLUMNS:
            target = name.strip().lower()
        if target is None:
            continue
        if target in source:
            raise SourceError(
                f"columns {source[target]!r} and {name!r} both map to {target!r}; "
                "rename one with ReadOptions(columns=...)"
            )
        source[target] = name
        types[target] = dtype
    seen = tuple(name for name, _ in described)
    missing = [c for c in REQUIRED_COLUMNS if c not in source]
    if missing:
        hint = (
            "map source names with ReadOptions(columns={'<source name>': '<canonical name>'})"
            " or, for a file without a header, pass ReadOptions(header=False, names=(...))"
        )
        err = MissingColumnError(
            f"missing required column(s): {', '.join(missing)}; "
            f"columns seen: {', '.join(seen) if seen else '(none)'}; {hint}"
        )
        err.missing, err.seen = tuple(missing), seen  # for callers that word their own hint (the CLI's --map)
        raise err
    return ColumnPlan(source=source, types=types, seen=seen)
