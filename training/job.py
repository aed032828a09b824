"""The training job: features over cutoffs -> both targets -> evaluation -> MLflow -> promotion gate.

I/O lives here (reading events, writing plots, talking to MLflow); the pieces it calls are pure.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.build.builder import build_features, default_connection, events_table
from features.segments.segmenter import Segmenter
from features.settings import FeatureSettings
from features.spec.definition import FeatureSpec
from training.btyd import BTYDError
from training.btyd.features import BTYDFeatures
from training.bundle import TARGETS, ModelBundle
from training.datasets import POPULATION_EVENTS, check_eligible, cutoffs_for, labelled_frame, time_split, window_days
from training.evaluate import evaluate
from training.labels import LabelSpec, data_end
from training.models import BoosterParams
from training.oracle import Truth
from training.reference import model_reference_profile
from training.registry import CHAMPION, GateDecision, Registry, gate
from training.sampling import sampled_events
from training.settings import TrainingSettings
from training.train import TargetResult, train_target, write_plots
from training.tuning import Tuner

Say = Callable[[str], None]
_DEFAULTS = TrainingSettings()  # one source of defaults: the settings section


@dataclass(frozen=True)
class TrainConfig:
    """What one training run needs. ``lapse_days=None`` takes N from the fitted 80/20 silent gap.
    ``data_end``: the end of the observed period (label windows must fit before it); default the last event time.
    ``feature_source``: builds the raw feature table for a cutoff (default: ``build_features`` on DuckDB); the
    Spark engine passes a user sample of the Spark feature table here, so models still train on one machine.
    ``max_users``: train on a deterministic sample of at most this many users (seeded by ``params.seed``; the
    events are filtered once, before every feature build); None trains on everyone. Ignored with
    ``feature_source``, which samples on its own. ``holdout``: share of users held out of training (half for
    validation, half for test) for a target whose label window is longer than the cutoff spacing
    (see :func:`training.datasets.time_split`). ``btyd_features``: give LightGBM the BTYD columns (False: the BTYD
    part is still fitted and saved for the baseline and the outputs, the model does without its columns).
    ``tune_trials``: search the booster params per target first (at most this many trials, none started after
    ``tune_budget_s`` seconds, scored on the validation cutoff; see :class:`training.tuning.Tuner`) and train the
    final model with the best; 0 trains with ``params`` as they are.
    """

    events_path: Path
    out_dir: Path
    spec: FeatureSpec = FeatureSpec()
    horizon_days: int = _DEFAULTS.horizon_days
    lapse_days: int | None = _DEFAULTS.lapse_days
    n_cutoffs: int = _DEFAULTS.n_cutoffs
    cutoff_spacing_days: int = _DEFAULTS.cutoff_spacing_days
    min_positives: int = _DEFAULTS.min_positives
    min_negatives: int = _DEFAULTS.min_negatives
    params: BoosterParams = BoosterParams.from_settings(_DEFAULTS)
    calibration: str = _DEFAULTS.calibration
    logloss_tolerance: float = _DEFAULTS.gate_logloss_tolerance
    truth_path: Path | None = None
    data_end: datetime | None = None
    targets: tuple[str, ...] = TARGETS
    feature_source: Callable[[datetime], pd.DataFrame] | None = None
    max_users: int | None = _DEFAULTS.max_users
    holdout: float = _DEFAULTS.holdout
    btyd_features: bool = True
    tune_trials: int = _DEFAULTS.tune_trials
    tune_budget_s: float = _DEFAULTS.tune_budget_s

    @classmethod
    def from_settings(
        cls, training: TrainingSettings, features: FeatureSettings, *, events_path: Path, out_dir: Path,
        **overrides: Any,
    ) -> TrainConfig:
        """The run the settings describe; ``overrides`` set any other field (truth_path, data_end, targets...)."""
        t = training
        return cls(
            events_path=events_path, out_dir=out_dir, spec=FeatureSpec.from_settings(features),
            horizon_days=t.horizon_days, lapse_days=t.lapse_days, n_cutoffs=t.n_cutoffs,
            cutoff_spacing_days=t.cutoff_spacing_days, min_positives=t.min_positives, min_negatives=t.min_negatives,
            params=BoosterParams.from_settings(t), calibration=t.calibration,
            logloss_tolerance=t.gate_logloss_tolerance, max_users=t.max_users, holdout=t.holdout,
            tune_trials=t.tune_trials, tune_budget_s=t.tune_budget_s, **overrides,
        )


@dataclass
class TargetOutcome:
    target: str
    result: TargetResult
    version: str
    run_id: str
    decision: GateDecision
    champion_metrics: dict[str, float] | None
    counts: dict[str, int]
    cutoffs: list[datetime]
    oracle_reason: str = ""  # why the run has no oracle (truth given but not covering it); "" otherwise


@dataclass
class TrainReport:
    outcomes: dict[str, TargetOutcome] = field(default_factory=dict)
    fingerprint: str = ""
    lapse_days: int = 0
    shop_users: int = 0
    train_users: int = 0


def data_fingerprint(events: Any) -> str:
    """A stable hash of the event data set: rows, users, time range, behaviors and amount total."""
    agg = events.aggregate(
        n=events.count(), users=events.user_id.nunique(), t0=events.ts.min(), t1=events.ts.max(),
        buys=(events.behavior == "buy").sum(), amount=events.amount.sum(),
    ).to_pandas().iloc[0]
    text = "|".join(str(agg[k]) for k in ("n", "users", "t0", "t1", "buys", "amount"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_training(cfg: TrainConfig, registry: Registry, say: Say = lambda _: None) -> TrainReport:
    """Train every target in ``cfg.targets``, log each to MLflow as ``@challenger`` and gate it to ``@champion``."""
    con = default_connection()
    source = events_table(cfg.events_path, con)
    report = TrainReport(fingerprint=data_fingerprint(source))
    end = cfg.data_end or data_end(source)
    limit = None if cfg.feature_source else cfg.max_users
    with sampled_events(source, limit, cfg.params.seed, con) as (events, n_users):
        report.shop_users = n_users
        report.train_users = min(n_users, limit) if limit else n_users
        if report.train_users < n_users:
            say(f"training on a sample of {report.train_users:,} of {n_users:,} users")
        _train_all(cfg, registry, say, con, events, end, report)
    return report


def _train_all(
    cfg: TrainConfig, registry: Registry, say: Say, con: Any, events: Any, end: datetime, report: TrainReport
) -> None:
    feature_cache: dict[tuple[datetime, str | None], pd.DataFrame] = {}

    def raw_features(as_of: datetime, target: str | None = None) -> pd.DataFrame:
        """Features of everyone at ``as_of`` or, for a target whose labels cover only part of the users, of at least
        that population (features are per user, so a smaller input gives the same rows for those users)."""
        if (as_of, None) in feature_cache:
            return feature_cache[(as_of, None)]
        narrow = target is not None and cfg.feature_source is None and target in POPULATION_EVENTS
        key = (as_of, target if narrow else None)
        if key not in feature_cache:
            say(f"features as of {as_of:%Y-%m-%d}" + (f" ({target} population)" if narrow else ""))
            if cfg.feature_source:
                feature_cache[key] = cfg.feature_source(as_of)
            else:
                source = POPULATION_EVENTS[target](events, as_of) if narrow else events
                feature_cache[key] = build_features(source, as_of, cfg.spec, con=con)
        return feature_cache[key]

    buy_cutoffs = cutoffs_for(end, cfg.n_cutoffs, cfg.cutoff_spacing_days, cfg.horizon_days)
    lapse_days = cfg.lapse_days
    if lapse_days is None:
        probe_at = buy_cutoffs[-3]
        probe = Segmenter().fit(events, raw_features(probe_at), probe_at)
        lapse_days = max(1, math.ceil(probe.lifecycle_.silent_days_))
        say(f"lapse window N = {lapse_days} days (80/20 silent gap)")
    report.lapse_days = lapse_days
    label_spec = LabelSpec(horizon_days=cfg.horizon_days, lapse_days=lapse_days)
    cutoffs = {
        t: cutoffs_for(end, cfg.n_cutoffs, cfg.cutoff_spacing_days, window_days(t, label_spec)) for t in cfg.targets
    }
    seg_at = min(c[-3] for c in cutoffs.values())  # the earliest last-training cutoff: never sees a test window
    segmenter = Segmenter().fit(events, raw_features(seg_at), seg_at)
    truth = Truth.read(cfg.truth_path) if cfg.truth_path else None

    for target in cfg.targets:
        say(f"training {target}")
        frames = [
            segmenter.transform(labelled_frame(target, events, t, label_spec, raw_features(t, target)))
            for t in cutoffs[target]
        ]
        overlapping = window_days(target, label_spec) > cfg.cutoff_spacing_days
        split = time_split(frames, cfg.holdout if overlapping else None, seed=cfg.params.seed)
        counts = check_eligible(target, split, cfg.min_positives, cfg.min_negatives)
        btyd, btyd_note = _fit_btyd(target, cutoffs[target][:-2], label_spec, raw_features, say)
        oracle, oracle_reason = (None, "no truth file given")
        if truth is not None:
            oracle, oracle_reason = truth.oracle(target, split.test, label_spec, say)
            if oracle is None:
                say(f"{target}: no oracle: {oracle_reason}")
        params = _params(cfg, target, cutoffs[target], label_spec, report.fingerprint, counts)
        params.update(shop_users=report.shop_users, train_users=report.train_users, btyd=btyd_note,
                      split=f"time + users ({cfg.holdout:.0%} held out)" if overlapping else "time")
        tuner = None
        if cfg.tune_trials > 0:
            say(f"tuning {target}: at most {cfg.tune_trials} trials in {cfg.tune_budget_s:g} s")
            tuner = Tuner(cfg.tune_trials, cfg.tune_budget_s)
        result = train_target(
            target, split, segmenter, cfg.spec, label_spec, cfg.params, calibration=cfg.calibration,
            oracle=oracle, meta={"trained_on": params["data_fingerprint"], "test_as_of": params["test_as_of"]},
            btyd=btyd, btyd_features=cfg.btyd_features, tuner=tuner,
        )
        if result.tuning is not None:
            say(f"tuning {target}: {result.tuning.summary()}")
            params.update({f"lgb_{k}": v for k, v in result.tuning.best_params_.__dict__.items()})
            params.update(tune_trials=len(result.tuning.trials_), tune_budget_s=cfg.tune_budget_s,
                          tune_seconds=round(result.tuning.seconds_, 1))
        write_plots(result, cfg.out_dir / target)
        ref_at = cutoffs[target][-3]  # the last training cutoff: what monitoring measures drift against
        result.bundle.meta["reference_profile"] = model_reference_profile(
            result.bundle, segmenter.transform(raw_features(ref_at)), meta={"cutoff": ref_at.isoformat()}).to_dict()
        champion_metrics = _champion_metrics(registry, target, split.test, events, con, cfg.spec, raw_features)
        decision = gate(result.main, champion_metrics, cfg.logloss_tolerance)
        if champion_metrics is None and registry.version(target, CHAMPION) is not None:
            decision = GateDecision(True, "the champion was built on feature spec "
                                    f"{registry.load_bundle(target, CHAMPION)[0].spec.version}, which this version "
                                    f"no longer builds (spec {FeatureSpec.version}): it cannot be compared")
        example = pd.DataFrame(result.bundle.matrix(split.test.head(5)), columns=result.bundle.feature_names)
        run_id, version = registry.log_challenger(
            result.bundle, params=params, metrics=result.metrics, plots=result.plots, input_example=example,
            tags={"gate": "promoted" if decision.promote else "kept champion", "gate_reason": decision.reason,
                  "oracle": "computed" if oracle is not None else f"not computed: {oracle_reason}"},
        )
        if decision.promote:
            registry.promote(target, version)
        registry.client.set_model_version_tag(target, version, "gate_reason", decision.reason)
        if result.tuning is not None:
            _log_tuning(registry, target, run_id, version, result.tuning)
        report.outcomes[target] = TargetOutcome(
            target, result, version, run_id, decision, champion_metrics, counts, cutoffs[target],
            oracle_reason="" if oracle is not None or truth is None else oracle_reason,
        )


def _params(
    cfg: TrainConfig, target: str, cutoffs: list[datetime], label_spec: LabelSpec, fingerprint: str,
    counts: dict[str, int],
) -> dict[str, Any]:
    return {
        "target": target,
        "spec_version": cfg.spec.version,
        "spec_fingerprint": cfg.spec.fingerprint(),
        "cutoffs": [c.isoformat() for c in cutoffs],
        "test_as_of": cutoffs[-1].isoformat(),
        "horizon_days": label_spec.horizon_days,
        "lapse_days": label_spec.lapse_days,
        "calibration": cfg.calibration,
        "data_fingerprint": fingerprint,
        **{f"lgb_{k}": v for k, v in cfg.params.__dict__.items()},
        **counts,
    }


def _log_tuning(registry: Registry, target: str, run_id: str, version: str, tuning: Tuner) -> None:
    """Each trial of the search as a child run of the target's run ``run_id`` (its searched params; metrics
    ``valid_logloss``, ``valid_auc``, ``best_iteration`` and ``fit_seconds``), and the best params on the model
    version: ``tuned_params`` (JSON) and one ``best_<name>`` tag per searched param."""
    import json
    import time

    from mlflow.entities import Metric, Param
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    client = registry.client
    experiment = registry.experiment_id(target)
    best = tuning.best_trial_.number
    for trial in tuning.trials_:
        child = client.create_run(experiment, run_name=f"{target} trial {trial.number}", tags={
            MLFLOW_PARENT_RUN_ID: run_id, "trial": str(trial.number), "best": str(trial.number == best).lower()})
        now = int(time.time() * 1000)
        values = {"valid_logloss": trial.valid_logloss, "valid_auc": trial.valid_auc,
                  "best_iteration": trial.best_iteration, "fit_seconds": trial.seconds}
        client.log_batch(
            child.info.run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in values.items() if math.isfinite(v)],
            params=[Param(k, str(v)) for k, v in trial.params.items()],
        )
        client.set_terminated(child.info.run_id)
    client.set_model_version_tag(target, version, "tuned_params", json.dumps(tuning.best_trial_.params))
    for name, value in tuning.best_trial_.params.items():
        client.set_model_version_tag(target, version, f"best_{name}", str(value))


def _fit_btyd(
    target: str, train_cutoffs: list[datetime], label_spec: LabelSpec,
    raw_features: Callable[[datetime, str | None], pd.DataFrame], say: Say,
) -> tuple[BTYDFeatures | None, str]:
    """The BTYD part of ``target``: BG/NBD and Gamma-Gamma fitted on every buyer's purchase history before each
    training cutoff (the validation and test cutoffs stay unseen), and a note for the run's parameters; ``(None,
    reason)`` when it cannot be fitted (no buyers, a failed fit), and the model trains without its columns."""
    try:
        btyd = BTYDFeatures(window_days(target, label_spec)).fit(raw_features(t, target) for t in train_cutoffs)
    except BTYDError as err:
        say(f"{target}: no BTYD part: {err}")
        return None, f"not fitted: {err}"
    b = btyd.bgf_
    spend = "Gamma-Gamma" if btyd.ggf_ is not None else "no Gamma-Gamma (own mean spend)"
    return btyd, f"BG/NBD r={b.r_:.4g} alpha={b.alpha_:.4g} a={b.a_:.4g} b={b.b_:.4g} on {btyd.n_rows_:,} rows; {spend}"


def _champion_metrics(
    registry: Registry, target: str, test: pd.DataFrame, events: Any, con: Any, spec: FeatureSpec,
    raw_features: Callable[[datetime], pd.DataFrame],
) -> dict[str, float] | None:
    """The current champion's metrics on this run's test cutoff and labels (its own spec and segmenter); None when
    there is no champion or it was built on a feature spec version this code no longer builds."""
    if registry.version(target, CHAMPION) is None:
        return None
    champion, _ = registry.load_bundle(target, CHAMPION)
    if champion.spec.version != FeatureSpec.version:  # built by an older feature definition: not comparable
        return None
    as_of = pd.Timestamp(test["as_of"].iloc[0]).to_pydatetime()
    same_spec = champion.spec == spec
    raw = raw_features(as_of) if same_spec else build_features(events, as_of, champion.spec, con=con)
    labels = test[["user_id", "label"]]
    frame = champion.segmenter.transform(raw.merge(labels, on="user_id", how="inner"))
    return evaluate(frame["label"].to_numpy(np.int8), champion.predict(frame))


def load_champions(registry: Registry, targets: tuple[str, ...] = TARGETS) -> dict[str, ModelBundle]:
    """Every target's ``@champion`` bundle (raises RegistryError naming the first one missing)."""
    return {t: registry.load_bundle(t, CHAMPION)[0] for t in targets}
