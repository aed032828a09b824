"""Nightly batch: features as of T -> champion scores -> activation -> audience Parquet -> published snapshot.

Features are built once for the whole audience (DuckDB), then scored, prioritised, written and published in
chunks of users, so the score frames never hold more than one chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.build.builder import build_features
from serving.activation.actions import NO_ACTION, WIN_BACK, ActivationConfig, recommend
from serving.scoring import add_reasons, score_features
from serving.store.base import ScoreStore, SnapshotInfo
from training.bundle import ModelBundle

Progress = Callable[[int, int | None], None]

AUDIENCE_COLUMNS = (
    "user_id", "p_buy", "p_lapse", "aipl_layer", "lifecycle", "rfm_group", "rule_score",
    "action", "action_deadline", "urgency", "action_p", "expected_revenue", "expected_value", "action_cost", "expected_profit", "priority", "reasons_buy", "reasons_lapse",
    "model_buy", "model_lapse", "as_of",
)


@dataclass(frozen=True)
class BatchResult:
    users: int
    audience_path: Path
    snapshot: SnapshotInfo | None
    action_counts: dict[str, int]
    mean_p_buy: float


def score_chunks(
    raw: pd.DataFrame,
    bundles: Mapping[str, ModelBundle],
    as_of: datetime,
    activation: ActivationConfig,
    chunk_users: int,
    reasons: bool = True,
) -> Iterator[pd.DataFrame]:
    """Yield audience records (:data:`AUDIENCE_COLUMNS`) for ``raw`` (one row per user), ``chunk_users`` at a time.

    Reason codes are computed for the users with an action (the ones a campaign will touch), from the model whose
    score the action rides on (:func:`reason_masks`); the other lists stay empty, because SHAP contributions cost
    about 50x the score itself. ``reasons=False`` leaves every list empty.
    """
    for start in range(0, len(raw), chunk_users):
        part = raw.iloc[start : start + chunk_users]
        scored = score_features(part, bundles, as_of, keep_features=True, reasons=False)
        acted = recommend(scored, as_of, activation)
        acted = acted.reset_index(drop=True)
        if reasons:
            acted = add_reasons(acted, part.reset_index(drop=True), bundles, reason_masks(acted["action"]))
        yield acted[[c for c in AUDIENCE_COLUMNS if c in acted.columns]]


_NULLABLE_TYPES = {
    "action_deadline": pa.string(),
    "reasons_buy": pa.list_(pa.string()),
    "reasons_lapse": pa.list_(pa.string()),
}


def _fixed_types(table: pa.Table) -> pa.Table:
    """Columns that can be all-null or all-empty in a chunk (no action, no reasons) get their real type; Arrow
    would infer ``null`` / ``list<null>``, and the Parquet writer needs one schema for every chunk."""
    for name, typ in _NULLABLE_TYPES.items():
        if name in table.column_names and table.schema.field(name).type != typ:
            i = table.column_names.index(name)
            table = table.set_column(i, pa.field(name, typ), table[name].cast(typ))
    return table


def reason_masks(actions: pd.Series) -> dict[str, np.ndarray]:
    """Which rows (boolean, shape (n,)) get reason codes from which model: ``win_back`` rides on the lapse score,
    every other action on the last-mile score, ``none`` on neither."""
    action = actions.to_numpy(dtype=object)
    lapse = action == WIN_BACK
    return {"last_mile_buyer": (action != NO_ACTION) & ~lapse, "lapse_risk": lapse}


def population_defaults(frame: pd.DataFrame) -> dict[str, Any]:
    """What ``/lookup`` returns for a user missing from the snapshot: no history, so the layer-``none`` prior."""
    none = frame[frame["aipl_layer"] == "none"]
    base = none if len(none) else frame
    return {
        "p_buy": float(base["p_buy"].mean()) if "p_buy" in base and len(base) else None,
        "p_lapse": None,
        "aipl_layer": "none",
        "lifecycle": "new",
        "rfm_group": "no_purchase",
        "action": "none",
        "priority": 0.0,
    }


def snapshot_meta(
    as_of: datetime, created_at: datetime, rows: int, bundles: Mapping[str, ModelBundle],
    defaults: dict[str, Any], audience_path: Path, **extra: Any,
) -> dict[str, Any]:
    """What a published snapshot records: cutoff, publish time, size, model versions, spec version, the defaults
    for unknown users and where the full audience file is (the ``/audience`` route reads it)."""
    spec = next(iter(bundles.values())).spec
    return {
        "as_of": pd.Timestamp(as_of).isoformat(),
        "created_at": pd.Timestamp(created_at).isoformat(),
        "rows": rows,
        "models": {t: str(b.meta.get("version", "")) for t, b in bundles.items()},
        "spec_version": spec.version,
        "defaults": defaults,
        "audience_path": str(Path(audience_path).resolve()),
        **extra,
    }


def run_batch(
    events: Any,
    as_of: datetime,
    bundles: Mapping[str, ModelBundle],
    store: ScoreStore | None,
    out_path: Path,
    *,
    activation: ActivationConfig = ActivationConfig(),
    chunk_users: int = 200_000,
    con: Any = None,
    created_at: datetime,
    progress: Progress | None = None,
    features: pd.DataFrame | None = None,
    reasons: bool = True,
) -> BatchResult:
    """Score everyone with an event before ``as_of`` and publish the snapshot (when ``store`` is given).

    ``created_at`` is the publish time recorded in the snapshot (passed in: no clock reads here). ``features``:
    a feature table already built as of ``as_of`` with the champions' spec (``build_features`` output, e.g. read
    back with ``features.build.builder.read_features``); ``events`` is then not read. ``reasons=False`` skips the reason
    codes (SHAP), the bulk of the time on a large audience.
    """
    spec = next(iter(bundles.values())).spec
    if any(b.spec != spec for b in bundles.values()):
        raise ValueError("the champion models use different feature specs; retrain both targets together")
    raw = build_features(events, as_of, spec, con=con) if features is None else features
    total = len(raw)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_suffix(".partial")
    counts: dict[str, int] = {}
    sums = {"p_buy": 0.0, "n": 0}
    defaults: dict[str, Any] = {}
    writer: pq.ParquetWriter | None = None

    scored = score_chunks(raw, bundles, as_of, activation, chunk_users, reasons)
    first = next(scored, None)
    if first is not None:  # the defaults for unknown users go into the snapshot meta, written before the rows
        defaults.update(population_defaults(first))

    def chunks() -> Iterator[pd.DataFrame]:
        nonlocal writer
        done = 0
        for chunk in itertools.chain([first] if first is not None else [], scored):
            table = _fixed_types(pa.Table.from_pandas(chunk, preserve_index=False))
            if writer is None:
                writer = pq.ParquetWriter(tmp_path, table.schema)
            elif not table.schema.equals(writer.schema, check_metadata=False):
                table = table.cast(writer.schema)
            writer.write_table(table)
            for action, n in chunk["action"].value_counts().items():
                counts[str(action)] = counts.get(str(action), 0) + int(n)
            sums["p_buy"] += float(np.nansum(chunk["p_buy"]))
            sums["n"] += len(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
            yield chunk

    meta = snapshot_meta(as_of, created_at, total, bundles, defaults, out_path)
    try:
        if store is not None:
            snapshot = store.publish(chunks(), meta)
        else:
            for _ in chunks():
                pass
            snapshot = None
    finally:
        if writer is not None:
            writer.close()
    if total == 0:
        pq.write_table(pa.table({c: pa.array([], pa.string()) for c in AUDIENCE_COLUMNS}), tmp_path)
    tmp_path.replace(out_path)
    return BatchResult(
        users=total, audience_path=out_path, snapshot=snapshot, action_counts=counts,
        mean_p_buy=sums["p_buy"] / sums["n"] if sums["n"] else float("nan"),
    )
