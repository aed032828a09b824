"""Serving commands: score, snapshots, rollback-scores, lookup, audience, report, serve, pin."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import (
    UNAVAILABLE,
    AsOf,
    DataDir,
    Engine,
    Events,
    SparkMaster,
    check_engine,
    events_path,
    settings,
)
from propensity.cli.inputs import InputError, check_audience, check_events, check_feature_file
from propensity.cli.models import registry
from propensity.cli.ui import console, kv_table, progress_bar, warn
from propensity.config import Settings
from propensity.paths import check_output, replace_atomically

ScoresOpt = Annotated[Path | None, typer.Option(
    help="Audience file from `propensity score` (Parquet, or its folder with --engine spark).",
    show_default="the newest in <data-dir>/scores")]


STOPPED_BY_SIGNAL = (0, -2, -15, 130, 143)
"""Server exit codes of a normal stop (Ctrl-C or SIGTERM); any other is reported as unavailable (6)."""


class UnavailableError(RuntimeError):
    """Something the command needs is not there yet or cannot be used (no snapshot, port in use)."""

    exit_code = UNAVAILABLE


def open_score_store(cfg: Settings) -> Any:
    from serving.store.base import open_store

    return open_store(cfg.store_path, cfg.redis_url, keep=cfg.serving.keep_snapshots)


def activation_config(cfg: Settings) -> Any:
    """The activation economics of the settings, each action's prior lift replaced by what its closed campaigns
    measured (shrunk toward the prior; see :func:`serving.activation.loop.measured_activation`)."""
    from serving.activation.actions import ActivationConfig
    from serving.activation.loop import measured_activation

    prior = ActivationConfig.from_settings(cfg.activation)
    return measured_activation(cfg.campaigns_dir, prior, cfg.campaigns.prior_strength)


def audience_files(cfg: Settings) -> list[Path]:
    """Audience outputs of `propensity score`, oldest first: Parquet files (DuckDB) or folders (Spark)."""
    found = [p for p in cfg.scores_dir.glob("audience_*") if p.suffix == ".parquet" or p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def latest_audience(cfg: Settings) -> Path:
    """The newest audience file written by `propensity score`."""
    files = audience_files(cfg)
    if not files:
        raise InputError(f"no audience file in {cfg.scores_dir}: run `propensity score --as-of T` first "
                         "(or pass --scores)")
    return files[-1]


def read_audience(path: Path, columns: Any, columns_read: list[str] | None = None) -> Any:
    """An audience file checked for ``columns`` and read as pandas."""
    import pandas as pd

    check_audience(path, columns)
    return pd.read_parquet(path, columns=columns_read)


def check_action(action: str) -> str:
    from serving.activation.actions import ACTIONS

    if action not in ACTIONS:
        raise typer.BadParameter(f"choose one of {', '.join(ACTIONS)}; got {action!r}", param_hint="--action")
    return action


def run_audience(
    cfg: Settings, action: str, out: Path, *, scores: Path | None = None, budget: float | None = None,
    top: int | None = None,
) -> Any:
    """Pick the audience for one action from an audience file and record it as a campaign (treatment and control);
    write the send list (treatment users only) as CSV and print the expected incremental outcome."""
    check_action(action)
    check_output(out, cfg)
    launched = launch(cfg, scores or latest_audience(cfg), action, budget=budget, top=top)
    write_send_list(launched.send, out)
    summary, campaign = launched.summary, launched.campaign
    rows = {k: v for k, v in summary.to_dict().items() if v is not None}
    counts = campaign.to_dict().get("counts", {})
    rows["campaign"] = f"{campaign.campaign_id} ({counts.get('treatment', 0):,} to send, " \
                       f"{counts.get('control', 0):,} held out as control)"
    rows["send list written to"] = out
    rows["campaign record"] = campaign.path
    console().print(kv_table(f"audience: {action}", rows))
    return launched


def launch(cfg: Settings, source: Path, action: str, *, budget: float | None = None, top: int | None = None,
           created_at: datetime | None = None) -> Any:
    """The campaign of one action's audience from an audience file (its snapshot and model versions recorded)."""
    from serving.activation.audiences import AUDIENCE_COLUMNS
    from serving.activation.loop import audience_facts, launch_campaign

    frame = read_audience(source, AUDIENCE_COLUMNS)
    snap = snapshot_of(cfg, source)
    as_of, models = audience_facts(frame)
    return launch_campaign(cfg.campaigns_dir, frame, action, activation_config(cfg), cfg.campaigns, as_of=as_of,
                           created_at=created_at or datetime.now(UTC), model_versions=models,
                           snapshot_id=snap.snapshot_id if snap is not None else None, budget=budget, top_k=top)


def write_send_list(send: Any, out: Path) -> None:
    """The send list as CSV: who to act on, best first, with deadline and expected incremental value."""
    columns = [c for c in ("audience_rank", "user_id", "action", "action_deadline", "action_p", "incremental_p",
                           "priority", "expected_profit", "aipl_layer", "lifecycle", "rfm_group") if c in send.columns]
    replace_atomically(out, lambda tmp: send[columns].to_csv(tmp, index=False))


def prebuilt_features(path: Path, as_of: datetime, spec: Any) -> Any:
    """A feature file from ``propensity features``, checked against the cutoff and the champions' feature spec."""
    from features.build.builder import read_features

    table, meta = read_features(check_feature_file(path))
    if meta["as_of"] != as_of:
        raise typer.BadParameter(f"{path} holds features as of {meta['as_of'].isoformat()}, not {as_of.isoformat()}",
                                 param_hint="--features")
    if meta.get("spec", spec) != spec:
        raise typer.BadParameter(f"{path} was built with feature spec {meta['spec_version']}, the champions use "
                                 f"{spec.version}; rebuild it with `propensity features`", param_hint="--features")
    return table


def run_score(
    cfg: Settings, events: Path, as_of: datetime, out: Path | None = None, publish: bool = True,
    engine: str = "duckdb", spark_master: str = "local[2]", features: Path | None = None, reasons: bool = True,
    force: bool = False, log_seq: int = 0, explain: str = "audience", history_files: list[Path] | None = None,
) -> Any:
    """Score everyone with the champions, write the audience Parquet, publish the snapshot; print a summary.

    With ``engine="spark"`` features and scores are computed on Spark (partitioned audience directory). With
    ``features`` (a file written by ``propensity features``) the batch scores that table instead of building one.
    With fresh scores on, a published batch (either engine) also keeps each user's events next to the snapshot
    (:func:`keep_history`; ``log_seq``: the event-log sequence number up to which ``events`` holds ingested
    events; ``history_files``: the event files that hold exactly those, listed under the export's lock, else listed
    here)."""
    from features.build.builder import source_files
    from serving.batch.run import run_batch
    from training.job import load_champions

    if history_files is None:  # listed by the export when the events include the log's (see export_for_batch)
        history_files = source_files(events) if features is None and cfg.serving.fresh_scores else []
    if features is None and engine == "duckdb":
        from features.build.builder import default_connection, events_table
        from propensity.cli.data import warn_cutoff

        warn_cutoff(events_table(events, default_connection()), as_of, "the batch")
    bundles = load_champions(registry(cfg))
    spec = next(iter(bundles.values())).spec
    table = prebuilt_features(features, as_of, spec) if features else None
    suffix = "" if engine == "spark" else ".parquet"
    out = check_output(out or cfg.scores_dir / f"audience_{as_of:%Y%m%dT%H%M}{suffix}", cfg, is_dir=not suffix)
    con = None
    if engine == "spark":
        from features.build.spark import spark_connection

        con = spark_connection(spark_master)
    kept: Any = None
    saving: Any = None
    if features is None and cfg.features.keep_state:
        state_files = history_files or source_files(events)
        if engine == "spark":
            kept = _kept_features_spark(cfg, con, state_files, as_of, spec, f"{out}.features")
        else:
            kept, table = _kept_features(cfg, state_files, as_of, spec)
            saving = _save_in_background(cfg, kept, state_files)  # the moved-on state is written while scoring
    store = open_score_store(cfg) if publish else None
    common = {"activation": activation_config(cfg), "created_at": datetime.now(UTC), "force": force,
              "min_share": cfg.serving.min_publish_share}
    try:
        with progress_bar("scoring users") as progress:
            if engine == "spark":
                from serving.batch.spark import run_batch_spark

                source = kept.table if kept is not None and not isinstance(kept, str) else events
                result = run_batch_spark(
                    source, as_of, bundles, store, out, con=con,
                    chunk_rows=cfg.serving.batch_chunk_users, progress=progress, **common,
                )
            else:
                result = run_batch(
                    events, as_of, bundles, store, out, chunk_users=cfg.serving.batch_chunk_users,
                    progress=progress, features=table, reasons=reasons, explain=explain, **common,
                )
    finally:
        if store is not None:
            store.close()
    rows: dict[str, Any] = {
        "users scored": result.users, "as of": as_of.isoformat(), "mean p_buy": result.mean_p_buy,
        **({"features": _keep_state(cfg, kept, state_files, as_of, spec, saving, con)} if kept is not None else {}),
        "models": ", ".join(f"{t} v{b.meta.get('version')}" for t, b in bundles.items()),
        "audience file": result.audience_path,
    }
    rows.update({f"  action {k}": v for k, v in sorted(result.action_counts.items())})
    if result.snapshot is not None:
        rows["snapshot"] = result.snapshot.snapshot_id
        rows["store"] = cfg.redis_url or cfg.store_path
        if cfg.serving.fresh_scores and features is None:  # either engine: the history is read with DuckDB
            try:
                rows["event history"], rows["  history kept"] = keep_history(
                    cfg, history_files, result.snapshot.snapshot_id, log_seq)
            except OSError as exc:  # the snapshot is published and served; only its fresh rescoring is off
                warn(f"the snapshot is published, but its event history could not be written ({exc}): /lookup "
                     "serves its stored rows without rescoring users with newer events")
    console().print(kv_table("batch scores", rows))
    return result


def _kept_features(cfg: Settings, files: list[Path], as_of: datetime, spec: Any) -> tuple[Any, Any]:
    """Tonight's feature table moved on from the kept state (with it, the ``KeptFeatures``), or (the reason it
    cannot be, None): the batch then builds the table from all events."""
    from features.incremental.nightly import kept_features

    with progress_bar("moving the kept feature state on"):
        kept = kept_features(cfg.feature_state_dir, files, as_of, spec)
    return (kept, kept.table) if not isinstance(kept, str) else (kept, None)


def _kept_features_spark(cfg: Settings, con: Any, files: list[Path], as_of: datetime, spec: Any, out: str) -> Any:
    """Tonight's Spark feature table moved on from the kept Spark state (``SparkKept``), or the reason it cannot
    be: the batch then builds the table from all events."""
    from features.build.spark import error_line
    from features.incremental.spark import kept_features_spark

    with progress_bar("moving the kept feature state on (Spark)"):
        try:
            return kept_features_spark(con, cfg.feature_state_dir_spark, files, as_of, spec, out)
        except Exception as exc:  # a Spark job failed: the kept state is left as it was, the batch builds whole
            return f"the kept state could not be moved on on Spark: {error_line(exc)}"


def _save_in_background(cfg: Settings, kept: Any, files: list[Path]) -> Any:
    """A future of writing the moved-on state (None when the table was built whole: see :func:`_keep_state`)."""
    if isinstance(kept, str):
        return None
    from concurrent.futures import ThreadPoolExecutor

    from features.incremental.nightly import keep_state

    pool = ThreadPoolExecutor(1, thread_name_prefix="keep-state")
    saving = pool.submit(keep_state, kept.state, cfg.feature_state_dir, files)
    pool.shutdown(wait=False)  # the write goes on (and is waited for at exit, should the batch fail)
    return saving


def _keep_state(cfg: Settings, kept: Any, files: list[Path], as_of: datetime, spec: Any, saving: Any,
                con: Any = None) -> str:
    """Keep the feature state for the next batch: wait for the moved-on one (``saving``; on Spark it is already
    kept), or compute one from all events when the table was built whole (``kept`` is then the reason), on Spark
    with ``con``. Says what happened; a state that cannot be kept only warns (the next batch builds whole
    again)."""
    from features.incremental.nightly import kept_cutoff, start_state
    from features.incremental.spark import kept_cutoff_spark, start_state_spark

    try:
        if isinstance(kept, str):
            later = (kept_cutoff(cfg.feature_state_dir) if con is None
                     else kept_cutoff_spark(cfg.feature_state_dir_spark))
            if later is not None and later > as_of:  # a batch for an earlier cutoff leaves the newer state alone
                return f"built from all events ({kept}); the kept state of {later.isoformat()} left as it is"
            with progress_bar("keeping the feature state for the next batch"):
                if con is None:
                    start_state(files, as_of, spec, cfg.feature_state_dir)
                else:
                    start_state_spark(con, cfg.feature_state_dir_spark, files, as_of, spec,
                                      n_buckets=cfg.features.state_buckets)
            return f"built from all events ({kept}); state kept for the next batch"
        if saving is not None:
            saving.result()
    except Exception as exc:  # IncrementalUnsupported, unreadable Parquet (ArrowInvalid), a failed Spark job
        from features.build.spark import error_line

        warn(f"the feature state could not be kept ({error_line(exc)}): the next batch builds its features from all "
             "events")
        return f"built from all events ({kept})" if isinstance(kept, str) else "moved on; state not kept"
    return (f"moved on {kept.nights} night(s) from the kept state: {kept.events:,} events from {kept.files} new "
            f"file(s)" + (f" and {kept.carried} read again for events after the last cutoff" if kept.carried else ""))


def keep_history(cfg: Settings, files: list[Path], snapshot_id: str, log_seq: int) -> tuple[Path, str]:
    """Write the per-user event history of ``snapshot_id`` under ``cfg.online_dir`` (the state ``/lookup`` rescores
    fresh users from) and remove those of snapshots the store no longer keeps; returns its path and how it was
    written. ``files``: the event files as listed when the batch started, which hold the log up to ``log_seq`` (a
    part another command exports meanwhile is left to the next batch: its events are above ``log_seq``).

    The last history is extended with the event files added since, when its files are unchanged (up to
    ``serving.history_max_deltas`` times); otherwise the history is written whole."""
    from features.build.builder import default_connection
    from features.online.sources import keep_history as keep
    from serving.fresh import LOG_SEQ_KEY, prune_histories

    out = cfg.online_dir / snapshot_id
    with progress_bar("keeping event history") as progress:
        kept = keep(files, out, con=default_connection(), max_deltas=cfg.serving.history_max_deltas,
                    progress=progress, **{LOG_SEQ_KEY: int(log_seq), "snapshot_id": snapshot_id})
    store = open_score_store(cfg)
    try:
        prune_histories(cfg.online_dir, [s.snapshot_id for s in store.snapshots()])
    finally:
        store.close()
    if kept.base is None:
        return out, f"written whole: {kept.info.events:,} events"
    if not kept.added_files:
        return out, f"linked: no new event file since the last history ({kept.info.events:,} events)"
    return out, (f"extended: {kept.added_events:,} new events from {kept.added_files} file(s), "
                 f"{kept.info.events:,} in all")


def score(
    as_of: AsOf,
    events: Events = None,
    out: Annotated[Path | None, typer.Option(
        help="Audience Parquet file (a folder with --engine spark).",
        show_default="<data-dir>/scores/audience_<as-of>.parquet")] = None,
    publish: Annotated[bool, typer.Option(help="Publish the scores to the score store.")] = True,
    engine: Engine = "duckdb",
    spark_master: SparkMaster = "local[2]",
    features: Annotated[Path | None, typer.Option(
        help="Score this feature file (from `propensity features`, same --as-of) instead of building features.",
    )] = None,
    reasons: Annotated[bool, typer.Option(
        help="Reasons (SHAP feature names and readable phrases) for the users --explain selects; --no-reasons "
             "publishes scores and actions only.",
    )] = True,
    explain: Annotated[str, typer.Option(
        help="Whose reasons the batch computes: audience (the users of each action's best-profit audience, the ones "
             "a campaign sends to) or actions (every user with an action; SHAP costs about 75x a score).",
    )] = "audience",
    force: Annotated[bool, typer.Option(
        help="Publish even a batch that scores nobody or fewer users than serving.min_publish_share of the served "
             "snapshot.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Batch-score every user with the @champion models and publish a new score snapshot atomically."""
    cfg = settings(data_dir=data_dir)
    check_engine(engine)
    if explain not in ("audience", "actions"):
        raise typer.BadParameter(f"must be audience or actions, got {explain!r}", param_hint="--explain")
    if features is not None and engine != "duckdb":
        raise typer.BadParameter("--features works with the duckdb engine only", param_hint="--features")
    listed: list[Path] | None = None
    if events is None and features is None:  # acknowledged events (/events, `propensity ingest`) join the batch
        from propensity.cli.eventlog import export_for_batch

        log_seq, listed = export_for_batch(cfg, lambda: _listed_events(cfg))
    else:
        log_seq = 0  # another source: every logged event counts as newer than the batch
    source = events_path(cfg, events)
    if features is not None:
        check_feature_file(features)
    else:
        check_events(source, default=events is None)
    run_score(cfg, source, as_of, out, publish, engine, spark_master, features, reasons, force, log_seq, explain,
              history_files=listed)


def _listed_events(cfg: Settings) -> list[Path] | None:
    """The default source's event files (None when it has none: the source check then says what to do)."""
    from features.build.builder import source_files
    from features.spec.definition import FeatureInputError

    try:
        return source_files(events_path(cfg, None))
    except FeatureInputError:
        return None


def snapshots(data_dir: DataDir = None) -> None:
    """List the score snapshots kept in the store (newest first; * marks the one being served)."""
    cfg = settings(data_dir=data_dir)
    store = open_score_store(cfg)
    try:
        current = store.current()
        found = store.snapshots()
        for snap in found:
            mark = "*" if current and snap.snapshot_id == current.snapshot_id else " "
            console().print(f"{mark} {snap.snapshot_id}  rows={snap.rows:,}  as_of={snap.meta.get('as_of')}  "
                            f"history={_history_summary(cfg.online_dir / snap.snapshot_id)}", soft_wrap=True)
    finally:
        store.close()
    if not found:
        console().print(f"no snapshot in {cfg.redis_url or cfg.store_path}: run `propensity score --as-of T` first")


def _history_summary(path: Path) -> str:
    """What the snapshot's event history holds, for `propensity snapshots`: ``none`` (fresh lookups serve its
    stored rows), or its events and the segments the batches after the last whole write added."""
    from features.online.history import DELTAS_KEY, read_meta

    try:
        meta = read_meta(path)
        events, added = int(meta["events"]), len(meta.get(DELTAS_KEY, []))
    except (OSError, ValueError, KeyError, TypeError):
        return "none"
    return f"{events:,} events" + (f" ({added} added segment{'s' if added > 1 else ''})" if added else "")


def rollback_scores(
    to: Annotated[str | None, typer.Option(help="Snapshot id (see `propensity snapshots`).",
                                           show_default="the snapshot before the current one")] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve an earlier score snapshot again (atomic pointer switch)."""
    from serving.store.base import SnapshotNotFoundError

    cfg = settings(data_dir=data_dir)
    store = open_score_store(cfg)
    try:
        snap = store.rollback(to)
    except SnapshotNotFoundError as exc:
        if to is None:
            raise
        raise typer.BadParameter(f"{exc}; `propensity snapshots` lists them", param_hint="--to") from None
    finally:
        store.close()
    console().print(f"now serving snapshot {snap.snapshot_id} (as_of {snap.meta.get('as_of')})")


def lookup(
    user_ids: Annotated[list[str], typer.Argument(help="User id(s) to look up in the current snapshot.",
                                                  metavar="USER_ID...")],
    data_dir: DataDir = None,
) -> None:
    """Print the scores of some users as the /lookup API would return them: the stored row, or a fresh one for a user
    with ingested events newer than the snapshot."""
    cfg = settings(data_dir=data_dir)
    store = open_score_store(cfg)
    try:
        snap, found = store.lookup(user_ids)
    finally:
        store.close()
    if snap is None:
        raise UnavailableError(f"no snapshot published in {cfg.redis_url or cfg.store_path}: "
                               "run `propensity score --as-of T` first")
    fresh = fresh_rows(cfg, user_ids, snap.snapshot_id, datetime.now(UTC))
    for uid in user_ids:
        if uid in fresh:
            record = json.loads(fresh[uid])
        else:
            record = json.loads(found[uid]) if uid in found else {
                "user_id": uid, "found": False, **snap.meta.get("defaults", {})}
        console().print_json(data=record)
    console().print(f"snapshot {snap.snapshot_id}, as_of {snap.meta.get('as_of')}")


def fresh_rows(cfg: Settings, user_ids: list[str], snapshot_id: str, now: datetime) -> dict[str, str]:
    """``/lookup`` rows of the users with ingested events newer than the snapshot, rescored at ``now`` (empty when
    fresh scores are off, there is no event log, or nobody has newer events)."""
    from propensity.cli.eventlog import log_exists, open_log

    if not cfg.serving.fresh_scores or not log_exists(cfg):
        return {}
    from serving.fresh import FreshScorer
    from training.job import load_champions

    with open_log(cfg) as log:
        scorer = FreshScorer(log, cfg.online_dir, activation_config(cfg))
        if scorer.history(snapshot_id) is None or not scorer.pending(user_ids):
            return {}
        return scorer.rescore(user_ids, snapshot_id, load_champions(registry(cfg)), now)


def audience(
    action: Annotated[str, typer.Option(
        help="coupon_24h, ad_retarget, repurchase_reminder, win_back or nurture.", metavar="ACTION")],
    out: Annotated[Path, typer.Option(help="CSV file to write.")],
    budget: Annotated[float | None, typer.Option(help="Spend at most this much (currency).", min=0.0)] = None,
    top: Annotated[int | None, typer.Option(help="Take the best K users.", min=0)] = None,
    scores: ScoresOpt = None,
    data_dir: DataDir = None,
) -> None:
    """Who to activate with one action: the profit-maximising audience (or the best under --budget / --top)."""
    cfg = settings(data_dir=data_dir)
    run_audience(cfg, action, out, scores=scores, budget=budget, top=top)


def snapshot_of(cfg: Settings, source: Path) -> Any:
    """The published snapshot whose audience file is ``source`` (else the current one; None without any)."""
    store = open_score_store(cfg)
    try:
        found = store.snapshots()
        current = store.current()
    finally:
        store.close()
    resolved = str(Path(source).resolve())
    match = [s for s in found if s.meta.get("audience_path") == resolved]
    return match[0] if match else current


def run_report(cfg: Settings, out: Path | None = None, scores: Path | None = None,
               previous: Path | None = None) -> Path:
    """Write the audience-asset report for the newest (or given) audience file; returns its path.

    The AIPL flow compares it with ``previous`` (default: the audience file written before it, if any); the "models
    in production" section reads the latest monitoring report when ``propensity monitor`` wrote one."""
    import pandas as pd

    from serving.report.build import build_report, write_report
    from serving.report.data import REQUIRED_COLUMNS
    from training.bundle import TARGETS
    from training.registry import CHAMPION

    target = check_output(out or cfg.reports_dir / "report.html", cfg)
    source = scores or latest_audience(cfg)
    audience_frame = read_audience(source, REQUIRED_COLUMNS)
    if previous is None:
        earlier = [f for f in audience_files(cfg) if f.name < source.name]
        previous = earlier[-1] if earlier else None
    before = read_audience(previous, ("user_id", "aipl_layer"), ["user_id", "aipl_layer"]) if previous else None
    reg = registry(cfg)
    model_info: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    for name in TARGETS:
        if reg.version(name, CHAMPION) is None:
            continue
        bundle, version = reg.load_bundle(name, CHAMPION)
        model_info[name] = {
            "version": version, "metrics": reg.run_metrics(name, CHAMPION),
            "test_as_of": bundle.meta.get("test_as_of"),
        }
        if bundle.meta.get("reliability"):
            calibration[name] = pd.DataFrame(bundle.meta["reliability"])
    latest_monitoring = cfg.monitoring_dir / "latest.json"
    monitoring = json.loads(latest_monitoring.read_text()) if latest_monitoring.is_file() else None
    html = build_report(
        audience_frame, previous=before, model_info=model_info, calibration=calibration or None,
        snapshot_info=snapshot_of(cfg, source), activation=activation_config(cfg), outcomes=latest_reads(cfg),
        monitoring=monitoring, generated_at=datetime.now(UTC),
    )
    return write_report(html, target)


def latest_reads(cfg: Settings) -> list[dict[str, Any]]:
    """The latest outcome read of every campaign that has one, oldest campaign first."""
    from serving.activation.campaign_records import list_campaigns, outcome_reads

    if not cfg.campaigns_dir.is_dir():
        return []
    reads = (outcome_reads(cfg.campaigns_dir, c.campaign_id) for c in list_campaigns(cfg.campaigns_dir))
    return [r[-1] for r in reads if r]


def report(
    out: Annotated[Path | None, typer.Option(help="HTML file.", show_default="<data-dir>/reports/report.html")] = None,
    scores: ScoresOpt = None,
    previous: Annotated[Path | None, typer.Option(
        help="An earlier audience file to compare with (the AIPL flow).",
        show_default="the audience file written before --scores")] = None,
    data_dir: DataDir = None,
) -> None:
    """One self-contained HTML page of the audience assets, flows, scores, audiences and model quality."""
    cfg = settings(data_dir=data_dir)
    path = run_report(cfg, out, scores, previous)
    console().print(f"report written to {path} (open it in any browser; it needs no network)")


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`UnavailableError` when something already listens on ``host:port``."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except PermissionError:
            raise UnavailableError(f"port {port} on {host} needs more privileges: choose one above 1023 "
                                   "with --port") from None
        except OSError as exc:
            reason = "is in use" if exc.errno in (98, 48, 10048) else f"cannot be bound ({exc.strerror})"
            raise UnavailableError(f"port {port} on {host} {reason}: stop what runs there or choose another "
                                   "with --port") from None


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.", show_default="127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="Port.", min=1, max=65535, show_default="3000")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 1,
    model_dir: Annotated[Path | None, typer.Option(help="Serve pinned bundles from here, not the registry.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the BentoML service (/lookup, /score, /audience, health, metrics). Needs PROPENSITY_SERVING__API_TOKEN
    (or _API_TOKEN_FILE), or PROPENSITY_SERVING__ALLOW_NO_AUTH=1 for a local experiment."""
    from propensity.service.launch import serve_command
    from propensity.service.options import service_options

    cfg = settings(data_dir=data_dir)
    service_options(cfg)
    if model_dir is not None and not model_dir.is_dir():
        raise InputError(f"{model_dir} is not a folder of pinned bundles (--model-dir); `propensity pin` makes one")
    check_port_free(host or cfg.serving.host, port or cfg.serving.port)
    code = serve_command(cfg, host, port, workers, model_dir=model_dir)
    if code not in STOPPED_BY_SIGNAL:
        warn(f"the server stopped with exit code {code}; its log above says why")
        raise typer.Exit(UNAVAILABLE)


def pin(data_dir: DataDir = None) -> None:
    """Copy both @champion bundles into a BentoML model, so `bentoml build` makes a Bento that needs no registry."""
    from propensity.service.pin import pin_champions

    path = pin_champions(settings(data_dir=data_dir))
    console().print(f"champions pinned in {path}; now run: bentoml build")
