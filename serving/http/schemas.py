"""The ``/score`` request: events posted as JSON, checked against the canonical event contract.

The rules are those of :mod:`features.events.validate` (the file validator), applied to one small request in Python:

- ``user_id`` (required), ``item_id``, ``category_id``: strings or integers; text is trimmed, ``"123.0"``
  becomes ``"123"``, an empty ``user_id`` is refused;
- ``ts`` (required): ISO 8601 text (naive = UTC) or epoch seconds (number or numeric text), within about
  years 1200-5100, and not later than ``as_of`` plus the configured tolerance;
- ``behavior`` (required): ``view``, ``fav``, ``cart``, ``buy``, ``visit`` or an alias from
  :data:`features.events.schema.BEHAVIOR_ALIASES` (case and surrounding spaces ignored);
- ``channel``: a known channel, any other text becomes ``other``, empty is null;
- ``amount``: a finite number >= 0 (or null).

Unlike a file run, nothing is quarantined: one bad event rejects the request with a message naming it.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, StrictFloat, StrictInt, StrictStr, ValidationError, field_validator

from features.events.schema import BEHAVIOR_ALIASES, BEHAVIORS, CANONICAL_COLUMNS, CHANNELS

_EPOCH_LIMIT = 1e11  # seconds; same bound as the file validator
_INTEGRAL_TEXT = re.compile(r"^([+-]?[0-9]+)\.0+$")
_BEHAVIOR = {**{b: b for b in BEHAVIORS}, **BEHAVIOR_ALIASES}


class ScoreRequestError(ValueError):
    """The request does not meet the contract; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _id_text(value: str | int | None, *, required: bool) -> str | None:
    if value is None:
        if required:
            raise ValueError("is required")
        return None
    if isinstance(value, int):
        return str(value)
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("is not valid Unicode text (lone surrogate)") from None
    text = value.strip()
    if not text:
        if required:
            raise ValueError("must not be empty")
        return None
    m = _INTEGRAL_TEXT.match(text)
    return m.group(1) if m else text


def parse_ts(value: str | float) -> datetime:
    """A UTC datetime from ISO text (naive = UTC) or epoch seconds (number or numeric text)."""
    seconds: float | None = None
    if isinstance(value, (int, float)):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"{value!r} is out of range for epoch seconds") from None
    else:
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not text[:1].isdigit():
                raise ValueError(f"{value!r} is neither ISO 8601 text nor epoch seconds") from None
            try:
                ts = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(f"{value!r} is neither ISO 8601 text nor epoch seconds") from None
            return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if not math.isfinite(seconds) or abs(seconds) >= _EPOCH_LIMIT:
        raise ValueError(f"{value!r} is out of range for epoch seconds")
    try:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=round(seconds * 1_000_000))
    except OverflowError:
        raise ValueError(f"{value!r} is out of range for epoch seconds") from None


class EventIn(BaseModel):
    """One posted event: ``user_id`` (text or integer, not empty), ``ts`` (ISO 8601 text, naive = UTC, or epoch
    seconds), ``behavior`` (view, fav, cart, buy, visit, or an alias such as pv, addtocart, transaction),
    optional ``item_id`` and ``category_id``, ``channel`` (search, recommend, ad, live, promo; other text counts as
    other) and ``amount`` (a number >= 0). Unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_id: StrictStr | StrictInt
    ts: StrictStr | StrictInt | StrictFloat
    behavior: StrictStr
    item_id: StrictStr | StrictInt | None = None
    category_id: StrictStr | StrictInt | None = None
    channel: StrictStr | None = None
    amount: StrictFloat | StrictInt | None = None

    @field_validator("user_id")
    @classmethod
    def _user(cls, v: str | int) -> str:
        return _id_text(v, required=True)  # type: ignore[return-value]

    @field_validator("item_id", "category_id")
    @classmethod
    def _ids(cls, v: str | int | None) -> str | None:
        return _id_text(v, required=False)

    @field_validator("ts")
    @classmethod
    def _ts(cls, v: str | float) -> datetime:
        return parse_ts(v)

    @field_validator("behavior")
    @classmethod
    def _behavior(cls, v: str) -> str:
        canonical = _BEHAVIOR.get(v.strip().lower())
        if canonical is None:
            raise ValueError(f"{v!r} is not a known behavior ({', '.join(BEHAVIORS)} or an alias)")
        return canonical

    @field_validator("channel")
    @classmethod
    def _channel(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        c = v.strip().lower()
        return c if c in CHANNELS else "other"

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: float | None) -> float | None:
        if v is None:
            return None
        try:
            a = float(v)
        except OverflowError:
            raise ValueError("must be a finite number >= 0") from None
        if not math.isfinite(a) or a < 0:
            raise ValueError(f"{v!r} must be a finite number >= 0")
        return a + 0.0


class ScoreRequest(BaseModel):
    """``POST /score`` body: ``{"as_of": ISO 8601, "events": [event, ...]}``; ``as_of`` naive = UTC; at most
    ``serving.score_max_events`` events of at most ``serving.score_max_users`` distinct users."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    as_of: StrictStr
    events: list[EventIn]

    @field_validator("as_of")
    @classmethod
    def _as_of(cls, v: str) -> str:
        parse_ts(v)
        return v

    @property
    def as_of_utc(self) -> datetime:
        return parse_ts(self.as_of)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "int", "float") or str(part).startswith(("constrained-", "function-")):
            continue  # union branch names add nothing for the caller
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def describe(exc: ValidationError, limit: int = 5) -> str:
    """A readable one-line summary of the first ``limit`` validation problems."""
    seen: dict[str, str] = {}
    for err in exc.errors(include_url=False):
        where = _where(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        if where not in seen:
            seen[where] = msg
    items = [f"{where}: {msg}" for where, msg in list(seen.items())[:limit]]
    more = len(seen) - len(items)
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def parse_score_request(
    doc: Any, *, max_events: int, max_users: int, future_tolerance_s: float
) -> tuple[datetime, pd.DataFrame, list[str]]:
    """Check a decoded ``/score`` body and return ``(as_of, events frame, distinct user ids in first-seen order)``.

    The events frame has the canonical columns (``ts`` as UTC microsecond timestamps). Raises
    :class:`ScoreRequestError` with a message that names the offending field and event.
    """
    if not isinstance(doc, dict):
        raise ScoreRequestError(f"the body must be a JSON object, got {type(doc).__name__}")
    events = doc.get("events")
    if isinstance(events, list):
        if not events:
            raise ScoreRequestError("events must hold at least one event")
        if len(events) > max_events:
            raise ScoreRequestError(f"too many events: {len(events)} > {max_events} (serving.score_max_events)")
    try:
        req = ScoreRequest.model_validate(doc)
    except ValidationError as exc:
        raise ScoreRequestError(f"invalid /score request: {describe(exc)}") from None
    as_of = req.as_of_utc
    users = list(dict.fromkeys(e.user_id for e in req.events))
    if len(users) > max_users:
        raise ScoreRequestError(f"too many users: {len(users)} > {max_users} (serving.score_max_users)")
    limit = as_of + timedelta(seconds=future_tolerance_s)
    for i, e in enumerate(req.events):
        if e.ts > limit:  # type: ignore[operator]
            raise ScoreRequestError(
                f"events[{i}].ts {e.ts.isoformat()} is later than as_of {as_of.isoformat()} "  # type: ignore[union-attr]
                f"plus the tolerance of {future_tolerance_s / 3600:g} h"
            )
    frame = pd.DataFrame([e.model_dump() for e in req.events], columns=list(CANONICAL_COLUMNS))
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("us")
    frame["amount"] = frame["amount"].astype("float64")
    return as_of, frame, users
