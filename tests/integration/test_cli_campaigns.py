"""The campaign commands on real champions: audience -> campaign record -> outcomes read from the events after it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.integration.conftest import AS_OF

pytestmark = pytest.mark.integration


@pytest.fixture()
def launched(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A scored snapshot and one campaign over the largest action's candidates; (action, campaign id)."""
    monkeypatch.setenv("PROPENSITY_CAMPAIGNS__CONTROL_SHARE", "0.3")
    monkeypatch.setenv("PROPENSITY_CAMPAIGNS__MIN_CONTROL", "5")
    scored = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons")
    assert scored.exit_code == 0, scored.output
    [audience_file] = (tmp_path / "data" / "scores").glob("audience_*.parquet")
    actions = pd.read_parquet(audience_file, columns=["action"])["action"]
    action = actions[actions != "none"].value_counts().index[0]
    done = cli("audience", "--action", action, "--out", "send.csv", "--top", "100000")
    assert done.exit_code == 0, done.output
    [record] = (tmp_path / "data" / "campaigns").iterdir()
    return action, record.name


def test_an_audience_becomes_a_campaign_whose_send_list_holds_no_control_user(cli, launched, tmp_path: Path):
    action, campaign_id = launched
    members = pd.read_parquet(tmp_path / "data" / "campaigns" / campaign_id / "members.parquet")
    send = pd.read_csv(tmp_path / "send.csv", dtype={"user_id": str})
    treated = set(members.loc[members["group"] == "treatment", "user_id"])
    assert set(send["user_id"]) == treated and (members["group"] == "control").sum() >= 5
    facts = json.loads((tmp_path / "data" / "campaigns" / campaign_id / "campaign.json").read_text())
    assert facts["action"] == action and facts["snapshot_id"] and facts["model_versions"]
    assert facts["lift_used"]["source"] == "prior"
    listed = cli("campaigns")
    assert listed.exit_code == 0 and campaign_id in listed.output
    shown = cli("campaigns", "show", campaign_id)
    assert shown.exit_code == 0 and action in shown.output


def test_outcomes_are_read_appended_and_written_as_json(cli, launched, tmp_path: Path):
    _action, campaign_id = launched
    first = cli("outcomes", "--events", "events.parquet", "--json", "out.json")
    assert first.exit_code == 0, first.output
    assert campaign_id in first.output and "playbook KPIs" in first.output
    doc = json.loads((tmp_path / "out.json").read_text())
    [read] = doc["campaigns"]
    assert read["campaign_id"] == campaign_id and read["status"] == "closed"
    assert read["groups"]["treatment"]["users"] + read["groups"]["control"]["users"] > 0
    assert read["events"]["before_as_of"] > 0  # the history before the campaign is read and ignored
    assert set(doc["kpis"]) == {"last_mile", "P", "I", "A"}
    again = cli("outcomes", "--events", "events.parquet", "--campaign", campaign_id, "--json", "again.json")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again.json").read_text())["campaigns"][0]["groups"] == read["groups"]
    assert len(list((tmp_path / "data" / "campaigns" / campaign_id / "outcomes").iterdir())) == 2


def test_campaign_mistakes_are_one_line(cli, launched, tmp_path: Path):
    unknown = cli("campaigns", "show", "no-such-campaign")
    assert unknown.exit_code == 1 and "propensity campaigns" in unknown.output
    (tmp_path / "raw.csv").write_text("user_id,ts,behavior\nu1,2026-01-01T00:00:00,view\n")
    raw = cli("outcomes", "--events", "raw.csv")
    assert raw.exit_code == 1 and "propensity validate" in raw.output
    missing = cli("outcomes", "--events", "events.parquet", "--campaign", "nope")
    assert missing.exit_code == 1
    for result in (unknown, raw, missing):
        assert len([line for line in result.output.splitlines() if line.strip()]) <= 2, result.output
