"""The HTML audience report on a hand-built twelve-user audience whose numbers are known."""

from __future__ import annotations

import base64
import math
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from serving.activation.actions import ActivationConfig
from serving.activation.campaigns import build_campaign
from serving.activation.outcomes import measure
from serving.batch.run import AUDIENCE_COLUMNS
from serving.report.build import CHART_NAMES, ReportError, build_report, write_report
from serving.report.data import action_curves, prepare_audience, sample_users
from serving.store.base import SnapshotInfo
from training.evaluate import reliability_table

CFG = ActivationConfig()  # costs: coupon_24h 3.0, ad_retarget 0.8, win_back 2.0
NOW = datetime(2024, 3, 1, 6, 0, tzinfo=UTC)
LATE = datetime(2024, 3, 6, tzinfo=UTC)  # 5 days after the scores' cutoff
EVIL = "<script>alert(1)</script>"
NAN = float("nan")


def audience() -> pd.DataFrame:
    """12 users: L 2, P 2, I 3, A 3, none 2 -> 10 assets, P+L share 40%.

    Actions: u0 win_back (value 10, p 0.7), u4 / u5 coupon_24h (values 5 and 1, p 0.6 / 0.4), u7 ad_retarget
    (value 0.5 < cost 0.8), u9 an unknown action whose name is markup.
    """
    n = 12
    frame = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(n)],
        "p_buy": [0.5, 0.2, 0.3, 0.1, 0.6, 0.4, 0.05, 0.1, 0.02, 0.03, 0.01, 0.01],
        "p_lapse": [0.7, 0.1, 0.2, 0.6] + [NAN] * 8,
        "aipl_layer": ["L", "L", "P", "P", "I", "I", "I", "A", "A", "A", "none", "none"],
        "lifecycle": ["mature", "mature", "growth", "silent", "new", "new", "new", "new", "new", "new", "churned",
                      "churned"],
        "rfm_group": ["at_risk_big", "champions", "promising", "lost"] + ["no_purchase"] * 8,
        "rule_score": np.linspace(1, 0, n),
        "action": ["win_back", "none", "none", "none", "coupon_24h", "coupon_24h", "none", "ad_retarget", "none",
                   "<b>vip</b>", "none", "none"],
        "action_deadline": [None] * n,
        "urgency": [1.0] * n,
        "action_p": [0.7, NAN, NAN, NAN, 0.6, 0.4, NAN, 0.1, NAN, NAN, NAN, NAN],
        "expected_value": [10.0, 0, 0, 0, 5.0, 1.0, 0, 0.5, 0, 0, 0, 0],
        "action_cost": [2.0, 0, 0, 0, 3.0, 3.0, 0, 0.8, 0, 0, 0, 0],
    })
    frame["p_alive"] = [0.9, 0.8, 0.6, 0.3] + [NAN] * 8  # BTYD outputs: past buyers only
    frame["expected_purchases_30d"] = [1.2, 0.8, 0.4, 0.1] + [NAN] * 8
    frame["expected_purchases_90d"] = [3.0, 2.1, 1.0, 0.2] + [NAN] * 8
    frame["clv_365d"] = [400.0, 250.0, 90.0, 10.0] + [NAN] * 8
    frame["next_order_date"] = ["2024-03-09", "2024-03-15", "2024-04-02", None] + [None] * 8
    frame["lift"] = [CFG.lift.get(a, 0.0) for a in frame["action"]]
    frame["incremental_p"] = frame["action_p"].fillna(0.0) * frame["lift"]
    frame["expected_profit"] = frame["expected_value"] - frame["action_cost"]
    frame["priority"] = frame["expected_value"]
    frame["expected_revenue"] = frame["expected_value"] / CFG.margin_rate
    frame["reasons_buy"] = [["recency"]] * n
    frame["reasons_lapse"] = [["gap"]] * n
    frame["reasons_buy_text"] = [[] for _ in range(n)]
    frame["reasons_lapse_text"] = [[] for _ in range(n)]
    frame.at[4, "reasons_buy_text"] = ["carted 2 items in the last day (cart_count_1d)",
                                       "no visit for 19 days, usually every 4 (days_since_last_visit)"]
    frame.at[7, "reasons_buy_text"] = ["<i>odd</i> (x)"]
    frame.at[0, "reasons_lapse_text"] = ["no activity for 40 days, usually every 5 (days_since_last_event)"]
    frame["model_buy"], frame["model_lapse"] = "7", "3"
    frame["as_of"] = "2024-03-01T00:00:00+00:00"
    assert set(frame.columns) == set(AUDIENCE_COLUMNS)
    return frame


def previous() -> pd.DataFrame:
    """u0 P->L, u2 I->P, u4 A->I upgrades, u1 / u3 stay, u99 gone; u5..u11 are new (7)."""
    return pd.DataFrame({"user_id": ["u0", "u1", "u2", "u3", "u4", "u99"],
                         "aipl_layer": ["P", "L", "I", "P", "A", "L"]})


def calibration() -> dict[str, pd.DataFrame]:
    y = np.array([0, 0, 1, 0, 1, 1, 0, 1, 1, 1])
    p = np.linspace(0.05, 0.95, 10)
    return {"last_mile_buyer": reliability_table(y, p, 5), "lapse_risk": reliability_table(y, p, 3)}


MODEL_INFO = {
    "last_mile_buyer": {"version": "7", "test_as_of": "2024-02-20T00:00:00+00:00",
                        "metrics": {"auc": 0.81, "log_loss": 0.12, "ece": 0.004, "lift_top1": 9.2, "lift_top5": 5.1,
                                    "lift_top10": 3.6, "lift_top20": 2.4}},
    "lapse_risk": {"version": EVIL, "trained_at": "2024-02-21T03:00:00Z",
                   "metrics": {"lightgbm.auc": 0.74, "lightgbm.lift_top10": 1.8}},
    "price $x$ model": {"version": "1", "metrics": {"lift_top1": 3.0}},  # '$' must not start math mode
}
SNAPSHOT = SnapshotInfo('"><img src=x onerror=alert(1)>', datetime(2024, 3, 1, 4, 10, tzinfo=UTC), 12, {})


class Page(HTMLParser):
    """Every start tag with its attributes, and the rows of every ``data-table`` table as lists of cell texts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("data-table")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def with_attr(self, name: str) -> dict[str, dict[str, str | None]]:
        return {a[name]: a for _, a in self.tags if a.get(name) is not None}

    def row(self, table: str, first_cell: str) -> list[str]:
        """The row of ``data-table=table`` whose first cell is ``first_cell``."""
        return next(r for r in self.tables[table] if r and r[0] == first_cell)


CAMPAIGN_AS_OF = datetime(2024, 3, 1, tzinfo=UTC)


def outcome_read(close_days: float = 7.0, events_days: float = 8.0) -> dict:
    """A coupon campaign of 1,000 layer-I users: 30% of the treated and 10% of the control buy (amount 50)."""
    n = 1000
    members = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "action_p": 0.1, "priority": 1.0,
                            "aipl_layer": "I", "expected_profit": 1.0})
    campaign = build_campaign(
        members, action="coupon_24h", as_of=CAMPAIGN_AS_OF, created_at=CAMPAIGN_AS_OF, window_days=close_days,
        control_share=0.2, cost_per_user=3.0, model_versions={"last_mile_buyer": "1"}, snapshot_id="s1",
        selection_rule={"rule": "top_k", "budget": None, "top_k": n}, lift_used={"value": 0.15, "source": "prior"})
    rng = np.random.default_rng(1)
    m = campaign.members
    buys = m[rng.random(n) < np.where(m["group"] == "treatment", 0.3, 0.1)]
    events = pd.DataFrame({"user_id": buys["user_id"], "ts": pd.Timestamp(CAMPAIGN_AS_OF) + pd.Timedelta(hours=5),
                           "behavior": "buy", "amount": 50.0})
    return measure(campaign, events, events_end=CAMPAIGN_AS_OF + timedelta(days=events_days), margin_rate=0.3,
                   order_value_default=60.0).to_dict()


@pytest.fixture(scope="module")
def full() -> str:
    from tests.unit.test_report_monitoring import monitoring_report

    return build_report(audience(), previous=previous(), model_info=MODEL_INFO, calibration=calibration(),
                        snapshot_info=SNAPSHOT, activation=CFG, outcomes=[outcome_read()],
                        monitoring=monitoring_report(), generated_at=NOW)


@pytest.fixture(scope="module")
def bare() -> str:
    return build_report(audience(), activation=CFG, generated_at=LATE)


def test_every_chart_is_an_inline_png_with_alt_text(full):
    charts = Page(full).with_attr("data-chart")
    assert set(charts) == set(CHART_NAMES)
    for name, attrs in charts.items():
        assert attrs["id"] == f"img-{name}"
        assert len(attrs["alt"] or "") > 30, name
        src = attrs["src"] or ""
        assert src.startswith("data:image/png;base64,"), name
        png = base64.b64decode(src.removeprefix("data:image/png;base64,"))
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, name
    assert not Page(full).with_attr("data-note")


def test_report_is_self_contained(full):
    page = Page(full)
    assert "http://" not in full and "https://" not in full
    for tag, attrs in page.tags:
        assert tag not in ("script", "link", "iframe", "object", "embed"), tag
        for key in ("src", "href"):
            if attrs.get(key) is not None:
                assert attrs[key].startswith("data:"), (tag, attrs[key][:60])
    csp = [a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]


def test_user_strings_are_escaped(full):
    assert EVIL not in full and "&lt;script&gt;alert(1)&lt;/script&gt;" in full
    assert "<img src=x" not in full and "onerror=alert(1)&gt;" in full
    assert "<b>vip</b>" not in full and "&lt;b&gt;vip&lt;/b&gt;" in full  # the unknown action is named, escaped
    assert not [t for t, _ in Page(full).tags if t in ("script", "b")]


def test_headline_numbers(full):
    kpis = Page(full).with_attr("data-kpi")
    assert len(kpis) == 6
    text = full[full.index('id="summary"'): full.index('id="assets"')]
    for value, label in (("12", "Users scored"), ("10", "Audience assets"), ("40.0%", "P+L share"),
                         ("4", "Users with an action now"), ("0.1", "Purchases the best-profit audiences cause"),
                         ("10.00", "Incremental profit")):
        assert f'<div class="value">{value}</div><div class="label">{label}' in text, (value, label)
    assert 'class="kpi good"' in text  # 40% >= the 30% target


def test_per_action_table_uses_the_best_profit_audience(full):
    page = Page(full)
    # action, what it is, candidates, best-profit audience, cost/user, total cost, untreated, untreated rate, lift,
    # incremental conversions (untreated x lift), incremental profit
    assert page.row("actions", "coupon_24h")[2:] == [
        "2", "1", "3.00", "3.00", "0.6", "60.0%", "+15% (prior)", "0.1", "2.00"]
    assert page.row("actions", "win_back")[2:] == [
        "1", "1", "2.00", "2.00", "0.7", "70.0%", "+10% (prior)", "0.1", "8.00"]
    assert page.row("actions", "ad_retarget")[2:] == [
        "1", "0", "0.80", "0.00", "0.0", "n/a", "+10% (prior)", "0.0", "0.00"]
    assert page.row("aipl", "L loyal")[:4] == ["L loyal", "2", "16.7%", "20.0%"]


def test_sample_users_show_the_readable_reasons_of_the_score_their_action_rides_on(full):
    page = Page(full)
    assert [r[0] for r in page.tables["sample_users"][1:]] == ["u4", "u5", "u7", "u0"]  # precedence, then priority
    assert page.row("sample_users", "u4") == [
        "u4", "coupon_24h", "60.0%", "2.00", "I interested",
        "carted 2 items in the last day (cart_count_1d); no visit for 19 days, usually every 4 (days_since_last_visit)"]
    assert page.row("sample_users", "u0")[1] == "win_back"
    assert page.row("sample_users", "u0")[-1] == "no activity for 40 days, usually every 5 (days_since_last_event)"
    assert page.row("sample_users", "u5")[-1] == "recency"  # no phrases (an older audience file): the feature names
    assert page.row("sample_users", "u7")[-1] == "<i>odd</i> (x)" and "<i>" not in full  # escaped


def test_sample_users_without_reasons_or_actions():
    frame = audience().drop(columns=["reasons_buy", "reasons_buy_text", "reasons_lapse", "reasons_lapse_text"])
    samples = sample_users(frame, per_action=1)
    assert samples["user_id"].tolist() == ["u4", "u7", "u0"] and samples["why"].map(len).eq(0).all()
    html = build_report(frame, activation=CFG, generated_at=NOW)
    assert Page(html).row("sample_users", "u4")[-1] == "not explained"
    nobody = sample_users(frame.assign(action="none"))
    assert nobody.empty and list(nobody.columns) == ["user_id", "action", "action_p", "expected_profit",
                                                       "aipl_layer", "why"]


def test_models_and_freshness_tables(full):
    page = Page(full)
    assert page.row("models", "Last-mile buyer (p_buy)") == [
        "Last-mile buyer (p_buy)", "7", "7", "0.810", "0.1200", "0.0040", "3.60", "2024-02-20 00:00 UTC"]
    lapse = page.row("models", "About to lapse (p_lapse)")
    assert lapse[1] == EVIL and lapse[3] == "0.740" and lapse[6] == "1.80"  # MLflow-prefixed metrics are read
    assert page.row("freshness", "age of the scores at report time")[1] == "1.8 hours"  # since scoring (04:10)
    assert page.row("freshness", "age of the data at report time (since the cutoff)")[1] == "6.0 hours"
    assert page.row("freshness", "snapshot published")[1] == "2024-03-01 04:10 UTC"  # from a SnapshotInfo
    assert page.row("freshness", "users in the snapshot")[1] == "12"
    # the lapse model described (EVIL) is not the version that scored the audience (3): the page says so
    assert "scored with version(s) 3" in full


def test_flow_chart_summarises_the_moves(full):
    alt = Page(full).with_attr("data-chart")["aipl_flow"]["alt"]
    assert "6 users before, 12 now, 7 new, 1 gone" in alt
    assert "P+L share 67% -> 40%" in alt  # before: 4 of 6 assets in P or L


def test_without_previous_calibration_or_models_notes_replace_charts(bare):
    page = Page(bare)
    notes, charts = page.with_attr("data-note"), page.with_attr("data-chart")
    assert set(notes) == {"aipl_flow", "calibration", "lift", "outcomes", "monitoring"}  # no campaign read yet,
    # no monitoring report
    assert set(charts) == set(CHART_NAMES) - set(notes)
    assert "No previous snapshot was given" in bare and "No calibration tables" in bare
    assert page.row("freshness", "snapshot")[1] == "n/a"


def test_empty_audience_as_read_back_from_parquet():
    empty = pd.DataFrame({c: pd.Series([], dtype="string") for c in AUDIENCE_COLUMNS})
    html = build_report(empty, model_info=None, activation=CFG, generated_at=NOW)
    page = Page(html)
    assert set(page.with_attr("data-note")) == {*CHART_NAMES, "outcomes", "monitoring"}
    assert not page.with_attr("data-chart")
    assert '<div class="value">0</div><div class="label">Users scored' in html
    assert '<div class="value">n/a</div><div class="label">P+L share' in html  # no assets: no share to judge
    assert page.row("actions", "coupon_24h")[2:4] == ["0", "0"]


def test_stale_scores_get_a_warning(full, bare):
    assert "days old" not in full  # scored 6 hours before the report
    assert "These scores are 5.0 days old" in bare
    empty = build_report(audience().head(0), activation=CFG, generated_at=LATE)
    assert "days old" not in empty  # no users, no as_of: nothing to call stale


def test_score_age_counts_from_the_scoring_time_and_the_cutoff_apart():
    """A batch scored today from data that ended 10 days ago: fresh scores, stale data, each said once."""
    scored = datetime(2024, 3, 11, 4, 0, tzinfo=UTC)
    snap = {"snapshot_id": "20240311T040000Z-abcdef", "created_at": scored, "rows": 12}
    html = build_report(audience(), snapshot_info=snap, activation=CFG, generated_at=scored + timedelta(hours=2))
    page = Page(html)
    assert page.row("freshness", "age of the scores at report time")[1] == "2.0 hours"
    assert page.row("freshness", "age of the data at report time (since the cutoff)")[1] == "10.2 days"
    assert "days old" not in html and "10.2 days before they were scored" in html
    late = build_report(audience(), snapshot_info=snap, activation=CFG, generated_at=scored + timedelta(days=3))
    assert "These scores are 3.0 days old" in late


def test_bad_input_gets_a_clear_error():
    with pytest.raises(ReportError, match=r"lacks column\(s\) \['p_lapse'\]"):
        build_report(audience().drop(columns="p_lapse"), activation=CFG, generated_at=NOW)
    bad = audience()
    bad.loc[0, "p_buy"] = 1.5
    with pytest.raises(ReportError, match="p_buy.*probabilities"):
        build_report(bad, activation=CFG, generated_at=NOW)
    with pytest.raises(ReportError, match="previous snapshot cannot be compared.*duplicate"):
        build_report(audience(), previous=pd.concat([previous(), previous()]), activation=CFG, generated_at=NOW)
    with pytest.raises(ReportError, match="calibration"):
        build_report(audience(), calibration={"lapse_risk": pd.DataFrame({"x": [1]})}, activation=CFG,
                     generated_at=NOW)
    with pytest.raises(ReportError, match="generated_at must be a datetime"):
        build_report(audience(), activation=CFG, generated_at="2024-03-01")  # type: ignore[arg-type]


def test_action_curves_take_users_by_priority():
    frame = prepare_audience(audience().drop(columns=["expected_revenue", "incremental_p"]), CFG)  # older files
    curves = action_curves(frame, CFG)
    assert list(curves) == ["coupon_24h", "ad_retarget", "win_back"]  # precedence order, only actions with users
    coupon = curves["coupon_24h"]
    assert coupon.size.tolist() == [1, 2]
    # older files carry no incremental_p: the configured lift (coupon prior +15%) over action_p rebuilds it
    assert coupon.expected_incremental.tolist() == pytest.approx([0.6 * 0.15, 1.0 * 0.15])
    assert coupon.untreated_rate.tolist() == pytest.approx([0.6, 0.5])
    assert coupon.summary.size == 1 and math.isclose(coupon.summary.expected_profit, 2.0)
    # an audience without expected_revenue gets it rebuilt as value / margin
    assert frame.loc[4, "expected_revenue"] == pytest.approx(5.0 / CFG.margin_rate)


def test_write_report_round_trips(tmp_path, bare):
    path = write_report(bare, tmp_path / "reports" / "audience.html")
    assert path == tmp_path / "reports" / "audience.html"
    assert path.read_text(encoding="utf-8") == bare
    assert [p.name for p in path.parent.iterdir()] == ["audience.html"]  # no temp file left behind
