"""Bring a :class:`FeatureState` to a cutoff: from nothing (a replay of every day) or from the last night's state.

Both take canonical events (:mod:`features.events.schema`, a pandas frame) and move the state one day at a time
with :meth:`FeatureState.advance`, so the state a night starts from and the one a replay gives are the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from features.incremental.bootstrap import state_at
from features.incremental.rollup import DAY_US
from features.incremental.state import FeatureState, IncrementalUnsupported
from features.online.arrays import EventArrays
from features.online.compute import as_of_us
from features.spec.definition import FeatureSpec


def state_from_events(events: pd.DataFrame, as_of: datetime, spec: FeatureSpec | None = None, *,
                      replay: bool = False) -> FeatureState:
    """The state at ``as_of`` of the events before it (events at or after ``as_of`` are ignored, as the feature
    table ignores them): computed at once (:func:`features.incremental.bootstrap.state_at`), or with ``replay``
    moved on day by day from the first event's day, as the nights would have."""
    spec = spec or FeatureSpec()
    cutoff = as_of_us(as_of)
    user_ids, ev = _arrays(events)
    flags = {"has_item": "item_id" in events, "has_amount": "amount" in events}
    if not replay:
        return state_at([(user_ids, ev)], cutoff, spec, **flags)
    keep = ev.ts_us < cutoff
    user_ids, ev = user_ids[keep], ev.take(keep)
    days = 0 if not len(ev) else int((cutoff - int(ev.ts_us.min()) + DAY_US - 1) // DAY_US)
    state = FeatureState(spec, cutoff - days * DAY_US, **flags)
    return _advance(state, user_ids, ev, cutoff)


def state_from_files(files: Sequence[Path], as_of: datetime, spec: FeatureSpec | None = None, *,
                     batch_rows: int = 2_000_000, spill: Path | None = None) -> FeatureState:
    """The state at ``as_of`` of the canonical events in Parquet ``files``, read ``batch_rows`` rows at a time
    (``spill``: see :func:`features.incremental.bootstrap.state_at`)."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(files[0]).names) if files else set()

    def chunks():
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
                yield _arrays(batch.to_pandas())

    return state_at(chunks(), as_of_us(as_of), spec or FeatureSpec(), has_item="item_id" in names,
                    has_amount="amount" in names, spill=spill)


def advance_to(state: FeatureState, events: pd.DataFrame | None, as_of: datetime) -> FeatureState:
    """Move ``state`` on to ``as_of`` (a whole number of days after its cutoff) with the events between the two
    (None: there were none).

    Raises :class:`IncrementalUnsupported` when ``as_of`` is not whole days ahead or an event falls before the
    state's cutoff (a late event: only a build from all events places it)."""
    cutoff = as_of_us(as_of)
    if cutoff < state.as_of_us or (cutoff - state.as_of_us) % DAY_US:
        raise IncrementalUnsupported("the new cutoff is not a whole number of days after the kept state's")
    user_ids, ev = _arrays(events) if events is not None else (np.zeros(0, object), EventArrays.empty())
    keep = ev.ts_us < cutoff
    if (ev.ts_us[keep] < state.as_of_us).any():
        raise IncrementalUnsupported("events before the kept state's cutoff")
    return _advance(state, user_ids[keep], ev.take(keep), cutoff)


def _arrays(events: pd.DataFrame) -> tuple[np.ndarray, EventArrays]:
    """User ids as text (as the feature table keys them) and the events as arrays."""
    ids = events["user_id"]
    text = ids.astype("str").to_numpy(dtype=object)
    return text, EventArrays.from_frame(events)


def _advance(state: FeatureState, user_ids: np.ndarray, ev: EventArrays, cutoff: int) -> FeatureState:
    """Advance night by night up to ``cutoff``, each night with its day's events."""
    order = np.argsort(ev.ts_us, kind="stable")
    user_ids, ev = user_ids[order], ev.take(order)
    nights = (cutoff - state.as_of_us) // DAY_US
    bounds = np.searchsorted(ev.ts_us, state.as_of_us + DAY_US * np.arange(nights + 1))
    for night in range(nights):
        lo, hi = bounds[night], bounds[night + 1]
        if night:
            state.compact()
        state.advance(user_ids[lo:hi], ev.take(slice(lo, hi)))
    return state
