"""Settings sections owned by the features package: the event contract's enforcement and the feature spec.

The application composes this section into its typed settings (``propensity.config.Settings``); the library
builds its own configs from it, so the Python API, the CLI and the service share one set of defaults.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ValidationSettings(BaseModel):
    """Event contract enforcement."""

    max_bad_share: float = Field(0.01, ge=0.0, le=1.0, description="Share of bad rows that stops the run.")
    future_tolerance_hours: float = Field(1.0, ge=0.0, description="Allowed clock skew past as_of, hours.")
    source_tz: str = Field("UTC", description="Time zone of naive timestamps in the input.")

class FeatureSettings(BaseModel):
    """Feature spec knobs (see features.spec.definition.FeatureSpec)."""

    windows: tuple[int, ...] = (1, 2, 3, 7, 15, 30, 90, 365)
    target_categories: tuple[str, ...] = ()
    lookback_days: int | None = None
    chunk_events: int = Field(
        12_000_000, ge=1, description="Events per user range when building from Parquet sorted by user (memory bound)."
    )
    keep_state: bool = Field(
        True, description="Keep the per-user feature state between batches (features/state) and move it on with the "
        "event files added since, instead of building from all events; a batch that cannot builds whole."
    )
    state_buckets: int = Field(
        8, ge=1, le=4096, description="User buckets of the kept state on Spark (one task each): every bucket's events "
        "must fit in one task's memory when the state is first built."
    )
