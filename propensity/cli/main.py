"""The ``propensity`` command line: one command per pipeline stage, thin over features / training / serving.

Every command builds the typed :class:`~propensity.config.Settings`, calls one function, and prints where its
outputs went. User mistakes end with a one-line message and a non-zero exit code, never a stack trace:

- 0 success; 1 bad input or usage (message says what to fix); 2 too many bad rows in the events;
- 3 another training run holds the lock; 4 a required service (registry model, score store) is unavailable.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from propensity.cli.ui import console, kv_table, progress_bar
from propensity.config import Settings, load_settings
from propensity.paths import check_output

app = typer.Typer(
    name="propensity",
    help="Audience propensity scoring: validate events, build features, train, score, serve, activate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

F = TypeVar("F", bound=Callable[..., Any])

AsOf = Annotated[
    datetime | None,
    typer.Option(
        "--as-of",
        help="Cutoff time T (ISO 8601; naive values are UTC). Features use only events before it.",
        formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%z"],
    ),
]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Root folder for data outputs [default: data].")]


def _exit_code(exc: BaseException) -> int | None:
    """Exit code for an expected, user-facing error; None for a bug."""
    from features.events.validate import EventsError, TooManyBadRowsError
    from features.simulate.shop import GeneratorConfigError
    from features.spec.definition import FeatureInputError, FeatureSpecError
    from propensity.paths import UnsafeOutputError
    from training.datasets import IneligibleError
    from training.lock import LockBusyError
    from training.registry import RegistryError

    if isinstance(exc, UnsafeOutputError):
        return 1
    if isinstance(exc, TooManyBadRowsError):
        return 2
    if isinstance(exc, LockBusyError):
        return 3
    if isinstance(exc, RegistryError):
        return 4
    user_errors: tuple[type[BaseException], ...] = (
        EventsError, GeneratorConfigError, FeatureInputError, FeatureSpecError, IneligibleError, FileNotFoundError,
    )
    if isinstance(exc, user_errors):
        return 1
    from serving.activation.actions import ActivationError
    from serving.report.build import ReportError
    from serving.store.base import StoreError, StoreInputError

    if isinstance(exc, (ActivationError, StoreInputError, ReportError)):
        return 1
    if type(exc).__name__ in ("SparkUnavailableError", "SparkBatchError"):  # optional extra: not imported here
        return 1
    if isinstance(exc, StoreError):
        return 4
    from pydantic import ValidationError

    return 1 if isinstance(exc, ValidationError) else None


def friendly(fn: F) -> F:
    """Turn expected errors into a one-line message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except Exception as exc:
            code = _exit_code(exc)
            if code is None:
                raise
            console().print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(code) from None

    return wrapper  # type: ignore[return-value]


def utc(value: datetime | None) -> datetime | None:
    """Treat naive CLI datetimes as UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def settings(**overrides: Any) -> Settings:
    return load_settings(**overrides)


# ---------------------------------------------------------------------------------------------------- data ----------
@app.command()
@friendly
def generate(
    out: Annotated[Path | None, typer.Option(help="Output folder [default: <data-dir>/generated].")] = None,
    users: Annotated[int, typer.Option(help="Number of simulated users.")] = 20_000,
    days: Annotated[int, typer.Option(help="Simulated days of history.")] = 120,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same data.")] = 7,
    dirty_share: Annotated[
        float, typer.Option(help="Share of malformed rows in an extra raw_dirty.csv (0 = no file).")
    ] = 0.0,
    data_dir: DataDir = None,
) -> None:
    """Simulate a shop's behavior log with the TRUE buy and lapse probabilities per user and cutoff."""
    from features.simulate.shop import GeneratorConfig
    from features.simulate.shop import generate as run

    cfg = settings(data_dir=data_dir)
    out = check_output(out or cfg.data_dir / "generated", cfg, is_dir=True)
    gcfg = GeneratorConfig(n_users=users, days=days, seed=seed, dirty_share=dirty_share)
    with progress_bar("simulating users") as progress:
        result = run(gcfg, out, progress=progress)
    rows = {
        "users": result.n_users, "events": result.n_events, "events folder": result.events_dir,
        "true probabilities": result.truth_path, "truth cutoffs": len(result.cutoffs),
    }
    if result.raw_dirty_path:
        rows["raw file with bad rows"] = result.raw_dirty_path
    console().print(kv_table("generated", rows))


@app.command()
@friendly
def validate(
    events: Annotated[list[Path], typer.Argument(help="CSV or Parquet file(s), a folder of Parquet parts or a glob.")],
    out: Annotated[Path | None, typer.Option(help="Output folder [default: <data-dir>/clean].")] = None,
    as_of: AsOf = None,
    taobao: Annotated[bool, typer.Option(help="Input is the Taobao UserBehavior CSV (no header).")] = False,
    names: Annotated[str | None, typer.Option(help="Comma-separated column names for a header-less CSV.")] = None,
    map_column: Annotated[
        list[str] | None, typer.Option("--map", help="Rename a source column: SOURCE=CANONICAL (repeatable).")
    ] = None,
    source_tz: Annotated[str | None, typer.Option(help="Time zone of naive timestamps [default: UTC].")] = None,
    max_bad_share: Annotated[float | None, typer.Option(help="Bad-row share that stops the run [0.01].")] = None,
    data_dir: DataDir = None,
) -> None:
    """Check events against the contract: clean Parquet out, bad rows quarantined with their reasons."""
    report = run_validation(
        settings(data_dir=data_dir), events, out=out, as_of=utc(as_of), taobao=taobao, names=names,
        map_column=map_column or [], source_tz=source_tz, max_bad_share=max_bad_share,
    )
    print_validation(report)


def run_validation(
    cfg: Settings, sources: list[Path], *, out: Path | None = None, as_of: datetime | None = None,
    taobao: bool = False, names: str | None = None, map_column: list[str] | None = None,
    source_tz: str | None = None, max_bad_share: float | None = None,
) -> Any:
    """Validate ``sources`` into ``out`` (default ``<data-dir>/clean``); prints the summary even when it fails."""
    from datetime import timedelta

    from features.events.validate import ReadOptions, TooManyBadRowsError, ValidationConfig, validate_events

    mapping: dict[str, str] = {}
    for item in map_column or []:
        if "=" not in item:
            raise typer.BadParameter(f"--map expects SOURCE=CANONICAL, got {item!r}")
        src, dst = item.split("=", 1)
        mapping[src.strip()] = dst.strip()
    opts: dict[str, Any] = {"columns": mapping, "source_tz": source_tz or cfg.validation.source_tz}
    if names:
        opts["names"] = tuple(n.strip() for n in names.split(","))
        opts["header"] = False
    read = ReadOptions.taobao(**opts) if taobao else ReadOptions(**opts)
    vcfg = ValidationConfig(
        as_of=as_of,
        future_tolerance=timedelta(hours=cfg.validation.future_tolerance_hours),
        max_bad_share=cfg.validation.max_bad_share if max_bad_share is None else max_bad_share,
    )
    out = check_output(out or cfg.clean_dir, cfg, is_dir=True)
    with progress_bar("validating events") as progress:
        try:
            return validate_events(
                [str(s) for s in sources], out, vcfg, read, now=datetime.now(UTC), progress=progress
            )
        except TooManyBadRowsError as exc:
            print_validation(exc.report)
            raise


def print_validation(report: Any) -> None:
    rows: dict[str, Any] = {
        "rows in": report.rows_in, "accepted": report.accepted, "quarantined": report.quarantined,
        "duplicates dropped": report.duplicates,
        "invariant": f"{report.rows_in:,} == {report.accepted:,} + {report.quarantined:,} + {report.duplicates:,}",
        "bad-row share": f"{report.bad_share:.3%} (limit {report.max_bad_share:.2%})",
    }
    rows.update({f"  {reason}": n for reason, n in report.by_reason.items() if n})
    rows.update({"clean events": report.events_path or "(not written)", "quarantine": report.quarantine_path,
                 "report": report.report_path})
    console().print(kv_table("validation", rows))


# ------------------------------------------------------------------------------------------------ features ----------
def feature_spec(cfg: Settings) -> Any:
    from features.spec.definition import FeatureSpec

    return FeatureSpec(
        windows=cfg.features.windows, target_categories=cfg.features.target_categories,
        lookback_days=cfg.features.lookback_days,
    )


Engine = Annotated[str, typer.Option(help="duckdb (one machine, default) or spark (the same spec on Spark).")]
SparkMaster = Annotated[str, typer.Option(help="Spark master (local[2], spark://..., yarn) or sc:// Connect URL.")]


def check_engine(engine: str) -> str:
    if engine not in ("duckdb", "spark"):
        raise typer.BadParameter(f"--engine must be duckdb or spark, got {engine!r}")
    return engine


@app.command()
@friendly
def features(
    as_of: AsOf,
    events: Annotated[Path | None, typer.Option(help="Clean events [default: <data-dir>/clean/events.parquet].")] = None,
    out: Annotated[Path | None, typer.Option(help="Output Parquet [default: <data-dir>/features/<as_of>.parquet].")] = None,
    engine: Engine = "duckdb",
    spark_master: SparkMaster = "local[2]",
    data_dir: DataDir = None,
) -> None:
    """Build the feature table (one row per user) as of a cutoff; spec version and as_of go in its metadata."""
    from features.build.builder import build_features, write_features

    cfg = settings(data_dir=data_dir)
    when = _required_as_of(as_of)
    events = events or cfg.clean_dir / "events.parquet"
    spec = feature_spec(cfg)
    suffix = "" if check_engine(engine) == "spark" else ".parquet"
    out = check_output(out or cfg.features_dir / f"features_{when:%Y%m%dT%H%M}{suffix}", cfg, is_dir=not suffix)
    with progress_bar("building features") as progress:
        if engine == "spark":
            from features.build.spark import build_features_spark, read_features_meta, spark_connection

            build_features_spark(events, when, spec, spark_connection(spark_master), out_dir=out, progress=progress)
            users, columns = read_features_meta(out)["rows"], "partitioned Parquet"
        else:
            table = build_features(events, when, spec, progress=progress, chunk_events=cfg.features.chunk_events)
            write_features(table, out, when, spec)
            users, columns = len(table), table.shape[1]
    console().print(kv_table("features", {
        "engine": engine, "users": users, "columns": columns, "spec version": spec.version,
        "as of": when.isoformat(), "written to": out,
    }))


@app.command()
@friendly
def segments(
    as_of: AsOf,
    events: Annotated[Path | None, typer.Option(help="Clean events [default: <data-dir>/clean/events.parquet].")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print the audience asset summary: AIPL layers, lifecycle stages, RFM groups, P+L share vs the 30% target."""
    from features.build.builder import build_features, default_connection, events_table
    from features.segments.segmenter import Segmenter, asset_summary

    cfg = settings(data_dir=data_dir)
    when = _required_as_of(as_of)
    con = default_connection()
    table = events_table(events or cfg.clean_dir / "events.parquet", con)
    raw = build_features(table, when, feature_spec(cfg), con=con)
    segmented = Segmenter().fit(table, raw, when).transform(raw)
    print_assets(asset_summary(segmented))


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
    pl = summary.get("pl_share")
    if pl is not None:
        ok = pl >= summary.get("pl_target", 0.30)
        colour = "green" if ok else "yellow"
        console().print(
            f"P+L share of assets: [{colour}]{pl:.1%}[/] of {summary.get('n_assets', 0):,} assets "
            f"(target >= {summary.get('pl_target', 0.3):.0%})"
        )


def _required_as_of(as_of: datetime | None) -> datetime:
    if as_of is None:
        raise typer.BadParameter("--as-of is required (e.g. --as-of 2026-09-01)")
    value = utc(as_of)
    assert value is not None
    return value




def _register_commands() -> None:
    """Import the modules whose commands attach themselves to :data:`app`."""
    import importlib

    for name in ("models", "serving", "demo"):
        importlib.import_module(f"propensity.cli.{name}")


_register_commands()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
