"""Which event files a history was written from, so the next batch's history reads only the files added since.

The nightly batch reads a growing source: the validated events plus one ``ingested-*.parquet`` part per export of
the event log, each written once and never changed. A history records its source files (path, size and
modification time in nanoseconds and inode, see :func:`manifest`). When every one of them is still there unchanged,
:func:`keep_history` extends that history with the new files only (:func:`features.online.history.extend_history`);
when any was changed or removed, or the history already has ``max_deltas`` added segments, it writes the history
whole. Both give every user the same events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ibis

from features.build.builder import source_files
from features.online.history import (
    DELTAS_KEY,
    META_FILE,
    HistoryInfo,
    Progress,
    extend_history,
    read_meta,
    write_history,
)
from features.spec.definition import FeatureInputError

SOURCES_KEY = "sources"
"""History metadata: the :func:`manifest` of the files the history holds every event of."""


def manifest(files: Sequence[Path]) -> list[dict[str, Any]]:
    """``[{"path", "size", "mtime_ns", "ino"}]`` of ``files`` (absolute paths, sorted): what :func:`added_files`
    compares. A file replaced by a rename has a new inode even when its size and time are kept."""
    out = []
    for path in sorted(Path(f).resolve() for f in files):
        st = path.stat()
        out.append({"path": str(path), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "ino": int(st.st_ino)})
    return out


def added_files(previous: Sequence[dict[str, Any]], current: Sequence[dict[str, Any]]) -> list[str] | None:
    """The paths of ``current`` not in ``previous`` (both :func:`manifest` lists), or None when a file of
    ``previous`` is missing from ``current`` or differs in size, modification time or inode (the history must
    then be written whole)."""
    now = {f["path"]: _identity(f) for f in current}
    for f in previous:
        if now.get(f["path"]) != _identity(f):
            return None
    before = {f["path"] for f in previous}
    return [f["path"] for f in current if f["path"] not in before]


@dataclass(frozen=True)
class KeptHistory:
    """What :func:`keep_history` did: ``info`` of the written history, ``base`` (the history it extended, None when
    written whole), ``added_files`` and ``added_events`` (what it read: every file and event when written whole)."""

    info: HistoryInfo
    base: Path | None
    added_files: int
    added_events: int


def keep_history(
    source: Path | Sequence[Path], out_dir: Path, *, con: ibis.BaseBackend, max_deltas: int = 7,
    progress: Progress | None = None, **extra: Any,
) -> KeptHistory:
    """Write the history of every event of the Parquet ``source`` at ``out_dir``: a file, a directory or a glob, or
    the list of its files (as listed when the batch started: the history then holds exactly those, whatever is
    added meanwhile).

    Looks among the sibling histories of ``out_dir`` for one whose recorded files are all still in ``source``
    unchanged; the one with the most events is extended with the other files (:func:`extend_history`) unless it
    already has ``max_deltas`` added segments. Otherwise, or when the extension fails (the added files' columns
    differ from the base's, the base was removed or damaged meanwhile), the history is written whole. ``extra``
    (JSON-ready) goes into the metadata.
    """
    files = source_files(source) if isinstance(source, (str, Path)) else list(source)
    if not files:
        raise FeatureInputError("no event file to keep a history of")
    current = manifest(files)
    base, added = _extendable(Path(out_dir), current, max_deltas)
    extra = {**extra, SOURCES_KEY: current}
    if base is not None and added is not None:
        before = _events(base)
        new_events = con.read_parquet(added) if added else None
        try:
            info = extend_history(base, new_events, out_dir, progress=progress, **extra)
            return KeptHistory(info, base, len(added), info.events - before)
        except (OSError, ValueError):  # a HistoryError (other columns), or the base removed or damaged meanwhile
            pass  # write the whole source
    info = write_history(con.read_parquet([f["path"] for f in current]), out_dir, progress=progress, **extra)
    return KeptHistory(info, None, len(current), info.events)


def _extendable(out_dir: Path, current: list[dict[str, Any]], max_deltas: int) -> tuple[Path | None, list[str] | None]:
    """The sibling history with the most events that ``current`` extends and the files it lacks; (None, None) when
    there is none or it already has ``max_deltas`` added segments."""
    best: tuple[int, Path, list[str], int] | None = None
    root = out_dir.parent
    if max_deltas < 1 or not root.is_dir():
        return None, None
    for path in root.iterdir():
        if path.name.startswith(".") or not (path / META_FILE).is_file():
            continue
        try:
            meta = read_meta(path)
            events, previous, deltas = int(meta["events"]), meta.get(SOURCES_KEY), len(meta.get(DELTAS_KEY, []))
            added = added_files(previous, current) if isinstance(previous, list) else None
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a history this version wrote: never a base
        if added is not None and (best is None or events > best[0]):
            best = (events, path, added, deltas)
    if best is None or best[3] >= max_deltas:
        return None, None
    return best[1], best[2]


def _identity(entry: dict[str, Any]) -> tuple[Any, ...]:
    return entry["size"], entry["mtime_ns"], entry.get("ino")


def _events(history: Path) -> int:
    return int(read_meta(history)["events"])
