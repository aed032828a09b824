"""``POST /audience``: the budget-aware audience for one action, from the current snapshot's audience file.

Body: :class:`serving.http.api.AudienceRequest` (``{"action": str, "budget": number?, "top_k": int?, "limit": int?}``,
``limit`` user ids returned, default 1000). Answer: :class:`serving.http.api.AudienceResponse`, the
:class:`serving.activation.audiences.AudienceSummary` fields, the snapshot id, the campaign id and control size, and
the send list ``user_ids`` (treatment users only, best first, at most ``limit``). The same
:func:`serving.activation.loop.launch_campaign` as ``propensity audience``: every audience becomes a campaign
recorded under the service's campaigns folder, with the lifts its closed campaigns measured.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from serving.activation.actions import ActivationConfig, ActivationError
from serving.activation.audiences import select_audience
from serving.activation.campaign_records import CampaignError
from serving.activation.loop import Launched, audience_facts, launch_campaign, measured_activation
from serving.http.api import MAX_AUDIENCE_IDS, AudienceRequest, AudienceResponse
from serving.http.base import AppState, HTTPError, PostEndpoint
from serving.http.schemas import describe
from serving.settings import CampaignSettings

MAX_LIMIT = MAX_AUDIENCE_IDS


class AudienceCache:
    """The audience frame of the newest snapshot read so far (one frame in memory, replaced on a new snapshot)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: str | None = None
        self._frame: pd.DataFrame | None = None

    def frame(self, snapshot_id: str, path: str) -> pd.DataFrame:
        with self._lock:
            if self._key != snapshot_id or self._frame is None:
                self._frame = pd.read_parquet(Path(path))
                self._key = snapshot_id
            return self._frame


def parse_audience_request(doc: Any) -> tuple[str, float | None, int | None, int]:
    """Validate a decoded body with :class:`AudienceRequest`: (action, budget, top_k, limit), ``limit`` cut to
    :data:`MAX_LIMIT`; 422 :class:`HTTPError` naming the field when invalid."""
    if type(doc) is not dict:
        raise HTTPError(422, "invalid", "the body must be a JSON object with 'action'")
    try:
        req = AudienceRequest.model_validate(doc)
    except ValidationError as exc:
        raise HTTPError(422, "invalid", f"invalid /audience request: {describe(exc)}") from None
    return req.action, req.budget, req.top_k, min(req.limit, MAX_LIMIT)


class AudienceEndpoint(PostEndpoint):
    """``POST /audience``: selection runs in a worker thread (it may read the audience Parquet file)."""

    path = "/audience"

    def __init__(self, state: AppState, activation: ActivationConfig | None = None) -> None:
        super().__init__(state)
        self.activation = activation  # None: the economics the service's entry point put on the state
        self.cache = AudienceCache()

    def _economics(self) -> ActivationConfig:
        if self.activation is None:
            self.activation = self.state.activation or ActivationConfig()
        return self.activation

    async def handle(self, rt: Any, doc: Any) -> bytes:
        action, budget, top_k, limit = parse_audience_request(doc)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self._select, rt, action, budget, top_k, limit)

    def _select(self, rt: Any, action: str, budget: float | None, top_k: int | None, limit: int) -> bytes:
        from serving.store.base import StoreError

        if rt.store is None:
            raise HTTPError(503, "store_unavailable", "score store unavailable: it could not be opened")
        try:
            snap = rt.store.current()
        except StoreError as exc:
            raise HTTPError(503, "store_unavailable", f"score store unavailable: {exc}") from None
        path = snap.meta.get("audience_path") if snap is not None else None
        if snap is None or not path or not Path(path).exists():
            raise HTTPError(503, "no_audience", "no audience file for the current snapshot: run `propensity score`")
        frame = self.cache.frame(snap.snapshot_id, path)
        try:
            if self.state.campaigns_dir is None:
                picked, summary = select_audience(frame, action, self._economics(), budget=budget, top_k=top_k)
                send, campaign_id, control = picked, None, 0
            else:
                launched = self._launch(frame, snap.snapshot_id, action, budget, top_k)
                send, summary, campaign_id = launched.send, launched.summary, launched.campaign.campaign_id
                control = int(launched.campaign.to_dict().get("counts", {}).get("control", 0))
        except (ActivationError, CampaignError) as exc:
            raise HTTPError(422, "invalid", str(exc)) from None
        answer = AudienceResponse(**summary.to_dict(), snapshot_id=snap.snapshot_id, campaign_id=campaign_id,
                                  control_size=control, user_ids=send["user_id"].astype(str).head(limit).tolist())
        return answer.model_dump_json().encode()

    def _launch(self, frame: pd.DataFrame, snapshot_id: str, action: str, budget: float | None,
                top_k: int | None) -> Launched:
        settings = self.state.campaigns or CampaignSettings()
        activation = measured_activation(self.state.campaigns_dir, self._economics(), settings.prior_strength)
        as_of, models = audience_facts(frame)
        return launch_campaign(self.state.campaigns_dir, frame, action, activation, settings, as_of=as_of,
                               created_at=datetime.now(UTC), model_versions=models, snapshot_id=snapshot_id,
                               budget=budget, top_k=top_k)
