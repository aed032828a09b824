"""The nightly feature build from the kept state: the event files added since last night, moved on by whole days.

A kept state records the event files it holds (:func:`features.online.sources.manifest`: path, size, modification
time, inode) and which of them hold events at or after its cutoff (``carry``: read again the next night for those
events only). :func:`kept_features` moves it on to tonight's cutoff with the added files' events when:

- the state is there, readable and of tonight's spec;
- every recorded file is still there unchanged (the validated events were not rewritten);
- tonight's cutoff is a whole number of days after the state's;
- no added event is older than the state's cutoff (a late event: only a build from all events places it), and the
  added files have the columns the state was built with.

Otherwise it says why, and the caller builds the table from all events (and a new state with :func:`start_state`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.incremental.build import advance_to, state_from_files
from features.incremental.rollup import DAY_US
from features.incremental.state import FeatureState, IncrementalUnsupported
from features.incremental.store import StateError, load_state, read_meta, save_state
from features.incremental.table import feature_frame
from features.online.arrays import ts_micros
from features.online.compute import as_of_us
from features.online.sources import added_files, manifest
from features.spec.definition import FeatureSpec

SOURCES_KEY, CARRY_KEY = "sources", "carry"


@dataclass(frozen=True)
class KeptFeatures:
    """A feature table moved on from the kept state: ``table`` (as ``build_features`` gives it), the moved
    ``state`` (to keep with :func:`keep_state`), ``nights`` moved, ``events`` taken in, from ``files`` added since
    and ``carried`` files read again for their events after the last cutoff."""

    table: pd.DataFrame
    state: FeatureState
    nights: int
    events: int
    files: int
    carried: int = 0


def kept_features(state_dir: Path, files: Sequence[Path], as_of: datetime, spec: FeatureSpec
                  ) -> KeptFeatures | str:
    """Tonight's feature table from the state kept in ``state_dir`` and the event ``files`` (all of tonight's
    source, as listed for the batch), or why it cannot be moved on (one line)."""
    try:
        state = load_state(state_dir, spec)
    except StateError as exc:
        return str(exc)
    extra = read_meta(state_dir).get("extra", {})
    before, cutoff = state.as_of_us, as_of_us(as_of)
    added = files_to_add(extra.get(SOURCES_KEY, []), files, before, cutoff)
    if isinstance(added, str):
        return added
    try:
        frames = [_read(Path(p), state) for p in added]
        carried = [_read(Path(p), state, since=before) for p in extra.get(CARRY_KEY, [])]
    except (OSError, pa.ArrowException) as exc:
        return f"an event file could not be read ({exc})"
    if any(isinstance(f, str) for f in frames + carried):
        return next(f for f in frames + carried if isinstance(f, str))
    events = pd.concat(frames + carried, ignore_index=True) if frames or carried else None
    try:
        advance_to(state, events, as_of)
    except IncrementalUnsupported as exc:
        return str(exc)
    n_events = 0 if events is None else int((ts_micros(events["ts"]) < cutoff).sum())
    return KeptFeatures(feature_frame(state), state, (cutoff - before) // DAY_US, n_events, len(added),
                        len(carried))


def files_to_add(sources: Sequence[dict], files: Sequence[Path], before_us: int, cutoff_us: int) -> list[str] | str:
    """The event ``files`` added since the kept state's ``sources`` (its manifest), when a state of cutoff
    ``before_us`` can be moved on to ``cutoff_us`` (UTC epoch microseconds) with them; else why not (one line)."""
    added = added_files(sources, manifest(files))
    if added is None:
        return "an event file the kept state holds was changed or removed since"
    if cutoff_us < before_us:
        return "the cutoff is before the kept state's"
    if (cutoff_us - before_us) % DAY_US:
        return "the cutoff is not a whole number of days after the kept state's"
    return added


def kept_cutoff(state_dir: Path) -> datetime | None:
    """The cutoff of the state kept in ``state_dir`` (UTC), None when there is none that can be read."""
    try:
        meta = read_meta(state_dir)
        us = int(meta["origin_us"]) + int(meta["night"]) * DAY_US
    except (StateError, KeyError, TypeError, ValueError):
        return None
    return datetime.fromtimestamp(us // 1_000_000, tz=UTC).replace(microsecond=us % 1_000_000)


def start_state(files: Sequence[Path], as_of: datetime, spec: FeatureSpec, state_dir: Path) -> None:
    """Keep in ``state_dir`` a state at ``as_of`` computed from all events of ``files`` (the first night, or after
    a fallback). Its day roll-ups go to a temporary folder beside ``state_dir`` while it is computed, and are
    linked into the kept state."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    spill = Path(tempfile.mkdtemp(prefix=f".{state_dir.name}.", suffix=".rollups", dir=state_dir.parent))
    try:
        keep_state(state_from_files(list(files), as_of, spec, spill=spill), state_dir, files)
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def keep_state(state: FeatureState, state_dir: Path, files: Sequence[Path]) -> None:
    """Keep ``state`` in ``state_dir`` as the state of the event ``files``, noting those with events at or after
    its cutoff (their later events are read again the next night)."""
    save_state(state, state_dir, extra={SOURCES_KEY: manifest(files), CARRY_KEY: carried_files(files, state.as_of_us)})


def carried_files(files: Sequence[Path], cutoff_us: int) -> list[str]:
    """The ``files`` (absolute paths) with events at or after ``cutoff_us``: read again the next night for those."""
    return [str(Path(f).resolve()) for f in files if max_ts_us(Path(f)) >= cutoff_us]


def other_columns(path: Path, names: set[str] | list[str], has_item: bool, has_amount: bool) -> str | None:
    """Why the event file ``path`` with columns ``names`` does not fit a state built with (without) item and amount
    columns, None when it does."""
    if ("item_id" in names) != has_item or ("amount" in names) != has_amount:
        return f"{path.name} has other event columns than the kept state was built from"
    return None


def _read(path: Path, state: FeatureState, since: int | None = None) -> pd.DataFrame | str:
    """The canonical events of one file (those at or after ``since``, UTC epoch microseconds, when given), or why
    they do not fit the state (another set of columns)."""
    frame = pq.read_table(path).to_pandas()
    if reason := other_columns(path, list(frame.columns), state.has_item, state.has_amount):
        return reason
    if since is not None:
        frame = frame[ts_micros(frame["ts"]) >= since]
    return frame


def max_ts_us(path: Path) -> int:
    """The latest event time in a Parquet file (UTC epoch microseconds): from its row-group statistics when every
    row group has them, else read."""
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.names.index("ts") if "ts" in meta.schema.names else None
    stats = [meta.row_group(i).column(column).statistics for i in range(meta.num_row_groups)] if column is not None \
        else []
    if stats and all(s is not None and s.has_min_max for s in stats):
        return int(ts_micros(pd.Series([s.max for s in stats])).max())
    ts = pq.read_table(path, columns=["ts"]).column("ts").to_pandas()
    return int(ts_micros(ts).max()) if len(ts) else np.iinfo(np.int64).min
