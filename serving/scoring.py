"""The one scoring path shared by the nightly batch and the online ``/score`` API.

``score_features`` takes a raw feature table (``features.build.builder.build_features`` output, one row per user) and
the champion bundles, and returns one score record per user. Batch scoring calls it chunk by chunk; the service calls
it on the features of a few users built from the events in the request. Same inputs, same floats.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.build.builder import build_features
from features.segments.segmenter import SEGMENT_COLUMNS
from serving.reasons import reason_texts
from training.bundle import SCORE_COLUMN, ModelBundle
from training.evaluate import top_reasons
from training.labels import lapse_population

_NO_REASONS: tuple[str, ...] = ()
SEGMENT_OUTPUT = ("aipl_layer", "lifecycle", "rfm_group", "rule_score")
BTYD_OUTPUT = ("p_alive", "expected_purchases_30d", "expected_purchases_90d", "clv_365d", "next_order_date")
REASONS_COLUMN = {"last_mile_buyer": "reasons_buy", "lapse_risk": "reasons_lapse"}
REASON_TEXT_COLUMN = {"last_mile_buyer": "reasons_buy_text", "lapse_risk": "reasons_lapse_text"}
"""Readable reasons, aligned with :data:`REASONS_COLUMN`: "<phrase with the user's values> (<feature>)"."""
VERSION_COLUMN = {"last_mile_buyer": "model_buy", "lapse_risk": "model_lapse"}


def score_features(
    raw: pd.DataFrame,
    bundles: Mapping[str, ModelBundle],
    as_of: datetime,
    *,
    n_reasons: int = 3,
    keep_features: bool = False,
    reasons: bool = True,
) -> pd.DataFrame:
    """Score every row of ``raw`` (n users) with every bundle.

    Returns n rows: ``user_id``, ``p_buy`` / ``p_lapse`` (calibrated probabilities in [0, 1]; ``p_lapse`` is NaN for
    users who never bought, who are outside the lapse model's population), ``aipl_layer``, ``lifecycle``,
    ``rfm_group``, ``rule_score``, ``reasons_buy`` / ``reasons_lapse`` (top positive contributors, feature names),
    ``reasons_buy_text`` / ``reasons_lapse_text`` (the same reasons as phrases with the user's values, feature name
    in brackets: :func:`serving.reasons.reason_text`), ``model_buy`` / ``model_lapse`` (registry versions) and
    ``as_of``; when a bundle has a BTYD part, the BTYD outputs of :func:`btyd_outputs` (``p_alive``,
    ``expected_purchases_30d`` / ``_90d``, ``clv_365d``, ``next_order_date``). With ``keep_features`` the segmented
    feature columns are kept too (activation rules read them). With ``reasons=False`` the four reason columns hold
    empty lists: the SHAP contributions behind them cost far more than the scores (see :func:`add_reasons`).
    """
    if not bundles:
        raise ValueError("no models to score with")
    out: pd.DataFrame | None = None
    # models trained together share the segmenter, and the matrix unless their BTYD parts differ
    segments: dict[str, pd.DataFrame] = {}
    matrices: dict[str, np.ndarray] = {}
    for target, bundle in bundles.items():
        seg_key = json.dumps(bundle.segmenter.to_dict(), sort_keys=True, default=str)
        btyd = None if bundle.btyd_in_matrix is None else bundle.btyd_in_matrix.to_dict()
        key = json.dumps([seg_key, bundle.feature_names, btyd], sort_keys=True, default=str)
        if seg_key not in segments:
            segments[seg_key] = bundle.segmenter.transform(raw).reset_index(drop=True)
        segmented = segments[seg_key]
        if key not in matrices:
            matrices[key] = bundle.matrix(segmented)
        full = matrices[key]
        if out is None:
            out = segmented if keep_features else segmented[["user_id", *SEGMENT_OUTPUT]].copy()
        rows = population(target, segmented)
        x = full if rows.all() else full[rows]
        p = np.full(len(segmented), np.nan)
        p[rows] = bundle.calibrator.transform(bundle.predict_raw(x)) if len(x) else []
        out[SCORE_COLUMN[target]] = p
        names: list[list[str]] = []
        texts: list[list[str]] = []
        if len(x) and reasons:
            names = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons)
            texts = reason_texts(names, reason_values(x, bundle.feature_names, segmented[rows]))
        out[REASONS_COLUMN[target]] = _scatter(names, rows)
        out[REASON_TEXT_COLUMN[target]] = _scatter(texts, rows)
        out[VERSION_COLUMN[target]] = str(bundle.meta.get("version", ""))
    assert out is not None
    extra = btyd_outputs(raw, bundles, as_of)
    if extra is not None:
        for name in BTYD_OUTPUT:
            out[name] = extra[name].to_numpy()
    out["as_of"] = pd.Timestamp(as_of).isoformat()
    return out


def btyd_outputs(raw: pd.DataFrame, bundles: Mapping[str, ModelBundle], as_of: datetime) -> pd.DataFrame | None:
    """The BTYD outputs of every row of ``raw`` (n users, in order) from the lapse bundle's fitted BTYD part (the
    buyer bundle's when the lapse bundle has none): :data:`BTYD_OUTPUT`, probabilities in [0, 1], expected purchase
    days, CLV in currency, ``next_order_date`` an ISO date or None; all null for users who never bought. None when no
    bundle has a BTYD part (models trained before it)."""
    for target in ("lapse_risk", "last_mile_buyer", *bundles):
        bundle = bundles.get(target)
        if bundle is not None and bundle.btyd is not None:
            return bundle.btyd.outputs(raw.reset_index(drop=True), as_of)[list(BTYD_OUTPUT)]
    return None


def population(target: str, segmented: pd.DataFrame) -> np.ndarray:
    """Rows (boolean, shape (n,)) a model scores: everyone for last-mile buyers; for lapse risk the users with a
    purchase before the cutoff (:func:`training.labels.lapse_population`, the population its labels cover), whatever
    their lifecycle stage: a ``churned`` user who never bought is outside it. Other rows get NaN."""
    if target == "lapse_risk":
        return lapse_population(segmented)
    return np.ones(len(segmented), dtype=bool)


def add_reasons(
    scored: pd.DataFrame,
    raw: pd.DataFrame,
    bundles: Mapping[str, ModelBundle],
    masks: Mapping[str, np.ndarray],
    n_reasons: int = 3,
) -> pd.DataFrame:
    """Fill the reason columns (feature names and readable phrases) of the rows of ``scored`` selected per target by
    ``masks[target]`` (boolean, (n,)); the other rows keep theirs.

    ``raw`` is the raw feature table the rows were scored from (same order). LightGBM's SHAP contributions cost
    about 75x the score itself, so the batch computes them only for the users it will act on, and only for the
    score the action rides on (see :func:`serving.batch.run.reason_masks`): no SHAP row is spent on another user.
    """
    for target, bundle in bundles.items():
        rows = np.flatnonzero(masks.get(target, np.zeros(len(scored), dtype=bool)))
        if len(rows) == 0:
            continue
        segmented = bundle.segmenter.transform(raw.iloc[rows]).reset_index(drop=True)
        x = bundle.matrix(segmented)
        names = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons)
        texts = reason_texts(names, reason_values(x, bundle.feature_names, segmented))
        for name, values in ((REASONS_COLUMN[target], names), (REASON_TEXT_COLUMN[target], texts)):
            column = scored[name].to_numpy(dtype=object, copy=True)
            for i, row in enumerate(rows):
                column[row] = values[i]
            scored[name] = pd.Series(column, index=scored.index, dtype=object)
    return scored


def reason_values(x: np.ndarray, feature_names: list[str], segmented: pd.DataFrame) -> dict[str, Any]:
    """What the reason phrases read for the m rows of the design matrix ``x`` (shape (m, f)): each of its columns by
    feature name (float64, shape (m,)) and the segment labels of ``segmented`` (the same m users, in order)."""
    values: dict[str, Any] = {name: x[:, j] for j, name in enumerate(feature_names)}
    for col in SEGMENT_COLUMNS:
        if col in segmented.columns:
            values[col] = segmented[col].to_numpy(dtype=object)
    return values


def _scatter(values: list[list[str]], rows: np.ndarray) -> pd.Series:
    """An object column of lists, shape (len(rows),): ``values`` in order at the selected rows, empty elsewhere."""
    column: list[Any] = [_NO_REASONS] * len(rows)  # one shared immutable empty value: a million lists cost seconds
    for row, value in zip(np.flatnonzero(rows).tolist(), values, strict=False):
        column[row] = value
    return pd.Series(column, dtype=object)


def score_events(
    events: pd.DataFrame | Any,
    as_of: datetime,
    bundles: Mapping[str, ModelBundle],
    *,
    con: Any = None,
    n_reasons: int = 3,
    keep_features: bool = False,
) -> pd.DataFrame:
    """Build features from ``events`` (canonical frame, Ibis table or Parquet path) and score them."""
    spec = next(iter(bundles.values())).spec
    raw = build_features(events, as_of, spec, con=con)
    return score_features(raw, bundles, as_of, n_reasons=n_reasons, keep_features=keep_features)
