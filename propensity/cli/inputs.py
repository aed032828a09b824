"""Checks on the files a command reads, before any engine opens them.

Each check says in one line what is wrong with the file and which command makes the right one: it exists, it is a
file or a folder of Parquet parts, every part is Parquet (not CSV, not empty) and it has the columns of its contract
with usable types. Without them DuckDB or pyarrow answer with a page of traceback, or (worse) accept a float
``user_id`` and write "1.5" as a user.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from glob import glob
from pathlib import Path

import pyarrow as pa

from propensity.cli.common import BAD_INPUT

MAGIC = b"PAR1"
MAX_SCHEMAS = 64
"""Footers read per input (every part's magic bytes are checked; the schema of the first parts only)."""

VALIDATE_HINT = "run `propensity validate FILE` first (it checks raw CSV or Parquet and writes clean events)"
SCORE_HINT = "run `propensity score --as-of T` to write one"


class InputError(ValueError):
    """A file given to a command is missing, empty, not Parquet or lacks its contract's columns."""

    exit_code = BAD_INPUT


def _is_text(value: pa.DataType) -> bool:
    if pa.types.is_dictionary(value):
        return _is_text(value.value_type)
    return pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)


def _is_number(value: pa.DataType) -> bool:
    return pa.types.is_floating(value) or pa.types.is_integer(value) or pa.types.is_decimal(value)


EVENT_TYPES: dict[str, tuple[str, Callable[[pa.DataType], bool]]] = {
    "user_id": ("text", _is_text),
    "ts": ("a timestamp", pa.types.is_timestamp),
    "behavior": ("text", _is_text),
    "item_id": ("text", _is_text),
    "category_id": ("text", _is_text),
    "channel": ("text", _is_text),
    "amount": ("a number", _is_number),
}
"""Clean-event columns and the Arrow types a reader accepts (what `propensity validate` writes)."""
REQUIRED_EVENT_COLUMNS = ("user_id", "ts", "behavior")


def parquet_files(path: Path, what: str, hint: str) -> list[Path]:
    """The Parquet files behind ``path`` (a file, a folder of ``*.parquet`` parts or a glob), each checked for its
    magic bytes; :class:`InputError` names the first problem and ``hint`` says what to run."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise InputError(f"no file matches {text} ({what}); {hint}")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise InputError(f"{path} is a folder with no .parquet file in it, not {what}; {hint}")
    elif not path.exists():
        raise InputError(f"{path} does not exist ({what}); {hint}")
    elif not path.is_file():
        raise InputError(f"{path} is not a file ({what}); {hint}")
    else:
        files = [path]
    for file in files:
        _check_magic(file, what, hint)
    return files


def _check_magic(file: Path, what: str, hint: str) -> None:
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            head = fh.read(min(size, 512))
            fh.seek(max(size - 4, 0))
            tail = fh.read(4)
    except OSError as exc:
        raise InputError(f"cannot read {file}: {exc.strerror or exc}") from None
    if size == 0:
        raise InputError(f"{file} is empty (0 bytes), not {what}; {hint}")
    if head[:4] == MAGIC and tail == MAGIC and size >= 12:
        return
    looks = "CSV or other text, not Parquet" if _looks_like_text(head) else "not a Parquet file (no PAR1 marks)"
    raise InputError(f"{file} is {looks} ({what}); {hint}")


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def _schemas(files: Iterable[Path], what: str, hint: str) -> list[tuple[Path, pa.Schema]]:
    import pyarrow.parquet as pq

    found = []
    for file in list(files)[:MAX_SCHEMAS]:
        try:
            found.append((file, pq.read_schema(file)))
        except (pa.ArrowException, OSError) as exc:
            raise InputError(f"{file} is not a readable Parquet file ({what}): {exc}; {hint}") from None
    return found


def check_events(path: Path, *, default: bool = False) -> Path:
    """``path`` when it holds clean events (the contract's columns, the validator's types); else :class:`InputError`.

    ``default``: the path is the settings' default (no ``--events`` was given), so the message says how to make it.
    """
    what = "clean events"
    hint = VALIDATE_HINT if not default else "run `propensity validate FILE` first or pass --events"
    if default and not path.exists() and not glob(str(path)):
        raise InputError(f"no clean events at {path}: {hint}")
    for file, schema in _schemas(parquet_files(path, what, hint), what, hint):
        problems = []
        missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in schema.names]
        if missing:
            problems.append(f"no column {', '.join(missing)} (columns: {', '.join(schema.names[:12]) or 'none'})")
        for name, (want, ok) in EVENT_TYPES.items():
            if name in schema.names and not ok(schema.field(name).type):
                problems.append(f"{name} is {schema.field(name).type}, not {want}")
        if problems:
            raise InputError(f"{file} is not clean events: {'; '.join(problems)}; {VALIDATE_HINT}")
    return path


def event_rows(path: Path) -> int:
    """The number of rows of a checked clean-events path (from the Parquet footers, no data read)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in parquet_files(path, "clean events", VALIDATE_HINT))


def check_columns(path: Path, what: str, columns: Iterable[str], hint: str) -> Path:
    """``path`` when it is Parquet with every one of ``columns``; else :class:`InputError` saying what it is not."""
    needed = list(columns)
    for file, schema in _schemas(parquet_files(path, what, hint), what, hint):
        missing = [c for c in needed if c not in schema.names]
        if missing:
            shown = ", ".join(schema.names[:12]) + (", ..." if len(schema.names) > 12 else "")
            raise InputError(f"{file} is not {what}: no column {', '.join(missing)} (columns: {shown}); {hint}")
    return path


def check_audience(path: Path, columns: Iterable[str]) -> Path:
    """An audience file written by `propensity score` (file or Spark folder) with ``columns``."""
    return check_columns(path, "an audience file from `propensity score`", columns,
                         f"pass one with --scores or {SCORE_HINT}")


def check_feature_file(path: Path) -> Path:
    """A feature file written by `propensity features` (its metadata is checked when it is read)."""
    parquet_files(path, "a feature file", "write one with `propensity features --as-of T`")
    return path
