"""User-range chunks of a Parquet event source: a large feature build in pieces of bounded memory.

Every feature is per user, so the feature table of a source is the concatenation of the tables of disjoint user
ranges. When the source's files are sorted by ``user_id`` (the event validator writes clean events sorted by user
and time), each range reads only the row groups whose ``user_id`` statistics overlap it, and DuckDB's hash tables
hold one range's users at a time: the peak memory follows the chunk size, not the source size, at about the same
time per event. A source whose row groups are not sorted by user is built in one piece, since there every range
would read the whole source again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from glob import glob
from pathlib import Path

import pyarrow.parquet as pq

DEFAULT_CHUNK_EVENTS = 12_000_000
"""Events per user range. 12M events take about 2.5 GB at the peak; below a few million the fixed cost per
query starts to show (see ``benchmarks/README.md``)."""


@dataclass(frozen=True)
class UserRange:
    """``lo <= user_id < hi``; ``None`` leaves that side open. ``UserRange()`` is every user."""

    lo: str | None = None
    hi: str | None = None


@dataclass(frozen=True)
class _RowGroup:
    lo: str
    hi: str
    rows: int


def parquet_files(source: str) -> list[Path]:
    """The files behind a DuckDB Parquet source string: one file, or every match of a (recursive) glob."""
    if any(ch in source for ch in "*?["):
        return sorted(Path(p) for p in glob(source, recursive=True) if Path(p).is_file())
    return [Path(source)]


def plan_user_ranges(files: list[Path], chunk_events: int) -> list[UserRange]:
    """Disjoint user ranges, in ``user_id`` order, of about ``chunk_events`` rows each, covering every user.

    Read from the files' row-group statistics only (no data is read). One open range when the source holds at
    most ``chunk_events`` rows, or when any file lacks ``user_id`` statistics, has a non-string or null
    ``user_id``, or has row groups out of ``user_id`` order. The ranges decide only which rows each piece reads,
    never which features a user gets: any set of bounds gives the same table.
    """
    if chunk_events < 1:
        raise ValueError(f"chunk_events must be >= 1, got {chunk_events}")
    groups: list[_RowGroup] = []
    for path in files:
        file_groups = _row_groups(path)
        if file_groups is None:
            return [UserRange()]
        groups += file_groups
    if sum(g.rows for g in groups) <= chunk_events:
        return [UserRange()]
    bounds: list[str] = []
    rows = 0
    for group in sorted(groups, key=lambda g: g.lo):
        if rows >= chunk_events and (not bounds or group.lo > bounds[-1]):
            bounds.append(group.lo)
            rows = 0
        rows += group.rows
    edges: list[str | None] = [None, *bounds, None]
    return [UserRange(lo, hi) for lo, hi in itertools.pairwise(edges)]


def _row_groups(path: Path) -> list[_RowGroup] | None:
    """The file's row groups as ``user_id`` ranges, or None when they cannot serve as user-ordered pieces."""
    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, ValueError):  # pyarrow raises ArrowInvalid (a ValueError) for a file that is not Parquet
        return None
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "user_id" not in names:
        return None
    col = names.index("user_id")
    out: list[_RowGroup] = []
    for i in range(meta.num_row_groups):
        chunk = meta.row_group(i).column(col)
        stats = chunk.statistics
        if stats is None or not stats.has_min_max or stats.null_count != 0:
            return None
        lo, hi = stats.min, stats.max
        if not isinstance(lo, str) or not isinstance(hi, str):
            return None
        if out and lo < out[-1].hi:
            return None
        out.append(_RowGroup(lo, hi, meta.row_group(i).num_rows))
    return out
