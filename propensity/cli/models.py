"""Model commands: train, retrain, promote, rollback, models."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import DataDir, Engine, Events, SparkMaster, check_engine, events_path, settings
from propensity.cli.data import run_validation
from propensity.cli.events import with_ingested
from propensity.cli.inputs import InputError, check_events, event_rows
from propensity.cli.ui import console, frame_table, kv_table
from propensity.config import Settings

TARGET_HELP = "last_mile_buyer or lapse_risk."
TargetArg = Annotated[str, typer.Argument(help=TARGET_HELP, metavar="TARGET", show_default=False)]
Truth = Annotated[Path | None, typer.Option(help="truth.parquet from `propensity generate`, for the oracle AUC.")]
TuneTrials = Annotated[int | None, typer.Option(
    help="Search the LightGBM params first: at most this many trials per target, scored on the validation cutoff "
         "(the test cutoff stays unseen); 0 = no search.", min=0, show_default="the training.tune_trials setting, 0")]
TuneBudget = Annotated[float | None, typer.Option(
    help="Seconds of search per target (no trial starts after them), above 0.",
    show_default="the training.tune_budget_s setting, 60")]
CLEAN_FILES = ("events.parquet", "quarantine.csv", "validation.json")
"""What a validation run writes into its folder (switched together by `retrain`)."""


def registry(cfg: Settings) -> Any:
    from training.registry import Registry

    return Registry(cfg.tracking_uri, cfg.artifact_root)


def spark_sample_source(events: Path, spec: Any, master: str, fraction: float, seed: int) -> Any:
    """Raw features per cutoff from Spark, for a deterministic user sample (the same users at every cutoff)."""
    from features.build.spark import feature_frame_spark, sample_users, spark_connection

    con = spark_connection(master)

    def source(as_of: datetime) -> Any:
        return sample_users(feature_frame_spark(str(events), as_of, spec, con), fraction, seed, spec=spec)

    return source


def with_tuning(cfg: Settings, tune_trials: int | None, tune_budget: float | None) -> Settings:
    """``cfg`` with the search options given on the command line (None keeps the setting)."""
    update: dict[str, Any] = {}
    if tune_trials is not None:
        update["tune_trials"] = tune_trials
    if tune_budget is not None:
        if not tune_budget > 0:
            raise typer.BadParameter(f"must be above 0 seconds, got {tune_budget}", param_hint="--tune-budget")
        update["tune_budget_s"] = tune_budget
    if not update:
        return cfg
    return cfg.model_copy(update={"training": cfg.training.model_copy(update=update)})


def train_config(cfg: Settings, events: Path, truth: Path | None, data_end: datetime | None = None) -> Any:
    """The training run the settings describe (the same defaults as the Python API's ``TrainConfig``)."""
    from training.job import TrainConfig

    return TrainConfig.from_settings(cfg.training, cfg.features, events_path=events,
                                     out_dir=cfg.reports_dir / "training", truth_path=truth, data_end=data_end)


def run_train(
    cfg: Settings, events: Path, truth: Path | None, data_end: datetime | None = None, *,
    engine: str = "duckdb", spark_master: str = "local[2]", sample: float = 1.0,
) -> Any:
    """Train both targets under the training lock; print and return the report.

    With ``engine="spark"`` the features of every cutoff come from Spark, for a ``sample`` share of the users."""
    from dataclasses import replace

    from training.job import run_training
    from training.lock import exclusive_lock

    if event_rows(events) == 0:
        raise InputError(f"{events} holds no events: nothing to train on")
    tcfg = train_config(cfg, events, truth, data_end)
    if engine == "spark":
        tcfg = replace(tcfg, feature_source=spark_sample_source(events, tcfg.spec, spark_master, sample, cfg.seed))
    started = datetime.now(UTC).isoformat()
    with (
        exclusive_lock(cfg.artifact_root / ".train.lock", started),
        console().status("training") as status,
    ):
        report = run_training(tcfg, registry(cfg), say=status.update)
    print_training(report, cfg)
    return report


def print_training(report: Any, cfg: Settings) -> None:
    import pandas as pd

    if report.train_users < report.shop_users:
        console().print(f"trained on a seeded sample of {report.train_users:,} of {report.shop_users:,} users "
                        "(training.max_users)")

    keys = ["auc", "auc 95% ci", "pr_auc", "log_loss", "brier", "ece", "precision_top5", "lift_top5"]
    for target, out in report.outcomes.items():
        rows = {name: {k: _metric(m, k) for k in keys} for name, m in out.result.metrics.items()}
        if out.champion_metrics:
            rows["previous champion"] = {k: out.champion_metrics.get(k, float("nan")) for k in keys}
        table = pd.DataFrame(rows).T
        table.index.name = "model"
        title = f"{target}: test cutoff {out.cutoffs[-1]:%Y-%m-%d}, {len(out.result.test_labels):,} users"
        console().print(frame_table(title, table))
        if out.oracle_reason:
            console().print(f"  [yellow]no oracle[/]: {out.oracle_reason}")
        if out.result.tuning is not None:
            console().print(f"  tuning: {out.result.tuning.summary()}; best params on the version's tags")
        verdict = "[green]promoted to @champion[/]" if out.decision.promote else "[yellow]champion kept[/]"
        console().print(f"  version {out.version}: {verdict} ({out.decision.reason})")
        console().print(f"  MLflow run {out.run_id} in experiment '{target}' at {cfg.tracking_uri}")
        if out.result.plots:
            console().print(f"  plots: {next(iter(out.result.plots.values())).parent}")


def _metric(metrics: dict[str, float], key: str) -> Any:
    """One cell of the evaluation table: a metric, or the AUC interval as ``low-high`` text ("-" without one)."""
    if key == "auc 95% ci":
        low, high = metrics.get("auc_ci_low"), metrics.get("auc_ci_high")
        return "-" if low is None or high is None else f"{low:.4f}-{high:.4f}"
    return metrics.get(key, float("nan"))


def train(
    events: Events = None,
    truth: Truth = None,
    engine: Engine = "duckdb",
    spark_master: SparkMaster = "local[2]",
    sample: Annotated[float, typer.Option(
        help="With --engine spark: share of users to train on, in (0, 1].", max=1.0)] = 1.0,
    max_users: Annotated[int | None, typer.Option(
        help="DuckDB engine: train on a seeded sample of at most this many users (at least 1,000); 0 = everyone.",
        min=0, show_default="the training.max_users setting, 100,000")] = None,
    tune_trials: TuneTrials = None,
    tune_budget: TuneBudget = None,
    data_dir: DataDir = None,
) -> None:
    """Train both targets over stacked cutoffs, log to MLflow as @challenger, promote through the gate."""
    cfg = with_tuning(settings(data_dir=data_dir), tune_trials, tune_budget)
    check_engine(engine)
    if not sample > 0:
        raise typer.BadParameter(f"must be above 0 and at most 1, got {sample}", param_hint="--sample")
    if max_users is not None:
        if 0 < max_users < 1000:
            raise typer.BadParameter("use at least 1,000 users (or 0 for everyone)", param_hint="--max-users")
        training = cfg.training.model_copy(update={"max_users": max_users or None})
        cfg = cfg.model_copy(update={"training": training})
    source = check_events(events_path(cfg, events), default=events is None)
    run_train(cfg, source, truth, engine=engine, spark_master=spark_master, sample=sample)


def retrain(
    events: Annotated[list[Path], typer.Argument(help="Raw event file(s) (CSV/Parquet), validated first.")],
    truth: Truth = None,
    taobao: Annotated[bool, typer.Option(help="Input is the Taobao UserBehavior CSV (no header).")] = False,
    if_degraded: Annotated[bool, typer.Option(
        help="Monitor the kept snapshots with the validated events first (`propensity monitor`) and retrain only "
             "when monitoring alerts; otherwise the models and the clean events stay as they are.")] = False,
    tune_trials: TuneTrials = None,
    tune_budget: TuneBudget = None,
    data_dir: DataDir = None,
) -> None:
    """The scheduled job: validate -> features -> train both targets -> evaluate -> gate.

    Idempotent (same data, same seed: same models; the gate keeps the champion unless the new model is better)
    and locked, so two retrains never interleave. The new clean events replace <data-dir>/clean only when the
    training run succeeds. Exit codes: 0 done (promoted or kept), 1 bad input or too little data to train,
    2 a bad option, 3 too many bad rows, 4 another run holds the lock, 6 the registry is unavailable.
    """
    from training.lock import exclusive_lock

    cfg = with_tuning(settings(data_dir=data_dir), tune_trials, tune_budget)
    started = datetime.now(UTC)
    with exclusive_lock(cfg.artifact_root / ".retrain.lock", started.isoformat()):
        staging = cfg.data_dir / "retrain" / f"{started:%Y%m%dT%H%M%S}"
        try:
            report = run_validation(cfg, events, out=staging, taobao=taobao, against_ingested=True)
            source = with_ingested(cfg, staging, report.events_path)  # and the events /events acknowledged
            if if_degraded and not degraded(cfg, source):
                drop_staging(staging)
                console().print(f"no retraining: the models and {cfg.clean_dir} are unchanged")
                return
            run_train(cfg, source, truth)
        except BaseException:
            console(stderr=True).print(f"{cfg.clean_dir} is unchanged; this run's validated events and "
                                       f"quarantine stay in {staging}", soft_wrap=True, highlight=False)
            raise
        switch_clean_events(staging, cfg.clean_dir)
    console().print(f"clean events of this run now in {cfg.clean_dir / 'events.parquet'}")


def degraded(cfg: Settings, events: Path) -> bool:
    """Whether monitoring the kept snapshots with ``events`` alerts (the report is printed and logged). Nothing to
    monitor (no snapshot kept) is no alert."""
    from propensity.cli.monitor import run_monitor
    from serving.monitoring import MonitorError

    try:
        report = run_monitor(cfg, [events])
    except MonitorError as exc:
        console().print(f"nothing to monitor ({exc}); `propensity retrain` without --if-degraded trains anyway",
                        soft_wrap=True, highlight=False)
        return False
    return bool(report.alert)


def drop_staging(staging: Path) -> None:
    """Remove a validation run's staging folder (and its parent when that is left empty)."""
    shutil.rmtree(staging, ignore_errors=True)
    if staging.parent.is_dir() and not any(staging.parent.iterdir()):
        staging.parent.rmdir()


def switch_clean_events(staging: Path, clean_dir: Path) -> None:
    """Move a validation run's outputs from ``staging`` into ``clean_dir`` (each file by an atomic rename)."""
    clean_dir.mkdir(parents=True, exist_ok=True)
    for name in CLEAN_FILES:
        if (staging / name).exists():
            (staging / name).replace(clean_dir / name)
    drop_staging(staging)


def promote(
    target: TargetArg,
    version: Annotated[str | None, typer.Option(help="Version to promote.", show_default="the @challenger")] = None,
) -> None:
    """Point @champion at a version by hand (the previous champion is remembered for rollback)."""
    name = check_target(target)
    done = registry(settings()).promote(name, version)
    console().print(f"{name}: @champion -> version {done}")


def rollback(target: TargetArg) -> None:
    """Move @champion back to the version it pointed to before the last promotion."""
    name = check_target(target)
    done = registry(settings()).rollback(name)
    console().print(f"{name}: @champion -> version {done}")


def models() -> None:
    """Show the champion and challenger versions of both targets."""
    from training.bundle import TARGETS

    reg = registry(settings())
    rows = {f"{t} @{a}": reg.version(t, a) or "-" for t in TARGETS for a in ("champion", "challenger")}
    console().print(kv_table("registry", rows))


def check_target(name: str) -> str:
    from training.bundle import TARGETS

    if name not in TARGETS:
        raise typer.BadParameter(f"choose {' or '.join(TARGETS)}, got {name!r}", param_hint="TARGET")
    return name
