"""What every command shares: the exit-code table, error messages, option types, the time parser and the settings.

Command modules import from here (and from :mod:`propensity.cli.ui` / :mod:`propensity.cli.inputs`), never from
:mod:`propensity.cli.main`, which defines the Typer app and registers their functions.

Each expected error class carries its exit code as a class attribute ``exit_code`` (library packages cannot import
this module, so they write the number with a comment naming its row of :data:`EXIT_CODES`); an exception without one
is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.config import Settings, load_settings

OK, BAD_INPUT, USAGE, BAD_ROWS, LOCKED, ALERT, UNAVAILABLE = 0, 1, 2, 3, 4, 5, 6
EXIT_CODES: Mapping[int, str] = {
    OK: "success",
    BAD_INPUT: "bad input: a missing, unreadable or invalid file or data set",
    USAGE: "usage: a bad option, argument or setting",
    BAD_ROWS: "too many bad rows in the events",
    LOCKED: "another training or retraining run holds the lock",
    ALERT: "monitoring raised an alert (propensity monitor)",
    UNAVAILABLE: "unavailable: no model, snapshot, store, port or Spark to use",
}
"""The documented exit codes (README "Exit codes", ``propensity --help``)."""

BUILTIN_EXIT_CODES: Mapping[str, int] = {
    "FileNotFoundError": BAD_INPUT,
    "IsADirectoryError": BAD_INPUT,
    "NotADirectoryError": BAD_INPUT,
    "PermissionError": BAD_INPUT,
    "ValidationError": USAGE,  # pydantic: a setting from the environment or propensity.toml is invalid
}
"""Exit codes of exceptions from Python and third-party packages, by class name (they carry no ``exit_code``)."""


def exit_codes_help() -> str:
    """The exit-code table as help text (one code a line)."""
    return "Exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


def exit_code_of(exc: BaseException) -> int | None:
    """The documented exit code of an expected, user-facing error; None for a bug (the traceback is kept)."""
    code = getattr(type(exc), "exit_code", None)
    if isinstance(code, int) and code in EXIT_CODES:
        return code
    for cls in type(exc).__mro__:
        if cls.__name__ in BUILTIN_EXIT_CODES and (cls.__module__ == "builtins" or "pydantic" in cls.__module__):
            return BUILTIN_EXIT_CODES[cls.__name__]
    return None


def error_message(exc: BaseException) -> str:
    """The user-facing text of an expected error."""
    errors = getattr(exc, "errors", None)
    if type(exc).__name__ == "ValidationError" and callable(errors):  # pydantic: name each setting and why
        parts = []
        for err in errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg')} (got {err.get('input')!r})")
        return "invalid setting " + "; ".join(parts) + " (check PROPENSITY_* variables and propensity.toml)"
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror[0].lower()}{exc.strerror[1:]}"
    return str(exc)


# ----------------------------------------------------------------------------------------------- time values ----------
def parse_datetime(value: str | datetime) -> datetime:
    """Parse a time option: a date (``2026-09-01``), minutes or seconds (``2026-09-01T10:00``, ``2026-09-01 10:00:30``),
    fractions, and an offset (``+02:00``) or ``Z``. Naive values are UTC; the result is an aware UTC datetime."""
    if isinstance(value, datetime):
        parsed = value
    else:
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not a date or time: use ISO 8601, e.g. 2026-09-01, 2026-09-01T10:00 or "
                "2026-09-01T10:00:00+02:00 (naive times are UTC)"
            ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def utc(value: datetime | None) -> datetime | None:
    """Treat a naive datetime as UTC (None stays None)."""
    return None if value is None else parse_datetime(value)


def time_option(*names: str, help: str, **kwargs: Any) -> Any:
    """A Typer option for a point in time, read by :func:`parse_datetime` (metavar ``DATETIME``)."""
    return typer.Option(*names, help=help, parser=parse_datetime, metavar="DATETIME", **kwargs)


AS_OF_HELP = "Cutoff time T (ISO 8601 date or time, naive = UTC). Features use only events before it."
AsOf = Annotated[datetime, time_option("--as-of", help=AS_OF_HELP)]
"""A required cutoff."""

# ----------------------------------------------------------------------------------------------- options ----------
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Root folder of every data output (the data_dir setting).", show_default="data"),
]
Events = Annotated[
    Path | None,
    typer.Option(help="Clean events from `propensity validate` (a Parquet file or folder).",
                 show_default="<data-dir>/clean/events.parquet"),
]
Engine = Annotated[
    str, typer.Option(help="duckdb (one machine) or spark (the same feature spec on Spark).", metavar="ENGINE")
]
SparkMaster = Annotated[str, typer.Option(help="Spark master (local[2], spark://..., yarn) or sc:// Connect URL.")]
ENGINES = ("duckdb", "spark")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise typer.BadParameter(f"choose {' or '.join(ENGINES)}, got {engine!r}", param_hint="--engine")
    return engine


def settings(**overrides: Any) -> Settings:
    """The typed settings of one command: defaults < propensity.toml < PROPENSITY_* < the command's options."""
    return load_settings(**overrides)


def events_path(cfg: Settings, events: Path | None) -> Path:
    """The clean events a command reads: ``--events``, else ``<data-dir>/clean/events.parquet``, or every
    ``<data-dir>/clean/*.parquet`` once ingested events were exported there (``ingested-*.parquet``, see
    :mod:`propensity.cli.events`)."""
    if events is not None:
        return events
    if any(cfg.clean_dir.glob("ingested-*.parquet")):  # features.events.log.PART_GLOB
        return cfg.clean_dir / "*.parquet"
    return cfg.clean_dir / "events.parquet"


def feature_spec(cfg: Settings) -> Any:
    """The feature spec of the settings (windows, target categories, lookback)."""
    from features.spec.definition import FeatureSpec

    return FeatureSpec.from_settings(cfg.features)
