"""BG/NBD purchase-frequency model (Fader, Hardie & Lee 2005, "Counting your customers the easy way").

While alive a customer buys as a Poisson process of rate ``lambda ~ Gamma(r, alpha)`` (shape ``r``, rate
``alpha``); right after each *repeat* purchase they drop out for good with probability ``p ~ Beta(a, b)``. The data
per customer are ``frequency`` x (repeat purchases), ``recency`` t_x (time of the last purchase since the first)
and ``T`` (time from the first purchase to the end of the observation), all in one time unit (days from
:func:`training.btyd.rfm.rfm_summary` by default); ``alpha`` and every time argument or result share that unit.
Fitted by maximum likelihood over the log-parameters (L-BFGS-B with the analytic gradient).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

PARAMS: tuple[str, ...] = ("r", "alpha", "a", "b")


class BTYDError(ValueError):
    """A BTYD model got data it cannot use, failed to fit, or was used before ``fit``."""


def summary_arrays(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[np.ndarray, ...]:
    """``(x, t_x, T)`` as broadcast float64 arrays, checked: x whole and >= 0, 0 <= t_x <= T, all finite."""
    x, tx, t_obs = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (frequency, recency, T)))
    if not (np.isfinite(x).all() and np.isfinite(tx).all() and np.isfinite(t_obs).all()):
        raise BTYDError("frequency, recency and T must be finite")
    if (x < 0).any() or (x != np.round(x)).any():
        raise BTYDError("frequency must be a whole number >= 0")
    if (tx < 0).any() or (tx > t_obs * (1 + 1e-12) + 1e-12).any():
        raise BTYDError("recency must satisfy 0 <= recency <= T")
    return x, tx, t_obs


def _with_horizon(t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> tuple[np.ndarray, ...]:
    """``(t, x, t_x, T)`` checked and broadcast together; ``t`` (the horizon) must be finite and >= 0."""
    t, x, tx, t_obs = np.broadcast_arrays(np.asarray(t, dtype=np.float64), *summary_arrays(frequency, recency, T))
    if not (np.isfinite(t).all() and (t >= 0).all()):
        raise BTYDError("t must be finite and >= 0")
    return t, x, tx, t_obs


def _loglik_and_grad(
    log_params: np.ndarray, tx: np.ndarray, t_obs: np.ndarray, levels: np.ndarray, inv: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log-likelihood, shape (n,), and its gradient in the log-parameters, shape (4, n).

    ``x = levels[inv]``: the special functions depend on x alone and are evaluated once per distinct x.
    """
    r, alpha, a, b = np.exp(log_params)
    dg = special.digamma
    lv = levels
    xm1 = np.maximum(lv - 1, 0.0)  # keeps the unused "dropped out" term finite for x == 0
    ab = special.betaln(a, b)
    head = (special.gammaln(r + lv) - special.gammaln(r) + r * np.log(alpha))[inv]
    alive_c = (special.betaln(a, b + lv) - ab)[inv]
    dead_c = (special.betaln(a + 1, b + xm1) - ab)[inv]
    x = lv[inv]
    rx = r + x
    buyer = x > 0
    log_at, log_atx = np.log(alpha + t_obs), np.log(alpha + tx)
    alive = alive_c - rx * log_at
    dead = np.where(buyer, dead_c - rx * log_atx, -np.inf)
    tail = np.logaddexp(alive, dead)
    w = np.exp(dead - tail)  # posterior weight of "dropped out after the last purchase", 0 when x == 0
    d_r = (dg(r + lv) - dg(r) + np.log(alpha))[inv] - (1 - w) * log_at - w * log_atx
    d_alpha = r / alpha - rx * ((1 - w) / (alpha + t_obs) + w / (alpha + tx))
    dg_abx = dg(a + b + lv)
    d_a = (dg(a + b) - dg(a)) + (1 - w) * (dg(a) - dg_abx)[inv] + w * (dg(a + 1) - dg_abx)[inv]
    d_b = (dg(a + b) - dg(b)) + (1 - w) * (dg(b + lv) - dg_abx)[inv] + w * (dg(b + xm1) - dg_abx)[inv]
    grad = np.stack([d_r * r, d_alpha * alpha, d_a * a, d_b * b])
    return head + tail, grad


def _distinct_rows(*cols: np.ndarray) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The distinct rows of equal-length 1-D columns (each shape (m,)) and how often each occurs (shape (m,))."""
    order = np.lexsort(cols[::-1])
    stacked = [c[order] for c in cols]
    new = np.ones(order.size, dtype=bool)
    new[1:] = np.any([np.diff(c) != 0 for c in stacked], axis=0)
    starts = np.flatnonzero(new)
    return tuple(c[starts] for c in stacked), np.diff(np.append(starts, order.size))


class BetaGeoFitter:
    """BG/NBD fitted by maximum likelihood, sklearn style.

    ``penalizer``: L2 penalty ``penalizer * (r^2 + alpha^2 + a^2 + b^2)`` added to the mean negative
    log-likelihood per customer (the ``lifetimes`` convention), 0 = plain maximum likelihood. Learned: ``r_``,
    ``alpha_`` (rate, per time unit), ``a_``, ``b_``, ``loglik_`` (total log-likelihood at the fit, penalty
    excluded), ``n_users_``, ``converged_``.
    """

    def __init__(self, penalizer: float = 0.0) -> None:
        if penalizer < 0:
            raise BTYDError(f"penalizer must be >= 0, got {penalizer}")
        self.penalizer = float(penalizer)

    def fit(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> BetaGeoFitter:
        """Fit on per-customer arrays of shape (n,): repeat purchases, recency and T (one time unit)."""
        x, tx, t_obs = summary_arrays(frequency, recency, T)
        if x.size == 0:
            raise BTYDError("no customers to fit")
        # identical (x, t_x, T) rows share one likelihood term: exact, and day-granular data repeat a lot
        (ux, utx, ut), counts = _distinct_rows(x.ravel(), tx.ravel(), t_obs.ravel())
        levels, inv = np.unique(ux, return_inverse=True)
        weights = counts / counts.sum()

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            ll, grad = _loglik_and_grad(theta, utx, ut, levels, inv)
            params = np.exp(theta)
            value = -(weights @ ll) + self.penalizer * float(params @ params)
            return float(value), -(grad @ weights) + 2 * self.penalizer * params**2

        res = optimize.minimize(
            objective, np.zeros(4), jac=True, method="L-BFGS-B", bounds=[(-20.0, 20.0)] * 4,
            options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-8},
        )  # fmt: skip
        if not np.isfinite(res.fun):
            raise BTYDError(f"BG/NBD fit failed: {res.message}")
        self.r_, self.alpha_, self.a_, self.b_ = (float(v) for v in np.exp(res.x))
        self.loglik_ = float(counts @ _loglik_and_grad(res.x, utx, ut, levels, inv)[0])
        self.n_users_ = int(x.size)
        # a line search that stalls at a gradient this small has reached the optimum to float precision
        self.converged_ = bool(res.success or np.abs(res.jac).max() < 1e-6)
        return self

    def _params(self) -> tuple[float, float, float, float]:
        if not hasattr(self, "r_"):
            raise BTYDError("BetaGeoFitter is not fitted")
        return self.r_, self.alpha_, self.a_, self.b_

    def log_likelihood(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Log-likelihood of each customer's (x, t_x, T) under the fitted parameters, shape = broadcast shape."""
        x, tx, t_obs = summary_arrays(frequency, recency, T)
        levels, inv = np.unique(x, return_inverse=True)
        ll, _ = _loglik_and_grad(np.log(self._params()), tx.ravel(), t_obs.ravel(), levels, inv.ravel())
        return ll.reshape(x.shape)

    def p_alive(self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(still alive at T | x, t_x, T), in [0, 1]; exactly 1 when x == 0 (BG/NBD drops out only after a repeat
        purchase). Shape = broadcast shape of the inputs."""
        return self._alive(*summary_arrays(frequency, recency, T))

    def _alive(self, x: np.ndarray, tx: np.ndarray, t_obs: np.ndarray) -> np.ndarray:
        """:meth:`p_alive` of inputs already checked by :func:`summary_arrays`."""
        r, alpha, a, b = self._params()
        with np.errstate(divide="ignore", invalid="ignore"):
            log_odds_dead = np.log(a) - np.log(b + x - 1) + (r + x) * (np.log(alpha + t_obs) - np.log(alpha + tx))
        return np.where(x > 0, special.expit(-log_odds_dead), 1.0)

    def expected_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """Conditional expected number of purchases in the next ``t`` time units, E[Y(T, T+t] | x, t_x, T] >= 0.

        FHL 2005 eq. 10, with the hypergeometric term in its Euler-transformed form
        ``(1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z)``, ``z = t / (alpha+T+t)``, which stays finite for large x
        (the textbook form multiplies an overflowing 2F1 by a vanishing power). ``a`` within 1e-6 of 1 (a removable
        singularity of this form) is evaluated at ``1 + 1e-6``.
        """
        t, x, tx, t_obs = _with_horizon(t, frequency, recency, T)
        return self._expected(t, x, t_obs, self._alive(x, tx, t_obs))

    def _expected(self, t: np.ndarray, x: np.ndarray, t_obs: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """:meth:`expected_purchases` of checked inputs and their :meth:`p_alive` (all broadcastable)."""
        r, alpha, a, b = self._params()
        a = a if abs(a - 1) >= 1e-6 else 1 + 1e-6  # the removable singularity at a == 1: ~1e-6 relative error
        c = a + b + x - 1
        z = t / (alpha + t_obs + t)
        survive = np.exp((a - 1) * np.log1p(-z)) * special.hyp2f1(a + b - 1 - r, a - 1, c, z)
        return alive * c / (a - 1) * (1 - survive)

    def p_any_purchase(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike) -> np.ndarray:
        """P(at least one purchase in the next ``t`` time units | x, t_x, T), in [0, 1].

        Exact under BG/NBD: a customer alive at T can drop out only right after a purchase, so "no purchase in
        (T, T+t]" means "alive and no Poisson arrival in t", whatever p. Given alive, lambda ~ Gamma(r+x, alpha+T),
        so P(no arrival) = ((alpha+T)/(alpha+T+t))^(r+x) and the result is
        ``p_alive * (1 - ((alpha+T)/(alpha+T+t))^(r+x))``. It tends to ``p_alive`` as t grows.
        """
        t, x, tx, t_obs = _with_horizon(t, frequency, recency, T)
        return self._any_purchase(t, x, t_obs, self._alive(x, tx, t_obs))

    def _any_purchase(self, t: ArrayLike, x: np.ndarray, t_obs: np.ndarray, alive: np.ndarray) -> np.ndarray:
        """:meth:`p_any_purchase` of checked inputs and their :meth:`p_alive` (all broadcastable)."""
        r, alpha, _, _ = self._params()
        return alive * -np.expm1(-(r + x) * np.log1p(t / (alpha + t_obs)))

    def expected_next_purchase_days(
        self, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, *, quantile: float = 0.5
    ) -> np.ndarray:
        """Median waiting time from T to the next purchase (time units; days with the default summary).

        The smallest ``t`` with ``p_any_purchase(t) >= quantile`` (0.5 by default: the median of the waiting time,
        with "never" as a possible outcome), in closed form
        ``t = (alpha+T) * ((1 - quantile/p_alive)^(-1/(r+x)) - 1)``; ``inf`` when ``p_alive <= quantile``,
        i.e. the customer more likely than not never buys again. The expected date of the next order is
        ``as_of + t`` (the summary's T ends at bucket 0, the day before a midnight ``as_of``).
        """
        if not 0 < quantile < 1:
            raise BTYDError(f"quantile must be in (0, 1), got {quantile}")
        x, tx, t_obs = summary_arrays(frequency, recency, T)
        return self._next_purchase_days(x, t_obs, self._alive(x, tx, t_obs), quantile)

    def _next_purchase_days(self, x: np.ndarray, t_obs: np.ndarray, alive: np.ndarray, quantile: float) -> np.ndarray:
        """:meth:`expected_next_purchase_days` of checked inputs and their :meth:`p_alive`."""
        r, alpha, _, _ = self._params()
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (alpha + t_obs) * np.expm1(-np.log1p(-quantile / alive) / (r + x))
        return np.where(alive > quantile, t, np.inf)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: the model name, penalizer, parameters and fit diagnostics."""
        r, alpha, a, b = self._params()
        return {
            "model": "bgnbd", "penalizer": self.penalizer, "r": r, "alpha": alpha, "a": a, "b": b,
            "loglik": self.loglik_, "n_users": self.n_users_, "converged": self.converged_,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BetaGeoFitter:
        """A fitted model from :meth:`to_dict` output."""
        if doc.get("model") != "bgnbd":
            raise BTYDError(f"not a BG/NBD model document: model={doc.get('model')!r}")
        model = cls(penalizer=float(doc.get("penalizer", 0.0)))
        model.r_, model.alpha_, model.a_, model.b_ = (float(doc[k]) for k in PARAMS)
        model.loglik_ = float(doc.get("loglik", float("nan")))
        model.n_users_ = int(doc.get("n_users", 0))
        model.converged_ = bool(doc.get("converged", True))
        return model
