"""Score-store errors: one base class, and what the HTTP layer and the CLI tell apart."""

from __future__ import annotations

__all__ = ["SnapshotNotFoundError", "StoreError", "StoreInputError", "StoreUnavailableError"]


class StoreError(Exception):
    """Base class of every score-store error."""

    exit_code = 6  # CLI exit code: the store is unavailable


class StoreUnavailableError(StoreError):
    """The backend cannot be reached or used right now (the HTTP layer answers 503)."""


class SnapshotNotFoundError(StoreError):
    """A snapshot id that does not exist (or there is no snapshot to roll back to)."""


class StoreInputError(StoreError, ValueError):
    """Bad input from the caller: malformed chunks, duplicate users, missing ``created_at``, bad ids."""

    exit_code = 1  # CLI exit code: bad input
