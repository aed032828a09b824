"""Three more pieces of a nightly feature build from stored state, for ``bench_rollup_floor.py``.

Each piece has its untimed state (built in DuckDB from the events before the night, with days counted back from the
next cutoff: day ``k`` holds ``t - (k + 1) days <= ts < t - k days``), its timed nightly step in numpy, and is
checked against the full build's columns by the caller:

- :func:`keep_pairs`: tonight's (user, key) pair state: the new day's pairs at day 0, the others kept with their
  last-seen day, those past the window dropped (the upkeep of the distinct-count and comparison states);
- :func:`last_seen` and :func:`merge_runs`: the same state kept log-structured: each night's new pairs stored as a
  sorted run, probed with the base, and folded into the base every few nights;
- :func:`comparison_maxima`: ``max_items_per_category_{3,7}d`` from the (user, category, item) views of 7 days;
- :func:`gap_medians`: ``active_gap_median_days`` after adding the gap to the new day of each user active on it
  (recomputed for those users only).
"""

from __future__ import annotations

import numpy as np

NEVER = np.iinfo(np.int16).max
"""The last-seen day of a key never seen."""
ITEM_BITS, CATEGORY_BITS = 20, 12
"""Bits of the item and category codes in a (user, category, item) key: user << 32 | category << 20 | item."""


def keep_pairs(keys: np.ndarray, days: np.ndarray, new: np.ndarray, window: int,
               new_days: np.ndarray | int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tonight's pairs: ``keys`` (sorted int64) with their last-seen ``days`` (int16, counted back from tonight's
    cutoff), the sorted ``new`` keys (unique, seen more recently than any of ``keys``) set to ``new_days`` (the new
    day, 0, by default) and added when unseen, and those of day ``window`` or older dropped. Returns (keys, days),
    keys sorted."""
    new_days = np.broadcast_to(np.asarray(new_days, dtype=days.dtype), new.shape)
    at = np.searchsorted(keys, new)
    hit = _found(keys, new, at)
    days = days.copy()
    days[at[hit]] = new_days[hit]
    keys = np.insert(keys, at[~hit], new[~hit])
    days = np.insert(days, at[~hit], new_days[~hit])
    keep = days < window
    return keys[keep], days[keep]


def last_seen(base: tuple[np.ndarray, np.ndarray], runs: list[tuple[int, np.ndarray]], new: np.ndarray) -> np.ndarray:
    """The most recent day (int16; ``NEVER`` when none) each of the ``new`` keys was seen in a log-structured pair
    state: a ``base`` (sorted keys, last-seen days) and ``runs`` (day, sorted keys of that day) added since."""
    seen = np.full(len(new), NEVER, dtype=np.int16)
    for keys, days in (base, *((k, d) for d, k in runs)):
        at = np.searchsorted(keys, new)
        hit = _found(keys, new, at)
        day = days[at[hit]] if isinstance(days, np.ndarray) else days
        seen[hit] = np.minimum(seen[hit], day)
    return seen


def merge_runs(base: tuple[np.ndarray, np.ndarray], runs: list[tuple[int, np.ndarray]], window: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """A log-structured pair state folded into one sorted state (see :func:`keep_pairs`): each key at the most
    recent day it was seen, those of day ``window`` or older dropped."""
    keys = np.concatenate([k for _, k in runs])
    days = np.concatenate([np.full(len(k), d, dtype=base[1].dtype) for d, k in runs])
    order = np.lexsort((days, keys))
    keys, days = keys[order], days[order]
    first = np.r_[True, keys[1:] != keys[:-1]]
    return keep_pairs(*base, keys[first], window, days[first])


def _found(keys: np.ndarray, new: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Which ``new`` keys are in the sorted ``keys`` (``at``: their ``searchsorted`` positions)."""
    inside = at < len(keys)
    hit = np.zeros(len(new), dtype=bool)
    hit[inside] = keys[at[inside]] == new[inside]
    return hit


def comparison_maxima(keys: np.ndarray, days: np.ndarray, windows: tuple[int, ...], n_users: int
                      ) -> dict[int, np.ndarray]:
    """Per window ``w`` (days): for each user code, the most distinct items viewed in one category within ``w``
    days (int64, shape (n_users,)), from the sorted (user, category, item) view keys and their last-seen days."""
    out = {}
    for w in windows:
        cell = keys[days < w] >> ITEM_BITS  # (user, category), sorted
        if not len(cell):
            out[w] = np.zeros(n_users, dtype=np.int64)
            continue
        starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
        items = np.diff(np.r_[starts, len(cell)])
        user = cell[starts] >> CATEGORY_BITS
        first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
        most = np.zeros(n_users, dtype=np.int64)
        most[user[first]] = np.maximum.reduceat(items, first)
        out[w] = most
    return out


def gap_medians(gaps: np.ndarray, count: np.ndarray, newest: np.ndarray, active_today: np.ndarray,
                median: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Add tonight's gaps; return (sorted gap keys, gaps per user, median gap per user code, NaN below one gap).

    ``gaps``: sorted keys ``user << 16 | gap`` (whole days between consecutive active days, all history);
    ``count``: the gaps of each user code; ``newest``: each user's most recent active day before tonight (days
    back from tonight's cutoff, -1 for none); ``active_today``: the user codes active on the new day (day 0), each
    once; ``median``: last night's medians, kept for the users without a new gap."""
    before = newest[active_today]
    users = np.sort(active_today[before > 0])
    added = users.astype(np.int64) << 16 | newest[users]
    gaps = np.insert(gaps, np.searchsorted(gaps, added), added)
    count = count.copy()
    count[users] += 1
    start = np.cumsum(count) - count
    n = count[users]
    lo, hi = start[users] + (n - 1) // 2, start[users] + n // 2
    median = median.copy()
    median[users] = ((gaps[lo] & 0xFFFF) + (gaps[hi] & 0xFFFF)) / 2
    return gaps, count, median
