"""The ``propensity`` command line: one command per pipeline stage, thin over features / training / serving.

This module defines the Typer :data:`app` and registers the functions of the command modules (``data``, ``models``,
``serving``, ``campaigns``, ``monitor``, ``demo``, ``events``), which never import it. Every command builds the typed
:class:`~propensity.config.Settings` once, calls the libraries and prints where its outputs went. An expected error
ends the command with a one-line message on stderr and the exit code its class carries
(:data:`propensity.cli.common.EXIT_CODES`), never a stack trace; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

from propensity.cli import campaigns, data, demo, events, models, monitor, serving
from propensity.cli.common import USAGE, error_message, exit_code_of, exit_codes_help
from propensity.cli.ui import error

PASS_THROUGH = (typer.TyperException, typer.Exit, typer.Abort)
"""Typer's own signals: usage errors (exit code 2), explicit exits and Ctrl-C."""


def _no_type_label(param: Any) -> None:
    """Flags take no value: show no ``<bool>`` beside them on ``--help``."""
    if param is not None and getattr(param, "is_flag", False) and param.metavar is None:
        param.metavar = ""


class Command(TyperCommand):
    """A command whose ``--help`` shows no type label for flags."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _no_type_label(option)
        return option

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        for param in params:
            _no_type_label(param)
        return params


class Group(TyperGroup):
    """The app: turns an expected error of any command into its one-line message and documented exit code."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        _no_type_label(option)
        return option

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # a usage error: one line too, with where to read more
            where = getattr(getattr(exc, "ctx", None), "command_path", None)
            if exc.exit_code != USAGE or where is None:
                raise
            error(f"{exc.format_message()} (see `{where} --help`)")
            raise typer.Exit(USAGE) from None
        except PASS_THROUGH:
            raise
        except Exception as exc:
            code = exit_code_of(exc)
            if code is None:
                raise
            error(error_message(exc))
            raise typer.Exit(code) from None


app = typer.Typer(
    name="propensity",
    cls=Group,
    help="Audience propensity scoring: validate events, build features, train, score, serve, activate.",
    epilog=exit_codes_help(),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMANDS: tuple[Callable[..., Any], ...] = (
    data.generate, data.validate, events.ingest, data.features, data.segments, data.flow,
    models.train, models.retrain, models.promote, models.rollback, models.models,
    serving.score, serving.snapshots, serving.rollback_scores, serving.lookup, serving.audience, serving.report,
    serving.serve, serving.pin,
    campaigns.outcomes, monitor.monitor,
    demo.demo,
)
"""Every command, in the order ``propensity --help`` lists them (names from the functions, ``_`` as ``-``)."""

for _command in COMMANDS:
    app.command(cls=Command)(_command)
app.add_typer(campaigns.campaigns_app, name="campaigns", cls=Group)


def main() -> None:  # pragma: no cover - the console script
    """Entry point of the ``propensity`` console script."""
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
