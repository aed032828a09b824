"""The record files of campaigns: the one module that reads and writes ``<root>/<campaign_id>/``.

Layout of a campaign folder (see :mod:`serving.activation.campaigns` for what the facts mean)::

    <root>/<campaign_id>/campaign.json        the facts, written once
    <root>/<campaign_id>/members.parquet      one row per audience user with its group, written once
    <root>/<campaign_id>/outcomes/<read_id>.json   one file per outcome read, never rewritten

A campaign folder is built under a hidden temporary name and renamed into place (:func:`write_campaign`), so
readers see a whole campaign or none. Outcome reads are written to a temporary file and hard-linked to their final
name, which fails rather than replace an existing read (:func:`write_outcome_read`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CAMPAIGN_FILE = "campaign.json"
MEMBERS_FILE = "members.parquet"
OUTCOMES_DIR = "outcomes"
LIST_HINT = "`propensity campaigns` lists the campaign ids"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_STRING_COLUMNS = frozenset({"user_id", "group", "action", "aipl_layer", "lifecycle", "rfm_group"})


class CampaignError(ValueError):
    """A campaign cannot be built, written or read; the message is one line a CLI can print."""

    exit_code = 1  # CLI exit code: bad input


def utc(value: datetime | str) -> pd.Timestamp:
    """``value`` as an aware UTC timestamp (naive datetimes are taken as UTC)."""
    if not isinstance(value, (datetime, str)):
        raise CampaignError(f"expected a datetime, got {type(value).__name__}")
    ts = pd.Timestamp(value)
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def iso(value: datetime) -> str:
    """ISO 8601 UTC text with a ``Z`` (microseconds only when present), e.g. ``2024-03-01T00:00:00Z``."""
    return utc(value).tz_localize(None).isoformat() + "Z"


def check_id(campaign_id: str) -> str:
    if not isinstance(campaign_id, str) or not _ID.match(campaign_id):
        raise CampaignError(f"campaign id {campaign_id!r} must be letters, digits, '_', '.' or '-' (at most 128)")
    return campaign_id


@dataclass(frozen=True)
class Campaign:
    """One campaign: the facts of ``campaign.json`` (``facts``, as written) and its members.

    Times are aware UTC timestamps; the window is ``[as_of, window_close)``. ``counts`` holds users per group.
    ``members`` (one row per audience user: ``user_id``, ``group``, ``action``, ``action_p``, the value column,
    ``priority``, ``aipl_layer``, ``lifecycle``, ``rfm_group`` and any carried columns) is read from ``path`` on
    first use when the campaign was loaded from disk. ``path`` is None for a campaign not written yet.
    """

    campaign_id: str
    action: str
    as_of: pd.Timestamp
    window_close: pd.Timestamp
    created_at: pd.Timestamp
    control_share: float
    global_control_share: float
    cost_per_user: float
    model_versions: dict[str, str]
    snapshot_id: str | None
    lift_used: dict[str, Any]
    value_column: str
    counts: dict[str, int]
    facts: dict[str, Any] = field(repr=False)
    path: Path | None = None
    _members: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    @property
    def window_open(self) -> pd.Timestamp:
        return self.as_of

    @property
    def window_days(self) -> float:
        return (self.window_close - self.as_of).total_seconds() / 86_400

    @property
    def members(self) -> pd.DataFrame:
        if self._members is None:
            if self.path is None:
                raise CampaignError(f"campaign {self.campaign_id} has no members in memory and no folder")
            try:
                frame = pd.read_parquet(self.path / MEMBERS_FILE)
            except (OSError, ValueError, pa.ArrowException) as exc:
                raise CampaignError(f"cannot read {self.path / MEMBERS_FILE}: {exc}") from exc
            object.__setattr__(self, "_members", frame)
        return self._members  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready facts (the content of ``campaign.json``)."""
        return json.loads(json.dumps(self.facts))  # type: ignore[no-any-return]

    def at(self, path: Path) -> Campaign:
        """The same campaign, stored at ``path``."""
        return replace(self, path=path)

    @classmethod
    def from_dict(cls, facts: dict[str, Any], path: Path | None, members: pd.DataFrame | None = None) -> Campaign:
        try:
            return cls(
                campaign_id=check_id(facts["campaign_id"]),
                action=str(facts["action"]),
                as_of=utc(facts["as_of"]),
                window_close=utc(facts["window_close"]),
                created_at=utc(facts["created_at"]),
                control_share=float(facts["control_share"]),
                global_control_share=float(facts.get("global_control_share", 0.0)),
                cost_per_user=float(facts["cost_per_user"]),
                model_versions=dict(facts.get("model_versions") or {}),
                snapshot_id=facts.get("snapshot_id"),
                lift_used=dict(facts.get("lift_used") or {}),
                value_column=str(facts["value_column"]),
                counts={str(k): int(v) for k, v in facts["counts"].items()},
                facts=dict(facts),
                path=path,
                _members=members,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            where = path / CAMPAIGN_FILE if path is not None else "campaign facts"
            raise CampaignError(f"{where} is not a campaign record: {type(exc).__name__}: {exc}") from exc


def _members_table(members: pd.DataFrame) -> pa.Table:
    """``members`` as Arrow with fixed types: strings, float64 scores, int64 rank, UTC microsecond deadlines."""
    fields, arrays = [], []
    for name in members.columns:
        column = members[name]
        if name in _STRING_COLUMNS:
            kind, values = pa.string(), column.astype("str")
        elif name == "action_deadline":
            naive = pd.to_datetime(column, utc=True).dt.tz_convert(None).dt.as_unit("us").to_numpy()
            kind = pa.timestamp("us", tz="UTC")
            values = pa.array(naive, from_pandas=True).cast(kind)
        elif name == "audience_rank":
            kind, values = pa.int64(), column
        else:
            kind, values = pa.float64(), column.to_numpy(dtype="float64", na_value=float("nan"))
        fields.append(pa.field(name, kind, nullable=name not in ("user_id", "group")))
        arrays.append(pa.array(values, type=kind, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _fsynced_write(path: Path, write: Any) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def _token() -> str:
    return f"{os.getpid()}-{hashlib.blake2b(os.urandom(8), digest_size=4).hexdigest()}"


def write_campaign(root: str | Path, campaign: Campaign) -> Campaign:
    """Write ``campaign`` to ``<root>/<campaign_id>/`` (folder built under a temporary name, then renamed).

    An existing campaign id is a :class:`CampaignError`: records are never rewritten. Returns it with ``path`` set.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    cid = check_id(campaign.campaign_id)
    final = root / cid
    if final.exists():
        raise CampaignError(f"campaign {cid} already exists in {root}; campaign records are never rewritten")
    tmp = root / f".{cid}.tmp-{_token()}"
    try:
        tmp.mkdir()
        table = _members_table(campaign.members)
        _fsynced_write(tmp / MEMBERS_FILE, lambda fh: pq.write_table(table, fh))
        (tmp / OUTCOMES_DIR).mkdir()
        body = json.dumps(campaign.to_dict(), indent=2, allow_nan=False).encode()
        _fsynced_write(tmp / CAMPAIGN_FILE, lambda fh: fh.write(body))
        os.rename(tmp, final)  # atomic; refused when another writer created the id first
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():
            raise CampaignError(f"campaign {cid} already exists in {root}; campaign records are never rewritten") \
                from exc
        raise CampaignError(f"cannot write campaign {cid} in {root}: {exc}") from exc
    return campaign.at(final)


def load_campaign(root: str | Path, campaign_id: str) -> Campaign:
    """The campaign stored at ``<root>/<campaign_id>/`` (members read on first use); an unknown id is a
    one-line :class:`CampaignError`."""
    folder = Path(root) / check_id(campaign_id)
    path = folder / CAMPAIGN_FILE
    if not path.is_file():
        raise CampaignError(f"no campaign {campaign_id!r} in {root}; {LIST_HINT}")
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CampaignError(f"cannot read {path}: {exc}") from exc
    if not isinstance(facts, dict):
        raise CampaignError(f"{path} is not a campaign record: expected a JSON object")
    return Campaign.from_dict(facts, folder)


def list_campaigns(root: str | Path) -> list[Campaign]:
    """Every campaign under ``root``, oldest first (by ``created_at``, then id); none when ``root`` is absent.
    Hidden folders (campaigns being written) are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [load_campaign(root, p.name) for p in root.iterdir()
             if not p.name.startswith(".") and (p / CAMPAIGN_FILE).is_file()]
    return sorted(found, key=lambda c: (c.created_at, c.campaign_id))


def write_outcome_read(root: str | Path, campaign_id: str, payload: dict[str, Any], read_at: datetime) -> Path:
    """Append one outcome read to ``<root>/<campaign_id>/outcomes/<read_id>.json`` and return its path.

    ``read_id = f"{read_at:%Y%m%dT%H%M%S%fZ}-{hash8}"`` with the hash over ``payload``, so two reads of the same
    events differ only by time. The file holds ``{"read_id", "read_at", **payload}``; an existing file is never
    replaced (a second read at the same moment with the same numbers is a :class:`CampaignError`).
    """
    folder = load_campaign(root, campaign_id).path / OUTCOMES_DIR  # type: ignore[operator]
    folder.mkdir(exist_ok=True)
    body = json.dumps(payload, sort_keys=True, allow_nan=False)
    read_id = f"{utc(read_at):%Y%m%dT%H%M%S%fZ}-{hashlib.blake2b(body.encode(), digest_size=4).hexdigest()}"
    record = {"read_id": read_id, "read_at": iso(read_at), **payload}
    final = folder / f"{read_id}.json"
    tmp = folder / f".{read_id}.tmp-{_token()}"
    try:
        _fsynced_write(tmp, lambda fh: fh.write(json.dumps(record, indent=2, allow_nan=False).encode()))
        os.link(tmp, final)  # fails instead of replacing an existing read
    except FileExistsError as exc:
        raise CampaignError(f"outcome read {read_id} of campaign {campaign_id} already exists") from exc
    except OSError as exc:
        raise CampaignError(f"cannot write an outcome read of campaign {campaign_id}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return final


def outcome_reads(root: str | Path, campaign_id: str) -> list[dict[str, Any]]:
    """The outcome reads of a campaign, oldest first (the JSON of each ``outcomes/<read_id>.json``)."""
    folder = load_campaign(root, campaign_id).path / OUTCOMES_DIR  # type: ignore[operator]
    if not folder.is_dir():
        return []
    reads = []
    for path in sorted(p for p in folder.glob("*.json") if not p.name.startswith(".")):
        try:
            reads.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise CampaignError(f"cannot read {path}: {exc}") from exc
    return reads
