"""The BentoML 1.4 service: ``bentoml serve propensity.service.bento:PropensityService``.

The routes are a plain ASGI app (:mod:`serving.http.app`) mounted with ``@bentoml.asgi_app``: BentoML's typed
``@bentoml.api`` path costs tens of milliseconds at the tail on a small machine (see docs/architecture.md, "Serving"),
while the ad system's ``/lookup`` must answer in a few. BentoML still provides the process model (workers, which
share ``PROMETHEUS_MULTIPROC_DIR``), ``/livez`` and the Bento packaging. :class:`serving.http.app.FastPathMiddleware`
answers ``/lookup`` (the same endpoint, ahead of BentoML's router), ``/healthz``, ``/readyz`` (so readiness carries
its reasons), ``/metrics`` and the API documentation (``/openapi.json``, ``/docs``), and counts and times every
request by route and status (:mod:`serving.http.metrics`): BentoML's own request metrics are turned off, they would
count the same requests again, labelled by raw path. ``/events`` appends to the event log at
``Settings.events_log_path`` (opened at start; when it cannot be, ``/events`` answers 503, the rest serves, and the
log is tried again at every model check until it opens).

Configuration comes from :func:`propensity.service.options.settings_from_env` (see that module for the variables).
Models come, in this order of preference, from ``PROPENSITY_MODEL_DIR``, from the pinned ``propensity_champions``
model when running from a built Bento (see :mod:`propensity.service.pin`), else from the MLflow registry's
``@champion`` aliases, checked every few seconds.
"""

from __future__ import annotations

import functools
import gc
import logging
from pathlib import Path
from typing import Any

import bentoml

from propensity.service.launch import serve_args, serve_command
from propensity.service.options import ServiceOptions, service_options, settings_from_env
from serving.activation.actions import ActivationConfig
from serving.http.app import AppState, FastPathMiddleware, build_app
from serving.http.metrics import ServiceMetrics, watch_monitoring
from serving.http.models import DirectorySource, ModelSource, RegistrySource
from serving.http.runtime import ServiceRuntime

__all__ = ["PropensityService", "serve_args", "serve_command"]

log = logging.getLogger(__name__)

_STATE = AppState()


@functools.cache
def _metrics() -> ServiceMetrics:
    """One set of counters per process (Prometheus refuses duplicate registrations)."""
    return ServiceMetrics()


def _model_source(tracking_uri: str, artifact_root: Path, options: ServiceOptions) -> ModelSource:
    if options.model_dir is not None:
        return DirectorySource(options.model_dir)
    if PropensityService.bento is not None:  # running from a built Bento: the models pinned into it
        from propensity.service.pin import pinned_model_dir

        return DirectorySource(pinned_model_dir())
    return RegistrySource(tracking_uri, artifact_root)


def _open_events_log(path: Path, options: dict[str, Any]) -> tuple[object | None, str | None]:
    """The event log ``/events`` appends to (SQLite at ``path``, or Redis per ``options``: ``Settings.
    event_log_options``), or (None, why) when it cannot be opened (the other routes still serve)."""
    from features.events.backends import EventLogError, open_event_log

    try:
        return open_event_log(path, **options), None
    except EventLogError as exc:
        return None, str(exc)


@bentoml.service(
    workers=1,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},  # FastPathMiddleware records the request metrics and serves /metrics
    tracing={"excluded_urls": ["/lookup", "/events", "/healthz", "/readyz", "/metrics"]},
)
@bentoml.asgi_app(build_app(_STATE), path="/")
class PropensityService:
    """Score lookups, fresh scoring and readiness for the ad system and batch jobs (routes in
    :mod:`serving.http.app`)."""

    def __init__(self) -> None:
        from serving.store.base import open_store

        settings = settings_from_env()
        options = service_options(settings)  # refuses to start without a token unless explicitly allowed
        if options.allow_no_auth:
            log.warning("authentication is disabled (PROPENSITY_SERVING__ALLOW_NO_AUTH): every caller is trusted")
        source = _model_source(settings.tracking_uri, settings.artifact_root, options)
        open_fn = functools.partial(
            open_store, settings.store_path, settings.redis_url, keep=settings.serving.keep_snapshots
        )
        _STATE.activation = ActivationConfig.from_settings(settings.activation)
        _STATE.campaigns_dir, _STATE.campaigns = settings.campaigns_dir.resolve(), settings.campaigns
        _STATE.metrics = _metrics()
        _STATE.monitoring_file = (settings.monitoring_dir / "latest.json").resolve()
        watch_monitoring(_STATE.monitoring_file)  # /metrics: propensity_model_alert from `propensity monitor`
        self.runtime = ServiceRuntime.create(options, open_fn, source, metrics=_STATE.metrics)
        self._settings = settings
        if not self._connect_events_log():  # tried again at every model check until it opens
            self.runtime.upkeep.append(self._connect_events_log)
        _STATE.runtime = self.runtime
        ready, doc = self.runtime.readiness()
        log.info("propensity service started (ready=%s, models=%s, source=%s)", ready, doc["models"], source.kind)
        for error in doc["errors"]:
            log.warning("not ready: %s", error)

    def _connect_events_log(self) -> bool:
        """Open the event log ``/events`` appends to and, with fresh scores on, rescore from it; True once it is open.

        A log that cannot be opened (Redis not up yet, a folder that cannot be created) leaves ``/events`` answering
        503 with the reason and the stored rows served; the reload loop calls this again at every model check, so
        the service takes the log up once it can be opened, without a restart."""
        if _STATE.events_log is not None:
            return True
        settings = self._settings
        before = _STATE.events_log_error
        events_log, _STATE.events_log_error = _open_events_log(settings.events_log_path.resolve(),
                                                               settings.event_log_options)
        if events_log is None:
            if _STATE.events_log_error != before:  # once per reason, not at every check
                log.warning("/events is unavailable (tried again at every model check): %s", _STATE.events_log_error)
            return False
        if settings.serving.fresh_scores:
            from serving.fresh import FreshScorer

            self.runtime.fresh = FreshScorer(events_log, settings.online_dir.resolve(), _STATE.activation,
                                             ttl_s=settings.serving.fresh_ttl_s, metrics=self.runtime.metrics)
        _STATE.events_log = events_log
        if self._connect_events_log in self.runtime.upkeep:
            self.runtime.upkeep.remove(self._connect_events_log)
            log.info("the event log is open now: /events takes events again")
        return True

    @bentoml.on_startup
    async def _start_reload(self) -> None:
        self.runtime.start()
        gc.freeze()  # the server's own long-lived objects, built after __init__, out of the collector's scans

    @bentoml.on_shutdown
    async def _shutdown(self) -> None:
        _STATE.runtime = None
        await self.runtime.stop()
        if _STATE.events_log is not None:
            _STATE.events_log.close()  # after an append in progress has committed


PropensityService.add_asgi_middleware(FastPathMiddleware, state=_STATE)
