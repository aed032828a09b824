"""Turn one day's simulated sessions into event rows, and event rows into canonical Arrow tables.

Rows are kept as compact numpy columns (:class:`EventRows`) while a chunk of users is simulated and only
converted to strings (user, item and category ids) when the chunk is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from features.events.schema import BEHAVIORS, CHANNELS, arrow_schema
from features.simulate.process import Sessions

B_VIEW, B_FAV, B_CART, B_BUY, B_VISIT = (BEHAVIORS.index(b) for b in ("view", "fav", "cart", "buy", "visit"))
SECONDS_PER_DAY = 86_400
HOME_CATEGORY_SHARE = 0.6
MEAN_GAP_SECONDS = 40.0


@dataclass(frozen=True)
class EventRows:
    """Event rows as numpy columns, all of shape ``(rows,)``.

    ``user`` is the position of the user within its chunk, ``ts_us`` microseconds since the Unix epoch,
    ``behavior``/``channel`` index :data:`BEHAVIORS`/:data:`CHANNELS`, ``item``/``category`` are integer
    ids (-1: none) and ``amount`` is NaN except on buy rows.
    """

    user: np.ndarray
    ts_us: np.ndarray
    behavior: np.ndarray
    item: np.ndarray
    category: np.ndarray
    channel: np.ndarray
    amount: np.ndarray

    @property
    def n(self) -> int:
        return int(self.user.shape[0])

    @staticmethod
    def concat(parts: list[EventRows]) -> EventRows:
        if not parts:
            return EventRows(
                np.zeros(0, np.int32),
                np.zeros(0, np.int64),
                np.zeros(0, np.int8),
                np.zeros(0, np.int32),
                np.zeros(0, np.int32),
                np.zeros(0, np.int8),
                np.zeros(0, np.float64),
            )
        return EventRows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in EventRows.__dataclass_fields__)
        )

    def slice(self, lo: int, hi: int) -> EventRows:
        return EventRows(*(getattr(self, f)[lo:hi] for f in EventRows.__dataclass_fields__))

    def take(self, idx: np.ndarray) -> EventRows:
        return EventRows(*(getattr(self, f)[idx] for f in EventRows.__dataclass_fields__))


def session_rows(
    rng: np.random.Generator,
    *,
    day: int,
    start_us: int,
    users_idx: np.ndarray,
    sessions: Sessions,
    bought: np.ndarray,
    home_cat: np.ndarray,
    amount_mu: np.ndarray,
    n_categories: int,
    items_per_category: int,
) -> EventRows:
    """Event rows of one day's sessions, sorted by time.

    Each session is: an optional ``visit``, ``n_views`` views of items of one category (the user's home
    category 60% of the time), then ``fav`` / ``cart`` of one of the viewed items, then ``buy`` of it (a
    purchase always comes with a cart row). All rows carry the session's channel; gaps between rows are
    exponential (mean 40 s); sessions start mostly in the evening and never cross midnight.
    ``users_idx``, ``sessions``, ``bought``, ``home_cat`` and ``amount_mu`` are aligned, shape ``(m,)``.
    """
    if sessions.channel is None or sessions.visit is None:
        raise ValueError("session_rows needs sessions drawn with content=True")
    m = users_idx.shape[0]
    cart = sessions.cart | bought
    nv = sessions.n_views.astype(np.int64)
    visit = sessions.visit.astype(np.int64)
    fav = sessions.fav.astype(np.int64)
    k = visit + nv + fav + cart + bought
    total = int(k.sum())
    starts = np.cumsum(k) - k
    sess_of_row = np.repeat(np.arange(m), k)
    pos = np.arange(total) - starts[sess_of_row]

    v_r, nv_r = visit[sess_of_row], nv[sess_of_row]
    end_view = v_r + nv_r
    end_fav = end_view + fav[sess_of_row]
    end_cart = end_fav + cart[sess_of_row]
    behavior = np.full(total, B_BUY, dtype=np.int8)
    behavior[pos < end_cart] = B_CART
    behavior[pos < end_fav] = B_FAV
    behavior[pos < end_view] = B_VIEW
    behavior[pos < v_r] = B_VISIT

    u = rng.random((4, m))
    category = np.where(
        u[0] < HOME_CATEGORY_SHARE, home_cat, np.floor(u[1] * n_categories).astype(np.int32)
    ).astype(np.int32)
    cat_r = category[sess_of_row]
    popularity = rng.random(total) ** 2  # a few items in each category get most views
    item = cat_r * items_per_category + np.floor(popularity * items_per_category).astype(np.int32)
    chosen_row = starts + visit + np.floor(u[2] * nv).astype(np.int64)
    item = np.where(pos >= end_view, item[chosen_row][sess_of_row], item).astype(np.int32)
    is_visit = behavior == B_VISIT
    item[is_visit] = -1
    cat_r = np.where(is_visit, -1, cat_r).astype(np.int32)

    evening = rng.normal(20.5 * 3600, 2.0 * 3600, m)
    anytime = rng.uniform(7 * 3600, 23 * 3600, m)
    start_sec = np.clip(np.where(u[3] < 0.6, evening, anytime), 60.0, SECONDS_PER_DAY - 3600.0)
    gaps = rng.exponential(MEAN_GAP_SECONDS, total)
    csum = np.cumsum(gaps)
    within = csum - (csum[starts] - gaps[starts])[sess_of_row]
    sec = np.minimum(start_sec[sess_of_row] + within, SECONDS_PER_DAY - 1.0)
    ts_us = start_us + day * SECONDS_PER_DAY * 1_000_000 + np.floor(sec * 1e6).astype(np.int64)

    amount = np.full(total, np.nan)
    buy_rows = np.flatnonzero(behavior == B_BUY)
    mu = amount_mu[sess_of_row[buy_rows]]
    amount[buy_rows] = np.round(np.exp(mu + rng.normal(0.0, 0.35, buy_rows.shape[0])), 2)

    order = np.argsort(ts_us, kind="stable")
    return EventRows(
        user=users_idx[sess_of_row].astype(np.int32)[order],
        ts_us=ts_us[order],
        behavior=behavior[order],
        item=item[order],
        category=cat_r[order],
        channel=sessions.channel[sess_of_row][order],
        amount=amount[order],
    )


@dataclass(frozen=True)
class IdTables:
    """String tables that integer ids are mapped through when rows become Arrow columns."""

    items: pa.Array
    categories: pa.Array
    behaviors: pa.Array
    channels: pa.Array

    @staticmethod
    def build(n_categories: int, items_per_category: int) -> IdTables:
        n_items = n_categories * items_per_category
        iw, cw = max(6, len(str(n_items - 1))), max(3, len(str(n_categories - 1)))
        return IdTables(
            items=pa.array([f"i{j:0{iw}d}" for j in range(n_items)], pa.string()),
            categories=pa.array([f"c{j:0{cw}d}" for j in range(n_categories)], pa.string()),
            behaviors=pa.array(list(BEHAVIORS), pa.string()),
            channels=pa.array(list(CHANNELS), pa.string()),
        )


def user_ids(first: int, n: int, n_users: int) -> pa.Array:
    """User id strings ``u0000123`` for global user numbers ``first .. first + n - 1`` (7 digits at least)."""
    width = max(7, len(str(n_users - 1)))
    return pa.array([f"u{j:0{width}d}" for j in range(first, first + n)], pa.string())


def to_table(rows: EventRows, users: pa.Array, ids: IdTables) -> pa.Table:
    """Canonical event table (:func:`features.events.schema.arrow_schema`) from numpy rows; ``users`` maps chunk
    positions."""
    item_idx = pa.array(rows.item, type=pa.int32(), mask=rows.item < 0)
    cat_idx = pa.array(rows.category, type=pa.int32(), mask=rows.category < 0)
    arrays = [
        users.take(pa.array(rows.user, type=pa.int32())),
        pa.array(rows.ts_us, type=pa.timestamp("us", tz="UTC")),
        ids.behaviors.take(pa.array(rows.behavior, type=pa.int8())),
        ids.items.take(item_idx),
        ids.categories.take(cat_idx),
        ids.channels.take(pa.array(rows.channel, type=pa.int8())),
        pa.array(rows.amount, type=pa.float64(), mask=np.isnan(rows.amount)),
    ]
    return pa.Table.from_arrays(arrays, schema=arrow_schema())
