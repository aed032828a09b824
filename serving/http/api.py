"""The request and response models of the HTTP API: the OpenAPI document and the typed client are generated from
them, and the handlers parse or build with them.

- ``/score`` parses its body with :class:`serving.http.schemas.ScoreRequest` (re-exported here), ``/events`` with
  :class:`serving.http.schemas.EventsRequest` (likewise) and answers with :class:`EventsResponse`;
- ``/audience`` parses with :class:`AudienceRequest` and answers with :class:`AudienceResponse`;
- ``/lookup`` is the hot path: its body is checked by :func:`serving.http.app.lookup_ids` (the same rules as
  :class:`LookupRequest`, kept equal by a test) and its answer is spliced from the stored JSON payloads, which hold
  the fields of :class:`LookupResult` (a test validates real answers against the schema);
- ``/score`` answers likewise with :class:`ScoreResponse`; ``/readyz`` with :class:`ReadinessResponse`; every 4xx/5xx
  with :class:`ErrorResponse`.

Objects are open in the published schema (a later version may add a field without breaking a client); the tests
close them, so a field the models do not declare fails there. Probabilities are in [0, 1]; money is in the shop's
currency; times are ISO 8601 text in UTC.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from features.segments.segmenter import AIPL_CODES, LIFECYCLE_CODES, RFM_CODES
from serving.activation.actions import ACTIONS, NO_ACTION
from serving.http.schemas import EventIn, EventsRequest, IngestEvent, ScoreRequest

__all__ = [
    "AudienceRequest", "AudienceResponse", "ErrorResponse", "EventIn", "EventsRequest", "EventsResponse",
    "HealthResponse", "IngestEvent", "LookupRequest",
    "LookupResponse", "LookupResult", "NotScored", "ReadinessResponse", "ScoreRequest", "ScoreResponse", "ScoreResult",
    "StoreStatus",
]

AudienceAction = Literal[ACTIONS]  # type: ignore[valid-type]
Action = Literal[(*ACTIONS, NO_ACTION)]  # type: ignore[valid-type]
AiplLayer = Literal[tuple(AIPL_CODES)]  # type: ignore[valid-type]
Lifecycle = Literal[tuple(LIFECYCLE_CODES)]  # type: ignore[valid-type]
RfmGroup = Literal[tuple(RFM_CODES)]  # type: ignore[valid-type]

MAX_AUDIENCE_IDS = 100_000
"""Most user ids one ``/audience`` answer carries (``limit`` above it is cut to it)."""

class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


# ------------------------------------------------------------------------------------------------- /lookup
class LookupRequest(_Model):
    """``POST /lookup`` body: the users to look up (at most ``serving.lookup_max_ids``; integers are read as their
    decimal text). Other keys are ignored."""

    user_ids: list[StrictStr | StrictInt] = Field(min_length=1, description="User ids, strings or integers.")


class _Scores(_Model):
    """The score fields a stored or fresh record may carry (absent when the snapshot or the models lack them)."""

    p_buy: float | None = Field(None, ge=0.0, le=1.0, description="Probability of a purchase within the horizon.")
    p_lapse: float | None = Field(
        None, ge=0.0, le=1.0, description="Probability that a past buyer lapses; null for users who never bought."
    )
    aipl_layer: AiplLayer | None = Field(None, description="AIPL audience layer (L > P > I > A > none).")
    lifecycle: Lifecycle | None = Field(None, description="Lifecycle stage.")
    rfm_group: RfmGroup | None = Field(None, description="RFM group.")
    rule_score: float | None = Field(None, description="Transparent rule score (the baseline models must beat).")
    p_alive: float | None = Field(
        None, ge=0.0, le=1.0, description="BG/NBD probability that the buyer is still a customer; null if never bought."
    )
    expected_purchases_30d: float | None = Field(None, ge=0.0, description="Expected purchase days in 30 days.")
    expected_purchases_90d: float | None = Field(None, ge=0.0, description="Expected purchase days in 90 days.")
    clv_365d: float | None = Field(None, ge=0.0, description="Expected spend in the next 365 days (currency).")
    next_order_date: str | None = Field(
        None, description="Expected date of the next order (ISO date); null when more likely never."
    )
    reasons_buy: list[str] | None = Field(None, description="Features behind p_buy, strongest first.")
    reasons_buy_text: list[str] | None = Field(
        None, description="reasons_buy as phrases with the user's values, feature in brackets: "
        "'carted 2 items in the last day (cart_count_1d)'.")
    reasons_lapse: list[str] | None = Field(None, description="Features behind p_lapse, strongest first.")
    reasons_lapse_text: list[str] | None = Field(
        None, description="reasons_lapse as phrases with the user's values, feature in brackets.")
    model_buy: str | None = Field(None, description="Version of the last-mile buyer model that scored the user.")
    model_lapse: str | None = Field(None, description="Version of the lapse-risk model that scored the user.")
    as_of: str | None = Field(None, description="Feature cutoff, ISO 8601.")


class LookupResult(_Scores):
    """One user of a ``/lookup`` answer: the stored record (``found: true``) or, for a user the snapshot does not
    hold, the snapshot's population defaults (``found: false``)."""

    user_id: str
    found: bool
    action: Action | None = Field(None, description="Recommended activation action ('none': leave alone).")
    action_deadline: str | None = Field(None, description="Act before this time (ISO 8601), null when no deadline.")
    urgency: float | None = Field(None, description="Weight of acting now rather than later, in [0, 1].")
    action_p: float | None = Field(None, description="Untreated probability the action rides on.")
    lift: float | None = Field(None, description="Incremental effect of the action.")
    incremental_p: float | None = Field(None, description="Conversions the action causes: action_p x lift.")
    expected_revenue: float | None = Field(None, description="Urgency-weighted incremental revenue.")
    expected_value: float | None = Field(None, description="Urgency-weighted incremental margin.")
    action_cost: float | None = Field(None, description="Cost of the action for this user.")
    expected_profit: float | None = Field(None, description="expected_value - action_cost.")
    priority: float | None = Field(None, description="Activation priority; higher first.")


class LookupResponse(_Model):
    """``POST /lookup`` answer: one result per requested id, in request order, all from one snapshot."""

    snapshot_id: str
    scored_at: str = Field(description="When the snapshot was published, ISO 8601.")
    as_of: str | None = Field(None, description="Feature cutoff of the snapshot, ISO 8601.")
    results: list[LookupResult]


# ------------------------------------------------------------------------------------------------- /score
class ScoreResult(_Scores):
    """A user of a ``/score`` request scored from the posted events."""

    user_id: str
    scored: Literal[True]


class NotScored(_Model):
    """A user of a ``/score`` request with no event before ``as_of``."""

    user_id: str
    scored: Literal[False]
    reason: str


class ScoreResponse(_Model):
    """``POST /score`` answer: one result per distinct user of the events, in first-seen order."""

    as_of: str = Field(description="The request's cutoff, ISO 8601 in UTC.")
    models: dict[str, str] = Field(description="Model version per target used for this answer.")
    results: list[ScoreResult | NotScored]


# ------------------------------------------------------------------------------------------------- /audience
class AudienceRequest(_Model):
    """``POST /audience`` body: the budget-aware audience for one action. Other keys are ignored."""

    action: AudienceAction
    budget: Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)] | None = Field(
        None, description="Spend cap in currency units."
    )
    top_k: StrictInt | None = Field(None, ge=0, le=10**9, description="At most this many users.")
    limit: StrictInt = Field(
        1000, ge=0, le=10**9, description=f"User ids returned, best first (at most {MAX_AUDIENCE_IDS})."
    )


class AudienceResponse(_Model):
    """``POST /audience`` answer: the expected outcome of the selected audience and its user ids, best first."""

    action: AudienceAction
    size: int = Field(description="Users selected.")
    candidates: int = Field(description="Users who had the action before the cut.")
    cost_per_user: float
    total_cost: float
    expected_incremental: float = Field(description="Conversions the action causes (sum of incremental_p).")
    expected_untreated: float = Field(description="Conversions (or lapses) expected without any action.")
    expected_revenue: float
    expected_value: float
    expected_profit: float
    untreated_rate: float | None = Field(description="Mean untreated probability; null for an empty audience.")
    lift: float
    lift_source: Literal["prior", "measured"]
    rule: str = Field(description="The cut that applied: max_profit, budget, top_k, or several joined by '+'.")
    budget: float | None = None
    top_k: int | None = None
    snapshot_id: str
    campaign_id: str | None = Field(None, description="The campaign this audience became (null: none recorded).")
    control_size: int = Field(0, description="Users held out as control (never sent).")
    user_ids: list[str] = Field(description="The send list: treatment users only, best first.")


# ------------------------------------------------------------------------------------------------- /events
class EventsResponse(_Model):
    """``POST /events`` answer, sent once every event of the request is committed to the event log."""

    accepted: int = Field(ge=0, description="Events stored by this request.")
    duplicates: int = Field(
        ge=0, description="Events already stored (same event_id, or the same full event when none was given)."
    )
    last_seq: int = Field(ge=0, description="The event log's highest sequence number after this request.")


# ------------------------------------------------------------------------------------------------- probes, errors
class HealthResponse(_Model):
    """``GET /healthz``: the process is alive."""

    status: Literal["ok"]


class StoreStatus(_Model):
    """The score store as the readiness probe found it."""

    ok: bool
    snapshot_id: str | None
    backend: str | None = None
    scored_at: str | None = Field(None, description="Publish time of the served snapshot, ISO 8601.")


class EventLogStatus(_Model):
    """The event log ``/events`` appends to, as this worker holds it (it does not count towards readiness)."""

    ok: bool = Field(description="The log is open: /events takes events.")
    fresh_scores: bool = Field(description="Lookups of users with events newer than the snapshot are rescored.")
    error: str | None = Field(None, description="Why the log is not open (it is tried again at every model check).")


class ReadinessResponse(_Model):
    """``GET /readyz``: 200 when every model is loaded and a snapshot is served, else 503 with ``reason``."""

    ready: bool
    models: dict[str, str | None] | None = Field(None, description="Loaded version per target (null: none).")
    model_source: Literal["registry", "directory"] | None = None
    store: StoreStatus | None = None
    events_log: EventLogStatus | None = None
    errors: list[str]
    reason: str | None = None


class ErrorResponse(_Model):
    """Every error answer: a machine-readable ``error`` code and a readable one-line ``message``."""

    error: str = Field(description="bad_json, bad_request, unauthorized, too_large, invalid, not_found, ...")
    message: str
    index: int | None = Field(None, description="POST /events: position of the first bad event in `events`.")
