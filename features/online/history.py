"""The per-user event history a lookup rescores from: every event of the batch's source, grouped by user.

A history is a directory of memory-mapped numpy arrays (one per :data:`features.online.arrays.COLUMNS`, events
grouped by user), the sorted user ids with their offsets, and ``meta.json``. Opening it maps the files without
reading them; :meth:`History.events` finds a user by binary search and slices its rows (microseconds). It is
the exact per-user state of :mod:`features.online.compute`: features at any cutoff come from these events plus
those ingested after the history was built, never from a summary that would lose the sub-day times the
day-bucket features need.

:func:`write_history` streams the source in Arrow batches (bounded memory) and writes into a temporary
directory that is renamed into place, so a reader never sees a half-written history.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from features.online.arrays import COLUMNS, DTYPES, EventArrays
from features.spec.table import canonical_events

META_FILE = "meta.json"
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class HistoryInfo:
    """What a history holds: ``events`` rows of ``users`` users, whether the source had items and amounts, and
    ``extra`` (e.g. the snapshot id and the event-log sequence number it includes)."""

    path: Path
    events: int
    users: int
    has_item: bool
    has_amount: bool
    extra: dict[str, Any]


def write_history(
    events: ibis.Table, out_dir: Path, *, batch_rows: int = 1_000_000, progress: Progress | None = None,
    **extra: Any,
) -> HistoryInfo:
    """Write every event of ``events`` (a canonical Ibis table) as a history at ``out_dir`` (replaced whole).

    ``extra`` (JSON-ready) goes into the metadata. Memory stays about ``batch_rows`` events plus the user ids.
    """
    schema = events.schema()
    has_item, has_amount = "item_id" in schema, "amount" in schema
    ordered = canonical_events(events).order_by("user_id")
    n = int(events.count().to_pyarrow().as_py())
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir(parents=True)
    try:
        arrays = {c: np.lib.format.open_memmap(tmp / f"{c}.npy", mode="w+", dtype=DTYPES[c], shape=(n,))
                  for c in COLUMNS}
        users: list[np.ndarray] = []
        starts: list[np.ndarray] = []
        last_user: str | None = None
        pos = 0
        for batch in _batches(ordered, batch_rows):
            if batch.num_rows == 0:
                continue
            frame = _frame(batch)
            part = EventArrays.from_frame(frame)
            end = pos + len(part)
            for c in COLUMNS:
                arrays[c][pos:end] = getattr(part, c)
            ids = frame["user_id"].to_numpy(dtype=object)
            change = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
            if last_user is not None and ids[0] == last_user:
                change = change[1:]  # the user continues from the previous batch
            users.append(ids[change])
            starts.append(change + pos)
            last_user = ids[-1]
            pos = end
            if progress:
                progress(pos, n)
        if pos != n:
            raise RuntimeError(f"the event source changed while the history was written ({pos} of {n} rows)")
        for arr in arrays.values():
            arr.flush()
        del arrays
        user_ids = np.concatenate(users) if users else np.empty(0, dtype=object)
        offsets = np.append(np.concatenate(starts) if starts else np.empty(0, dtype=np.int64), n).astype(np.int64)
        np.save(tmp / "users.npy", user_ids.astype(str) if len(user_ids) else np.empty(0, dtype="U1"))
        np.save(tmp / "offsets.npy", offsets)
        meta = {"events": n, "users": len(user_ids), "has_item": has_item, "has_amount": has_amount, **extra}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return HistoryInfo(out_dir, n, len(user_ids), has_item, has_amount, extra)


def _batches(expr: ibis.Table, rows: int) -> Iterator[pa.RecordBatch]:
    """The rows of ``expr`` as Arrow batches of about ``rows`` rows, streamed (DuckDB) or in one piece."""
    con = expr._find_backend(use_default=True)
    if getattr(con, "name", None) == "duckdb":
        yield from con._to_duckdb_relation(expr).to_arrow_reader(rows)
    else:
        yield from con.to_pyarrow(expr).to_batches(max_chunksize=rows)


def _frame(batch: pa.RecordBatch) -> pd.DataFrame:
    """A canonical Arrow batch as a frame with the columns :meth:`EventArrays.from_frame` reads."""
    return batch.to_pandas()


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move ``tmp`` to ``out_dir``; an existing ``out_dir`` is swapped out first and removed after."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class History:
    """A written history, memory-mapped read-only. Thread-safe for reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta = json.loads((self.path / META_FILE).read_text())
        self.meta: dict[str, Any] = meta
        self.has_item = bool(meta["has_item"])
        self.has_amount = bool(meta["has_amount"])
        self._users = np.load(self.path / "users.npy", mmap_mode="r")
        self._offsets = np.load(self.path / "offsets.npy", mmap_mode="r")
        self._cols = {c: np.load(self.path / f"{c}.npy", mmap_mode="r") for c in COLUMNS}

    def __len__(self) -> int:
        return len(self._users)

    def events(self, user_id: str) -> EventArrays:
        """The user's events (empty when the history has none of theirs), copied out of the maps."""
        i = int(np.searchsorted(self._users, user_id))
        if i >= len(self._users) or self._users[i] != user_id:
            return EventArrays.empty()
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return EventArrays(*(np.array(self._cols[c][lo:hi]) for c in COLUMNS))
