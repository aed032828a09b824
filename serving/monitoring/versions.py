"""What the registry knows about the model version that produced a snapshot: test metrics, cutoffs, label windows.

A version can be gone (deleted, or the snapshot came from another registry): it is then reported with what is known
(its number and the snapshot's own facts) and nothing is compared with its test metrics.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.bundle import ModelBundle

__all__ = ["MAIN_MODEL", "VersionFacts", "load_version_bundle", "version_facts"]

MAIN_MODEL = "lightgbm"
"""The run's metrics are logged per model as ``<model>.<metric>``; the registered model is this one."""


@dataclass
class VersionFacts:
    """A model version as the registry knows it. ``test``: its metrics on its test cutoff (``auc``, ``ece``, ...;
    empty when unknown); ``cutoffs``: its training cutoffs, oldest first (ISO; the last two are validation and test);
    ``horizon_days`` / ``lapse_days``: its label windows when logged; ``model_id``: MLflow's logged model."""

    target: str
    version: str | None
    known: bool
    test: dict[str, float] = field(default_factory=dict)
    test_as_of: str | None = None
    cutoffs: list[str] = field(default_factory=list)
    horizon_days: int | None = None
    lapse_days: int | None = None
    run_id: str | None = None
    model_id: str | None = None
    note: str = ""

    @property
    def train_cutoff(self) -> str | None:
        """The last cutoff the model was trained on (before validation and test), else its test cutoff."""
        return self.cutoffs[-3] if len(self.cutoffs) >= 3 else self.test_as_of

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "train_cutoff": self.train_cutoff}


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "", "None") else None
    except (TypeError, ValueError):
        return None


def _model_id(mv: Any) -> str | None:
    """MLflow's logged model behind a registered version (``model_id``, or its ``models:/m-...`` source)."""
    found = getattr(mv, "model_id", None)
    source = str(getattr(mv, "source", "") or "")
    if not found and source.startswith("models:/m-"):
        found = source.removeprefix("models:/").split("/")[0]
    return found or None


def version_facts(client: Any, target: str, version: str | None) -> VersionFacts:
    """Facts of ``target`` version ``version`` from an ``MlflowClient``; ``known=False`` (with a note) when the
    snapshot names no version or the registry no longer has it."""
    from mlflow.exceptions import MlflowException

    if not version:
        return VersionFacts(target, None, False, note=f"the snapshot does not say which {target} version scored it")
    try:
        mv = client.get_model_version(target, str(version))
    except MlflowException:
        return VersionFacts(target, str(version), False,
                            note=f"{target} version {version} is gone from the registry: no test metrics to compare")
    facts = VersionFacts(target, str(version), True, run_id=mv.run_id, model_id=_model_id(mv))
    facts.test_as_of = (mv.tags or {}).get("test_as_of")
    if not mv.run_id:
        facts.note = "the version has no training run: no test metrics"
        return facts
    try:
        run = client.get_run(mv.run_id)
    except MlflowException:
        facts.note = f"the training run {mv.run_id} is gone: no test metrics"
        return facts
    prefix = f"{MAIN_MODEL}."
    facts.test = {k.removeprefix(prefix): float(v) for k, v in run.data.metrics.items() if k.startswith(prefix)}
    params = run.data.params
    facts.test_as_of = params.get("test_as_of") or facts.test_as_of
    try:
        facts.cutoffs = [str(c) for c in json.loads(params.get("cutoffs", "[]"))]
    except (TypeError, ValueError):
        facts.cutoffs = []
    facts.horizon_days, facts.lapse_days = _int(params.get("horizon_days")), _int(params.get("lapse_days"))
    if not facts.test:
        facts.note = "the training run logged no test metrics"
    return facts


def load_version_bundle(tracking_uri: str, target: str, version: str) -> ModelBundle:
    """The scoring bundle of ``target`` version ``version`` (downloaded into a temporary folder, read, removed)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix=f"{target}-v{version}-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{target}/{version}", dst_path=tmp)
        bundle = ModelBundle.load(Path(path) / "extra_files")
    bundle.meta = {**bundle.meta, "version": str(version)}
    return bundle
