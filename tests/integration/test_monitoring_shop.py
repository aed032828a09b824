"""Monitoring end to end on a simulated shop: real training, real snapshots in a SQLite store, real MLflow.

The module fixture simulates 20,000 users over 200 days (the shop has matured by then: its 90-day windows are full),
trains both targets with the training job on the data before day 160, and publishes snapshots at days 160 and 167
twice: from the events as simulated, and from the same events with one behavior (views) removed for a seeded half of
the users from day 150 on (after both models' training references). The label windows of both snapshots close
before day 200. About two minutes on the 2-core machine, half of it training.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.integration.conftest import cli_invoker

START = datetime(2026, 5, 1, tzinfo=UTC)
DAYS = 200
TRAIN_END = START + timedelta(days=160)
SNAPSHOT_DAYS = (160, 167)
DRIFT_FROM = START + timedelta(days=150)


@dataclass
class Shop:
    root: Path
    events: Path
    drifted: Path
    tracking_uri: str
    artifact_root: Path
    stores: dict[str, Path]


def _drop_views(events: pd.DataFrame, since: datetime) -> pd.DataFrame:
    """The events without the views of a seeded half of the users at or after ``since``."""
    ids = events["user_id"].astype(str).to_numpy(dtype=object)
    half = pd.util.hash_array(ids, hash_key="monitoring-drift") % 2 == 0
    drop = half & (events["behavior"] == "view").to_numpy() & (events["ts"] >= since).to_numpy()
    return events[~drop]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    from features.simulate.shop import GeneratorConfig, generate
    from serving.batch.run import run_batch
    from serving.store.base import open_store
    from training.job import TrainConfig, load_champions, run_training
    from training.registry import Registry

    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT", "1")
    root = tmp_path_factory.mktemp("monitoring")
    gen = generate(GeneratorConfig(n_users=20_000, days=DAYS, start=START, chunk_users=20_000), root / "gen")
    events = pd.read_parquet(gen.events_dir)
    events.to_parquet(root / "events.parquet")
    _drop_views(events, DRIFT_FROM).to_parquet(root / "drifted.parquet")
    shop = Shop(root, root / "events.parquet", root / "drifted.parquet", f"sqlite:///{root / 'mlflow.db'}",
                root / "mlruns", {})
    registry = Registry(shop.tracking_uri, shop.artifact_root)
    run_training(TrainConfig(events_path=shop.events, out_dir=root / "training", lapse_days=30, data_end=TRAIN_END,
                             n_cutoffs=4, min_positives=50, min_negatives=50), registry)
    bundles = load_champions(registry)
    for name, path in (("clean", shop.events), ("drifted", shop.drifted)):
        shop.stores[name] = root / f"{name}.sqlite"
        with open_store(shop.stores[name], keep=5) as store:
            for day in SNAPSHOT_DAYS:
                as_of = START + timedelta(days=day)
                run_batch(str(path), as_of, bundles, store, root / f"{name}_{day}.parquet",
                          created_at=as_of + timedelta(hours=1), reasons=False)
    try:
        yield shop
    finally:
        mp.undo()


def _monitor(shop: Shop, store: str, *, end_day: int = DAYS, snapshots: Any = None, events: Path | None = None,
             load_bundle: Any = None) -> Any:
    from mlflow import MlflowClient

    from serving.monitoring import load_version_bundle, monitor
    from serving.settings import MonitoringSettings
    from serving.store.base import open_store
    from training.labels import LabelSpec

    if snapshots is None:
        with open_store(shop.stores[store], keep=5) as opened:
            snapshots = opened.snapshots()
    return monitor(
        snapshots, str(events or shop.events), settings=MonitoringSettings(), default_spec=LabelSpec(3, 30),
        events_end=START + timedelta(days=end_day), events_start=START, history_start=START,
        checked_at=START + timedelta(days=DAYS), client=MlflowClient(shop.tracking_uri),
        load_bundle=load_bundle or (lambda t, v: load_version_bundle(shop.tracking_uri, t, v)),
    )


def test_the_estimate_is_within_002_auc_of_the_realized_auc_and_nothing_alerts_without_drift(shop: Shop) -> None:
    report = _monitor(shop, "clean")
    assert len(report.snapshots) == 2
    for snap in report.snapshots:
        for target, quality in snap.targets.items():
            assert quality.status == "closed" and quality.realized is not None, (snap.snapshot_id, target)
            gap = abs(quality.expected["auc"] - quality.realized["auc"])
            assert gap <= 0.02, (snap.snapshot_id, target, quality.expected["auc"], quality.realized["auc"])
    assert not report.alert, report.summary()
    scores = [d for d in report.drift if d.kind == "score"]
    assert {(d.scope, d.column) for d in scores} == {
        ("training reference", "p_buy"), ("training reference", "p_lapse"),
        ("previous snapshot", "p_buy"), ("previous snapshot", "p_lapse")}
    assert max(d.psi for d in scores) < 0.1
    assert sum(d.kind == "feature" for d in report.drift) >= 20  # up to 15 per model
    versions = report.versions["last_mile_buyer"]["1"]
    assert versions.known and versions.test["auc"] > 0.7 and len(versions.cutoffs) == 4


def _cli(monkeypatch: pytest.MonkeyPatch, shop: Shop, store: str, tmp_path: Path) -> Any:
    monkeypatch.chdir(tmp_path)
    env = {"TRACKING_URI": shop.tracking_uri, "ARTIFACT_ROOT": str(shop.artifact_root),
           "STORE_PATH": str(shop.stores[store]), "DATA_DIR": str(tmp_path / "data"),
           "SERVING__KEEP_SNAPSHOTS": "5", "TRAINING__LAPSE_DAYS": "30"}
    for key, value in env.items():
        monkeypatch.setenv(f"PROPENSITY_{key}", value)
    for key in ("PROPENSITY_REDIS_URL", "PROPENSITY_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    return cli_invoker()


def test_a_planted_drift_alerts_with_exit_code_5_and_no_alert_fires_without_it(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from mlflow import MlflowClient

    clean = _cli(monkeypatch, shop, "clean", tmp_path)("monitor", "--events", str(shop.events), "--json", "ok.json")
    assert clean.exit_code == 0, clean.output
    assert "no alert" in clean.output and json.loads(Path("ok.json").read_text())["alert"] is False
    drifted = _cli(monkeypatch, shop, "drifted", tmp_path)("monitor", "--events", str(shop.drifted), "--json",
                                                            "alert.json")
    assert drifted.exit_code == 5, drifted.output
    found = json.loads(Path("alert.json").read_text())
    assert found["alert"] is True and "alert(s)" in found["summary"]
    assert any(a["kind"] == "score_drift" for a in found["alerts"]), found["alerts"]
    assert "alert:" in drifted.output
    latest = json.loads((tmp_path / "data" / "monitoring" / "latest.json").read_text())
    assert latest["alert"] is True
    client = MlflowClient(shop.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("monitoring").experiment_id],
                              order_by=["attributes.start_time DESC"])
    assert {r.data.tags["alert"] for r in runs[:2]} == {"0", "1"}
    history = client.get_metric_history(runs[0].info.run_id, "last_mile_buyer.realized.auc")
    assert [m.step for m in history] == [0, 1]
    assert client.get_model_version("lapse_risk", "1").tags["monitoring_alert"] in {"0", "1"}


def test_events_that_do_not_cover_a_window_leave_it_open(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    events = pd.read_parquet(shop.events)
    short = tmp_path / "short.parquet"
    events[events["ts"] < START + timedelta(days=185)].to_parquet(short)
    result = _cli(monkeypatch, shop, "clean", tmp_path)("monitor", "--events", str(short), "--json", "r.json")
    assert result.exit_code == 0, result.output
    snaps = json.loads(Path("r.json").read_text())["snapshots"]
    full = {s.snapshot_id: s for s in _monitor(shop, "clean").snapshots}
    for snap in snaps:
        lapse, buy = snap["targets"]["lapse_risk"], snap["targets"]["last_mile_buyer"]
        assert lapse["status"] == "open" and lapse["realized"] is None and lapse["expected"]["auc"] > 0.5
        assert buy["status"] == "closed"
        assert buy["realized"]["auc"] == pytest.approx(full[snap["snapshot_id"]].targets["last_mile_buyer"]
                                                       .realized["auc"])


def test_a_version_gone_from_the_registry_is_reported_with_what_is_known(shop: Shop) -> None:
    from serving.store.base import open_store

    with open_store(shop.stores["clean"], keep=5) as store:
        kept = store.snapshots()
    gone = [replace(s, meta={**s.meta, "models": {**s.meta["models"], "last_mile_buyer": "99"}}) for s in kept]
    report = _monitor(shop, "clean", snapshots=gone)
    facts = report.versions["last_mile_buyer"]["99"]
    assert not facts.known and "gone from the registry" in facts.note
    assert all(s.targets["last_mile_buyer"].realized is not None for s in report.snapshots)
    assert any(a.kind == "unknown_version" for a in report.warnings)
    assert not any(d.scope == "training reference" and d.target == "last_mile_buyer" for d in report.drift)
    assert any(d.scope == "training reference" and d.target == "lapse_risk" for d in report.drift)


def test_retrain_if_degraded_retrains_only_when_monitoring_alerts(
    shop: Shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.registry import Registry

    registry = Registry(shop.tracking_uri, shop.artifact_root)
    before = len(registry.client.search_model_versions("name='last_mile_buyer'"))
    for key, value in {"N_CUTOFFS": "3", "MAX_USERS": "6000", "MIN_POSITIVES": "30", "MIN_NEGATIVES": "30"}.items():
        monkeypatch.setenv(f"PROPENSITY_TRAINING__{key}", value)
    invoke = _cli(monkeypatch, shop, "clean", tmp_path)
    kept = invoke("retrain", str(shop.events), "--if-degraded")
    assert kept.exit_code == 0, kept.output
    assert "no retraining" in kept.output and not (tmp_path / "data" / "clean").exists()
    assert len(registry.client.search_model_versions("name='last_mile_buyer'")) == before
    invoke = _cli(monkeypatch, shop, "drifted", tmp_path)
    retrained = invoke("retrain", str(shop.drifted), "--if-degraded")
    assert retrained.exit_code == 0, retrained.output
    assert "alert" in retrained.output and (tmp_path / "data" / "clean" / "events.parquet").exists()
    assert len(registry.client.search_model_versions("name='last_mile_buyer'")) == before + 1


def test_a_reference_stored_with_the_model_gives_the_drift_of_the_rebuilt_one(shop: Shop) -> None:
    """What training would store (``training.reference.model_reference_profile`` at the last training cutoff) is
    read instead of rebuilding the reference, with the same numbers."""
    from features.build.builder import build_features
    from serving.monitoring import load_version_bundle
    from training.reference import model_reference_profile

    rebuilt = _monitor(shop, "clean")
    bundles = {}
    for target, versions in rebuilt.versions.items():
        bundle = load_version_bundle(shop.tracking_uri, target, "1")
        cutoff = pd.Timestamp(versions["1"].train_cutoff).to_pydatetime()
        segmented = bundle.segmenter.transform(build_features(str(shop.events), cutoff, bundle.spec))
        bundle.meta["reference_profile"] = model_reference_profile(bundle, segmented).to_dict()
        bundles[target] = bundle
    stored = _monitor(shop, "clean", load_bundle=lambda target, _version: bundles[target])
    assert sum("stored with the model" in note for note in stored.notes) == 2
    got = sorted((d.scope, d.target, d.column, round(d.psi, 9)) for d in stored.drift)
    assert got == sorted((d.scope, d.target, d.column, round(d.psi, 9)) for d in rebuilt.drift)
