"""Campaign records on disk: written whole and once, read back, outcome reads appended, logged to real MLflow."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.events.schema import arrow_schema
from serving.activation.campaign_records import outcome_reads
from serving.activation.campaigns import (
    CONTROL,
    TREATMENT,
    CampaignError,
    create_campaign,
    list_campaigns,
    load_campaign,
    send_list,
)
from serving.activation.outcomes import OutcomeError, append_outcome, log_to_mlflow, measure

pytestmark = pytest.mark.integration

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


def audience(n: int = 2000, action: str = "coupon_24h") -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)], "action": action, "action_p": rng.uniform(0.05, 0.4, n),
        "priority": np.linspace(9, 1, n), "expected_incremental_profit": np.linspace(3, -1, n),
        "aipl_layer": rng.choice(["P", "I", "A"], n), "lifecycle": "active", "rfm_group": "champions",
        "action_deadline": (pd.Timestamp(AS_OF) + pd.Timedelta(hours=20)).isoformat(),
        "audience_rank": np.arange(1, n + 1),
    })


def create(root: Path, created_minutes: int = 0, action: str = "coupon_24h", **kw: object):
    return create_campaign(
        root, audience(action=action), action=action, as_of=AS_OF,
        created_at=AS_OF + timedelta(minutes=created_minutes), window_days=7, control_share=0.1, cost_per_user=3.0,
        model_versions={"last_mile_buyer": "7"}, snapshot_id="snap-9",
        selection_rule={"rule": "max_profit", "budget": None, "top_k": None},
        lift_used={"value": 0.12, "source": "measured", "n": 4000}, **kw,
    )


def event_file(path: Path, campaign, n_buy_t: int = 150, n_buy_c: int = 10) -> pd.DataFrame:
    """Canonical events (Parquet, the event contract's schema): purchases in the window, one before as_of."""
    t = send_list(campaign)["user_id"].tolist()
    members = campaign.members
    c = members.loc[members["group"] == CONTROL, "user_id"].tolist()
    rows = [(u, 3, 55.0) for u in t[:n_buy_t]] + [(u, 30, 70.0) for u in c[:n_buy_c]] + [(t[-1], -5, 10.0)]
    ts = [pd.Timestamp(AS_OF) + pd.Timedelta(hours=h) for _, h, _ in rows]
    table = pa.table({
        "user_id": [r[0] for r in rows], "ts": ts, "behavior": ["buy"] * len(rows), "item_id": [None] * len(rows),
        "category_id": [None] * len(rows), "channel": ["promo"] * len(rows), "amount": [r[2] for r in rows],
    }, schema=arrow_schema())
    pq.write_table(table, path)
    return pd.read_parquet(path)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_campaign_is_written_whole_and_read_back(tmp_path: Path):
    campaign = create(tmp_path)
    folder = tmp_path / campaign.campaign_id
    assert sorted(p.name for p in folder.iterdir()) == ["campaign.json", "members.parquet", "outcomes"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    facts = json.loads((folder / "campaign.json").read_text())
    for key in ("campaign_id", "action", "as_of", "window_open", "window_close", "control_share", "cost_per_user",
                "model_versions", "snapshot_id", "selection_rule", "lift_used", "counts", "value_column"):
        assert key in facts
    assert facts["window_close"] == "2024-03-08T00:00:00Z" and facts["lift_used"]["source"] == "measured"
    schema = pq.read_schema(folder / "members.parquet")
    assert schema.field("user_id").type == pa.string() and schema.field("action_p").type == pa.float64()
    assert schema.field("action_deadline").type == pa.timestamp("us", tz="UTC")
    assert schema.field("expected_incremental_profit").type == pa.float64()
    loaded = load_campaign(tmp_path, campaign.campaign_id)
    assert loaded.to_dict() == campaign.to_dict() and loaded.path == folder
    pd.testing.assert_frame_equal(loaded.members, campaign.members, check_dtype=False)
    assert set(send_list(loaded)["group"]) == {TREATMENT}
    assert len(send_list(loaded)) == facts["counts"]["treatment"]


def test_campaigns_are_listed_oldest_first(tmp_path: Path):
    assert list_campaigns(tmp_path / "absent") == []
    later = create(tmp_path, created_minutes=30, action="ad_retarget")
    first = create(tmp_path, created_minutes=1)
    (tmp_path / ".half-written.tmp-1").mkdir()  # a campaign being written is not listed
    assert [c.campaign_id for c in list_campaigns(tmp_path)] == [first.campaign_id, later.campaign_id]


def test_an_existing_campaign_is_never_rewritten(tmp_path: Path):
    campaign = create(tmp_path)
    before = snapshot(tmp_path / campaign.campaign_id)
    with pytest.raises(CampaignError, match="already exists"):
        create(tmp_path)  # same facts, same id
    with pytest.raises(CampaignError, match="already exists"):
        create(tmp_path, created_minutes=9, campaign_id=campaign.campaign_id)
    assert snapshot(tmp_path / campaign.campaign_id) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_unknown_campaign_id_is_a_one_line_error(tmp_path: Path):
    create(tmp_path)
    with pytest.raises(CampaignError) as err:
        load_campaign(tmp_path, "coupon_24h-20990101-deadbeef")
    assert "\n" not in str(err.value) and "no campaign 'coupon_24h-20990101-deadbeef'" in str(err.value)
    assert "propensity campaigns" in str(err.value)
    with pytest.raises(CampaignError, match="campaign id"):
        load_campaign(tmp_path, "../etc")


def test_a_root_that_cannot_hold_campaigns_is_an_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises((CampaignError, OSError)):
        create(blocker)


def test_outcome_reads_are_appended_and_idempotent(tmp_path: Path):
    campaign = create(tmp_path)
    events = event_file(tmp_path / "events.parquet", campaign)
    loaded = load_campaign(tmp_path, campaign.campaign_id)
    end = AS_OF + timedelta(days=7)
    first = measure(loaded, events, events_end=end, margin_rate=0.3, order_value_default=60.0)
    assert first.status == "closed" and first.events.before_as_of == 1
    assert first.groups[TREATMENT].conversions == 150 and first.groups[CONTROL].conversions == 10
    assert first.lift.mean_order_value == 55.0 and first.model_versions == {"last_mile_buyer": "7"}
    path_one = append_outcome(tmp_path, campaign.campaign_id, first, read_at=end + timedelta(hours=1))
    kept = path_one.read_bytes()
    again = measure(load_campaign(tmp_path, campaign.campaign_id), pd.read_parquet(tmp_path / "events.parquet"),
                    events_end=end, margin_rate=0.3, order_value_default=60.0)
    path_two = append_outcome(tmp_path, campaign.campaign_id, again, read_at=end + timedelta(hours=2))
    assert path_one != path_two and path_one.read_bytes() == kept
    reads = outcome_reads(tmp_path, campaign.campaign_id)
    assert [r["read_id"] for r in reads] == [path_one.stem, path_two.stem]
    strip = [{k: v for k, v in r.items() if k not in ("read_id", "read_at")} for r in reads]
    assert strip[0] == strip[1] == json.loads(first.to_json())
    assert path_one.stem.split("-")[1] == path_two.stem.split("-")[1]  # same numbers, same content hash
    with pytest.raises(CampaignError, match="already exists"):
        append_outcome(tmp_path, campaign.campaign_id, first, read_at=end + timedelta(hours=1))
    assert path_one.read_bytes() == kept
    with pytest.raises(OutcomeError, match="not"):
        append_outcome(tmp_path, "ad_retarget-20240301-00000000", first, read_at=end)
    facts = (tmp_path / campaign.campaign_id / "campaign.json").read_text()
    assert json.loads(facts) == campaign.to_dict()  # reads never touch the facts


def test_each_read_is_one_mlflow_run(tmp_path: Path):
    from mlflow import MlflowClient

    campaign = create(tmp_path)
    events = event_file(tmp_path / "events.parquet", campaign)
    end = AS_OF + timedelta(days=7)
    result = measure(campaign, events, events_end=end, margin_rate=0.3, order_value_default=60.0)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_one = log_to_mlflow(result, uri, read_at=end + timedelta(hours=1), read_id="read-1",
                            artifact_root=tmp_path / "artifacts")
    run_two = log_to_mlflow(result, uri, read_at=end + timedelta(hours=2), read_id="read-2")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("campaign_outcomes")
    assert experiment is not None and experiment.artifact_location.startswith("file:")
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in runs} == {run_one, run_two}
    run = client.get_run(run_one)
    assert run.data.tags["campaign_id"] == campaign.campaign_id and run.data.tags["action"] == "coupon_24h"
    assert run.data.tags["model_version.last_mile_buyer"] == "7" and run.data.tags["read_id"] == "read-1"
    assert run.data.metrics["group.treatment.conversions"] == 150.0
    assert run.data.metrics["lift.incremental_rate"] == pytest.approx(result.lift.incremental_rate)
    assert run.data.params["interval_method"] == "newcombe-hybrid-score"
    assert run.info.status == "FINISHED"
    assert run.info.start_time == int((end + timedelta(hours=1)).timestamp() * 1000)
