"""Re-create the generator's hidden state at a cutoff, chunk by chunk, from the same random streams.

:func:`features.simulate.shop.generate` draws every chunk of users from ``SeedSequence(config.seed,
spawn_key=(chunk,))`` spawned into three streams: user traits, the days (session coins and event content) and
the truth (only read at truth cutoffs, so it never moves the other two). :func:`replay` repeats the first two
exactly for days ``0 .. D - 1`` (``as_of = start + D days``), so the users, the latent state at the start of
day ``D`` and the event rows before ``as_of`` are identical to the original run's, whatever its truth cutoffs.
Along the way it keeps two marks the latent state does not hold but the campaigns' decision windows need: the
last day with a fav or cart and the last day with an ad-click session.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa

from features.simulate import process as proc
from features.simulate.events import EventRows, user_ids
from features.simulate.shop import GeneratorConfig, day_rows


@dataclass(frozen=True)
class Marks:
    """Per-user days of the last fav/cart and of the last ad-click session before the cutoff, shape ``(n,)``
    (int day indices from ``config.start``; :data:`features.simulate.process.NEVER` when there was none)."""

    fav_cart: np.ndarray
    ad: np.ndarray

    def take(self, idx: np.ndarray) -> Marks:
        return Marks(self.fav_cart[idx], self.ad[idx])


@dataclass(frozen=True)
class ReplayedChunk:
    """One chunk of users at the start of day ``day``, as the original run had it.

    ``first``: global number of the chunk's first user; ``uids``: their user ids (shape ``(n,)``); ``users`` and
    ``state``: hidden traits and latent state; ``marks``: see :class:`Marks`; ``history``: the chunk's event
    rows before the cutoff (``user`` indexes ``uids``), identical to the first rows of the original
    ``events/part-<chunk>.parquet``; ``None`` unless asked for.
    """

    chunk: int
    first: int
    day: int
    uids: pa.Array
    users: proc.Users
    state: proc.State
    marks: Marks
    history: EventRows | None

    @property
    def n(self) -> int:
        return len(self.uids)


def as_of_day(config: GeneratorConfig, as_of: datetime) -> int:
    """The day index ``D`` with ``as_of == start + D days``, ``1 <= D <= config.days``.

    Raises :class:`features.simulate.shop.GeneratorConfigError` for anything else (not aware, not a whole
    number of days from the start, outside the generated period).
    """
    return config.cutoff_day(as_of)


def _replay_chunk(
    config: GeneratorConfig, chunk: int, first: int, n: int, day: int, cal: proc.Calendar, keep_history: bool
) -> ReplayedChunk:
    ss = np.random.SeedSequence(entropy=config.seed, spawn_key=(chunk,))
    rng_users, rng_days, _rng_truth = (np.random.default_rng(s) for s in ss.spawn(3))
    users = proc.draw_users(rng_users, n, config.days, config.n_categories)
    state = proc.initial_state(users)
    fav_cart = np.full(n, proc.NEVER, dtype=np.int32)
    ad = np.full(n, proc.NEVER, dtype=np.int32)
    start_us = int(config.start_utc.timestamp()) * 1_000_000
    parts: list[EventRows] = []
    for d in range(day):
        idx, sessions, bought = proc.step_day(rng_days, users, state, d, cal)
        fav_cart[idx[sessions.fav | sessions.cart | bought]] = d
        ad[idx[sessions.is_ad]] = d
        # the content draws come from the same stream as the coins: they must be drawn to stay in step
        rows = day_rows(rng_days, config, users, d, start_us, idx, sessions, bought)
        if keep_history:
            parts.append(rows)
    return ReplayedChunk(
        chunk=chunk,
        first=first,
        day=day,
        uids=user_ids(first, n, config.n_users),
        users=users,
        state=state,
        marks=Marks(fav_cart, ad),
        history=EventRows.concat(parts) if keep_history else None,
    )


def replay(config: GeneratorConfig, as_of: datetime, *, keep_history: bool = False) -> Iterator[ReplayedChunk]:
    """Yield every chunk of ``config``'s users (``config.chunk_users`` at a time) at the start of day ``as_of``.

    Memory is one chunk's traits and state (plus its history rows with ``keep_history``); time is about that of
    generating the days before ``as_of`` without truth (~1 s per 20k users and 100 days on 2 cores).
    """
    day = as_of_day(config, as_of)
    cal = proc.make_calendar(config.start_utc, day + 1)
    for chunk, first in enumerate(range(0, config.n_users, config.chunk_users)):
        n = min(config.chunk_users, config.n_users - first)
        yield _replay_chunk(config, chunk, first, n, day, cal, keep_history)
