"""The report's "did it work" section, from real outcome reads of a hand-built campaign."""

from __future__ import annotations

from serving.report.campaigns import campaigns_section
from tests.unit.test_report import CFG, NOW, Page, audience, outcome_read


def test_each_campaign_shows_treatment_vs_control_with_its_interval_and_the_kpis():
    closed = outcome_read()
    page = Page(campaigns_section([closed]))
    row = page.row("outcomes", closed["campaign_id"])
    assert row[1:3] == ["coupon_24h", "closed"]
    lift = closed["lift"]
    assert row[5].startswith(f"{lift['incremental_rate']:.1%}") and lift["credible"] and row[6] == "yes"
    assert row[9] == "+15% (prior)"
    kpi = page.row("kpis_playbook", "Conversion I")
    treated = closed["groups"]["treatment"]
    assert kpi[1:] == ["20%", f"{treated['conversions'] / treated['users']:.1%}", f"{treated['users']:,}", "met"]
    assert page.row("kpis_playbook", "Conversion P")[-1] == "n/a"


def test_open_campaigns_have_no_verdict_and_no_reads_give_a_note():
    pending = outcome_read(close_days=7.0, events_days=3.0)
    row = Page(campaigns_section([pending])).row("outcomes", pending["campaign_id"])
    assert row[2] == "in progress" and row[5] == "pending" and row[6] == "-"
    assert 'data-note="outcomes"' in campaigns_section([])


def test_the_full_report_carries_the_section():
    from serving.report.build import build_report

    html = build_report(audience(), activation=CFG, outcomes=[outcome_read()], generated_at=NOW)
    assert 'data-table="outcomes"' in html and 'data-table="kpis_playbook"' in html
