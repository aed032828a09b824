"""HTML pieces of the audience report: escaping, chart and note blocks, tables, number and time formatting.

Every piece of text that reaches the page goes through :func:`esc`, so user-provided strings (model versions,
snapshot ids, action names) can never inject markup.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.segments.segmenter import PL_TARGET
from serving.activation.actions import ACTIONS, ActivationConfig
from serving.activation.audiences import AudienceSummary
from serving.report.charts import LAYER_NAMES, Chart
from serving.report.data import ACTION_LABELS, TARGET_LABELS, metric, scored_versions, unknown_actions
from serving.report.style import CSS

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
"""Content-Security-Policy of the page: nothing but inline styles and ``data:`` images may load."""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def share(x: float | None) -> str:
    """A share as a percentage with one decimal, ``n/a`` for None/NaN."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.1%}"


def num(x: Any, fmt: str = ",.0f") -> str:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return format(value, fmt) if np.isfinite(value) else "n/a"


def utc(value: Any) -> pd.Timestamp | None:
    """``value`` (datetime or ISO string; naive = UTC) as an aware UTC timestamp, None when unreadable."""
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    if pd.isna(ts):
        return None
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def when(value: Any) -> str:
    ts = utc(value)
    return ts.strftime("%Y-%m-%d %H:%M UTC") if ts is not None else str(value)


def age(older: Any, newer: Any) -> str:
    """``newer - older`` in hours (under two days) or days, ``n/a`` when either is unreadable."""
    a, b = utc(older), utc(newer)
    if a is None or b is None:
        return "n/a"
    hours = (b - a).total_seconds() / 3600
    return f"{hours:,.1f} hours" if abs(hours) < 48 else f"{hours / 24:,.1f} days"


def chart_block(chart: Chart, title: str, caption: str, *, wide: bool = False) -> str:
    cls = "card chart wide" if wide else "card chart"
    return (
        f'<figure class="{cls}" id="chart-{chart.name}"><h3>{esc(title)}</h3>'
        f'<img data-chart="{chart.name}" id="img-{chart.name}" alt="{esc(chart.alt)}" width="{chart.width}" '
        f'height="{chart.height}" src="data:image/png;base64,{chart.png}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def note_block(name: str, title: str, text: str, *, wide: bool = False) -> str:
    cls = "card note wide" if wide else "card note"
    return f'<div class="{cls}" id="note-{name}" data-note="{name}"><h3>{esc(title)}</h3><p>{esc(text)}</p></div>'


def table_block(name: str, title: str, head: Sequence[str], rows: Sequence[Sequence[str]], caption: str, *,
                wide: bool = True) -> str:
    cls = "card table wide" if wide else "card table"
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not rows:
        trs = f'<tr><td colspan="{len(head)}">nothing to show</td></tr>'
    return (f'<div class="{cls}" id="table-{name}"><h3>{esc(title)}</h3><table data-table="{name}">'
            f'<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table><p class="caption">{esc(caption)}</p></div>')


def section(name: str, title: str, parts: Sequence[str]) -> str:
    return f'<section id="{name}"><h2>{esc(title)}</h2><div class="grid">{"".join(parts)}</div></section>'


def page(title: str, body: Sequence[str]) -> str:
    """The whole document around ``body`` (already escaped pieces)."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>"
        + "\n".join(body)
        + "</main></body></html>\n"
    )


def kpis(frame: pd.DataFrame, summary: Mapping[str, Any], per_action: Sequence[AudienceSummary]) -> str:
    """The headline cards: users, assets, P+L share against its target, users to act on, expected outcome."""
    target = summary.get("pl_target", PL_TARGET)
    met = bool(summary.get("pl_target_met"))
    pl = (
        (f"P+L share of assets (target {target:.0%}: {'met' if met else 'missed'})", share(summary["pl_share"]),
         "good" if met else "bad") if summary.get("n_assets")
        else (f"P+L share of assets (target {target:.0%})", "n/a", "")
    )
    cards = [
        ("Users scored", f"{len(frame):,}", ""),
        ("Audience assets (A, I, P, L)", f"{summary.get('n_assets', 0):,}", ""),
        pl,
        ("Users with an action now", f"{int(frame['action'].isin(ACTIONS).sum()):,}", ""),
        ("Purchases the best-profit audiences cause (win-back saves not counted)",
         num(sum(s.expected_incremental for s in per_action if s.action != "win_back"), ",.1f"), ""),
        ("Incremental profit, best-profit audiences", num(sum(s.expected_profit for s in per_action), ",.2f"), ""),
    ]
    items = "".join(
        f'<div class="{f"kpi {cls}" if cls else "kpi"}" data-kpi="{i}"><div class="value">{esc(v)}</div>'
        f'<div class="label">{esc(k)}</div></div>'
        for i, (k, v, cls) in enumerate(cards)
    )
    return f'<section id="summary" class="kpis" data-table="kpis">{items}</section>'


def aipl_table(summary: Mapping[str, Any]) -> str:
    assets = summary.get("n_assets", 0)
    rows = []
    for layer, row in summary["aipl"].items():
        of_assets = row["count"] / assets if assets and layer != "none" else float("nan")
        rows.append([LAYER_NAMES[layer], f"{row['count']:,}", share(row["share"]), share(of_assets),
                     share(row["mean_p_buy"]), share(row["mean_p_lapse"])])
    return table_block(
        "aipl", "AIPL layers in numbers",
        ["layer", "users", "share of all", "share of assets", "mean chance of buying", "mean chance of lapsing"], rows,
        "Chances are the models' averages for the layer (n/a: no users, or no lapse score because nobody in the "
        "layer has bought).",
    )


def actions_table(per_action: Sequence[AudienceSummary], frame: pd.DataFrame) -> str:
    rows = [
        [s.action, ACTION_LABELS.get(s.action, ""), f"{s.candidates:,}", f"{s.size:,}", num(s.cost_per_user, ",.2f"),
         num(s.total_cost, ",.2f"), num(s.expected_untreated, ",.1f"), share(s.untreated_rate),
         f"{s.lift:+.0%} ({s.lift_source})", num(s.expected_incremental, ",.1f"), num(s.expected_profit, ",.2f")]
        for s in per_action
    ]
    caption = ("Best-profit audience: users ranked by the incremental value of acting now, cut where the margin the "
               "action causes minus its cost is highest. Untreated: buyers (win-back: lapsers) expected without the "
               "action; lift: the action's effect over that course (win-back: share of lapsers saved), a prior until "
               "a campaign measured it. Money in the shop's currency.")
    extra = unknown_actions(frame)
    if extra:
        caption += f" Actions not recognised and left out: {', '.join(extra)}."
    return table_block(
        "actions", "Per-action audiences",
        ["action", "what it is", "candidates", "best-profit audience", "cost per user", "total cost",
         "untreated", "untreated rate", "lift", "incremental conversions", "incremental profit"], rows, caption,
    )


def sample_users_table(samples: pd.DataFrame) -> str:
    """The report's sample users (:func:`serving.report.data.sample_users`): who each action would reach first and
    why, in the user's own numbers."""
    rows = [
        [str(r["user_id"]), str(r["action"]), share(r["action_p"]), num(r["expected_profit"], ",.2f"),
         LAYER_NAMES.get(r["aipl_layer"], str(r["aipl_layer"])), "; ".join(r["why"]) or "not explained"]
        for r in samples.to_dict("records")
    ]
    return table_block(
        "sample_users", "Sample users: who each action reaches first, and why",
        ["user", "action", "untreated chance", "expected profit", "layer", "why (strongest first)"], rows,
        "The best users of each action by the value of acting now. Why: the features that raise the score the action "
        "rides on (chance of buying; for win-back, of lapsing) the most, in the user's own numbers, feature name in "
        "brackets. The batch explains the users of each action's best-profit audience; others read 'not explained'.",
    )


def models_table(models: Mapping[str, Mapping[str, Any]], frame: pd.DataFrame) -> str:
    rows = []
    for target, info in models.items():
        m = info.get("metrics")
        trained = info.get("trained_at", info.get("test_as_of"))
        rows.append([TARGET_LABELS.get(target, target), str(info.get("version", "n/a")),
                     ", ".join(scored_versions(frame, target)) or "n/a", num(metric(m, "auc"), ".3f"),
                     num(metric(m, "log_loss"), ".4f"), num(metric(m, "ece"), ".4f"),
                     num(metric(m, "lift_top10"), ".2f"), when(trained) if trained is not None else "n/a"])
    return table_block(
        "models", "Models behind the scores",
        ["model", "registry version", "version that scored this audience", "AUC", "log loss",
         "calibration error (ECE)", "lift top 10%", "trained / tested as of"], rows,
        "AUC: chance a positive user ranks above a negative one (0.5 = random). Log loss and ECE: lower is better.",
    )


def freshness_table(snapshot: Mapping[str, Any], as_of: Sequence[str], generated_at: datetime) -> str:
    created = snapshot.get("created_at")
    rows = [
        ["scores as of (feature cutoff)", ", ".join(when(a) for a in as_of) or "n/a"],
        ["snapshot", str(snapshot.get("snapshot_id", "n/a"))],
        ["snapshot published", when(created) if created is not None else "n/a"],
        ["users in the snapshot", num(snapshot["rows"]) if "rows" in snapshot else "n/a"],
        ["report generated", when(generated_at)],
        ["age of the scores at report time", age(created, generated_at) if created is not None else "n/a"],
        ["age of the data at report time (since the cutoff)", age(as_of[-1], generated_at) if as_of else "n/a"],
    ]
    return table_block("freshness", "When the data is from", ["what", "when"], rows,
                       "Events up to the cutoff are used; anything after it is not in these scores.", wide=False)


def footer(activation: ActivationConfig) -> str:
    return (
        "<footer><p>AIPL layers: A browsed within 15 days, I favorited or carted within 90 days, P bought on one day "
        "within 365 days, L bought on two or more days within 365 days; the highest layer wins. Expected values are "
        "forecasts from the model probabilities and the activation economics (margin "
        f"{esc(share(activation.margin_rate))}), not measured results.</p></footer>"
    )
