"""One day's events rolled up per user: what a window loses when that day leaves it.

A :class:`DayRollup` holds, for each user active on one day (24 hours from the state's day start, see
:mod:`features.incremental.state`), the day's sums that the windowed features add up: events per behavior code,
ad events, events with a channel and the active and passive ones among them, the known buy amounts, and per decay
layer the channel multipliers and the multipliers times the events' time into the day. Arrays have one row per
user, sorted by user code.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from features.online.arrays import NULL_CHANNEL
from features.spec.definition import BEHAVIOR_CODES, CHANNEL_CODES, OTHER_BEHAVIOR, FeatureSpec

DAY_US = 86_400_000_000
N_CODES = OTHER_BEHAVIOR + 1
"""Behavior codes counted: the contract's five, then any other behavior."""
LAYER_CODES: tuple[tuple[int, ...], ...] = (
    (BEHAVIOR_CODES["view"], BEHAVIOR_CODES["visit"]),
    (BEHAVIOR_CODES["fav"], BEHAVIOR_CODES["cart"]),
    (BEHAVIOR_CODES["buy"],),
)
"""Behavior codes of the decay layers browse, interest and purchase, in that order."""


def multipliers(channel: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """The decay multiplier of each event's channel class (float64): ad > active > neutral or none > passive."""
    out = np.ones(len(channel), dtype=np.float64)
    out[channel == CHANNEL_CODES["ad"]] = spec.ad_multiplier
    out[channel == CHANNEL_CODES["active"]] = spec.active_multiplier
    out[channel == CHANNEL_CODES["passive"]] = spec.passive_multiplier
    return out


def layer_of(behavior: np.ndarray) -> np.ndarray:
    """The decay layer of each behavior code (0 browse, 1 interest, 2 purchase, -1 none), int8."""
    out = np.full(len(behavior), -1, dtype=np.int8)
    for layer, codes in enumerate(LAYER_CODES):
        out[np.isin(behavior, codes)] = layer
    return out


@dataclass(frozen=True)
class DayRollup:
    """Per-user sums of one day. ``user``: int32 (m,) sorted user codes; ``n``: int32 (m, 6) events per behavior
    code; ``ad``: int32 (m,) ad events; ``chan``: int32 (m, 3) events with a channel, active (ad or search) and
    passive ones; ``amount``: float64 (m,) sum of known buy amounts; ``mult``: float64 (m, 3) sum of channel
    multipliers per decay layer; ``mult_into``: float64 (m, 3) the same weighted by the events' time into the day
    (fraction of 24 h in [0, 1))."""

    user: np.ndarray
    n: np.ndarray
    ad: np.ndarray
    chan: np.ndarray
    amount: np.ndarray
    mult: np.ndarray
    mult_into: np.ndarray

    @classmethod
    def of(cls, user: np.ndarray, ts_us: np.ndarray, behavior: np.ndarray, channel: np.ndarray,
           amount: np.ndarray, day_start_us: int, spec: FeatureSpec) -> DayRollup:
        """The roll-up of one day's events (aligned arrays; ``user`` int64 codes, ``ts_us`` inside the day)."""
        users, row = np.unique(user, return_inverse=True)
        m = len(users)

        def total(mask: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
            r, w = (row, weights) if mask is None else (row[mask], None if weights is None else weights[mask])
            got = np.bincount(r, weights=w, minlength=m)
            return got if weights is not None else got.astype(np.int32)

        n = np.stack([total(behavior == code) for code in range(N_CODES)], axis=1).reshape(m, N_CODES)
        ad = channel == CHANNEL_CODES["ad"]
        active = ad | (channel == CHANNEL_CODES["active"])
        chan = np.stack([total(channel != NULL_CHANNEL), total(active), total(channel == CHANNEL_CODES["passive"])],
                        axis=1).reshape(m, 3)
        known_buy = (behavior == BEHAVIOR_CODES["buy"]) & ~np.isnan(amount)
        mult = multipliers(channel, spec)
        into = (ts_us - day_start_us).astype(np.float64) / DAY_US
        layer = layer_of(behavior)
        return cls(
            user=users.astype(np.int32), n=n, ad=total(ad), chan=chan,
            amount=total(known_buy, np.where(known_buy, amount, 0.0)).astype(np.float64),
            mult=np.stack([total(layer == i, mult) for i in range(3)], axis=1).reshape(m, 3),
            mult_into=np.stack([total(layer == i, mult * into) for i in range(3)], axis=1).reshape(m, 3),
        )

    @classmethod
    def empty(cls) -> DayRollup:
        z = np.zeros(0, dtype=np.int32)
        return cls(z, np.zeros((0, N_CODES), np.int32), z, np.zeros((0, 3), np.int32), np.zeros(0),
                   np.zeros((0, 3)), np.zeros((0, 3)))

    def save(self, path: Path) -> None:
        """Write as a folder of one ``.npy`` per field."""
        path.mkdir()
        for f in fields(self):
            np.save(path / f"{f.name}.npy", getattr(self, f.name))

    @classmethod
    def load(cls, path: Path) -> DayRollup:
        """The roll-up in the folder ``path``, memory-mapped: a window reads only the fields it subtracts."""
        return cls(**{f.name: np.load(path / f"{f.name}.npy", mmap_mode="r") for f in fields(cls)})
