"""Start the BentoML server for ``propensity serve``: command line and environment built from the settings.

The worker processes rebuild the settings from ``PROPENSITY_SETTINGS_JSON`` (see
:mod:`propensity.service.options`); relative paths are made absolute first, so the server resolves them exactly as
the command that started it did. The token travels in ``PROPENSITY_SERVING__API_TOKEN`` (or stays in its file),
never on the command line. The server runs in its own process group, and stopping ``propensity serve`` (SIGTERM,
SIGINT, SIGHUP) stops the whole group (:func:`supervise`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
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
    serving = settings.serving.model_copy(update={"api_token_file": fix(settings.serving.api_token_file),
                                                  "events_log": fix(settings.serving.events_log)})
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


STOP_TIMEOUT_S = 20.0
"""Seconds the server's process group gets to stop after SIGTERM before it is killed."""
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve_command(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    workers: int = 1,
    *,
    model_dir: Path | None = None,
    bento: str | None = None,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> int:
    """Run the server in the foreground until it exits or this process gets SIGTERM, SIGINT (Ctrl-C) or SIGHUP;
    returns the server's exit code, or 0 when it was stopped on request.

    Binds ``settings.serving.host`` (127.0.0.1 by default) unless ``host`` is given. The server runs in its own
    session and process group (the BentoML arbiter and its workers), so a stop request reaches all of it: see
    :func:`supervise`.
    """
    argv, env = serve_args(settings, host, port, workers, model_dir=model_dir, bento=bento)
    return supervise(argv, env, stop_timeout_s=stop_timeout_s)


def supervise(argv: list[str], env: Mapping[str, str], *, stop_timeout_s: float = STOP_TIMEOUT_S,
              poll_s: float = 0.2) -> int:
    """Run ``argv`` as the leader of a new process group and wait for it.

    On SIGTERM, SIGINT or SIGHUP to this process (the handlers are installed only when called from the main
    thread), SIGTERM goes to the whole group; what is still running ``stop_timeout_s`` seconds later (or at once,
    on a second signal) gets SIGKILL. When the leader exits by itself, processes it left in the group are stopped
    the same way. Returns the leader's exit code, or 0 when it was stopped on request.
    """
    requested: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        requested.append(signum)

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in _STOP_SIGNALS:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        proc = subprocess.Popen(argv, env=dict(env), start_new_session=True)
        deadline: float | None = None
        while True:
            if requested and deadline is None:
                _signal_group(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + stop_timeout_s
            try:
                code = proc.wait(timeout=poll_s)
                break
            except subprocess.TimeoutExpired:
                if deadline is not None and (len(requested) > 1 or time.monotonic() > deadline):
                    _signal_group(proc.pid, signal.SIGKILL)
                    code = proc.wait()
                    break
        _stop_group(proc.pid, stop_timeout_s, poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    return 0 if requested else code


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group ``pgid``; False when the group has no process left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _stop_group(pgid: int, timeout_s: float, poll_s: float) -> None:
    """Stop what is left of the process group ``pgid`` (its leader already reaped): SIGTERM, then SIGKILL after
    ``timeout_s`` seconds."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _signal_group(pgid, 0):
            return
        time.sleep(poll_s)
    _signal_group(pgid, signal.SIGKILL)
