"""One user's events as aligned numpy arrays: the input of the online feature execution.

Strings become codes once, where the events arrive (a history snapshot, an ingested batch), so computing a
user's features touches only numbers. Ids (``item_id``, ``category_id``) are compared for equality only, so they are
kept as stable 64-bit hashes (:func:`id_codes`): the same string gives the same code in every process and
on every machine, whichever batch or request it came in, and a collision between two of a user's ids has a
probability of about ``n^2 / 2^64``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.events.schema import ACTIVE_CHANNELS, BEHAVIOR_ALIASES, PASSIVE_CHANNELS
from features.spec.definition import BEHAVIOR_CODES, CHANNEL_CODES, OTHER_BEHAVIOR

NULL_ID = np.iinfo(np.int64).min
"""Code of a null ``item_id`` / ``category_id``."""
NULL_CHANNEL = -1
"""Code of a null channel (an event without one)."""

COLUMNS: tuple[str, ...] = ("ts_us", "behavior", "channel", "item", "category", "amount")
DTYPES: dict[str, np.dtype] = {
    "ts_us": np.dtype("int64"),
    "behavior": np.dtype("int8"),
    "channel": np.dtype("int8"),
    "item": np.dtype("int64"),
    "category": np.dtype("int64"),
    "amount": np.dtype("float64"),
}


@dataclass(frozen=True)
class EventArrays:
    """n events of one user (or of several, before they are split by user), aligned.

    ``ts_us``: int64 UTC epoch microseconds; ``behavior``: int8 :data:`BEHAVIOR_CODES` (``OTHER_BEHAVIOR`` outside
    the contract); ``channel``: int8 :data:`CHANNEL_CODES` class, :data:`NULL_CHANNEL` when null; ``item`` /
    ``category``: int64 :func:`id_codes`, :data:`NULL_ID` when null; ``amount``: float64 order value, NaN when null.
    """

    ts_us: np.ndarray
    behavior: np.ndarray
    channel: np.ndarray
    item: np.ndarray
    category: np.ndarray
    amount: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_us)

    def take(self, index: np.ndarray | slice) -> EventArrays:
        """The events at ``index`` (a boolean mask, integer positions or a slice)."""
        return EventArrays(*(getattr(self, c)[index] for c in COLUMNS))

    @classmethod
    def empty(cls) -> EventArrays:
        return cls(*(np.empty(0, dtype=DTYPES[c]) for c in COLUMNS))

    @classmethod
    def concat(cls, parts: Sequence[EventArrays]) -> EventArrays:
        """The events of every part, in order."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, c) for p in parts]) for c in COLUMNS))

    @classmethod
    def from_frame(cls, events: pd.DataFrame) -> EventArrays:
        """Arrays of a canonical event frame (:mod:`features.events.schema`; optional columns may be absent).

        ``ts`` may be tz-aware (converted to UTC), naive (taken as UTC) or integer epoch seconds; behaviors are
        lower-cased with aliases mapped, like :func:`features.build.builder.events_table` does.
        """
        n = len(events)
        return cls(
            ts_us=np.ascontiguousarray(ts_micros(events["ts"]), dtype="int64"),
            behavior=behavior_codes(events["behavior"]),
            channel=channel_codes(events["channel"]) if "channel" in events else np.full(n, NULL_CHANNEL, "int8"),
            item=id_codes(events["item_id"]) if "item_id" in events else np.full(n, NULL_ID, "int64"),
            category=id_codes(events["category_id"]) if "category_id" in events else np.full(n, NULL_ID, "int64"),
            amount=(pd.to_numeric(events["amount"]).to_numpy(dtype="float64", na_value=np.nan)
                    if "amount" in events else np.full(n, np.nan)),
        )


def ts_micros(ts: pd.Series) -> np.ndarray:
    """Event times as UTC epoch microseconds (int64, shape (n,)): tz-aware timestamps, naive ones (taken as UTC)
    or integer epoch seconds."""
    if pd.api.types.is_numeric_dtype(ts) and not pd.api.types.is_bool_dtype(ts):
        return ts.to_numpy(dtype="int64") * 1_000_000
    return pd.to_datetime(ts, utc=True).dt.as_unit("us").to_numpy(dtype="datetime64[us]").view("int64")


_SMALL = 64
"""Up to this many values are coded in plain Python (a lookup's few new events); more go through pandas, whose
per-call cost (~0.5 ms) only pays off on many values. Both give the same codes."""


def behavior_codes(values: pd.Series | Sequence[object]) -> np.ndarray:
    """int8 :data:`BEHAVIOR_CODES` of behavior strings (aliases mapped, case-insensitive)."""
    codes, uniques = _factorize(values)
    lookup = np.array(
        [BEHAVIOR_CODES.get(BEHAVIOR_ALIASES.get(str(u).strip().lower(), str(u).strip().lower()), OTHER_BEHAVIOR)
         for u in uniques] or [OTHER_BEHAVIOR],
        dtype="int8",
    )
    return lookup[codes]


def channel_codes(values: pd.Series | Sequence[object]) -> np.ndarray:
    """int8 channel classes: ``ad``, the other active channels, the passive ones, any other value (neutral);
    :data:`NULL_CHANNEL` for null."""
    codes, uniques = _factorize(values)  # null -> -1
    lookup = np.array([_channel_class(str(u)) for u in uniques] + [NULL_CHANNEL], dtype="int8")
    return lookup[codes]


def _factorize(values: pd.Series | Sequence[object]) -> tuple[np.ndarray, Sequence[object]]:
    """``pd.factorize(values, sort=False)``: codes (int64, shape (n,), -1 for null) and the distinct values in
    order of first appearance."""
    if len(values) > _SMALL:
        return pd.factorize(values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object),
                            sort=False)
    seen: dict[object, int] = {}
    codes = [-1 if _is_null(v) else seen.setdefault(v, len(seen)) for v in _as_list(values)]
    return np.array(codes, dtype=np.int64), list(seen)


def _as_list(values: pd.Series | Sequence[object]) -> list[object]:
    return values.tolist() if isinstance(values, (pd.Series, np.ndarray)) else list(values)


def _is_null(value: object) -> bool:
    """What ``pd.isna`` says of one value (None, NaN, NA, NaT)."""
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _channel_class(channel: str) -> int:
    if channel == "ad":
        return CHANNEL_CODES["ad"]
    if channel in ACTIVE_CHANNELS:
        return CHANNEL_CODES["active"]
    if channel in PASSIVE_CHANNELS:
        return CHANNEL_CODES["passive"]
    return CHANNEL_CODES["neutral"]


def id_codes(values: pd.Series | Sequence[object]) -> np.ndarray:
    """Stable int64 codes of id strings (SipHash with pandas' fixed key); :data:`NULL_ID` for null.

    Integer ids are hashed as their decimal text, as the canonical events store them.
    """
    if len(values) <= _SMALL:
        items = _as_list(values)
        null = np.array([_is_null(v) for v in items], dtype=bool)
        texts = ["" if n else _id_text(v) for v, n in zip(items, null.tolist(), strict=True)]
        codes = np.array([_text_code(t) for t in texts], dtype=np.int64)
    else:
        series = values if isinstance(values, pd.Series) else pd.Series(list(values), dtype=object)
        positions, uniques = pd.factorize(series, sort=False)  # null -> -1; each distinct id is hashed once
        null = positions < 0
        if isinstance(uniques.dtype, pd.StringDtype):  # text already: no per-value conversion
            texts = np.append(uniques.to_numpy(dtype=object), "")
        else:
            texts = np.array([_id_text(u) for u in uniques] + [""], dtype=object)
        codes = pd.util.hash_array(texts, categorize=False).view("int64")[positions]
    codes[null] = NULL_ID
    codes[(codes == NULL_ID) & ~null] = NULL_ID + 1  # keep the null code for nulls only
    return codes


_CODES: dict[str, int] = {}
"""Hash codes of recently coded id texts (a looked-up user's new events come back on every lookup)."""


def _text_code(text: str) -> int:
    """The int64 hash of one id text (``pd.util.hash_array``, which gives each value the same hash whether or not it
    categorizes first), remembered for the next lookups (at most ~100k texts)."""
    code = _CODES.get(text)
    if code is None:
        code = int(pd.util.hash_array(np.array([text], dtype=object), categorize=False).view("int64")[0])
        if len(_CODES) >= 100_000:
            _CODES.clear()
        _CODES[text] = code
    return code


def _id_text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # integer ids read with NaN arrive as float
    return str(value)
