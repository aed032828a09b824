"""Shared pytest fixtures.

``redis_server`` (session scope) runs a private ``redis-server`` on a free loopback port, without persistence;
``durable_redis_server`` another one with ``appendonly yes`` and ``appendfsync always`` (the event log refuses a
Redis without them), whose data survives :meth:`RedisServer.kill_9` and a restart. The fixture finds the
binary on PATH or at /usr/bin/redis-server; when missing and we are root with apt-get available it installs
Debian's ``redis-server`` package (set ``PROPENSITY_TEST_NO_APT=1`` to forbid that); otherwise the tests
that need it are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Self

import pytest


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _redis_ping(port: int, timeout: float = 0.2) -> bool:
    """True when a Redis server answers PING on 127.0.0.1:port (raw protocol, no client library needed)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def find_debian_binary(binary: str, package: str, timeout: float = 900) -> tuple[str | None, str]:
    """(path of ``binary`` or None, reason when None); installs Debian's ``package`` with apt-get when it is
    missing, we are root and ``PROPENSITY_TEST_NO_APT`` is not set."""
    found = shutil.which(binary) or shutil.which(f"/usr/bin/{binary}")
    if found:
        return found, ""
    if os.environ.get("PROPENSITY_TEST_NO_APT"):
        return None, f"{binary} not found and PROPENSITY_TEST_NO_APT is set"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"{binary} not found (install Debian's {package} package to run these tests)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            return None, f"{binary} not found and `{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}"
    found = shutil.which(binary) or shutil.which(f"/usr/bin/{binary}")
    return (found, "") if found else (None, f"apt-get installed {package} but no {binary} binary found")


def find_redis_server() -> tuple[str | None, str]:
    """(path of redis-server or None, reason when None)."""
    return find_debian_binary("redis-server", "redis-server", timeout=600)


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """Debian's Chromium (installed when missing and allowed), or the test is skipped with the reason."""
    path, reason = find_debian_binary("chromium", "chromium")
    if path is None:
        pytest.skip(reason)
    return path


class RedisServer(str):
    """A private redis-server; the object *is* its URL (``redis://127.0.0.1:PORT/0``).

    ``stop()`` and ``start()`` kill and restart it on the same port (data is not persisted unless ``extra_args``
    turn the append-only file on), for tests of outages; ``ensure_running()`` restarts it if a test left it stopped.
    """

    binary: str
    port: int
    workdir: Path
    extra_args: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None

    def __new__(cls, binary: str, port: int, workdir: Path, extra_args: tuple[str, ...] = ()) -> Self:
        self = super().__new__(cls, f"redis://127.0.0.1:{port}/0")
        self.binary, self.port, self.workdir, self.extra_args, self.proc = binary, port, workdir, extra_args, None
        return self

    @property
    def url(self) -> str:
        return str(self)

    def start(self, timeout: float = 10.0) -> None:
        if self.running():
            return
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--daemonize", "no", "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        args += self.extra_args  # later options win
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err.strip()[-500:]}")
            if _redis_ping(self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not answer PING on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def kill_9(self) -> None:
        """SIGKILL the server (no shutdown, no final write) and wait for it to be gone."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and _redis_ping(self.port)

    def ensure_running(self) -> None:
        if not self.running():
            self.stop()
            self.start()


def _redis_fixture(tmp_path_factory: pytest.TempPathFactory, name: str, *extra: str) -> Iterator[RedisServer]:
    binary, reason = find_redis_server()
    if binary is None:
        pytest.skip(reason)
    server = RedisServer(binary, _free_port(), tmp_path_factory.mktemp(name), extra)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running private Redis (the value is its URL; see :class:`RedisServer`)."""
    yield from _redis_fixture(tmp_path_factory, "redis")


@pytest.fixture(scope="session")
def durable_redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running private Redis that makes every write durable before it answers (``appendonly yes``,
    ``appendfsync always``), as the event log requires; its data survives :meth:`RedisServer.kill_9` + ``start``."""
    yield from _redis_fixture(tmp_path_factory, "redis-aof", "--appendonly", "yes", "--appendfsync", "always")


def backend_redis_url(request: pytest.FixtureRequest, server_fixture: str = "redis_server") -> str | None:
    """For a fixture parametrized by backend kind (``"sqlite"`` / ``"redis"``): the URL of the running
    ``server_fixture`` (``redis_server`` or ``durable_redis_server``) for the Redis kind, None otherwise."""
    if request.param != "redis":
        return None
    server = request.getfixturevalue(server_fixture)
    server.ensure_running()
    return server.url
