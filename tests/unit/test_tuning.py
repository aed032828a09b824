"""The hyperparameter search: the base params are trial 0 and never beaten by a worse pick, the trial cap and the time
budget hold, and a fixed seed gives the same search."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from training.models import BoosterParams
from training.tuning import TUNED, SearchSpace, Tuner

BASE = BoosterParams(num_boost_round=120, early_stopping_rounds=15, min_data_in_leaf=40, num_threads=1)


def _data(seed: int = 3, n: int = 2400, f: int = 6) -> tuple[np.ndarray, ...]:
    """A separable-ish problem: log-odds linear in three of ``f`` features plus an interaction; (n, f) train and
    (n // 2, f) validation float matrices with 0/1 labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + n // 2, f))
    logit = -1.0 + 1.5 * x[:, 0] - 1.0 * x[:, 1] + 0.8 * x[:, 2] * x[:, 3]
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return x[:n], y[:n], x[n:], y[n:]


NAMES = [f"f{i}" for i in range(6)]


@pytest.fixture(scope="module")
def searched() -> Tuner:
    x_tr, y_tr, x_va, y_va = _data()
    return Tuner(n_trials=6, budget_s=120).fit(x_tr, y_tr, x_va, y_va, NAMES, BASE)


def test_trial_zero_is_the_base_params_and_the_best_is_no_worse(searched: Tuner) -> None:
    first = searched.trials_[0]
    assert first.number == 0 and first.params == {name: getattr(BASE, name) for name in TUNED}
    assert searched.default_trial_ is first
    assert searched.best_trial_.valid_logloss <= first.valid_logloss
    assert searched.best_trial_.valid_logloss == min(t.valid_logloss for t in searched.trials_)
    assert searched.best_params_ == replace(BASE, **searched.best_trial_.params)
    for t in searched.trials_:
        assert 0 < t.valid_logloss < 0.7 and 0.5 < t.valid_auc <= 1 and 1 <= t.best_iteration <= 120
        assert t.seconds > 0 and set(t.params) == set(TUNED)
    assert "6 trials in" in searched.summary()
    assert f"{first.valid_logloss:.4f} -> {searched.best_trial_.valid_logloss:.4f}" in searched.summary()


def test_trials_stay_in_the_space(searched: Tuner) -> None:
    space = SearchSpace()
    for t in searched.trials_[1:]:
        for name in TUNED:
            lo, hi = getattr(space, name)
            assert lo <= t.params[name] <= hi, name
    assert isinstance(searched.best_params_.num_leaves, int)
    assert isinstance(searched.best_params_.min_data_in_leaf, int)


def test_a_fixed_seed_gives_the_same_search(searched: Tuner) -> None:
    x_tr, y_tr, x_va, y_va = _data()
    again = Tuner(n_trials=6, budget_s=120).fit(x_tr, y_tr, x_va, y_va, NAMES, BASE)
    assert [t.params for t in again.trials_] == [t.params for t in searched.trials_]
    assert [t.valid_logloss for t in again.trials_] == [t.valid_logloss for t in searched.trials_]
    assert again.best_params_ == searched.best_params_
    other = Tuner(n_trials=6, budget_s=120, seed=99).fit(x_tr, y_tr, x_va, y_va, NAMES, BASE)
    assert other.trials_[0].params == searched.trials_[0].params  # the base params first, whatever the seed
    assert [t.params for t in other.trials_[1:]] != [t.params for t in searched.trials_[1:]]


def test_the_budget_stops_the_search_before_the_trial_cap() -> None:
    x_tr, y_tr, x_va, y_va = _data()
    started = time.perf_counter()
    tuner = Tuner(n_trials=1000, budget_s=1.0).fit(x_tr, y_tr, x_va, y_va, NAMES, BASE)
    elapsed = time.perf_counter() - started
    assert 1 <= len(tuner.trials_) < 1000
    slowest = max(t.seconds for t in tuner.trials_)
    assert elapsed < 1.0 + slowest + 1.0  # no trial starts after the budget; the last one may run over
    assert tuner.seconds_ <= elapsed


def test_a_base_value_outside_the_space_widens_it() -> None:
    x_tr, y_tr, x_va, y_va = _data(n=1200)
    base = replace(BASE, num_leaves=2, learning_rate=0.5)
    tuner = Tuner(n_trials=2, budget_s=60).fit(x_tr, y_tr, x_va, y_va, NAMES, base)
    assert tuner.trials_[0].params["num_leaves"] == 2 and tuner.trials_[0].params["learning_rate"] == 0.5


@pytest.mark.parametrize("kwargs", [{"n_trials": 0}, {"n_trials": 3, "budget_s": 0.0}])
def test_bad_bounds_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be"):
        Tuner(**kwargs)


def test_the_command_line_options_reach_the_training_config(tmp_path) -> None:
    import typer

    from propensity.cli.models import train_config, with_tuning
    from propensity.config import Settings

    base = Settings(data_dir=tmp_path)
    assert with_tuning(base, None, None) is base
    assert (base.training.tune_trials, base.training.tune_budget_s) == (0, 60.0)  # off by default
    cfg = train_config(with_tuning(base, 5, 30.0), tmp_path / "e.parquet", None)
    assert (cfg.tune_trials, cfg.tune_budget_s) == (5, 30.0)
    assert train_config(with_tuning(base, 7, None), tmp_path / "e.parquet", None).tune_budget_s == 60.0
    with pytest.raises(typer.BadParameter, match="above 0 seconds"):
        with_tuning(base, 3, 0.0)
