"""The calibrator keeps the model's order: strictly increasing maps, calibration quality, the small-set fallback and
the serialised form (current and format 1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.isotonic import IsotonicRegression

from training.calibration import FORMAT, MIN_SLOPE, RAW_EPS, Calibrator
from training.evaluate import evaluate

FAST = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _true_curve(p: np.ndarray) -> np.ndarray:
    """A known, non-linear calibration curve: the true chance of a user with raw probability ``p``."""
    z = _logit(p)
    return _sigmoid(0.8 * z - 0.6 + 0.15 * np.sin(z))


def _shop(rng: np.random.Generator, n: int, centre: float = -3.0, spread: float = 1.6) -> tuple[np.ndarray, ...]:
    """Booster-like raw probabilities (log-odds normal), their true chances and 0/1 outcomes, shape (n,) each."""
    p = _sigmoid(rng.normal(centre, spread, n))
    truth = _true_curve(p)
    return p, truth, (rng.random(n) < truth).astype(np.int8)


def _step_isotonic(p: np.ndarray, y: np.ndarray) -> Calibrator:
    """The format-1 isotonic calibrator (a step function), as bundles saved it before."""
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    return Calibrator.from_dict(
        {"kind": "isotonic", "x_": iso.X_thresholds_.tolist(), "y_": iso.y_thresholds_.tolist(), "a_": 1.0, "b_": 0.0}
    )


# ----------------------------------------------------------------------------------------------- order


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(300, 4000),
    slope=st.floats(-0.5, 3.0),
    shift=st.floats(-4.0, 2.0),
    kind=st.sampled_from(["isotonic", "platt"]),
)
def test_calibrated_scores_are_strictly_increasing_inside_and_outside_the_fitted_range(
    seed: int, n: int, slope: float, shift: float, kind: str
) -> None:
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.0, 1.5, n)
    y = (rng.random(n) < _sigmoid(slope * z + shift)).astype(np.int8)
    y[:2] = (0, 1)  # both outcomes, whatever the draw
    cal = Calibrator(kind=kind).fit(_sigmoid(z), y)  # type: ignore[arg-type]

    # Raw log-odds from the clip floor to the clip ceiling, well beyond the fitted range on both sides.
    grid = np.sort(np.r_[np.linspace(_logit(RAW_EPS), -_logit(RAW_EPS), 4001), z, rng.uniform(-30, 30, 500)])
    grid = grid[(grid >= _logit(RAW_EPS)) & (grid <= -_logit(RAW_EPS))]
    grid = grid[np.r_[True, np.diff(grid) > 1e-6]]
    raw = np.unique(_sigmoid(grid))  # distinct raw probabilities (near 1 a float64 holds fewer than the log-odds)
    out = cal.transform(raw)
    assert np.all(np.diff(out) > 0), f"{cal.method_}: order lost at {np.flatnonzero(np.diff(out) <= 0)[:5]}"
    assert out[0] > 0.0 and out[-1] < 1.0
    assert raw[0] < _sigmoid(min(z)) and raw[-1] > _sigmoid(max(z))


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(200, 3000))
def test_raw_order_and_ties_are_kept_for_every_pair(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    p, _, y = _shop(rng, 4000)
    y[:2] = (0, 1)
    cal = Calibrator().fit(p, y)
    # Unsorted queries with ties (rounded) and points outside the fitted range.
    q = np.round(_sigmoid(rng.normal(-3.0, 3.0, n)), 6)
    out = cal.transform(q)
    i, j = rng.integers(0, n, size=(2, 5 * n))
    assert np.array_equal(np.sign(q[i] - q[j]), np.sign(out[i] - out[j]))


def test_distinct_outputs_equal_distinct_inputs_on_20k_users() -> None:
    rng = np.random.default_rng(20)
    p, _, y = _shop(rng, 20_000)
    # Booster-like ties: users with equal features share a raw score (a quarter of them on a few hundred values).
    p[:5_000] = np.round(p[:5_000], 3)
    cal = Calibrator().fit(p, y)
    out = cal.transform(p)
    assert cal.method_ == "isotonic"
    raw_values, raw_groups = np.unique(p, return_inverse=True)
    out_values, out_groups = np.unique(out, return_inverse=True)
    assert len(out_values) == len(raw_values)
    assert np.array_equal(raw_groups, out_groups)  # the same users tie, in the same order
    # The step function it replaces collapses them onto a few dozen values.
    assert len(np.unique(_step_isotonic(p, y).transform(p))) < len(raw_values) / 50


# ----------------------------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_held_out_calibration_tracks_a_known_curve(seed: int) -> None:
    rng = np.random.default_rng(seed)
    p_fit, _, y_fit = _shop(rng, 20_000)
    p_test, truth, y_test = _shop(rng, 20_000)
    cal = Calibrator().fit(p_fit, y_fit)
    got = cal.transform(p_test)
    plain = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_fit, y_fit).predict(p_test)

    ece = evaluate(y_test, got)["ece"]
    assert abs(ece - evaluate(y_test, truth)["ece"]) <= 0.02
    assert np.mean(np.abs(got - truth)) <= 0.02  # close to the true curve user by user, not only by bin
    assert ece <= evaluate(y_test, plain)["ece"] + 0.005
    assert evaluate(y_test, got)["log_loss"] <= evaluate(y_test, plain)["log_loss"] + 0.002


def test_knots_are_the_isotonic_blocks() -> None:
    rng = np.random.default_rng(11)
    p, _, y = _shop(rng, 20_000)
    p = np.round(p, 4)  # ties between users
    cal = Calibrator().fit(p, y)
    z = np.log(p) - np.log1p(-p)
    fitted = IsotonicRegression().fit(z, y).predict(np.sort(z))
    rates = np.unique(np.round(fitted, 12))  # sklearn's block rates (its pooling leaves float noise)
    assert len(cal.y_) == len(rates)
    assert np.allclose(cal.y_[1:-1], rates[1:-1], rtol=0, atol=1e-12)
    assert rates[0] == 0.0 and 0.0 < cal.y_[0] < cal.y_[1]  # the end blocks: Jeffreys estimates, inside (0, 1)
    assert np.all(np.diff(cal.x_) > 0) and np.all(np.diff(cal.y_) > 0)
    for x, lo, hi in zip(cal.x_[1:-1], rates[:-2], rates[2:], strict=True):  # each knot sits inside its block
        block = np.sort(z)[(fitted > lo + 1e-12) & (fitted < hi - 1e-12)]
        assert block.min() <= x <= block.max()


def test_end_blocks_without_one_outcome_stay_inside_zero_one() -> None:
    # No buyer among the lowest scores, only buyers among the highest: the end blocks' rates are 0 and 1.
    z = np.linspace(-6.0, 6.0, 3000)
    y = (z > 0).astype(np.int8)
    y[1000:2000] = np.random.default_rng(5).random(1000) < _sigmoid(z[1000:2000])
    cal = Calibrator().fit(_sigmoid(z), y)
    assert cal.method_ == "isotonic"
    assert 0.0 < cal.y_[0] <= 0.5 / 1001 and 1.0 - 0.5 / 1001 <= cal.y_[-1] < 1.0
    assert np.all(np.diff(cal.y_) > 0) and np.all(np.diff(cal.x_) > 0)
    out = cal.transform(_sigmoid(np.array([-25.0, -6.0, 6.0, 25.0])))
    assert np.all((out > 0) & (out < 1)) and np.all(np.diff(out) > 0)


# ----------------------------------------------------------------------------------------------- small sets


def test_few_positives_fall_back_to_platt() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(-4.0, 1.0, 5000)
    buyers = np.argsort(z)[-400:][rng.permutation(400)[:50]]  # 50 users among the high scores
    y = np.zeros(5000, dtype=np.int8)
    y[buyers[:49]] = 1  # 49 positives: below the threshold
    cal = Calibrator(kind="isotonic").fit(_sigmoid(z), y)
    assert cal.method_ == "platt" and cal.x_ == [] and cal.a_ > 0
    assert np.allclose(cal.transform(_sigmoid(z)), _sigmoid(cal.a_ * z + cal.b_))  # inside the fitted range
    assert np.allclose(cal.z_range_, [z.min(), z.max()], rtol=0, atol=1e-9)
    y[buyers[49]] = 1  # 50 positives: enough for isotonic
    assert Calibrator(kind="isotonic").fit(_sigmoid(z), y).method_ == "isotonic"


def test_few_negatives_fall_back_to_platt_too() -> None:
    rng = np.random.default_rng(6)
    z = rng.normal(3.0, 1.0, 2000)
    y = np.ones(2000, dtype=np.int8)
    y[np.argsort(z)[:30]] = 0
    assert Calibrator(kind="isotonic", min_class_count=50).fit(_sigmoid(z), y).method_ == "platt"
    assert Calibrator(kind="isotonic", min_class_count=20).fit(_sigmoid(z), y).method_ == "isotonic"


def test_no_trend_falls_back_to_platt_and_a_reversed_trend_still_keeps_order() -> None:
    rng = np.random.default_rng(8)
    z = rng.normal(-1.0, 1.0, 3000)
    y = (rng.random(3000) < _sigmoid(-2.0 * z)).astype(np.int8)  # higher raw score, fewer buyers
    cal = Calibrator().fit(_sigmoid(z), y)
    assert cal.method_ == "platt" and cal.a_ == MIN_SLOPE
    out = cal.transform(_sigmoid(np.sort(z)))
    assert np.all(np.diff(out) > 0)
    assert abs(out.mean() - y.mean()) < 0.01  # the clamped slope keeps the mean rate


def test_a_single_outcome_cannot_be_calibrated() -> None:
    with pytest.raises(ValueError, match="both outcomes"):
        Calibrator().fit(np.linspace(0.1, 0.9, 100), np.zeros(100))
    with pytest.raises(ValueError, match="'beta'"):
        Calibrator(kind="beta").fit(np.linspace(0.1, 0.9, 100), np.r_[np.zeros(50), np.ones(50)])  # type: ignore


def test_an_unfitted_calibrator_says_so() -> None:
    with pytest.raises(ValueError, match="not fitted"):
        Calibrator().transform(np.array([0.5]))


# ----------------------------------------------------------------------------------------------- serialisation


@pytest.mark.parametrize("kind", ["isotonic", "platt"])
def test_serialisation_round_trip_is_exact(kind: str) -> None:
    rng = np.random.default_rng(9)
    p, _, y = _shop(rng, 5000)
    cal = Calibrator(kind=kind).fit(p, y)  # type: ignore[arg-type]
    doc = json.loads(json.dumps(cal.to_dict()))  # as bundle.json stores it
    again = Calibrator.from_dict(doc)
    assert doc["format"] == FORMAT and again.method_ == kind
    assert again == cal
    q = np.r_[p, 0.0, 1e-15, 1e-9, 1 - 1e-9, 1.0]
    assert np.array_equal(again.transform(q), cal.transform(q))


def test_format_1_dicts_load_and_score_as_before() -> None:
    rng = np.random.default_rng(10)
    p, _, y = _shop(rng, 5000)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    old = {"kind": "isotonic", "x_": iso.X_thresholds_.tolist(), "y_": iso.y_thresholds_.tolist(), "a_": 1.0, "b_": 0.0}
    step = Calibrator.from_dict(old)
    assert step.method_ == "isotonic_step"
    assert np.array_equal(step.transform(p), np.clip(np.interp(p, iso.X_thresholds_, iso.y_thresholds_), 0, 1))
    assert np.allclose(step.transform(p), iso.predict(p))

    platt = Calibrator.from_dict({"kind": "platt", "x_": [], "y_": [], "a_": 1.2, "b_": -0.3})
    q = np.clip(p, 1e-7, 1 - 1e-7)
    assert platt.method_ == "platt_v1"
    assert np.array_equal(platt.transform(p), 1.0 / (1.0 + np.exp(-(1.2 * np.log(q / (1 - q)) - 0.3))))
    # Saved again, a format-1 calibrator stays what it was.
    for cal in (step, platt):
        again = Calibrator.from_dict(json.loads(json.dumps(cal.to_dict())))
        assert again == cal and np.array_equal(again.transform(p), cal.transform(p))


def test_an_unknown_format_fails_with_a_clear_message() -> None:
    doc = Calibrator().fit(np.linspace(0.01, 0.99, 400), np.r_[np.zeros(200), np.ones(200)]).to_dict()
    with pytest.raises(ValueError, match="calibrator format 3 is not readable"):
        Calibrator.from_dict({**doc, "format": 3})
    with pytest.raises(ValueError, match="method 'spline'"):
        Calibrator.from_dict({**doc, "method_": "spline"})
