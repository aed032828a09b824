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

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from features.settings import FeatureSettings, ValidationSettings
from serving.settings import ActivationSettings, CampaignSettings, MonitoringSettings, ServingSettings
from training.settings import TrainingSettings

__all__ = [
    "ActivationSettings", "CampaignSettings", "FeatureSettings", "MonitoringSettings", "ServingSettings", "Settings",
    "TrainingSettings", "ValidationSettings", "load_settings",
]


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
    """The SQLite score store; unless set (``store_path``, ``PROPENSITY_STORE_PATH``) it follows ``data_dir``:
    ``<data_dir>/store/scores.sqlite``."""
    redis_url: str | None = None
    """Redis holding the score store and, when set, the event log too (under ``events_redis_prefix``)."""
    events_redis_prefix: str = "propensity:events"
    """Key prefix of the event log in Redis (used when ``redis_url`` is set)."""
    events_redis_allow_volatile: bool = False
    """Let the event log use a Redis without ``appendonly yes`` and ``appendfsync always``, which loses acknowledged
    events when Redis or its host crashes (for development; refused otherwise)."""
    seed: int = 7

    validation: ValidationSettings = ValidationSettings()
    features: FeatureSettings = FeatureSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    activation: ActivationSettings = ActivationSettings()
    campaigns: CampaignSettings = CampaignSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @model_validator(mode="before")
    @classmethod
    def _store_follows_data_dir(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("store_path") is None and data.get("data_dir") is not None:
            data = {**data, "store_path": Path(data["data_dir"]) / "store" / "scores.sqlite"}
        return data

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
    def events_log_path(self) -> Path:
        """The SQLite event log that ``/events`` and ``propensity ingest`` append to when ``redis_url`` is not set:
        ``serving.events_log``, else ``<data_dir>/events/log.db``."""
        return self.serving.events_log or self.data_dir / "events" / "log.db"

    @property
    def event_log_options(self) -> dict[str, Any]:
        """Where the event log lives besides :attr:`events_log_path`: the keyword arguments of
        :func:`features.events.backends.open_event_log` (and of ``event_log_exists``, ``event_log_location``)."""
        return {"redis_url": self.redis_url, "redis_prefix": self.events_redis_prefix,
                "allow_volatile": self.events_redis_allow_volatile}

    @property
    def online_dir(self) -> Path:
        """Per-user event histories the batch keeps next to each snapshot (one directory per snapshot id) for
        the rescoring of fresh users at ``/lookup``."""
        return self.data_dir / "online"

    @property
    def features_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def feature_state_dir(self) -> Path:
        """The per-user feature state the next batch moves on (``features.keep_state``)."""
        return self.features_dir / "state"

    @property
    def feature_state_dir_spark(self) -> Path:
        """The per-user feature state of ``--engine spark`` batches, in ``features.state_buckets`` user buckets
        (a path every Spark executor reaches)."""
        return self.features_dir / "state-spark"

    @property
    def scores_dir(self) -> Path:
        return self.data_dir / "scores"

    @property
    def reports_dir(self) -> Path:
        return self.data_dir / "reports"

    @property
    def monitoring_dir(self) -> Path:
        """Monitoring reports: ``latest.json`` is the newest (the service's alert gauge reads it)."""
        return self.data_dir / "monitoring"

    @property
    def campaigns_dir(self) -> Path:
        """Campaign records (one folder per campaign): ``campaigns.campaigns_dir``, else under ``data_dir``."""
        return self.campaigns.campaigns_dir or self.data_dir / "campaigns"

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
