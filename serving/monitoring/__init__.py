"""Models in production: realized quality per snapshot, label-free estimates, drift, and alerts.

- :func:`backtest` (:mod:`.backtest`): one snapshot's scores against what its users did next, with the training label
  definitions and metrics; ``open`` windows get the estimate only.
- :func:`expected_metrics`, :func:`expected_auc` (:mod:`.estimate`): CBPE-style estimates from calibrated scores.
- :func:`reference_profile`, :func:`psi` (:mod:`.drift`): population stability against a reference profile.
- :func:`monitor` (:mod:`.job`): every kept snapshot, drift against the previous snapshot and the training
  reference, and the findings of the thresholds in ``MonitoringSettings`` (:class:`MonitorReport`).
- :func:`log_monitoring` (:mod:`.tracking`): the report in MLflow, a time series per snapshot.
"""

from serving.monitoring.backtest import CLOSED, OPEN, TargetQuality, backtest, realized_labels, window_status
from serving.monitoring.drift import ReferenceProfile, column_psi, psi, reference_profile
from serving.monitoring.estimate import expected_auc, expected_ece, expected_metrics
from serving.monitoring.job import MonitorError, monitor, read_snapshot_records
from serving.monitoring.result import Alert, DriftRow, MixShift, MonitorReport, SnapshotQuality
from serving.monitoring.tracking import log_monitoring
from serving.monitoring.versions import VersionFacts, load_version_bundle, version_facts

__all__ = [
    "CLOSED", "OPEN", "Alert", "DriftRow", "MixShift", "MonitorError", "MonitorReport", "ReferenceProfile",
    "SnapshotQuality", "TargetQuality", "VersionFacts", "backtest", "column_psi", "expected_auc", "expected_ece",
    "expected_metrics", "load_version_bundle", "log_monitoring", "monitor", "psi", "read_snapshot_records",
    "realized_labels", "reference_profile", "version_facts", "window_status",
]
