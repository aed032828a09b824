"""Which event log to open: :class:`features.events.redis_log.RedisEventLog` when a Redis URL is configured, else
the SQLite file (:class:`features.events.log.EventLog`). Both have the interface of
:class:`features.events.logbase.BaseEventLog`.

The app passes ``Settings.redis_url`` (the score store's Redis: when it is set, the event log lives there too), the
key prefix and whether a Redis without ``appendfsync always`` may be used (see the settings in
:mod:`propensity.config`).
"""

from __future__ import annotations

from pathlib import Path

from features.events.logbase import BaseEventLog
from features.events.redis_log import DEFAULT_PREFIX
from features.events.rows import EventLogError, EventLogInputError

__all__ = ["EventLogError", "EventLogInputError", "event_log_exists", "event_log_location", "open_event_log"]


def open_event_log(path: Path, redis_url: str | None = None, *, redis_prefix: str = DEFAULT_PREFIX,
                   allow_volatile: bool = False) -> BaseEventLog:
    """The event log in the Redis at ``redis_url`` under ``redis_prefix`` when a URL is given (``allow_volatile``:
    see :class:`features.events.redis_log.RedisEventLog`), else the SQLite file at ``path``; created when missing.
    Raises :class:`EventLogError` when it cannot be opened."""
    if redis_url:
        from features.events.redis_log import RedisEventLog

        return RedisEventLog(redis_url, redis_prefix, allow_volatile=allow_volatile)
    from features.events.log import EventLog

    return EventLog(path)


def event_log_exists(path: Path, redis_url: str | None = None, *, redis_prefix: str = DEFAULT_PREFIX,
                     allow_volatile: bool = False) -> bool:
    """Whether :func:`open_event_log` with these arguments would find a log (nothing is created: a file test, or
    one ``EXISTS`` in Redis; ``allow_volatile`` is not used). Raises :class:`EventLogError` when Redis does not
    answer."""
    if redis_url:
        from features.events.redis_log import redis_log_exists

        return redis_log_exists(redis_url, redis_prefix)
    return Path(path).exists()


def event_log_location(path: Path, redis_url: str | None = None, *, redis_prefix: str = DEFAULT_PREFIX,
                       allow_volatile: bool = False) -> str:
    """Where :func:`open_event_log` keeps the log, for messages (a Redis URL is shown without its password;
    ``allow_volatile`` is not used)."""
    if redis_url:
        from features.events.redis_log import redact_url

        return f"{redact_url(redis_url)} (keys {redis_prefix}:*)"
    return str(path)
