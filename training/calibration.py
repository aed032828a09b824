"""Probability calibration fitted on a later cutoff than the model, stored as plain JSON (no pickles).

The calibrated score keeps the booster's ranking: the map from raw to calibrated probability is strictly increasing
wherever the raw probability is (inside ``[RAW_EPS, 1 - RAW_EPS]``, to float64 resolution), so a top-k audience is
never cut among ties that the model did not make. Two methods:

- **isotonic** (interpolated): isotonic regression of the outcome on the raw log-odds (pool adjacent violators)
  gives blocks of users with one observed rate each. The map passes through one knot per block, at the block's mean
  raw log-odds and its observed rate, and is linear in raw log-odds between knots. Beyond the first and last knot
  it continues linearly in log-odds with the small positive slope ``tail_slope`` (calibrated log-odds per raw
  log-odds), so the ends are as flat as the isotonic fit says, yet keep their order and stay inside (0, 1).
  A block with rate 0 (or 1), possible only at the ends, gets its Jeffreys estimate ``0.5 / (n + 1)`` (or one minus
  it), kept below (above) the neighbouring knot.
- **platt**: a logistic fit on the raw log-odds, ``sigmoid(a * logit(p) + b)``, its slope ``a`` held at least
  ``MIN_SLOPE`` so that it never reverses or flattens the ranking. Beyond the raw log-odds range of the calibration
  set it continues with slope ``tail_slope`` too, so that a steep fit does not saturate at 0 or 1 there.

``kind="isotonic"`` falls back to Platt when the calibration set has fewer than ``min_class_count`` (default 50)
positives or negatives, or when the isotonic fit is a single block: with so few events the blocks are few and
noisy, and two parameters estimate the curve better. ``method_`` records what was fitted.

Serialised form (``to_dict``) carries ``format``: 2 is this layout. A dict without it is the earlier layout, in
which an isotonic calibrator was a step function (sklearn ``IsotonicRegression`` thresholds, ``x_`` in raw
probability); it still loads and scores exactly as before (``method_`` ``"isotonic_step"``, ties included, or
``"platt_v1"``), and ``to_dict`` writes it back as such.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Kind = Literal["isotonic", "platt"]

FORMAT = 2  # serialised layout version written by ``to_dict``
RAW_EPS = 1e-12  # raw probabilities are clipped to [RAW_EPS, 1 - RAW_EPS] before taking log-odds
MIN_SLOPE = 1e-3  # smallest Platt slope (calibrated log-odds per raw log-odds)
_LEGACY_EPS = 1e-7  # the clip of format-1 calibrators, kept so that old bundles score exactly as they did
_METHODS = ("isotonic", "platt", "isotonic_step", "platt_v1")  # the last two: read from format-1 dicts


@dataclass
class Calibrator:
    """Maps raw model probabilities to calibrated ones, strictly increasing (see the module docstring).

    Hyperparameters: ``kind`` (``"isotonic"`` or ``"platt"``), ``min_class_count`` (fewer positives or negatives
    than this in the calibration set: Platt instead of isotonic), ``tail_slope`` (slope of the map beyond the end
    knots, or for Platt beyond the fitted range: calibrated log-odds per raw log-odds, > 0).
    Learned attributes: ``method_`` (``"isotonic"`` or ``"platt"``; format-1 loads: see module doc), ``x_``
    (knots: raw log-odds, strictly increasing), ``y_`` (calibrated probability at each knot, strictly increasing
    inside (0, 1)), ``a_``, ``b_`` (Platt slope and intercept on log-odds; fitted for both methods, used to score
    only by Platt), ``z_range_`` (lowest and highest raw log-odds of the calibration set: where Platt's tails start).
    """

    kind: Kind = "isotonic"
    x_: list[float] = field(default_factory=list)
    y_: list[float] = field(default_factory=list)
    a_: float = 1.0
    b_: float = 0.0
    min_class_count: int = 50
    tail_slope: float = 0.01
    method_: str = ""
    z_range_: list[float] = field(default_factory=list)

    def fit(self, p: np.ndarray, y: np.ndarray) -> Calibrator:
        """Fit on raw probabilities ``p`` (shape (n,), in [0, 1]) and 0/1 outcomes ``y`` (shape (n,))."""
        if self.kind not in ("isotonic", "platt"):
            raise ValueError(f"calibration kind must be 'isotonic' or 'platt', got {self.kind!r}")
        if not self.tail_slope > 0:
            raise ValueError(f"tail_slope must be > 0, got {self.tail_slope!r}")
        p = np.asarray(p, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if p.shape != y.shape:
            raise ValueError(f"p and y differ in length: {p.size} vs {y.size}")
        if not np.isfinite(p).all() or not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("calibration needs finite raw probabilities and 0/1 outcomes")
        positives = int(y.sum())
        if positives == 0 or positives == y.size:
            raise ValueError(f"calibration needs both outcomes; all {y.size} rows are {int(y[0]) if y.size else '-'}")
        z = _logit(p)
        self.a_, self.b_ = _platt(z, y)
        self.z_range_ = [float(z.min()), float(z.max())]
        self.x_, self.y_ = [], []
        self.method_ = "platt"
        if self.kind == "isotonic" and min(positives, y.size - positives) >= self.min_class_count:
            knots = _isotonic_knots(z, y)
            if knots is not None:
                self.x_, self.y_ = knots[0].tolist(), knots[1].tolist()
                self.method_ = "isotonic"
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, shape (n,), strictly increasing in ``p`` and inside (0, 1) (see module doc)."""
        p = np.asarray(p, dtype=np.float64)
        if self.method_ == "isotonic":
            return _interpolate(_logit(p), np.asarray(self.x_), np.asarray(self.y_), self.tail_slope)
        if self.method_ == "platt":
            z = _logit(p)
            inside = np.clip(z, *self.z_range_)
            return _sigmoid(self.a_ * inside + self.b_ + self.tail_slope * (z - inside))
        if self.method_ == "isotonic_step":  # format 1, ties and all
            return np.clip(np.interp(p, np.asarray(self.x_), np.asarray(self.y_)), 0.0, 1.0)
        if self.method_ == "platt_v1":  # format 1
            q = np.clip(p, _LEGACY_EPS, 1 - _LEGACY_EPS)
            return np.clip(1.0 / (1.0 + np.exp(-(self.a_ * np.log(q / (1 - q)) + self.b_))), 0.0, 1.0)
        raise ValueError("calibrator is not fitted")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (``format`` 2); ``from_dict`` reads it back exactly."""
        return {
            "format": FORMAT, "kind": self.kind, "method_": self.method_, "x_": self.x_, "y_": self.y_,
            "a_": self.a_, "b_": self.b_, "min_class_count": self.min_class_count, "tail_slope": self.tail_slope,
            "z_range_": self.z_range_,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Read ``to_dict`` output, or a format-1 dict (no ``format`` key) as the calibrator it was."""
        version = data.get("format", 1)
        if version == 1:
            method = "isotonic_step" if data["kind"] == "isotonic" else "platt_v1"
            return cls(kind=data["kind"], x_=[float(v) for v in data["x_"]], y_=[float(v) for v in data["y_"]],
                       a_=float(data["a_"]), b_=float(data["b_"]), method_=method)
        if version != FORMAT:
            raise ValueError(f"calibrator format {version!r} is not readable by this version (it reads 1 and "
                             f"{FORMAT}); load the bundle with the version that saved it or retrain")
        method = data["method_"]
        if method not in _METHODS:
            raise ValueError(f"calibrator method {method!r} is not one of {_METHODS}")
        return cls(
            kind=data["kind"], x_=[float(v) for v in data["x_"]], y_=[float(v) for v in data["y_"]],
            a_=float(data["a_"]), b_=float(data["b_"]), min_class_count=int(data["min_class_count"]),
            tail_slope=float(data["tail_slope"]), method_=method, z_range_=[float(v) for v in data["z_range_"]],
        )


def _logit(p: np.ndarray, eps: float = RAW_EPS) -> np.ndarray:
    """Log-odds of ``p`` clipped to ``[eps, 1 - eps]``, same shape."""
    q = np.clip(p, eps, 1 - eps)
    return np.log(q) - np.log1p(-q)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    """Logistic function, same shape; exact in both tails (no overflow)."""
    t = np.asarray(t, dtype=np.float64)
    e = np.exp(-np.abs(t))
    return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _platt(z: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of the logistic fit of ``y`` on log-odds ``z``; a slope below ``MIN_SLOPE`` is raised
    to it, the intercept then matching the mean outcome at the mean log-odds."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6).fit(z.reshape(-1, 1), y.astype(int))
    a, b = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    if a < MIN_SLOPE:
        rate = float(y.mean())
        a, b = MIN_SLOPE, float(np.log(rate) - np.log1p(-rate) - MIN_SLOPE * z.mean())
    return a, b


def _isotonic_knots(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Knots of the interpolated isotonic map: (block mean log-odds, block rate), both strictly increasing, rates
    inside (0, 1). None when the isotonic fit is one block (no increasing trend to interpolate).

    Pool adjacent violators over the distinct raw log-odds, comparing rates as exact integer cross products, so
    two blocks are merged exactly when their rates are not increasing (no float noise splits a block in two).
    """
    order = np.argsort(z, kind="stable")
    zs, ys = z[order], y[order]
    first = np.flatnonzero(np.r_[True, zs[1:] != zs[:-1]])  # users with equal raw scores share one value
    n_at = np.diff(np.r_[first, zs.size]).tolist()
    pos_at = np.add.reduceat(ys, first).astype(np.int64).tolist()
    pos: list[int] = []
    cnt: list[int] = []
    for s_i, n_i in zip(pos_at, n_at, strict=True):
        while pos and pos[-1] * n_i >= s_i * cnt[-1]:  # previous rate >= this rate: pool
            s_i += pos.pop()
            n_i += cnt.pop()
        pos.append(s_i)
        cnt.append(n_i)
    if len(cnt) < 2:
        return None
    counts = np.asarray(cnt)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    centres = np.clip(np.add.reduceat(zs, starts) / counts, zs[starts], zs[starts + counts - 1])  # clip: rounding
    rates = np.asarray(pos, dtype=np.float64) / counts
    # Only the first block can have rate 0 and only the last rate 1 (rates strictly increase): use the Jeffreys
    # estimate there, kept halfway (in probability) from the neighbouring knot so the knots stay strictly ordered.
    if rates[0] <= 0.0:
        rates[0] = min(0.5 / (counts[0] + 1), rates[1] / 2)
    if rates[-1] >= 1.0:
        rates[-1] = 1.0 - min(0.5 / (counts[-1] + 1), (1.0 - rates[-2]) / 2)
    return centres, rates


def _interpolate(z: np.ndarray, xk: np.ndarray, yk: np.ndarray, tail_slope: float) -> np.ndarray:
    """Piecewise-linear map of log-odds ``z`` (any shape) through knots ``(xk, yk)``, log-linear tails beyond."""
    z = np.asarray(z, dtype=np.float64)
    out = np.asarray(np.interp(z, xk, yk), dtype=np.float64)
    lo, hi = z < xk[0], z > xk[-1]
    if lo.any():
        out[lo] = _sigmoid(_logit(yk[0], 0.0) + tail_slope * (z[lo] - xk[0]))
    if hi.any():
        out[hi] = _sigmoid(_logit(yk[-1], 0.0) + tail_slope * (z[hi] - xk[-1]))
    return out
