"""The report's "did it work" section: each campaign's latest outcome read and the playbook KPIs against targets.

Input: outcome reads as written by :func:`serving.activation.outcomes.append_outcome` (dicts of
:meth:`serving.activation.outcome_result.OutcomeResult.to_dict`), one per campaign (its latest). Rates are shares,
money in the shop's currency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from serving.activation.outcome_result import AIPL_TARGETS, LAST_MILE_TARGET
from serving.report.html import note_block, num, section, share, table_block

LAYER_KPIS: tuple[tuple[str, str, float], ...] = (
    ("last_mile", "Last-mile activation rate", LAST_MILE_TARGET),
    *((layer, f"Conversion {layer}", target) for layer, target in AIPL_TARGETS.items()),
)


def campaigns_section(reads: Sequence[Mapping[str, Any]] | None) -> str:
    """The section: a results table (one row per campaign) and the KPI table, or a note when nothing was read."""
    if not reads:
        return section("outcomes", "Did it work? Campaigns against their control groups", [note_block(
            "outcomes", "No campaign outcome yet",
            "Every audience becomes a campaign with a control group; `propensity outcomes --events FILE` reads "
            "what happened after it and this section shows the incremental result.", wide=True)])
    return section("outcomes", "Did it work? Campaigns against their control groups",
                   [results_table(reads), kpi_table(reads)])


def results_table(reads: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for read in reads:
        groups, lift, forecast = read.get("groups", {}), read.get("lift"), read.get("forecast")
        t, c = groups.get("treatment") or {}, groups.get("control") or {}
        rows.append([
            read["campaign_id"], read["action"], read["status"],
            f"{share(t.get('rate'))} of {num(t.get('users', 0))}",
            f"{share(c.get('rate'))} of {num(c.get('users', 0))}",
            _interval(lift, "incremental_rate", share) if lift else "pending",
            ("yes" if lift["credible"] else "no") if lift else "-",
            _interval(lift, "incremental_profit", lambda v: num(v, ",.2f")) if lift else "-",
            (f"{share(forecast['predicted'])} vs {share(forecast['realized'])}" if forecast else "-"),
            f"{read['lift_used']['value']:+.0%} ({read['lift_used']['source']})",
        ])
    return table_block(
        "outcomes", "Treatment vs control, per campaign (latest read)",
        ["campaign", "action", "status", "treatment converted", "control converted", "incremental rate (95%)",
         "credible", "incremental profit (95%)", "forecast vs control outcome", "lift its value used"], rows,
        "Incremental = treatment rate minus control rate, the part the action caused; credible when the 95% "
        "interval excludes 0. Profit is incremental conversions x order value x margin minus the cost of every "
        "treated user. Forecast vs outcome: the control group's mean predicted chance against what it did "
        "without the action (win-back: lapse rate). Campaigns whose window is still open show no verdict.",
    )


def kpi_table(reads: Sequence[Mapping[str, Any]]) -> str:
    """Playbook KPIs pooled over the treated users of closed reads."""
    closed = [r for r in reads if r.get("status") == "closed"]
    rows = []
    for key, label, target in LAYER_KPIS:
        parts = [r.get("last_mile") if key == "last_mile" else (r.get("aipl") or {}).get(key) for r in closed]
        users = sum(p["users"] for p in parts if p)
        hits = sum(p["converted"] for p in parts if p)
        rate = hits / users if users else math.nan
        verdict = "n/a" if not users else ("met" if rate >= target else "missed")
        rows.append([label, f"{target:.0%}", share(rate), num(users), verdict])
    return table_block("kpis_playbook", "Playbook KPIs against their targets",
                       ["KPI", "target", "measured", "treated users", "verdict"], rows,
                       "From closed campaigns only. Last-mile activation: treated users of coupon and ad-retarget "
                       "campaigns who bought before their own deadline. Conversion by layer: treated users of the "
                       "layer who bought in their campaign's window.")


def _interval(lift: Mapping[str, Any], name: str, fmt: Any) -> str:
    return f"{fmt(lift[name])} ({fmt(lift[name + '_low'])} to {fmt(lift[name + '_high'])})"
