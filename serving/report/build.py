"""One self-contained HTML report of the audience assets, for the marketer who acts on them.

:func:`build_report` turns the batch audience (:data:`serving.batch.run.AUDIENCE_COLUMNS`, one row per user) plus the
models' metadata into ONE HTML document: inline CSS, charts as base64 PNG ``data:`` images, no scripts and no
external fetches (a Content-Security-Policy in the page forbids them). Every chart is an ``<img>`` with
``data-chart="<name>"`` (names in :data:`CHART_NAMES`) and an alt text; a chart that cannot be drawn (no previous
snapshot, no calibration tables, empty audience) is replaced by a ``data-note="<name>"`` block saying why.
Tables carry ``data-table="<name>"`` (:data:`TABLE_NAMES`). :func:`write_report` writes the document to a file.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd

from serving.activation.actions import ActivationConfig
from serving.activation.flow import FlowError, FlowReport, aipl_flow
from serving.report.campaigns import campaigns_section
from serving.report.charts import (
    Chart,
    aipl_chart,
    calibration_chart,
    conversions_chart,
    flow_chart,
    lifecycle_chart,
    lift_chart,
    precision_chart,
    rfm_chart,
    scores_chart,
)
from serving.report.data import (
    TARGET_LABELS,
    ReportError,
    action_curves,
    action_summaries,
    as_of_values,
    check_model_info,
    lift_table,
    prepare_audience,
    sample_users,
    scored_versions,
    segment_summary,
)
from serving.report.html import (
    actions_table,
    age,
    aipl_table,
    chart_block,
    esc,
    footer,
    freshness_table,
    kpis,
    models_table,
    note_block,
    page,
    sample_users_table,
    section,
    share,
    utc,
    when,
)
from serving.report.monitoring import check_monitoring, monitoring_banner, monitoring_section

__all__ = ["CHART_NAMES", "TABLE_NAMES", "ReportError", "build_report", "write_report"]

STALE_AFTER = timedelta(days=2)
"""Scores older than this at report time get a warning banner."""
TABLE_NAMES: tuple[str, ...] = ("kpis", "aipl", "actions", "sample_users", "models", "freshness")


@dataclasses.dataclass(frozen=True)
class _Block:
    title: str
    caption: str
    wide: bool = False


_BLOCKS: dict[str, _Block] = {
    "aipl_layers": _Block(
        "Who is in the audience (AIPL layers)",
        "Look at the right bar: its green part (L and P, the buyers) should reach the dashed target line. Users in "
        "'none' have no behaviour inside any AIPL window and are not counted as assets.", wide=True),
    "aipl_flow": _Block("How users moved between layers since the previous snapshot", "", wide=True),
    "lifecycle": _Block(
        "Lifecycle stages",
        "New users show intent but have not bought; growth bought once; mature bought repeatedly; silent buyers "
        "stopped visiting after an order; churned users stopped visiting altogether."),
    "rfm_groups": _Block(
        "RFM groups (recency, frequency, money spent)",
        "Champions buy recently, often and a lot; 'at risk' groups were valuable but have not bought lately: they "
        "are the win-back pool."),
    "score_distributions": _Block(
        "How the scores are spread",
        "Most users sit near 0% chance of buying in the next days; the few on the right are the last-mile buyers. "
        "Past buyers right of the purple line are win-back candidates when they are valuable.", wide=True),
    "incremental_conversions": _Block(
        "Conversions the actions cause vs audience size, per action",
        "Each curve adds users best first and counts only what the action causes: the untreated chance times the "
        "action's lift (the prior, or the lift a campaign measured against its control group). For win-back it "
        "counts lapsers saved. The dot marks the audience with the highest expected profit after the action's "
        "cost.", wide=True),
    "untreated_rate": _Block(
        "What happens without the action, vs audience size",
        "The share of targeted users who would buy anyway (for win-back: lapse anyway), as the audience grows from "
        "the best user to all candidates: the forecast a control group checks. Dots: the best-profit audience.",
        wide=True),
    "calibration": _Block(
        "Do the predicted chances come true? (calibration)",
        "Measured on the held-out test cutoff at training time. Points on the dashed line mean a predicted 10% "
        "really happened 10% of the time; above the line the model is too cautious, below too eager.", wide=True),
    "lift": _Block(
        "How much better than random: lift at the top of the ranking",
        "Lift 5x at the top 5% means those users convert (or lapse) five times as often as an average user. "
        "Measured on the held-out test cutoff at training time."),
}
CHART_NAMES: tuple[str, ...] = tuple(_BLOCKS)
"""``data-chart`` names; each appears once, as a chart or (when it cannot be drawn) as a ``data-note``."""


def build_report(
    audience: pd.DataFrame,
    *,
    previous: pd.DataFrame | None = None,
    model_info: Mapping[str, Mapping[str, Any]] | None = None,
    calibration: Mapping[str, pd.DataFrame] | None = None,
    snapshot_info: Mapping[str, Any] | None = None,
    activation: ActivationConfig | None = None,
    outcomes: Sequence[Mapping[str, Any]] | None = None,
    monitoring: Mapping[str, Any] | None = None,
    generated_at: datetime,
) -> str:
    """The report as one HTML document (str; about 0.6 MB with every chart, whatever the audience size).

    ``audience``: the batch audience (one row per user). ``previous``: an earlier audience (``user_id``,
    ``aipl_layer``) for the AIPL flow. ``model_info``: ``{target: {"version", "metrics": {auc, log_loss, ece,
    lift_top1, ...}, "trained_at" / "test_as_of"}}`` for ``last_mile_buyer`` / ``lapse_risk`` (metric names may carry
    MLflow's ``lightgbm.`` prefix). ``calibration``: ``{target: reliability table}`` with ``mean_predicted``,
    ``observed_rate`` and ``count`` (:func:`training.evaluate.reliability_table`). ``snapshot_info``: the published
    snapshot (``snapshot_id``, ``created_at``, ``rows``; a :class:`serving.store.base.SnapshotInfo` works too).
    ``activation``: the economics used to size the per-action audiences. ``outcomes``: the latest outcome read of
    each campaign (dicts of :class:`serving.activation.outcome_result.OutcomeResult`) for the "did it work"
    section. ``monitoring``: the latest monitoring report (:meth:`serving.monitoring.result.MonitorReport.to_dict`,
    ``propensity monitor``'s ``latest.json``) for the "models in production" section and its alert banner; None:
    a note. ``generated_at``: the report time (passed in, never read from the clock). Raises :class:`ReportError` on
    input it cannot use.
    """
    if not isinstance(generated_at, datetime):
        raise ReportError(f"generated_at must be a datetime, got {type(generated_at).__name__}")
    activation = activation or ActivationConfig()
    frame = prepare_audience(audience, activation)
    models = check_model_info(model_info)
    snapshot = _snapshot_dict(snapshot_info)
    monitored = check_monitoring(monitoring)
    tables = _check_calibration(calibration)
    flow = _flow(previous, frame)
    summary = segment_summary(frame)
    curves = action_curves(frame, activation)
    per_action = action_summaries(frame, activation, curves)
    lift = lift_table(models)
    as_of = as_of_values(frame)

    users = len(frame) > 0
    no_users = "The audience is empty: no users were scored in this snapshot."
    no_action = "No user is assigned an activation action in this snapshot."
    blocks = {
        "aipl_layers": _block("aipl_layers", users and partial(aipl_chart, summary), no_users),
        "aipl_flow": _block(
            "aipl_flow", flow is not None and partial(flow_chart, flow),
            "No previous snapshot was given, so movements between layers cannot be shown. Pass the previous "
            "audience to see upgrades (A to I, I to P, P to L) and decay.", _flow_caption(flow)),
        "lifecycle": _block("lifecycle", users and partial(lifecycle_chart, summary), no_users),
        "rfm_groups": _block("rfm_groups", users and partial(rfm_chart, summary), no_users),
        "score_distributions": _block(
            "score_distributions", users and partial(scores_chart, frame, activation.lapse_threshold), no_users),
        "incremental_conversions": _block("incremental_conversions",
                                          bool(curves) and partial(conversions_chart, curves), no_action),
        "untreated_rate": _block("untreated_rate", bool(curves) and partial(precision_chart, curves),
                                     no_action),
        "calibration": _block("calibration", bool(tables) and partial(calibration_chart, tables),
                              "No calibration tables were given for this report."),
        "lift": _block("lift", not lift.empty and partial(lift_chart, lift),
                       "No lift metrics (lift_top1 .. lift_top20) in the model information."),
    }
    stamp = ", ".join(when(a) for a in as_of) or "unknown"
    body = [
        (
            f'<header><h1>Audience assets report</h1><p class="sub">Scores as of {esc(stamp)} &middot; '
            f"report generated {esc(when(generated_at))}</p></header>"
        ),
        *(f'<p class="warning" data-warning="{i}">{esc(w)}</p>'
          for i, w in enumerate(_warnings(frame, models, as_of, generated_at, snapshot))),
        monitoring_banner(monitored),
        kpis(frame, summary, per_action),
        section("assets", "Audience assets", [blocks["aipl_layers"], aipl_table(summary), blocks["aipl_flow"],
                                              blocks["lifecycle"], blocks["rfm_groups"]]),
        section("scores", "Scores", [blocks["score_distributions"]]),
        section("activation", "Who to activate, and what it is worth",
                [blocks["incremental_conversions"], blocks["untreated_rate"], actions_table(per_action, frame),
                 sample_users_table(sample_users(frame))]),
        campaigns_section(outcomes),
        monitoring_section(monitored),
        section("models", "Model quality and data freshness",
                [blocks["calibration"], blocks["lift"], freshness_table(snapshot, as_of, generated_at),
                 models_table(models, frame)]),
        footer(activation),
    ]
    return page(f"Audience assets report - {stamp}", body)


def write_report(html_text: str, path: Path | str) -> Path:
    """Write the document to ``path`` (parents created; written to a temp file, then renamed). Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(html_text, encoding="utf-8")
    os.replace(tmp, target)
    return target


def _block(name: str, draw: Callable[[], Chart] | bool, missing: str, caption: str | None = None) -> str:
    """The chart ``name`` drawn by ``draw``, or a note saying ``missing`` when there is nothing to draw (False)."""
    spec = _BLOCKS[name]
    if not callable(draw):
        return note_block(name, spec.title, missing, wide=spec.wide)
    return chart_block(draw(), spec.title, caption or spec.caption, wide=spec.wide)


def _flow(previous: pd.DataFrame | None, frame: pd.DataFrame) -> FlowReport | None:
    if previous is None:
        return None
    try:
        return aipl_flow(previous, frame)
    except FlowError as exc:
        raise ReportError(f"previous snapshot cannot be compared with this one: {exc}") from exc


def _flow_caption(flow: FlowReport | None) -> str | None:
    if flow is None:
        return None
    rates = ", ".join(f"{k} {share(v)}" for k, v in flow.rates.items() if k in ("A->I", "I->P", "P->L"))
    return (f"Read a row: where the users of that earlier layer are now. Left of the bold diagonal = moved up, "
            f"right = decayed. Key upgrades: {rates}. Assets {flow.reach_before:,} -> {flow.reach_after:,}; "
            f"P+L share {share(flow.pl_share_before)} -> {share(flow.pl_share_after)}.")


def _check_calibration(calibration: Mapping[str, pd.DataFrame] | None) -> dict[str, pd.DataFrame]:
    if not calibration:
        return {}
    need = ("mean_predicted", "observed_rate")
    out = {}
    for target, table in calibration.items():
        if not isinstance(table, pd.DataFrame) or any(c not in table.columns for c in need):
            raise ReportError(f"calibration[{target!r}] must be a reliability table with columns {list(need)} "
                              "(training.evaluate.reliability_table)")
        if len(table):
            out[str(target)] = table
    return out


def _snapshot_dict(info: Any) -> dict[str, Any]:
    if info is None:
        return {}
    if dataclasses.is_dataclass(info) and not isinstance(info, type):
        return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
    if not isinstance(info, Mapping):
        raise ReportError(f"snapshot_info must be a dict (snapshot_id, created_at, rows), got {type(info).__name__}")
    return dict(info)


def _warnings(frame: pd.DataFrame, models: Mapping[str, Mapping[str, Any]], as_of: list[str],
              generated_at: datetime, snapshot: Mapping[str, Any] | None = None) -> list[str]:
    """Banners for stale scores (counted from the scoring time when the snapshot gives it, else from the cutoff),
    data far older than its scoring, mixed cutoffs, and model information that does not match the scoring versions."""
    out = []
    newest = max((ts for ts in map(utc, as_of) if ts is not None), default=None)
    report_at = utc(generated_at)
    scored_at = utc((snapshot or {}).get("created_at")) if newest is not None else None
    since = scored_at or newest
    if since is not None and report_at is not None and report_at - since > STALE_AFTER:
        out.append(f"These scores are {age(since, report_at)} old: check that the nightly batch ran.")
    if scored_at is not None and newest is not None and scored_at - newest > STALE_AFTER:
        out.append(f"These scores were computed from data up to {when(newest)}, {age(newest, scored_at)} before "
                   "they were scored: check that fresh events reach the batch.")
    if len(as_of) > 1:
        out.append(f"The audience mixes {len(as_of)} feature cutoffs; scores of different days are not comparable.")
    for target, info in models.items():
        seen = scored_versions(frame, target)
        version = info.get("version")
        if version is not None and seen and str(version) not in seen:
            out.append(f"{TARGET_LABELS.get(target, target)}: the audience was scored with version(s) "
                       f"{', '.join(seen)}, but the model information describes version {version}.")
    return out
