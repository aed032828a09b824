"""Probability calibration fitted on a later cutoff than the model, stored as plain JSON (no pickles)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["isotonic", "platt"]


@dataclass
class Calibrator:
    """Maps raw model probabilities to calibrated ones.

    ``isotonic``: a monotone step function (sklearn ``IsotonicRegression``) stored as its thresholds and applied by
    linear interpolation. ``platt``: a logistic fit on the log-odds, ``sigmoid(a * logit(p) + b)``.
    Learned attributes: ``x_``, ``y_`` (isotonic) or ``a_``, ``b_`` (platt).
    """

    kind: Kind = "isotonic"
    x_: list[float] = field(default_factory=list)
    y_: list[float] = field(default_factory=list)
    a_: float = 1.0
    b_: float = 0.0

    def fit(self, p: np.ndarray, y: np.ndarray) -> Calibrator:
        """Fit on raw probabilities ``p`` (shape (n,)) and 0/1 outcomes ``y`` (shape (n,))."""
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
            self.x_ = iso.X_thresholds_.astype(float).tolist()
            self.y_ = iso.y_thresholds_.astype(float).tolist()
        else:
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e6).fit(_logit(p).reshape(-1, 1), y.astype(int))
            self.a_ = float(lr.coef_[0, 0])
            self.b_ = float(lr.intercept_[0])
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, shape (n,), in [0, 1]."""
        p = np.asarray(p, dtype=np.float64)
        if self.kind == "isotonic":
            if not self.x_:
                raise ValueError("calibrator is not fitted")
            out = np.interp(p, np.asarray(self.x_), np.asarray(self.y_))
        else:
            out = 1.0 / (1.0 + np.exp(-(self.a_ * _logit(p) + self.b_)))
        return np.clip(out, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "x_": self.x_, "y_": self.y_, "a_": self.a_, "b_": self.b_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        return cls(kind=data["kind"], x_=list(data["x_"]), y_=list(data["y_"]), a_=data["a_"], b_=data["b_"])


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))
