"""Hyperparameter search for the LightGBM models, scored on the validation cutoff only.

A bounded Optuna search (seeded TPE, at most ``n_trials`` trials, no new trial after ``budget_s`` seconds) over the
tree size, the minimum leaf size, the learning rate, the feature fraction and the L2 penalty. Each trial fits a
booster on the training cutoffs with early stopping on the validation cutoff and is scored by its validation log
loss; the test cutoff never reaches the search. The given params are always trial 0, so the best trial is never
worse than them on validation. Pure apart from the clock: no MLflow, no files (the training job logs the trials).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from training.models import BoosterParams, fit_booster

TUNED = ("num_leaves", "min_data_in_leaf", "learning_rate", "feature_fraction", "lambda_l2")
"""The :class:`BoosterParams` fields the search sets; the others keep the base params' values."""


@dataclass(frozen=True)
class SearchSpace:
    """Inclusive ranges searched, ``(low, high)`` per field of :data:`TUNED`. The integer sizes, the learning rate
    and the L2 penalty are searched on a log scale, the feature fraction linearly. A range is widened to hold the
    base params' value, which is always tried first."""

    num_leaves: tuple[int, int] = (4, 63)
    min_data_in_leaf: tuple[int, int] = (20, 1000)
    learning_rate: tuple[float, float] = (0.03, 0.3)
    feature_fraction: tuple[float, float] = (0.3, 1.0)
    lambda_l2: tuple[float, float] = (1e-3, 100.0)


@dataclass(frozen=True)
class TrialRecord:
    """One fitted trial: its searched params (names of :data:`TUNED`), the validation cutoff's log loss and AUC of
    its raw (uncalibrated) probabilities at the best iteration, that iteration (trees kept) and the wall seconds of
    the fit and its scoring."""

    number: int
    params: dict[str, Any]
    valid_logloss: float
    valid_auc: float
    best_iteration: int
    seconds: float


class Tuner:
    """Seeded, bounded search for the booster params with the lowest validation log loss.

    ``n_trials``: at most this many trials (>= 1; trial 0 is the base params). ``budget_s``: no trial starts after
    this many seconds (a running trial finishes, so a search can overrun by one fit). ``seed``: the sampler's seed
    (default: the base params' seed). With the same data, seed and a budget that does not bind, two searches try the
    same params and get the same losses.

    Fitted state: ``trials_`` (list of :class:`TrialRecord`, in order), ``best_trial_`` (the lowest validation log
    loss, the earliest on a tie), ``best_params_`` (the base params with the best trial's values) and ``seconds_``
    (the wall time of the whole search).
    """

    def __init__(self, n_trials: int, budget_s: float = 60.0, space: SearchSpace = SearchSpace(),
                 seed: int | None = None) -> None:
        if n_trials < 1:
            raise ValueError(f"n_trials must be at least 1, got {n_trials}")
        if not budget_s > 0:
            raise ValueError(f"budget_s must be above 0, got {budget_s}")
        self.n_trials = n_trials
        self.budget_s = budget_s
        self.space = space
        self.seed = seed

    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_valid: np.ndarray,
        y_valid: np.ndarray,
        feature_names: list[str],
        base: BoosterParams,
    ) -> Tuner:
        """Search on (n, f) training and (m, f) validation float matrices with 0/1 labels of shape (n,) and (m,)."""
        import optuna

        bounds = self._bounds(base)
        records: list[TrialRecord] = []

        def objective(trial: optuna.Trial) -> float:
            lo, hi = bounds["num_leaves"]
            values: dict[str, Any] = {"num_leaves": trial.suggest_int("num_leaves", lo, hi, log=True)}
            lo, hi = bounds["min_data_in_leaf"]
            values["min_data_in_leaf"] = trial.suggest_int("min_data_in_leaf", lo, hi, log=True)
            lo, hi = bounds["learning_rate"]
            values["learning_rate"] = trial.suggest_float("learning_rate", lo, hi, log=True)
            lo, hi = bounds["feature_fraction"]
            values["feature_fraction"] = trial.suggest_float("feature_fraction", lo, hi)
            lo, hi = bounds["lambda_l2"]
            values["lambda_l2"] = trial.suggest_float("lambda_l2", lo, hi, log=True)
            started = time.perf_counter()
            booster = fit_booster(x_train, y_train, x_valid, y_valid, feature_names, replace(base, **values))
            p = booster.predict(x_valid)
            loss, auc = _logloss(y_valid, p), _auc(y_valid, p)
            iteration = int(booster.best_iteration or booster.current_iteration())
            records.append(TrialRecord(trial.number, values, loss, auc, iteration, time.perf_counter() - started))
            return loss

        seed = base.seed if self.seed is None else self.seed
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, self.n_trials // 2)))
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        started = time.perf_counter()
        try:
            study = optuna.create_study(direction="minimize", sampler=sampler)
            study.enqueue_trial({name: getattr(base, name) for name in TUNED})
            study.optimize(objective, n_trials=self.n_trials, timeout=self.budget_s)
        finally:
            optuna.logging.set_verbosity(verbosity)
        self.seconds_ = time.perf_counter() - started
        self.trials_ = records
        self.best_trial_ = min(records, key=lambda r: (r.valid_logloss, r.number))
        self.best_params_ = replace(base, **self.best_trial_.params)
        return self

    @property
    def default_trial_(self) -> TrialRecord:
        """Trial 0: the base params."""
        return self.trials_[0]

    def summary(self) -> str:
        """One line: trials, seconds and the validation log loss of the base params -> the best ones."""
        return (f"{len(self.trials_)} trials in {self.seconds_:.0f} s, valid log loss "
                f"{self.default_trial_.valid_logloss:.4f} -> {self.best_trial_.valid_logloss:.4f}")

    def _bounds(self, base: BoosterParams) -> dict[str, tuple[Any, Any]]:
        """Each range of the space, widened to hold the base value."""
        out: dict[str, tuple[Any, Any]] = {}
        for name in TUNED:
            lo, hi = getattr(self.space, name)
            value = getattr(base, name)
            out[name] = (min(lo, value), max(hi, value))
        return out


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary log loss of probabilities ``p`` (n,) for 0/1 labels ``y`` (n,), clipped at 1e-15, in nats."""
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-15, 1 - 1e-15)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log1p(-q)))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC of scores ``p`` (n,) for 0/1 labels ``y`` (n,); NaN when one class is missing."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        return math.nan
    return float(roc_auc_score(y, p))
