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
) -> pd.DataFrame:
    """Score every row of ``raw`` (n users) with every bundle.

    Returns n rows: ``user_id``, ``p_buy`` / ``p_lapse`` (calibrated probabilities in [0, 1]; ``p_lapse`` is NaN for
    users who never bought, who are outside the lapse model's population), ``aipl_layer``, ``lifecycle``,
    ``rfm_group``, ``rule_score``, ``reasons_buy`` / ``reasons_lapse`` (top positive contributors, feature names),
    ``model_buy`` / ``model_lapse`` (registry versions) and ``as_of``. With ``keep_features`` the segmented
    feature columns are kept too (activation rules read them).
    """
    if not bundles:
        raise ValueError("no models to score with")
    out: pd.DataFrame | None = None
    for target, bundle in bundles.items():
        segmented = bundle.segmenter.transform(raw)
        x = bundle.matrix(segmented)
        p = bundle.calibrator.transform(bundle.predict_raw(x))
        reasons = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons) if len(x) else []
        if out is None:
            base = segmented if keep_features else segmented[["user_id", *SEGMENT_OUTPUT]]
            out = base.reset_index(drop=True).copy()
        score = SCORE_COLUMN[target]
        out[score] = p
        if target == "lapse_risk":
            out.loc[out["lifecycle"].isin(["new"]).to_numpy(), score] = np.nan
        out[REASONS_COLUMN[target]] = pd.Series(reasons, dtype=object) if len(x) else pd.Series([], dtype=object)
        out[VERSION_COLUMN[target]] = str(bundle.meta.get("version", ""))
    assert out is not None
    out["as_of"] = pd.Timestamp(as_of).isoformat()
    return out


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
