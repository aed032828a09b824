"""Campaigns: an audience split into treatment and control by a seeded hash, kept as a durable, append-only record.

**Split.** :func:`assign_groups` gives every user a uniform number ``u`` in [0, 1) from the first 64 bits of
``blake2b(f"{campaign_id}\\x1f{user_id}", person=b"campaign-split")`` (``u = (bits >> 11) / 2**53``): ``control``
when ``u < control_share``, else ``treatment``. The split depends only on (campaign id, user id), so it does not
move when the audience is reordered, and a user's group can be recomputed at any time. With a global control
group, ``blake2b(f"{global_seed}\\x1f{user_id}", person=b"global-control")`` - the user id alone, the same for
every campaign - marks a ``global_control_share`` of all users ``global_control``: they are never treated, and are
counted as a group of their own (the campaign's split applies to the other users).

**Record.** :func:`create_campaign` writes ``<root>/<campaign_id>/campaign.json`` (the facts of the campaign) and
``members.parquet`` (one row per audience user with its group), builds them in a hidden temporary folder and renames
it into place, so a campaign appears whole or not at all. Nothing in a campaign folder is rewritten afterwards;
outcome reads are appended as ``outcomes/<read_id>.json``, one new file per read
(:func:`serving.activation.campaign_records.write_outcome_read`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serving.activation.actions import ACTIONS
from serving.activation.campaign_records import (
    Campaign,
    CampaignError,
    check_id,
    iso,
    list_campaigns,
    load_campaign,
    utc,
    write_campaign,
)

__all__ = [
    "CONTROL", "GLOBAL_CONTROL", "GROUPS", "TREATMENT", "Campaign", "CampaignError", "assign_groups", "build_campaign",
    "create_campaign", "list_campaigns", "load_campaign", "send_list", "uniform_hash",
]

TREATMENT, CONTROL, GLOBAL_CONTROL = "treatment", "control", "global_control"
GROUPS: tuple[str, ...] = (TREATMENT, CONTROL, GLOBAL_CONTROL)
DEFAULT_CONTROL_SHARE = 0.10
MIN_CONTROL_SIZE = 100
"""Fewest control users a campaign may have: below it the outcome cannot be measured."""
DEFAULT_GLOBAL_SEED = "global-control-v1"
VALUE_COLUMNS: tuple[str, ...] = ("expected_incremental_profit", "expected_profit")
"""Audience columns taken as the expected (incremental) value of a member, first present wins."""
REQUIRED_COLUMNS: tuple[str, ...] = ("user_id", "action_p", "priority", "aipl_layer")
CARRIED_COLUMNS: tuple[str, ...] = ("lifecycle", "rfm_group", "action_deadline", "lift", "incremental_p",
                                    "audience_rank")
"""Audience columns kept in ``members.parquet`` when present (``lifecycle`` and ``rfm_group`` are null otherwise)."""
LIFT_SOURCES: frozenset[str] = frozenset({"prior", "measured"})
SPLIT_RULE = (
    "u(ns, person) = (first 8 bytes big-endian of blake2b(f'{ns}\\x1f{user_id}', digest_size=8, person=person) >> 11)"
    " / 2**53; global_control when u(global_seed, b'global-control') < global_control_share, else control when"
    " u(campaign_id, b'campaign-split') < control_share, else treatment"
)
"""How :func:`assign_groups` splits, as recorded in ``campaign.json``."""


def id_strings(user_ids: Iterable[Any]) -> np.ndarray:
    """User ids as an object array (n,) of Python strings; a null id is a :class:`CampaignError`."""
    if isinstance(user_ids, (pd.Series, pd.Index)):
        values = user_ids.to_numpy(dtype=object)
    else:
        values = np.asarray(user_ids if isinstance(user_ids, np.ndarray) else list(user_ids), dtype=object)
    nulls = pd.isna(values)
    if nulls.any():
        raise CampaignError(f"{int(nulls.sum())} null user_id(s); every user needs an id")
    return np.array([u if type(u) is str else str(u) for u in values.ravel()], dtype=object)


def uniform_hash(namespace: str, user_ids: Iterable[Any], person: bytes) -> np.ndarray:
    """A float64 array (n,) of uniforms in [0, 1): ``blake2b(f"{namespace}\\x1f{user_id}", person)``'s first 64
    bits (big-endian) shifted to 53 bits and scaled by 2**-53. About 1 s per million ids on one core."""
    base = hashlib.blake2b(f"{namespace}\x1f".encode(), digest_size=8, person=person)

    def digest(user_id: Any) -> bytes:
        h = base.copy()
        h.update(str(user_id).encode())
        return h.digest()

    raw = b"".join(map(digest, user_ids))
    bits = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def assign_groups(
    user_ids: Iterable[Any],
    campaign_id: str,
    control_share: float,
    *,
    global_control_share: float = 0.0,
    global_seed: str = DEFAULT_GLOBAL_SEED,
    min_control: int = MIN_CONTROL_SIZE,
) -> np.ndarray:
    """The group of each user, an object array (n,) of ``treatment`` / ``control`` / ``global_control``.

    ``user_ids`` are compared as strings; ``control_share`` in (0, 1) and ``global_control_share`` in [0, 1) are
    shares of users. Raises :class:`CampaignError` when fewer than ``min_control`` users land in ``control``.
    See the module docstring for the hash.
    """
    ids = id_strings(user_ids)
    _share("control_share", control_share, allow_zero=False)
    _share("global_control_share", global_control_share, allow_zero=True)
    if isinstance(min_control, bool) or not isinstance(min_control, (int, np.integer)) or min_control < 0:
        raise CampaignError(f"min_control must be an integer >= 0, got {min_control!r}")
    groups = np.where(uniform_hash(campaign_id, ids, b"campaign-split") < control_share, CONTROL, TREATMENT)
    groups = groups.astype(object)
    if global_control_share > 0:
        held = uniform_hash(global_seed, ids, b"global-control") < global_control_share
        groups[held] = GLOBAL_CONTROL
    n_control = int((groups == CONTROL).sum())
    if n_control < min_control:
        eligible = len(ids) - int((groups == GLOBAL_CONTROL).sum())
        need_share = min(0.5, min_control / eligible) if eligible else 0.5
        need_users = int(np.ceil(min_control / (control_share * (1 - global_control_share))))
        raise CampaignError(
            f"audience of {len(ids)} users with control share {control_share:.0%} gives {n_control} control users, "
            f"fewer than the minimum of {min_control}: raise the control share (to about {need_share:.0%}), widen "
            f"the audience (to about {need_users} users) or lower min_control"
        )
    return groups


def _share(name: str, value: float, *, allow_zero: bool) -> None:
    ok = isinstance(value, (int, float)) and np.isfinite(value) and (0 <= value < 1 if allow_zero else 0 < value < 1)
    if not ok:
        raise CampaignError(f"{name} must be in {'[0, 1)' if allow_zero else '(0, 1)'}, got {value!r}")


def campaign_id_for(action: str, as_of: datetime, created_at: datetime, snapshot_id: str | None, n_users: int) -> str:
    """``f"{action}-{as_of:%Y%m%d}-{hash8}"``, the hash over action, as_of, created_at, snapshot id and size."""
    key = f"{action}\x1f{iso(as_of)}\x1f{iso(created_at)}\x1f{snapshot_id}\x1f{n_users}"
    return f"{action}-{utc(as_of):%Y%m%d}-{hashlib.blake2b(key.encode(), digest_size=4).hexdigest()}"


def build_campaign(
    audience: pd.DataFrame,
    *,
    action: str,
    as_of: datetime,
    created_at: datetime,
    window_days: float | None = None,
    window_close: datetime | None = None,
    control_share: float = DEFAULT_CONTROL_SHARE,
    cost_per_user: float,
    model_versions: Mapping[str, Any],
    snapshot_id: str | None,
    selection_rule: Mapping[str, Any],
    lift_used: Mapping[str, Any],
    value_column: str | None = None,
    global_control_share: float = 0.0,
    global_seed: str = DEFAULT_GLOBAL_SEED,
    min_control: int = MIN_CONTROL_SIZE,
    campaign_id: str | None = None,
) -> Campaign:
    """The campaign of one action's audience, in memory (nothing written; :func:`create_campaign` writes it).

    ``audience``: one row per user with :data:`REQUIRED_COLUMNS`, a value column (``value_column``, else the first of
    :data:`VALUE_COLUMNS` present) and optionally ``action`` (must be ``action``) and :data:`CARRIED_COLUMNS`.
    The window is ``[as_of, window_close)``, given as ``window_close`` or ``window_days`` (days, > 0) after
    ``as_of``. ``cost_per_user`` in currency; ``lift_used`` = ``{"value": float, "source": "prior" | "measured",
    "n": int | None}``; ``selection_rule`` (e.g. ``{"rule": "budget", "budget": 500.0, "top_k": None}``) and
    ``model_versions`` (e.g. ``{"last_mile_buyer": "3"}``) must be JSON-ready. Times aware, or naive UTC.
    """
    if action not in ACTIONS:
        raise CampaignError(f"unknown action {action!r}; actions are {list(ACTIONS)}")
    opens, created = utc(as_of), utc(created_at)
    closes = _window_close(opens, window_days, window_close)
    value_column = _value_column(audience, value_column)
    members = _members(audience, action, value_column)
    cost = float(cost_per_user)
    if not (np.isfinite(cost) and cost >= 0):
        raise CampaignError(f"cost_per_user must be a finite number >= 0, got {cost_per_user!r}")
    cid = check_id(campaign_id or campaign_id_for(action, opens, created, snapshot_id, len(members)))
    groups = assign_groups(members["user_id"], cid, control_share, global_control_share=global_control_share,
                           global_seed=global_seed, min_control=min_control)
    members.insert(1, "group", pd.Series(groups, index=members.index, dtype="str"))
    facts = {
        "campaign_id": cid,
        "action": action,
        "as_of": iso(opens),
        "window_open": iso(opens),
        "window_close": iso(closes),
        "window_days": (closes - opens).total_seconds() / 86_400,
        "created_at": iso(created),
        "control_share": float(control_share),
        "global_control_share": float(global_control_share),
        "global_seed": global_seed,
        "min_control": int(min_control),
        "split": SPLIT_RULE,
        "cost_per_user": cost,
        "model_versions": {str(k): str(v) for k, v in model_versions.items()},
        "snapshot_id": None if snapshot_id is None else str(snapshot_id),
        "selection_rule": _json_ready("selection_rule", selection_rule),
        "lift_used": _lift(lift_used),
        "value_column": value_column,
        "counts": {g: int((groups == g).sum()) for g in GROUPS},
    }
    return Campaign.from_dict(facts, path=None, members=members)


def _window_close(opens: pd.Timestamp, days: float | None, close: datetime | None) -> pd.Timestamp:
    if (days is None) == (close is None):
        raise CampaignError("give exactly one of window_days and window_close")
    end = utc(close) if close is not None else opens + pd.Timedelta(days=float(days))  # type: ignore[arg-type]
    if not end > opens:
        raise CampaignError(f"the window must close after as_of {iso(opens)}, got {iso(end)}")
    return end


def _value_column(audience: pd.DataFrame, given: str | None) -> str:
    if given is not None:
        if given not in audience.columns:
            raise CampaignError(f"value column {given!r} is not in the audience; columns: {list(audience.columns)}")
        return given
    for name in VALUE_COLUMNS:
        if name in audience.columns:
            return name
    raise CampaignError(f"the audience has none of the value columns {list(VALUE_COLUMNS)}; pass value_column")


def _members(audience: pd.DataFrame, action: str, value_column: str) -> pd.DataFrame:
    """The member columns, validated: unique non-null user ids (as strings), one action, numeric scores."""
    missing = [c for c in REQUIRED_COLUMNS if c not in audience.columns]
    if missing:
        raise CampaignError(f"the audience lacks column(s) {missing}; pass the selected audience of one action")
    ids = pd.Series(id_strings(audience["user_id"]), dtype="str")
    if ids.duplicated().any():
        raise CampaignError(f"the audience repeats user_id(s) {ids[ids.duplicated()].head(5).tolist()}")
    if "action" in audience.columns:
        other = sorted({str(a) for a in pd.unique(audience["action"]) if a != action})
        if other:
            raise CampaignError(f"the audience holds action(s) {other[:5]}, but the campaign is for {action!r}")
    out = pd.DataFrame({"user_id": ids, "action": pd.Series(action, index=ids.index, dtype="str")})
    for name in ("action_p", value_column, "priority"):
        try:
            out[name] = audience[name].to_numpy(dtype="float64", na_value=np.nan)
        except (TypeError, ValueError) as exc:
            raise CampaignError(f"audience column {name!r} must be numeric: {exc}") from exc
    for name in ("aipl_layer", "lifecycle", "rfm_group"):
        values = audience[name] if name in audience.columns else pd.Series(None, index=audience.index, dtype=object)
        out[name] = pd.Series(values.to_numpy(), dtype="str")
    for name in ("lift", "incremental_p", "audience_rank"):
        if name in audience.columns:
            kind = "int64" if name == "audience_rank" else "float64"
            out[name] = audience[name].to_numpy(dtype=kind, **({} if kind == "int64" else {"na_value": np.nan}))
    if "action_deadline" in audience.columns:
        out["action_deadline"] = pd.to_datetime(audience["action_deadline"].reset_index(drop=True), utc=True,
                                                format="ISO8601").dt.as_unit("us")
    return out


def _json_ready(name: str, value: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return dict(json.loads(json.dumps(dict(value), allow_nan=False)))
    except (TypeError, ValueError) as exc:
        raise CampaignError(f"{name} must be a JSON-ready mapping: {exc}") from exc


def _lift(lift: Mapping[str, Any]) -> dict[str, Any]:
    value, source, n = lift.get("value"), lift.get("source"), lift.get("n")
    if not isinstance(value, (int, float)) or not np.isfinite(value):
        raise CampaignError(f"lift_used['value'] must be a finite number, got {value!r}")
    if source not in LIFT_SOURCES:
        raise CampaignError(f"lift_used['source'] must be one of {sorted(LIFT_SOURCES)}, got {source!r}")
    if n is not None and (isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0):
        raise CampaignError(f"lift_used['n'] must be an integer >= 0 or None, got {n!r}")
    return {"value": float(value), "source": source, "n": None if n is None else int(n)}


def create_campaign(root: str | Path, audience: pd.DataFrame, **facts: Any) -> Campaign:
    """Build the campaign (:func:`build_campaign`, same keyword arguments) and write it to ``<root>/<campaign_id>/``
    atomically (:func:`serving.activation.campaign_records.write_campaign`); an existing campaign id is a
    :class:`CampaignError`. Returns it with ``path`` set."""
    return write_campaign(root, build_campaign(audience, **facts))


def send_list(campaign: Campaign) -> pd.DataFrame:
    """The members to send the action to: treatment only (never control or global control), in audience order."""
    members = campaign.members
    return members[members["group"].to_numpy(dtype=object) == TREATMENT].reset_index(drop=True)
