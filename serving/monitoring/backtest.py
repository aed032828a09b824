"""Backtest one published snapshot: its scores against what its users did next, or an estimate while it is open.

:func:`backtest` takes a snapshot's records (the audience file :func:`serving.batch.run.run_batch` writes: one row per
user with ``user_id``, ``p_buy``, ``p_lapse`` and, when present, ``action``), its cutoff ``as_of`` and canonical events,
and per target returns a :class:`TargetQuality`:

- **Population**: the users the snapshot scored for that target (a known ``p_buy``; a known ``p_lapse``, i.e. the
  past buyers).
- **Labels** come from the training definitions themselves (:func:`training.labels.last_mile_labels`,
  :func:`training.labels.lapse_labels`): the events after ``as_of`` plus one marker purchase per scored user just
  before ``as_of`` make the label functions' population exactly the snapshot's, and only their window
  ``(as_of, as_of + days]`` decides the label. So a realized label is the label training would have given that user.
- **Status**: ``closed`` when the events cover the whole window (``events_start <= as_of`` and
  ``events_end >= as_of + days``), then the realized metrics of :func:`training.evaluate.evaluate`; otherwise
  ``open`` and no realized number at all. Both carry the label-free estimate (:mod:`serving.monitoring.estimate`).
- **Operating audience**: ``audience_size`` users have an action riding on this score (``win_back`` on ``p_lapse``,
  every other action on ``p_buy``); ``precision_audience`` is the precision of the top ``audience_size`` users by
  score and ``audience_rate`` the outcome rate of the users who got the action (expected: their mean probability).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.build.builder import default_connection, events_table
from serving.monitoring.estimate import expected_metrics, precision_at
from training.bundle import SCORE_COLUMN, TARGETS
from training.datasets import LABEL_FUNCTIONS, window_days
from training.evaluate import DEFAULT_FRACTIONS, EvaluationInputError, evaluate
from training.labels import LabelSpec

__all__ = ["CLOSED", "OPEN", "TargetQuality", "backtest", "realized_labels", "window_status"]

CLOSED, OPEN = "closed", "open"
NO_ACTION, WIN_BACK = "none", "win_back"
_MARK = timedelta(microseconds=1)
_TS = "timestamp('UTC')"


@dataclass
class TargetQuality:
    """One target of one snapshot. ``realized`` (metric -> value, as :func:`training.evaluate.evaluate` names them,
    plus ``precision_audience`` / ``audience_rate``) only when ``status`` is ``closed`` and both outcomes occurred;
    ``expected`` always (empty without users). Times are ISO 8601 UTC; ``window_days`` in days."""

    target: str
    score: str
    status: str
    as_of: str
    window_days: int
    window_close: str
    users: int
    audience_size: int
    expected: dict[str, float]
    realized: dict[str, float] | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: _json(v) for k, v in asdict(self).items()}


def _json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _utc(value: datetime | str) -> datetime:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.to_pydatetime()


def window_status(as_of: datetime, days: int, events_end: datetime, events_start: datetime | None = None) -> str:
    """``closed`` when events complete from ``events_start`` (None: from ``as_of`` on) up to ``events_end`` cover the
    label window ``(as_of, as_of + days]``, else ``open``."""
    start_ok = events_start is None or _utc(events_start) <= _utc(as_of)
    return CLOSED if start_ok and _utc(events_end) >= _utc(as_of) + timedelta(days=days) else OPEN


def realized_labels(
    user_ids: Sequence[str] | np.ndarray | pa.Array, as_of: datetime, events: Any, target: str, spec: LabelSpec, *,
    con: Any = None,
) -> np.ndarray:
    """The training label (int8 0/1, shape ``(n,)``, in the order of ``user_ids``) of each user at ``as_of``, from
    the label function of ``target`` on the events after ``as_of`` (see the module docstring)."""
    as_of = _utc(as_of)
    con = con or default_connection()
    table = events_table(events, con)
    days = window_days(target, spec)
    t0, t1 = ibis.literal(as_of, type=_TS), ibis.literal(as_of + timedelta(days=days), type=_TS)
    future = table.filter((table.ts > t0) & (table.ts <= t1)).select(
        user_id=table.user_id.cast("string"), ts=table.ts.cast(_TS), behavior=table.behavior.cast("string"))
    ids = user_ids.cast(pa.string()) if isinstance(user_ids, pa.Array) else pa.array(
        np.asarray(user_ids, dtype=object), pa.string())
    mark_us = int(pd.Timestamp(as_of - _MARK).value // 1000)
    marks = ibis.memtable(pa.table({
        "user_id": ids,
        "ts": pa.array(np.full(len(ids), mark_us, dtype=np.int64), pa.timestamp("us", tz="UTC")),
        "behavior": pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ids), np.int32)), pa.array(["buy"]))
        .cast(pa.string()),
    })).select(user_id=ibis._.user_id, ts=ibis._.ts.cast(_TS), behavior=ibis._.behavior)
    marked = future.union(marks)
    labels = con.to_pyarrow(LABEL_FUNCTIONS[target](marked, as_of, LabelSpec(
        horizon_days=spec.horizon_days, lapse_days=spec.lapse_days, population="past_buyers")))
    where = pc.index_in(ids, value_set=labels.column("user_id"))
    if where.null_count:  # pragma: no cover - every marked user is in the population
        raise RuntimeError(f"{where.null_count} scored users got no label")
    return labels.column("label").take(where).to_numpy().astype(np.int8)


def _audience(records: pd.DataFrame, target: str) -> np.ndarray:
    """Rows (boolean, shape (n,)) whose action rides on ``target``'s score: ``win_back`` on lapse, others on buy."""
    if "action" not in records.columns:
        return np.zeros(len(records), dtype=bool)
    action = records["action"].astype(object).to_numpy()
    return action == WIN_BACK if target == "lapse_risk" else (action != NO_ACTION) & (action != WIN_BACK) & (
        pd.notna(action))


def backtest(
    snapshot_records: pd.DataFrame,
    as_of: datetime,
    events: Any,
    *,
    horizon_days: int,
    lapse_days: int,
    events_end: datetime,
    events_start: datetime | None = None,
    targets: Sequence[str] = TARGETS,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    n_bins: int = 10,
    con: Any = None,
) -> dict[str, TargetQuality]:
    """Per target, the realized quality of a snapshot (``closed`` window) or its estimate (``open``).

    ``snapshot_records``: one row per user, ``user_id`` and the score columns (``p_buy``, ``p_lapse``: NaN outside
    the target's population), optionally ``action``. ``events``: canonical events (DataFrame, Ibis table or Parquet
    path; only those after ``as_of`` are read). ``events_start`` / ``events_end``: the events are complete from / up
    to these times (``events_start`` None: from ``as_of``). ``horizon_days`` / ``lapse_days``: the label windows
    (H and N of the model's label spec). ``fractions``, ``n_bins``: top-k shares and calibration bins of the metrics.
    """
    as_of = _utc(as_of)
    spec = LabelSpec(horizon_days=int(horizon_days), lapse_days=int(lapse_days))
    users = pa.array(snapshot_records["user_id"].astype("string"), pa.string())
    out: dict[str, TargetQuality] = {}
    for target in targets:
        column = SCORE_COLUMN[target]
        days = window_days(target, spec)
        p_all = (pd.to_numeric(snapshot_records[column], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
                 if column in snapshot_records.columns else np.full(len(users), np.nan))
        scored = ~np.isnan(p_all)
        p = p_all[scored]
        acted = _audience(snapshot_records, target)
        quality = TargetQuality(
            target=target, score=column, status=window_status(as_of, days, events_end, events_start),
            as_of=as_of.isoformat(), window_days=days, window_close=(as_of + timedelta(days=days)).isoformat(),
            users=int(scored.sum()), audience_size=int((acted & scored).sum()), expected={},
        )
        out[target] = quality
        if not quality.users:
            quality.note = f"the snapshot scored nobody for {target} (no {column})"
            continue
        k = quality.audience_size
        quality.expected = expected_metrics(p, fractions=fractions, n_bins=n_bins)
        quality.expected["precision_audience"] = precision_at(p, p, k)
        quality.expected["audience_rate"] = float(np.mean(p_all[acted & scored])) if k else math.nan
        if quality.status == OPEN:
            quality.note = (f"label window (as_of, {quality.window_close}] not covered by the events: estimate only")
            continue
        y = realized_labels(users.filter(pa.array(scored)), as_of, events, target, spec, con=con)
        try:
            realized = evaluate(y, p, fractions=fractions, n_bins=n_bins)
        except EvaluationInputError as exc:
            quality.note = f"no realized metrics: {exc}"
            continue
        realized["precision_audience"] = precision_at(y, p, k)
        realized["audience_rate"] = float(np.mean(y[acted[scored]])) if k else math.nan
        quality.realized = realized
    return out


def metric_subset(metrics: Mapping[str, float] | None, keys: Sequence[str]) -> dict[str, float]:
    """``metrics`` restricted to ``keys`` (those present), for tables and logs."""
    return {k: float(metrics[k]) for k in keys if metrics and k in metrics}
