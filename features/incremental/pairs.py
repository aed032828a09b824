"""Pair states: (user, key) pairs with the day each was last seen, as sorted int64 keys.

A pair state is kept in two sorted runs with no key in both: the ``main`` run and a small ``fresh`` run that takes
the pairs first seen since the two were last merged (:func:`upsert_runs`, :func:`merge_runs`). A night then
inserts into the fresh run only and updates the main run's values in place, instead of copying the whole state.

A pair key is ``user code << 32 | key code`` (both below 2**31 and 2**32). Days are absolute day numbers of the
state (:mod:`features.incremental.state`): a pair is inside a ``w``-day window at night ``k`` (cutoff
``origin + k days``) when ``k - 1 - day < w``. Sorted keys are probed with ``searchsorted``; on 100M events the
measured cost of keeping two 30-day states of ~39M pairs is in ``benchmarks/README.md`` ("Incremental feature
build").
"""

from __future__ import annotations

import numpy as np

KEY_BITS = 32


def pair_keys(users: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Keys of (user code, key code) pairs, int64 of shape (n,)."""
    return users.astype(np.int64) << KEY_BITS | codes.astype(np.int64)


def key_users(keys: np.ndarray) -> np.ndarray:
    """The user codes of pair keys (int64)."""
    return keys >> KEY_BITS


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """The distinct ``values``, sorted: ``np.unique`` by a sort (numpy 2.4's hash-based ``np.unique`` took 0.63 s on
    1M random int64 where sorting takes 0.013 s)."""
    out = np.sort(values)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out


def unique_last(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (sorted) with the largest of their ``values``."""
    if not len(keys):
        return keys.astype(np.int64), values
    order = np.lexsort((values, keys))
    keys, values = keys[order], values[order]
    last = np.r_[keys[1:] != keys[:-1], True]
    return keys[last], values[last]


def upsert(keys: np.ndarray, values: tuple[np.ndarray, ...], new: np.ndarray, new_values: tuple[np.ndarray, ...]
           ) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray, np.ndarray]:
    """``keys`` (sorted, unique) with their aligned ``values`` arrays, the sorted unique ``new`` keys set to
    ``new_values`` (replacing the stored values of keys already there, inserted otherwise).

    Returns (keys, values, found, previous): ``found[i]`` says whether ``new[i]`` was already stored and
    ``previous`` holds the first of its old values (unset where not found)."""
    at, found = lookup(keys, new)
    previous = np.zeros(len(new), dtype=values[0].dtype)
    previous[found] = values[0][at[found]]
    gaps = at[~found]
    moved = at[found] + np.searchsorted(gaps, at[found], "right")  # where the found keys are after the inserts
    out = []
    for old, fresh in zip(values, new_values, strict=True):
        merged = np.insert(old, gaps, fresh[~found])
        merged[moved] = fresh[found]
        out.append(merged)
    return np.insert(keys, gaps, new[~found]), tuple(out), found, previous


Run = tuple[np.ndarray, tuple[np.ndarray, ...]]
"""Sorted unique keys with their aligned value arrays."""


def upsert_runs(main: Run, fresh: Run, new: np.ndarray, new_values: tuple[np.ndarray, ...]
                ) -> tuple[Run, Run, np.ndarray, np.ndarray]:
    """:func:`upsert` over two runs with no key in both: keys already in ``main`` get the new values in place (the
    arrays are copied first when read-only), the others go to ``fresh``. Returns (main, fresh, found, previous) as
    :func:`upsert` does."""
    keys, values = main
    at, in_main = lookup(keys, new)
    hit = at[in_main]
    previous = np.zeros(len(new), dtype=values[0].dtype)
    previous[in_main] = values[0][hit]
    if len(hit):
        values = tuple(v if v.flags.writeable else v.copy() for v in values)
        for old, value in zip(values, new_values, strict=True):
            old[hit] = value[in_main]
    rest = ~in_main
    fresh_keys, fresh_values, in_fresh, before = upsert(*fresh, new[rest], tuple(v[rest] for v in new_values))
    found = in_main.copy()
    found[rest] = in_fresh
    previous[rest] = np.where(in_fresh, before, previous[rest])
    return (keys, values), (fresh_keys, fresh_values), found, previous


def merge_runs(main: Run, fresh: Run, keep_main: np.ndarray | None = None, keep_fresh: np.ndarray | None = None
               ) -> Run:
    """One sorted run of the keys of both (disjoint) runs, without the entries ``keep_*`` marks False."""
    if keep_main is not None:
        main = (main[0][keep_main], tuple(v[keep_main] for v in main[1]))
    if keep_fresh is not None:
        fresh = (fresh[0][keep_fresh], tuple(v[keep_fresh] for v in fresh[1]))
    at = np.searchsorted(main[0], fresh[0])
    return np.insert(main[0], at, fresh[0]), tuple(np.insert(m, at, f) for m, f in zip(main[1], fresh[1], strict=True))


def empty_run(like: Run) -> Run:
    """A run with no keys and values of ``like``'s dtypes."""
    return like[0][:0].copy(), tuple(v[:0].copy() for v in like[1])


def lookup(keys: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the ``new`` keys in the sorted ``keys`` and whether each is there."""
    at = np.searchsorted(keys, new)
    found = np.zeros(len(new), dtype=bool)
    inside = at < len(keys)
    found[inside] = keys[at[inside]] == new[inside]
    return at, found


def per_user_max_distinct(users: np.ndarray, groups: np.ndarray, n_users: int) -> np.ndarray:
    """For each user code, the most entries in one of its groups (int64 of shape (n_users,), 0 without entries):
    ``users`` and ``groups`` align, one entry per distinct (user, group, member)."""
    out = np.zeros(n_users, dtype=np.int64)
    if not len(users):
        return out
    cell = pair_keys(users, groups)
    cell.sort()
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    sizes = np.diff(np.r_[starts, len(cell)])
    owner = key_users(cell[starts])
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    out[owner[first]] = np.maximum.reduceat(sizes, first)
    return out


def per_user_max_distinct_windows(users: np.ndarray, groups: np.ndarray, since: np.ndarray,
                                  windows: tuple[int, ...], n_users: int) -> dict[int, np.ndarray]:
    """:func:`per_user_max_distinct` for each window ``w`` of ``windows`` at once, counting the entries with
    ``since <= w`` (``since``: 1 to ``max(windows)``, aligned with ``users`` and ``groups``). The entries are sorted
    once, packed as ``user | group | since`` in one int64 when the three fit; else one window at a time."""
    if not len(users):
        return {w: np.zeros(n_users, np.int64) for w in windows}
    group_bits, since_bits = int(groups.max()).bit_length(), max(windows).bit_length()
    if int(n_users).bit_length() + group_bits + since_bits > 63:
        return {w: per_user_max_distinct(users[since <= w], groups[since <= w], n_users) for w in windows}
    packed = (users.astype(np.int64) << (group_bits + since_bits)) | (groups.astype(np.int64) << since_bits) | since
    packed.sort()
    cell = packed >> since_bits
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    owner = cell[starts] >> group_bits
    first = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    days = packed & ((1 << since_bits) - 1)
    out = {}
    for w in windows:
        sizes = np.add.reduceat((days <= w).astype(np.int64), starts)
        out[w] = np.zeros(n_users, np.int64)
        out[w][owner[first]] = np.maximum.reduceat(sizes, first)
    return out
