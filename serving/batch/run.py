"""Nightly batch: features as of T -> champion scores -> activation -> audience Parquet -> published snapshot.

Features are built once for the whole audience (DuckDB), then scored, prioritised and written to the audience
Parquet in chunks of users, so the score frames never hold more than one chunk. The snapshot is then published
from the written file, chunk by chunk, with the defaults for unknown users computed over every scored user.

Publish guard: a batch that scores nobody, or fewer users than ``min_share`` of the served snapshot (a cutoff
before the data, a truncated events file), raises :class:`PublishRefusedError` before anything is written,
unless ``force`` is set; the served snapshot stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from features.build.builder import build_features
from features.columns import Columns, LayeredColumns, Table, as_columns, floats, n_rows, objects, take_rows
from serving.activation.actions import NO_ACTION, WIN_BACK, ActivationConfig, recommend
from serving.scoring import add_reasons, score_features
from serving.store.base import ScoreStore, SnapshotInfo
from training.bundle import ModelBundle

Progress = Callable[[int, int | None], None]

AUDIENCE_COLUMNS = (
    "user_id", "p_buy", "p_lapse", "aipl_layer", "lifecycle", "rfm_group", "rule_score",
    "p_alive", "expected_purchases_30d", "expected_purchases_90d", "clv_365d", "next_order_date",
    "action", "action_deadline", "urgency", "action_p", "lift", "incremental_p", "expected_revenue", "expected_value",
    "action_cost", "expected_profit", "priority", "reasons_buy", "reasons_buy_text", "reasons_lapse",
    "reasons_lapse_text", "model_buy", "model_lapse", "as_of",
)
EXPLAIN_SCOPES = ("audience", "actions")
"""Who the batch computes reasons for (:func:`reason_masks`): ``audience``, the users each action's best-profit
audience selects (expected profit > 0, the default cut of :func:`serving.activation.audiences.select_audience`);
``actions``, every user with an action."""


@dataclass(frozen=True)
class BatchResult:
    users: int
    audience_path: Path
    snapshot: SnapshotInfo | None
    action_counts: dict[str, int]
    mean_p_buy: float


def score_chunks(
    raw: Table,
    bundles: Mapping[str, ModelBundle],
    as_of: datetime,
    activation: ActivationConfig,
    chunk_users: int,
    reasons: bool = True,
    explain: str = "audience",
) -> Iterator[pd.DataFrame | dict[str, np.ndarray]]:
    """Yield audience records (:data:`AUDIENCE_COLUMNS`) for ``raw`` (one row per user), ``chunk_users`` at a time.

    Reasons (feature names and readable phrases) are computed for the users ``explain`` selects (:func:`reason_masks`:
    by default those in their action's best-profit audience, the ones a campaign sends to), from the model whose
    score the action rides on; the other lists stay empty, because SHAP contributions cost about 75x the score
    itself. ``reasons=False`` leaves every list empty. The columns are the same either way.

    A DataFrame ``raw`` gives DataFrames (a fresh RangeIndex per chunk); :data:`features.columns.Columns` (online
    rescoring: one user's features, no pandas) give dicts of the same columns as arrays of shape (n,). Either way
    each chunk is scored on its columns (:func:`features.columns.as_columns`), by the same functions and floats;
    the design matrices :func:`serving.scoring.score_features` builds are reused for the reasons.
    """
    total = n_rows(raw)
    for start in range(0, total, chunk_users):
        part = raw if chunk_users >= total else take_rows(raw, slice(start, start + chunk_users))
        table = as_columns(part)
        design: dict[str, Any] = {}
        scored = score_features(table, bundles, as_of, keep_features=True, reasons=False, design=design)
        acted = recommend(scored, as_of, activation)
        if reasons:
            acted = add_reasons(acted, table, bundles, reason_masks(acted, explain), design=design)
        names = [c for c in AUDIENCE_COLUMNS if c in acted]
        if isinstance(part, pd.DataFrame):
            yield audience_frame(acted, names, part)
        else:
            yield {name: acted[name] for name in names}


_OBJECT_COLUMNS = frozenset({"action", "action_deadline"})
_LABEL_COLUMNS = frozenset({"lifecycle", "rfm_group"})


def audience_frame(acted: Columns, names: list[str], part: pd.DataFrame) -> pd.DataFrame:
    """The audience records ``names`` of one scored chunk as a DataFrame (RangeIndex): columns the scoring added from
    ``acted``, with the dtypes the DataFrame path gives them (lists, actions and deadlines as objects, segment labels
    as strings, other text inferred), and the feature-table columns passed through (``user_id``, ``aipl_layer``,
    ``rule_score``) as ``part`` (the chunk's feature table) holds them."""
    added = set(acted.added) if isinstance(acted, LayeredColumns) else set(acted)
    data: dict[str, pd.Series] = {}
    for name in names:
        if name not in added and name in part.columns:
            data[name] = part[name].reset_index(drop=True)
            continue
        dtype = object if name in _OBJECT_COLUMNS or name in LIST_COLUMNS else "str" if name in _LABEL_COLUMNS else None
        data[name] = pd.Series(acted[name], dtype=dtype)
    return pd.DataFrame(data, index=pd.RangeIndex(len(part)))


_NULLABLE_TYPES = {
    "action_deadline": pa.string(),
    "next_order_date": pa.string(),
    "reasons_buy": pa.list_(pa.string()),
    "reasons_buy_text": pa.list_(pa.string()),
    "reasons_lapse": pa.list_(pa.string()),
    "reasons_lapse_text": pa.list_(pa.string()),
}


def _fixed_types(table: pa.Table) -> pa.Table:
    """Columns that can be all-null or all-empty in a chunk (no action, no reasons) get their real type; Arrow
    would infer ``null`` / ``list<null>``, and the Parquet writer needs one schema for every chunk."""
    for name, typ in _NULLABLE_TYPES.items():
        if name in table.column_names and table.schema.field(name).type != typ:
            i = table.column_names.index(name)
            table = table.set_column(i, pa.field(name, typ), table[name].cast(typ))
    return table


def reason_masks(acted: Table, explain: str = "audience") -> dict[str, np.ndarray]:
    """Which rows of ``recommend`` output (n users: ``action``, and ``expected_profit`` for ``audience``) get reasons
    from which model (boolean, shape (n,) per target): ``win_back`` rides on the lapse score, every other action on
    the last-mile score, ``none`` on neither. ``explain`` (:data:`EXPLAIN_SCOPES`): ``audience`` keeps the users
    whose expected profit is above 0, exactly those the best-profit cut of
    :func:`serving.activation.audiences.select_audience` picks for their action (value minus cost, users sorted by
    value); ``actions`` keeps every user with an action."""
    if explain not in EXPLAIN_SCOPES:
        raise ValueError(f"explain must be one of {EXPLAIN_SCOPES}, got {explain!r}")
    action = objects(acted, "action")
    chosen = action != NO_ACTION
    if explain == "audience":
        chosen &= floats(acted, "expected_profit") > 0
    lapse = action == WIN_BACK
    return {"last_mile_buyer": chosen & ~lapse, "lapse_risk": chosen & lapse}


DEFAULT_MIN_SHARE = 0.5
"""A batch below this share of the served snapshot's users is refused unless forced (:func:`check_publish`)."""
LIST_COLUMNS = frozenset({"reasons_buy", "reasons_buy_text", "reasons_lapse", "reasons_lapse_text"})


class PublishRefusedError(ValueError):
    """The batch would replace the served snapshot with an empty or much smaller one; nothing was published."""

    exit_code = 1  # CLI exit code: bad input (a cutoff before the data, a truncated events file)


def check_publish(
    users: int, served: SnapshotInfo | None, *, min_share: float = DEFAULT_MIN_SHARE, force: bool = False
) -> None:
    """Refuse (:class:`PublishRefusedError`, one line naming both counts and how to force) to publish a batch of
    ``users`` rows when it is empty, or when ``users < min_share * served.rows`` (``served``: the snapshot being
    served, None before the first publish). ``force`` publishes anyway; ``min_share`` is a share in [0, 1]."""
    if not 0.0 <= float(min_share) <= 1.0:
        raise ValueError(f"min_share must be a share in [0, 1], got {min_share!r}")
    if force:
        return
    how = "check --as-of (after the events?) and the events file, or publish anyway with --force"
    if users == 0:
        now = (f"the served snapshot {served.snapshot_id} has {served.rows:,}" if served is not None
               else "no snapshot is served yet")
        raise PublishRefusedError(f"refusing to publish an empty snapshot: the batch scored 0 users and {now}; {how}")
    if served is not None and users < float(min_share) * served.rows:
        raise PublishRefusedError(
            f"refusing to publish: the batch scored {users:,} users, under {float(min_share):.0%} of the "
            f"{served.rows:,} in the served snapshot {served.snapshot_id}; {how}"
        )


@dataclass
class PopulationStats:
    """Running sums over scored users for the defaults of unknown users (:meth:`defaults`): rows, and the sum and
    count of known ``p_buy`` values, for the users in AIPL layer ``none`` and for everyone."""

    rows: int = 0
    p_buy_sum: float = 0.0
    p_buy_n: int = 0
    none_rows: int = 0
    none_p_buy_sum: float = 0.0
    none_p_buy_n: int = 0

    def add(self, frame: pd.DataFrame) -> PopulationStats:
        """Add one chunk of audience records (``aipl_layer`` and, when scored, ``p_buy``)."""
        self.rows += len(frame)
        none = (frame["aipl_layer"] == "none").to_numpy()
        self.none_rows += int(none.sum())
        if "p_buy" in frame.columns:
            p = pd.to_numeric(frame["p_buy"]).to_numpy(dtype="float64", na_value=np.nan)
            known = ~np.isnan(p)
            self.p_buy_sum += float(p[known].sum())
            self.p_buy_n += int(known.sum())
            self.none_p_buy_sum += float(p[known & none].sum())
            self.none_p_buy_n += int((known & none).sum())
        return self

    def defaults(self) -> dict[str, Any]:
        """What ``/lookup`` returns for a user missing from the snapshot: no history, so the layer-``none`` prior
        (``p_buy`` = mean over the layer-``none`` users, or over everyone when there are none); ``{}`` for an
        empty batch."""
        if self.rows == 0:
            return {}
        total, n = (self.none_p_buy_sum, self.none_p_buy_n) if self.none_rows else (self.p_buy_sum, self.p_buy_n)
        return {
            "p_buy": total / n if n else None,
            "p_lapse": None,
            "aipl_layer": "none",
            "lifecycle": "new",
            "rfm_group": "no_purchase",
            "action": "none",
            "priority": 0.0,
        }


def population_defaults(frame: pd.DataFrame) -> dict[str, Any]:
    """:meth:`PopulationStats.defaults` of one frame of audience records."""
    return PopulationStats().add(frame).defaults()


PUBLISH_CHUNK_ROWS = 50_000
"""Rows per chunk the audience file is read back in for publishing: small enough that the store's writes of one
chunk overlap the reading and encoding of the next (:func:`serving.store.encode.iter_encoded`) for most of the
publish."""


def read_audience_chunks(path: str | Path, chunk_rows: int = 200_000) -> Iterator[pd.DataFrame]:
    """Audience records from an audience Parquet file (:func:`run_batch`) or a hive-partitioned directory of them
    (the Spark batch), ``chunk_rows`` at a time: columns in :data:`AUDIENCE_COLUMNS` order (a partition column
    comes back as a string), reasons as lists (an empty one as an empty tuple); the records :func:`score_chunks`
    yielded."""
    dataset = pads.dataset(str(path), format="parquet", partitioning="hive")
    names = [c for c in AUDIENCE_COLUMNS if c in dataset.schema.names]
    for batch in dataset.to_batches(columns=names, batch_size=max(1, int(chunk_rows))):
        if batch.num_rows == 0:
            continue
        table = pa.Table.from_batches([batch])
        if "action" in names and table.schema.field("action").type != pa.string():  # a partition column
            idx = table.schema.get_field_index("action")
            table = table.set_column(idx, "action", table.column(idx).cast(pa.string()))
        lists = [n for n in names if n in LIST_COLUMNS]
        frame = table.drop_columns(lists).to_pandas()
        for name in lists:
            frame[name] = _list_column(table.column(name))
        yield frame[names]


_EMPTY_LIST: tuple[str, ...] = ()


def _list_column(column: pa.ChunkedArray) -> pd.Series:
    """A list column as an object Series (n rows): the Python list of each non-empty row (Arrow's own conversion,
    several times faster than converting numpy arrays), None for a null row, and one shared empty tuple for every
    empty one: reasons are computed for few users, and a million empty lists cost seconds."""
    arr = column.combine_chunks()
    out: list[Any] = [_EMPTY_LIST] * len(arr)
    if arr.null_count:
        for row in np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)).tolist():
            out[row] = None
    filled = np.flatnonzero(pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False))
    if len(filled):
        for row, value in zip(filled.tolist(), arr.take(pa.array(filled)).to_pylist(), strict=True):
            out[row] = value
    return pd.Series(out, dtype=object)


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
    explain: str = "audience",
    force: bool = False,
    min_share: float = DEFAULT_MIN_SHARE,
) -> BatchResult:
    """Score everyone with an event before ``as_of`` and publish the snapshot (when ``store`` is given).

    ``created_at`` is the publish time recorded in the snapshot (passed in: no clock reads here). ``features``:
    a feature table already built as of ``as_of`` with the champions' spec (``build_features`` output, e.g. read
    back with ``features.build.builder.read_features``); ``events`` is then not read. ``reasons=False`` skips the reason
    codes (SHAP), the bulk of the time on a large audience; ``explain`` says whose reasons are computed
    (:data:`EXPLAIN_SCOPES`: the best-profit audiences by default, ``actions`` for every user with an action).
    ``progress(done, total)`` counts scored users.

    With a ``store``, a batch of no users, or of fewer than ``min_share`` times the served snapshot's users, raises
    :class:`PublishRefusedError` before scoring (nothing written) unless ``force``. The audience is written to
    ``<out_path>.partial`` and renamed to ``out_path`` once the snapshot is published; when scoring or the publish
    fails, the partial file is removed and the served snapshot stays.
    """
    spec = next(iter(bundles.values())).spec
    if any(b.spec != spec for b in bundles.values()):
        raise ValueError("the champion models use different feature specs; retrain both targets together")
    if explain not in EXPLAIN_SCOPES:
        raise ValueError(f"explain must be one of {EXPLAIN_SCOPES}, got {explain!r}")
    raw = build_features(events, as_of, spec, con=con) if features is None else features
    total = len(raw)
    if store is not None:
        check_publish(total, store.current(), min_share=min_share, force=force)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = out_path.with_suffix(".partial")
    counts: dict[str, int] = {}
    stats = PopulationStats()
    writer: pq.ParquetWriter | None = None
    try:
        done = 0
        for chunk in score_chunks(raw, bundles, as_of, activation, chunk_users, reasons, explain):
            table = _fixed_types(pa.Table.from_pandas(chunk, preserve_index=False))
            if writer is None:
                writer = pq.ParquetWriter(tmp_path, table.schema)
            elif not table.schema.equals(writer.schema, check_metadata=False):
                table = table.cast(writer.schema)
            writer.write_table(table)
            for action, n in chunk["action"].value_counts().items():
                counts[str(action)] = counts.get(str(action), 0) + int(n)
            stats.add(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
        if writer is not None:
            writer.close()
            writer = None
        else:
            pq.write_table(pa.table({c: pa.array([], pa.string()) for c in AUDIENCE_COLUMNS}), tmp_path)
        snapshot = None
        if store is not None:
            meta = snapshot_meta(as_of, created_at, total, bundles, stats.defaults(), out_path)
            snapshot = store.publish(read_audience_chunks(tmp_path, min(chunk_users, PUBLISH_CHUNK_ROWS)), meta)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp_path.unlink(missing_ok=True)
        raise
    tmp_path.replace(out_path)
    return BatchResult(
        users=total, audience_path=out_path, snapshot=snapshot, action_counts=counts,
        mean_p_buy=stats.p_buy_sum / stats.p_buy_n if stats.p_buy_n else float("nan"),
    )
