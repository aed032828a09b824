"""The one scoring path shared by the nightly batch and the online ``/score`` API.

``score_features`` takes a raw feature table (``features.build.builder.build_features`` output, one row per user) and
the champion bundles, and returns one score record per user. Batch scoring calls it chunk by chunk; the service calls
it on the features of a few users built from the events in the request. Same inputs, same floats.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from features.build.builder import build_features
from features.columns import Columns, Table, as_columns, column_names, n_rows, objects, take_rows, with_columns
from features.segments.segmenter import SEGMENT_COLUMNS
from serving.reasons import reason_texts
from training.btyd.features import input_arrays
from training.bundle import SCORE_COLUMN, ModelBundle
from training.evaluate import top_reasons
from training.labels import lapse_population

_NO_REASONS: tuple[str, ...] = ()
SEGMENT_OUTPUT = ("aipl_layer", "lifecycle", "rfm_group", "rule_score")
BTYD_OUTPUT = ("p_alive", "expected_purchases_30d", "expected_purchases_90d", "clv_365d", "next_order_date")
REASONS_COLUMN = {"last_mile_buyer": "reasons_buy", "lapse_risk": "reasons_lapse"}
REASON_TEXT_COLUMN = {"last_mile_buyer": "reasons_buy_text", "lapse_risk": "reasons_lapse_text"}
"""Readable reasons, aligned with :data:`REASONS_COLUMN`: "<phrase with the user's values> (<feature>)"."""
VERSION_COLUMN = {"last_mile_buyer": "model_buy", "lapse_risk": "model_lapse"}


def score_features(
    raw: Table,
    bundles: Mapping[str, ModelBundle],
    as_of: datetime,
    *,
    n_reasons: int = 3,
    keep_features: bool = False,
    reasons: bool = True,
    design: dict[str, tuple[np.ndarray, Columns]] | None = None,
) -> Table:
    """Score every row of ``raw`` (n users) with every bundle.

    Returns n rows: ``user_id``, ``p_buy`` / ``p_lapse`` (calibrated probabilities in [0, 1]; ``p_lapse`` is NaN for
    users who never bought, who are outside the lapse model's population), ``aipl_layer``, ``lifecycle``,
    ``rfm_group``, ``rule_score``, ``reasons_buy`` / ``reasons_lapse`` (top positive contributors, feature names),
    ``reasons_buy_text`` / ``reasons_lapse_text`` (the same reasons as phrases with the user's values, feature name
    in brackets: :func:`serving.reasons.reason_text`), ``model_buy`` / ``model_lapse`` (registry versions) and
    ``as_of``; when a bundle has a BTYD part, the BTYD outputs of :func:`btyd_outputs` (``p_alive``,
    ``expected_purchases_30d`` / ``_90d``, ``clv_365d``, ``next_order_date``). With ``keep_features`` the segmented
    feature columns are kept too (activation rules read them). With ``reasons=False`` the four reason columns hold
    empty lists: the SHAP contributions behind them cost far more than the scores (see :func:`add_reasons`).

    ``raw`` is a DataFrame (a DataFrame with a fresh RangeIndex comes back) or :data:`features.columns.Columns` (the
    same columns come back: the outputs, or with ``keep_features`` the input columns, the segment labels and the
    outputs, nothing copied; per-call costs stay microseconds for one user). ``design``, when given, is filled with
    each target's design matrix (float64, (n, f)) and segmented columns, which :func:`add_reasons` of the same rows
    then reuses instead of rebuilding them.
    """
    if not bundles:
        raise ValueError("no models to score with")
    labels, new = _score(as_columns(raw), bundles, as_of, n_reasons, reasons, design)
    if isinstance(raw, pd.DataFrame):
        out = raw.reset_index(drop=True)
        for name, values in labels.items():
            out[name] = pd.Series(values, index=out.index, dtype="str")
        if not keep_features:
            out = out[["user_id", *SEGMENT_OUTPUT]].copy()
        constants = {VERSION_COLUMN[t]: str(b.meta.get("version", "")) for t, b in bundles.items()}
        constants["as_of"] = pd.Timestamp(as_of).isoformat()
        for name, values in new.items():
            if name in constants:
                out[name] = constants[name]
            else:
                out[name] = pd.Series(values, index=out.index, dtype=object if name in _LIST_COLUMNS else None)
        return out
    if keep_features:
        return with_columns(with_columns(raw, labels), new)
    return {"user_id": raw["user_id"], "aipl_layer": raw["aipl_layer"], **labels, "rule_score": raw["rule_score"],
            **new}


_LIST_COLUMNS = frozenset({*REASONS_COLUMN.values(), *REASON_TEXT_COLUMN.values()})


def _score(
    raw: Columns, bundles: Mapping[str, ModelBundle], as_of: datetime, n_reasons: int, reasons: bool,
    design: dict[str, tuple[np.ndarray, Columns]] | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """:func:`score_features` on columns: ``(segment labels of the first bundle's segmenter, output columns)``,
    arrays of shape (n,) (labels and reasons object arrays, scores float64), outputs in :func:`score_features`
    order."""
    n = n_rows(raw)
    labels: dict[str, np.ndarray] | None = None
    new: dict[str, np.ndarray] = {}
    # models trained together share the segmenter, and the matrix unless their BTYD parts differ
    segments: dict[str, Columns] = {}
    matrices: dict[str, np.ndarray] = {}
    inputs = input_arrays(raw) if any(b.btyd is not None for b in bundles.values()) else None  # shared by the parts
    for target, bundle in bundles.items():
        seg_key, key = bundle.segmenter_key, bundle.matrix_key
        if seg_key not in segments:
            segments[seg_key] = bundle.segmenter.transform(raw)
        segmented = segments[seg_key]
        if key not in matrices:
            matrices[key] = bundle.matrix(segmented, btyd_inputs=inputs)
        full = matrices[key]
        if design is not None:
            design[target] = (full, segmented)
        if labels is None:
            labels = {name: segmented[name] for name in ("lifecycle", "rfm_group")}
        rows = population(target, segmented)
        x = full if rows.all() else full[rows]
        p = np.full(n, np.nan)
        p[rows] = bundle.calibrator.transform(bundle.predict_raw(x)) if len(x) else []
        new[SCORE_COLUMN[target]] = p
        names: list[list[str]] = []
        texts: list[list[str]] = []
        if len(x) and reasons:
            names = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons)
            texts = reason_texts(names, reason_values(x, bundle.feature_names, _segment_labels(segmented, rows)))
        new[REASONS_COLUMN[target]] = _scatter(names, rows)
        new[REASON_TEXT_COLUMN[target]] = _scatter(texts, rows)
        new[VERSION_COLUMN[target]] = np.full(n, str(bundle.meta.get("version", "")), dtype=object)
    assert labels is not None
    extra = _btyd_arrays(raw, bundles, as_of, matrices, inputs)
    if extra is not None:
        for name in BTYD_OUTPUT:
            new[name] = extra[name]
    new["as_of"] = np.full(n, pd.Timestamp(as_of).isoformat(), dtype=object)
    return labels, new


def btyd_outputs(raw: pd.DataFrame, bundles: Mapping[str, ModelBundle], as_of: datetime) -> pd.DataFrame | None:
    """The BTYD outputs of every row of ``raw`` (n users, in order) from the lapse bundle's fitted BTYD part (the
    buyer bundle's when the lapse bundle has none): :data:`BTYD_OUTPUT`, probabilities in [0, 1], expected purchase
    days, CLV in currency, ``next_order_date`` an ISO date or None; all null for users who never bought. None when no
    bundle has a BTYD part (models trained before it)."""
    bundle = _btyd_bundle(bundles)
    if bundle is None:
        return None
    return bundle.btyd.outputs(raw.reset_index(drop=True), as_of)[list(BTYD_OUTPUT)]


def _btyd_bundle(bundles: Mapping[str, ModelBundle]) -> ModelBundle | None:
    """The bundle whose BTYD part gives the outputs (see :func:`btyd_outputs`), None when none has one."""
    for target in ("lapse_risk", "last_mile_buyer", *bundles):
        bundle = bundles.get(target)
        if bundle is not None and bundle.btyd is not None:
            return bundle
    return None


def _btyd_arrays(
    raw: Columns, bundles: Mapping[str, ModelBundle], as_of: datetime, matrices: Mapping[str, np.ndarray],
    inputs: Mapping[str, np.ndarray] | None,
) -> dict[str, np.ndarray] | None:
    """:func:`btyd_outputs` of columns: :data:`BTYD_OUTPUT` arrays of shape (n,), or None. The BTYD columns come
    from the bundle's design matrix in ``matrices`` (by :attr:`ModelBundle.matrix_key`) when it holds them;
    ``inputs``: the rows' BTYD inputs (:func:`training.btyd.features.input_arrays`)."""
    bundle = _btyd_bundle(bundles)
    if bundle is None:
        return None
    x = matrices.get(bundle.matrix_key)
    out = bundle.btyd.output_arrays(raw, as_of, None if x is None else bundle.btyd_block(x), inputs)
    return {name: out[name] for name in BTYD_OUTPUT}


def population(target: str, segmented: Table) -> np.ndarray:
    """Rows (boolean, shape (n,)) a model scores: everyone for last-mile buyers; for lapse risk the users with a
    purchase before the cutoff (:func:`training.labels.lapse_population`, the population its labels cover), whatever
    their lifecycle stage: a ``churned`` user who never bought is outside it. Other rows get NaN."""
    if target == "lapse_risk":
        return lapse_population(segmented)
    return np.ones(n_rows(segmented), dtype=bool)


def add_reasons(
    scored: Table,
    raw: Table,
    bundles: Mapping[str, ModelBundle],
    masks: Mapping[str, np.ndarray],
    n_reasons: int = 3,
    design: Mapping[str, tuple[np.ndarray, Columns]] | None = None,
) -> Table:
    """Fill the reason columns (feature names and readable phrases) of the rows of ``scored`` selected per target by
    ``masks[target]`` (boolean, (n,)); the other rows keep theirs.

    ``raw`` is the raw feature table the rows were scored from (same order). LightGBM's SHAP contributions cost
    about 75x the score itself, so the batch computes them only for the users it will act on, and only for the
    score the action rides on (see :func:`serving.batch.run.reason_masks`): no SHAP row is spent on another user.
    ``design``: what :func:`score_features` filled for these rows (each target's design matrix and segmented
    columns), used instead of segmenting and building the matrix again. A DataFrame ``scored`` is filled in place
    and returned; :data:`features.columns.Columns` come back as new columns over ``scored``.
    """
    n = n_rows(scored)
    updates: dict[str, np.ndarray] = {}
    for target, bundle in bundles.items():
        rows = np.flatnonzero(masks.get(target, np.zeros(n, dtype=bool)))
        if len(rows) == 0:
            continue
        prepared = design.get(target) if design is not None else None
        if prepared is not None:
            x = prepared[0][rows]
            segmented: Table = _segment_labels(prepared[1], rows)
        else:
            segmented = bundle.segmenter.transform(take_rows(raw, rows))
            x = bundle.matrix(segmented)
        names = top_reasons(bundle.contributions(x), bundle.feature_names, k=n_reasons)
        texts = reason_texts(names, reason_values(x, bundle.feature_names, segmented))
        for name, values in ((REASONS_COLUMN[target], names), (REASON_TEXT_COLUMN[target], texts)):
            column = objects(updates if name in updates else scored, name).copy()
            for i, row in enumerate(rows.tolist()):
                column[row] = values[i]
            if isinstance(scored, pd.DataFrame):
                scored[name] = pd.Series(column, index=scored.index, dtype=object)
            else:
                updates[name] = column
    if isinstance(scored, pd.DataFrame) or not updates:
        return scored
    return with_columns(scored, updates)


def reason_values(x: np.ndarray, feature_names: list[str], segmented: Table) -> Mapping[str, Any]:
    """What the reason phrases read for the m rows of the design matrix ``x`` (shape (m, f)): each of its columns by
    feature name (float64, shape (m,)) and the segment labels of ``segmented`` (the same m users, in order). A
    column is sliced when a phrase reads it (a few per reason, of a hundred)."""
    present = column_names(segmented)
    labels = {col: objects(segmented, col) for col in SEGMENT_COLUMNS if col in present}
    return _ReasonValues(x, _positions(tuple(feature_names)), labels)


@lru_cache(maxsize=64)
def _positions(feature_names: tuple[str, ...]) -> dict[str, int]:
    return {name: j for j, name in enumerate(feature_names)}


class _ReasonValues(Mapping[str, Any]):
    """:func:`reason_values`: design-matrix columns by feature name (sliced on access), then segment labels."""

    def __init__(self, x: np.ndarray, positions: dict[str, int], labels: dict[str, np.ndarray]) -> None:
        self.x, self.positions, self.labels = x, positions, labels

    def __getitem__(self, name: str) -> Any:
        if name in self.labels:
            return self.labels[name]
        return self.x[:, self.positions[name]]

    def __iter__(self) -> Iterator[str]:
        yield from self.positions
        yield from (name for name in self.labels if name not in self.positions)

    def __len__(self) -> int:
        return len(self.positions) + sum(1 for name in self.labels if name not in self.positions)


def _segment_labels(segmented: Table, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`SEGMENT_COLUMNS` labels of the rows ``rows`` (boolean mask or positions) of ``segmented``."""
    present = column_names(segmented)
    return {col: objects(segmented, col)[rows] for col in SEGMENT_COLUMNS if col in present}


def _scatter(values: list[list[str]], rows: np.ndarray) -> np.ndarray:
    """An object array of lists, shape (len(rows),): ``values`` in order at the selected rows, empty elsewhere."""
    column: list[Any] = [_NO_REASONS] * len(rows)  # one shared immutable empty value: a million lists cost seconds
    for row, value in zip(np.flatnonzero(rows).tolist(), values, strict=False):
        column[row] = value
    out = np.empty(len(column), dtype=object)
    out[:] = column
    return out


def score_events(
    events: pd.DataFrame | Any,
    as_of: datetime,
    bundles: Mapping[str, ModelBundle],
    *,
    con: Any = None,
    n_reasons: int = 3,
    keep_features: bool = False,
) -> pd.DataFrame:
    """Build features from ``events`` (canonical frame, Ibis table or Parquet path) and score them."""
    spec = next(iter(bundles.values())).spec
    raw = build_features(events, as_of, spec, con=con)
    return score_features(raw, bundles, as_of, n_reasons=n_reasons, keep_features=keep_features)
