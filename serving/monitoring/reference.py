"""The training reference of a model and the drift of the newest snapshot against it.

The reference of a model version (:func:`training.reference.model_reference_profile`) is its score and its most
important features (LightGBM gain) over the users it scores, and the AIPL layer and lifecycle mix, at its last
training cutoff. A bundle that carries one (``bundle.meta["reference_profile"]``) is used as is; otherwise the
feature table at that cutoff is rebuilt from the events with the bundle's own spec and segmenter. The newest
snapshot's scores come from its records; its features are rebuilt at its ``as_of`` the same way and compared over
the users the model scores. Both builds read a seeded sample of users (``training.sampling.sampled_events``), so
their cost does not grow with the shop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from serving.monitoring.drift import ReferenceProfile, column_psi, level_of, missing_rate, profile_column
from training.bundle import SCORE_COLUMN, ModelBundle
from training.reference import MIX_COLUMNS, model_reference_profile, population_rows

__all__ = ["MIX_COLUMNS", "POPULATION", "design_frame", "drift_rows", "mix_rows", "model_reference",
           "records_profile"]

POPULATION = "_scored"
"""Column of :func:`design_frame`: the rows the bundle's model scores."""
RawFeatures = Callable[[datetime, Any], pd.DataFrame]


def design_frame(bundle: ModelBundle, raw: pd.DataFrame) -> pd.DataFrame:
    """``raw`` (a feature table, one row per user) seen through ``bundle``: its model inputs (floats, named as
    ``bundle.feature_names``), the mix columns and :data:`POPULATION`."""
    segmented = bundle.segmenter.transform(raw).reset_index(drop=True)
    frame = pd.DataFrame(bundle.matrix(segmented), columns=bundle.feature_names)
    frame[POPULATION] = population_rows(bundle.target, segmented)
    for column in MIX_COLUMNS:
        frame[column] = segmented[column].astype(str).to_numpy()
    return frame


def model_reference(
    bundle: ModelBundle, cutoff: datetime | None, raw_features: RawFeatures | None, *, top: int, bins: int,
) -> tuple[ReferenceProfile | None, str]:
    """The reference profile of ``bundle`` and where it came from, or None and why not. ``raw_features(as_of,
    spec)`` builds a (sampled) feature table; None when the events cannot (they start after ``cutoff``)."""
    stored = bundle.meta.get("reference_profile")
    if stored:
        return ReferenceProfile.from_dict(stored), "stored with the model"
    if cutoff is None:
        return None, f"{bundle.target}: the registry records no training cutoff to rebuild the reference at"
    if raw_features is None:
        return None, (f"{bundle.target}: the events start after its training cutoff {cutoff:%Y-%m-%d}; pass the "
                      "history to rebuild the reference")
    segmented = bundle.segmenter.transform(raw_features(cutoff, bundle.spec)).reset_index(drop=True)
    profile = model_reference_profile(bundle, segmented, top=top, bins=bins, meta={"cutoff": cutoff.isoformat()})
    return profile, f"rebuilt at {cutoff:%Y-%m-%d %H:%M} from {len(segmented):,} users"


def drift_rows(
    target: str, profile: ReferenceProfile, records: pd.DataFrame, current: pd.DataFrame | None, *,
    snapshot_id: str, baseline: str, warn: float, alert: float,
) -> list[dict[str, Any]]:
    """Drift rows (dicts of :class:`serving.monitoring.result.DriftRow` fields but ``scope``) against ``profile``: the
    ``target``'s score in the snapshot's records (one row per user) and, with ``current`` (:func:`design_frame` at
    the snapshot's as_of), every feature of the profile over the users the model scores."""
    rows: list[dict[str, Any]] = []
    column = SCORE_COLUMN[target]
    common = {"baseline": baseline, "snapshot_id": snapshot_id, "target": target}
    if column in profile.columns and column in records.columns:
        now = pd.to_numeric(records[column], errors="coerce")
        value = column_psi(profile.columns[column], now.dropna())
        ref_missing = profile.meta.get("missing", {}).get(column, float("nan"))
        rows.append({**common, "column": column, "kind": "score", "psi": value, "level": level_of(value, warn, alert),
                     "missing_baseline": ref_missing, "missing_now": missing_rate(now),
                     "n_baseline": profile.columns[column].n, "n_now": int(now.notna().sum())})
    if current is None:
        return rows
    if POPULATION in current.columns:
        current = current[current[POPULATION].to_numpy(dtype=bool)]
    for name, prof in profile.columns.items():
        if name == column or name in MIX_COLUMNS or name not in current.columns:
            continue
        value = column_psi(prof, current[name])
        rows.append({**common, "column": name, "kind": "feature", "psi": value, "level": level_of(value, warn, alert),
                     "missing_baseline": prof.missing, "missing_now": missing_rate(current[name]),
                     "n_baseline": prof.n, "n_now": len(current)})
    return rows


def mix_rows(
    profile: ReferenceProfile, records: pd.DataFrame, *, snapshot_id: str, baseline: str, warn: float, alert: float,
) -> list[dict[str, Any]]:
    """Mix shifts (dicts of :class:`serving.monitoring.result.MixShift` fields) of the segment columns in both."""
    out = []
    for column in MIX_COLUMNS:
        prof = profile.columns.get(column)
        if prof is None or column not in records.columns:
            continue
        now = records[column].astype(str)
        labels = [*prof.categories, "(other)"]
        ref_shares = dict(zip(labels, prof.shares[: len(labels)], strict=True))
        now_counts = now.value_counts(normalize=True)
        now_shares = {c: float(now_counts.get(c, 0.0)) for c in prof.categories}
        now_shares["(other)"] = float(1.0 - sum(now_shares.values()))
        value = column_psi(prof, now)
        out.append({"baseline": baseline, "snapshot_id": snapshot_id, "column": column,
                    "shares_baseline": ref_shares, "shares_now": now_shares, "psi": value,
                    "level": level_of(value, warn, alert)})
    return out


def records_profile(previous: pd.DataFrame, bins: int, columns: Mapping[str, str]) -> ReferenceProfile:
    """A profile of an earlier snapshot's records: score columns (``kind == "score"``: known values only, with their
    missing share in ``meta``) and mix columns, to compare the next snapshot with."""
    cols = {}
    missing = {}
    for name, kind in columns.items():
        if name not in previous.columns:
            continue
        values = pd.to_numeric(previous[name], errors="coerce") if kind == "score" else previous[name].astype(str)
        cols[name] = profile_column(name, values.dropna() if kind == "score" else values, bins)
        if kind == "score":
            missing[name] = missing_rate(values)
    return ReferenceProfile(cols, {"missing": missing})
