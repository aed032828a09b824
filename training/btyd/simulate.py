"""Draw BG/NBD customers from known parameters (for tests, checks of the fit and benchmarks)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike


def simulate_bgnbd(
    rng: np.random.Generator, n: int, T: ArrayLike, *, r: float, alpha: float, a: float, b: float, horizon: float = 0.0
) -> pd.DataFrame:
    """``n`` customers observed for ``T`` time units after their first purchase, then ``horizon`` more.

    Each customer draws ``lambda ~ Gamma(r, rate alpha)``, ``p ~ Beta(a, b)`` and the number K >= 1 of repeat
    purchases after which they drop out (geometric in p); repeat purchases arrive as a Poisson process of rate
    lambda until the K-th. ``T``: a scalar or shape (n,). Returns one row per customer: ``frequency``,
    ``recency``, ``T`` (the BTYD summary at T), ``alive`` (bool, at T) and ``future`` (purchases in
    ``(T, T + horizon]``).
    """
    t_obs = np.broadcast_to(np.asarray(T, dtype=np.float64), (n,)).copy()
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    k = rng.geometric(np.clip(p, 1e-300, 1.0))  # dies right after the k-th repeat purchase
    arrivals = rng.poisson(lam * t_obs)
    x = np.minimum(arrivals, k)
    # the x-th of ``arrivals`` uniform arrival times on [0, T] is T * Beta(x, arrivals - x + 1)
    recency = np.zeros(n)
    buyer = x > 0
    recency[buyer] = t_obs[buyer] * rng.beta(x[buyer], arrivals[buyer] - x[buyer] + 1)
    alive = arrivals < k
    future = np.where(alive, np.minimum(rng.poisson(lam * horizon), k - x), 0)
    return pd.DataFrame(
        {"frequency": x.astype(np.int64), "recency": recency, "T": t_obs, "alive": alive, "future": future}
    )
