"""A trained model with everything needed to score: one code path for training, batch and online scoring.

A bundle directory holds plain files only (no pickles), so serving needs LightGBM, numpy and ``features`` and
nothing of the training environment::

    booster.txt      LightGBM model text
    bundle.json      target, feature names, feature spec, label spec, calibrator, segmenter, BTYD part, metadata
"""

from __future__ import annotations

import ctypes
import json
import threading
import weakref
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.columns import LayeredColumns, Table, column_list, column_names, floats, n_rows, objects
from features.segments.segmenter import SEGMENT_CODE_COLUMNS, SEGMENT_COLUMNS, Segmenter, SegmentError, segment_codes
from features.spec.definition import FeatureSpec, feature_columns
from training.btyd.features import BTYDFeatures
from training.calibration import Calibrator
from training.labels import LabelSpec

TARGETS = ("last_mile_buyer", "lapse_risk")
SCORE_COLUMN = {"last_mile_buyer": "p_buy", "lapse_risk": "p_lapse"}


def design_matrix(
    features: Table, spec: FeatureSpec, btyd: BTYDFeatures | None = None, *,
    btyd_inputs: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """The model input: ``feature_columns(spec)``, then the fitted BTYD columns (``btyd.columns``, when given),
    then the segment codes, as a float64 (n, f) matrix, with its column names.

    ``features`` is the segmented feature table (``Segmenter.transform`` output), one row per user: a DataFrame or
    :data:`features.columns.Columns`; each column is read once into its place in the matrix. ``btyd_inputs``: the
    rows' :func:`training.btyd.features.input_arrays`, when already derived.
    """
    numeric = feature_columns(spec)
    extra = btyd.columns if btyd is not None else []
    names = [*numeric, *extra, *SEGMENT_CODE_COLUMNS]
    memo = features.memo if isinstance(features, LayeredColumns) else None  # shared by the models of these rows
    block = None if memo is None else memo.get(("design_matrix", spec))
    if block is None:
        block = _numeric_and_codes(features, numeric)
        if memo is not None:
            memo["design_matrix", spec] = block
    k = len(numeric)
    x = np.empty((len(block), len(names)), dtype=np.float64)
    x[:, :k] = block[:, :k]
    if btyd is not None:
        x[:, k : k + len(extra)] = btyd.transform_array(features, btyd_inputs)
    x[:, k + len(extra) :] = block[:, k:]
    return x, names


_OBJECT = np.dtype(object)


def _numeric_and_codes(features: Table, numeric: list[str]) -> np.ndarray:
    """The columns ``numeric`` (as float64, missing as NaN) and the codes of :data:`SEGMENT_COLUMNS` of
    ``features`` (n rows), as one float64 (n, len(numeric) + 3) block."""
    n = n_rows(features)
    block = np.empty((n, len(numeric) + len(SEGMENT_COLUMNS)), dtype=np.float64)
    arrays = None if isinstance(features, pd.DataFrame) else column_list(features, numeric)
    if arrays is not None and {getattr(a, "dtype", _OBJECT).kind for a in arrays} <= set("fiub"):
        block[:, : len(numeric)] = np.array(arrays, dtype=np.float64).T  # one conversion, one copy
    else:
        for j, name in enumerate(numeric):
            block[:, j] = floats(features, name)
    present = column_names(features)
    for j, col in enumerate(SEGMENT_COLUMNS, start=len(numeric)):
        if col not in present:
            raise SegmentError(f"column {col!r} missing; run Segmenter.transform on the feature table first")
        block[:, j] = segment_codes(objects(features, col), col)
    return block


SMALL_PREDICT_ROWS = 256
"""Up to this many rows the booster predicts on one thread: starting LightGBM's OpenMP threads costs more than the
trees for a few rows, and milliseconds when the cores are busy (predictions are the same on any number of threads)."""


def predict_threads(rows: int) -> int:
    """LightGBM ``num_threads`` for ``rows`` rows: 1 for at most :data:`SMALL_PREDICT_ROWS`, else 0 (OpenMP's
    default, all cores)."""
    return 1 if rows <= SMALL_PREDICT_ROWS else 0


class _SingleRowPredictor:
    """One booster's predictions (or SHAP contributions) of one row at a time through LightGBM's
    ``LGBM_BoosterPredictForMatSingleRowFast``: the predictor and its parameters are set up once, where
    ``Booster.predict`` parses its parameters and builds a predictor on every call (~35 us, most of a one-row
    prediction). The same predictor code walks the same trees (best iteration, as ``Booster.predict`` defaults to),
    so the floats are the same; LightGBM serialises the calls on one booster."""

    def __init__(self, booster: Any, contrib: bool, n_features: int) -> None:
        from lightgbm import basic

        self._lib, self._check = basic._LIB, basic._safe_call
        self.size = n_features + 1 if contrib else 1
        self.n_features = n_features
        self.handle = ctypes.c_void_p()
        self._check(self._lib.LGBM_BoosterPredictForMatSingleRowFastInit(
            booster._handle,
            ctypes.c_int(3 if contrib else 0),  # predict type: C_API_PREDICT_CONTRIB or C_API_PREDICT_NORMAL
            ctypes.c_int(0),  # start iteration
            ctypes.c_int(booster.best_iteration),  # iterations: the best one, all when <= 0 (Booster.predict's default)
            ctypes.c_int(1),  # C_API_DTYPE_FLOAT64
            ctypes.c_int32(n_features), basic._c_str("num_threads=1"), ctypes.byref(self.handle)))
        weakref.finalize(self, self._lib.LGBM_FastConfigFree, self.handle)

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """The prediction of one row (float64, shape (f,)): shape (1,), or (f + 1,) contributions."""
        row = np.ascontiguousarray(row, dtype=np.float64)
        out = np.empty(self.size, dtype=np.float64)
        n = ctypes.c_int64(0)
        self._check(self._lib.LGBM_BoosterPredictForMatSingleRowFast(
            self.handle, row.ctypes.data_as(ctypes.c_void_p), ctypes.byref(n),
            out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))))
        return out


_SINGLE_ROW: weakref.WeakKeyDictionary[Any, dict[tuple[bool, int, int], _SingleRowPredictor | None]] = (
    weakref.WeakKeyDictionary())
_SINGLE_ROW_LOCK = threading.Lock()


def _single_row(booster: Any, contrib: bool, n_features: int) -> _SingleRowPredictor | None:
    """The booster's :class:`_SingleRowPredictor` (kept as long as the booster lives, outside the bundle so a bundle
    still pickles), or None when it cannot be set up (a booster without the C handle, a LightGBM without the API:
    ``Booster.predict`` then serves)."""
    key = (contrib, n_features, int(getattr(booster, "best_iteration", -1)))
    try:
        found = _SINGLE_ROW.get(booster)
    except TypeError:  # not weak-referenceable
        return None
    if found is not None and key in found:
        return found[key]
    with _SINGLE_ROW_LOCK:
        found = _SINGLE_ROW.setdefault(booster, {})
        if key not in found:
            try:
                found[key] = _SingleRowPredictor(booster, contrib, n_features)
            except Exception:  # any failure means: use Booster.predict
                found[key] = None
        return found[key]


class BundleMismatchError(ValueError):
    """A model cannot score this feature table (another spec version, other columns); the message says what to do."""

    exit_code = 6  # CLI exit code: unavailable (the model cannot be used)


@dataclass
class ModelBundle:
    """Booster + calibrator + fitted segmenter + the specs it was trained with, and the fitted BTYD part (None for a
    bundle trained without it): its columns join the design matrix when the booster was trained on them (they are
    in ``feature_names``), and it gives the per-user BTYD outputs either way."""

    target: str
    booster: Any
    calibrator: Calibrator
    segmenter: Segmenter
    spec: FeatureSpec
    label_spec: LabelSpec
    feature_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    btyd: BTYDFeatures | None = None

    # Scoring -------------------------------------------------------------------------------------------------------
    def matrix(self, segmented: Table, *, btyd_inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Design matrix (float64, (n, f)) for ``segmented`` (n rows: a DataFrame or
        :data:`features.columns.Columns`), checked against the trained feature names (``btyd_inputs``: see
        :func:`design_matrix`)."""
        x, names = design_matrix(segmented, self.spec, self.btyd_in_matrix, btyd_inputs=btyd_inputs)
        if names != self.feature_names:
            missing = sorted(set(self.feature_names) - set(names))
            extra = sorted(set(names) - set(self.feature_names))
            if self.spec.version != FeatureSpec.version:
                raise BundleMismatchError(
                    f"model {self.target} was trained on feature spec {self.spec.version}, this version builds spec "
                    f"{FeatureSpec.version}: retrain it (`propensity train`)")
            raise BundleMismatchError(f"feature table does not match model {self.target}: missing {missing[:10]}, "
                                      f"unexpected {extra[:10]}")
        return x

    @cached_property
    def segmenter_key(self) -> str:
        """The fitted segmenter as sorted JSON: bundles with equal keys label users identically (computed once per
        bundle: a bundle's parts are not changed after it is built or loaded)."""
        return json.dumps(self.segmenter.to_dict(), sort_keys=True, default=str)

    @cached_property
    def matrix_key(self) -> str:
        """Segmenter, feature names and the BTYD part the booster reads, as sorted JSON: bundles with equal keys
        build the same design matrix from the same rows (computed once per bundle)."""
        btyd = None if self.btyd_in_matrix is None else self.btyd_in_matrix.to_dict()
        return json.dumps([self.segmenter_key, self.feature_names, btyd], sort_keys=True, default=str)

    @property
    def btyd_in_matrix(self) -> BTYDFeatures | None:
        """The BTYD part when the booster reads its columns, else None."""
        if self.btyd is None or self.btyd.columns[0] not in self.feature_names:
            return None
        return self.btyd

    def btyd_block(self, x: np.ndarray) -> np.ndarray | None:
        """The BTYD columns (``btyd.columns``, shape (n, k)) of a design matrix ``x`` this bundle built, or None
        when the booster does not read them: the part's :meth:`BTYDFeatures.transform_array` of those rows."""
        btyd = self.btyd_in_matrix
        if btyd is None:
            return None
        start = self.feature_names.index(btyd.columns[0])
        return x[:, start : start + len(btyd.columns)]

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated booster probabilities, shape (n,)."""
        fast = _single_row(self.booster, contrib=False, n_features=x.shape[1]) if len(x) == 1 else None
        if fast is not None:
            return fast(x[0])
        return np.asarray(self.booster.predict(x, num_threads=predict_threads(len(x))), dtype=np.float64)

    def predict(self, segmented: Table) -> np.ndarray:
        """Calibrated probabilities, shape (n,), for a segmented feature table."""
        return self.calibrator.transform(self.predict_raw(self.matrix(segmented)))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contributions in log-odds, shape (n, f + 1); the last column is the bias."""
        fast = _single_row(self.booster, contrib=True, n_features=x.shape[1]) if len(x) == 1 else None
        if fast is not None:
            return fast(x[0])[None, :]
        return np.asarray(self.booster.predict(x, pred_contrib=True, num_threads=predict_threads(len(x))),
                          dtype=np.float64)

    # Persistence ---------------------------------------------------------------------------------------------------
    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "booster.txt").write_text(self.booster.model_to_string())
        doc = {
            "target": self.target,
            "feature_names": self.feature_names,
            "spec": self.spec.to_dict(),
            "label_spec": asdict(self.label_spec),
            "calibrator": self.calibrator.to_dict(),
            "segmenter": self.segmenter.to_dict(),
            "btyd": None if self.btyd is None else self.btyd.to_dict(),
            "meta": self.meta,
        }
        (directory / "bundle.json").write_text(json.dumps(doc, indent=1, default=str))
        return directory

    @classmethod
    def load(cls, directory: Path) -> ModelBundle:
        import lightgbm as lgb

        directory = Path(directory)
        doc = json.loads((directory / "bundle.json").read_text())
        booster = lgb.Booster(model_str=(directory / "booster.txt").read_text())
        return cls(
            target=doc["target"],
            booster=booster,
            calibrator=Calibrator.from_dict(doc["calibrator"]),
            segmenter=Segmenter.from_dict(doc["segmenter"]),
            spec=FeatureSpec.from_dict(doc["spec"]),
            label_spec=LabelSpec(**doc["label_spec"]),
            feature_names=list(doc["feature_names"]),
            meta=dict(doc.get("meta", {})),
            btyd=BTYDFeatures.from_dict(doc["btyd"]) if doc.get("btyd") else None,
        )
