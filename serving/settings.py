"""Settings sections owned by the serving package: the score store, the HTTP service and activation economics.

The application composes this section into its typed settings (``propensity.config.Settings``); the library
builds its own configs from it, so the Python API, the CLI and the service share one set of defaults.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


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
    min_publish_share: float = Field(
        0.5, ge=0.0, le=1.0,
        description=("A batch scoring fewer users than this share of the served snapshot is not published "
                     "unless forced."),
    )
    api_token: SecretStr | None = None
    api_token_file: Path | None = None
    allow_no_auth: bool = Field(False, description="Serve without a token (local experiments only).")
    reload_interval_s: float = Field(5.0, gt=0, description="How often the service checks for a new champion.")
    model_dir: Path | None = Field(None, description="Serve pinned bundles from here instead of the registry.")
    events_log: Path | None = Field(
        None, description="Event log of /events and `propensity ingest` (SQLite); None = <data_dir>/events/log.db."
    )
    fresh_scores: bool = Field(
        True, description=("The batch keeps each user's event history next to its snapshot, and /lookup rescores a "
                           "user who has ingested events newer than the snapshot (fresh: true)."),
    )
    fresh_ttl_s: float = Field(
        60.0, ge=0.0,
        description=("Seconds a rescored /lookup row is served again to the same user (it carries its scored_at) "
                     "while that user has no newer event; 0 rescores at every lookup."),
    )
    history_max_deltas: int = Field(
        7, ge=0,
        description=("The batch extends the last event history with the event files added since (a segment per "
                     "batch) up to this many times, then writes it whole again; 0 always writes it whole."),
    )

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
    lift: dict[str, float] = Field(
        default_factory=lambda: {
            "coupon_24h": 0.15,
            "ad_retarget": 0.10,
            "repurchase_reminder": 0.05,
            "win_back": 0.10,
            "nurture": 0.03,
        },
        description="Prior incremental effect per action: relative purchase lift; win_back: share of lapsers saved.",
    )


class CampaignSettings(BaseModel):
    """Campaign records, control groups and how measured lifts replace the priors."""

    campaigns_dir: Path | None = Field(None, description="Campaign records; None = <data_dir>/campaigns.")
    control_share: float = Field(0.10, gt=0, lt=1, description="Share of each audience held out as control.")
    control_share_by_action: dict[str, float] = Field(default_factory=dict, description="Per-action control share.")
    min_control: int = Field(100, ge=1, description="Smallest control group worth measuring, users.")
    global_control_share: float = Field(0.0, ge=0, lt=1, description="Share of all users no campaign ever treats.")
    global_seed: str = "global-control-v1"
    window_days: dict[str, float] = Field(
        default_factory=lambda: {
            "coupon_24h": 1.0,
            "ad_retarget": 2.0,
            "repurchase_reminder": 7.0,
            "win_back": 7.0,
            "nurture": 7.0,
        },
        description="Days after as_of in which a campaign's conversions count, per action.",
    )
    prior_strength: float = Field(
        1000.0, ge=0, description="Users a prior lift is worth when a measured lift is shrunk toward it."
    )

    def control_share_of(self, action: str) -> float:
        """The control share of ``action`` (its override, else ``control_share``)."""
        return float(self.control_share_by_action.get(action, self.control_share))

    def window_days_of(self, action: str) -> float:
        """The measurement window of ``action``, days (7 for an action not listed)."""
        return float(self.window_days.get(action, 7.0))


class MonitoringSettings(BaseModel):
    """Models in production: realized quality per snapshot, drift, and the thresholds that raise an alert."""

    psi_warn: float = Field(0.1, gt=0, description="Population stability index at which a column is flagged.")
    psi_alert: float = Field(0.2, gt=0, description="Score PSI at or above which monitoring alerts.")
    auc_drop: float = Field(0.03, gt=0, description="Alert when the realized AUC is this far below the test AUC.")
    ece_max: float = Field(0.05, gt=0, description="Alert when the realized calibration error (ECE) is above this.")
    psi_bins: int = Field(10, ge=2, description="Quantile bins of the reference per numeric column.")
    ece_bins: int = Field(10, ge=2, description="Equal-count bins of the calibration error.")
    top_features: int = Field(15, ge=0, description="Features checked for drift per model, by importance (gain).")
    drift_users: int = Field(
        50_000, ge=1000, description="Seeded sample of users whose features are rebuilt for the drift checks."
    )
    experiment: str = Field("monitoring", min_length=1, description="MLflow experiment of the monitoring runs.")
