"""Fit one target: LightGBM + calibrator, the baselines, and their evaluation on the test cutoff."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.segments.segmenter import Segmenter
from features.spec.definition import FeatureSpec
from training.btyd.features import BTYDFeatures
from training.bundle import ModelBundle, design_matrix
from training.calibration import Calibrator
from training.datasets import TimeSplit, window_days
from training.evaluate import evaluate, reliability_table
from training.labels import LabelSpec
from training.models import BoosterParams, fit_booster, fit_logistic
from training.plots import save_plots
from training.tuning import Tuner


@dataclass
class TargetResult:
    """A trained challenger and how it and the baselines did on the test cutoff."""

    bundle: ModelBundle
    metrics: dict[str, dict[str, float]]  # model name -> metric -> value
    test_scores: dict[str, np.ndarray]
    test_labels: np.ndarray
    importance: pd.Series
    mean_abs_contrib: pd.Series
    plots: dict[str, Path] = field(default_factory=dict)
    tuning: Tuner | None = None  # the fitted search that chose the booster params, when there was one

    @property
    def main(self) -> dict[str, float]:
        return self.metrics["lightgbm"]


def train_target(
    target: str,
    split: TimeSplit,
    segmenter: Segmenter,
    spec: FeatureSpec,
    label_spec: LabelSpec,
    params: BoosterParams,
    *,
    calibration: str = "isotonic",
    oracle: np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    baseline_rows: int = 100_000,
    contrib_rows: int = 5_000,
    btyd: BTYDFeatures | None = None,
    btyd_features: bool = True,
    bootstrap: int = 200,
    tuner: Tuner | None = None,
) -> TargetResult:
    """Train ``target`` on ``split`` (segmented frames with ``label``) and evaluate on its test cutoff.

    ``btyd``: the BTYD part fitted on the training cutoffs; its columns join the design matrix (unless
    ``btyd_features`` is False: a model without them, for comparison), it is saved with the bundle (the per-user
    outputs), and it gives the BG/NBD baseline (:func:`bgnbd_score`). The evaluation table holds LightGBM, the
    logistic regression, the rule score, BG/NBD (with ``btyd``) and the oracle (with ``oracle``), each with a 95%
    bootstrap interval on its AUC from ``bootstrap`` resamples of the test rows (seeded by ``params.seed``).
    ``oracle``: true probabilities aligned with ``split.test`` rows (generated data only), for the oracle AUC.
    The logistic baseline is fitted on at most ``baseline_rows`` training rows and the mean |SHAP| importance is
    taken over at most ``contrib_rows`` test rows (seeded random rows): both are diagnostics whose cost would
    otherwise grow with the shop (at 1M training rows they took longer than the LightGBM fit).
    ``tuner``: search the booster params on the training and validation cutoffs first (``params`` is its trial 0)
    and fit the model with the best; the fitted search is kept in ``TargetResult.tuning``.
    """
    in_matrix = btyd if btyd_features else None
    x_tr, names = design_matrix(split.train, spec, in_matrix)
    x_va, _ = design_matrix(split.valid, spec, in_matrix)
    x_te, _ = design_matrix(split.test, spec, in_matrix)
    y_tr = split.train["label"].to_numpy(np.int8)
    y_va = split.valid["label"].to_numpy(np.int8)
    y_te = split.test["label"].to_numpy(np.int8)

    if tuner is not None:
        params = tuner.fit(x_tr, y_tr, x_va, y_va, names, params).best_params_
    booster = fit_booster(x_tr, y_tr, x_va, y_va, names, params)
    calibrator = Calibrator(kind=calibration).fit(booster.predict(x_va), y_va)  # type: ignore[arg-type]
    bundle = ModelBundle(
        target=target, booster=booster, calibrator=calibrator, segmenter=segmenter, spec=spec,
        label_spec=label_spec, feature_names=names, btyd=btyd,
        meta={**(meta or {}), "best_iteration": int(booster.best_iteration or booster.current_iteration())},
    )
    p_lgb = calibrator.transform(booster.predict(x_te))

    fit_rows = _row_sample(len(x_tr), baseline_rows, params.seed)
    logistic = fit_logistic(x_tr[fit_rows], y_tr[fit_rows], seed=params.seed)
    p_lr_valid = logistic.predict_proba(x_va)[:, 1]
    p_lr = Calibrator(kind=calibration).fit(p_lr_valid, y_va).transform(logistic.predict_proba(x_te)[:, 1])
    # The rule score ranks value (higher = closer to buying, further from lapsing): negate it for lapse risk.
    sign = -1.0 if target == "lapse_risk" else 1.0
    rule_valid = sign * split.valid["rule_score"].to_numpy(np.float64)
    rule_test = sign * split.test["rule_score"].to_numpy(np.float64)
    rule_calibrator = Calibrator(kind="isotonic").fit(_unit(rule_valid, rule_valid), y_va)
    p_rule = rule_calibrator.transform(_unit(rule_test, rule_valid))

    reliability = reliability_table(y_te, p_lgb)
    bundle.meta["reliability"] = reliability[["mean_predicted", "observed_rate", "count"]].to_dict(orient="list")
    scores = {"lightgbm": p_lgb, "logistic": p_lr, "rule_score": p_rule}
    if btyd is not None:
        window = window_days(target, label_spec)
        bg_valid, bg_test = (bgnbd_score(target, btyd, f, window) for f in (split.valid, split.test))
        scores["bgnbd"] = Calibrator(kind="isotonic").fit(bg_valid, y_va).transform(bg_test)
    metrics = {
        name: evaluate(y_te, p, oracle=oracle, bootstrap=bootstrap, seed=params.seed) for name, p in scores.items()
    }
    if oracle is not None:
        scores["oracle"] = np.asarray(oracle, dtype=np.float64)
        metrics["oracle"] = evaluate(y_te, scores["oracle"], bootstrap=bootstrap, seed=params.seed)

    gain = booster.feature_importance(importance_type="gain")
    importance = pd.Series(gain, index=names, name="gain").sort_values(ascending=False)
    contrib = bundle.contributions(x_te[_row_sample(len(x_te), contrib_rows, params.seed)])
    mean_abs = pd.Series(np.abs(contrib[:, :-1]).mean(axis=0), index=names, name="mean_abs_contribution")
    return TargetResult(
        bundle=bundle, metrics=metrics, test_scores=scores, test_labels=y_te,
        importance=importance, mean_abs_contrib=mean_abs.sort_values(ascending=False), tuning=tuner,
    )


def bgnbd_score(target: str, btyd: BTYDFeatures, features: pd.DataFrame, window: int) -> np.ndarray:
    """The BG/NBD baseline per row of a feature table, shape (n,), in [0, 1]: for last-mile buyers P(any purchase
    in the next ``window`` days); for lapse risk 1 - that probability. BG/NBD knows only past buyers: a user who
    never bought counts as expecting no purchase (last for last-mile buyers, first for lapse)."""
    p_buy = np.nan_to_num(btyd.p_any_purchase(features, window), nan=0.0)
    return 1.0 - p_buy if target == "lapse_risk" else p_buy


def write_plots(result: TargetResult, out_dir: Path) -> dict[str, Path]:
    """Save the evaluation plots of ``result`` as PNG files under ``out_dir``."""
    result.plots = save_plots(
        out_dir, result.test_labels, result.test_scores, importance=result.importance,
        mean_abs_contrib=result.mean_abs_contrib, title_prefix=f"{result.bundle.target}: ",
    )
    return result.plots


def _row_sample(n: int, limit: int, seed: int) -> np.ndarray:
    """Sorted row positions: all ``n`` rows, or a seeded random ``limit`` of them."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def _unit(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Scale rule scores to [0, 1] by the reference range so they can be calibrated like probabilities."""
    lo, hi = float(np.nanmin(reference)), float(np.nanmax(reference))
    span = hi - lo if hi > lo else 1.0
    return np.clip((np.nan_to_num(values, nan=lo) - lo) / span, 0.0, 1.0)
