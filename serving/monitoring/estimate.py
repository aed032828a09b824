"""Label-free quality estimates from calibrated probabilities (confidence-based performance estimation, CBPE).

Before a snapshot's label window has closed there is nothing to compare its scores with. If the model is calibrated,
each user's outcome is a Bernoulli draw with the user's own probability ``p``, and every metric has an expected value
that needs no label. All functions take ``p``, a 1-D float array (shape ``(n,)``) of calibrated probabilities in
``[0, 1]``, and rank users by it exactly as :mod:`training.evaluate` does (descending, stable; ties in AUC are one
threshold).

- **Expected AUC** (:func:`expected_auc`): the probability that a random positive outranks a random negative when the
  labels are independent Bernoulli(p) draws, taken as expected concordant pairs over expected positive-negative
  pairs: ``sum_{i != j} p_i (1 - p_j) [p_i > p_j] (+ 1/2 for ties) / sum_{i != j} p_i (1 - p_j)``. Exact for that
  ratio, O(n log n) from the sorted ``p``; for large ``n`` it is the expected AUC itself.
- **Expected calibration error** (:func:`expected_ece`): what ECE a calibrated model still shows from sampling noise
  alone (the noise floor), per equal-count bin ``E|observed - predicted| ~ sqrt(2 / pi) * sqrt(sum p(1-p)) / n_bin``
  (normal approximation of the bin's observed rate).
- The others are plain expectations: log loss = mean binary entropy (nats), Brier = mean ``p(1-p)``, precision of
  the top ``k`` = mean ``p`` over them, recall = their share of ``sum p``, average precision to first order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from training.evaluate import DEFAULT_FRACTIONS, EvaluationInputError, fraction_label, top_k_size

__all__ = ["expected_auc", "expected_ece", "expected_metrics", "precision_at"]

_EPS = float(np.finfo(np.float64).eps)


def _probabilities(p: object) -> np.ndarray:
    arr = np.asarray(p, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0:
        raise EvaluationInputError(f"p must be a non-empty 1-D array, got shape {arr.shape}")
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise EvaluationInputError("p must hold finite probabilities in [0, 1]")
    return arr


def expected_auc(p: np.ndarray) -> float:
    """Expected AUC of ranking by ``p`` (shape ``(n,)``) when each label is Bernoulli(p_i); NaN when no pair can be
    positive-negative (every ``p`` is 0 or 1 alike, or ``n == 1``). See the module docstring."""
    q = np.sort(_probabilities(p), kind="stable")
    neg = 1.0 - q
    starts = np.r_[0, np.flatnonzero(np.diff(q)) + 1]  # first index of each run of equal p
    pos_g = np.add.reduceat(q, starts)
    neg_g = np.add.reduceat(neg, starts)
    self_g = np.add.reduceat(q * neg, starts)
    neg_below = np.r_[0.0, np.cumsum(neg_g)[:-1]]  # expected negatives strictly below each group
    concordant = float(np.sum(pos_g * neg_below) + 0.5 * np.sum(pos_g * neg_g - self_g))
    pairs = float(q.sum() * neg.sum() - np.sum(q * neg))
    return concordant / pairs if pairs > 0 else math.nan


def expected_ece(p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error of a calibrated ``p`` (shape ``(n,)``) over ``n_bins`` equal-count bins (the bins of
    :func:`training.evaluate.reliability_table`): the sampling-noise floor of the realized ECE."""
    q = np.sort(_probabilities(p), kind="stable")
    ids = (np.arange(q.size, dtype=np.int64) * int(n_bins)) // q.size
    variance = np.bincount(ids, weights=q * (1.0 - q), minlength=n_bins)
    return float(math.sqrt(2.0 / math.pi) * np.sum(np.sqrt(variance)) / q.size)


def precision_at(y_or_p: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Mean of ``y_or_p`` (labels: precision; probabilities: expected precision) over the ``k`` users with the highest
    ``scores`` (descending, stable; shape ``(n,)`` both); NaN when ``k < 1``."""
    if k < 1:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")[: min(int(k), len(scores))]
    return float(np.mean(np.asarray(y_or_p, dtype=np.float64)[order]))


def expected_metrics(
    p: np.ndarray, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, n_bins: int = 10
) -> dict[str, float]:
    """The expected value of each metric :func:`training.evaluate.evaluate` reports, from ``p`` alone (shape ``(n,)``).

    Keys: ``auc``, ``pr_auc``, ``log_loss`` (nats), ``brier``, ``ece`` (the noise floor), ``base_rate``, ``n``,
    ``positives`` (expected count) and per fraction ``precision_topX``, ``recall_topX``, ``lift_topX``.
    """
    q = _probabilities(p)
    n, total = q.size, float(q.sum())
    desc = q[np.argsort(-q, kind="stable")]
    captured = np.cumsum(desc)
    base_rate = total / n
    clipped = np.clip(q, _EPS, 1.0 - _EPS)
    out: dict[str, float] = {
        "auc": expected_auc(q),
        "pr_auc": _expected_average_precision(desc, captured),
        "log_loss": float(-np.mean(q * np.log(clipped) + (1.0 - q) * np.log1p(-clipped))),
        "brier": float(np.mean(q * (1.0 - q))),
        "ece": expected_ece(q, n_bins),
        "base_rate": base_rate,
        "n": float(n),
        "positives": total,
    }
    for f in fractions:
        k = top_k_size(f, n)
        label = fraction_label(f)
        precision = float(captured[k - 1]) / k
        out[f"precision_{label}"] = precision
        out[f"recall_{label}"] = float(captured[k - 1]) / total if total > 0 else math.nan
        out[f"lift_{label}"] = precision / base_rate if base_rate > 0 else math.nan
    return out


def _expected_average_precision(desc: np.ndarray, captured: np.ndarray) -> float:
    """First-order expected average precision: ``sum_k p_k (1 + S_{k-1}) / k / S_n`` with ``S`` the running sum of
    the descending ``p`` (the precision at a positive's own rank, given that it is positive)."""
    total = float(captured[-1])
    if total <= 0:
        return math.nan
    before = np.r_[0.0, captured[:-1]]
    ranks = np.arange(1, desc.size + 1, dtype=np.float64)
    return float(np.sum(desc * (1.0 + before) / ranks) / total)
