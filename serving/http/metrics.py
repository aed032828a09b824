"""Prometheus metrics of the service (``GET /metrics``, text exposition format).

Counted per request (every worker process adds to the same totals under BentoML, whose workers share
``PROMETHEUS_MULTIPROC_DIR``):

- ``propensity_http_requests_total{route, status}`` and ``propensity_http_request_duration_seconds{route, status}``
  (histogram, seconds from the request reaching the service's middleware to the last byte of the answer); ``route``
  is one of :data:`ROUTES` or ``other`` (unknown paths share one label, so a scan cannot grow the series);
- ``propensity_lookup_users_total{outcome}``: users asked for in ``/lookup``, ``found`` or ``not_found`` in the
  served snapshot;
- ``propensity_store_errors_total{kind}``: ``/lookup`` calls the store failed (``error``) or that were refused
  because too many lookups already waited for a store that does not answer (``busy``);
- ``propensity_score_users_total``: users scored by ``/score``; ``propensity_model_reloads_total{result}``;
- ``propensity_events_ingested_total{result}``: events of the ``/events`` requests answered 200, ``accepted`` (stored
  now) or ``duplicate`` (already in the event log: an idempotent repeat);
- ``propensity_fresh_users_total{outcome}``: users of ``/lookup`` answered from their events newer than the served
  snapshot, ``rescored`` (features, models and action recomputed for the lookup) or ``reused`` (a row rescored
  earlier and still valid, see :mod:`serving.fresh`); ``propensity_fresh_rescore_duration_seconds`` (histogram,
  seconds per rescoring call, whatever its number of users: reading the events, features, models, action and
  encoding); ``propensity_fresh_paused_total``: times the event log could not be read, so the stored rows were
  served instead of fresh ones.

Read when scraped, from the worker that answers the scrape (see :func:`state_families`):

- ``propensity_ready`` (1 or 0), ``propensity_snapshot_age_seconds`` (now minus the served snapshot's publish time),
  ``propensity_snapshot_created_timestamp_seconds``, ``propensity_snapshot_users``;
- ``propensity_model_version_info{target, version, source}`` (value 1) for each loaded model;
- ``propensity_lookups_in_flight``: lookups waiting for or reading a network store (Redis) in this worker's lookup
  threads (always 0 for the SQLite store, read on the event loop: see :mod:`serving.http.runtime`);
- with fresh scores on: ``propensity_event_log_last_seq`` (sequence number of the newest event in the event log) and
  ``propensity_events_after_snapshot`` (logged events that the served snapshot's history does not hold: their users
  are rescored at lookup until the next batch takes them in; absent while the snapshot has no history).
- ``propensity_model_alert`` (1 when the latest ``propensity monitor`` report alerts, else 0) and
  ``propensity_monitoring_age_seconds`` (now minus the report's ``checked_at``), from the report file the entry point
  names with :func:`watch_monitoring` (``<data_dir>/monitoring/latest.json``); both absent while there is no readable
  report. The file is parsed again only when its modification time or size changes (:class:`MonitoringReportFile`).

The hot path costs one dictionary read, one counter increment and one histogram observation per request (a few
microseconds): the labelled children are created once per (route, status) and kept.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serving.store.records import SnapshotInfo

__all__ = [
    "BUCKETS", "CONTENT_TYPE", "ROUTES", "MonitoringReportFile", "ServiceMetrics", "exposition", "route_label",
    "state_families", "watch_monitoring",
]

log = logging.getLogger(__name__)

ROUTES = frozenset({
    "/lookup", "/score", "/audience", "/events", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs",
    "/docs.json", "/", "/livez", "/schema.json",
})
"""Paths counted under their own ``route`` label; any other path is counted as ``other``."""
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Latency histogram bounds in seconds: fine below 10 ms, where ``/lookup`` answers."""
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_PREPARED = (("/lookup", 200), ("/score", 200), ("/audience", 200), ("/healthz", 200), ("/readyz", 200))


def route_label(path: str) -> str:
    """The ``route`` label of a request path."""
    return path if path in ROUTES else "other"


class ServiceMetrics:
    """The service's counters and histograms in ``registry`` (Prometheus' default one unless given; one instance per
    process, as Prometheus refuses two metrics of one name). Every method is cheap and thread-safe."""

    def __init__(self, namespace: str = "propensity", registry: Any = None) -> None:
        from prometheus_client import REGISTRY, Counter, Histogram

        reg = REGISTRY if registry is None else registry
        self._requests = Counter("http_requests", "HTTP requests answered, by route and status",
                                 ["route", "status"], namespace=namespace, registry=reg)
        self._duration = Histogram("http_request_duration_seconds", "HTTP request duration in seconds, by route and "
                                   "status", ["route", "status"], namespace=namespace, buckets=BUCKETS, registry=reg)
        users = Counter("lookup_users", "Users asked for in /lookup, by outcome (found or not_found in the served "
                        "snapshot)", ["outcome"], namespace=namespace, registry=reg)
        self._found = users.labels(outcome="found")
        self._not_found = users.labels(outcome="not_found")
        errors = Counter("store_errors", "/lookup calls the store failed (error) or refused while the store hangs "
                         "(busy)", ["kind"], namespace=namespace, registry=reg)
        self._store_error = errors.labels(kind="error")
        self._store_busy = errors.labels(kind="busy")
        self._scored = Counter("score_users", "Users scored by /score", namespace=namespace, registry=reg)
        self._reloads = Counter("model_reloads", "Model reload checks, by result", ["result"], namespace=namespace,
                                registry=reg)
        ingested = Counter("events_ingested", "Events of the /events requests answered 200, by result (accepted: "
                           "stored now; duplicate: already in the event log)", ["result"], namespace=namespace,
                           registry=reg)
        self._accepted = ingested.labels(result="accepted")
        self._duplicate = ingested.labels(result="duplicate")
        fresh = Counter("fresh_users", "Users of /lookup answered from events newer than the served snapshot, by "
                        "outcome (rescored now, or reused: a rescored row still valid)", ["outcome"],
                        namespace=namespace, registry=reg)
        self._rescored = fresh.labels(outcome="rescored")
        self._reused = fresh.labels(outcome="reused")
        self._rescore_duration = Histogram("fresh_rescore_duration_seconds", "Seconds per rescoring call (every user "
                                           "it rescored)", namespace=namespace, buckets=BUCKETS, registry=reg)
        self._fresh_paused = Counter("fresh_paused", "Times the event log could not be read, so the stored rows were "
                                     "served instead of fresh ones", namespace=namespace, registry=reg)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        for route, status in _PREPARED:  # zero series from the start: rate() works from the first request
            self._child(route, status)

    def _child(self, route: str, status: int) -> tuple[Any, Any]:
        pair = self._children.get((route, status))
        if pair is None:
            code = str(status)
            pair = self._children[(route, status)] = (
                self._requests.labels(route=route, status=code), self._duration.labels(route=route, status=code)
            )
        return pair

    def request(self, route: str, status: int, seconds: float) -> None:
        """One answered request: ``route`` from :func:`route_label`, HTTP ``status``, duration in seconds."""
        pair = self._children.get((route, status)) or self._child(route, status)
        pair[0].inc()
        pair[1].observe(seconds)

    def lookup(self, found: int, not_found: int) -> None:
        self._found.inc(found)
        self._not_found.inc(not_found)

    def store_error(self) -> None:
        self._store_error.inc()

    def store_busy(self) -> None:
        self._store_busy.inc()

    def scored(self, n: int) -> None:
        self._scored.inc(n)

    def reload(self, result: str) -> None:
        self._reloads.labels(result=result).inc()

    def ingested(self, accepted: int, duplicates: int) -> None:
        self._accepted.inc(accepted)
        self._duplicate.inc(duplicates)

    def fresh(self, rescored: int, reused: int, seconds: float | None) -> None:
        """One rescoring call: ``rescored`` users recomputed in ``seconds`` (None when none was), ``reused`` served
        again."""
        self._rescored.inc(rescored)
        self._reused.inc(reused)
        if seconds is not None:
            self._rescore_duration.observe(seconds)

    def fresh_paused(self) -> None:
        self._fresh_paused.inc()


class NoMetrics:
    """Stands in for :class:`ServiceMetrics` when metrics are off."""

    def request(self, route: str, status: int, seconds: float) -> None: ...
    def lookup(self, found: int, not_found: int) -> None: ...
    def store_error(self) -> None: ...
    def store_busy(self) -> None: ...
    def scored(self, n: int) -> None: ...
    def reload(self, result: str) -> None: ...
    def ingested(self, accepted: int, duplicates: int) -> None: ...
    def fresh(self, rescored: int, reused: int, seconds: float | None) -> None: ...
    def fresh_paused(self) -> None: ...


def state_families(
    *,
    ready: bool,
    snapshot: SnapshotInfo | None,
    versions: Mapping[str, str | None],
    source: str,
    in_flight: int,
    log_positions: tuple[int, int | None] | None = None,
    now: datetime | None = None,
) -> list[Any]:
    """The scrape-time gauges (see the module docstring) of one worker's state; ``log_positions`` = (the event log's
    last seq, the served history's ``log_seq`` or None without a history), None when fresh scores are off or the log
    did not answer; ``now`` defaults to the clock."""
    from prometheus_client.core import GaugeMetricFamily

    now = now or datetime.now(UTC)
    out = [GaugeMetricFamily("propensity_ready", "1 when every model is loaded and a snapshot is served",
                             value=int(ready))]
    if snapshot is not None:
        created = snapshot.created_at if snapshot.created_at.tzinfo else snapshot.created_at.replace(tzinfo=UTC)
        out += [
            GaugeMetricFamily("propensity_snapshot_age_seconds", "Seconds since the served snapshot was published",
                              value=max((now - created).total_seconds(), 0.0)),
            GaugeMetricFamily("propensity_snapshot_created_timestamp_seconds",
                              "Publish time of the served snapshot, Unix seconds", value=created.timestamp()),
            GaugeMetricFamily("propensity_snapshot_users", "Users in the served snapshot", value=snapshot.rows),
        ]
    info = GaugeMetricFamily("propensity_model_version_info", "Loaded model version per target (value 1)",
                             labels=["target", "version", "source"])
    for target, version in sorted(versions.items()):
        if version is not None:
            info.add_metric([target, str(version), source], 1)
    out.append(info)
    out.append(GaugeMetricFamily("propensity_lookups_in_flight", "Lookups waiting for or reading the store in the "
                                 "worker that answered this scrape", value=in_flight))
    if log_positions is not None:
        last, covered = log_positions
        out.append(GaugeMetricFamily("propensity_event_log_last_seq", "Sequence number of the newest event in the "
                                     "event log", value=last))
        if covered is not None:
            out.append(GaugeMetricFamily("propensity_events_after_snapshot", "Logged events the served snapshot's "
                                         "history does not hold (their users are rescored at lookup)",
                                         value=max(last - covered, 0)))
    return out


class MonitoringReportFile:
    """The latest monitoring report (``propensity monitor`` writes ``<data_dir>/monitoring/latest.json``), read when
    scraped: only its top-level ``alert`` (bool) and ``checked_at`` (ISO 8601) are used. The parsed values are kept
    until the file (inode, modification time or size) changes; a missing, unreadable or half-written file gives no
    gauges (and is read again at the next scrape)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key: tuple[int, int, int] | None = None
        self._value: tuple[bool, datetime | None] | None = None

    def read(self) -> tuple[bool, datetime | None] | None:
        """``(alert, checked_at)`` of the current report, or None when there is no readable one."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if key == self._key:
                return self._value
            try:
                doc = json.loads(self.path.read_bytes())
                alert = doc["alert"]
                if not isinstance(alert, bool):
                    raise ValueError(f"'alert' is {alert!r}, not a boolean")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("monitoring report %s not readable: %s", self.path, exc)
                self._key = self._value = None
                return None
            self._key, self._value = key, (alert, _timestamp(doc.get("checked_at")))
            return self._value

    def families(self, now: datetime | None = None) -> list[Any]:
        """``propensity_model_alert`` and ``propensity_monitoring_age_seconds`` (none without a readable report)."""
        from prometheus_client.core import GaugeMetricFamily

        value = self.read()
        if value is None:
            return []
        alert, checked_at = value
        out = [GaugeMetricFamily("propensity_model_alert", "1 when the latest monitoring report alerts (realized "
                                 "quality, calibration or drift past its threshold), else 0", value=int(alert))]
        if checked_at is not None:
            age = ((now or datetime.now(UTC)) - checked_at).total_seconds()
            out.append(GaugeMetricFamily("propensity_monitoring_age_seconds", "Seconds since the latest monitoring "
                                         "report was made", value=max(age, 0.0)))
        return out


def _timestamp(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


_monitoring: MonitoringReportFile | None = None


def watch_monitoring(path: Path | None) -> None:
    """Make every scrape of this process carry the gauges of the monitoring report at ``path`` (None: none)."""
    global _monitoring
    _monitoring = None if path is None else MonitoringReportFile(path)


class _Families:
    def __init__(self, families: Iterable[Any]) -> None:
        self._families = list(families)

    def collect(self) -> list[Any]:
        return self._families


def _histogram_order(sample: Any) -> tuple[Any, ...]:
    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le"))
    if sample.name.endswith("_bucket"):
        return labels, 0, float(sample.labels.get("le", 0))
    return labels, (1 if sample.name.endswith("_count") else 2), 0.0


def exposition(extra: Iterable[Any] = ()) -> bytes:
    """The text exposition of every counter and histogram (summed over the worker processes when
    ``PROMETHEUS_MULTIPROC_DIR`` is set, as under BentoML), followed by the ``extra`` metric families and the
    monitoring report's gauges (see :func:`watch_monitoring`)."""
    from prometheus_client import REGISTRY, generate_latest

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and os.path.isdir(directory):
        from prometheus_client.multiprocess import MultiProcessCollector

        collected = list(MultiProcessCollector(None, path=directory).collect())
        for metric in collected:
            if metric.type == "histogram":  # buckets, then count, then sum, per label set
                metric.samples.sort(key=_histogram_order)
        text = generate_latest(_Families(collected))  # type: ignore[arg-type]
    else:
        text = generate_latest(REGISTRY)
    monitoring = _monitoring
    extra = [*extra, *(monitoring.families() if monitoring is not None else ())]
    return text + generate_latest(_Families(extra))  # type: ignore[arg-type]
