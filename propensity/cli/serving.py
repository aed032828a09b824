"""Serving commands: score, snapshots, rollback-scores, lookup, serve."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.main import (
    AsOf,
    DataDir,
    Engine,
    SparkMaster,
    _required_as_of,
    app,
    check_engine,
    friendly,
    settings,
)
from propensity.cli.models import registry
from propensity.cli.ui import console, kv_table, progress_bar
from propensity.config import Settings
from propensity.paths import check_output


def open_score_store(cfg: Settings) -> Any:
    from serving.store.base import open_store

    return open_store(cfg.store_path, cfg.redis_url, keep=cfg.serving.keep_snapshots)


def activation_config(cfg: Settings) -> Any:
    from serving.activation.actions import ActivationConfig

    return ActivationConfig.from_settings(cfg.activation)


def audience_files(cfg: Settings) -> list[Path]:
    """Audience outputs of `propensity score`, oldest first: Parquet files (DuckDB) or folders (Spark)."""
    found = [p for p in cfg.scores_dir.glob("audience_*") if p.suffix == ".parquet" or p.is_dir()]
    return sorted(found, key=lambda p: p.name)


def latest_audience(cfg: Settings) -> Path:
    """The newest audience file written by `propensity score`."""
    files = audience_files(cfg)
    if not files:
        raise FileNotFoundError(f"no audience file in {cfg.scores_dir}: run `propensity score` first")
    return files[-1]


def run_audience(
    cfg: Settings, action: str, out: Path, *, scores: Path | None = None, budget: float | None = None,
    top: int | None = None,
) -> Any:
    """Pick the audience for one action from an audience file, write it as CSV, print the expected outcome."""
    import pandas as pd

    from serving.activation.audiences import select_audience

    check_output(out, cfg)
    source = scores or latest_audience(cfg)
    picked, summary = select_audience(
        pd.read_parquet(source), action, activation_config(cfg), budget=budget, top_k=top
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = [c for c in ("audience_rank", "user_id", "action", "action_deadline", "action_p", "priority",
                           "expected_profit", "aipl_layer", "lifecycle", "rfm_group") if c in picked.columns]
    picked[columns].to_csv(out, index=False)
    rows = {k: v for k, v in summary.to_dict().items() if v is not None}
    rows["written to"] = out
    console().print(kv_table(f"audience: {action}", rows))
    return summary


def prebuilt_features(path: Path, as_of: datetime, spec: Any) -> Any:
    """A feature file from ``propensity features``, checked against the cutoff and the champions' feature spec."""
    from features.build.builder import read_features

    table, meta = read_features(path)
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
) -> Any:
    """Score everyone with the champions, write the audience Parquet, publish the snapshot; print a summary.

    With ``engine="spark"`` features and scores are computed on Spark (partitioned audience directory). With
    ``features`` (a file written by ``propensity features``) the batch scores that table instead of building one."""
    from serving.batch.run import run_batch
    from training.job import load_champions

    bundles = load_champions(registry(cfg))
    table = prebuilt_features(features, as_of, next(iter(bundles.values())).spec) if features else None
    suffix = "" if engine == "spark" else ".parquet"
    out = check_output(out or cfg.scores_dir / f"audience_{as_of:%Y%m%dT%H%M}{suffix}", cfg, is_dir=not suffix)
    store = open_score_store(cfg) if publish else None
    common = {"activation": activation_config(cfg), "created_at": datetime.now(UTC)}
    try:
        with progress_bar("scoring users") as progress:
            if engine == "spark":
                from features.build.spark import spark_connection
                from serving.batch.spark import run_batch_spark

                result = run_batch_spark(
                    events, as_of, bundles, store, out, con=spark_connection(spark_master),
                    chunk_rows=cfg.serving.batch_chunk_users, progress=progress, **common,
                )
            else:
                result = run_batch(
                    events, as_of, bundles, store, out, chunk_users=cfg.serving.batch_chunk_users,
                    progress=progress, features=table, reasons=reasons, **common,
                )
    finally:
        if store is not None:
            store.close()
    rows: dict[str, Any] = {
        "users scored": result.users, "as of": as_of.isoformat(), "mean p_buy": result.mean_p_buy,
        "models": ", ".join(f"{t} v{b.meta.get('version')}" for t, b in bundles.items()),
        "audience file": result.audience_path,
    }
    rows.update({f"  action {k}": v for k, v in sorted(result.action_counts.items())})
    if result.snapshot is not None:
        rows["snapshot"] = result.snapshot.snapshot_id
        rows["store"] = cfg.redis_url or cfg.store_path
    console().print(kv_table("batch scores", rows))
    return result


@app.command()
@friendly
def score(
    as_of: AsOf,
    events: Annotated[Path | None, typer.Option(help="Clean events [default: <data-dir>/clean/events.parquet].")] = None,
    out: Annotated[Path | None, typer.Option(help="Audience Parquet [default: <data-dir>/scores/...].")] = None,
    publish: Annotated[bool, typer.Option(help="Publish the scores to the score store.")] = True,
    engine: Engine = "duckdb",
    spark_master: SparkMaster = "local[2]",
    features: Annotated[Path | None, typer.Option(
        help="Score this feature file (from `propensity features`, same --as-of) instead of building features.",
    )] = None,
    reasons: Annotated[bool, typer.Option(
        help="Reason codes (SHAP) for the users with an action; --no-reasons publishes scores and actions only.",
    )] = True,
    data_dir: DataDir = None,
) -> None:
    """Batch-score every user with the @champion models and publish a new score snapshot atomically."""
    cfg = settings(data_dir=data_dir)
    if features is not None and engine != "duckdb":
        raise typer.BadParameter("--features works with the duckdb engine only", param_hint="--features")
    run_score(cfg, events or cfg.clean_dir / "events.parquet", _required_as_of(as_of), out, publish,
              check_engine(engine), spark_master, features, reasons)


@app.command()
@friendly
def snapshots(data_dir: DataDir = None) -> None:
    """List the score snapshots kept in the store (newest first; * marks the one being served)."""
    cfg = settings(data_dir=data_dir)
    store = open_score_store(cfg)
    try:
        current = store.current()
        for snap in store.snapshots():
            mark = "*" if current and snap.snapshot_id == current.snapshot_id else " "
            console().print(f"{mark} {snap.snapshot_id}  rows={snap.rows:,}  as_of={snap.meta.get('as_of')}")
    finally:
        store.close()


@app.command("rollback-scores")
@friendly
def rollback_scores(
    to: Annotated[str | None, typer.Option(help="Snapshot id [default: the previous snapshot].")] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve an earlier score snapshot again (atomic pointer switch)."""
    cfg = settings(data_dir=data_dir)
    store = open_score_store(cfg)
    try:
        snap = store.rollback(to)
    finally:
        store.close()
    console().print(f"now serving snapshot {snap.snapshot_id} (as_of {snap.meta.get('as_of')})")


@app.command()
@friendly
def lookup(
    user_ids: Annotated[list[str], typer.Argument(help="User id(s) to look up in the current snapshot.")],
    data_dir: DataDir = None,
) -> None:
    """Print the stored scores of some users, as the /lookup API would return them."""
    cfg = settings(data_dir=data_dir)
    store = open_score_store(cfg)
    try:
        snap, found = store.lookup(user_ids)
    finally:
        store.close()
    if snap is None:
        console().print("no snapshot published yet: run `propensity score` first")
        raise typer.Exit(4)
    for uid in user_ids:
        record = json.loads(found[uid]) if uid in found else {"user_id": uid, "found": False, **snap.meta.get("defaults", {})}
        console().print_json(data=record)
    console().print(f"snapshot {snap.snapshot_id}, as_of {snap.meta.get('as_of')}")


@app.command()
@friendly
def audience(
    action: Annotated[str, typer.Option(help="coupon_24h, ad_retarget, repurchase_reminder, win_back or nurture.")],
    out: Annotated[Path, typer.Option(help="CSV file to write.")],
    budget: Annotated[float | None, typer.Option(help="Spend at most this much (currency).")] = None,
    top: Annotated[int | None, typer.Option(help="Take the best K users.")] = None,
    scores: Annotated[Path | None, typer.Option(help="Audience Parquet [default: the newest scored file].")] = None,
    data_dir: DataDir = None,
) -> None:
    """Who to activate with one action: the profit-maximising audience (or the best under --budget / --top)."""
    cfg = settings(data_dir=data_dir)
    run_audience(cfg, action, out, scores=scores, budget=budget, top=top)


def run_report(cfg: Settings, out: Path | None = None, scores: Path | None = None) -> Path:
    """Write the audience-asset report for the newest (or given) audience file; returns its path."""
    import pandas as pd

    from serving.report.build import build_report, write_report
    from training.bundle import TARGETS
    from training.registry import CHAMPION

    source = scores or latest_audience(cfg)
    audience = pd.read_parquet(source)
    earlier = [f for f in audience_files(cfg) if f.name < source.name]
    previous = pd.read_parquet(earlier[-1], columns=["user_id", "aipl_layer"]) if earlier else None
    reg = registry(cfg)
    model_info: dict[str, Any] = {}
    calibration: dict[str, Any] = {}
    for target in TARGETS:
        if reg.version(target, CHAMPION) is None:
            continue
        bundle, version = reg.load_bundle(target, CHAMPION)
        model_info[target] = {
            "version": version, "metrics": reg.run_metrics(target, CHAMPION),
            "test_as_of": bundle.meta.get("test_as_of"),
        }
        if bundle.meta.get("reliability"):
            calibration[target] = pd.DataFrame(bundle.meta["reliability"])
    store = open_score_store(cfg)
    try:
        snapshot = store.current()
    finally:
        store.close()
    html = build_report(
        audience, previous=previous, model_info=model_info, calibration=calibration or None,
        snapshot_info=snapshot, activation=activation_config(cfg), generated_at=datetime.now(UTC),
    )
    return write_report(html, check_output(out or cfg.reports_dir / "report.html", cfg))


@app.command()
@friendly
def report(
    out: Annotated[Path | None, typer.Option(help="HTML file [default: <data-dir>/reports/report.html].")] = None,
    scores: Annotated[Path | None, typer.Option(help="Audience Parquet [default: the newest scored file].")] = None,
    data_dir: DataDir = None,
) -> None:
    """One self-contained HTML page of the audience assets, flows, scores, audiences and model quality."""
    cfg = settings(data_dir=data_dir)
    path = run_report(cfg, out, scores)
    console().print(f"report written to {path} (open it in any browser; it needs no network)")


@app.command()
@friendly
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [default: 127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Port [default: 3000].")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    model_dir: Annotated[Path | None, typer.Option(help="Serve pinned bundles from here, not the registry.")] = None,
    data_dir: DataDir = None,
) -> None:
    """Run the BentoML service (/lookup, /score, /audience, health, metrics). Needs PROPENSITY_SERVING__API_TOKEN
    (or _API_TOKEN_FILE), or PROPENSITY_SERVING__ALLOW_NO_AUTH=1 for a local experiment."""
    from propensity.service.launch import serve_command
    from propensity.service.options import ServiceConfigError, service_options

    cfg = settings(data_dir=data_dir)
    try:
        service_options(cfg)
    except ServiceConfigError as exc:
        console().print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(serve_command(cfg, host, port, workers, model_dir=model_dir))


@app.command()
@friendly
def pin(data_dir: DataDir = None) -> None:
    """Copy both @champion bundles into a BentoML model, so `bentoml build` makes a Bento that needs no registry."""
    from propensity.service.pin import pin_champions

    path = pin_champions(settings(data_dir=data_dir))
    console().print(f"champions pinned in {path}; now run: bentoml build")


@app.command()
@friendly
def flow(
    before: Annotated[datetime, typer.Option("--from", help="The earlier cutoff (ISO date or time; naive = UTC).")],
    after: Annotated[datetime, typer.Option("--to", help="The later cutoff.")],
    events: Annotated[Path | None, typer.Option(help="Clean events [default: <data-dir>/clean/events.parquet].")] = None,
    data_dir: DataDir = None,
) -> None:
    """How the audience moved between two cutoffs: the AIPL transition matrix, flow rates, reach, P+L share."""
    import pandas as pd

    from features.build.builder import build_features, default_connection, events_table
    from features.spec.definition import FeatureSpec
    from propensity.cli.main import utc
    from propensity.cli.ui import frame_table
    from serving.activation.flow import aipl_flow

    cfg = settings(data_dir=data_dir)
    t0, t1 = utc(before), utc(after)
    assert t0 is not None and t1 is not None
    if t0 >= t1:
        raise typer.BadParameter("--from must be earlier than --to")
    con = default_connection()
    table = events_table(events or cfg.clean_dir / "events.parquet", con)
    spec = FeatureSpec(windows=cfg.features.windows)
    layers = [build_features(table, t, spec, con=con)[["user_id", "aipl_layer"]] for t in (t0, t1)]
    report = aipl_flow(*layers)
    counts = report.counts.copy()
    counts.index.name = "from \\ to"
    console().print(frame_table(f"AIPL flow {t0:%Y-%m-%d} -> {t1:%Y-%m-%d} (users)", counts, "{:,.0f}"))
    rates = pd.DataFrame({"rate": report.rates}).rename_axis("flow")
    console().print(frame_table("flow rates (share of the earlier layer)", rates, "{:.1%}"))
    console().print(kv_table("assets", {
        "reach before": report.reach_before, "reach after": report.reach_after,
        "new users": report.n_new, "users gone": report.n_gone,
        "P+L share before": f"{report.pl_share_before:.1%}",
        "P+L share after": f"{report.pl_share_after:.1%} (target >= {report.pl_target:.0%}: "
                           f"{'met' if report.pl_target_met else 'missed'})",
    }))
