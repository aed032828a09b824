"""The :class:`FeatureState` at a cutoff computed from all events at once (no replay of every day).

The state's origin is the cutoff itself (night 0): the days of the history are negative, day ``-1`` being the 24 hours
before the cutoff. Every part is computed as :meth:`FeatureState.advance` would have left it after a replay (the
windowed sums from the days' roll-ups, the decay sums from each event's weight, extremes, totals, day gaps and pair
states from the events of their windows); ``tests/property/test_incremental_parity.py`` checks both equal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from features.incremental.pairs import key_users, lookup, pair_keys, sorted_unique, unique_last
from features.incremental.rollup import DAY_US, DayRollup, layer_of, multipliers
from features.incremental.state import _BUY, _CART, _GAP_BITS, _VIEW, FeatureState, _rolled, set_medians
from features.online.arrays import COLUMNS, NULL_ID, EventArrays
from features.spec.definition import RECENCY_BEHAVIORS, FeatureSpec
from features.spec.table import SECONDS_PER_DAY


def state_at(chunks: Iterable[tuple[np.ndarray, EventArrays]], as_of_us: int, spec: FeatureSpec, *,
             has_item: bool = True, has_amount: bool = True, spill: Path | None = None) -> FeatureState:
    """The state at ``as_of_us`` (UTC epoch microseconds) of the events before it.

    ``chunks``: (user ids as text, events) pairs, aligned, in any order (e.g. one per Parquet row group); events at
    or after the cutoff are ignored. With ``spill`` (a folder on the file system the state will be saved to), each
    day's roll-up is written there as soon as it is made and read back memory-mapped: at 100M events the roll-ups of
    365 days take about 5 GB."""
    state = FeatureState(spec, as_of_us, has_item=has_item, has_amount=has_amount)
    users, parts, first_codes, first_ids = [], [], [], []
    for ids, ev in chunks:
        keep = ev.ts_us < as_of_us
        ids, ev = ids[keep], ev.take(keep)
        before = len(state.users.values)
        codes = state.users.encode(pd.util.hash_array(ids, categorize=True).view(np.int64))
        fresh = pd.Series(codes).drop_duplicates()
        fresh = fresh[fresh >= before]
        first_codes.append(fresh.to_numpy())
        first_ids.append(ids[fresh.index.to_numpy()])
        users.append(codes)
        parts.append(ev)
    if first_codes and sum(len(c) for c in first_codes):
        state.add_users(np.concatenate(first_codes), np.concatenate(first_ids), 0)
    user = np.concatenate(users) if users else np.zeros(0, np.int64)
    del users
    ev = _concat(parts)
    day = np.floor_divide(ev.ts_us - as_of_us, DAY_US)  # -1 = the last 24 hours
    _rollups(state, user, ev, day, spill)
    _windows(state)
    _decay(state, user, ev)
    _history(state, user, ev, day)
    _pairs(state, user, ev, day)
    return state


def _concat(parts: list[EventArrays]) -> EventArrays:
    """The parts as one :class:`EventArrays`, a column at a time, each part's column freed once copied (the peak is
    the events plus one column, not twice the events)."""
    if not parts:
        return EventArrays.empty()
    columns = {}
    for name in COLUMNS:
        columns[name] = np.concatenate([getattr(p, name) for p in parts])
        empty = np.empty(0, dtype=columns[name].dtype)  # not a slice: a view would keep the part's array alive
        parts[:] = [dataclasses.replace(p, **{name: empty}) for p in parts]
    return EventArrays(**columns)


def _rollups(state: FeatureState, user: np.ndarray, ev: EventArrays, day: np.ndarray, spill: Path | None) -> None:
    """The roll-ups of the days still inside a window (kept in ``spill`` when given)."""
    oldest = -max(max(ws) for ws in state.windows.values())
    recent = np.flatnonzero(day >= oldest)
    recent = recent[np.argsort(day[recent], kind="stable")]
    bounds = np.searchsorted(day[recent], np.arange(oldest, 1))
    for i, d in enumerate(range(oldest, 0)):
        rows = recent[bounds[i]:bounds[i + 1]]
        if len(rows):
            rollup = DayRollup.of(user[rows], ev.ts_us[rows], ev.behavior[rows], ev.channel[rows], ev.amount[rows],
                                  state.as_of_us + d * DAY_US, state.spec)
            if spill is None:
                state.rollups[d] = rollup
            else:
                rollup.save(spill / f"day-{d}")
                state.rollups[d] = spill / f"day-{d}"


def _windows(state: FeatureState) -> None:
    """Each windowed sum: the roll-ups of its last ``w`` days added up."""
    for group, ws in state.windows.items():
        running = np.zeros_like(state.win[(group, ws[0])])
        for back in range(1, max(ws) + 1):
            if (r := state.rollup(-back)) is not None:
                running[r.user] += _rolled(r, group)
            if back in ws:
                state.win[(group, back)] = running.copy()


def _decay(state: FeatureState, user: np.ndarray, ev: EventArrays) -> None:
    age = np.maximum((state.as_of_us - ev.ts_us).astype(np.float64) / 1e6, 0.0) / SECONDS_PER_DAY
    layer, mult = layer_of(ev.behavior), multipliers(ev.channel, state.spec)
    for i, span in enumerate(state.spans):
        m = layer == i
        weight = np.maximum(1.0 - age[m] / span, 0.0) * mult[m]
        state.per_user["decay"][:, i] = np.bincount(user[m], weights=weight, minlength=state.n_users)


def _history(state: FeatureState, user: np.ndarray, ev: EventArrays, day: np.ndarray) -> None:
    p, n, b, ts = state.per_user, state.n_users, ev.behavior, ev.ts_us
    for col, mask in [*((c, b == c) for c in range(len(RECENCY_BEHAVIORS))), (5, None), (6, ev.channel == 1)]:
        u, t = (user, ts) if mask is None else (user[mask], ts[mask])
        np.maximum.at(p["last_ts"][:, col], u, t)
        if col < 6:
            np.minimum.at(p["first_ts"][:, col], u, t)
    buy = b == _BUY
    p["buy_count"][:] = np.bincount(user[buy], minlength=n)
    known = buy & ~np.isnan(ev.amount)
    p["amount_total"][:] = np.bincount(user[known], weights=ev.amount[known], minlength=n)
    p["amount_n"][:] = np.bincount(user[known], minlength=n)
    if state.target_codes is not None:
        target = np.isin(ev.category, state.target_codes) & (ev.category != NULL_ID)
        for col, code in enumerate((_VIEW, _CART, _BUY)):
            p["target"][:, col] = np.bincount(user[target & (b == code)], minlength=n)
        browse = target & ~buy
        np.minimum.at(p["target_first_browse"], user[browse], ts[browse])
    _days(state, user, day, "active", "first_day", "last_day", "active_n", "active_median")
    _days(state, user[buy], day[buy], "buy", None, "last_buy_day", "buy_days", "buy_median")


def _days(state: FeatureState, user: np.ndarray, day: np.ndarray, gaps: str, first: str | None, last: str,
          count: str, median: str) -> None:
    """Distinct days per user: count, first and last day, sorted gap keys and the exact median gap."""
    p = state.per_user
    back = -1 - day  # whole days back from the cutoff, ascending = newest first
    keys = sorted_unique(user << _GAP_BITS | back)
    if not len(keys):
        return
    owner, back = keys >> _GAP_BITS, keys & ((1 << _GAP_BITS) - 1)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    ends = np.r_[starts[1:], len(keys)] - 1
    users = owner[starts]
    p[count][users] = ends - starts + 1
    p[last][users] = -1 - back[starts]
    if first:
        p[first][users] = -1 - back[ends]
    same = owner[1:] == owner[:-1]
    gap_keys = np.sort(owner[1:][same] << _GAP_BITS | (back[1:] - back[:-1])[same])
    state.gaps[gaps] = gap_keys
    set_medians(p[median], gap_keys, sorted_unique(gap_keys >> _GAP_BITS))


def _pairs(state: FeatureState, user: np.ndarray, ev: EventArrays, day: np.ndarray) -> None:
    spec = state.spec
    back = -1 - day
    cat = _window_pairs(state, "category", ev.category, user, day, back)
    if not state.has_item:
        return
    item = _window_pairs(state, "item", ev.item, user, day, back)
    has_cat, has_item = cat >= 0, item >= 0
    views = (ev.behavior == _VIEW) & has_item & has_cat & (back < max(spec.comparison_windows))
    combo = state.views_dict.encode(pair_keys(cat[views], item[views]))
    keys, (last_day,) = _last(pair_keys(user[views], combo), day[views])
    view_cat = key_users(state.views_dict.values[keys & 0xFFFFFFFF])
    state.pairs["view"] = (keys, (last_day, view_cat))
    carts = has_item & (ev.behavior == _CART) & (back < spec.cart_unbought_days)
    keys, cart_ts = unique_last(pair_keys(user[carts], item[carts]), ev.ts_us[carts])
    buys = has_item & (ev.behavior == _BUY)
    bought, bought_ts = unique_last(pair_keys(user[buys], item[buys]), ev.ts_us[buys])
    buy_ts = np.full(len(keys), np.iinfo(np.int64).min, np.int64)
    at, found = lookup(bought, keys)
    buy_ts[found] = bought_ts[at[found]]
    state.pairs["cart"] = (keys, (cart_ts, buy_ts))


def _window_pairs(state: FeatureState, name: str, ids: np.ndarray, user: np.ndarray, day: np.ndarray,
                  back: np.ndarray) -> np.ndarray:
    """Keep the (user, id) pairs of the distinct-count window as ``name`` (``item`` or ``category``) with each user's
    count; returns the ids' codes (-1 for a null id)."""
    has = ids != NULL_ID
    codes = np.full(len(ids), -1, np.int64)
    codes[has] = {"item": state.items, "category": state.categories}[name].encode(ids[has])
    inside = has & (back < state.spec.distinct_days)
    state.pairs[name] = _last(pair_keys(user[inside], codes[inside]), day[inside])
    state.per_user[f"distinct_{name}"][:] = np.bincount(key_users(state.pairs[name][0]), minlength=state.n_users)
    return codes


def _last(keys: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray]]:
    keys, day = unique_last(keys, day)
    return keys, (day.astype(np.int32),)
