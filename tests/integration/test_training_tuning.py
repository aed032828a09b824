"""Training with the hyperparameter search: each trial is a child run of the target's MLflow run, the final model is
fitted with the best params and the model version carries them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from features.simulate.shop import GeneratorConfig, generate
from training.job import TrainConfig, run_training
from training.models import BoosterParams
from training.registry import Registry
from training.tuning import TUNED

pytestmark = pytest.mark.integration

USERS, DAYS, LAPSE, TRIALS = 2000, 56, 21, 3


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("shop")
    shop = GeneratorConfig(n_users=USERS, days=DAYS, seed=11, lapse_days=LAPSE)
    data, end = generate(shop, out), shop.start_utc + timedelta(days=DAYS)
    root = tmp_path_factory.mktemp("mlflow")
    registry = Registry(f"sqlite:///{root}/mlflow.db", root / "artifacts")
    cfg = TrainConfig(
        events_path=data.events_dir, out_dir=root / "plots", lapse_days=LAPSE, n_cutoffs=4, cutoff_spacing_days=7,
        min_positives=20, min_negatives=20, data_end=end, targets=("last_mile_buyer",),
        params=BoosterParams(num_boost_round=80, learning_rate=0.1, num_threads=1),  # steady on a busy machine
        tune_trials=TRIALS, tune_budget_s=60,
    )
    said: list[str] = []
    report = run_training(cfg, registry, say=said.append)
    return registry, cfg, report.outcomes["last_mile_buyer"], said, report


def test_each_trial_is_a_child_run_of_the_targets_run(tuned):
    registry, cfg, outcome, *_ = tuned
    tuning = outcome.result.tuning
    assert tuning is not None and len(tuning.trials_) == TRIALS
    parent = registry.client.get_run(outcome.run_id)
    children = registry.client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{outcome.run_id}'")
    assert len(children) == TRIALS
    by_trial = {int(run.data.tags["trial"]): run for run in children}
    assert sorted(by_trial) == list(range(TRIALS))
    for trial in tuning.trials_:
        run = by_trial[trial.number].data
        assert run.metrics["valid_logloss"] == pytest.approx(trial.valid_logloss)
        assert run.metrics["valid_auc"] == pytest.approx(trial.valid_auc)
        assert run.metrics["best_iteration"] == trial.best_iteration
        assert {k: run.params[k] for k in TUNED} == {k: str(v) for k, v in trial.params.items()}
        assert run.tags["best"] == str(trial.number == tuning.best_trial_.number).lower()
    assert {k: by_trial[0].data.params[k] for k in TUNED} == {k: str(getattr(cfg.params, k)) for k in TUNED}


def test_the_final_model_uses_the_best_params_and_the_version_records_them(tuned):
    registry, cfg, outcome, said, _ = tuned
    tuning = outcome.result.tuning
    best = tuning.best_trial_
    assert best.valid_logloss <= tuning.trials_[0].valid_logloss
    assert outcome.result.bundle.meta["best_iteration"] == best.best_iteration  # the same fit, refitted
    version = registry.client.get_model_version("last_mile_buyer", outcome.version)
    assert json.loads(version.tags["tuned_params"]) == best.params
    assert all(version.tags[f"best_{k}"] == str(v) for k, v in best.params.items())
    params = registry.client.get_run(outcome.run_id).data.params
    assert all(params[f"lgb_{k}"] == str(v) for k, v in best.params.items())
    assert params["lgb_num_boost_round"] == str(cfg.params.num_boost_round)  # the unsearched params stay
    assert params["tune_trials"] == str(TRIALS)
    assert f"tuning last_mile_buyer: at most {TRIALS} trials in 60 s" in said
    assert any(s.startswith(f"tuning last_mile_buyer: {TRIALS} trials in ") and
               s.endswith(f"{tuning.trials_[0].valid_logloss:.4f} -> {best.valid_logloss:.4f}") for s in said)


def test_the_training_command_prints_the_search(tuned, capsys, tmp_path):
    from propensity.cli.models import print_training
    from propensity.config import Settings

    *_, outcome, _, report = tuned
    print_training(report, Settings(data_dir=tmp_path))
    assert f"tuning: {outcome.result.tuning.summary()}" in capsys.readouterr().out.replace("\n", " ")
