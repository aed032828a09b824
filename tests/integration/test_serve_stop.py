"""Stopping ``propensity serve`` stops the server: SIGTERM or SIGINT to the command ends the BentoML arbiter and its
workers, closes the port and leaves no process behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.integration.conftest import TOKEN, free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_to_serve_stops_the_whole_server(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "models").mkdir()
    port = free_port()
    env = {**os.environ, "PROPENSITY_SERVING__API_TOKEN": TOKEN, "PROPENSITY_STORE_PATH": str(tmp_path / "s.sqlite"),
           "PROPENSITY_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "BENTOML_HOME": str(tmp_path / "bh"),
           "BENTOML_DO_NOT_TRACK": "True"}
    command = [str(Path(sys.executable).with_name("propensity")), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--model-dir", str(tmp_path / "models")]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert launcher.poll() is None, f"serve exited with {launcher.returncode}: {log.read_text()[-2000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"the server did not answer /healthz within 180 s: {log.read_text()[-2000:]}")
        tree = psutil.Process(launcher.pid).children(recursive=True)
        assert len(tree) >= 2, tree  # the BentoML arbiter and its worker
        os.kill(launcher.pid, sig)
        assert launcher.wait(timeout=30) == 0, log.read_text()[-2000:]
        _, alive = psutil.wait_procs(tree, timeout=5)
        assert not alive, f"still running after the command stopped: {[p.pid for p in alive]}"
        assert not port_open(port), f"port {port} still answers"
    finally:
        for proc in [*tree, psutil.Process(launcher.pid)] if launcher.poll() is None else tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
