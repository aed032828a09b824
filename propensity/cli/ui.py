"""Terminal output helpers: Rich progress bars and tables, shared by every command."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

ProgressFn = Callable[[int, int | None], None]


def console(stderr: bool = False) -> Console:
    """A console on stdout for results; ``stderr=True`` for errors and warnings."""
    return Console(highlight=False, stderr=stderr)


def warn(message: str) -> None:
    """A warning on stderr: the command goes on, but its result may be empty or stale."""
    console(stderr=True).print(f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    """The one-line message of an error that stops the command (on stderr)."""
    console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def progress_bar(description: str, con: Console | None = None) -> Iterator[ProgressFn]:
    """Yield a ``progress(done, total)`` callback drawing one Rich bar; hidden when output is not a terminal."""
    con = con or console()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con,
        transient=False,
        disable=not con.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def kv_table(title: str, rows: Mapping[str, Any]) -> Table:
    """A two-column table of names and values."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(str(key), _fmt(value))
    return table


def frame_table(title: str, frame: Any, float_fmt: str = "{:.4f}") -> Table:
    """A Rich table from a pandas DataFrame (index shown as the first column)."""
    table = Table(title=title, title_justify="left")
    table.add_column(str(frame.index.name or ""), style="bold")
    for col in frame.columns:
        table.add_column(str(col), justify="right")
    for idx, row in frame.iterrows():
        table.add_row(str(idx), *(_fmt(v, float_fmt) for v in row.tolist()))
    return table


def _fmt(value: Any, float_fmt: str = "{:.4f}") -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return float_fmt.format(value) if not math.isnan(value) else "-"
    return str(value)
