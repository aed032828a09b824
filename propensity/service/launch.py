"""Start the BentoML server for ``propensity serve``: command line and environment built from the settings.

The worker processes rebuild the settings from ``PROPENSITY_SETTINGS_JSON`` (see
:mod:`propensity.service.options`); relative paths are made absolute first, so the server resolves them exactly as
the command that started it did. The token travels in ``PROPENSITY_SERVING__API_TOKEN`` (or stays in its file),
never on the command line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from propensity.config import Settings
from propensity.service.options import MODEL_DIR_ENV, RELOAD_INTERVAL_ENV, SETTINGS_ENV, TOKEN_ENV, service_options

SERVICE_TARGET = "propensity.service.bento:PropensityService"
SERVICE_NAME = "PropensityService"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def absolute_settings(settings: Settings, base: Path | None = None) -> Settings:
    """A copy of ``settings`` with every relative path (and a relative SQLite tracking URI) resolved from ``base``."""
    base = (base or Path.cwd()).resolve()

    def fix(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(base / uri.removeprefix("sqlite:///"))
    serving = settings.serving.model_copy(update={"api_token_file": fix(settings.serving.api_token_file)})
    return settings.model_copy(
        update={
            "data_dir": fix(settings.data_dir),
            "artifact_root": fix(settings.artifact_root),
            "store_path": fix(settings.store_path),
            "tracking_uri": uri,
            "serving": serving,
        }
    )


def serve_args(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    *,
    model_dir: Path | None = None,
    reload_interval_s: float | None = None,
    bento: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` that run the service with these settings.

    ``host``/``port`` default to ``settings.serving.host``/``port`` (127.0.0.1:3000); ``workers`` is the number of
    server processes; ``model_dir`` pins the models to a directory of bundles; ``bento`` serves a built Bento
    (tag or path) instead of the source tree. Raises :class:`propensity.service.options.ServiceConfigError` when no
    token is configured and running without one was not explicitly allowed.
    """
    env = dict(os.environ if environ is None else environ)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if model_dir is not None:
        env[MODEL_DIR_ENV] = str(Path(model_dir).resolve())
    if reload_interval_s is not None:
        env[RELOAD_INTERVAL_ENV] = str(reload_interval_s)
    service_options(settings, env)  # fail here, with the message, rather than in every worker
    resolved = absolute_settings(settings)
    env[SETTINGS_ENV] = resolved.model_dump_json(exclude={"serving": {"api_token"}})
    if settings.serving.api_token is not None:
        env[TOKEN_ENV] = settings.serving.api_token.get_secret_value()
    options = f"services.{SERVICE_NAME}.workers={int(workers)}"
    env["BENTOML_CONFIG_OPTIONS"] = (env.get("BENTOML_CONFIG_OPTIONS", "") + " " + options).strip()
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    if bento is None:  # serve this source tree; a Bento brings its own copy of the code
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "bentoml", "serve", bento or SERVICE_TARGET]
    argv += ["--host", host or settings.serving.host, "--port", str(port or settings.serving.port)]
    if bento is None:
        argv += ["--working-dir", str(PROJECT_ROOT)]
    return argv, env


def serve_command(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    *,
    model_dir: Path | None = None,
    bento: str | None = None,
) -> int:
    """Run the server in the foreground until it exits or Ctrl-C; returns its exit code.

    Binds ``settings.serving.host`` (127.0.0.1 by default) unless ``host`` is given.
    """
    argv, env = serve_args(settings, host, port, workers, model_dir=model_dir, bento=bento)
    proc = subprocess.Popen(argv, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
