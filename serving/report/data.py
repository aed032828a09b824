"""The numbers behind the audience report: pure functions over the audience frame and the model metadata.

The audience frame is the batch output (:data:`serving.batch.run.AUDIENCE_COLUMNS`, one row per user). An empty
audience read back from Parquet has string columns only, so every numeric column is coerced here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from features.segments.segmenter import asset_summary
from features.spec.definition import AIPL_LAYERS
from serving.activation.actions import ACTIONS, NO_ACTION, WIN_BACK, ActivationConfig, ActivationError
from serving.activation.audiences import AudienceSummary, select_audience
from training.evaluate import DEFAULT_FRACTIONS, fraction_label

REQUIRED_COLUMNS: tuple[str, ...] = (
    "user_id", "p_buy", "p_lapse", "aipl_layer", "lifecycle", "rfm_group", "action", "action_p",
    "expected_value", "priority",
)
"""Audience columns the report reads (``expected_revenue``, ``as_of``, ``model_*`` are optional)."""
NUMERIC_COLUMNS: tuple[str, ...] = (
    "p_buy", "p_lapse", "action_p", "expected_value", "expected_revenue", "action_cost", "expected_profit", "priority",
)
TARGET_LABELS: dict[str, str] = {
    "last_mile_buyer": "Last-mile buyer (p_buy)",
    "lapse_risk": "About to lapse (p_lapse)",
}
"""Plain names of the registered models."""
VERSION_COLUMNS: dict[str, str] = {"last_mile_buyer": "model_buy", "lapse_risk": "model_lapse"}
ACTION_LABELS: dict[str, str] = {
    "coupon_24h": "24-hour coupon after a fav/cart",
    "ad_retarget": "Ad retargeting 1-3 days after an ad click",
    "repurchase_reminder": "Repurchase reminder near the buying cycle",
    "win_back": "Win-back offer for valuable buyers at risk",
    "nurture": "Nurture newcomers while they still browse",
}
MAX_CURVE_POINTS = 400


class ReportError(ValueError):
    """The report cannot be built from this input (missing columns, bad values, bad metadata)."""

    exit_code = 1  # CLI exit code: bad input


def prepare_audience(audience: pd.DataFrame, activation: ActivationConfig) -> pd.DataFrame:
    """A copy of ``audience`` with numeric columns as float64, labels as strings and ``expected_revenue`` present.

    The batch Parquet does not store ``expected_revenue``; it is ``expected_value / margin_rate`` by the activation
    formulas, so it is rebuilt from ``activation`` when missing (:func:`select_audience` reads it).
    """
    if not isinstance(audience, pd.DataFrame):
        raise ReportError(f"audience must be a pandas DataFrame, got {type(audience).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in audience.columns]
    if missing:
        raise ReportError(
            f"audience lacks column(s) {missing}; pass the audience Parquet written by the batch "
            f"(columns present: {list(audience.columns)[:20]})"
        )
    out = audience.reset_index(drop=True).copy()
    for col in NUMERIC_COLUMNS:
        if col not in out.columns:
            continue
        values = pd.to_numeric(out[col], errors="coerce")
        bad = values.isna() & out[col].notna()
        if bad.any():
            raise ReportError(f"audience column {col!r} must be numeric; found {out[col][bad].iloc[0]!r}")
        out[col] = values.astype("float64")
    if out["p_buy"].isna().any():
        raise ReportError(f"p_buy is null for {int(out['p_buy'].isna().sum())} user(s); every user needs a p_buy")
    for col in ("p_buy", "p_lapse"):
        if ((out[col] < 0) | (out[col] > 1)).any():
            raise ReportError(f"audience column {col!r} must hold probabilities in [0, 1]")
    for col in ("aipl_layer", "lifecycle", "rfm_group", "action"):
        out[col] = out[col].astype("object").where(out[col].notna(), "unknown").astype(str)
    unknown = sorted(set(out["aipl_layer"].unique()) - set(AIPL_LAYERS))
    if unknown:
        raise ReportError(f"unknown aipl_layer value(s) {unknown[:5]}; expected one of {list(AIPL_LAYERS)}")
    if "incremental_p" not in out.columns:  # audience files written before lifts: the configured lifts
        out["incremental_p"] = out["action_p"].fillna(0.0) * out["action"].map(
            lambda a: activation.lift_of(a) if a in ACTIONS else 0.0).astype("float64")
    if "expected_revenue" not in out.columns:
        out["expected_revenue"] = out["expected_value"] / activation.margin_rate
    return out


def segment_summary(audience: pd.DataFrame) -> dict[str, Any]:
    """:func:`features.segments.segmenter.asset_summary` of the audience plus ``mean_p_buy`` / ``mean_p_lapse`` per
    layer."""
    doc = asset_summary(audience)
    grouped = audience.groupby("aipl_layer")[["p_buy", "p_lapse"]].mean()
    for layer, row in doc["aipl"].items():
        row["mean_p_buy"] = float(grouped.at[layer, "p_buy"]) if layer in grouped.index else float("nan")
        row["mean_p_lapse"] = float(grouped.at[layer, "p_lapse"]) if layer in grouped.index else float("nan")
    return doc


@dataclass(frozen=True)
class ActionCurve:
    """Expected outcome of the top ``size`` users of one action, users taken by descending priority.

    ``size`` (users, 1..candidates, thinned to at most :data:`MAX_CURVE_POINTS` points keeping both ends),
    ``expected_incremental`` (cumulative sum of ``incremental_p``: conversions the action causes, or lapsers it
    saves), ``untreated_rate`` (running mean of ``action_p``: the share who would buy, or for win-back lapse,
    without the action) and the max-profit audience of :func:`select_audience` (``summary``).
    """

    action: str
    size: np.ndarray
    expected_incremental: np.ndarray
    untreated_rate: np.ndarray
    summary: AudienceSummary


def action_curves(audience: pd.DataFrame, activation: ActivationConfig) -> dict[str, ActionCurve]:
    """One :class:`ActionCurve` per known action with at least one candidate, in precedence order."""
    curves: dict[str, ActionCurve] = {}
    for action in ACTIONS:
        pool = audience[audience["action"] == action]
        if pool.empty:
            continue
        ranked = pool.sort_values(["priority", "user_id"], ascending=[False, True], kind="mergesort")
        p = np.nan_to_num(ranked["action_p"].to_numpy(dtype="float64"), nan=0.0)
        inc = np.cumsum(np.nan_to_num(ranked["incremental_p"].to_numpy(dtype="float64"), nan=0.0))
        cum = np.cumsum(p)
        size = np.arange(1, len(p) + 1)
        if len(p) > MAX_CURVE_POINTS:
            keep = np.unique(np.linspace(0, len(p) - 1, MAX_CURVE_POINTS).round().astype(np.int64))
        else:
            keep = np.arange(len(p))
        summary = _select(ranked, action, activation)
        curves[action] = ActionCurve(action, size[keep], inc[keep], cum[keep] / size[keep], summary)
    return curves


def action_summaries(
    audience: pd.DataFrame, activation: ActivationConfig, curves: Mapping[str, ActionCurve] | None = None
) -> list[AudienceSummary]:
    """The max-profit audience of every known action (zero-size rows for actions nobody has), in precedence order.

    Summaries already in ``curves`` (from :func:`action_curves` on the same audience) are reused.
    """
    curves = curves or {}
    return [curves[a].summary if a in curves else _select(audience, a, activation) for a in ACTIONS]


def _select(frame: pd.DataFrame, action: str, activation: ActivationConfig) -> AudienceSummary:
    try:
        return select_audience(frame, action, activation)[1]
    except ActivationError as exc:
        raise ReportError(f"cannot size the {action} audience: {exc}") from exc


SAMPLE_PER_ACTION = 2
"""Users per action in the report's sample users (the best by priority)."""


def sample_users(audience: pd.DataFrame, per_action: int = SAMPLE_PER_ACTION) -> pd.DataFrame:
    """The best ``per_action`` users of each known action (by priority, ties by ``user_id``), in precedence order,
    with ``why``: a list of their readable reasons from the score the action rides on (``reasons_lapse_text`` for
    win-back, else ``reasons_buy_text``; the feature names of ``reasons_*`` for an audience file written before the
    phrases; empty when the batch did not explain the user). Columns: ``user_id``, ``action``, ``action_p``,
    ``expected_profit`` (NaN when absent), ``aipl_layer``, ``why``."""
    parts = []
    for action in ACTIONS:
        pool = audience[audience["action"] == action]
        if pool.empty:
            continue
        ranked = pool.sort_values(["priority", "user_id"], ascending=[False, True], kind="mergesort")
        parts.append(ranked.head(max(0, int(per_action))))
    columns = ["user_id", "action", "action_p", "expected_profit", "aipl_layer", "why"]
    if not parts:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in columns})
    chosen = pd.concat(parts, ignore_index=True)
    why = []
    for row in chosen.to_dict("records"):
        target = "lapse" if row["action"] == WIN_BACK else "buy"
        why.append(_reason_list(row, f"reasons_{target}_text") or _reason_list(row, f"reasons_{target}"))
    out = pd.DataFrame({
        "user_id": chosen["user_id"].astype(str), "action": chosen["action"],
        "action_p": chosen["action_p"].astype("float64"),
        "expected_profit": (chosen["expected_profit"].astype("float64") if "expected_profit" in chosen.columns
                            else np.nan),
        "aipl_layer": chosen["aipl_layer"],
    })
    out["why"] = pd.Series(why, dtype=object)
    return out[columns]


def _reason_list(row: Mapping[str, Any], column: str) -> list[str]:
    """The reasons of one audience row's list column as strings ([] when absent, null or empty)."""
    value = row.get(column)
    if value is None or isinstance(value, (str, float)):
        return []
    return [str(v) for v in list(value) if v is not None and str(v)]


def unknown_actions(audience: pd.DataFrame) -> list[str]:
    """Action values that are neither a known action nor ``none`` (left out of the per-action numbers)."""
    return sorted(set(audience["action"].unique()) - set(ACTIONS) - {NO_ACTION})


def metric(metrics: Mapping[str, Any] | None, name: str) -> float:
    """``metrics[name]`` as a float, also found under an MLflow prefix (``lightgbm.auc``); NaN when absent."""
    if not metrics:
        return float("nan")
    value = metrics.get(name, metrics.get(f"lightgbm.{name}"))
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def check_model_info(model_info: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    """``model_info`` as ``{target: {version, metrics, ...}}``, with a clear error for any other shape."""
    if model_info is None:
        return {}
    if not isinstance(model_info, Mapping):
        raise ReportError(f"model_info must be a dict of target -> info, got {type(model_info).__name__}")
    out: dict[str, Mapping[str, Any]] = {}
    for target, info in model_info.items():
        if not isinstance(info, Mapping):
            raise ReportError(f"model_info[{target!r}] must be a dict with version and metrics, got {info!r}")
        metrics = info.get("metrics")
        if metrics is not None and not isinstance(metrics, Mapping):
            raise ReportError(f"model_info[{target!r}]['metrics'] must be a dict of name -> number")
        out[str(target)] = info
    return out


def lift_table(model_info: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Lift at the top 1/5/10/20% per target: index = targets with at least one lift, columns = ``top1``.. labels."""
    labels = [fraction_label(f) for f in DEFAULT_FRACTIONS]
    rows = {t: [metric(info.get("metrics"), f"lift_{lab}") for lab in labels] for t, info in model_info.items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=labels, dtype="float64")
    return table[table.notna().any(axis=1)]


def scored_versions(audience: pd.DataFrame, target: str) -> list[str]:
    """Model versions recorded in the audience for ``target`` (``model_buy`` / ``model_lapse``), sorted."""
    col = VERSION_COLUMNS.get(target)
    if col is None or col not in audience.columns:
        return []
    return sorted({str(v) for v in audience[col].dropna().unique()})


def as_of_values(audience: pd.DataFrame) -> list[str]:
    """Distinct feature cutoffs (``as_of``) in the audience, as ISO strings."""
    if "as_of" not in audience.columns:
        return []
    return sorted({_iso(v) for v in audience["as_of"].dropna().unique()})


def _iso(value: Any) -> str:
    try:
        return pd.Timestamp(value).isoformat()
    except (TypeError, ValueError):
        return str(value)
