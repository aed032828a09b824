"""Monitoring results in MLflow: one run per monitoring call, time series by snapshot, attached to the model versions.

Metric names (each point stamped with its snapshot's ``as_of``, step = the snapshot's position, oldest 0):
``<target>.realized.<metric>`` (closed windows), ``<target>.expected.<metric>`` (every snapshot), ``<target>.test.auc``
(the test AUC of the version that scored it), ``psi.reference.<column>`` / ``psi.previous.<column>`` (drift), and
``alert`` / ``alerts`` / ``warnings`` at the time of the call. The metrics of a target are linked to the MLflow logged
model of the version that scored the snapshot, so they appear among that model version's metrics. Tags:
``snapshot_ids``, ``snapshot.latest``, ``model_version.<target>`` (newest snapshot), ``alert``; each version that
scored the newest snapshot gets the tags ``monitoring_alert`` (0/1) and ``monitoring_run``. The whole report is the
run's ``monitoring.json``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from serving.monitoring.result import PREVIOUS, MonitorReport

__all__ = ["LOGGED_METRICS", "log_monitoring"]

LOGGED_METRICS: tuple[str, ...] = (
    "auc", "pr_auc", "log_loss", "brier", "ece", "base_rate", "n", "lift_top5", "precision_top5",
    "precision_audience", "audience_rate",
)
_BAD = re.compile(r"[^0-9A-Za-z_\-. /]")


def _ms(value: str | datetime) -> int:
    ts = pd.Timestamp(value)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
    return int(ts.timestamp() * 1000)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _experiment(client: Any, name: str, artifact_root: str | Path | None) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    location = (Path(artifact_root).resolve() / name).as_uri() if artifact_root is not None else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created meanwhile by another call
        return str(client.get_experiment_by_name(name).experiment_id)


def _metrics(report: MonitorReport) -> list[Any]:
    from mlflow.entities import Metric

    out = []
    for step, snap in enumerate(report.snapshots):
        ts = _ms(snap.as_of)
        for target, quality in snap.targets.items():
            facts = report.versions.get(target, {}).get(snap.models.get(target) or "?")
            model_id = facts.model_id if facts is not None and facts.known else None
            for kind, values in (("realized", quality.realized or {}), ("expected", quality.expected)):
                out += [Metric(f"{target}.{kind}.{m}", float(values[m]), ts, step, model_id=model_id)
                        for m in LOGGED_METRICS if _finite(values.get(m))]
            if facts is not None and _finite(facts.test.get("auc")):
                out.append(Metric(f"{target}.test.auc", float(facts.test["auc"]), ts, step, model_id=model_id))
    position = {s.snapshot_id: (i, _ms(s.as_of)) for i, s in enumerate(report.snapshots)}
    for row in report.drift:
        if _finite(row.psi) and row.snapshot_id in position:
            step, ts = position[row.snapshot_id]
            scope = "previous" if row.scope == PREVIOUS else "reference"
            out.append(Metric(_BAD.sub("_", f"psi.{scope}.{row.column}"), float(row.psi), ts, step))
    now = _ms(report.checked_at)
    out += [Metric("alert", float(report.alert), now, 0), Metric("alerts", float(len(report.alerts)), now, 0),
            Metric("warnings", float(len(report.warnings)), now, 0)]
    return out


def log_monitoring(
    report: MonitorReport, tracking_uri: str, *, experiment: str = "monitoring",
    artifact_root: str | Path | None = None,
) -> str:
    """Log ``report`` as one MLflow run (started and ended at ``report.checked_at``) and return its run id."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    newest = report.snapshots[-1] if report.snapshots else None
    tags = {"alert": str(int(report.alert)), "snapshot_ids": ",".join(s.snapshot_id for s in report.snapshots)}
    if newest is not None:
        tags["snapshot.latest"] = newest.snapshot_id
        tags.update({f"model_version.{t}": str(v) for t, v in newest.models.items() if v})
    start = _ms(report.checked_at)
    run = client.create_run(_experiment(client, experiment, artifact_root), start_time=start, tags=tags,
                            run_name=f"monitor@{report.checked_at}")
    run_id = str(run.info.run_id)
    metrics = _metrics(report)
    for i in range(0, len(metrics), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    client.log_text(run_id, report.to_json(), "monitoring.json")
    client.set_terminated(run_id, end_time=start)
    if newest is not None:
        for target, version in newest.models.items():
            facts = report.versions.get(target, {}).get(version or "?")
            if version and facts is not None and facts.known:
                try:
                    client.set_model_version_tag(target, version, "monitoring_alert", str(int(report.alert)))
                    client.set_model_version_tag(target, version, "monitoring_run", run_id)
                except MlflowException:  # the version went away meanwhile: the run still has everything
                    pass
    return run_id
