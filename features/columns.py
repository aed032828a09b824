"""A feature table as numpy columns: how the scoring code reads a table, for one user or a million.

The scoring functions (segmenter, design matrix, BTYD part, scores, activation, reasons) take a *table*: a pandas
DataFrame, or :data:`Columns`, a mapping of column name -> 1-D numpy array, every array of the same length n (n
users). The batch reads its feature table through :func:`as_columns` (each column converted once, when first
read); online rescoring builds the mapping of one user straight from the feature values. A pandas operation costs
tens of microseconds whatever the size, so a one-row DataFrame pipeline spends ~100 ms in pandas around well under
a millisecond of arithmetic; with columns, the same code does only the arithmetic. The readers below give the same
arrays for both forms (float64 with NaN for missing numbers, object arrays for labels), so everything after them is
one code path with the same floats.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

__all__ = ["Columns", "FrameColumns", "LayeredColumns", "Table", "as_columns", "column_names", "fill_nan", "floats",
           "n_rows", "objects", "take_rows", "with_columns"]

Columns: TypeAlias = Mapping[str, np.ndarray]
"""Column name -> 1-D numpy array (numbers, booleans, or objects such as strings), all of one length n."""
Table: TypeAlias = pd.DataFrame | Columns
"""What the scoring functions read: a DataFrame or :data:`Columns`."""


class FrameColumns(Mapping[str, np.ndarray]):
    """Read-only :data:`Columns` view of a DataFrame: a column is converted when first read and kept (numeric and
    boolean columns, nullable ones included, as float64 with NaN for missing; any other as an object array)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        values = self._cache.get(name)
        if values is None:
            values = self._cache[name] = _series_array(self.frame[name])
        return values

    def __contains__(self, name: object) -> bool:
        return name in self.frame.columns

    def __iter__(self) -> Iterator[str]:
        return iter(self.frame.columns)

    def __len__(self) -> int:
        return len(self.frame.columns)

    @property
    def rows(self) -> int:
        """n, the number of rows (users)."""
        return len(self.frame)


def _series_array(series: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    return series.to_numpy(dtype=object)


def as_columns(table: Table) -> Columns:
    """``table`` as :data:`Columns`: a :class:`FrameColumns` view of a DataFrame, a mapping as it is."""
    return FrameColumns(table) if isinstance(table, pd.DataFrame) else table


def column_names(table: Table) -> Collection[str]:
    """The column names of ``table`` (supports ``in``)."""
    if isinstance(table, pd.DataFrame):
        return table.columns
    return table.keys()


def n_rows(table: Table) -> int:
    """n, the number of rows of ``table`` (0 for a mapping without columns)."""
    if isinstance(table, pd.DataFrame):
        return len(table)
    if isinstance(table, FrameColumns):
        return table.rows
    if isinstance(table, LayeredColumns):
        return n_rows(table.base) if column_names(table.base) else n_rows(table.added)
    for values in table.values():
        return len(values)
    return 0


def with_columns(table: Columns, new: Mapping[str, np.ndarray]) -> LayeredColumns:
    """``table`` with the columns of ``new`` added or replacing its own, nothing copied (iteration lists ``table``'s
    columns, then the added ones)."""
    return LayeredColumns(table, new)


class LayeredColumns(Mapping[str, np.ndarray]):
    """:data:`Columns` made of a base table and columns added over it (:func:`with_columns`): ``added`` holds every
    column added so far, in order (a later one replaces an earlier one of the same name), ``base`` the rest.
    ``memo``: arrays derived from these columns, kept by whoever derives them (e.g. the numeric block of a design
    matrix, shared by the models scoring the same rows); empty for every new layer."""

    def __init__(self, base: Columns, new: Mapping[str, np.ndarray]) -> None:
        if isinstance(base, LayeredColumns):
            self.base: Columns = base.base
            self.added: dict[str, np.ndarray] = {**base.added, **new}
        else:
            self.base, self.added = base, dict(new)
        self.memo: dict[Any, Any] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        values = self.added.get(name)
        return self.base[name] if values is None else values

    def __contains__(self, name: object) -> bool:
        return name in self.added or name in self.base

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        yield from (name for name in self.added if name not in self.base)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def column_list(table: Columns, names: Iterable[str]) -> list[Any]:
    """The columns ``names`` of ``table`` as stored (arrays, or Series of a :class:`FrameColumns`), in order: what
    ``[table[n] for n in names]`` gives, without a method call per column on layered columns over a dict."""
    if isinstance(table, LayeredColumns) and type(table.base) is dict:
        added, base = table.added, table.base
        return [added[n] if n in added else base[n] for n in names]
    return [table[n] for n in names]


def floats(table: Table, name: str) -> np.ndarray:
    """Column ``name`` as float64, shape (n,), missing values NaN; text is parsed as numbers (``pd.to_numeric``).
    The array may be the table's own: do not write into it."""
    values = table[name]
    if isinstance(values, pd.Series):
        if not (pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)):
            values = pd.to_numeric(values)
        return values.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.asarray(values)
    if values.dtype.kind not in "fiub":
        values = np.asarray(pd.to_numeric(values), dtype=np.float64)
    return values.astype(np.float64, copy=False)


def fill_nan(values: np.ndarray, fill: float) -> np.ndarray:
    """``values`` (float64) with NaN replaced by ``fill`` (a new array; infinities stay, unlike ``np.nan_to_num``)."""
    return np.where(np.isnan(values), fill, values)


def objects(table: Table, name: str) -> np.ndarray:
    """Column ``name`` as an object array, shape (n,) (labels: strings, missing values as stored)."""
    values = table[name]
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=object)
    values = np.asarray(values)
    return values if values.dtype == object else values.astype(object)


def take_rows(table: Table, index: slice | np.ndarray) -> Table:
    """The rows ``index`` (a slice, boolean mask or positions) of ``table``, as the same kind of table (a DataFrame
    keeps its index)."""
    if isinstance(table, pd.DataFrame):
        return table.iloc[index]
    if isinstance(table, FrameColumns):
        return FrameColumns(table.frame.iloc[index])
    return {name: np.asarray(table[name])[index] for name in table}
