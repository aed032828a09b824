"""Typed configuration for every command.

Defaults work with no file at all. Values are read, lowest priority first, from the defaults below, an optional
``propensity.toml`` in the working directory (or the file named by ``PROPENSITY_CONFIG``), ``PROPENSITY_*``
environment variables (nested sections use ``__``, e.g. ``PROPENSITY_TRAINING__HORIZON_DAYS=5``) and finally the
command-line options, which the CLI passes as keyword overrides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource


class ValidationSettings(BaseModel):
    """Event contract enforcement."""

    max_bad_share: float = Field(0.01, ge=0.0, le=1.0, description="Share of bad rows that stops the run.")
    future_tolerance_hours: float = Field(1.0, ge=0.0, description="Allowed clock skew past as_of, hours.")
    source_tz: str = Field("UTC", description="Time zone of naive timestamps in the input.")


class FeatureSettings(BaseModel):
    """Feature spec knobs (see features.spec.definition.FeatureSpec)."""

    windows: tuple[int, ...] = (1, 3, 7, 15, 30, 90, 365)
    target_categories: tuple[str, ...] = ()
    lookback_days: int | None = None
    chunk_events: int = Field(
        12_000_000, ge=1, description="Events per user range when building from Parquet sorted by user (memory bound)."
    )


class TrainingSettings(BaseModel):
    """Labels, cutoffs, models and the promotion gate."""

    horizon_days: int = Field(3, ge=1, description="H: last-mile buyer label window, days.")
    lapse_days: int | None = Field(None, ge=1, description="N: lapse window, days; None = fitted 80/20 gap.")
    n_cutoffs: int = Field(8, ge=3, description="Cutoffs stacked: train on all but the last two.")
    cutoff_spacing_days: int = Field(4, ge=1)
    min_positives: int = Field(100, ge=1)
    min_negatives: int = Field(100, ge=1)
    gate_logloss_tolerance: float = Field(0.005, ge=0.0, description="Allowed log-loss increase for promotion.")
    calibration: str = Field("isotonic", pattern="^(isotonic|platt)$")
    num_boost_round: int = Field(500, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    num_leaves: int = Field(15, ge=2)
    min_data_in_leaf: int = Field(200, ge=1)
    max_users: int | None = Field(
        100_000, ge=1000, description="Train on a seeded sample of at most this many users; None = everyone."
    )
    holdout: float = Field(
        0.3, gt=0, lt=1, description="Lapse target: share of users held out of training (half valid, half test)."
    )
    seed: int = 7


class ServingSettings(BaseModel):
    """Score store and HTTP service."""

    host: str = "127.0.0.1"
    port: int = 3000
    lookup_max_ids: int = Field(1000, ge=1)
    score_max_users: int = Field(100, ge=1)
    score_max_events: int = Field(20000, ge=1)
    max_request_bytes: int = Field(2_000_000, ge=1024)
    keep_snapshots: int = Field(3, ge=2)
    batch_chunk_users: int = Field(200_000, ge=1000)
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    allow_no_auth: bool = Field(False, description="Serve without a token (local experiments only).")
    reload_interval_s: float = Field(5.0, gt=0, description="How often the service checks for a new champion.")
    model_dir: Path | None = Field(None, description="Serve pinned bundles from here instead of the registry.")


class ActivationSettings(BaseModel):
    """Per-action economics used for priority and audience sizing (currency units)."""

    default_order_value: float = 60.0
    margin_rate: float = 0.3
    cost: dict[str, float] = Field(
        default_factory=lambda: {
            "coupon_24h": 3.0,
            "ad_retarget": 0.8,
            "repurchase_reminder": 0.1,
            "win_back": 2.0,
            "nurture": 0.05,
        }
    )


class Settings(BaseSettings):
    """Everything a command needs; built once in the CLI and passed down."""

    model_config = SettingsConfigDict(
        env_prefix="PROPENSITY_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Path("data")
    tracking_uri: str = "sqlite:///mlruns/mlflow.db"
    artifact_root: Path = Path("mlruns")
    store_path: Path = Path("data/store/scores.sqlite")
    redis_url: str | None = None
    seed: int = 7

    validation: ValidationSettings = ValidationSettings()
    features: FeatureSettings = FeatureSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    activation: ActivationSettings = ActivationSettings()

    @field_validator("redis_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("PROPENSITY_CONFIG", "propensity.toml"))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # Derived locations -------------------------------------------------------------------------------------------
    @property
    def clean_dir(self) -> Path:
        """Validated canonical events and the quarantine file."""
        return self.data_dir / "clean"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def scores_dir(self) -> Path:
        return self.data_dir / "scores"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    def api_token_value(self) -> str | None:
        """The bearer token from the settings or the secret file, or None when auth is not configured."""
        if self.serving.api_token is not None:
            return self.serving.api_token.get_secret_value() or None
        if self.serving.api_token_file is not None:
            return self.serving.api_token_file.read_text().strip() or None
        return None


def load_settings(**overrides: Any) -> Settings:
    """Build the settings; ``overrides`` are command-line values (None values are ignored)."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
