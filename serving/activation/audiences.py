"""Budget-aware audience sizing for one activation action.

:func:`select_audience` takes the output of :func:`serving.activation.actions.recommend`, keeps the users assigned one
action, ranks them by ``priority`` (expected value of acting now; ties broken by ``user_id``) and cuts the ranking:

- no ``budget`` and no ``top_k``: the prefix with the highest expected profit ``sum(expected_value) - size x cost``.
  With one cost per user and users sorted by value this keeps exactly the users whose expected value exceeds the
  cost (a user worth exactly the cost adds nothing and is left out), so the audience may be empty or everyone;
- ``budget``: the best users whose total cost fits in the budget (unprofitable users included: the budget is spent);
- ``top_k``: the best ``top_k`` users (fewer when fewer have the action);
- both: the tighter of the two.

With ``profitable_only=True`` the budget / top_k cut is also capped by the most profitable prefix, so money is never
spent on a user expected to return less than the action costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from serving.activation.actions import ACTIONS, ActivationConfig, ActivationError

AUDIENCE_COLUMNS: tuple[str, ...] = (
    "user_id", "action", "priority", "expected_value", "expected_revenue", "action_p", "incremental_p",
)
"""Columns of the recommended frame that :func:`select_audience` reads."""


@dataclass(frozen=True)
class AudienceSummary:
    """Expected outcome of activating one audience (money in the shop's currency).

    ``expected_incremental`` is the sum of the users' ``incremental_p``: the conversions the action causes (extra
    buyers for p_buy actions, saved lapsers for ``win_back``). ``expected_untreated`` is the sum of ``action_p``, the
    untreated course (buyers, or for ``win_back`` lapsers, expected without any action) and ``untreated_rate`` its
    mean (NaN for an empty audience): the forecast a control group's realized rate checks. ``lift`` / ``lift_source``
    are the effect used and where it came from (``prior`` or ``measured``). ``expected_revenue`` /
    ``expected_value`` are the urgency-weighted incremental revenue and margin of acting now;
    ``expected_profit = expected_value - total_cost``. ``rule`` names the cut: ``max_profit``, ``budget``,
    ``top_k``, or several joined by ``+`` when more than one limit applied. ``candidates`` counts the users who
    had the action before the cut.
    """

    action: str
    size: int
    candidates: int
    cost_per_user: float
    total_cost: float
    expected_incremental: float
    expected_untreated: float
    expected_revenue: float
    expected_value: float
    expected_profit: float
    untreated_rate: float
    lift: float
    lift_source: str
    rule: str
    budget: float | None = None
    top_k: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in asdict(self).items()}


def select_audience(
    frame: pd.DataFrame,
    action: str,
    cfg: ActivationConfig | None = None,
    *,
    budget: float | None = None,
    top_k: int | None = None,
    profitable_only: bool = False,
) -> tuple[pd.DataFrame, AudienceSummary]:
    """The users to activate with ``action`` and the expected outcome.

    ``frame``: :func:`serving.activation.actions.recommend` output (one row per user). Returns the selected rows of
    ``frame``, best first, with a fresh index and an ``audience_rank`` column (1 = act first), and an
    :class:`AudienceSummary`. The cost per user is ``cfg.cost[action]``; ``budget`` is in currency (>= 0),
    ``top_k`` a count (>= 0); ``profitable_only`` also caps those cuts at the most profitable prefix. See the module
    docstring for the cut.
    """
    cfg = cfg or ActivationConfig()
    if action not in ACTIONS:
        raise ActivationError(f"unknown action {action!r}; choose one of {list(ACTIONS)}")
    missing = [c for c in AUDIENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise ActivationError(f"the scores lack column(s) {missing}; "
                              "use an audience file written by `propensity score`")
    if budget is not None and not (isinstance(budget, (int, float)) and np.isfinite(budget) and budget >= 0):
        raise ActivationError(f"budget must be a finite number >= 0, got {budget!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise ActivationError(f"top_k must be an integer >= 0, got {top_k!r}")

    cost = cfg.cost_of(action)
    pool = frame[frame["action"].to_numpy(dtype=object) == action]
    pool = pool.sort_values(["priority", "user_id"], ascending=[False, True], kind="mergesort")
    value = pool["expected_value"].to_numpy(dtype="float64", na_value=np.nan)
    if np.isnan(value).any():
        raise ActivationError(f"expected_value is null for {int(np.isnan(value).sum())} {action} user(s)")

    size, rule = _cut(value, cost, budget, top_k, profitable_only)
    chosen = pool.iloc[:size].reset_index(drop=True)
    chosen["audience_rank"] = np.arange(1, size + 1, dtype="int64")
    p = chosen["action_p"].to_numpy(dtype="float64", na_value=np.nan)
    total_cost = cost * size
    total_value = float(value[:size].sum())
    summary = AudienceSummary(
        action=action,
        size=size,
        candidates=len(pool),
        cost_per_user=cost,
        total_cost=total_cost,
        expected_incremental=float(chosen["incremental_p"].to_numpy(dtype="float64", na_value=0.0).sum()),
        expected_untreated=float(p.sum()),
        expected_revenue=float(chosen["expected_revenue"].to_numpy(dtype="float64", na_value=0.0).sum()),
        expected_value=total_value,
        expected_profit=total_value - total_cost,
        untreated_rate=float(p.mean()) if size else float("nan"),
        lift=cfg.lift_of(action),
        lift_source=cfg.lift_source[action],
        rule=rule,
        budget=None if budget is None else float(budget),
        top_k=None if top_k is None else int(top_k),
    )
    return chosen, summary


def _cut(
    value: np.ndarray, cost: float, budget: float | None, top_k: int | None, profitable_only: bool
) -> tuple[int, str]:
    """Audience size over users sorted best first, and the name of the rule that set it."""
    n = len(value)
    profit = np.concatenate([[0.0], np.cumsum(value - cost)])
    best = int(np.argmax(profit))  # first maximum: the smallest most profitable audience
    if budget is None and top_k is None:
        return best, "max_profit"
    size, rules = (best, ["max_profit"]) if profitable_only else (n, [])
    if budget is not None:
        affordable = n if cost == 0 else int(np.floor(budget / cost * (1 + 1e-12)))
        size, rules = min(size, affordable), rules + ["budget"]
    if top_k is not None:
        size, rules = min(size, int(top_k)), rules + ["top_k"]
    return size, "+".join(rules)
