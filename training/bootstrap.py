"""Bootstrap resampling of ranking metrics (the intervals of :func:`training.evaluate.auc_interval`)."""

from __future__ import annotations

import numpy as np


def bootstrap_aucs(y: np.ndarray, s: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """AUCs of ``n_resamples`` seeded bootstrap resamples of the rows (shape (m,), m <= n_resamples).

    ``y``: 0/1 outcomes as float64, ``s``: finite scores, both shape (n,) (checked by the caller). Resamples
    drawn from ``numpy.random.default_rng(seed)``; one holding a single class is skipped.

    Each resample is a vector of row multiplicities; its tie-aware AUC is computed on the fixed ascending
    order of the scores as ``sum_g pos_g * (neg_below_g + neg_g / 2) / (P * N)`` over tie groups ``g``, so a
    resample costs a few O(n) passes and no sort.
    """
    n = y.size
    order = np.argsort(s, kind="stable")
    starts = np.r_[True, np.diff(s[order]) != 0]
    group = np.empty(n, dtype=np.int64)
    group[order] = np.cumsum(starts) - 1
    n_groups = int(starts.sum())
    pos = y == 1.0
    g_pos, g_neg = group[pos], group[~pos]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_resamples):
        w = np.bincount(rng.integers(0, n, size=n), minlength=n).astype(np.float64)
        wp = np.bincount(g_pos, weights=w[pos], minlength=n_groups)
        wn = np.bincount(g_neg, weights=w[~pos], minlength=n_groups)
        n_pos, n_neg = wp.sum(), wn.sum()
        if n_pos == 0 or n_neg == 0:
            continue
        below = np.cumsum(wn) - wn
        out.append(float(wp @ (below + 0.5 * wn)) / (n_pos * n_neg))
    return np.asarray(out)
