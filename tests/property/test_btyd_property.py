"""Properties of the BTYD models (hypothesis, derandomized): the fit recovers simulated parameters, P(alive) is a
probability that falls as the silence grows, predictions grow with the horizon, the summary is point-in-time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from training.btyd import BetaGeoFitter, rfm_summary, simulate_bgnbd

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
FEW = settings(max_examples=6, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
MANY = settings(max_examples=200, deadline=None, derandomize=True, database=None)

# purchase rates of 0.02-0.3 a day over half a year to a year and a half: enough repeat purchases to identify a, b
identifiable = st.fixed_dictionaries(
    {
        "r": st.floats(0.3, 2.0),
        "rate": st.floats(0.02, 0.3),
        "a": st.floats(0.5, 2.0),
        "b": st.floats(2.0, 8.0),
        "seed": st.integers(0, 2**32 - 1),
    }
)
any_params = st.tuples(st.floats(0.01, 20), st.floats(0.01, 500), st.floats(0.01, 20), st.floats(0.01, 20))


@FEW
@given(identifiable)
def test_fit_recovers_simulated_parameters(draw: dict) -> None:
    truth = {"r": draw["r"], "alpha": draw["r"] / draw["rate"], "a": draw["a"], "b": draw["b"]}
    rng = np.random.default_rng(draw["seed"])
    n = 5000
    sim = simulate_bgnbd(rng, n, rng.uniform(180, 540, n), **truth)
    x, tx, t_obs = sim["frequency"], sim["recency"], sim["T"]
    model = BetaGeoFitter().fit(x, tx, t_obs)
    true_model = BetaGeoFitter.from_dict({"model": "bgnbd", **truth})
    assert model.converged_
    # the maximum: no worse than the truth on its own sample
    assert model.loglik_ >= true_model.log_likelihood(x, tx, t_obs).sum() - 1e-6
    # rate parameters to ~20%, the dropout Beta (weaker identified) to ~40%; tolerances from 3x the spread seen
    log_err = np.abs(np.log([model.r_ / truth["r"], model.alpha_ / truth["alpha"], model.a_ / truth["a"],
                             model.b_ / truth["b"]]))  # fmt: skip
    assert (log_err <= [0.2, 0.2, 0.35, 0.35]).all(), (truth, model.to_dict())
    # and what the scores are made of agrees closely
    assert abs(model.p_alive(x, tx, t_obs).mean() - true_model.p_alive(x, tx, t_obs).mean()) < 0.02
    got, want = model.expected_purchases(30, x, tx, t_obs).sum(), true_model.expected_purchases(30, x, tx, t_obs).sum()
    assert abs(got / want - 1) < 0.05


@MANY
@given(
    any_params,
    st.integers(0, 300),
    st.floats(0, 1),
    st.floats(0, 2000),
    st.floats(0, 2000),
    st.floats(0, 1000),
)
def test_p_alive_is_a_probability_falling_with_T(params, x: int, share: float, T: float, extra: float, t: float):
    model = BetaGeoFitter.from_dict({"model": "bgnbd", **dict(zip(("r", "alpha", "a", "b"), params, strict=True))})
    tx = share * T if x > 0 else 0.0
    alive = model.p_alive(x, tx, [T, T + extra, T + extra + 1.0])
    assert ((alive >= 0) & (alive <= 1)).all()
    assert alive[1] <= alive[0] + 1e-12 and alive[2] <= alive[1] + 1e-12
    if x == 0:
        assert (alive == 1).all()
    any_buy = model.p_any_purchase([0.0, t, t + 1.0], x, tx, T)
    assert ((any_buy >= 0) & (any_buy <= alive[0] + 1e-12)).all()
    assert any_buy[0] == 0 and any_buy[1] <= any_buy[2] + 1e-12


@MANY
@given(
    st.one_of(any_params, st.tuples(st.floats(0.01, 20), st.floats(0.01, 500), st.just(1.0), st.floats(0.01, 20))),
    st.integers(0, 100),
    st.floats(0, 1),
    st.floats(0, 1000),
)
def test_expected_purchases_grow_with_the_horizon(params, x: int, share: float, T: float) -> None:
    model = BetaGeoFitter.from_dict({"model": "bgnbd", **dict(zip(("r", "alpha", "a", "b"), params, strict=True))})
    tx = share * T if x > 0 else 0.0
    expected = model.expected_purchases([0.0, 1.0, 30.0, 90.0, 365.0], x, tx, T)
    assert np.isfinite(expected).all()
    assert expected[0] == 0 and (np.diff(expected) >= -1e-9 * (1 + expected[1:])).all()
    # at least one purchase is no likelier than the expected count
    assert (model.p_any_purchase([1.0, 30.0, 90.0, 365.0], x, tx, T) <= expected[1:] * (1 + 1e-7) + 1e-12).all()


day_offsets = st.lists(
    st.tuples(st.sampled_from(["u0", "u1", "u2"]), st.sampled_from(["buy", "buy", "view", "cart"]),
              st.integers(1, 400 * 86_400), st.one_of(st.none(), st.floats(0, 500))),
    min_size=1, max_size=30,
)  # fmt: skip


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(day_offsets, st.lists(st.tuples(st.sampled_from(["u0", "u3"]), st.integers(0, 30 * 86_400)), max_size=5))
def test_rfm_summary_invariants_and_point_in_time(past: list[tuple], future: list[tuple]) -> None:
    rows = [(u, AS_OF - timedelta(seconds=s), b, amt) for u, b, s, amt in past]
    later = [(u, AS_OF + timedelta(seconds=s), "buy", 1.0) for u, s in future]
    cols = ["user_id", "ts", "behavior", "amount"]
    got = rfm_summary(pd.DataFrame(rows, columns=cols), AS_OF)
    pd.testing.assert_frame_equal(rfm_summary(pd.DataFrame(rows + later, columns=cols), AS_OF), got)
    assert set(got.index) == {u for u, b, _, _ in past if b == "buy"}
    assert ((got["recency"] >= 0) & (got["recency"] <= got["T"]) & (got["T"] < 400)).all()
    one_day = got["frequency"] == 0
    assert (got.loc[one_day, "recency"] == 0).all() and (got.loc[one_day, "monetary_value"] == 0).all()
    for user, row in got.iterrows():
        buckets = {(s - 1) // 86_400 for u, b, s, _ in past if u == user and b == "buy"}
        assert row["frequency"] == len(buckets) - 1 and row["T"] == max(buckets)
        assert row["recency"] == max(buckets) - min(buckets)
