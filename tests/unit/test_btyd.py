"""BTYD models: the published CDNOW fits, hand-computed predictions and the RFM summary on hand-built frames."""

from __future__ import annotations

import importlib.util
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, optimize, special

from training.btyd import BetaGeoFitter, BTYDError, GammaGammaFitter, rfm_summary, simulate_bgnbd
from training.btyd import bgnbd as bgnbd_module
from training.btyd import gamma_gamma as gg_module

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
CDNOW_CUTOFF = datetime(1997, 10, 1, tzinfo=UTC)  # FHL's calibration period: weeks 1-39 of 1997


def lifetimes_datasets() -> Path:
    """The sample data shipped in the ``lifetimes`` wheel (a dev extra), found by path: the package is not imported."""
    spec = importlib.util.find_spec("lifetimes")
    assert spec is not None and spec.submodule_search_locations, "the dev extra 'lifetimes' ships the CDNOW data"
    return Path(next(iter(spec.submodule_search_locations))) / "datasets"


@pytest.fixture(scope="module")
def cdnow() -> pd.DataFrame:
    """CDNOW 1/10 sample, 2,357 customers: x, t_x, T (weeks) and zbar (mean repeat spend, $)."""
    return pd.read_csv(lifetimes_datasets() / "cdnow_customers_summary_with_transactions.csv").set_index("ID")


def fitted(r: float, alpha: float, a: float, b: float) -> BetaGeoFitter:
    return BetaGeoFitter.from_dict({"model": "bgnbd", "r": r, "alpha": alpha, "a": a, "b": b})


def buy(user: str, ts: datetime, amount: float | None = 10.0, behavior: str = "buy") -> tuple:
    return (user, ts, behavior, amount)


def frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "ts", "behavior", "amount"])


# --- the published fits ---------------------------------------------------------------------------------------


def test_bgnbd_reproduces_published_cdnow_parameters() -> None:
    data = pd.read_csv(lifetimes_datasets() / "cdnow_customers_summary.csv")
    assert len(data) == 2357
    model = BetaGeoFitter().fit(data["frequency"], data["recency"], data["T"])
    published = {"r_": 0.243, "alpha_": 4.414, "a_": 0.793, "b_": 2.426}  # Fader, Hardie & Lee (2005)
    for name, value in published.items():
        assert getattr(model, name) == pytest.approx(value, rel=0.01), name
    assert model.loglik_ == pytest.approx(-9582.4, abs=0.1)
    assert model.converged_


def test_gamma_gamma_reproduces_published_cdnow_parameters(cdnow: pd.DataFrame) -> None:
    model = GammaGammaFitter().fit(cdnow["x"], cdnow["zbar"])
    assert model.n_users_ == 946  # the repeat buyers
    # Fader & Hardie (2005) note: p 6.25, q 3.74, gamma 15.44 (lifetimes' docs print 15.45)
    for name, value in {"p_": 6.25, "q_": 3.74, "v_": 15.44}.items():
        assert getattr(model, name) == pytest.approx(value, rel=0.01), name
    assert model.conditional_expected_average_profit(0, 0.0) == pytest.approx(6.25 * 15.44 / 2.74, rel=0.01)


def test_rfm_summary_of_the_cdnow_order_log_equals_the_published_summary(cdnow: pd.DataFrame) -> None:
    cols = ["customer", "id", "date", "cds", "amount"]
    log = pd.read_csv(lifetimes_datasets() / "CDNOW_sample.txt", sep=r"\s+", header=None, names=cols, dtype=str)
    events = pd.DataFrame(
        {
            "user_id": log["id"].astype(int),
            "ts": pd.to_datetime(log["date"], format="%Y%m%d", utc=True),
            "behavior": "buy",
            "amount": log["amount"].astype(float),
        }
    )
    summary = rfm_summary(events, CDNOW_CUTOFF, time_unit_days=7.0)
    assert summary.index.equals(cdnow.index.rename("user_id"))
    assert (summary["frequency"] == cdnow["x"]).all()
    for ours, theirs in [("recency", "t_x"), ("T", "T"), ("monetary_value", "zbar")]:  # published to 2 decimals
        np.testing.assert_allclose(summary[ours], cdnow[theirs], atol=0.0051, err_msg=ours)
    model = BetaGeoFitter().fit(summary["frequency"], summary["recency"], summary["T"])
    assert model.r_ == pytest.approx(0.243, rel=0.01) and model.b_ == pytest.approx(2.426, rel=0.01)


def test_analytic_gradients_match_finite_differences(cdnow: pd.DataFrame) -> None:
    x, tx, t_obs = (cdnow[c].to_numpy(float) for c in ("x", "t_x", "T"))
    levels, inv = np.unique(x, return_inverse=True)

    def bg(theta: np.ndarray) -> float:
        return float(bgnbd_module._loglik_and_grad(theta, tx, t_obs, levels, inv)[0].sum())

    theta = np.log([0.5, 3.0, 1.3, 2.0])
    grad = bgnbd_module._loglik_and_grad(theta, tx, t_obs, levels, inv)[1].sum(axis=1)
    np.testing.assert_allclose(grad, optimize.approx_fprime(theta, bg, 1e-7), rtol=1e-4, atol=1e-3)
    rep = cdnow[cdnow["x"] > 0]
    xr, m = rep["x"].to_numpy(float), rep["zbar"].to_numpy(float)
    theta = np.log([4.0, 2.5, 12.0])
    grad = gg_module._loglik_and_grad(theta, xr, m)[1].sum(axis=1)
    numeric = optimize.approx_fprime(theta, lambda th: float(gg_module._loglik_and_grad(th, xr, m)[0].sum()), 1e-7)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-3)


# --- BG/NBD predictions on hand-computed cases ------------------------------------------------------------------


def test_p_alive_hand_computed() -> None:
    model = fitted(r=1.0, alpha=10.0, a=2.0, b=1.0)
    # odds of "dropped out" = a / (b + x - 1) * ((alpha + T) / (alpha + t_x))^(r + x) = 2 * (20 / 15)^2 = 32 / 9
    assert float(model.p_alive(1, 5.0, 10.0)) == pytest.approx(9 / 41, rel=1e-12)
    np.testing.assert_array_equal(model.p_alive([0, 0, 0], 0.0, [0.0, 10.0, 1e4]), 1.0)
    assert float(model.p_alive(3, 10.0, 10.0)) > float(model.p_alive(3, 2.0, 10.0))  # a recent buyer is likelier alive


def test_expected_purchases_closed_form_case() -> None:
    # r = 1, a = 2, b = 1, x = 0: E = E_p[(1 - 1 / (1 + p k)) / p] with p ~ Beta(2, 1) (density 2p), k = t/(alpha+T)
    # = 2 * (1 - ln(1 + k) / k)
    model = fitted(r=1.0, alpha=10.0, a=2.0, b=1.0)
    for t, k in [(20.0, 1.0), (5.0, 0.25), (200.0, 10.0)]:
        assert float(model.expected_purchases(t, 0, 0.0, 10.0)) == pytest.approx(2 * (1 - math.log1p(k) / k), rel=1e-10)
    assert float(model.expected_purchases(0.0, 3, 4.0, 10.0)) == 0.0


def reference_expected_purchases(r: float, alpha: float, a: float, b: float, t: float, x: int, tx: float, T: float):
    """P(alive) * E_p[(1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p], p ~ Beta(a, b+x): the definition, by quadrature."""
    alive = 1.0 if x == 0 else 1 / (1 + a / (b + x - 1) * ((alpha + T) / (alpha + tx)) ** (r + x))

    def integrand(p: float) -> float:
        return -math.expm1(-(r + x) * math.log1p(p * t / (alpha + T))) / p if p > 0 else (r + x) * t / (alpha + T)

    value, _ = integrate.quad(integrand, 0, 1, weight="alg", wvar=(a - 1, b + x - 1), epsabs=0, epsrel=1e-12)
    return alive * value / math.exp(special.betaln(a, b + x))


@pytest.mark.parametrize(
    ("params", "t", "x", "tx", "T"),
    [
        ((0.243, 4.414, 0.793, 2.426), 39.0, 2, 30.43, 38.86),
        ((0.243, 4.414, 0.793, 2.426), 10.0, 0, 0.0, 38.86),
        ((0.5, 20.0, 1.4, 3.0), 365.0, 40, 300.0, 400.0),
        ((0.5, 20.0, 1.4, 3.0), 90.0, 400, 690.0, 700.0),  # the textbook 2F1 form overflows here
        ((2.0, 30.0, 0.6, 5.0), 30.0, 7, 10.0, 200.0),
    ],
)
def test_expected_purchases_against_the_definition(params: tuple, t: float, x: int, tx: float, T: float) -> None:
    model = fitted(*params)
    want = reference_expected_purchases(*params, t, x, tx, T)
    assert float(model.expected_purchases(t, x, tx, T)) == pytest.approx(want, rel=1e-7)


def test_expected_purchases_at_a_equal_to_one() -> None:
    for x, tx in [(0, 0.0), (5, 40.0)]:
        want = reference_expected_purchases(0.5, 20.0, 1.0, 3.0, 30.0, x, tx, 100.0)
        assert float(fitted(0.5, 20.0, 1.0, 3.0).expected_purchases(30.0, x, tx, 100.0)) == pytest.approx(
            want, rel=1e-5
        )


def test_p_any_purchase_hand_computed_and_limits() -> None:
    model = fitted(r=1.0, alpha=10.0, a=2.0, b=1.0)
    # P(alive) = 9/41; given alive lambda ~ Gamma(2, 20): P(no purchase in 20) = (20/40)^2 = 1/4
    assert float(model.p_any_purchase(20.0, 1, 5.0, 10.0)) == pytest.approx(9 / 41 * 3 / 4, rel=1e-12)
    assert float(model.p_any_purchase(0.0, 1, 5.0, 10.0)) == 0.0
    assert float(model.p_any_purchase(1e9, 1, 5.0, 10.0)) == pytest.approx(9 / 41, rel=1e-6)


def test_predictions_match_simulated_futures_at_the_true_parameters() -> None:
    truth = {"r": 0.6, "alpha": 15.0, "a": 0.9, "b": 2.5}
    rng = np.random.default_rng(7)
    n, horizon = 40_000, 60.0
    sim = simulate_bgnbd(rng, n, rng.uniform(60, 360, n), horizon=horizon, **truth)
    model = fitted(**truth)
    x, tx, t_obs = sim["frequency"], sim["recency"], sim["T"]
    for group in (x == 0, x > 0):
        future = sim["future"][group].to_numpy(float)
        bought = (future > 0).astype(float)
        any_p = model.p_any_purchase(horizon, x[group], tx[group], t_obs[group])
        expected = model.expected_purchases(horizon, x[group], tx[group], t_obs[group])
        alive = model.p_alive(x[group], tx[group], t_obs[group])
        was_alive = sim["alive"][group].to_numpy(float)
        for observed, predicted in [(bought, any_p), (future, expected), (was_alive, alive)]:
            assert abs(observed.mean() - predicted.mean()) <= 4 * observed.std() / math.sqrt(observed.size) + 1e-12


def test_expected_next_purchase_days() -> None:
    model = fitted(r=0.8, alpha=12.0, a=0.9, b=2.5)
    x, tx, t_obs = np.array([0, 3, 3, 20]), np.array([0.0, 90.0, 10.0, 170.0]), np.array([100.0, 100.0, 100.0, 180.0])
    alive = model.p_alive(x, tx, t_obs)
    days = model.expected_next_purchase_days(x, tx, t_obs)
    finite = alive > 0.5
    assert finite.any() and not finite.all()
    np.testing.assert_array_equal(np.isinf(days), ~finite)
    np.testing.assert_allclose(model.p_any_purchase(days[finite], x[finite], tx[finite], t_obs[finite]), 0.5)
    assert (days[finite] > 0).all()
    earlier = model.expected_next_purchase_days(x, tx, t_obs, quantile=0.25)
    assert (earlier[finite] < days[finite]).all()
    with pytest.raises(BTYDError):
        model.expected_next_purchase_days(x, tx, t_obs, quantile=1.0)


# --- Gamma-Gamma and CLV ------------------------------------------------------------------------------------------


def spend_model(p: float = 6.0, q: float = 4.0, v: float = 15.0) -> GammaGammaFitter:
    return GammaGammaFitter.from_dict({"model": "gamma_gamma", "p": p, "q": q, "v": v})


def test_conditional_expected_average_profit_hand_computed() -> None:
    model = spend_model()
    # p (v + x m) / (p x + q - 1): x=2, m=20 -> 6 * 55 / 15 = 22; no repeat spend known -> p v / (q - 1) = 30
    got = model.conditional_expected_average_profit([2, 0, 3], [20.0, 0.0, np.nan])
    np.testing.assert_allclose(got, [22.0, 30.0, 30.0])
    with pytest.raises(BTYDError):
        spend_model(q=0.9).conditional_expected_average_profit(1, 10.0)


def test_clv_hand_computed() -> None:
    bgf, ggf = fitted(r=1.0, alpha=10.0, a=2.0, b=1.0), spend_model()
    month = 365 / 12
    # x = 0, T = 10: E[purchases by t] = 2 (1 - ln(1 + k) / k), k = t / 20; spend 30 (the population mean)
    upto = [2 * (1 - math.log1p(t / 20) / (t / 20)) for t in (month, 45.0)]
    assert float(ggf.clv(bgf, 0, 0.0, 10.0, 0.0, horizon_days=45.0)) == pytest.approx(30 * upto[1], rel=1e-9)
    discounted = 30 * (upto[0] / 1.1 ** (month / 365) + (upto[1] - upto[0]) / 1.1 ** (45 / 365))
    got = float(ggf.clv(bgf, 0, 0.0, 10.0, 0.0, horizon_days=45.0, discount_rate_annual=0.1))
    assert got == pytest.approx(discounted, rel=1e-9)
    # the same customer in weeks gives the same value
    weekly = fitted(r=1.0, alpha=10.0 / 7, a=2.0, b=1.0)
    assert float(ggf.clv(weekly, 0, 0.0, 10 / 7, 0.0, horizon_days=45.0, time_unit_days=7.0)) == pytest.approx(
        30 * upto[1], rel=1e-9
    )
    assert float(ggf.clv(bgf, 0, 0.0, 10.0, 0.0, horizon_days=0.0)) == 0.0


# --- the RFM summary ---------------------------------------------------------------------------------------------


def test_rfm_summary_hand_built() -> None:
    day = timedelta(days=1)
    events = frame(
        [
            buy("a", AS_OF - 10 * day + timedelta(hours=1), 5.0),  # first purchase day: bucket 9
            buy("a", AS_OF - 10 * day + timedelta(hours=20), 7.0),  # same bucket: one day
            buy("a", AS_OF - 4 * day, 10.0),  # exactly 4 days before: bucket 3
            buy("a", AS_OF - 4 * day + timedelta(hours=2), 6.0),  # bucket 3 again -> day amount 16
            buy("a", AS_OF - timedelta(seconds=1), 30.0),  # bucket 0
            buy("a", AS_OF, 999.0),  # at as_of: ignored
            buy("a", AS_OF + day, 999.0),  # after: ignored
            buy("a", AS_OF - 20 * day, None, behavior="cart"),  # not a buy: ignored
            buy("b", AS_OF - 30 * day + timedelta(hours=3), 8.0),  # one purchase day only
            buy("b", AS_OF - 40 * day, None, behavior="view"),
            buy("c", AS_OF - 2 * day, None, behavior="visit"),  # never bought: absent
            buy("d", AS_OF - 6 * day, 4.0),
            buy("d", AS_OF - 2 * day, float("nan")),  # repeat day with an unknown amount
        ]
    )
    got = rfm_summary(events, AS_OF)
    assert list(got.index) == ["a", "b", "d"]
    assert got.loc["a"].to_dict() == {"frequency": 2, "recency": 9.0, "T": 9.0, "monetary_value": 23.0}
    assert got.loc["b"].to_dict() == {"frequency": 0, "recency": 0.0, "T": 29.0, "monetary_value": 0.0}
    assert got.loc["d", "frequency"] == 1 and got.loc["d", "T"] == 5.0 and np.isnan(got.loc["d", "monetary_value"])
    assert got["frequency"].dtype == np.int64
    weeks = rfm_summary(events, AS_OF, time_unit_days=7.0)
    np.testing.assert_allclose(weeks[["recency", "T"]], got[["recency", "T"]] / 7)
    # a naive as_of is UTC; a cutoff at noon shifts the buckets by half a day
    pd.testing.assert_frame_equal(rfm_summary(events, AS_OF.replace(tzinfo=None)), got)
    noon = rfm_summary(events, AS_OF - timedelta(hours=12))
    # buckets 9 (5.0), 8 (7.0), 3 (10.0 + 6.0); the buy one second before midnight is now after the cutoff
    assert noon.loc["a"].to_dict() == {"frequency": 2, "recency": 6.0, "T": 9.0, "monetary_value": 11.5}


def test_rfm_summary_edge_cases() -> None:
    empty = rfm_summary(frame([buy("a", AS_OF + timedelta(days=1))]), AS_OF)
    assert empty.empty and list(empty.columns) == ["frequency", "recency", "T", "monetary_value"]
    no_amount = frame([buy("a", AS_OF - timedelta(days=3)), buy("a", AS_OF - timedelta(days=1))]).drop(columns="amount")
    got = rfm_summary(no_amount, AS_OF)
    assert got.loc["a", "frequency"] == 1 and np.isnan(got.loc["a", "monetary_value"])
    with pytest.raises(ValueError, match="behavior"):
        rfm_summary(no_amount.drop(columns="behavior"), AS_OF)


# --- fitting, saving and validation --------------------------------------------------------------------------------


def test_models_round_trip_through_json(cdnow: pd.DataFrame) -> None:
    x, tx, t_obs, m = (cdnow[c] for c in ("x", "t_x", "T", "zbar"))
    bgf = BetaGeoFitter(penalizer=0.001).fit(x, tx, t_obs)
    ggf = GammaGammaFitter().fit(x, m)
    bgf2 = BetaGeoFitter.from_dict(json.loads(json.dumps(bgf.to_dict(), allow_nan=False)))
    ggf2 = GammaGammaFitter.from_dict(json.loads(json.dumps(ggf.to_dict(), allow_nan=False)))
    assert bgf2.to_dict() == bgf.to_dict() and ggf2.to_dict() == ggf.to_dict()
    np.testing.assert_array_equal(bgf2.expected_purchases(10, x, tx, t_obs), bgf.expected_purchases(10, x, tx, t_obs))
    np.testing.assert_array_equal(ggf2.clv(bgf2, x, tx, t_obs, m), ggf.clv(bgf, x, tx, t_obs, m))
    assert bgf.loglik_ < BetaGeoFitter().fit(x, tx, t_obs).loglik_  # the penalty costs likelihood
    with pytest.raises(BTYDError):
        GammaGammaFitter.from_dict(bgf.to_dict())


def test_invalid_input_and_unfitted_models_raise() -> None:
    with pytest.raises(BTYDError):
        BetaGeoFitter().p_alive(1, 1.0, 2.0)
    with pytest.raises(BTYDError):
        GammaGammaFitter().conditional_expected_average_profit(1, 1.0)
    model = fitted(0.5, 10.0, 1.2, 2.0)
    for args in [(1, 5.0, 4.0), (-1, 0.0, 4.0), (1.5, 1.0, 4.0), (1, float("nan"), 4.0)]:
        with pytest.raises(BTYDError):
            model.p_alive(*args)
    with pytest.raises(BTYDError):
        model.expected_purchases(-1.0, 1, 1.0, 2.0)
    with pytest.raises(BTYDError):
        BetaGeoFitter().fit([], [], [])
    with pytest.raises(BTYDError):
        GammaGammaFitter().fit([0, 0], [0.0, 0.0])
