"""Evaluation metrics, tables, reasons and plots on tiny hand-computed arrays."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

from training.bootstrap import bootstrap_aucs
from training.evaluate import (
    EvaluationInputError,
    auc_interval,
    compare,
    evaluate,
    fraction_label,
    gain_curve,
    rank_metrics,
    reliability_table,
    top_k_size,
    top_reasons,
)

# Ten users ranked 1..10 by score; positives at ranks 1, 3 and 6 (P = 3, N = 7, base rate 0.3).
#   AUC: rank 1 beats 7 negatives, rank 3 beats 6, rank 6 beats 4 -> 17 / 21.
#   Average precision: precisions at the positives 1/1, 2/3, 3/6 -> (1 + 2/3 + 1/2) / 3 = 13/18.
#   Top 20% (k=2): 1 positive -> precision 1/2, recall 1/3, lift (1/2)/0.3 = 5/3.
#   Top 50% (k=5): 2 positives -> precision 2/5, recall 2/3, lift 0.4/0.3 = 4/3.
RANKED_P = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
RANKED_Y = np.array([1, 0, 1, 0, 0, 1, 0, 0, 0, 0])
SHUFFLE = np.array([7, 2, 9, 0, 5, 3, 8, 1, 6, 4])  # rows arrive in no particular order
HAND_P, HAND_Y = RANKED_P[SHUFFLE], RANKED_Y[SHUFFLE]


def test_ranking_metrics_match_hand_computed_values() -> None:
    m = evaluate(HAND_Y, HAND_P, fractions=(0.2, 0.5))
    assert m["n"] == 10 and m["positives"] == 3 and m["base_rate"] == pytest.approx(0.3)
    assert m["auc"] == pytest.approx(17 / 21)
    assert m["pr_auc"] == pytest.approx(13 / 18)
    assert m["precision_top20"] == pytest.approx(1 / 2)
    assert m["recall_top20"] == pytest.approx(1 / 3)
    assert m["lift_top20"] == pytest.approx(5 / 3)
    assert m["precision_top50"] == pytest.approx(2 / 5)
    assert m["recall_top50"] == pytest.approx(2 / 3)
    assert m["lift_top50"] == pytest.approx(4 / 3)
    assert "oracle_auc" not in m


def test_default_fractions_give_percentage_labels() -> None:
    m = evaluate(HAND_Y, HAND_P)
    for label in ("top1", "top5", "top10", "top20"):
        assert {f"precision_{label}", f"recall_{label}", f"lift_{label}"} <= m.keys()
    # 1% of 10 users is still one user: the best-ranked one, a positive.
    assert m["precision_top1"] == 1.0 and m["recall_top1"] == pytest.approx(1 / 3)


def test_top_k_size_and_labels_tolerate_float_noise() -> None:
    assert top_k_size(0.07, 100) == 7  # 0.07 * 100 == 7.000000000000001
    assert top_k_size(0.01, 150) == 2  # smallest audience covering 1%
    assert top_k_size(0.001, 10) == 1
    assert fraction_label(0.07) == "top7"
    assert fraction_label(0.005) == "top0.5"
    assert fraction_label(0.10) == "top10"


def test_probability_metrics_match_hand_computed_values() -> None:
    m = evaluate(np.array([0, 1, 1, 0]), np.array([0.5, 0.5, 0.8, 0.2]), n_bins=1)
    # log loss: (ln2 + ln2 - ln0.8 - ln0.8) / 4; Brier: (0.25 + 0.25 + 0.04 + 0.04) / 4
    assert m["log_loss"] == pytest.approx((2 * math.log(2) - 2 * math.log(0.8)) / 4)
    assert m["brier"] == pytest.approx(0.58 / 4)
    # one bin: mean predicted 0.5, observed 0.5
    assert m["ece"] == pytest.approx(0.0)


def test_ties_in_scores_are_broken_by_input_order_for_top_k() -> None:
    p = np.full(4, 0.5)
    first_negative = rank_metrics(np.array([0, 1, 0, 1]), p, fractions=(0.25,))
    first_positive = rank_metrics(np.array([1, 0, 1, 0]), p, fractions=(0.25,))
    assert first_negative["precision_top25"] == 0.0
    assert first_positive["precision_top25"] == 1.0
    # AUC gives tied pairs half credit regardless of order
    assert first_negative["auc"] == first_positive["auc"] == 0.5


def test_auc_counts_tied_pairs_as_half() -> None:
    # pairs: (pos 0.5, neg 0.5) -> 1/2, (pos 0.9, neg 0.5) -> 1
    assert rank_metrics(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9]))["auc"] == pytest.approx(0.75)


def test_rank_metrics_accept_any_real_scores() -> None:
    logits = np.log(HAND_P / (1 - HAND_P)) * 3 - 7  # monotone transform, outside [0, 1]
    assert rank_metrics(HAND_Y, logits)["auc"] == pytest.approx(17 / 21)
    with pytest.raises(EvaluationInputError, match=r"probabilities in \[0, 1\]"):
        evaluate(HAND_Y, logits)


def test_oracle_gives_its_auc_and_the_gap() -> None:
    oracle = HAND_Y * 0.5 + 0.25  # separates perfectly: AUC 1
    m = evaluate(HAND_Y, HAND_P, oracle=oracle)
    assert m["oracle_auc"] == pytest.approx(1.0)
    assert m["auc_gap_to_oracle"] == pytest.approx(1.0 - 17 / 21)


def test_ece_is_zero_for_a_perfectly_calibrated_binned_example() -> None:
    p = np.array([0.25] * 4 + [0.75] * 4)
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    for binning in ("quantile", "uniform"):
        assert evaluate(y, p, n_bins=2, binning=binning)["ece"] == pytest.approx(0.0)


def test_ece_of_a_miscalibrated_example() -> None:
    # bin 1: predicted 0.2, observed 2/4 -> gap 0.3; bin 2: predicted 0.8, observed 1 -> gap 0.2
    p = np.array([0.2] * 4 + [0.8] * 4)
    y = np.array([1, 1, 0, 0, 1, 1, 1, 1])
    for binning in ("quantile", "uniform"):
        assert evaluate(y, p, n_bins=2, binning=binning)["ece"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)
    table = reliability_table(y, p, 2)
    assert table["mean_predicted"].tolist() == pytest.approx([0.2, 0.8])
    assert table["observed_rate"].tolist() == pytest.approx([0.5, 1.0])
    assert table["count"].tolist() == [4, 4]


def test_quantile_bins_have_equal_counts_and_uniform_bins_drop_empty_ones() -> None:
    p = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.95])
    y = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 1])
    quantile = reliability_table(y, p, 3)
    assert quantile["count"].tolist() == [4, 3, 3]
    assert quantile["p_max"].tolist() == pytest.approx([0.04, 0.07, 0.95])
    uniform = reliability_table(y, p, 10, binning="uniform")
    assert uniform["bin"].tolist() == [0, 9]  # bins 1..8 are empty
    assert uniform["count"].tolist() == [9, 1]
    assert uniform["observed_rate"].tolist() == pytest.approx([2 / 9, 1.0])


def test_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(7)
    p = np.round(rng.beta(1.0, 12.0, 5000), 2)  # rounded: many ties
    y = (rng.random(5000) < p).astype(np.int8)
    m = evaluate(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p), rel=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, p), rel=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), rel=1e-12)


def test_uniform_reliability_table_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(2000)  # continuous: no value sits on a bin edge
    y = (rng.random(2000) < p**2).astype(int)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=8, strategy="uniform")
    table = reliability_table(y, p, 8, binning="uniform")
    assert table["observed_rate"].to_numpy() == pytest.approx(prob_true)
    assert table["mean_predicted"].to_numpy() == pytest.approx(prob_pred)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        (np.zeros(5), np.full(5, 0.1), "single class.*0 \\(negative\\)"),
        (np.ones(3), np.full(3, 0.9), "single class.*1 \\(positive\\)"),
        (np.array([0, 1, 2]), np.full(3, 0.5), "only 0 and 1; found 2.0 at row 2"),
        (np.array([0, 1]), np.array([0.5, 1.5]), r"probabilities in \[0, 1\]"),
        (np.array([0, 1]), np.array([0.5, np.nan]), "finite; found nan at row 1"),
        (np.array([0, 1, 1]), np.array([0.5, 0.5]), "2 rows but y_true has 3"),
        (np.array([[0, 1]]), np.array([0.5, 0.5]), "1-D array"),
        (np.array([], dtype=int), np.array([]), "empty"),
        (np.array(["0", "1"]), np.array([0.1, 0.9]), "numeric 0/1"),
    ],
)
def test_bad_inputs_raise_a_clear_value_error(y: np.ndarray, p: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        evaluate(y, p)


def test_bad_options_raise_a_clear_error() -> None:
    with pytest.raises(EvaluationInputError, match="fractions must be in"):
        evaluate(HAND_Y, HAND_P, fractions=(0.0,))
    with pytest.raises(EvaluationInputError, match="n_bins"):
        evaluate(HAND_Y, HAND_P, n_bins=0)
    with pytest.raises(EvaluationInputError, match="binning"):
        evaluate(HAND_Y, HAND_P, binning="equal")  # type: ignore[arg-type]
    with pytest.raises(EvaluationInputError, match="oracle has 2 rows"):
        evaluate(HAND_Y, HAND_P, oracle=np.array([0.1, 0.2]))


def test_gain_curve_hand_values_and_shape() -> None:
    curve = gain_curve(HAND_Y, HAND_P, points=2)
    assert curve["n_users"].tolist() == [5, 10]
    assert curve["audience_share"].tolist() == [0.5, 1.0]
    assert curve["captured_share"].tolist() == pytest.approx([2 / 3, 1.0])
    assert curve["precision"].tolist() == pytest.approx([0.4, 0.3])
    assert curve["lift"].tolist() == pytest.approx([4 / 3, 1.0])
    assert curve["conversions"].tolist() == [2, 3]
    expected_top5 = 0.9 + 0.8 + 0.7 + 0.6 + 0.5
    assert curve["expected_conversions"].tolist() == pytest.approx([expected_top5, RANKED_P.sum()])


def test_gain_curve_is_monotone_and_ends_at_one() -> None:
    rng = np.random.default_rng(11)
    p = rng.random(537)
    y = (rng.random(537) < p).astype(int)
    curve = gain_curve(y, p)
    assert len(curve) == 100
    for column in ("audience_share", "n_users", "captured_share", "conversions", "expected_conversions"):
        assert (np.diff(curve[column].to_numpy()) >= 0).all(), column
    assert curve["captured_share"].iloc[-1] == 1.0
    assert curve["audience_share"].iloc[-1] == 1.0
    assert curve["expected_conversions"].iloc[-1] == pytest.approx(p.sum())
    # fewer users than points: one row per distinct audience size
    small = gain_curve(HAND_Y, HAND_P, points=100)
    assert small["n_users"].tolist() == list(range(1, 11))


def test_compare_builds_a_model_by_metric_table() -> None:
    model = evaluate(HAND_Y, HAND_P, fractions=(0.2, 0.5), oracle=HAND_Y.astype(float))
    rule = rank_metrics(HAND_Y, -np.arange(10.0), fractions=(0.2, 0.5))
    table = compare({"lightgbm": model, "rule_score": rule})
    assert table.index.tolist() == ["lightgbm", "rule_score"]
    assert table.index.name == "model"
    assert table.columns.tolist() == [
        "auc", "pr_auc", "log_loss", "brier", "ece",
        "precision_top20", "precision_top50", "recall_top20", "recall_top50",
        "lift_top20", "lift_top50", "auc_gap_to_oracle",
    ]  # fmt: skip
    assert table.loc["lightgbm", "auc"] == pytest.approx(17 / 21)
    assert table.loc["rule_score", "auc"] == pytest.approx(rule["auc"])
    assert np.isnan(table.loc["rule_score", "log_loss"])  # a rule score has no probabilities
    chosen = compare({"lightgbm": model, "rule_score": rule}, metrics=["lift_top20", "auc"])
    assert chosen.columns.tolist() == ["lift_top20", "auc"]
    with pytest.raises(EvaluationInputError, match="no model has metric"):
        compare({"lightgbm": model}, metrics=["gini"])
    with pytest.raises(EvaluationInputError, match="at least one model"):
        compare({})


def test_top_reasons_orders_positive_contributions_and_ignores_bias() -> None:
    names = ["recency", "frequency", "cart_7d", "ad_click_3d"]
    contrib = np.array(
        [
            [0.10, 0.50, -0.20, 0.30, 9.0],  # bias 9.0 is never a reason
            [-0.1, -0.2, -0.30, -0.4, 5.0],  # nothing positive
            [0.00, 0.20, -0.10, 0.00, 1.0],  # zero is not a reason
            [0.40, 0.40, 0.10, 0.05, -2.0],  # tie: feature order
        ]
    )
    assert top_reasons(contrib, names, k=3) == [
        ["frequency", "ad_click_3d", "recency"],
        [],
        ["frequency"],
        ["recency", "frequency", "cart_7d"],
    ]
    assert top_reasons(contrib, names, k=1) == [["frequency"], [], ["frequency"], ["recency"]]
    # k larger than the number of features: all positive ones
    assert top_reasons(contrib, names, k=10)[3] == ["recency", "frequency", "cart_7d", "ad_click_3d"]


def test_top_reasons_matches_a_full_sort_on_random_rows() -> None:
    rng = np.random.default_rng(5)
    contrib = rng.normal(size=(300, 13))
    names = [f"f{i}" for i in range(12)]
    got = top_reasons(contrib, names, k=4)
    for row, reasons in zip(contrib, got, strict=True):
        values = row[:-1]
        expected = [names[j] for j in np.argsort(-values)[:4] if values[j] > 0]
        assert reasons == expected


def test_top_reasons_rejects_mismatched_shapes() -> None:
    with pytest.raises(EvaluationInputError, match="n_features \\+ 1"):
        top_reasons(np.zeros((2, 3)), ["a", "b", "c"])
    with pytest.raises(EvaluationInputError, match="2-D"):
        top_reasons(np.zeros(4), ["a", "b", "c"])
    with pytest.raises(EvaluationInputError, match="k must be"):
        top_reasons(np.zeros((2, 3)), ["a", "b"], k=0)


def test_save_plots_writes_png_files_and_returns_their_paths(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from training.plots import save_plots

    rng = np.random.default_rng(2)
    p = rng.beta(1.0, 6.0, 400)
    y = (rng.random(400) < p).astype(int)
    names = [f"feature_{i}" for i in range(25)]
    importance = pd.Series(rng.random(25) * 100, index=names)
    contrib = pd.Series(rng.random(25), index=names)
    open_before = plt.get_fignums()
    out = tmp_path / "plots" / "p_buy"
    paths = save_plots(
        out,
        y,
        {"lightgbm": p, "rule_score": p * 40 + rng.normal(0, 2, 400), "oracle": p},
        importance=importance,
        mean_abs_contrib=contrib,
        title_prefix="p_buy: ",
    )
    expected = {
        "roc": "roc.png",
        "pr": "pr.png",
        "reliability": "reliability.png",
        "gain": "gain.png",
        "precision_vs_audience": "precision_vs_audience.png",
        "feature_importance": "feature_importance.png",
        "mean_abs_contribution": "mean_abs_contribution.png",
    }
    assert {name: path.name for name, path in paths.items()} == expected
    for path in paths.values():
        assert path.parent == out
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert plt.get_fignums() == open_before  # nothing left open

    only_curves = save_plots(tmp_path / "bare", y, {"lightgbm": p})
    assert set(only_curves) == {"roc", "pr", "reliability", "gain", "precision_vs_audience"}


def test_save_plots_rejects_bad_inputs(tmp_path: Path) -> None:
    from training.plots import save_plots

    y = np.array([0, 1, 0, 1])
    with pytest.raises(EvaluationInputError, match=r"scores\['rule'\] must be probabilities"):
        save_plots(tmp_path, y, {"rule": np.array([1.0, 5.0, 2.0, 7.0])})
    with pytest.raises(EvaluationInputError, match="scores is empty"):
        save_plots(tmp_path, y, {})
    with pytest.raises(EvaluationInputError, match="importance must be a pandas Series"):
        save_plots(tmp_path, y, {"m": np.full(4, 0.5)}, importance={"a": 1.0})  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())  # validation happens before any file is written


# ----------------------------------------------------------------------------- bootstrap intervals


def _scored(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``n`` users with a score that predicts a 0/1 outcome (AUC about 0.8) and ties (scores rounded)."""
    rng = np.random.default_rng(seed)
    s = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(1.5 * s - 2)))).astype(np.int8)
    return y, np.round(s, 1)


def test_each_bootstrap_auc_is_the_auc_of_the_resampled_rows() -> None:
    y, s = _scored(300)
    for seed in (0, 1, 2):
        idx = np.random.default_rng(seed).integers(0, y.size, size=y.size)  # the resample bootstrap_aucs draws
        (got,) = bootstrap_aucs(y.astype(np.float64), s, 1, seed)
        assert got == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_auc_interval_holds_the_estimate_is_seeded_and_shrinks_with_more_rows() -> None:
    widths = []
    for n in (400, 4_000, 40_000):
        y, s = _scored(n)
        low, high = auc_interval(y, s, n_resamples=200, seed=7)
        assert low < roc_auc_score(y, s) < high
        assert auc_interval(y, s, n_resamples=200, seed=7) == (low, high)
        widths.append(high - low)
    assert widths[0] > 2 * widths[1] > 4 * widths[2] > 0  # about 1 / sqrt(n): sqrt(10) ~ 3.2 per step
    y, s = _scored(400)
    assert auc_interval(y, s, n_resamples=200, seed=8) != auc_interval(y, s, n_resamples=200, seed=7)
    narrow = auc_interval(y, s, n_resamples=200, level=0.5, seed=7)
    wide = auc_interval(y, s, n_resamples=200, level=0.95, seed=7)
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_evaluate_reports_the_interval_when_asked_and_compare_shows_it() -> None:
    y, s = _scored(2_000)
    p = 1 / (1 + np.exp(-s))
    plain = evaluate(y, p)
    assert "auc_ci_low" not in plain
    m = evaluate(y, p, bootstrap=100, seed=1)
    assert (m["auc_ci_low"], m["auc_ci_high"]) == auc_interval(y, p, n_resamples=100, seed=1)
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]
    table = compare({"lightgbm": m, "rule_score": plain})
    assert list(table.columns[:3]) == ["auc", "auc_ci_low", "auc_ci_high"]
    assert math.isnan(table.loc["rule_score", "auc_ci_low"])


def test_auc_interval_rejects_bad_settings() -> None:
    y, s = _scored(50)
    with pytest.raises(EvaluationInputError, match="n_resamples"):
        auc_interval(y, s, n_resamples=0)
    with pytest.raises(EvaluationInputError, match="level"):
        auc_interval(y, s, level=1.0)
    with pytest.raises(EvaluationInputError, match="single class"):
        auc_interval(np.zeros(5), np.arange(5.0))
    # two rows: a resample is a single class half of the time; find a seed whose only resample is one
    seed = next(k for k in range(100) if len(set(np.random.default_rng(k).integers(0, 2, size=2))) == 1)
    with pytest.raises(EvaluationInputError, match="every bootstrap resample"):
        auc_interval(np.array([1, 0]), np.array([0.2, 0.1]), n_resamples=1, seed=seed)
