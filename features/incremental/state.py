"""The per-user state of the feature table at one cutoff, moved on by one day at a time.

Days are numbered from the state's ``origin`` (a cutoff, epoch microseconds): day ``d`` holds
``origin + d days <= ts < origin + (d + 1) days``. At night ``k`` the cutoff is ``as_of = origin + k days`` and day
``d`` is the day bucket ``k - 1 - d`` of :mod:`features.spec.definition`, so a ``w``-day window holds the days
``k - w .. k - 1``. :meth:`FeatureState.advance` takes the events of day ``k`` and moves to night ``k + 1``:

- windowed sums add the new day and drop the one day that leaves each window (its :class:`DayRollup`);
- decay sums lose ``multiplier / span`` per event still inside the span and the day that leaves it, and gain the
  new events' weights (whole-day spans only);
- all-history extremes, totals and the gaps between active (purchase) days take the new day's;
- the pair states (:mod:`features.incremental.pairs`) take the new day's pairs and drop those past their window.

:func:`features.incremental.table.feature_frame` turns a state into the feature table; it equals
:func:`features.build.builder.build_features` at the same cutoff (``tests/property/test_incremental_parity.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from features.incremental.pairs import (
    Run,
    empty_run,
    key_users,
    lookup,
    merge_runs,
    pair_keys,
    sorted_unique,
    unique_last,
    upsert,
    upsert_runs,
)
from features.incremental.rollup import DAY_US, N_CODES, DayRollup, layer_of, multipliers
from features.online.arrays import NULL_ID, EventArrays, id_codes
from features.spec.aggregate import _slots
from features.spec.definition import BEHAVIOR_CODES, RECENCY_BEHAVIORS, FeatureSpec
from features.spec.table import SECONDS_PER_DAY

NEVER_TS = np.iinfo(np.int64).min
"""``last`` timestamp of something that never happened."""
NO_TS = np.iinfo(np.int64).max
"""``first`` timestamp of something that never happened."""
NO_DAY = np.iinfo(np.int64).min
DEAD_DAY = np.iinfo(np.int32).min
"""Last-seen day of a pair that has left its window (kept in place until the state is compacted)."""
_BUY, _VIEW, _CART = BEHAVIOR_CODES["buy"], BEHAVIOR_CODES["view"], BEHAVIOR_CODES["cart"]
_GAP_BITS = 20
FRESH_SHARE = 0.125
"""A fresh run (pairs, day gaps) is merged into its main run (:meth:`FeatureState.compact`) once it holds more than
this share of the main run's entries: a night inserts into the small fresh run and leaves the main run's keys (and
their file) as they are."""


SPARE_USERS = 1 / 16
"""Per-user arrays are kept with room for this share more users (at least 64; spare rows of empty state, saved with
the state): a night's new users then take spare rows instead of every per-user array being copied into a larger
one."""


class IncrementalUnsupported(ValueError):
    """The spec or the events cannot be kept incrementally (a fractional decay span, events before the cutoff)."""


def spans(spec: FeatureSpec) -> tuple[int, int, int]:
    """The decay spans (days) of the browse, interest and purchase layers, which must be whole days."""
    out = (spec.decay_browse_days, spec.decay_interest_days, spec.decay_purchase_days)
    if any(float(s) != int(s) for s in out):
        raise IncrementalUnsupported(f"decay spans must be whole days to be kept incrementally, got {out}")
    return tuple(int(s) for s in out)  # type: ignore[return-value]


def windows(spec: FeatureSpec) -> dict[str, tuple[int, ...]]:
    """The windows (days) of each windowed sum: ``n`` events per behavior code, ``ad``, ``chan`` (channel
    counts), ``amount`` (known buy amounts), ``mult0..2`` (decay multipliers per layer, over its span),
    ``active`` and ``bought`` (active and purchase days)."""
    browse, interest, purchase = spans(spec)
    return {"n": _slots(spec), "ad": tuple(spec.ad_windows), "chan": (spec.channel_share_days,),
            "amount": (spec.purchase_days,), "mult0": (browse,), "mult1": (interest,), "mult2": (purchase,),
            "active": tuple(spec.active_day_windows), "bought": (spec.purchase_days,)}


def _rolled(r: DayRollup, group: str) -> np.ndarray:
    """The columns of a roll-up that the windowed sum ``group`` adds up, shape (m, c)."""
    if group.startswith("mult"):
        return r.mult[:, int(group[-1])][:, None]
    if group == "active":
        return np.ones((len(r.user), 1), dtype=np.int64)
    if group == "bought":
        return (r.n[:, _BUY] > 0).astype(np.int64)[:, None]
    value = getattr(r, group)
    return value if value.ndim == 2 else value[:, None]


def set_medians(median: np.ndarray, keys: np.ndarray, users: np.ndarray, fresh: np.ndarray | None = None,
                starts: np.ndarray | None = None) -> None:
    """``median[users]`` = each user's exact median gap, from the sorted gap keys ``user << 20 | gap`` in ``keys``
    and (a second sorted run) ``fresh`` (the mean of the two middle gaps for an even count). Only the users' own
    key ranges are read; ``starts``: where each user's keys start in ``keys`` (users past its end have none)."""
    users = users.astype(np.int64)
    if starts is None:
        lo, n = _key_range(keys, users)
    else:
        lo, n = np.zeros(len(users), np.int64), np.zeros(len(users), np.int64)
        known = users < len(starts) - 1
        lo[known] = starts[users[known]]
        n[known] = starts[users[known] + 1] - lo[known]
    mask = (1 << _GAP_BITS) - 1
    if fresh is None or not len(fresh):
        median[users] = ((keys[lo + (n - 1) // 2] & mask) + (keys[lo + n // 2] & mask)) / 2.0
        return
    fresh_lo, m = _key_range(fresh, users)
    total = n + m
    median[users] = (_union_rank(keys, lo, n, fresh, fresh_lo, m, (total - 1) // 2)
                     + _union_rank(keys, lo, n, fresh, fresh_lo, m, total // 2)) / 2.0


def _key_range(keys: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each user's keys ``user << 20 | gap`` in the sorted ``keys``."""
    lo = np.searchsorted(keys, users << _GAP_BITS)
    return lo, np.searchsorted(keys, (users + 1) << _GAP_BITS) - lo


def _union_rank(a: np.ndarray, a_lo: np.ndarray, n: np.ndarray, b: np.ndarray, b_lo: np.ndarray, m: np.ndarray,
                rank: np.ndarray) -> np.ndarray:
    """Per user, the gap of 0-based ``rank`` among the user's ``n`` keys of ``a`` (from ``a_lo``) and ``m`` keys of
    ``b`` (from ``b_lo``), both sorted. Of the ``rank + 1`` smallest, ``j`` come from ``b`` for some
    ``0 <= j <= m``; every such split bounds the gap from above by the largest it takes, and the true split attains
    it, so the gap is the least bound over the splits (``m`` is small: the gaps added since the runs merged)."""
    mask = (1 << _GAP_BITS) - 1
    a, b = (x if len(x) else np.zeros(1, np.int64) for x in (a, b))
    best = np.full(len(rank), np.iinfo(np.int64).max)
    for j in range(int(m.max(initial=0)) + 1):
        i = rank + 1 - j  # taken from a
        valid = (j <= m) & (i >= 0) & (i <= n)
        from_a = np.where(i >= 1, a[np.clip(a_lo + i - 1, 0, len(a) - 1)] & mask, -1)
        from_b = b[np.clip(b_lo + j - 1, 0, len(b) - 1)] & mask if j else np.full(len(rank), -1)
        best = np.where(valid, np.minimum(best, np.maximum(from_a, from_b)), best)
    return best


def _prefix_of(arr: np.ndarray, base: np.ndarray) -> bool:
    """Whether ``arr`` is the first rows of ``base`` (a view of them)."""
    return (arr.shape[1:] == base.shape[1:] and len(arr) <= len(base) and arr.dtype == base.dtype
            and arr.__array_interface__["data"][0] == base.__array_interface__["data"][0])


class Dictionary:
    """Dense codes (0, 1, ...) of int64 values in order of first appearance."""

    def __init__(self, values: np.ndarray | None = None) -> None:
        self.values = np.zeros(0, np.int64) if values is None else values
        self._index: pd.Index | None = None

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Codes of ``values`` (int64), new values appended."""
        if not len(self.values):  # the first values (a state computed at once): one pass
            codes, uniques = pd.factorize(values)
            self.values, self._index = np.asarray(uniques, dtype=np.int64), None
            return codes.astype(np.int64, copy=False)
        if self._index is None:
            self._index = pd.Index(self.values)
        codes = self._index.get_indexer(values)
        new = codes < 0
        if new.any():
            fresh = pd.unique(values[new])
            self.values = np.concatenate([self.values, fresh])
            self._index = pd.Index(self.values)
            codes[new] = self._index.get_indexer(values[new])
        return codes.astype(np.int64, copy=False)


class FeatureState:
    """The state at night ``night`` (cutoff ``origin_us + night days``) of a spec; see the module docstring.

    Per-user arrays have one row per user code (``user_ids[code]``, in order of first appearance)."""

    def __init__(self, spec: FeatureSpec, origin_us: int, *, has_item: bool = True, has_amount: bool = True) -> None:
        self.spec, self.origin_us, self.night = spec, int(origin_us), 0
        self.has_item, self.has_amount = has_item, has_amount
        self.windows = windows(spec)
        self.spans = spans(spec)
        self.user_ids = np.zeros(0, dtype=object)
        self.users = Dictionary()
        self.items, self.categories, self.views_dict = Dictionary(), Dictionary(), Dictionary()
        widths = {"n": N_CODES, "chan": 3}
        self.win = {(g, w): np.zeros((0, widths.get(g, 1)), np.float64 if g in ("amount",) or g.startswith("mult")
                                     else np.int32) for g, ws in self.windows.items() for w in ws}
        self.per_user: dict[str, np.ndarray] = {
            "last_ts": np.zeros((0, 7), np.int64),  # behaviors 0..4, any event, ad
            "first_ts": np.zeros((0, 6), np.int64),  # behaviors 0..4, any event
            "decay": np.zeros((0, 3), np.float64),
            "buy_count": np.zeros(0, np.int64), "amount_total": np.zeros(0), "amount_n": np.zeros(0, np.int64),
            "active_n": np.zeros(0, np.int64), "first_day": np.zeros(0, np.int64), "last_day": np.zeros(0, np.int64),
            "buy_days": np.zeros(0, np.int64), "last_buy_day": np.zeros(0, np.int64),
            "active_median": np.zeros(0), "buy_median": np.zeros(0),
            "target": np.zeros((0, 3), np.int64), "target_first_browse": np.zeros(0, np.int64),
            "distinct_item": np.zeros(0, np.int64), "distinct_category": np.zeros(0, np.int64),
        }
        self._fill = {"last_ts": NEVER_TS, "first_ts": NO_TS, "first_day": NO_DAY, "last_day": NO_DAY,
                      "last_buy_day": NO_DAY, "active_median": np.nan, "buy_median": np.nan,
                      "target_first_browse": NO_TS}
        self.gaps = {"active": np.zeros(0, np.int64), "buy": np.zeros(0, np.int64)}
        empty, days = np.zeros(0, np.int64), np.zeros(0, np.int32)
        self.pairs: dict[str, tuple[np.ndarray, tuple[np.ndarray, ...]]] = {  # keys, (last day or times, ...)
            "item": (empty, (days,)), "category": (empty, (days,)), "view": (empty, (days, empty)),
            "cart": (empty, (empty, empty)),
        }
        self.fresh: dict[str, Run] = {name: empty_run(self.pairs[name]) for name in ("item", "category", "view")}
        """The fresh runs of the pair states (:func:`features.incremental.pairs.upsert_runs`); carts have one."""
        self.fresh_gaps = {name: empty.copy() for name in self.gaps}
        self.bases: dict[tuple[str, object], np.ndarray] = {}
        """The arrays (with spare rows) whose first rows are the per-user arrays, keyed ``("w", key)`` for
        ``win`` and ``("p", name)`` for ``per_user``."""
        self.leaving: dict[str, tuple[int, np.ndarray]] = {}
        """Per pair state, (night, positions in the main run of the pairs that night retires unless seen again),
        found by :meth:`compact` so that the night need not scan the whole run."""
        self.gap_starts: dict[str, np.ndarray] = {}
        """Per gap run, where each user's keys start in the main run (``n + 1`` entries for the users coded when
        it was found by :meth:`compact`; later users have none there)."""
        self.kept_arrays: dict[str, tuple[np.ndarray, Path]] = {}
        """Arrays read (read-only) from a kept state's files, by name: saved again as links to those files."""
        self.rollups: dict[int, DayRollup | Path] = {}  # a Path: kept on disk, read when the day leaves a window
        self.order = np.zeros(0, np.int64)  # user codes in the order of their ids (the table's row order)
        self.target_codes = id_codes(list(spec.target_categories)) if spec.target_categories else None

    @property
    def as_of_us(self) -> int:
        """The cutoff of the state's night (UTC epoch microseconds)."""
        return self.origin_us + self.night * DAY_US

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def advance(self, user_ids: np.ndarray, ev: EventArrays) -> FeatureState:
        """Take the events of the state's next day (``as_of_us <= ts < as_of_us + 1 day``; ``user_ids`` aligned)
        and move to the next night. Raises :class:`IncrementalUnsupported` for an event outside that day."""
        start, k = self.as_of_us, self.night
        if len(ev) and (int(ev.ts_us.min()) < start or int(ev.ts_us.max()) >= start + DAY_US):
            raise IncrementalUnsupported("events outside the next day of the kept state")
        with ThreadPoolExecutor(1, thread_name_prefix="state-pairs") as pool:
            # the pairs (codes, new pairs, retired pairs) move on beside the users' codes and sums: they share no
            # array, and numpy's sorts, searches and copies run without the GIL, so the two use both cores
            codes = pool.submit(self._pair_codes, ev) if len(ev) else None
            if len(ev):
                user = self._user_codes(np.asarray(user_ids, dtype=object))
                day = DayRollup.of(user, ev.ts_us, ev.behavior, ev.channel, ev.amount, start, self.spec)
            else:
                user, day = np.zeros(0, np.int64), DayRollup.empty()
            pairs = pool.submit(self._pairs, user, ev, codes.result()) if codes is not None else None
            pruned = pool.submit(self._prune)  # after the pairs (one worker, in order)
            self._decay(user, ev, day)
            for (group, w), sums in self.win.items():
                if len(day.user):
                    sums[day.user] += _rolled(day, group)
                if (old := self.rollup(k - w)) is not None:
                    sums[old.user] -= _rolled(old, group)
            if len(ev):
                self._history(user, ev, day)
            if pairs is not None:
                pairs.result()
            pruned.result()
        self.rollups[k] = day
        self.night = k + 1
        oldest = self.night - max(max(ws) for ws in self.windows.values())
        for d in [d for d in self.rollups if d < oldest]:
            del self.rollups[d]
        return self

    def rollup(self, day: int) -> DayRollup | None:
        """The roll-up of ``day``, None for a day without one. One kept on disk is read memory-mapped each time
        (not held: the state saved next links its files instead of writing them again)."""
        got = self.rollups.get(day)
        return DayRollup.load(got) if isinstance(got, Path) else got

    # -------------------------------------------------------------------------------------------------- pieces
    def _user_codes(self, user_ids: np.ndarray) -> np.ndarray:
        """Codes of the day's users (ids as text); new users get a row of empty state."""
        if not len(user_ids):
            return np.zeros(0, np.int64)
        before = len(self.users.values)
        codes = self.users.encode(pd.util.hash_array(user_ids, categorize=True).view(np.int64))
        if len(self.users.values) > before:
            self.add_users(codes, user_ids, before)
        return codes

    def add_users(self, codes: np.ndarray, user_ids: np.ndarray, before: int) -> None:
        """Rows for the users coded from ``before`` on (``codes`` of ``user_ids``, aligned): ids, row order and
        empty state."""
        added = len(self.users.values) - before
        fresh = np.zeros(added, dtype=object)
        firsts = pd.Series(codes).drop_duplicates()
        firsts = firsts[firsts >= before]
        fresh[firsts.to_numpy() - before] = user_ids[firsts.index.to_numpy()]
        rank = np.argsort(fresh.astype(str), kind="stable")
        at = np.searchsorted(self.user_ids[self.order], fresh[rank])  # object arrays of str: code-point order
        self.order = np.insert(self.order, at, before + rank)
        self.user_ids = np.concatenate([self.user_ids, fresh])
        for key, arr in self.win.items():
            self.win[key] = self.padded(("w", key), arr, self.n_users)[:self.n_users]
        for name, arr in self.per_user.items():
            self.per_user[name] = self.padded(("p", name), arr, self.n_users)[:self.n_users]

    def padded(self, key: tuple[str, object], arr: np.ndarray, rows: int) -> np.ndarray:
        """The base of the per-user array ``arr`` (``bases[key]``: ``arr`` is its first rows, the rest empty state)
        with more than ``rows`` rows; a new one with :data:`SPARE_USERS` spare rows when it has too few."""
        base = self.bases.get(key)
        if base is None or len(base) <= rows or not _prefix_of(arr, base):
            fill = 0 if key[0] == "w" else self._fill.get(key[1], 0)
            base = np.full((rows + max(int(rows * SPARE_USERS), 64), *arr.shape[1:]), fill, dtype=arr.dtype)
            base[:len(arr)] = arr
            self.bases[key] = base
        return base

    def _decay(self, user: np.ndarray, ev: EventArrays, day: DayRollup) -> None:
        """Decay sums at the next cutoff: every event inside a span loses ``multiplier / span``, the day that
        leaves the span its remaining weight, and the new day's events add theirs."""
        decay, k, n = self.per_user["decay"], self.night, self.n_users
        age = np.maximum((self.as_of_us + DAY_US - ev.ts_us).astype(np.float64) / 1e6, 0.0) / SECONDS_PER_DAY
        layer, mult = layer_of(ev.behavior), multipliers(ev.channel, self.spec)
        for i, span in enumerate(self.spans):
            inside = self.win[(f"mult{i}", span)][:, 0]
            leaving_mult, leaving_into = np.zeros(n), np.zeros(n)
            if (old := self.rollup(k - span)) is not None:
                leaving_mult[old.user], leaving_into[old.user] = old.mult[:, i], old.mult_into[:, i]
            decay[:, i] -= leaving_into / span + (inside - leaving_mult) / span
            m = layer == i
            weight = np.maximum(1.0 - age[m] / span, 0.0) * mult[m]
            decay[:, i] += np.bincount(user[m], weights=weight, minlength=n)

    def _history(self, user: np.ndarray, ev: EventArrays, day: DayRollup) -> None:
        """All-history extremes, totals and day gaps with the new day."""
        p, ts, b = self.per_user, ev.ts_us, ev.behavior
        for col, mask in [*((c, b == c) for c in range(len(RECENCY_BEHAVIORS))), (5, None),
                          (6, ev.channel == 1)]:
            u, t = (user, ts) if mask is None else (user[mask], ts[mask])
            np.maximum.at(p["last_ts"][:, col], u, t)
            if col < 6:
                np.minimum.at(p["first_ts"][:, col], u, t)
        p["buy_count"][day.user] += day.n[:, _BUY]
        p["amount_total"][day.user] += day.amount
        known = (b == _BUY) & ~np.isnan(ev.amount)
        p["amount_n"] += np.bincount(user[known], minlength=self.n_users)
        if self.target_codes is not None:
            target = np.isin(ev.category, self.target_codes) & (ev.category != NULL_ID)
            for col, code in enumerate((_VIEW, _CART, _BUY)):
                p["target"][:, col] += np.bincount(user[target & (b == code)], minlength=self.n_users)
            browse = target & (b != _BUY)
            np.minimum.at(p["target_first_browse"], user[browse], ts[browse])
        self._days(day.user, "active", "first_day", "last_day", "active_n", "active_median")
        buyers = day.user[day.n[:, _BUY] > 0]
        self._days(buyers, "buy", None, "last_buy_day", "buy_days", "buy_median")

    def _days(self, users: np.ndarray, gaps: str, first: str | None, last: str, count: str, median: str) -> None:
        """Add day ``night`` to the distinct days of ``users`` (sorted codes): count, first and last day, and the
        sorted gap keys ``user << 20 | gap`` with each user's exact median gap."""
        p, k = self.per_user, self.night
        users = users.astype(np.int64)  # roll-up codes are int32: shifted into keys below
        if first:
            fresh = users[p[first][users] == NO_DAY]
            p[first][fresh] = k
        before = p[last][users]
        had = before != NO_DAY
        with_gap = users[had]
        added = with_gap << _GAP_BITS | (k - before[had])
        keys, fresh = self.gaps[gaps], self.fresh_gaps[gaps]
        fresh = self.fresh_gaps[gaps] = np.insert(fresh, np.searchsorted(fresh, added), added)  # added: sorted
        p[last][users] = k
        p[count][users] += 1
        if len(with_gap):
            set_medians(p[median], keys, with_gap, fresh, self.gap_starts.get(gaps))

    def _pair_codes(self, ev: EventArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The events' item and category codes (-1 for none) and (with item columns) the (category, item) codes of
        their views (-1 for other events); new ids are added to the dictionaries."""
        has_item, has_cat = ev.item != NULL_ID, ev.category != NULL_ID
        item = np.full(len(ev), -1, np.int64)
        cat = np.full(len(ev), -1, np.int64)
        item[has_item] = self.items.encode(ev.item[has_item])
        cat[has_cat] = self.categories.encode(ev.category[has_cat])
        if not self.has_item:
            return item, cat, None
        views = (ev.behavior == _VIEW) & has_item & has_cat
        combo = np.full(len(ev), -1, np.int64)
        combo[views] = self.views_dict.encode(pair_keys(cat[views], item[views]))
        return item, cat, combo

    def _pairs(self, user: np.ndarray, ev: EventArrays, codes: tuple[np.ndarray, np.ndarray, np.ndarray | None]
               ) -> None:
        """The day's (user, item), (user, category), viewed (user, category, item) and carted (user, item) pairs
        (``codes``: :meth:`_pair_codes` of the events)."""
        k = self.night
        item, cat, combo = codes
        has_item, has_cat = item >= 0, cat >= 0
        for name, mask, code in (("item", has_item, item), ("category", has_cat, cat)):
            new = sorted_unique(pair_keys(user[mask], code[mask]))
            found, previous = self._upsert(name, new, (np.full(len(new), k, np.int32),))
            self._count_pairs(name, new[~(found & (previous != DEAD_DAY))], +1)
        if combo is None:
            return
        views = combo >= 0
        new, first = np.unique(pair_keys(user[views], combo[views]), return_index=True)
        self._upsert("view", new, (np.full(len(new), k, np.int32), cat[views][first]))
        self._carts(user, ev, item, has_item)

    def _upsert(self, name: str, new: np.ndarray, values: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Store the ``new`` pairs of ``name``; returns which were stored already, and their old first values."""
        if not len(new):
            return np.zeros(0, dtype=bool), np.zeros(0, dtype=values[0].dtype)
        self.pairs[name], self.fresh[name], found, previous = upsert_runs(self.pairs[name], self.fresh[name], new,
                                                                          values)
        return found, previous

    def _count_pairs(self, name: str, keys: np.ndarray, sign: int) -> None:
        """Keep each user's distinct items (categories) in step with the pairs added (+1) or dropped (-1)."""
        if name in ("item", "category") and len(keys):
            self.per_user[f"distinct_{name}"] += sign * np.bincount(key_users(keys), minlength=self.n_users)

    def compact(self) -> FeatureState:
        """Merge each fresh run into its main run once it holds more than :data:`FRESH_SHARE` of it, and drop the
        retired pairs once they are a quarter of a pair state. Values are unchanged; it is done when the state is
        kept and between nights, not while a night's table waits for it."""
        for name, (main, fresh) in ((name, (self.pairs[name], self.fresh[name])) for name in self.fresh):
            dead_main, dead_fresh = main[1][0] == DEAD_DAY, fresh[1][0] == DEAD_DAY
            dead = int(dead_main.sum()) + int(dead_fresh.sum())
            if dead * 4 > len(main[0]) + len(fresh[0]) or len(fresh[0]) > FRESH_SHARE * len(main[0]):
                self.pairs[name] = merge_runs(main, fresh, ~dead_main, ~dead_fresh)
                self.fresh[name] = empty_run(fresh)
        for name, keys in self.gaps.items():
            fresh = self.fresh_gaps[name]
            if len(fresh) > FRESH_SHARE * len(keys):
                self.gaps[name] = np.insert(keys, np.searchsorted(keys, fresh), fresh)
                self.fresh_gaps[name] = fresh[:0]
            self.gap_starts[name] = np.searchsorted(self.gaps[name], np.arange(self.n_users + 1) << _GAP_BITS)
        for name, oldest in self._retiring(self.night):
            self.leaving[name] = (self.night, np.flatnonzero(self.pairs[name][1][0] == oldest))
        return self

    def _retiring(self, night: int) -> list[tuple[str, int]]:
        """Per pair state, the last day seen of the pairs that night ``night`` retires (those before are retired)."""
        spec = self.spec
        return [("item", night - spec.distinct_days), ("category", night - spec.distinct_days),
                ("view", night - max(spec.comparison_windows))]

    def _prune(self) -> None:
        """Retire the pairs that leave their window at the next night (``night + 1``): the distinct-count and
        comparison pairs are marked :data:`DEAD_DAY` in place (and dropped by :meth:`compact`), the carts
        dropped."""
        k, spec = self.night, self.spec
        for name, oldest in self._retiring(k):
            night, found = self.leaving.pop(name, (None, None))
            self.pairs[name] = self._retire(name, *self.pairs[name], oldest, found if night == k else None)
            self.fresh[name] = self._retire(name, *self.fresh[name], oldest)
        first_cart = self.origin_us + (k + 1 - spec.cart_unbought_days) * DAY_US
        keys, values = self.pairs["cart"]
        if len(keys) and values[0].min() < first_cart:
            keep = values[0] >= first_cart
            self.pairs["cart"] = (keys[keep], tuple(v[keep] for v in values))

    def _retire(self, name: str, keys: np.ndarray, values: tuple[np.ndarray, ...], oldest: int,
                candidates: np.ndarray | None = None) -> Run:
        """The run with its pairs last seen on or before day ``oldest`` marked :data:`DEAD_DAY` (and uncounted).
        ``candidates``: the positions of the pairs last seen on day ``oldest`` when those before are retired
        already (:attr:`leaving`); only they are read then."""
        days = values[0]
        if candidates is not None:
            leaving = candidates[days[candidates] == oldest]  # not seen again since
        else:
            leaving = np.flatnonzero((days <= oldest) & (days != DEAD_DAY))
        if len(leaving):
            self._count_pairs(name, keys[leaving], -1)
            if not days.flags.writeable:
                days = days.copy()
            days[leaving] = DEAD_DAY
        return keys, (days, *values[1:])

    def _carts(self, user: np.ndarray, ev: EventArrays, item: np.ndarray, has_item: np.ndarray) -> None:
        """Carted (user, item) pairs of the unbought-cart window: last cart and last buy at or after it."""
        keys, (cart_ts, buy_ts) = self.pairs["cart"]
        cart_ts, buy_ts = cart_ts, buy_ts.copy()
        pairs = pair_keys(user, np.maximum(item, 0))
        carts, buys = has_item & (ev.behavior == _CART), has_item & (ev.behavior == _BUY)
        bought, bought_ts = unique_last(pairs[buys], ev.ts_us[buys])
        at, found = lookup(keys, bought)
        buy_ts[at[found]] = np.maximum(buy_ts[at[found]], bought_ts[found])
        carted, carted_ts = unique_last(pairs[carts], ev.ts_us[carts])
        new_buy = np.full(len(carted), NEVER_TS, np.int64)
        at, found = lookup(bought, carted)
        new_buy[found] = bought_ts[at[found]]
        at, found = lookup(keys, carted)
        new_buy[found] = np.maximum(new_buy[found], buy_ts[at[found]])
        keys, (cart_ts, buy_ts), _, _ = upsert(keys, (cart_ts, buy_ts), carted, (carted_ts, new_buy))
        self.pairs["cart"] = (keys, (cart_ts, buy_ts))

    def pair_runs(self, name: str) -> list[Run]:
        """The runs of the pair state ``name``: the main one and, but for carts, the fresh one."""
        return [self.pairs[name], *([self.fresh[name]] if name in self.fresh else [])]
