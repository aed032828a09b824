"""AIPL flow between two hand-built snapshots."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from serving.activation.flow import FROM_STATES, TO_STATES, FlowError, aipl_flow


def snapshot(layers: dict[str, str]) -> pd.DataFrame:
    return pd.DataFrame({"user_id": list(layers), "aipl_layer": list(layers.values())})


BEFORE = snapshot({"u1": "A", "u2": "A", "u3": "A", "u4": "I", "u5": "I", "u6": "P", "u7": "P", "u8": "L",
                   "u9": "L", "u10": "none"})
AFTER = snapshot({"u1": "I", "u2": "A", "u3": "none", "u4": "P", "u6": "L", "u7": "I", "u8": "L", "u9": "P",
                  "u10": "A", "u11": "A", "u12": "P"})
# u5 is gone, u11 and u12 are new


@pytest.fixture(scope="module")
def report():
    return aipl_flow(BEFORE, AFTER)


def test_transition_counts_include_new_and_gone(report):
    counts = report.counts
    assert list(counts.index) == list(FROM_STATES) and list(counts.columns) == list(TO_STATES)
    expected = {("A", "I"): 1, ("A", "A"): 1, ("A", "none"): 1, ("I", "P"): 1, ("I", "gone"): 1, ("P", "L"): 1,
                ("P", "I"): 1, ("L", "L"): 1, ("L", "P"): 1, ("none", "A"): 1, ("new", "A"): 1, ("new", "P"): 1}
    for (a, b), n in expected.items():
        assert counts.at[a, b] == n
    assert int(counts.to_numpy().sum()) == 12  # every user of either snapshot exactly once
    assert (report.n_before, report.n_after, report.n_new, report.n_gone) == (10, 11, 2, 1)


def test_row_shares(report):
    assert report.shares.loc["A"].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3, 0])
    assert report.shares.loc["new"].tolist() == pytest.approx([0, 0.5, 0, 0.5, 0, 0])


def test_flow_rates_up_and_down_the_funnel(report):
    assert report.rates["A->I"] == pytest.approx(1 / 3)
    assert report.rates["I->P"] == pytest.approx(1 / 2)
    assert report.rates["P->L"] == pytest.approx(1 / 2)
    assert report.rates["L->P"] == pytest.approx(1 / 2)
    assert report.rates["P->I"] == pytest.approx(1 / 2)
    assert report.rates["I->A"] == 0.0


def test_upgrade_retain_decay_per_layer_add_up_to_one(report):
    assert report.upgrade == pytest.approx({"L": 0.0, "P": 0.5, "I": 0.5, "A": 1 / 3})
    assert report.retain == pytest.approx({"L": 0.5, "P": 0.0, "I": 0.0, "A": 1 / 3})
    assert report.decay == pytest.approx({"L": 0.5, "P": 0.5, "I": 0.5, "A": 1 / 3})  # I's decay is u5 gone
    for layer in "LPIA":
        assert report.upgrade[layer] + report.retain[layer] + report.decay[layer] == pytest.approx(1.0)


def test_reach_and_pl_share_against_the_target(report):
    assert (report.reach_before, report.reach_after) == (9, 10)
    assert report.pl_share_before == pytest.approx(4 / 9)
    assert report.pl_share_after == pytest.approx(5 / 10)
    assert report.pl_target == 0.30 and report.pl_target_met


def test_pl_target_missed():
    low = aipl_flow(BEFORE, snapshot({"a": "A", "b": "A", "c": "I", "d": "P"}))
    assert low.pl_share_after == pytest.approx(0.25) and not low.pl_target_met
    assert aipl_flow(BEFORE, AFTER, pl_target=0.6).pl_target_met is False


def test_to_dict_is_json_ready_with_nulls_for_empty_rows():
    doc = aipl_flow(snapshot({"u1": "A"}), snapshot({"u1": "I"})).to_dict()
    text = json.loads(json.dumps(doc, allow_nan=False))
    assert text["counts"]["A"]["I"] == 1
    assert text["shares"]["L"]["L"] is None  # no L user before
    assert text["rates"]["A->I"] == 1.0 and text["rates"]["P->L"] is None
    assert text["reach_change"] == 0


def test_integer_and_string_ids_are_the_same_user():
    report = aipl_flow(pd.DataFrame({"user_id": [1, 2], "aipl_layer": ["A", "I"]}),
                       snapshot({"1": "I", "2": "P"}))
    assert report.n_new == 0 and report.n_gone == 0 and report.rates["A->I"] == 1.0


def test_empty_snapshots():
    empty = snapshot({})
    report = aipl_flow(empty, empty)
    assert int(report.counts.to_numpy().sum()) == 0
    assert report.reach_after == 0 and math.isnan(report.pl_share_after) and not report.pl_target_met


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (snapshot({"u1": "A"}).rename(columns={"aipl_layer": "layer"}), "lacks column"),
        (pd.DataFrame({"user_id": ["u1", "u1"], "aipl_layer": ["A", "I"]}), "duplicate user_id"),
        (snapshot({"u1": "B"}), "unknown aipl_layer"),
        (pd.DataFrame({"user_id": [None], "aipl_layer": ["A"]}), "null user_id"),
    ],
)
def test_bad_snapshots_raise_readable_errors(bad, message):
    with pytest.raises(FlowError, match=message):
        aipl_flow(bad, AFTER)


def test_flow_between_cutoffs_counts_the_population_of_the_full_spec():
    """The flow builds both snapshots with the caller's spec: a lookback leaves out users idle for longer, as the
    asset summary does; a spec of the windows alone would count them."""
    from datetime import UTC, datetime, timedelta

    from features.build.builder import build_features
    from features.spec.definition import FeatureSpec
    from serving.activation.flow import flow_between

    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    t1 = t0 + timedelta(days=20)
    day = timedelta(days=1)
    events = pd.DataFrame(
        [("a", t0 - 30 * day, "view"), ("a", t1 - 2 * day, "view"),   # idle at t0, back by t1
         ("b", t0 - 2 * day, "view"), ("b", t1 - 3 * day, "buy"),     # A -> P
         ("c", t0 - 5 * day, "cart"),                                  # I, idle by t1
         ("d", t0 - 50 * day, "view")],                               # idle throughout
        columns=["user_id", "ts", "behavior"],
    )
    spec = FeatureSpec(lookback_days=10, target_categories=("c1",))
    flow = flow_between(events, t0, t1, spec)
    assert flow.n_before == len(build_features(events, t0, spec)) == 2
    assert flow.n_after == len(build_features(events, t1, spec)) == 2
    assert (flow.n_new, flow.n_gone) == (1, 1)  # a enters, c leaves
    assert flow.counts.loc["A", "P"] == 1 and flow.counts.loc["new", "A"] == 1 and flow.counts.loc["I", "gone"] == 1
    windows_only = flow_between(events, t0, t1, FeatureSpec(windows=spec.windows))
    assert (windows_only.n_before, windows_only.n_after) == (4, 4)
    with pytest.raises(FlowError, match="must come before the later one"):
        flow_between(events, t1, t0, spec)
