"""One source of defaults: the library configs built with no arguments equal those built from the settings."""

from __future__ import annotations

from pathlib import Path

from features.spec.definition import FeatureSpec
from propensity.config import Settings
from serving.activation.actions import ActivationConfig
from training.job import TrainConfig
from training.models import BoosterParams


def test_python_api_trains_like_the_settings_say(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no propensity.toml, no PROPENSITY_* variables
    for key in [k for k in __import__("os").environ if k.startswith("PROPENSITY_")]:
        monkeypatch.delenv(key)
    s = Settings()
    api = TrainConfig(events_path=Path("e.parquet"), out_dir=Path("out"))
    configured = TrainConfig.from_settings(s.training, s.features, events_path=Path("e.parquet"), out_dir=Path("out"))
    assert api == configured
    assert (api.n_cutoffs, api.cutoff_spacing_days, api.max_users) == (8, 4, 100_000)
    assert BoosterParams() == BoosterParams.from_settings(s.training)
    assert FeatureSpec() == FeatureSpec.from_settings(s.features)
    assert ActivationConfig() == ActivationConfig.from_settings(s.activation)
    # the CLI trains exactly what the Python API trains
    from propensity.cli.models import train_config

    cli = train_config(s, Path("e.parquet"), None)
    assert cli == TrainConfig(events_path=Path("e.parquet"), out_dir=s.reports_dir / "training")


def test_settings_reach_every_library_config(tmp_path: Path) -> None:
    s = Settings(training={"n_cutoffs": 5, "learning_rate": 0.05, "max_users": None},
                 features={"windows": (2, 9), "lookback_days": 60})
    cfg = TrainConfig.from_settings(s.training, s.features, events_path=tmp_path, out_dir=tmp_path)
    assert cfg.n_cutoffs == 5 and cfg.params.learning_rate == 0.05 and cfg.max_users is None
    assert cfg.spec.windows == (2, 9) and cfg.spec.lookback_days == 60
