"""MLflow tracking and the model registry: log a challenger, gate it, move aliases, load a champion.

Registered models ``last_mile_buyer`` and ``lapse_risk``; aliases ``@challenger`` and ``@champion`` (no stages).
Each model version carries the whole scoring bundle (``bundle.json`` + ``booster.txt``) as extra files, so
loading ``models:/<target>@champion`` yields everything needed to score.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from training.bundle import ModelBundle

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_TAG = "previous_champion"


class RegistryError(RuntimeError):
    """The registry cannot do what was asked (unknown model, no version with that alias, ...)."""

    exit_code = 6  # CLI exit code: a model is unavailable


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str


def gate(
    challenger: dict[str, float], champion: dict[str, float] | None, logloss_tolerance: float
) -> GateDecision:
    """Promote when there is no champion, or when on the same test cutoff the challenger's AUC is not below the
    champion's and its log loss is not worse by more than ``logloss_tolerance``."""
    if champion is None:
        return GateDecision(True, "no champion yet")
    auc_c, auc_p = challenger["auc"], champion["auc"]
    ll_c, ll_p = challenger["log_loss"], champion["log_loss"]
    if auc_c < auc_p:
        return GateDecision(False, f"AUC {auc_c:.4f} is below the champion's {auc_p:.4f}")
    if ll_c > ll_p + logloss_tolerance:
        return GateDecision(
            False, f"log loss {ll_c:.4f} is worse than the champion's {ll_p:.4f} by more than {logloss_tolerance}"
        )
    return GateDecision(True, f"AUC {auc_c:.4f} >= {auc_p:.4f} and log loss {ll_c:.4f} within tolerance")


class Registry:
    """Thin wrapper over an MLflow tracking server / registry."""

    def __init__(self, tracking_uri: str, artifact_root: Path) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve()
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(tracking_uri)
        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=tracking_uri)

    # Experiments and runs ------------------------------------------------------------------------------------------
    def experiment_id(self, target: str) -> str:
        found = self.client.get_experiment_by_name(target)
        if found is not None:
            return str(found.experiment_id)
        location = None
        if self.tracking_uri.startswith("sqlite:") or self.tracking_uri.startswith("file:"):
            location = (self.artifact_root / target).as_uri()
        return str(self.client.create_experiment(target, artifact_location=location))

    def log_challenger(
        self,
        bundle: ModelBundle,
        *,
        params: dict[str, Any],
        metrics: dict[str, dict[str, float]],
        plots: dict[str, Path],
        input_example: pd.DataFrame,
        tags: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        """Log one trained target as a run, register its model, set ``@challenger``. Returns (run_id, version)."""
        mlflow = self._mlflow
        from mlflow.models import infer_signature

        with mlflow.start_run(experiment_id=self.experiment_id(bundle.target), tags=tags or {}) as run:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
            for model_name, values in metrics.items():
                mlflow.log_metrics({f"{model_name}.{k}": float(v) for k, v in values.items() if _finite(v)})
            for path in plots.values():
                mlflow.log_artifact(str(path), artifact_path="plots")
            with tempfile.TemporaryDirectory() as tmp:
                bundle_dir = bundle.save(Path(tmp) / "bundle")
                mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
                example = input_example[bundle.feature_names].astype("float64")
                signature = infer_signature(example, bundle.predict_raw(example.to_numpy()))
                info = mlflow.lightgbm.log_model(
                    bundle.booster,
                    pip_requirements=_requirements(),
                    name="model",
                    registered_model_name=bundle.target,
                    signature=signature,
                    input_example=example,
                    extra_files=[str(bundle_dir / "bundle.json"), str(bundle_dir / "booster.txt")],
                )
            version = str(info.registered_model_version)
            self.client.set_registered_model_alias(bundle.target, CHALLENGER, version)
            self.client.set_model_version_tag(bundle.target, version, "test_as_of", str(params.get("test_as_of")))
            return run.info.run_id, version

    # Aliases ---------------------------------------------------------------------------------------------------------
    def version(self, target: str, alias: str) -> str | None:
        """The version number behind ``alias``, or None when the alias (or the model) does not exist."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(target, alias).version)
        except MlflowException:
            return None

    def promote(self, target: str, version: str | None = None) -> str:
        """Point ``@champion`` at ``version`` (default: the ``@challenger``), remembering the previous champion."""
        version = version or self.version(target, CHALLENGER)
        if version is None:
            raise RegistryError(f"{target} has no @challenger to promote; train one with `propensity train`")
        self._check_version(target, version)
        previous = self.version(target, CHAMPION)
        if previous is not None and previous != version:
            self.client.set_registered_model_tag(target, PREVIOUS_TAG, previous)
        self.client.set_registered_model_alias(target, CHAMPION, version)
        return version

    def rollback(self, target: str) -> str:
        """Move ``@champion`` back to the version it pointed to before the last promotion."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client.get_registered_model(target).tags
        except MlflowException as exc:
            raise RegistryError(f"no registered model named {target}") from exc
        previous = tags.get(PREVIOUS_TAG)
        if not previous:
            raise RegistryError(f"{target} has no previous champion to roll back to")
        current = self.version(target, CHAMPION)
        self.client.set_registered_model_alias(target, CHAMPION, previous)
        if current is not None:
            self.client.set_registered_model_tag(target, PREVIOUS_TAG, current)
        return previous

    def _check_version(self, target: str, version: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_model_version(target, version)
        except MlflowException as exc:
            raise RegistryError(f"{target} has no version {version}") from exc

    # Loading -----------------------------------------------------------------------------------------------------
    def download(self, target: str, alias: str = CHAMPION, dest: Path | None = None) -> tuple[Path, str]:
        """Download the model files behind ``alias`` into ``dest`` (a temp dir by default): (directory, version)."""
        version = self.version(target, alias)
        if version is None:
            raise RegistryError(
                f"{target} has no @{alias}; run `propensity train` (or `propensity retrain`) first"
            )
        dest = dest or Path(tempfile.mkdtemp(prefix=f"{target}-v{version}-"))
        path = self._mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{target}/{version}", dst_path=str(dest)
        )
        return Path(path), version

    def load_bundle(self, target: str, alias: str = CHAMPION) -> tuple[ModelBundle, str]:
        """The scoring bundle behind ``alias`` and its version (read into memory; no files left behind)."""
        with tempfile.TemporaryDirectory(prefix=f"{target}-") as tmp:
            directory, version = self.download(target, alias, Path(tmp))
            bundle = ModelBundle.load(directory / "extra_files")
        bundle.meta = {**bundle.meta, "version": version}
        return bundle, version

    def run_metrics(self, target: str, alias: str) -> dict[str, float]:
        version = self.version(target, alias)
        if version is None:
            return {}
        run_id = self.client.get_model_version(target, version).run_id
        return dict(self.client.get_run(run_id).data.metrics) if run_id else {}


def _requirements() -> list[str]:
    """Pinned runtime requirements of a logged model (given explicitly: MLflow's inference costs ~25 s a model)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("lightgbm", "numpy", "pandas", "scikit-learn")]


def _param(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str)
        return text if len(text) < 6000 else text[:5997] + "..."
    return value


def _finite(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False
