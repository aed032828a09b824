"""Fixtures for the service tests: a tiny trained model in a temp MLflow registry, a published snapshot, and
a real ``bentoml serve`` process.

``trained`` (module scope) simulates 1,500 users over 60 days, builds features at ``AS_OF``, fits the
segmenter, trains two small LightGBM boosters (one per target, on simple rule-based labels), calibrates them,
logs and promotes them in ``sqlite:///<tmp>/mlflow.db`` and publishes their scores as a snapshot in a temp
SQLite store. ``start_server`` runs the real server from :func:`propensity.service.launch.serve_args` and waits
for ``/readyz``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

TOKEN = "test-token-5f1c"
START = datetime(2026, 6, 1, tzinfo=UTC)
AS_OF = START + timedelta(days=50)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Trained:
    """Everything the service tests need to know about the fixture's models and data."""

    root: Path
    events: pd.DataFrame  # all generated events, canonical columns
    raw: pd.DataFrame  # feature table at AS_OF
    tracking_uri: str
    artifact_root: Path
    store_path: Path
    versions: dict[str, str] = field(default_factory=dict)
    scores: pd.DataFrame | None = None
    defaults: dict[str, float] = field(default_factory=dict)

    def settings(self, **serving: Any) -> Any:
        """The service's settings: the fixture's registry and store, small campaigns allowed (10 control users)."""
        from propensity.config import Settings

        return Settings(
            data_dir=self.root / "data",
            tracking_uri=self.tracking_uri,
            artifact_root=self.artifact_root,
            store_path=self.store_path,
            serving={"api_token": TOKEN, **serving},
            campaigns={"control_share": 0.25, "min_control": 10},
        )


def train_bundle(target: str, raw: pd.DataFrame, events: Any, seed: int, rounds: int = 15) -> Any:
    """A small calibrated LightGBM bundle for ``target`` on simple labels derived from the features."""
    import lightgbm as lgb

    from features.segments.segmenter import Segmenter
    from features.spec.definition import FeatureSpec
    from training.bundle import ModelBundle, design_matrix
    from training.calibration import Calibrator
    from training.labels import LabelSpec

    spec = FeatureSpec()
    segmenter = Segmenter().fit(events, raw, AS_OF)
    segmented = segmenter.transform(raw)
    x, names = design_matrix(segmented, spec)
    rng = np.random.default_rng(seed)
    signal_col = np.nan_to_num(x[:, 0], nan=np.nanmedian(x[:, 0]) if np.isfinite(x[:, 0]).any() else 0.0)
    y = ((signal_col + rng.normal(0, signal_col.std() + 1e-9, len(x))) < np.median(signal_col)).astype(int)
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 20, "seed": seed,
              "deterministic": True, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y, feature_name=names), num_boost_round=rounds)
    calibrator = Calibrator(kind="platt").fit(booster.predict(x), y)
    return ModelBundle(target=target, booster=booster, calibrator=calibrator, segmenter=segmenter, spec=spec,
                       label_spec=LabelSpec(), feature_names=names, meta={"seed": seed}), x, names


def register(trained: Trained, bundle: Any, x: np.ndarray, names: list[str]) -> str:
    """Log ``bundle`` as a challenger and promote it to champion; returns the version."""
    from training.registry import Registry

    registry = Registry(trained.tracking_uri, trained.artifact_root)
    _, version = registry.log_challenger(
        bundle, params={"test_as_of": AS_OF.isoformat()}, metrics={"lightgbm": {"auc": 0.6, "log_loss": 0.6}},
        plots={}, input_example=pd.DataFrame(x[:5], columns=names),
    )
    registry.promote(bundle.target, version)
    return version


def publish(store_path: Path, scores: pd.DataFrame, defaults: dict[str, float], created_at: datetime) -> str:
    from serving.store.base import open_store

    store = open_store(store_path)
    try:
        meta = {"created_at": created_at, "as_of": AS_OF.isoformat(), "rows": len(scores), "defaults": defaults}
        return store.publish([scores], meta).snapshot_id
    finally:
        store.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """Tiny models registered as champions and a published score snapshot (about 20 s on an idle machine).

    MLflow's pip-requirements inference (a subprocess that re-imports everything, ~25 s per logged model) is
    cut short with ``MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT``: the default requirements are fine here.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    try:
        yield _train(tmp_path_factory)
    finally:
        mp.undo()


def _train(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from features.build.builder import build_features
    from features.simulate.shop import GeneratorConfig, generate
    from serving.scoring import score_features

    root = tmp_path_factory.mktemp("service")
    data = generate(GeneratorConfig(n_users=1500, days=60, start=START, chunk_users=1500), root / "gen")
    events = pd.read_parquet(data.events_dir)
    raw = build_features(events, AS_OF)
    t = Trained(
        root=root, events=events, raw=raw,
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=root / "mlruns",
        store_path=root / "store" / "scores.sqlite",
    )
    bundles = {}
    for i, target in enumerate(("last_mile_buyer", "lapse_risk")):
        bundle, x, names = train_bundle(target, raw, events, seed=11 + i)
        t.versions[target] = register(t, bundle, x, names)
        bundle.meta = {**bundle.meta, "version": t.versions[target]}
        bundles[target] = bundle
    t.scores = score_features(raw, bundles, AS_OF)
    t.defaults = {"p_buy": 0.0123, "p_lapse": 0.4567, "aipl_layer": "none"}
    publish(t.store_path, t.scores, t.defaults, START + timedelta(days=50, hours=1))
    return t


class Server:
    """A running ``bentoml serve`` process and an HTTP client for it."""

    def __init__(self, proc: subprocess.Popen[bytes], base: str, log_path: Path) -> None:
        self.proc, self.base, self.log_path = proc, base, log_path
        self.client = httpx.Client(base_url=base, timeout=30.0, headers={"Authorization": f"Bearer {TOKEN}"})
        self.anon = httpx.Client(base_url=base, timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        self.client.close()
        self.anon.close()
        if self.proc.poll() is None:
            import psutil

            try:  # BentoML's worker runs in a session of its own: the group signal alone can miss it
                tree = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            for child in tree:  # whatever outlived the arbiter
                with contextlib.suppress(psutil.Error):
                    child.kill()


def start_server(settings: Any, log_path: Path, *, require_ready: bool = True, timeout: float = 180.0,
                 **kwargs: Any) -> Server:
    """Start the real server (``serve_args``) on a free loopback port; wait until it answers ``/readyz``
    (200 when ``require_ready``, any answer otherwise)."""
    from propensity.service.launch import serve_args

    port = free_port()
    argv, env = serve_args(settings, "127.0.0.1", port, 1, **kwargs)
    env["BENTOML_HOME"] = str(log_path.parent / "bentoml-home")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            r = server.anon.get("/readyz", timeout=2.0)
            if r.status_code == 200 or (not require_ready and r.headers.get("content-type") == "application/json"):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.stop()
    raise RuntimeError(f"server not ready within {timeout} s:\n{server.log()}")


def scrape(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``/metrics`` parsed with Prometheus' own parser: ``{(sample name, labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    r = server.anon.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text[:300]
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` in :func:`scrape` output (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def server(trained: Trained) -> Iterator[Server]:
    """The service on the fixture's registry and store, with small limits and a 1 s model check."""
    settings = trained.settings(lookup_max_ids=50, max_request_bytes=1_000_000, score_max_users=30,
                                score_max_events=2_000)
    srv = start_server(settings, trained.root / "server.log", reload_interval_s=1.0)
    try:
        yield srv
    finally:
        srv.stop()


def cli_invoker() -> Any:
    """``invoke(*args)``: runs ``propensity *args`` in process and returns the Click result; a traceback in the
    output fails the test, and an exception other than the command's exit is raised."""
    from typer.testing import CliRunner

    from propensity.cli.main import app

    runner = CliRunner()

    def invoke(*args: str) -> Any:
        result = runner.invoke(app, list(args))
        assert "Traceback" not in result.output, result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


@pytest.fixture()
def cli(trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs `propensity ...` in a fresh working directory against the trained champions; no traceback allowed."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROPENSITY_TRACKING_URI", trained.tracking_uri)
    monkeypatch.setenv("PROPENSITY_ARTIFACT_ROOT", str(trained.artifact_root))
    for var in ("PROPENSITY_REDIS_URL", "PROPENSITY_DATA_DIR", "PROPENSITY_STORE_PATH", "PROPENSITY_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    trained.events.to_parquet(tmp_path / "events.parquet")
    return cli_invoker()



@pytest.fixture(scope="module")
def spark_con() -> Iterator[Any]:
    """An Ibis PySpark backend on a local[2] session bound to 127.0.0.1, stopped after the module (the Spark
    modules skip themselves when PySpark or Java 17+ is missing)."""
    from features.build.spark import session_of, spark_connection
    from tests.integration.spark_support import SPARK_TEST_CONF

    backend = spark_connection("local[2]", app_name="propensity-tests", conf=SPARK_TEST_CONF)
    session_of(backend).sparkContext.setLogLevel("ERROR")
    try:
        yield backend
    finally:
        session_of(backend).stop()
