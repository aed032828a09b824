"""The score store's interface and its publish protocol, shared by the SQLite and Redis backends.

:class:`ScoreStore` is what callers use. :class:`BaseScoreStore` implements it for the backends: it owns the
publish protocol (lock, register, write, switch, discard on failure, prune), rollback's validation and the
store's life cycle, and each backend fills in small hooks (:mod:`serving.store.sqlite`,
:mod:`serving.store.redis`). Callers import these names from :mod:`serving.store.base`; the backends from here.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import pandas as pd

from serving.store.encode import ProgressFn
from serving.store.errors import StoreError
from serving.store.records import (
    SnapshotInfo,
    check_keep,
    encode_meta,
    new_snapshot_id,
    parse_created_at,
    progress_total,
    validate_snapshot_id,
)

__all__ = ["BaseScoreStore", "Draft", "ScoreStore"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- interface
@runtime_checkable
class ScoreStore(Protocol):
    """Versioned per-user score snapshots with an atomic switch (see the module docstring)."""

    keep: int

    def publish(
        self, chunks: Iterable[pd.DataFrame], meta: Mapping[str, Any], *, progress: ProgressFn | None = None
    ) -> SnapshotInfo:
        """Write every chunk into a new snapshot, switch to it atomically, and prune old snapshots.

        Each chunk has a ``user_id`` column (unique over the whole publish) plus score columns.
        ``meta["created_at"]`` (datetime or ISO string) is required; ``meta["rows"]``, when an int, is
        used as the progress total.
        """
        ...

    def lookup(self, user_ids: Sequence[str]) -> tuple[SnapshotInfo | None, dict[str, str]]:
        """The current snapshot and ``{user_id: raw JSON payload}`` for the users found, all from it."""
        ...

    def current(self) -> SnapshotInfo | None:
        """The snapshot being served, or None before the first publish."""
        ...

    def snapshots(self) -> list[SnapshotInfo]:
        """Every complete snapshot kept, newest (last published) first."""
        ...

    def rollback(self, to: str | None = None) -> SnapshotInfo:
        """Serve snapshot ``to`` (default: the one published before the current one)."""
        ...

    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` when the backend is down."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


# --------------------------------------------------------------------------------------------- publish protocol
@dataclass
class Draft:
    """A snapshot while it is being published, handed from one :class:`BaseScoreStore` hook to the next."""

    info: SnapshotInfo
    """Id, UTC creation time and metadata; ``rows`` is 0 until the chunks are written."""
    meta_json: str
    """``info.meta`` as compact JSON text."""
    lease: Any = None
    """What :meth:`BaseScoreStore._lock` yielded (the Redis lock token; None for SQLite)."""
    seq: int = 0
    """Publish order, for a backend that numbers snapshots itself (Redis ``INCR``; 0 until registered)."""


class BaseScoreStore(ABC):
    """The publish protocol and life cycle shared by the backends; they fill in the hooks below.

    :meth:`publish` takes the one-publish-at-a-time lock (:meth:`_lock`), drops what a crashed publish left
    (:meth:`_drop_unfinished`), registers the new snapshot as building (:meth:`_register`), writes the chunks
    (:meth:`_write`), then marks it ready and moves the pointer in one atomic step (:meth:`_switch`). Any
    failure before the switch removes the partial snapshot (:meth:`_discard_partial`, best effort) and
    re-raises, so the old snapshot stays served; after the switch, snapshots beyond ``keep`` are deleted
    (:meth:`_drop_expired`, best effort). The backend's own exceptions (``_errors``) come out as
    :class:`StoreError` (:meth:`_error`). Use a store as a context manager, or call :meth:`close`.
    """

    _errors: ClassVar[tuple[type[Exception], ...]] = ()
    """The backend library's exceptions, turned into :class:`StoreError` by :meth:`_error`."""

    def __init__(self, where: str, keep: int) -> None:
        self.keep = check_keep(keep)
        self._where = where  # the file or URL, for messages
        self._infos: dict[str, SnapshotInfo] = {}
        self._closed = False

    # ------------------------------------------------------------------------------------- templates
    def publish(
        self, chunks: Iterable[pd.DataFrame], meta: Mapping[str, Any], *, progress: ProgressFn | None = None
    ) -> SnapshotInfo:
        """Write every chunk into a new snapshot, switch the pointer to it, then prune old snapshots.

        Each chunk has a ``user_id`` column (unique over the whole publish) plus score columns.
        ``meta["created_at"]`` (datetime or ISO string) is required; ``meta["rows"]``, when an int, is the
        progress total. Exceptions raised by ``chunks`` propagate unchanged after the partial snapshot is
        discarded; the previous snapshot stays current. Duplicate user ids raise :class:`StoreInputError`.
        """
        created_at = parse_created_at(meta)
        meta_json = encode_meta(meta)
        draft = Draft(SnapshotInfo(new_snapshot_id(created_at), created_at, 0, json.loads(meta_json)), meta_json)
        if self._closed:
            raise StoreError(f"score store {self._where} is closed")
        with self._translated(), self._lock() as draft.lease:
            self._drop_unfinished()
            self._register(draft)
            try:
                rows = self._write(draft, chunks, progress_total(meta), progress)
                draft.info = replace(draft.info, rows=rows)
                self._switch(draft)
            except BaseException:
                self._discard(draft.info.snapshot_id)
                raise
            self._infos[draft.info.snapshot_id] = draft.info
            self._prune(draft.info.snapshot_id)
        return draft.info

    def rollback(self, to: str | None = None) -> SnapshotInfo:
        """Serve snapshot ``to``, or the one published just before the current one when ``to`` is None."""
        if to is not None:
            validate_snapshot_id(to)
        with self._translated():
            return self._rollback(to)

    def current(self) -> SnapshotInfo | None:
        """The snapshot being served, or None before the first publish."""
        return self.lookup([])[0]

    def close(self) -> None:
        """Release connections (the store cannot publish afterwards)."""
        self._closed = True
        self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Re-raise the backend's own exceptions as :class:`StoreError` (one line, no backend traceback)."""
        try:
            yield
        except self._errors as exc:
            raise self._error(exc) from None

    def _discard(self, snapshot_id: str) -> None:
        """Best effort: remove a failed publish now (else the next publish drops it)."""
        try:
            self._discard_partial(snapshot_id)
        except self._errors as exc:
            log.warning("could not remove unfinished snapshot %s from %s: %s", snapshot_id, self._where, exc)

    def _prune(self, current: str) -> None:
        """Delete snapshots beyond the newest ``keep`` (never ``current``); failures only log a warning."""
        try:
            self._drop_expired(current)
        except self._errors as exc:
            log.warning("could not prune old snapshots in %s: %s", self._where, exc)

    # ------------------------------------------------------------------------------------- hooks
    @abstractmethod
    def _error(self, exc: Exception) -> StoreError:
        """The :class:`StoreError` (or :class:`StoreUnavailableError`) for one of the backend's exceptions."""

    @abstractmethod
    def _lock(self) -> AbstractContextManager[Any]:
        """Hold the lock that lets one publish run at a time; raise :class:`StoreError` when it is taken.

        The value it yields is kept as ``Draft.lease``.
        """

    @abstractmethod
    def _drop_unfinished(self) -> None:
        """Remove every snapshot a crashed publish left unfinished (called while holding the lock)."""

    @abstractmethod
    def _register(self, draft: Draft) -> None:
        """Record ``draft`` as a snapshot being built (invisible to readers) and make room for its rows."""

    @abstractmethod
    def _write(
        self, draft: Draft, chunks: Iterable[pd.DataFrame], total: int | None, progress: ProgressFn | None
    ) -> int:
        """Write the rows of every chunk into the draft (``total``: expected rows or None, for ``progress``);
        return the number of users written."""

    @abstractmethod
    def _switch(self, draft: Draft) -> None:
        """Mark the draft ready with ``draft.info.rows`` and point readers at it, in one atomic step."""

    @abstractmethod
    def _discard_partial(self, snapshot_id: str) -> None:
        """Remove a snapshot whose publish failed (its record and rows)."""

    @abstractmethod
    def _drop_expired(self, current: str) -> None:
        """Remove the ready snapshots beyond the newest ``keep``, never ``current``."""

    @abstractmethod
    def _rollback(self, to: str | None) -> SnapshotInfo:
        """Point readers at :func:`rollback_target` of the kept snapshots, atomically; return its info."""

    @abstractmethod
    def _close(self) -> None:
        """Close the backend's connections."""

    @abstractmethod
    def lookup(self, user_ids: Sequence[str]) -> tuple[SnapshotInfo | None, dict[str, str]]:
        """The current snapshot and ``{user_id: JSON payload}`` of the users found in it (one snapshot)."""

    @abstractmethod
    def snapshots(self) -> list[SnapshotInfo]:
        """Every complete snapshot kept, last published first."""

    @abstractmethod
    def ping(self) -> None:
        """Raise :class:`StoreUnavailableError` when the backend cannot be used."""
