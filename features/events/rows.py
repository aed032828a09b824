"""What both event logs share before storage: the errors, the append result, the event key and the row checks.

A checked row is a tuple ``(key, user_id, ts_us, behavior, item_id, category_id, channel, amount,
received_at_us)``: ``key`` the client's ``event_id`` or :func:`event_key` (text), ``ts_us`` and
``received_at_us`` UTC epoch microseconds (int), ``amount`` a float >= 0 or None, the other fields text or None.
:class:`features.events.log.EventLog` (SQLite) inserts these rows as they are, and
:class:`features.events.redis_log.RedisEventLog` sends them to Redis.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features.events.schema import BEHAVIORS, CANONICAL_COLUMNS, CHANNELS, REQUIRED_COLUMNS

__all__ = ["AppendResult", "EventLogError", "EventLogInputError", "Row", "event_key", "frame_rows", "record_rows"]

Row = tuple[Any, ...]
"""One checked event (see the module docstring)."""


class EventLogError(Exception):
    """The event log cannot be opened, read or written (locked too long, not a log, disk full, closed)."""

    exit_code = 6  # CLI exit code: unavailable


class EventLogInputError(EventLogError, ValueError):
    """Events given to :meth:`EventLog.append` break the canonical contract; nothing of the batch was stored."""

    exit_code = 1  # CLI exit code: bad input


@dataclass(frozen=True)
class AppendResult:
    """One append: ``accepted`` events stored now, ``duplicates`` already in the log (or repeated within the batch),
    ``last_seq`` the log's highest seq after the append (0 for an empty log)."""

    accepted: int
    duplicates: int
    last_seq: int

    def to_dict(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates, "last_seq": self.last_seq}


def event_key(user_id: str, ts_us: int, behavior: str, item_id: str | None, category_id: str | None,
              channel: str | None, amount: float | None) -> str:
    """The id of an event sent without ``event_id``: SHA-256 (hex) of its canonical fields as compact JSON
    (``ts_us`` in UTC epoch microseconds, a null or NaN ``amount`` as null), so an identical event gets the same id
    in every process."""
    if amount is not None:
        amount = None if math.isnan(amount) else float(amount) + 0.0  # -0.0 and 0.0 are one amount
    text = json.dumps([user_id, int(ts_us), behavior, item_id, category_id, channel, amount],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


_BEHAVIOR_SET = frozenset(BEHAVIORS)
_CHANNEL_SET = frozenset(CHANNELS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def _plain(values: list[Any]) -> list[Any]:
    """``values`` with every kind of null (None, NaN, pd.NA, NaT) as None."""
    return [None if v is None or v is pd.NA or v is pd.NaT or (type(v) is float and v != v) else v for v in values]


def _ts_us(value: Any) -> int | None:
    """UTC epoch microseconds of a datetime (naive = UTC) or of an integer already in microseconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return (value - _EPOCH) // _US
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise EventLogInputError(f"ts {value!r} is neither a datetime nor epoch microseconds; nothing was stored")


def checked_rows(columns: dict[str, list[Any]], received_at_us: int) -> list[Row]:
    """The rows of aligned column lists (nulls as None, ``ts`` in UTC epoch microseconds), each checked against the
    contract; :class:`EventLogInputError` names the first bad row."""
    users, ts_us, behaviors = columns["user_id"], columns["ts"], columns["behavior"]
    items, cats, chans, amounts, given = (columns["item_id"], columns["category_id"], columns["channel"],
                                          columns["amount"], columns["event_id"])
    n = len(users)
    out = []

    def bad(i: int, what: str) -> EventLogInputError:
        return EventLogInputError(f"event {i} (of {n}) {what}; nothing was stored")

    for i, (u, t, b, item, cat, chan, a, key) in enumerate(
        zip(users, ts_us, behaviors, items, cats, chans, amounts, given, strict=True)
    ):
        if type(u) is not str or not u:
            raise bad(i, "has no user_id text")
        if t is None:
            raise bad(i, "has no ts")
        if b not in _BEHAVIOR_SET:
            raise bad(i, f"has behavior {b!r}, not one of {', '.join(BEHAVIORS)}")
        if chan is not None and chan not in _CHANNEL_SET:
            raise bad(i, f"has channel {chan!r}, not one of {', '.join(CHANNELS)}")
        if (item is not None and type(item) is not str) or (cat is not None and type(cat) is not str):
            raise bad(i, "has an item_id or category_id that is not text")
        if a is not None:
            try:
                a = float(a) + 0.0
            except (TypeError, ValueError):
                raise bad(i, f"has amount {a!r}, not a number") from None
            if a != a:
                a = None
            elif not 0.0 <= a < math.inf:
                raise bad(i, f"has amount {a!r}, not a finite number >= 0")
        if key is not None and type(key) is not str:
            raise bad(i, "has an event_id that is not text")
        if not key:
            key = event_key(u, t, b, item, cat, chan, a)
        out.append((key, u, t, b, item, cat, chan, a, received_at_us))
    return out


def frame_rows(events: pd.DataFrame, received_at_us: int) -> list[Row]:
    """The rows of a canonical frame (see :meth:`features.events.log.EventLog.append`)."""
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise EventLogInputError(f"the events lack column(s) {', '.join(missing)}; columns seen: "
                                 f"{', '.join(map(str, events.columns))}")
    n = len(events)
    try:
        ts = pd.to_datetime(events["ts"], utc=True)
    except (ValueError, TypeError) as exc:
        raise EventLogInputError(f"ts is not a timestamp column: {exc}; nothing was stored") from None
    nat = np.flatnonzero(ts.isna().to_numpy())
    if len(nat):
        raise EventLogInputError(f"event {int(nat[0])} (of {n}) has no ts; nothing was stored")
    columns = {c: _plain(events[c].tolist()) if c in events.columns else [None] * n
               for c in (*CANONICAL_COLUMNS, "event_id") if c != "ts"}
    columns["ts"] = ts.dt.as_unit("us").astype("int64").tolist()
    return checked_rows(columns, received_at_us)


def record_rows(records: Sequence[Mapping[str, Any]], received_at_us: int) -> list[Row]:
    """The rows of event mappings (see :meth:`features.events.log.EventLog.append_records`)."""
    names = (*CANONICAL_COLUMNS, "event_id")
    columns = {c: _plain([r.get(c) for r in records]) for c in names}
    columns["ts"] = [_ts_us(t) for t in columns["ts"]]
    return checked_rows(columns, received_at_us)
