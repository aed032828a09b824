"""The per-user event history a lookup rescores from: every event of the batch's source, grouped by user.

A history is a directory of memory-mapped numpy arrays (one per :data:`features.online.arrays.COLUMNS`, events
grouped by user), the sorted user ids with their offsets, and ``meta.json``. Opening it maps the files without
reading them; :meth:`History.events` finds a user by binary search and slices its rows (microseconds). It is
the exact per-user state of :mod:`features.online.compute`: features at any cutoff come from these events plus
those ingested after the history was built, never from a summary that would lose the sub-day times the
day-bucket features need.

:func:`write_history` streams the source in Arrow batches (bounded memory) and writes into a temporary
directory that is renamed into place, so a reader never sees a half-written history. :func:`extend_history`
makes the next night's history from the last one plus the new events only: the base's files are hard-linked, the
new events become a segment under ``deltas/``, and a user's events are those of every segment (the feature
execution does not depend on their order).
"""

from __future__ import annotations

import json
import os
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
DELTAS_DIR = "deltas"
DELTAS_KEY = "deltas"
"""Metadata: the segments :func:`extend_history` added, in order (``dir`` relative to the history, ``events``)."""
Progress = Callable[[int, int | None], None]


def read_meta(path: Path) -> dict[str, Any]:
    """The metadata of the history at ``path`` (``events``, ``users``, ``has_item``, ``has_amount``, the segments
    under :data:`DELTAS_KEY` and the writer's extras). Raises OSError when it cannot be read, ValueError when it is
    not JSON."""
    return json.loads((Path(path) / META_FILE).read_text())


class HistoryError(ValueError):
    """A history cannot be extended with the given events (write it whole instead)."""


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
    out_dir = Path(out_dir)
    tmp = _partial_dir(out_dir)
    try:
        n, users = _write_segment(events, tmp, batch_rows, progress)
        meta = {"events": n, "users": len(users), "has_item": has_item, "has_amount": has_amount, **extra}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return HistoryInfo(out_dir, n, len(users), has_item, has_amount, extra)


def extend_history(
    base: Path, events: ibis.Table | None, out_dir: Path, *, batch_rows: int = 1_000_000,
    progress: Progress | None = None, **extra: Any,
) -> HistoryInfo:
    """Write at ``out_dir`` (replaced whole) the history ``base`` plus every event of ``events``, reading only those.

    The base's files are hard-linked (copied where the file system cannot link), so ``base`` may be removed
    afterwards; the new events become one more segment under ``deltas/`` that :meth:`History.events` reads after
    the base's (none when ``events`` is None: only the metadata changes). ``extra`` updates the base's metadata.
    Raises :class:`HistoryError` when ``events`` lacks a column the base has (or has one it lacks): rewrite the
    history whole then.
    """
    base = Path(base)
    meta = read_meta(base)
    if events is not None:
        schema = events.schema()
        if ("item_id" in schema, "amount" in schema) != (bool(meta["has_item"]), bool(meta["has_amount"])):
            raise HistoryError(f"the new events' columns {list(schema)} differ from those of the history at {base}")
    out_dir = Path(out_dir)
    tmp = _partial_dir(out_dir)
    try:
        _link_tree(base, tmp)
        deltas = list(meta.get(DELTAS_KEY, []))
        meta.update(extra)
        if events is not None:
            rel = f"{DELTAS_DIR}/{len(deltas) + 1:04d}"
            (tmp / rel).mkdir(parents=True)
            n, users = _write_segment(events, tmp / rel, batch_rows, progress)
            seen = np.zeros(len(users), dtype=bool)
            for seg in [_Segment(tmp)] + [_Segment(tmp / d["dir"]) for d in deltas]:
                seen |= seg.holds(users)
            deltas.append({"dir": rel, "events": n})
            meta.update(events=int(meta["events"]) + n, users=int(meta["users"]) + int((~seen).sum()))
        meta[DELTAS_KEY] = deltas
        (tmp / META_FILE).unlink()
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info_extra = {k: v for k, v in meta.items() if k not in ("events", "users", "has_item", "has_amount")}
    return HistoryInfo(out_dir, int(meta["events"]), int(meta["users"]), bool(meta["has_item"]),
                       bool(meta["has_amount"]), info_extra)


def _partial_dir(out_dir: Path) -> Path:
    tmp = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.partial")
    tmp.mkdir(parents=True)
    return tmp


def _link_tree(src: Path, dest: Path) -> None:
    """Hard-link every file below ``src`` to the same place below ``dest`` (a copy where linking fails)."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def _write_segment(
    events: ibis.Table, out: Path, batch_rows: int, progress: Progress | None
) -> tuple[int, np.ndarray]:
    """Write the events of ``events`` into the existing directory ``out``, grouped by user: one ``.npy`` per
    column, ``users.npy`` (sorted ids) and ``offsets.npy``. Returns (events written, the user ids)."""
    ordered = canonical_events(events).order_by("user_id")
    n = int(events.count().to_pyarrow().as_py())
    arrays = {c: np.lib.format.open_memmap(out / f"{c}.npy", mode="w+", dtype=DTYPES[c], shape=(n,))
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
    np.save(out / "users.npy", user_ids.astype(str) if len(user_ids) else np.empty(0, dtype="U1"))
    np.save(out / "offsets.npy", offsets)
    return n, user_ids.astype(str)


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


class _Segment:
    """One written segment of a history (the base directory or one under ``deltas/``), memory-mapped read-only."""

    def __init__(self, path: Path) -> None:
        self.users = np.load(path / "users.npy", mmap_mode="r")
        self._offsets = np.load(path / "offsets.npy", mmap_mode="r")
        self._cols = {c: np.load(path / f"{c}.npy", mmap_mode="r") for c in COLUMNS}

    def holds(self, user_ids: np.ndarray) -> np.ndarray:
        """Whether each of ``user_ids`` has events in this segment (boolean, same shape)."""
        if not len(self.users) or not len(user_ids):
            return np.zeros(len(user_ids), dtype=bool)
        i = np.minimum(np.searchsorted(self.users, user_ids), len(self.users) - 1)
        return np.asarray(self.users[i] == user_ids)

    def events(self, user_id: str) -> EventArrays | None:
        i = int(np.searchsorted(self.users, user_id))
        if i >= len(self.users) or self.users[i] != user_id:
            return None
        lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
        return EventArrays(*(np.array(self._cols[c][lo:hi]) for c in COLUMNS))


class History:
    """A written history, memory-mapped read-only: the base segment and the ``deltas/`` ones
    :func:`extend_history` added. Thread-safe for reads."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        meta = read_meta(self.path)
        self.meta: dict[str, Any] = meta
        self.has_item = bool(meta["has_item"])
        self.has_amount = bool(meta["has_amount"])
        self._segments = [_Segment(self.path)] + [_Segment(self.path / d["dir"]) for d in meta.get(DELTAS_KEY, [])]

    def __len__(self) -> int:
        """Distinct users over every segment."""
        return int(self.meta["users"])

    @property
    def deltas(self) -> int:
        """Segments added by :func:`extend_history` since the history was last written whole."""
        return len(self._segments) - 1

    def events(self, user_id: str) -> EventArrays:
        """The user's events of every segment (empty when the history has none of theirs), copied out of the maps."""
        return EventArrays.concat([p for p in (s.events(user_id) for s in self._segments) if p is not None])
