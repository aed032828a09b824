"""Gamma-Gamma spend model (Fader & Hardie 2005, "The Gamma-Gamma model of monetary value") and the CLV it gives.

A customer's order values are Gamma(p, nu) (shape p, rate nu) around a personal mean p/nu, and nu ~ Gamma(q, v)
across customers (rate v, in currency). The data per customer are the repeat purchase count x > 0 and their mean
value m (``frequency`` and ``monetary_value`` of :func:`training.btyd.rfm.rfm_summary`); m given x is
Gamma(p x, nu x). The model assumes spend independent of purchase frequency. Fitted by maximum likelihood over the
log-parameters (L-BFGS-B with the analytic gradient).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special

from training.btyd.bgnbd import BetaGeoFitter, BTYDError, summary_arrays

PARAMS: tuple[str, ...] = ("p", "q", "v")
MONTH_DAYS = 365.0 / 12


def _loglik_and_grad(log_params: np.ndarray, x: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row log density of the mean value m given x, shape (n,), and its gradient in the log-parameters, (3, n).

    The special functions depend on x alone and are evaluated once per distinct x.
    """
    p, q, v = np.exp(log_params)
    levels, inv = np.unique(x, return_inverse=True)
    dg = special.digamma
    plv = p * levels
    by_x = special.gammaln(plv + q) - special.gammaln(plv) - special.gammaln(q) + q * np.log(v) + plv * np.log(levels)
    px = plv[inv]
    log_m = np.log(m)
    log_xm_v = np.log(x * m + v)
    ll = by_x[inv] + (px - 1) * log_m - (px + q) * log_xm_v
    d_p = x * ((dg(plv + q) - dg(plv) + np.log(levels))[inv] + log_m - log_xm_v)
    d_q = (dg(plv + q) - dg(q) + np.log(v))[inv] - log_xm_v
    d_v = q / v - (px + q) / (x * m + v)
    return ll, np.stack([d_p * p, d_q * q, d_v * v])


class GammaGammaFitter:
    """Gamma-Gamma spend model fitted by maximum likelihood, sklearn style.

    ``penalizer``: L2 penalty ``penalizer * (p^2 + q^2 + v^2)`` added to the mean negative log-likelihood (the
    ``lifetimes`` convention). Learned: ``p_``, ``q_``, ``v_`` (currency), ``loglik_``, ``n_users_`` (the
    customers used: frequency > 0 and a finite monetary value > 0), ``converged_``.
    """

    def __init__(self, penalizer: float = 0.0) -> None:
        if penalizer < 0:
            raise BTYDError(f"penalizer must be >= 0, got {penalizer}")
        self.penalizer = float(penalizer)

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> GammaGammaFitter:
        """Fit on arrays of shape (n,); only customers with frequency > 0 and a finite monetary value > 0 count."""
        x, m = np.broadcast_arrays(np.asarray(frequency, dtype=np.float64), np.asarray(monetary_value, dtype=float))
        use = (x > 0) & np.isfinite(m) & (m > 0)
        x, m = x[use], m[use]
        if x.size == 0:
            raise BTYDError("no repeat buyers with a known, positive monetary value to fit")
        start = np.log([1.0, 1.0, float(np.mean(m))])  # v ~ mean spend keeps the first steps on scale

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            ll, grad = _loglik_and_grad(theta, x, m)
            params = np.exp(theta)
            value = -float(ll.mean()) + self.penalizer * float(params @ params)
            return value, -grad.mean(axis=1) + 2 * self.penalizer * params**2

        res = optimize.minimize(
            objective, start, jac=True, method="L-BFGS-B", bounds=[(-20.0, 20.0)] * 3,
            options={"maxiter": 5000, "ftol": 1e-13, "gtol": 1e-8},
        )  # fmt: skip
        if not np.isfinite(res.fun):
            raise BTYDError(f"Gamma-Gamma fit failed: {res.message}")
        self.p_, self.q_, self.v_ = (float(v) for v in np.exp(res.x))
        self.loglik_ = float(_loglik_and_grad(res.x, x, m)[0].sum())
        self.n_users_ = int(x.size)
        # a line search that stalls at a gradient this small has reached the optimum to float precision
        self.converged_ = bool(res.success or np.abs(res.jac).max() < 1e-6)
        return self

    def _params(self) -> tuple[float, float, float]:
        if not hasattr(self, "p_"):
            raise BTYDError("GammaGammaFitter is not fitted")
        return self.p_, self.q_, self.v_

    def conditional_expected_average_profit(self, frequency: ArrayLike, monetary_value: ArrayLike) -> np.ndarray:
        """E[mean order value | x, m] (currency), shape = broadcast shape of the inputs.

        ``(p (v + x m)) / (p x + q - 1)``: a credibility-weighted blend of the population mean ``p v / (q - 1)``
        and the customer's own mean m. Customers with x == 0 or no known m (NaN) get the population mean.
        Needs ``q > 1`` (otherwise the population mean is infinite: raises).
        """
        p, q, v = self._params()
        if q <= 1:
            raise BTYDError(f"q = {q:.4g} <= 1: the expected order value is infinite")
        x, m = np.broadcast_arrays(np.asarray(frequency, dtype=np.float64), np.asarray(monetary_value, dtype=float))
        known = (x > 0) & np.isfinite(m)
        xk, mk = np.where(known, x, 0.0), np.where(known, m, 0.0)
        return p * (v + xk * mk) / (p * xk + q - 1)

    def clv(
        self, bgf: BetaGeoFitter, frequency: ArrayLike, recency: ArrayLike, T: ArrayLike, monetary_value: ArrayLike,
        *, horizon_days: float = 365.0, discount_rate_annual: float = 0.0, time_unit_days: float = 1.0,
    ) -> np.ndarray:  # fmt: skip
        """Discounted expected spend over the next ``horizon_days`` days (currency), shape = broadcast shape.

        The horizon is cut in monthly steps of 365/12 days (the last one shorter if the horizon is not a whole
        number of months). Step k contributes ``(E[purchases by t_k] - E[purchases by t_{k-1}])`` from ``bgf``
        times :meth:`conditional_expected_average_profit`, discounted by ``(1 + discount_rate_annual) **
        (-t_k / 365)`` (at the end of the step). ``time_unit_days`` is the unit ``bgf`` and ``recency``/``T`` use
        (1 = days, 7 = weeks).
        """
        if not (horizon_days >= 0 and discount_rate_annual > -1 and time_unit_days > 0):
            raise BTYDError("need horizon_days >= 0, discount_rate_annual > -1 and time_unit_days > 0")
        x, tx, t_obs = summary_arrays(frequency, recency, T)
        spend = self.conditional_expected_average_profit(x, np.broadcast_to(monetary_value, x.shape))
        n_steps = int(np.ceil(horizon_days / MONTH_DAYS - 1e-9))
        ends = np.minimum(np.arange(1, n_steps + 1) * MONTH_DAYS, horizon_days)
        if n_steps == 0:
            return np.zeros(x.shape)
        steps = ends.reshape((-1,) + (1,) * x.ndim)  # axis 0: the step ends, then the customers' shape
        upto = bgf.expected_purchases(steps / time_unit_days, x, tx, t_obs)
        per_step = np.diff(upto, axis=0, prepend=0.0)
        return (per_step * (1 + discount_rate_annual) ** (-steps / 365.0)).sum(axis=0) * spend

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: the model name, penalizer, parameters and fit diagnostics."""
        p, q, v = self._params()
        return {
            "model": "gamma_gamma", "penalizer": self.penalizer, "p": p, "q": q, "v": v, "loglik": self.loglik_,
            "n_users": self.n_users_, "converged": self.converged_,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GammaGammaFitter:
        """A fitted model from :meth:`to_dict` output."""
        if doc.get("model") != "gamma_gamma":
            raise BTYDError(f"not a Gamma-Gamma model document: model={doc.get('model')!r}")
        model = cls(penalizer=float(doc.get("penalizer", 0.0)))
        model.p_, model.q_, model.v_ = (float(doc[k]) for k in PARAMS)
        model.loglik_ = float(doc.get("loglik", float("nan")))
        model.n_users_ = int(doc.get("n_users", 0))
        model.converged_ = bool(doc.get("converged", True))
        return model
