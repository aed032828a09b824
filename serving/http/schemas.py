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

``POST /events`` (:func:`parse_events`) takes the same events plus an optional ``event_id`` (the
idempotency key), checks them by the same rules, with the receiving time as ``as_of``, and names the index of the
first bad event.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

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


MAX_INGEST_EVENTS = 10_000
"""Most events one ``POST /events`` request may carry (a larger one is answered 413)."""
MAX_EVENT_ID_CHARS = 200


class IngestEvent(EventIn):
    """One event posted to ``/events``: the fields of :class:`EventIn` plus an optional ``event_id`` (text or
    integer, at most 200 characters), the idempotency key: an event whose id is already stored is a duplicate.
    Without it the full event is the key, so an identical event sent again is a duplicate."""

    event_id: StrictStr | StrictInt | None = None

    @field_validator("event_id")
    @classmethod
    def _event_id(cls, v: str | int | None) -> str | None:
        text = _id_text(v, required=False)
        if text is not None and len(text) > MAX_EVENT_ID_CHARS:
            raise ValueError(f"must be at most {MAX_EVENT_ID_CHARS} characters, got {len(text)}")
        return text

    @model_validator(mode="after")
    def _not_future(self, info: ValidationInfo) -> IngestEvent:
        """With ``latest`` (an aware datetime) in the validation context, refuse a ts after it."""
        latest = (info.context or {}).get("latest")
        if latest is not None and self.ts > latest:  # type: ignore[operator]
            raise ValueError(f"ts {self.ts.isoformat()} is later than the time it was received plus the "  # type: ignore[union-attr]
                             f"tolerance, {latest.isoformat()}")
        return self


class EventsRequest(BaseModel):
    """``POST /events`` body: ``{"events": [event, ...]}`` with 1 to 10,000 events, stored all or none."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    events: list[IngestEvent]


class EventsRequestError(ScoreRequestError):
    """A ``/events`` body that breaks the contract; ``index`` is the first bad event's position (None when the body
    itself is wrong)."""

    def __init__(self, message: str, status: int = 422, index: int | None = None) -> None:
        super().__init__(message, status)
        self.index = index


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
    return _summary(exc.errors(include_url=False), limit)


def _summary(errors: list[Any], limit: int = 5) -> str:
    seen: dict[str, str] = {}
    for err in errors:
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


def _event_index(loc: tuple[Any, ...]) -> int | None:
    return loc[1] if len(loc) > 1 and loc[0] == "events" and isinstance(loc[1], int) else None


def parse_events(
    doc: Any, *, now: datetime, future_tolerance_s: float, max_events: int = MAX_INGEST_EVENTS
) -> list[IngestEvent]:
    """Check a decoded ``/events`` body; return its events in request order (canonical values: ``ts`` an aware UTC
    datetime, behavior and channel canonical, ids as text, ``event_id`` None where not given).

    ``now`` (tz-aware) is the receiving time: an event later than ``now`` plus ``future_tolerance_s`` seconds is
    refused. Raises :class:`EventsRequestError` naming the first bad event (``index``) and why; 413 beyond
    ``max_events`` events.
    """
    if not isinstance(doc, dict):
        raise EventsRequestError(f"the body must be a JSON object with 'events', got {type(doc).__name__}")
    events = doc.get("events")
    if isinstance(events, list):
        if not events:
            raise EventsRequestError("events must hold at least one event")
        if len(events) > max_events:
            raise EventsRequestError(f"too many events: {len(events)} > {max_events} per request; send them in "
                                     "several requests", status=413)
    latest = now.astimezone(UTC) + timedelta(seconds=future_tolerance_s)
    try:
        req = EventsRequest.model_validate(doc, context={"latest": latest})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        indexes = [i for e in errors if (i := _event_index(tuple(e.get("loc", ())))) is not None]
        if not indexes:
            raise EventsRequestError(f"invalid /events request: {describe(exc)}") from None
        first = min(indexes)
        only = [e for e in errors if _event_index(tuple(e.get("loc", ()))) == first]
        raise EventsRequestError(f"invalid /events request: {_summary(only)}; nothing was stored",
                                 index=first) from None
    return list(req.events)


def parse_events_request(
    doc: Any, *, now: datetime, future_tolerance_s: float, max_events: int = MAX_INGEST_EVENTS
) -> pd.DataFrame:
    """:func:`parse_events` as a canonical frame (``ts`` UTC microseconds) with an ``event_id`` column."""
    events = parse_events(doc, now=now, future_tolerance_s=future_tolerance_s, max_events=max_events)
    columns = [*CANONICAL_COLUMNS, "event_id"]
    frame = pd.DataFrame([[getattr(e, c) for c in columns] for e in events], columns=columns)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).dt.as_unit("us")
    frame["amount"] = frame["amount"].astype("float64")
    return frame
