"""Data commands: generate, validate, features, segments, flow."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import (
    AS_OF_HELP,
    AsOf,
    DataDir,
    Engine,
    Events,
    SparkMaster,
    check_engine,
    events_path,
    feature_spec,
    settings,
    time_option,
)
from propensity.cli.inputs import check_events, parquet_files
from propensity.cli.ui import console, frame_table, kv_table, progress_bar, warn
from propensity.config import Settings
from propensity.paths import check_output

STALE_AFTER = timedelta(days=7)
"""A cutoff this long after the last event gets a warning: every recency feature is that much older."""


# ---------------------------------------------------------------------------------------------------- generate ------
def today_utc() -> date:
    """Today's date in UTC (the default end of generated data)."""
    return datetime.now(UTC).date()


def parse_day(value: str | date) -> date:
    """A calendar date option (YYYY-MM-DD)."""
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date: use YYYY-MM-DD, e.g. 2026-09-01") from None


def generator_start(end: date, days: int) -> datetime:
    """The UTC midnight ``days`` before ``end`` (data ends at the midnight that starts ``end``)."""
    return datetime(end.year, end.month, end.day, tzinfo=UTC) - timedelta(days=days)


def generate(
    out: Annotated[Path | None, typer.Option(help="Output folder.", show_default="<data-dir>/generated")] = None,
    users: Annotated[int, typer.Option(help="Number of simulated users.", min=1)] = 20_000,
    days: Annotated[int, typer.Option(help="Simulated days of history.", min=1)] = 120,
    end: Annotated[date | None, typer.Option(
        help="The data ends at the start of this day (UTC); the last event is on the day before.",
        parser=parse_day, metavar="DATE", show_default="today")] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed and dates give the same data.")] = 7,
    dirty_share: Annotated[float, typer.Option(
        help="Share of malformed rows in an extra raw_dirty.csv (0 = no file).", min=0.0, max=0.5)] = 0.0,
    data_dir: DataDir = None,
) -> None:
    """Simulate a shop's behavior log with the TRUE buy and lapse probabilities per user and cutoff."""
    from features.simulate.shop import GeneratorConfig
    from features.simulate.shop import generate as run

    cfg = settings(data_dir=data_dir)
    out = check_output(out or cfg.data_dir / "generated", cfg, is_dir=True)
    start = generator_start(end or today_utc(), days)
    gcfg = GeneratorConfig(n_users=users, days=days, start=start, seed=seed, dirty_share=dirty_share)
    with progress_bar("simulating users") as progress:
        result = run(gcfg, out, progress=progress)
    rows = {
        "users": result.n_users, "events": result.n_events, "events folder": result.events_dir,
        "first day": f"{gcfg.start_utc:%Y-%m-%d}", "ends before": f"{gcfg.end:%Y-%m-%d}",
        "true probabilities": result.truth_path, "truth cutoffs": len(result.cutoffs),
    }
    if result.raw_dirty_path:
        rows["raw file with bad rows"] = result.raw_dirty_path
    rows["next"] = f"propensity validate {result.events_dir}"
    console().print(kv_table("generated", rows))


# ---------------------------------------------------------------------------------------------------- validate ------
def validate(
    events: Annotated[list[Path], typer.Argument(help="CSV or Parquet file(s), a folder of Parquet parts or a glob.")],
    out: Annotated[Path | None, typer.Option(help="Output folder.", show_default="<data-dir>/clean")] = None,
    as_of: Annotated[datetime | None, time_option(
        "--as-of", help="Cutoff of this export: events after it (plus validation.future_tolerance_hours) are "
                        "quarantined as future_ts.", show_default="now")] = None,
    taobao: Annotated[bool, typer.Option(help="Input is the Taobao UserBehavior CSV (no header).")] = False,
    names: Annotated[str | None, typer.Option(
        help="Comma-separated column names for a header-less CSV, e.g. user_id,ts,behavior.")] = None,
    map_column: Annotated[list[str] | None, typer.Option(
        "--map", help="Rename a source column: SOURCE=CANONICAL, e.g. --map when=ts (repeatable).",
        metavar="SOURCE=CANONICAL")] = None,
    source_tz: Annotated[str | None, typer.Option(
        help="IANA time zone of naive timestamps, e.g. Asia/Shanghai.", show_default="UTC")] = None,
    max_bad_share: Annotated[float | None, typer.Option(
        help="Share of bad rows that stops the run (exit code 3).", min=0.0, max=1.0, show_default="0.01")] = None,
    data_dir: DataDir = None,
) -> None:
    """Check events against the contract: clean Parquet out, bad rows quarantined with their reasons."""
    report = run_validation(
        settings(data_dir=data_dir), events, out=out, as_of=as_of, taobao=taobao, names=names,
        map_column=map_column or [], source_tz=source_tz, max_bad_share=max_bad_share,
    )
    print_validation(report)


def read_options(taobao: bool, names: str | None, map_column: list[str] | None, source_tz: str) -> Any:
    """The reader options of the CLI flags, each bad value answered as a usage error naming its option."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from features.events.schema import CANONICAL_COLUMNS
    from features.events.validate import ReadOptions

    mapping: dict[str, str] = {}
    for item in map_column or []:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise typer.BadParameter(f"expected SOURCE=CANONICAL, got {item!r}", param_hint="--map")
        if dst.strip() not in CANONICAL_COLUMNS:
            raise typer.BadParameter(f"{dst.strip()!r} is not a canonical column; choose one of "
                                     f"{', '.join(CANONICAL_COLUMNS)}", param_hint="--map")
        mapping[src.strip()] = dst.strip()
    try:
        ZoneInfo(source_tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(f"{source_tz!r} is not an IANA time zone (e.g. UTC, Europe/Berlin, "
                                 "Asia/Shanghai)", param_hint="--source-tz") from None
    opts: dict[str, Any] = {"columns": mapping, "source_tz": source_tz}
    if names is not None:
        cols = tuple(n.strip() for n in names.split(","))
        if not all(cols):
            raise typer.BadParameter(f"expected comma-separated column names, got {names!r}", param_hint="--names")
        opts["names"], opts["header"] = cols, False
    return ReadOptions.taobao(**opts) if taobao else ReadOptions(**opts)


def run_validation(
    cfg: Settings, sources: list[Path], *, out: Path | None = None, as_of: datetime | None = None,
    taobao: bool = False, names: str | None = None, map_column: list[str] | None = None,
    source_tz: str | None = None, max_bad_share: float | None = None, against_ingested: bool | None = None,
) -> Any:
    """Validate ``sources`` into ``out`` (default ``<data-dir>/clean``); prints the summary even when it fails.

    ``against_ingested`` (default: when ``out`` is the clean folder, where the event log's parts live): export
    the event log first and leave out the rows it already holds, so events ingested through ``/events`` and
    repeated in a later export are kept once. A run into the clean folder that leaves no event to store keeps the
    clean events there (exit code 1)."""
    from features.events.validate import (
        EventsError,
        MissingColumnError,
        NothingToStoreError,
        TooManyBadRowsError,
        ValidationConfig,
        validate_events,
    )

    read = read_options(taobao, names, map_column, source_tz or cfg.validation.source_tz)
    vcfg = ValidationConfig(
        as_of=as_of,
        future_tolerance=timedelta(hours=cfg.validation.future_tolerance_hours),
        max_bad_share=cfg.validation.max_bad_share if max_bad_share is None else max_bad_share,
    )
    into_clean = out is None or Path(out).resolve() == cfg.clean_dir.resolve()
    out = check_output(out or cfg.clean_dir, cfg, is_dir=True)
    known: list[Path] = []
    if into_clean if against_ingested is None else against_ingested:
        from features.events.logbase import PART_GLOB
        from propensity.cli.eventlog import export_history

        export_history(cfg)
        known = sorted(cfg.clean_dir.glob(PART_GLOB))
    for source in sources:  # a Parquet name or folder must hold Parquet (a CSV renamed .parquet is said so)
        if source.suffix == ".parquet" and source.is_file() or source.is_dir():
            parquet_files(source, "events", "export the events again, or give a CSV file its .csv name")
    with progress_bar("validating events") as progress:
        try:
            return validate_events(
                [str(s) for s in sources], out, vcfg, read, now=datetime.now(UTC), progress=progress, known=known,
                keep_nonempty=into_clean,
            )
        except (TooManyBadRowsError, NothingToStoreError) as exc:
            print_validation(exc.report)
            raise
        except MissingColumnError as exc:
            missing = ", ".join(getattr(exc, "missing", ())) or "a required column"
            seen = ", ".join(getattr(exc, "seen", ())) or "(none)"
            raise EventsError(
                f"missing required column(s) {missing}; columns seen: {seen}; name a source column with "
                "--map SOURCE=CANONICAL (e.g. --map when=ts), or the columns of a header-less CSV with --names"
            ) from None


def print_validation(report: Any) -> None:
    rows: dict[str, Any] = {
        "rows in": report.rows_in, "accepted": report.accepted, "quarantined": report.quarantined,
        "duplicates dropped": report.duplicates,
        "  already ingested": report.already_known,
        "invariant": f"{report.rows_in:,} == {report.accepted:,} + {report.quarantined:,} + {report.duplicates:,}",
        "bad-row share": f"{report.bad_share:.3%} (limit {report.max_bad_share:.2%})",
    }
    rows.update({f"  {reason}": n for reason, n in report.by_reason.items() if n})
    rows.update({"clean events": report.events_path or "(not written)", "quarantine": report.quarantine_path,
                 "report": report.report_path})
    console().print(kv_table("validation", rows))


# ---------------------------------------------------------------------------------------------------- features ------
def event_span(table: Any) -> tuple[datetime | None, datetime | None, int]:
    """(first, last, count) of the events of an Ibis table (UTC; None when empty)."""
    row = table.aggregate(first=table.ts.min(), last=table.ts.max(), n=table.count()).to_pyarrow().to_pylist()[0]
    first, last = (utc_or_none(row["first"]), utc_or_none(row["last"]))
    return first, last, int(row["n"])


def utc_or_none(value: Any) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def warn_cutoff(table: Any, when: datetime, what: str) -> None:
    """Warn when ``when`` is before every event (empty result) or long after the last one (stale result)."""
    first, last, n = event_span(table)
    if n == 0 or first is None or last is None:
        warn(f"the events hold no rows: {what} is empty")
    elif when <= first:
        warn(f"--as-of {when:%Y-%m-%d %H:%M} is before the first event ({first:%Y-%m-%d %H:%M}): {what} is empty; "
             f"choose a cutoff between {first:%Y-%m-%d} and {last + timedelta(days=1):%Y-%m-%d}")
    elif when - last > STALE_AFTER:
        warn(f"--as-of {when:%Y-%m-%d} is {(when - last).days} days after the last event ({last:%Y-%m-%d}): "
             f"{what} describes users who may have moved on since; validate newer events or choose an earlier cutoff")


def features(
    as_of: AsOf,
    events: Events = None,
    out: Annotated[Path | None, typer.Option(
        help="Output Parquet file (a folder with --engine spark).",
        show_default="<data-dir>/features/features_<as-of>.parquet")] = None,
    engine: Engine = "duckdb",
    spark_master: SparkMaster = "local[2]",
    data_dir: DataDir = None,
) -> None:
    """Build the feature table (one row per user) as of a cutoff; spec version and as_of go in its metadata."""
    from features.build.builder import build_features, default_connection, events_table, write_features

    cfg = settings(data_dir=data_dir)
    suffix = "" if check_engine(engine) == "spark" else ".parquet"
    source = check_events(events_path(cfg, events), default=events is None)
    spec = feature_spec(cfg)
    out = check_output(out or cfg.features_dir / f"features_{as_of:%Y%m%dT%H%M}{suffix}", cfg, is_dir=not suffix)
    with progress_bar("building features") as progress:
        if engine == "spark":
            from features.build.spark import build_features_spark, read_features_meta, spark_connection

            build_features_spark(source, as_of, spec, spark_connection(spark_master), out_dir=out, progress=progress)
            users, columns = read_features_meta(out)["rows"], "partitioned Parquet"
        else:
            con = default_connection()
            warn_cutoff(events_table(source, con), as_of, "the feature table")
            table = build_features(source, as_of, spec, progress=progress, chunk_events=cfg.features.chunk_events)
            write_features(table, out, as_of, spec)
            users, columns = len(table), table.shape[1]
    console().print(kv_table("features", {
        "engine": engine, "users": users, "columns": columns, "spec version": spec.version,
        "as of": as_of.isoformat(), "written to": out,
    }))


# ---------------------------------------------------------------------------------------------------- segments ------
def segments(as_of: AsOf, events: Events = None, data_dir: DataDir = None) -> None:
    """Print the audience asset summary: AIPL layers, lifecycle stages, RFM groups, P+L share vs the 30% target."""
    from features.build.builder import build_features, default_connection, events_table
    from features.segments.segmenter import Segmenter, asset_summary

    cfg = settings(data_dir=data_dir)
    source = check_events(events_path(cfg, events), default=events is None)
    con = default_connection()
    table = events_table(source, con)
    warn_cutoff(table, as_of, "the audience")
    raw = build_features(table, as_of, feature_spec(cfg), con=con)
    if raw.empty:
        console().print(f"no user has an event before {as_of.isoformat()}: no audience assets to summarise")
        return
    segmenter = Segmenter().fit(table, raw, as_of)
    print_assets(asset_summary(segmenter.transform(raw), segmenter=segmenter))


def print_assets(summary: dict[str, Any]) -> None:
    from rich.table import Table

    for group in ("aipl", "lifecycle", "rfm_group"):
        part = summary.get(group, {})
        table = Table(title=f"{group} (users and share)", title_justify="left")
        table.add_column(group)
        table.add_column("users", justify="right")
        table.add_column("share", justify="right")
        for name, value in part.items():
            table.add_row(str(name), f"{value['count']:,}", f"{value['share']:.1%}")
        console().print(table)
    rule = summary.get("lifecycle_rule")
    if rule:
        console().print(f"lifecycle: silent after {rule['silent_days']:g} days without a visit after an order, "
                        f"churned after {rule['churn_days']:g} days; {rule['rule']}", soft_wrap=True)
    pl = summary.get("pl_share")
    if pl is not None:
        ok = pl >= summary.get("pl_target", 0.30)
        colour = "green" if ok else "yellow"
        console().print(
            f"P+L share of assets: [{colour}]{pl:.1%}[/] of {summary.get('n_assets', 0):,} assets "
            f"(target >= {summary.get('pl_target', 0.3):.0%})"
        )


# -------------------------------------------------------------------------------------------------------- flow ------
def flow(
    before: Annotated[datetime, time_option("--from", help="The earlier cutoff. " + AS_OF_HELP.split(". ")[0] + ".")],
    after: Annotated[datetime, time_option("--to", help="The later cutoff.")],
    events: Events = None,
    data_dir: DataDir = None,
) -> None:
    """How the audience moved between two cutoffs: the AIPL transition matrix, flow rates, reach, P+L share."""
    import math

    import pandas as pd

    from features.build.builder import build_features, default_connection, events_table
    from serving.activation.flow import aipl_flow

    cfg = settings(data_dir=data_dir)
    if before >= after:
        raise typer.BadParameter(f"{before.isoformat()} is not earlier than --to {after.isoformat()}",
                                 param_hint="--from")
    source = check_events(events_path(cfg, events), default=events is None)
    con = default_connection()
    table = events_table(source, con)
    spec = feature_spec(cfg)
    layers = [build_features(table, t, spec, con=con)[["user_id", "aipl_layer"]] for t in (before, after)]
    for frame, flag, when in ((layers[0], "--from", before), (layers[1], "--to", after)):
        if frame.empty:
            first, _, _ = event_span(table)
            since = f" (the first event is on {first:%Y-%m-%d})" if first else ""
            warn(f"no user has an event before {flag} {when:%Y-%m-%d %H:%M}{since}: that side of the flow is empty "
                 "and its rates are shown as -")
    report = aipl_flow(*layers)
    counts = report.counts.copy()
    counts.index.name = "from \\ to"
    console().print(frame_table(f"AIPL flow {before:%Y-%m-%d} -> {after:%Y-%m-%d} (users)", counts, "{:,.0f}"))
    rates = pd.DataFrame({"rate": report.rates}).rename_axis("flow")
    console().print(frame_table("flow rates (share of the earlier layer)", rates, "{:.1%}"))

    def share(value: float) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.1%}"

    met = "met" if report.pl_target_met else "missed"
    console().print(kv_table("assets", {
        "reach before": report.reach_before, "reach after": report.reach_after,
        "new users": report.n_new, "users gone": report.n_gone,
        "P+L share before": share(report.pl_share_before),
        "P+L share after": f"{share(report.pl_share_after)} (target >= {report.pl_target:.0%}: {met})",
    }))
