"""The configured event log for the commands: open it, check it exists, export its new events into the clean
history (used by ``ingest``, ``validate``, ``score``, ``lookup`` and ``retrain``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from propensity.cli.ui import console
from propensity.config import Settings
from propensity.paths import check_output

__all__ = ["export_for_batch", "export_history", "exported_seq", "log_exists", "open_log"]

T = TypeVar("T")


def open_log(cfg: Settings) -> Any:
    """The configured event log (:func:`features.events.backends.open_event_log`), created when missing."""
    from features.events.backends import open_event_log

    return open_event_log(cfg.events_log_path, **cfg.event_log_options)


def log_exists(cfg: Settings) -> bool:
    """Whether the configured event log exists (nothing is created)."""
    from features.events.backends import event_log_exists

    return event_log_exists(cfg.events_log_path, **cfg.event_log_options)


def exported_seq(cfg: Settings) -> int:
    """The event log's export watermark: every logged event up to it is in the clean history (0 without a log)."""
    if not log_exists(cfg):
        return 0
    with open_log(cfg) as log:
        return log.exported_seq()


def export_history(cfg: Settings, *, quiet: bool = False) -> Any:
    """Move the event log's events not yet exported into ``<data-dir>/clean`` (the log's ``export``); None when
    there is no log or nothing new. Prints what it wrote unless ``quiet``."""
    if not log_exists(cfg):
        return None
    return _export(cfg, lambda _watermark: None, quiet=quiet)[0]


def export_for_batch(cfg: Settings, list_files: Callable[[], T]) -> tuple[int, T]:
    """:func:`export_history`, then ``(watermark, list_files())`` read before any other command can export a part:
    the files listed hold the logged events up to the watermark, no more, no fewer. Without a log: ``(0,
    list_files())``."""
    if not log_exists(cfg):
        return 0, list_files()
    return _export(cfg, lambda watermark: (watermark, list_files()), quiet=False)[1]


def _export(cfg: Settings, read: Callable[[int], T], *, quiet: bool) -> tuple[Any, T]:
    """The log's ``export_then`` into ``<data-dir>/clean``, printing what it wrote unless ``quiet``."""
    dest = check_output(cfg.clean_dir, cfg, is_dir=True)
    with open_log(cfg) as log:
        result, found = log.export_then(dest, read)
    if result is not None and not quiet:
        where = result.path if len(result.paths) == 1 else f"{len(result.paths)} files in {dest}"
        console().print(f"exported {result.rows:,} ingested events (seq {result.first_seq:,} to "
                        f"{result.last_seq:,}) to {where}", soft_wrap=True)
    return result, found
