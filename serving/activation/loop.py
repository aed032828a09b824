"""Closing the loop: audience -> campaign with a control group -> outcome reads -> measured lift -> next audience.

The entry points (CLI, HTTP service, demo) call these three functions, so every audience the service emits is a
campaign, every outcome read is recorded the same way, and every expected value uses the best lift known:

- :func:`launch_campaign`: the profit-maximising (or budget / top-k) audience of one action, split into treatment
  and control, recorded under ``<root>/<campaign_id>/``; returns the campaign, the send list (treatment only) and
  the audience summary;
- :func:`read_outcomes`: measures every campaign (or one) against the events after its ``as_of`` and appends one
  outcome read per campaign;
- :func:`measured_activation`: the activation economics with each action's prior lift replaced by the lift its
  closed campaigns measured, shrunk toward the prior by their size (``lift_source`` says which was used).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from serving.activation.actions import ActivationConfig
from serving.activation.audiences import AudienceSummary, select_audience
from serving.activation.campaign_records import Campaign, CampaignError, list_campaigns, load_campaign, outcome_reads
from serving.activation.campaigns import create_campaign, send_list
from serving.activation.outcome_result import OutcomeResult
from serving.activation.outcomes import append_outcome, measure
from serving.activation.stats import shrunk_lift
from serving.settings import CampaignSettings

MODEL_COLUMNS: Mapping[str, str] = {"last_mile_buyer": "model_buy", "lapse_risk": "model_lapse"}
"""Audience columns holding the version of each target's model that scored it."""


@dataclass(frozen=True)
class Launched:
    """One launched campaign: the record, its send list (treatment users, best first) and the audience summary."""

    campaign: Campaign
    send: pd.DataFrame
    summary: AudienceSummary


def launch_campaign(
    root: str | Path,
    audience: pd.DataFrame,
    action: str,
    activation: ActivationConfig,
    settings: CampaignSettings,
    *,
    as_of: datetime,
    created_at: datetime,
    model_versions: Mapping[str, Any],
    snapshot_id: str | None,
    budget: float | None = None,
    top_k: int | None = None,
) -> Launched:
    """Select the audience of ``action`` from ``audience`` (the batch's recommended frame, one row per user) and
    record it as a campaign under ``root``. Raises :class:`~serving.activation.actions.ActivationError` for a bad
    action or cut and :class:`~serving.activation.campaign_records.CampaignError` for an audience too small to keep
    a control group of ``settings.min_control`` users."""
    picked, summary = select_audience(audience, action, activation, budget=budget, top_k=top_k)
    campaign = create_campaign(
        root, picked, action=action, as_of=as_of, created_at=created_at,
        window_days=settings.window_days_of(action), control_share=settings.control_share_of(action),
        cost_per_user=activation.cost_of(action), model_versions=dict(model_versions), snapshot_id=snapshot_id,
        selection_rule={"rule": summary.rule, "budget": summary.budget, "top_k": summary.top_k},
        lift_used=lift_used(activation, action), global_control_share=settings.global_control_share,
        global_seed=settings.global_seed, min_control=settings.min_control,
    )
    return Launched(campaign, send_list(campaign), summary)


def audience_facts(audience: pd.DataFrame) -> tuple[datetime, dict[str, str]]:
    """The cutoff (``as_of`` column) and the model versions (``model_buy`` / ``model_lapse``) of a batch audience
    frame, for its campaign record. Raises :class:`CampaignError` when the frame carries no ``as_of``."""
    if "as_of" not in audience.columns or not audience["as_of"].notna().any():
        raise CampaignError("the audience has no as_of: use an audience file written by `propensity score`")
    as_of = pd.Timestamp(audience["as_of"].dropna().iloc[0])
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    models = {target: str(audience[col].dropna().iloc[0]) for target, col in MODEL_COLUMNS.items()
              if col in audience.columns and audience[col].notna().any()}
    return as_of.to_pydatetime(), models


def lift_used(activation: ActivationConfig, action: str) -> dict[str, Any]:
    """What the campaign record says about the lift its expected values used."""
    source = activation.lift_source[action]
    return {"value": activation.lift_of(action), "source": source, "n": activation.lift_n.get(action)}


def read_outcomes(
    root: str | Path,
    events: pd.DataFrame,
    activation: ActivationConfig,
    *,
    events_end: datetime,
    read_at: datetime,
    campaign_id: str | None = None,
) -> list[tuple[Campaign, OutcomeResult, Path]]:
    """Measure each campaign (``campaign_id``, else all of them) on canonical ``events`` observed up to
    ``events_end`` and append the read to its record. Returns ``(campaign, result, read file)`` per campaign."""
    campaigns = [load_campaign(root, campaign_id)] if campaign_id else list_campaigns(root)
    out = []
    for campaign in campaigns:
        result = measure(campaign, events, events_end=events_end, margin_rate=activation.margin_rate,
                         order_value_default=activation.default_order_value)
        out.append((campaign, result, append_outcome(root, campaign.campaign_id, result, read_at)))
    return out


def measured_activation(root: str | Path, activation: ActivationConfig, prior_strength: float) -> ActivationConfig:
    """``activation`` with the lift of every action that has closed campaigns replaced by the pooled measured
    relative lift, shrunk toward the prior (:func:`~serving.activation.stats.shrunk_lift`). Each campaign counts
    once, with its latest closed read; campaigns are pooled by inverse variance of their test sizes (``n_eff``).
    Actions without a closed read keep the prior."""
    pooled: dict[str, list[tuple[float, int, int]]] = {}
    for campaign in list_campaigns(root) if Path(root).is_dir() else []:
        closed = [r for r in outcome_reads(root, campaign.campaign_id) if r.get("status") == "closed"]
        lift = (closed[-1].get("lift") or {}) if closed else {}
        groups = closed[-1].get("groups", {}) if closed else {}
        measured = lift.get("relative_lift")
        n_c, n_t = (int((groups.get(g) or {}).get("users", 0)) for g in ("control", "treatment"))
        if measured is not None and math.isfinite(measured) and n_c and n_t:
            pooled.setdefault(campaign.action, []).append((float(measured), n_c, n_t))
    if not pooled:
        return activation
    lifts, sources, sizes = dict(activation.lift), dict(activation.lift_source), dict(activation.lift_n)
    for action, reads in pooled.items():
        weights = [1.0 / (1.0 / c + 1.0 / t) for _, c, t in reads]
        measured = sum(w * m for w, (m, _, _) in zip(weights, reads, strict=True)) / sum(weights)
        n_c, n_t = sum(c for _, c, _ in reads), sum(t for _, _, t in reads)
        value = shrunk_lift(activation.lift_of(action), measured, n_c, n_t, prior_strength)
        lifts[action] = min(max(value, -1.0), 1.0 if action == "win_back" else 10.0)
        sources[action], sizes[action] = "measured", n_c + n_t
    return replace(activation, lift=lifts, lift_source=sources, lift_n=sizes)
