"""Settings section owned by the training package: labels, cutoffs, models and the promotion gate.

The application composes this section into its typed settings (``propensity.config.Settings``); the library
builds its own configs from it, so the Python API, the CLI and the service share one set of defaults.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class TrainingSettings(BaseModel):
    """Labels, cutoffs, models and the promotion gate."""

    horizon_days: int = Field(3, ge=1, description="H: last-mile buyer label window, days.")
    lapse_days: int | None = Field(None, ge=1, description="N: lapse window, days; None = fitted 80/20 gap.")
    n_cutoffs: int = Field(8, ge=3, description="Cutoffs stacked: train on all but the last two.")
    cutoff_spacing_days: int = Field(4, ge=1)
    min_positives: int = Field(100, ge=1)
    min_negatives: int = Field(100, ge=1)
    gate_logloss_tolerance: float = Field(0.005, ge=0.0, description="Allowed log-loss increase for promotion.")
    calibration: str = Field("isotonic", pattern="^(isotonic|platt)$")
    num_boost_round: int = Field(500, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_data_in_leaf: int = Field(200, ge=1)
    max_users: int | None = Field(
        100_000, ge=1000, description="Train on a seeded sample of at most this many users; None = everyone."
    )
    holdout: float = Field(
        0.3, gt=0, lt=1, description="Lapse target: share of users held out of training (half valid, half test)."
    )
    tune_trials: int = Field(
        0, ge=0, description="Hyperparameter search: at most this many trials per target on the validation cutoff "
        "(the first is the settings above); 0 = no search."
    )
    tune_budget_s: float = Field(
        60.0, gt=0, description="Hyperparameter search: seconds per target; no trial starts after them."
    )
    seed: int = 7
