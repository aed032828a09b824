"""Options of the HTTP service, resolved once from :class:`propensity.config.Settings` and the environment.

The BentoML worker processes are started by ``bentoml serve``, so they cannot receive a Settings object: the
parent (``propensity serve``, see :mod:`propensity.service.launch`) passes its resolved settings as JSON in
``PROPENSITY_SETTINGS_JSON`` and the worker rebuilds them with :func:`settings_from_env`. Without that variable
the settings are read as usual (defaults, ``propensity.toml``, ``PROPENSITY_*`` variables).

Settings used here (each also readable from the environment of the worker itself):

- ``serving.allow_no_auth`` / ``PROPENSITY_SERVING__ALLOW_NO_AUTH``: run without a bearer token (explicit opt-in);
- ``serving.reload_interval_s`` / ``PROPENSITY_SERVING__RELOAD_INTERVAL_S``: seconds between champion checks;
- ``serving.model_dir`` / ``PROPENSITY_MODEL_DIR``: serve the bundles pinned in this directory instead of
  following the registry (a built Bento sets the variable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from propensity.config import Settings, load_settings
from serving.http.options import ServiceOptions

SETTINGS_ENV = "PROPENSITY_SETTINGS_JSON"
ALLOW_NO_AUTH_ENV = "PROPENSITY_SERVING__ALLOW_NO_AUTH"
RELOAD_INTERVAL_ENV = "PROPENSITY_SERVING__RELOAD_INTERVAL_S"
MODEL_DIR_ENV = "PROPENSITY_MODEL_DIR"
TOKEN_ENV = "PROPENSITY_SERVING__API_TOKEN"

_TRUE = {"1", "true", "yes", "on"}


class ServiceConfigError(RuntimeError):
    """The service cannot start with this configuration; the message says what to set."""

    exit_code = 2  # CLI exit code: a bad setting


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """The settings passed by the parent process in ``PROPENSITY_SETTINGS_JSON``, else the usual sources."""
    environ = os.environ if environ is None else environ
    raw = environ.get(SETTINGS_ENV)
    if not raw:
        return load_settings()
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ServiceConfigError(f"{SETTINGS_ENV} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ServiceConfigError(f"{SETTINGS_ENV} must hold a JSON object of settings")
    return Settings(**data)


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE


def _positive_float(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ServiceConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ServiceConfigError(f"{name} must be > 0 seconds, got {raw!r}")
    return value


def service_options(settings: Settings, environ: Mapping[str, str] | None = None) -> ServiceOptions:
    """Resolve the service options; raise :class:`ServiceConfigError` when no token is configured and running
    without authentication was not explicitly allowed, or when the token file cannot be read."""
    environ = os.environ if environ is None else environ
    try:
        token = settings.api_token_value()
    except OSError as exc:
        raise ServiceConfigError(f"cannot read the API token file {settings.serving.api_token_file}: {exc}") from None
    allow_no_auth = settings.serving.allow_no_auth or _flag(environ, ALLOW_NO_AUTH_ENV)
    if token is None and not allow_no_auth:
        raise ServiceConfigError(
            "no API token configured: set PROPENSITY_SERVING__API_TOKEN or PROPENSITY_SERVING__API_TOKEN_FILE "
            f"(a file holding the token), or set {ALLOW_NO_AUTH_ENV}=1 to run without authentication"
        )
    model_dir = environ.get(MODEL_DIR_ENV, "").strip() or settings.serving.model_dir
    s = settings.serving
    return ServiceOptions(
        token=token,
        allow_no_auth=allow_no_auth and token is None,
        max_request_bytes=s.max_request_bytes,
        lookup_max_ids=s.lookup_max_ids,
        score_max_users=s.score_max_users,
        score_max_events=s.score_max_events,
        future_tolerance_s=settings.validation.future_tolerance_hours * 3600.0,
        reload_interval_s=_positive_float(environ, RELOAD_INTERVAL_ENV, settings.serving.reload_interval_s),
        model_dir=Path(model_dir) if model_dir else None,
    )
