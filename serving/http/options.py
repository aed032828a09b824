"""Options of the HTTP layer, with units; resolved from the settings by the service's entry point."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServiceOptions:
    """Everything the HTTP layer needs, with units.

    ``token`` is the bearer token (None only when ``allow_no_auth``); ``max_request_bytes`` caps request bodies;
    ``lookup_max_ids`` caps ids per ``/lookup``; ``score_max_users`` / ``score_max_events`` cap a ``/score``
    request; ``future_tolerance_s`` is how far past ``as_of`` a posted event may lie (seconds);
    ``reload_interval_s`` is the period of the champion check; ``model_dir`` pins the models to a directory.
    """

    token: str | None
    allow_no_auth: bool
    max_request_bytes: int
    lookup_max_ids: int
    score_max_users: int
    score_max_events: int
    future_tolerance_s: float
    reload_interval_s: float
    model_dir: Path | None

    def __repr__(self) -> str:  # never show the token
        shown = "set" if self.token else "none"
        return (
            f"ServiceOptions(token={shown}, allow_no_auth={self.allow_no_auth}, "
            f"max_request_bytes={self.max_request_bytes}, lookup_max_ids={self.lookup_max_ids}, "
            f"score_max_users={self.score_max_users}, score_max_events={self.score_max_events}, "
            f"reload_interval_s={self.reload_interval_s}, model_dir={self.model_dir})"
        )
