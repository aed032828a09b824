"""The result of one outcome read of a campaign (see :mod:`serving.activation.outcomes` for the definitions).

Plain frozen dataclasses, JSON-ready through :meth:`OutcomeResult.to_dict` (NaN becomes None) and flat numbers
through :meth:`OutcomeResult.metrics`. Rates are shares in [0, 1], conversions are users, money is in the shop's
currency, times are ISO 8601 UTC strings.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

CLOSED, IN_PROGRESS = "closed", "in progress"
LAST_MILE_TARGET = 0.50
"""Playbook target: at least half of the last-mile audience converts inside its window."""
AIPL_TARGETS = MappingProxyType({"P": 0.50, "I": 0.20, "A": 0.05})
"""Playbook targets of conversion by AIPL layer (share of treated users of the layer who buy in the window)."""


class OutcomeError(ValueError):
    """Events or a result that cannot be read against a campaign; the message is one line a CLI can print."""

    exit_code = 1  # CLI exit code: bad input


@dataclass(frozen=True)
class GroupOutcome:
    """One group: ``users``, ``conversions`` (see the module docstring), ``rate`` (NaN when empty), ``buyers``
    (members who bought in the window) and ``revenue`` (sum of their purchase ``amount`` in the window, currency)."""

    users: int
    conversions: int
    rate: float
    buyers: int
    revenue: float


@dataclass(frozen=True)
class Lift:
    """Treatment against control over a closed window; ``*_low`` / ``*_high`` bound the ``confidence`` interval.

    Rates are shares; conversions are users; revenue and profit in currency. ``relative_lift`` is relative to the
    untreated course (``relative_basis``: ``purchase rate``, or ``lapse rate`` for ``win_back``).
    """

    incremental_rate: float
    incremental_rate_low: float
    incremental_rate_high: float
    credible: bool
    incremental_conversions: float
    incremental_conversions_low: float
    incremental_conversions_high: float
    mean_order_value: float
    order_value_source: str
    incremental_revenue: float
    total_cost: float
    incremental_profit: float
    incremental_profit_low: float
    incremental_profit_high: float
    relative_lift: float
    relative_lift_low: float
    relative_lift_high: float
    relative_basis: str


@dataclass(frozen=True)
class Forecast:
    """Control group: mean predicted ``action_p`` against the realized rate of the course it predicts."""

    course: str
    users: int
    predicted: float
    realized: float
    realized_low: float
    realized_high: float
    expected_incremental: float | None


@dataclass(frozen=True)
class Kpi:
    """A playbook rate over treated users: ``rate = converted / users`` against ``target`` (``met`` None without
    users)."""

    users: int
    converted: int
    rate: float
    target: float | None
    met: bool | None


@dataclass(frozen=True)
class EventCounts:
    """Events read (``total``) and what became of them: ``used`` (members', inside the read window), ignored as
    ``before_as_of``, ``after_window`` (members', at or after the end of the read window) or ``outside_campaign``
    (at or after ``as_of`` from ``outside_users`` distinct non-members)."""

    total: int
    used: int
    before_as_of: int
    after_window: int
    outside_campaign: int
    outside_users: int


@dataclass(frozen=True)
class OutcomeResult:
    """One outcome read of one campaign (see the module docstring). Times are ISO 8601 UTC strings."""

    campaign_id: str
    action: str
    as_of: str
    window_close: str
    events_end: str
    status: str
    days_elapsed: float
    window_days: float
    conversion: str
    groups: dict[str, GroupOutcome]
    lift: Lift | None
    forecast: Forecast | None
    last_mile: Kpi | None
    aipl: dict[str, Kpi] | None
    events: EventCounts
    model_versions: dict[str, str]
    snapshot_id: str | None
    lift_used: dict[str, Any]
    margin_rate: float
    cost_per_user: float
    interval_method: str
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; NaN becomes None."""
        return _clean(asdict(self))  # type: ignore[no-any-return]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def metrics(self) -> dict[str, float]:
        """The numbers as flat ``name -> float`` (booleans as 0/1, None and NaN left out), e.g. for MLflow."""
        flat: dict[str, float] = {"days_elapsed": self.days_elapsed, "closed": float(self.status == CLOSED)}
        parts: dict[str, Any] = {"events": self.events, "lift": self.lift, "forecast": self.forecast,
                                 "last_mile": self.last_mile, **{f"group.{g}": o for g, o in self.groups.items()},
                                 **{f"aipl.{k}": v for k, v in (self.aipl or {}).items()}}
        for prefix, part in parts.items():
            for key, value in (asdict(part) if part is not None else {}).items():
                if isinstance(value, (bool, int, float)) and math.isfinite(float(value)):
                    flat[f"{prefix}.{key}"] = float(value)
        return flat


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def pooled_kpi(kpis: list[Kpi], target: float | None) -> Kpi:
    """Several :class:`Kpi` of the same rate pooled: users and converted summed, the rate recomputed."""
    users, hits = sum(k.users for k in kpis), sum(k.converted for k in kpis)
    rate = hits / users if users else math.nan
    return Kpi(users=users, converted=hits, rate=rate, target=target,
               met=None if target is None or not users else bool(rate >= target))


def playbook_kpis(results: list[OutcomeResult]) -> dict[str, Kpi]:
    """The playbook KPIs over several campaigns (e.g. the week's reads), pooled over users of closed reads:
    ``last_mile`` (treated users of last-mile actions who bought in their own window) and ``P`` / ``I`` / ``A``
    (treated users of the layer who bought in their campaign's window), each against its target."""
    closed = [r for r in results if r.status == CLOSED]
    out = {"last_mile": pooled_kpi([r.last_mile for r in closed if r.last_mile is not None], LAST_MILE_TARGET)}
    for layer, target in AIPL_TARGETS.items():
        out[layer] = pooled_kpi([r.aipl[layer] for r in closed if r.aipl is not None], target)
    return out
