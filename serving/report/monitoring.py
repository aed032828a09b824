"""The report's "models in production" section and its alert banner, from the latest monitoring report.

Input: the dict of :meth:`serving.monitoring.result.MonitorReport.to_dict` (what ``propensity monitor`` writes to
``<data-dir>/monitoring/latest.json``). Quality per snapshot and target: realized metrics once the label window is
closed, the label-free estimate (``expected``) always; drift rows are PSI against the training reference and the
previous snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from serving.report.data import TARGET_LABELS, ReportError
from serving.report.html import esc, note_block, num, section, table_block, when

__all__ = ["check_monitoring", "monitoring_banner", "monitoring_section"]

TITLE = "Models in production: realized quality and drift"
CLOSED = "closed"


def check_monitoring(report: Any) -> dict[str, Any] | None:
    """``report`` as a dict (None stays None); raises :class:`ReportError` when it is not a monitoring report."""
    if report is None:
        return None
    if not isinstance(report, Mapping) or not isinstance(report.get("snapshots", []), list):
        raise ReportError("monitoring must be the dict of MonitorReport.to_dict() (propensity monitor's latest.json)")
    return dict(report)


def monitoring_banner(report: Mapping[str, Any] | None) -> str:
    """A ``data-alert="monitoring"`` banner listing the alerts when the report alerts, else an empty string."""
    if not report or not report.get("alert"):
        return ""
    alerts = report.get("alerts") or []
    items = "".join(f"<li>{esc(a.get('message', a.get('kind', '')))}</li>" for a in alerts)
    return (f'<div class="warning alert" data-alert="monitoring"><p><strong>Monitoring alert</strong>: '
            f"{len(alerts)} finding(s) on the models in production (checked {esc(_when(report.get('checked_at')))}; "
            f"details in the section below)</p><ul>{items}</ul></div>")


def monitoring_section(report: Mapping[str, Any] | None) -> str:
    """The section: quality, calibration, drift and findings tables, or a note when no report was given."""
    if report is None:
        return section("production", TITLE, [note_block(
            "monitoring", "No monitoring report yet",
            "Run `propensity monitor` after new events arrive: it backtests the published snapshots against what "
            "their users did next, estimates the quality of snapshots whose window is still open, and checks drift; "
            "this section then shows the latest result.", wide=True)])
    return section("production", TITLE, [quality_table(report), calibration_table(report), drift_table(report),
                                         findings_table(report)])


def _when(value: Any) -> str:
    return "n/a" if value is None else when(value)


def _label(target: str) -> str:
    return TARGET_LABELS.get(target, target)


def _test(report: Mapping[str, Any], target: str, version: str | None, metric: str) -> float | None:
    facts = ((report.get("versions") or {}).get(target) or {}).get(version or "?")
    if not facts or not facts.get("known"):
        return None
    return (facts.get("test") or {}).get(metric)


def _gap(value: Any, test: Any) -> str:
    if value is None or test is None:
        return "n/a"
    return num(float(value) - float(test), "+.3f")


def quality_table(report: Mapping[str, Any]) -> str:
    """One row per snapshot and target: realized AUC (closed window) or the estimate (open), and the test AUC."""
    rows = []
    for snap in report.get("snapshots") or []:
        for target, q in (snap.get("targets") or {}).items():
            version = (snap.get("models") or {}).get(target)
            realized, expected = q.get("realized"), q.get("expected") or {}
            closed = q.get("status") == CLOSED
            test = _test(report, target, version, "auc")
            if closed and realized:
                window, auc, gap = "closed", num(realized.get("auc"), ".3f"), _gap(realized.get("auc"), test)
            elif closed:
                window, auc, gap = "closed (one outcome only)", "n/a", "n/a"
            else:
                window = f"open until {_when(q.get('window_close'))}: estimate"
                auc, gap = "estimate only", f"{_gap(expected.get('auc'), test)} (estimate)"
            rows.append([str(snap.get("snapshot_id", "n/a")), _when(snap.get("as_of")), _label(target),
                         str(version or "n/a"), window, num(q.get("users")), auc, num(expected.get("auc"), ".3f"),
                         num(test, ".3f"), gap])
    return table_block(
        "production_quality", "Realized vs expected quality, per snapshot",
        ["snapshot", "scores as of", "model", "version", "label window", "users", "realized AUC",
         "expected AUC (estimate)", "test AUC of the version", "gap to test"], rows,
        "Realized: the snapshot's scores against what its users did next, once the whole label window is covered "
        "by events. Expected: the label-free estimate from the scores alone (what the AUC would be if the "
        "predicted chances are right); while the window is open it is the only number. Gap: realized (or "
        "estimate) minus the AUC the version had on its test cutoff; monitoring alerts when the realized AUC is "
        f"more than {num((report.get('thresholds') or {}).get('auc_drop'), '.2f')} below it.",
    )


def calibration_table(report: Mapping[str, Any]) -> str:
    """Per target, the calibration error (ECE) of the latest closed snapshot with realized metrics."""
    latest: dict[str, tuple[Mapping[str, Any], Mapping[str, Any]]] = {}
    targets: list[str] = []
    for snap in report.get("snapshots") or []:
        for target, q in (snap.get("targets") or {}).items():
            targets += [] if target in targets else [target]
            if q.get("status") == CLOSED and q.get("realized"):
                latest[target] = (snap, q)
    limit = (report.get("thresholds") or {}).get("ece_max")
    rows = []
    for target in targets:
        if target not in latest:
            rows.append([_label(target), "no closed snapshot yet", "n/a", "n/a", "n/a", "n/a", "n/a"])
            continue
        snap, q = latest[target]
        version = (snap.get("models") or {}).get(target)
        ece = q["realized"].get("ece")
        verdict = "n/a" if ece is None or limit is None else ("above the limit" if ece > limit else "ok")
        rows.append([_label(target), str(snap.get("snapshot_id", "n/a")), str(version or "n/a"), num(ece, ".4f"),
                     num((q.get("expected") or {}).get("ece"), ".4f"), num(_test(report, target, version, "ece"),
                                                                           ".4f"), verdict])
    return table_block(
        "production_calibration", "Calibration of the latest closed snapshot",
        ["model", "snapshot", "version", "realized ECE", "noise floor (expected ECE)", "test ECE", "verdict"], rows,
        "ECE: the mean gap between predicted chances and what happened, lower is better. The noise floor is what "
        f"a perfectly calibrated model would show on that many users. Limit {num(limit, '.3f')}.", wide=False,
    )


def _drift_rows(report: Mapping[str, Any]) -> list[list[str]]:
    drift: Sequence[Mapping[str, Any]] = report.get("drift") or []
    ordered = sorted(drift, key=lambda r: (r.get("scope", ""), r.get("target", ""), r.get("kind") != "score",
                                           -(r.get("psi") or 0.0)))
    rows = [[str(r.get("scope", "")), str(r.get("baseline", "")), str(r.get("snapshot_id", "")),
             _label(str(r.get("target", ""))), str(r.get("column", "")), str(r.get("kind", "")),
             num(r.get("psi"), ".3f"),
             f"{num(r.get('missing_baseline'), '.1%')} -> {num(r.get('missing_now'), '.1%')}",
             str(r.get("level", "n/a"))] for r in ordered]
    for m in report.get("mix") or []:
        rows.append([str(m.get("scope", "")), str(m.get("baseline", "")), str(m.get("snapshot_id", "")), "-",
                     str(m.get("column", "")), "segment mix", num(m.get("psi"), ".3f"), "-", str(m.get("level"))])
    return rows


def drift_table(report: Mapping[str, Any]) -> str:
    """PSI of the scores and top features against the training reference and the previous snapshot."""
    t = report.get("thresholds") or {}
    return table_block(
        "production_drift", "Drift of scores and inputs",
        ["against", "baseline", "snapshot", "model", "column", "kind", "PSI", "missing (baseline -> now)",
         "verdict"], _drift_rows(report),
        "PSI (population stability index) compares a column's distribution with its baseline: the model's "
        "training reference or the previous snapshot. Verdict: warn at PSI "
        f"{num(t.get('psi_warn'), '.2f')}, alert at {num(t.get('psi_alert'), '.2f')} (an alert on a score makes "
        "monitoring alert; a feature or segment-mix shift only warns).",
    )


def findings_table(report: Mapping[str, Any]) -> str:
    rows = [[str(a.get("level", "")), str(a.get("kind", "")), str(a.get("message", ""))]
            for a in [*(report.get("alerts") or []), *(report.get("warnings") or [])]]
    rows += [["note", "-", str(n)] for n in report.get("notes") or []]
    return table_block(
        "production_findings", "Monitoring findings",
        ["level", "kind", "what was found"], rows,
        f"Checked {_when(report.get('checked_at'))} on events from {_when(report.get('events_start'))} to "
        f"{_when(report.get('events_end'))}. {report.get('summary', '')}",
    )
