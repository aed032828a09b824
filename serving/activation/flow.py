"""AIPL flow between two snapshots of the audience: who moved up, who stayed, who decayed.

:func:`aipl_flow` compares the layer of every user in an earlier and a later snapshot (e.g. two nightly score
tables, or feature tables at two cutoffs). Users only in the later snapshot come from ``new``; users only in the
earlier one go to ``gone``. Layers are ordered ``gone < none < A < I < P < L``: a move to a higher layer is an
upgrade, a move to a lower one (``none`` and ``gone`` included) is decay. :func:`flow_between` builds both
snapshots from the events with the caller's full :class:`~features.spec.definition.FeatureSpec` (windows, lookback,
target categories), so it counts the same population as the asset summary and the scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from features.build.builder import build_features
from features.segments.segmenter import PL_TARGET
from features.spec.definition import AIPL_LAYERS, FeatureSpec

FROM_STATES: tuple[str, ...] = (*AIPL_LAYERS, "new")
"""Rows of the transition matrix: the earlier layer, or ``new`` for users absent from the earlier snapshot."""
TO_STATES: tuple[str, ...] = (*AIPL_LAYERS, "gone")
"""Columns of the transition matrix: the later layer, or ``gone`` for users absent from the later snapshot."""
ASSET_LAYERS: tuple[str, ...] = ("L", "P", "I", "A")
_RANK: dict[str, int] = {"gone": -1, "none": 0, "A": 1, "I": 2, "P": 3, "L": 4}
FLOW_PAIRS: tuple[tuple[str, str], ...] = (
    ("A", "I"),
    ("I", "P"),
    ("P", "L"),
    ("A", "P"),
    ("I", "L"),
    ("L", "P"),
    ("P", "I"),
    ("I", "A"),
)
"""Named flow rates reported in :attr:`FlowReport.rates` (share of the earlier layer found in the later one)."""


class FlowError(ValueError):
    """A snapshot cannot be compared: missing columns, duplicate users or unknown layers."""

    exit_code = 1  # CLI exit code: bad input


@dataclass(frozen=True)
class FlowReport:
    """Transitions between two AIPL snapshots.

    - ``counts``: users per (earlier state, later state), index :data:`FROM_STATES`, columns :data:`TO_STATES`
      (int64; every state listed, zeros included);
    - ``shares``: ``counts`` divided by its row total (NaN for an empty row);
    - ``rates``: ``"X->Y"`` share of the earlier layer X found in layer Y later, for :data:`FLOW_PAIRS`
      (NaN when X was empty);
    - ``upgrade`` / ``retain`` / ``decay``: per earlier layer (A, I, P, L), the share that moved up, stayed, or
      moved down (to a lower layer, ``none`` or ``gone``); the three add up to 1;
    - ``reach_before`` / ``reach_after``: assets (users in A, I, P or L) in each snapshot;
    - ``pl_share_before`` / ``pl_share_after``: (P + L) / assets (NaN without assets) against ``pl_target``;
      ``pl_target_met`` refers to the later snapshot;
    - ``n_before``, ``n_after``, ``n_new``, ``n_gone``: users per snapshot and users entering / leaving.
    """

    counts: pd.DataFrame
    shares: pd.DataFrame
    rates: dict[str, float]
    upgrade: dict[str, float]
    retain: dict[str, float]
    decay: dict[str, float]
    reach_before: int
    reach_after: int
    pl_share_before: float
    pl_share_after: float
    pl_target: float
    pl_target_met: bool
    n_before: int
    n_after: int
    n_new: int
    n_gone: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: matrices as ``{from: {to: value}}``, NaN as None."""
        return {
            "counts": {i: {c: int(v) for c, v in row.items()} for i, row in self.counts.iterrows()},
            "shares": {i: {c: _json(v) for c, v in row.items()} for i, row in self.shares.iterrows()},
            "rates": {k: _json(v) for k, v in self.rates.items()},
            "upgrade": {k: _json(v) for k, v in self.upgrade.items()},
            "retain": {k: _json(v) for k, v in self.retain.items()},
            "decay": {k: _json(v) for k, v in self.decay.items()},
            "reach_before": self.reach_before,
            "reach_after": self.reach_after,
            "reach_change": self.reach_after - self.reach_before,
            "pl_share_before": _json(self.pl_share_before),
            "pl_share_after": _json(self.pl_share_after),
            "pl_target": self.pl_target,
            "pl_target_met": self.pl_target_met,
            "n_before": self.n_before,
            "n_after": self.n_after,
            "n_new": self.n_new,
            "n_gone": self.n_gone,
        }


def aipl_flow(before: pd.DataFrame, after: pd.DataFrame, *, pl_target: float = PL_TARGET) -> FlowReport:
    """Compare two snapshots with columns ``user_id`` and ``aipl_layer`` (one row per user; other columns ignored).

    User ids are compared as strings, so ``1`` and ``"1"`` are the same user. Layers must be one of
    :data:`features.spec.definition.AIPL_LAYERS`.
    """
    left = _layers(before, "before")
    right = _layers(after, "after")
    counts = _transition_counts(left, right)
    totals = counts.sum(axis=1).astype("float64")
    shares = counts.astype("float64").div(totals.where(totals > 0), axis=0)

    rates = {f"{a}->{b}": float(shares.at[a, b]) for a, b in FLOW_PAIRS}
    upgrade, retain, decay = {}, {}, {}
    for layer in ASSET_LAYERS:
        row = shares.loc[layer]
        rank = _RANK[layer]
        upgrade[layer] = float(sum(row[t] for t in TO_STATES if _RANK[t] > rank)) if totals[layer] else np.nan
        retain[layer] = float(row[layer])
        decay[layer] = float(sum(row[t] for t in TO_STATES if _RANK[t] < rank)) if totals[layer] else np.nan

    reach_before, pl_before = _assets(left)
    reach_after, pl_after = _assets(right)
    return FlowReport(
        counts=counts,
        shares=shares,
        rates=rates,
        upgrade=upgrade,
        retain=retain,
        decay=decay,
        reach_before=reach_before,
        reach_after=reach_after,
        pl_share_before=pl_before,
        pl_share_after=pl_after,
        pl_target=float(pl_target),
        pl_target_met=bool(reach_after and pl_after >= pl_target),
        n_before=len(left),
        n_after=len(right),
        n_new=int(counts.loc["new"].sum()),
        n_gone=int(counts["gone"].sum()),
    )


def flow_between(
    events: Any,
    before: datetime,
    after: datetime,
    spec: FeatureSpec,
    *,
    con: Any = None,
    pl_target: float = PL_TARGET,
) -> FlowReport:
    """:func:`aipl_flow` of the audience between two cutoffs (``before`` < ``after``, aware datetimes).

    Each snapshot is the feature table at its cutoff built from ``events`` (canonical frame, Ibis table or Parquet
    path; ``con`` the engine) with ``spec``: pass the full spec the other commands use (``lookback_days`` decides who
    is in the audience at all), so the flow counts the users ``segments`` and ``score`` count.
    """
    if not before < after:
        raise FlowError(
            f"the earlier cutoff ({before.isoformat()}) must come before the later one ({after.isoformat()})"
        )
    layers = [build_features(events, t, spec, con=con)[["user_id", "aipl_layer"]] for t in (before, after)]
    return aipl_flow(*layers, pl_target=pl_target)


def _transition_counts(left: pd.Series, right: pd.Series) -> pd.DataFrame:
    """Users per (earlier state, later state): one factorize of all user ids (which also finds duplicates), then
    one bincount over state pairs."""
    codes_from = {s: i for i, s in enumerate(FROM_STATES)}
    codes_to = {s: i for i, s in enumerate(TO_STATES)}
    keys, uniques = pd.factorize(pd.concat([left.index.to_series(), right.index.to_series()], ignore_index=True))
    for name, part in (("before", keys[: len(left)]), ("after", keys[len(left):])):
        seen = np.bincount(part, minlength=len(uniques))
        if (seen > 1).any():
            dup = [str(u) for u in np.asarray(uniques)[seen > 1][:5]]
            raise FlowError(f"{name} snapshot has duplicate user_id(s) {dup}; expected one row per user")
    state_from = np.full(len(uniques), codes_from["new"], dtype="int64")
    state_to = np.full(len(uniques), codes_to["gone"], dtype="int64")
    state_from[keys[: len(left)]] = left.map(codes_from).to_numpy(dtype="int64")
    state_to[keys[len(left):]] = right.map(codes_to).to_numpy(dtype="int64")
    cells = np.bincount(state_from * len(TO_STATES) + state_to, minlength=len(FROM_STATES) * len(TO_STATES))
    return pd.DataFrame(
        cells.reshape(len(FROM_STATES), len(TO_STATES)).astype("int64"),
        index=pd.Index(FROM_STATES, name="from"),
        columns=pd.Index(TO_STATES, name="to"),
    )


def _layers(frame: pd.DataFrame, name: str) -> pd.Series:
    """``aipl_layer`` indexed by ``user_id`` (as strings), validated (duplicates are caught while counting)."""
    missing = [c for c in ("user_id", "aipl_layer") if c not in frame.columns]
    if missing:
        raise FlowError(f"{name} snapshot lacks column(s) {missing}; columns present: {list(frame.columns)}")
    ids = frame["user_id"]
    if ids.isna().any():
        raise FlowError(f"{name} snapshot has {int(ids.isna().sum())} null user_id(s)")
    ids = ids.astype(str).reset_index(drop=True)
    layers = frame["aipl_layer"].to_numpy(dtype=object)
    unknown = sorted({str(v) for v in pd.unique(layers) if v not in AIPL_LAYERS})
    if unknown:
        raise FlowError(f"{name} snapshot has unknown aipl_layer value(s) {unknown[:5]}; expected {list(AIPL_LAYERS)}")
    return pd.Series(layers, index=pd.Index(ids, name="user_id"), dtype=object)


def _assets(layers: pd.Series) -> tuple[int, float]:
    """(users in A/I/P/L, (P + L) / assets or NaN)."""
    counts = layers.value_counts()
    reach = int(sum(counts.get(layer, 0) for layer in ASSET_LAYERS))
    pl = int(counts.get("P", 0) + counts.get("L", 0))
    return reach, (pl / reach if reach else float("nan"))


def _json(value: float) -> float | None:
    return None if value is None or np.isnan(value) else float(value)
