"""The one scoring path shared by the nightly batch and the online ``/score`` API.

``score_features`` takes a raw feature table (``features.build.build_features`` output, one row per user) and the
champion bundles, and returns one score record per user. Batch scoring calls it chunk by chunk; the service calls
it on the features of a few users built from the events in the request. Same inputs, same floats.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.build import build_features
from training.bundle import SCORE_COLUMN, ModelBundle
from training.evaluate import top_reasons

SEGMENT_OUTPUT = ("aipl_layer", "lifecycle", "rfm_group", "rule_score")
REASONS_COLUMN = {"last_mile_buyer": "reasons_buy", "lapse_risk": "reasons_lapse"}
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
    ``model_buy`` / ``model_lapse`` (registry versions) and ``as_of``. With ``keep_features`` the segmented
    feature columns are kept too (activation rules read them). With ``reasons=False`` the reason columns hold
    empty lists: the SHAP contributions behind them cost far more than the scores (see :func:`add_reasons`).
    """
    if not bundles:
        raise ValueError("no models to score with")
    out: pd.DataFrame | None = None
    reasons_on = reasons
    for target, bundle in bundles.items():
        segmented = bundle.segmenter.transform(raw)
        x = bundle.matrix(segmented)
        p = bundle.calibrator.transform(bundle.predict_raw(x))
        reasons = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons) if len(x) and reasons_on else []
        if out is None:
            base = segmented if keep_features else segmented[["user_id", *SEGMENT_OUTPUT]]
            out = base.reset_index(drop=True).copy()
        score = SCORE_COLUMN[target]
        out[score] = p
        if target == "lapse_risk":
            out.loc[out["lifecycle"].isin(["new"]).to_numpy(), score] = np.nan
        out[REASONS_COLUMN[target]] = _list_column(reasons, len(x))
        out[VERSION_COLUMN[target]] = str(bundle.meta.get("version", ""))
    assert out is not None
    out["as_of"] = pd.Timestamp(as_of).isoformat()
    return out


def add_reasons(
    scored: pd.DataFrame, raw: pd.DataFrame, bundles: Mapping[str, ModelBundle], mask: np.ndarray, n_reasons: int = 3
) -> pd.DataFrame:
    """Fill the reason columns of the rows of ``scored`` selected by ``mask`` (boolean, shape (n,)).

    ``raw`` is the raw feature table the rows were scored from (same order). LightGBM's SHAP contributions cost
    about 3 ms per user for a few hundred trees, so the batch computes them only for the users it will act on.
    """
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return scored
    part = raw.iloc[rows]
    for target, bundle in bundles.items():
        x = bundle.matrix(bundle.segmenter.transform(part))
        names = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons)
        column = scored[REASONS_COLUMN[target]].copy()
        for i, row in enumerate(rows):
            column.iat[row] = names[i]
        scored[REASONS_COLUMN[target]] = column
    return scored


def _list_column(values: list[list[str]], n: int) -> pd.Series:
    """An object column of lists: ``values`` when computed, else ``n`` empty lists."""
    return pd.Series(values if values else [[] for _ in range(n)], dtype=object)


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
