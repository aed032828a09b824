"""Snapshot records: ids, metadata, retention and rollback choices shared by every score-store backend."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from serving.store.encode import dumps_compact
from serving.store.errors import SnapshotNotFoundError, StoreInputError

__all__ = [
    "SNAPSHOT_ID_RE", "SnapshotInfo", "check_keep", "encode_meta", "expired_snapshots", "info_from_parts",
    "new_snapshot_id", "parse_created_at", "progress_total", "rollback_target", "snapshot_record",
    "validate_snapshot_id",
]


@dataclass(frozen=True)
class SnapshotInfo:
    """One published snapshot.

    ``created_at`` is the UTC time the caller gave in ``meta["created_at"]``; ``rows`` is the number of
    users written; ``meta`` is the caller's metadata dict after a JSON round trip (treat it as read-only:
    the same object may be shared between lookups).
    """

    snapshot_id: str
    created_at: datetime
    rows: int
    meta: dict[str, Any] = field(hash=False)


# --------------------------------------------------------------------------------------------- ids
SNAPSHOT_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def new_snapshot_id(created_at: datetime, token: str | None = None) -> str:
    """A sortable snapshot id ``YYYYmmddTHHMMSSZ-<6 hex>`` from a UTC time (``token``: the 6 hex digits)."""
    token = secrets.token_hex(3) if token is None else token
    return validate_snapshot_id(f"{created_at.astimezone(UTC):%Y%m%dT%H%M%SZ}-{token}")


def validate_snapshot_id(snapshot_id: object) -> str:
    """Return ``snapshot_id`` if it has the snapshot id form, else raise :class:`SnapshotNotFoundError`."""
    if not isinstance(snapshot_id, str) or not SNAPSHOT_ID_RE.fullmatch(snapshot_id):
        raise SnapshotNotFoundError(
            f"{snapshot_id!r} is not a snapshot id (expected the form 20261124T010203Z-a1b2c3)"
        )
    return snapshot_id


def check_keep(keep: int) -> int:
    """Validate the retention count (>= 1)."""
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise StoreInputError(f"keep must be an integer >= 1 (snapshots to retain), got {keep!r}")
    return keep


def expired_snapshots(newest_first: Sequence[str], current: str | None, keep: int) -> list[str]:
    """Ids beyond the newest ``keep`` ones, never including ``current``."""
    return [sid for sid in newest_first[keep:] if sid != current]


def rollback_target(newest_first: list[str], current: str | None, to: str | None, where: str) -> str:
    """The snapshot a rollback switches to (shared by both backends)."""
    if to is not None:
        if to not in newest_first:
            known = ", ".join(newest_first) or "none"
            raise SnapshotNotFoundError(f"snapshot {to} not found in {where} (kept snapshots: {known})")
        return to
    if current is None or current not in newest_first:
        raise SnapshotNotFoundError(f"nothing to roll back to in {where}: no snapshot is being served")
    older = newest_first[newest_first.index(current) + 1 :]
    if not older:
        raise SnapshotNotFoundError(
            f"nothing to roll back to in {where}: {current} is the oldest snapshot kept (keep more snapshots)"
        )
    return older[0]


# --------------------------------------------------------------------------------------------- meta
def parse_created_at(meta: Mapping[str, Any]) -> datetime:
    """``meta["created_at"]`` as an aware UTC datetime (naive values are taken as UTC)."""
    if not isinstance(meta, Mapping):
        raise StoreInputError(f"meta must be a dict, got {type(meta).__name__}")
    raw = meta.get("created_at")
    if raw is None:
        raise StoreInputError("meta['created_at'] is required (the publish time, a datetime or ISO string)")
    if isinstance(raw, str):
        try:
            raw = datetime.fromisoformat(raw)
        except ValueError:
            raise StoreInputError(f"meta['created_at'] is not an ISO timestamp: {raw!r}") from None
    if not isinstance(raw, datetime):
        raise StoreInputError(f"meta['created_at'] must be a datetime or ISO string, got {type(raw).__name__}")
    if raw.tzinfo is None:
        raw = raw.replace(tzinfo=UTC)
    return raw.astimezone(UTC)


def encode_meta(meta: Mapping[str, Any]) -> str:
    """Compact JSON of the snapshot metadata (clear error when it is not JSON serialisable)."""
    try:
        return dumps_compact(dict(meta))
    except (TypeError, ValueError) as exc:
        raise StoreInputError(f"meta must be JSON serialisable: {exc}") from None


def snapshot_record(info: SnapshotInfo, *, seq: int, state: str) -> str:
    """JSON of the stored snapshot record (``seq`` orders snapshots by publish)."""
    return dumps_compact(
        {
            "snapshot_id": info.snapshot_id,
            "seq": seq,
            "state": state,
            "created_at": info.created_at.isoformat(),
            "rows": info.rows,
            "meta": info.meta,
        }
    )


def info_from_parts(snapshot_id: str, created_at: str, rows: int, meta: Any) -> SnapshotInfo:
    """Rebuild a :class:`SnapshotInfo` from stored fields (``meta`` as JSON text or dict)."""
    meta_dict = json.loads(meta) if isinstance(meta, str) else dict(meta)
    return SnapshotInfo(snapshot_id, datetime.fromisoformat(created_at), int(rows), meta_dict)


def progress_total(meta: Mapping[str, Any]) -> int | None:
    """``meta["rows"]`` when it is an int (the expected row count), else None."""
    rows = meta.get("rows")
    return int(rows) if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool) else None

