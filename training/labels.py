"""Labels, strictly after the cutoff: pure Ibis expressions over canonical events.

Features at cutoff ``T`` see only events with ``ts < T``; labels see only events with ``T < ts <= T + window``.
An event at exactly ``T`` belongs to neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import ibis
import ibis.expr.types as ir
import numpy as np

from features.columns import Table, column_names, fill_nan, floats

BROWSE_DAYS = 15
INTEREST_DAYS = 90

Population = Literal["auto", "aipl", "past_buyers"]


@dataclass(frozen=True)
class LabelSpec:
    """Label windows and populations.

    ``horizon_days`` is H for the last-mile buyer label; ``lapse_days`` is N for the lapse label. ``population``
    picks the last-mile audience: ``aipl`` = the A and I audiences at T (any event in the 15 days before T, or a
    fav/cart in the 90 days before T); ``past_buyers`` = users with a purchase before T (for order exports);
    ``auto`` = ``past_buyers`` when the events before T hold only purchases, else ``aipl``.
    """

    horizon_days: int = 3
    lapse_days: int = 30
    population: Population = "auto"


def _ts(value: datetime) -> ir.TimestampScalar:
    if value.tzinfo is None:
        raise ValueError(f"cutoff {value!r} must be timezone-aware (UTC)")
    return ibis.literal(value, type="timestamp('UTC')")


def is_purchase_only(events: ir.Table, as_of: datetime) -> ir.BooleanScalar:
    """True when every event before ``as_of`` is a purchase (an order export, not a clickstream)."""
    before = events.filter(events.ts < _ts(as_of))
    return (before.behavior != "buy").sum() == 0  # type: ignore[no-any-return]


def last_mile_population(events: ir.Table, as_of: datetime, population: Population) -> ir.Table:
    """Users eligible for the last-mile label at ``as_of``: one row per ``user_id``."""
    t0 = _ts(as_of)
    before = events.filter(events.ts < t0)
    aipl = before.filter(
        (before.ts >= t0 - ibis.interval(days=BROWSE_DAYS))
        | (before.behavior.isin(["fav", "cart"]) & (before.ts >= t0 - ibis.interval(days=INTEREST_DAYS)))
    )
    buyers = before.filter(before.behavior == "buy")
    if population == "aipl":
        chosen = aipl
    elif population == "past_buyers":
        chosen = buyers
    else:
        purchase_only = is_purchase_only(events, as_of).execute()
        chosen = buyers if bool(purchase_only) else aipl
    return chosen.select("user_id").distinct()


def last_mile_labels(events: ir.Table, as_of: datetime, spec: LabelSpec) -> ir.Table:
    """``user_id, label`` (int8 0/1): did the user buy in ``(as_of, as_of + H]``, for the last-mile population."""
    t0 = _ts(as_of)
    t1 = _ts(as_of + timedelta(days=spec.horizon_days))
    pop = last_mile_population(events, as_of, spec.population)
    future = events.filter((events.ts > t0) & (events.ts <= t1) & (events.behavior == "buy"))
    bought = future.select("user_id").distinct().mutate(hit=ibis.literal(1, type="int8"))
    joined = pop.left_join(bought, "user_id")
    return joined.select(
        user_id=pop.user_id, label=joined.hit.fill_null(0).cast("int8")
    ).order_by("user_id")


def lapse_labels(events: ir.Table, as_of: datetime, spec: LabelSpec) -> ir.Table:
    """``user_id, label`` (int8 0/1) for users with a purchase before ``as_of``: 1 when they have no event at all
    (no purchase, no visit or view) in ``(as_of, as_of + N]``."""
    t0 = _ts(as_of)
    t1 = _ts(as_of + timedelta(days=spec.lapse_days))
    buyers = buyers_before(events, as_of)
    future = events.filter((events.ts > t0) & (events.ts <= t1))
    seen = future.select("user_id").distinct().mutate(hit=ibis.literal(1, type="int8"))
    joined = buyers.left_join(seen, "user_id")
    return joined.select(
        user_id=buyers.user_id, label=(1 - joined.hit.fill_null(0)).cast("int8")
    ).order_by("user_id")


def buyers_before(events: ir.Table, as_of: datetime) -> ir.Table:
    """``user_id`` of every user with a purchase before ``as_of`` (distinct): the lapse target's population."""
    return events.filter((events.ts < _ts(as_of)) & (events.behavior == "buy")).select("user_id").distinct()


LAPSE_POPULATION_COLUMN = "purchase_days"
"""Feature-table column that decides the lapse population: distinct purchase days before the cutoff (all history)."""


def lapse_population(features: Table) -> np.ndarray:
    """Rows (boolean, shape (n,)) of a feature table built at a cutoff that belong to the lapse target's
    population: users with at least one purchase before the cutoff, the users :func:`buyers_before` selects from the
    events (``purchase_days`` counts every buy before the cutoff, whatever its age). Scoring gives ``p_lapse`` to
    these rows only."""
    if LAPSE_POPULATION_COLUMN not in column_names(features):
        raise ValueError(f"feature table lacks {LAPSE_POPULATION_COLUMN!r}, which decides the lapse population")
    return fill_nan(floats(features, LAPSE_POPULATION_COLUMN), 0.0) >= 1


def buyer_events(events: ir.Table, as_of: datetime) -> ir.Table:
    """The events (all of them, before and after ``as_of``) of the users in :func:`buyers_before`, so the lapse
    target's feature builds can skip everyone else."""
    buyers = buyers_before(events, as_of).rename(_buyer="user_id")
    return events.semi_join(buyers, events.user_id == buyers._buyer)


def data_end(events: ir.Table) -> datetime:
    """Timestamp of the last event (executes)."""
    value = events.ts.max().execute()
    return value.to_pydatetime() if hasattr(value, "to_pydatetime") else value
