"""A trained model with everything needed to score: one code path for training, batch and online scoring.

A bundle directory holds plain files only (no pickles), so serving needs LightGBM, numpy and ``features`` and
nothing of the training environment::

    booster.txt      LightGBM model text
    bundle.json      target, feature names, feature spec, label spec, calibrator, segmenter, BTYD part, metadata
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.segments.segmenter import Segmenter, encode_segments
from features.spec.definition import FeatureSpec, feature_columns
from training.btyd.features import BTYDFeatures
from training.calibration import Calibrator
from training.labels import LabelSpec

TARGETS = ("last_mile_buyer", "lapse_risk")
SCORE_COLUMN = {"last_mile_buyer": "p_buy", "lapse_risk": "p_lapse"}


def design_matrix(
    features: pd.DataFrame, spec: FeatureSpec, btyd: BTYDFeatures | None = None
) -> tuple[np.ndarray, list[str]]:
    """The model input: ``feature_columns(spec)``, then the fitted BTYD columns (``btyd.columns``, when given),
    then the segment codes, as a float64 (n, f) matrix.

    ``features`` is the segmented feature table (``Segmenter.transform`` output), one row per user.
    """
    numeric = features[feature_columns(spec)].astype("float64")
    codes = encode_segments(features).astype("float64")
    parts = [numeric.reset_index(drop=True)]
    if btyd is not None:
        parts.append(btyd.transform(features).reset_index(drop=True))
    frame = pd.concat([*parts, codes.reset_index(drop=True)], axis=1)
    return frame.to_numpy(dtype=np.float64, na_value=np.nan), list(frame.columns)


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
    def matrix(self, segmented: pd.DataFrame) -> np.ndarray:
        """Design matrix for ``segmented`` (n rows), checked against the trained feature names."""
        x, names = design_matrix(segmented, self.spec, self.btyd_in_matrix)
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

    @property
    def btyd_in_matrix(self) -> BTYDFeatures | None:
        """The BTYD part when the booster reads its columns, else None."""
        if self.btyd is None or self.btyd.columns[0] not in self.feature_names:
            return None
        return self.btyd

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        """Uncalibrated booster probabilities, shape (n,)."""
        return np.asarray(self.booster.predict(x, num_threads=0), dtype=np.float64)

    def predict(self, segmented: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, shape (n,), for a segmented feature table."""
        return self.calibrator.transform(self.predict_raw(self.matrix(segmented)))

    def contributions(self, x: np.ndarray) -> np.ndarray:
        """Per-feature contributions in log-odds, shape (n, f + 1); the last column is the bias."""
        return np.asarray(self.booster.predict(x, pred_contrib=True), dtype=np.float64)

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
