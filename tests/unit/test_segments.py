"""Lifecycle stages, RFM groups, segment codes and the asset summary on hand-computed frames."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features, default_connection, events_table
from features.segments.segmenter import (
    AIPL_CODES,
    LIFECYCLE_CODES,
    LIFECYCLE_STAGES,
    RFM_CODES,
    LifecycleSegmenter,
    RFMSegmenter,
    Segmenter,
    SegmentError,
    asset_summary,
    coverage_quantile,
    encode_segments,
    gap_samples,
)

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
NAN = np.nan


def events(rows: list[tuple]) -> pd.DataFrame:
    """rows: (user, age in days before AS_OF, behavior[, amount])."""
    full = [tuple(r) + (None,) * (4 - len(r)) for r in rows]
    frame = pd.DataFrame(full, columns=["user_id", "age", "behavior", "amount"])
    frame["ts"] = [AS_OF - timedelta(days=a) for a in frame.pop("age")]
    frame["amount"] = frame["amount"].astype("float64")
    return frame


def day_events(user: str, days: list[int], behavior: str = "view") -> list[tuple]:
    """One event in the middle of each day bucket (bucket k = ages in (k, k+1] days)."""
    return [(user, d + 0.5, behavior) for d in days]


# A history whose 80/20 thresholds are known: active-day gaps [1 x7, 2, 3, 10] -> C = 2;
# order-to-next-visit gaps [1, 2, 3] -> S = 3.
FIT_EVENTS = events(
    day_events("a", [30, 29, 28, 27, 26, 25, 24, 23]) + day_events("a", [30], "buy")
    + day_events("b", [20], "buy") + day_events("b", [18])
    + day_events("c", [15], "buy") + day_events("c", [12])
    + day_events("d", [40, 30])
)


def test_gap_samples_by_hand_with_censoring_and_the_as_of_boundary():
    ev = events(
        [("u1", 10.5, "view"), ("u1", 9.5, "buy"), ("u1", 7.5, "view"), ("u1", 2.5, "view"), ("u1", 2.4, "view"),
         ("u2", 20.5, "buy"), ("u2", 5.5, "buy"), ("u2", 5.2, "view"),
         ("u3", 1.0, "view"), ("u3", 0.0, "view")]  # the event at as_of is excluded: no gap for u3
    )
    got = default_connection().to_pandas(gap_samples(events_table(ev), AS_OF))
    got = got.sort_values(["user_id", "kind", "gap_days"]).reset_index(drop=True)
    expected = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2", "u2", "u2"],
            "kind": ["active_day", "active_day", "active_day", "order_return", "active_day", "order_return",
                     "purchase_day"],
            "gap_days": [1, 2, 5, 2, 15, 15, 15],
        }
    )
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_coverage_quantile_is_the_smallest_gap_covering_the_share():
    assert coverage_quantile({1: 7, 2: 1, 5: 2}, 0.8) == 2.0
    assert coverage_quantile({1: 7, 2: 1, 5: 2}, 0.81) == 5.0
    assert coverage_quantile({3: 1}, 0.8) == 3.0
    assert coverage_quantile({}, 0.8) is None


# S below C: order-to-next-visit gaps [1 x3, 2 x2] -> S = 2; active-day gaps [1 x3, 2 x2, 5 x5] -> C = 5.
BELOW_EVENTS = events(
    [e for u in "bcd" for e in day_events(u, [20], "buy") + day_events(u, [19])]
    + [e for u in "ef" for e in day_events(u, [20], "buy") + day_events(u, [18])]
    + day_events("v", [40, 35, 30, 25, 20, 15])
)
# S at or above C: returns [2 x20] and late ones [4, 5, 6, 7, 20] -> S = 2; active-day gaps [1 x30, 2 x20, ...]
# -> visit gap 2, not above S; 80% of the 5 returns slower than S came back within 7 days -> C = 7.
LATE_EVENTS = events(
    [e for i in range(20) for e in day_events(f"b{i}", [30], "buy") + day_events(f"b{i}", [28])]
    + [e for i, g in enumerate([4, 5, 6, 7, 20])
       for e in day_events(f"s{i}", [40], "buy") + day_events(f"s{i}", [40 - g])]
    + day_events("v", list(range(31))) + day_events("quiet", [3], "buy")  # quiet: silent at AS_OF, no gap sample
)


def test_lifecycle_fit_learns_s_and_c_by_the_80_20_rule_when_s_is_below_c():
    seg = LifecycleSegmenter().fit(BELOW_EVENTS, AS_OF)
    assert (seg.silent_days_, seg.churn_days_, seg.visit_gap_days_) == (2.0, 5.0, 5.0)
    assert (seg.silent_source_, seg.churn_source_) == ("fitted", "fitted")
    assert seg.n_samples_ == {"order_return": 5, "active_day": 10, "purchase_day": 0}
    assert seg.rule_ == "S = 2 d: 80% of 5 order-to-next-visit gaps; C = 5 d: 80% of 10 gaps between active days"
    features = pd.DataFrame({"days_since_last_event": [1, 1, 1, 2, 4.9, 5, 4.9, 5],
                             "purchase_days": [0, 1, 2, 1, 3, 1, 0, 0]})
    assert seg.predict(features).tolist() == ["new", "growth", "mature", "silent", "silent", "churned", "new",
                                              "churned"]


def test_lifecycle_keeps_every_stage_reachable_when_the_data_put_s_above_c():
    """Buyers come back after an order more slowly than visitors between visits: the 80/20 rule applied to the
    returns slower than S sets C, so silent buyers exist and a 3-day-old lone view is not churned."""
    seg = LifecycleSegmenter().fit(LATE_EVENTS, AS_OF)
    assert (seg.silent_days_, seg.visit_gap_days_, seg.churn_days_) == (2.0, 2.0, 7.0)
    assert (seg.silent_source_, seg.churn_source_) == ("fitted", "late_returns")
    assert seg.rule_ == (
        "S = 2 d: 80% of 25 order-to-next-visit gaps; C = 7 d: the visit gap (2 d, 80% of 55 gaps between active "
        "days) is not above S, so 80% of the 5 returns slower than S came back within it"
    )
    features = pd.DataFrame({"days_since_last_event": [1, 1, 1, 2, 6.9, 7, 3, 7],
                             "purchase_days": [0, 1, 2, 1, 2, 1, 0, 0]})
    stages = seg.predict(features).tolist()
    assert stages == ["new", "growth", "mature", "silent", "silent", "churned", "new", "churned"]
    assert set(stages) == set(LIFECYCLE_STAGES)
    # no return slower than S at all: C = 2 S
    lone = LifecycleSegmenter().fit(FIT_EVENTS, AS_OF)
    assert (lone.silent_days_, lone.visit_gap_days_, lone.churn_days_) == (3.0, 2.0, 6.0)
    assert lone.churn_source_ == "twice_silent" and lone.rule_.endswith("no return was slower than S, so C = 2 S")


def test_lifecycle_given_thresholds_that_leave_silent_empty_are_refused():
    with pytest.raises(SegmentError, match=r"churn_days C = 10 must be above silent_days S = 10 \(given\)"):
        LifecycleSegmenter(silent_days=10, churn_days=10).fit(None, AS_OF)
    with pytest.raises(SegmentError, match=r"must be above silent_days S = 2 \(fitted\).*larger churn_days$"):
        LifecycleSegmenter(churn_days=2).fit(LATE_EVENTS, AS_OF)
    given_s = LifecycleSegmenter(silent_days=5).fit(LATE_EVENTS, AS_OF)  # late returns > 5 days: [6, 7, 20] -> 20
    assert (given_s.silent_days_, given_s.churn_days_, given_s.churn_source_) == (5.0, 20.0, "late_returns")


def test_lifecycle_fit_on_purchase_only_data_uses_purchase_day_gaps_and_defaults_without_samples():
    seg = LifecycleSegmenter().fit(events([("p", 50.5, "buy", 1.0), ("p", 40.5, "buy"), ("p", 38.5, "buy")]), AS_OF)
    assert (seg.silent_days_, seg.visit_gap_days_, seg.churn_days_) == (10.0, 10.0, 20.0)
    assert (seg.silent_source_, seg.churn_source_) == ("purchase_days", "twice_silent")
    assert seg.rule_.startswith("S = 10 d: 80% of 2 gaps between purchase days; C = 20 d: the visit gap (10 d, ")
    lone = LifecycleSegmenter(default_silent_days=7, default_churn_days=21).fit(events([("x", 3, "view")]), AS_OF)
    assert (lone.silent_days_, lone.churn_days_, lone.churn_source_) == (7.0, 21.0, "default")


def test_lifecycle_stages_and_precedence_with_given_thresholds():
    seg = LifecycleSegmenter(silent_days=10, churn_days=30).fit(None, AS_OF)  # nothing to learn: no scan
    features = pd.DataFrame(
        {
            "days_since_last_event": [1, 1, 9.99, 10, 29, 30, 45, 15, NAN],
            "purchase_days": [0, 1, 3, 1, 5, 5, 0, 0, 0],
        },
        index=list("abcdefghi"),
    )
    stages = seg.predict(features)
    expected = ["new", "growth", "mature", "silent", "silent", "churned", "churned", "new", "churned"]
    assert stages.tolist() == expected and list(stages.index) == list("abcdefghi")
    assert seg.transform(features)["lifecycle"].tolist() == expected
    assert (seg.silent_source_, seg.churn_source_) == ("given", "given")


def test_segmenters_refuse_use_before_fit_and_missing_columns():
    with pytest.raises(SegmentError, match="not fitted"):
        LifecycleSegmenter().predict(pd.DataFrame({"days_since_last_event": [1], "purchase_days": [0]}))
    with pytest.raises(SegmentError, match="not fitted"):
        Segmenter().transform(pd.DataFrame())
    seg = LifecycleSegmenter(silent_days=1, churn_days=2).fit(None, AS_OF)
    with pytest.raises(SegmentError, match="purchase_days"):
        seg.predict(pd.DataFrame({"days_since_last_event": [1]}))
    with pytest.raises(SegmentError, match="amount_total"):
        RFMSegmenter().fit(pd.DataFrame({"days_since_last_buy": [1.0], "purchase_days": [1], "buy_count": [1]}))


def rfm_frame(rows: list[tuple]) -> pd.DataFrame:
    """rows: (days_since_last_buy, purchase_days, amount_total); buy_count = purchase_days."""
    frame = pd.DataFrame(rows, columns=["days_since_last_buy", "purchase_days", "amount_total"])
    frame["buy_count"] = frame["purchase_days"]
    return frame


# recency 1..10 -> R threshold 2 (observed 20% quantile); purchase days {1 x7, 2, 3, 4} -> F threshold 2.2;
# amounts 10..100 -> M threshold 82. Two non-buyers are ignored by the fit.
RFM_TRAIN = rfm_frame(
    [(1, 4, 100), (2, 3, 10), (3, 1, 90), (4, 1, 20), (5, 1, 30), (6, 1, 40), (7, 1, 50), (8, 2, 60), (9, 1, 70),
     (10, 1, 80), (NAN, 0, 0.0), (NAN, 0, 0.0)]
)


def test_rfm_thresholds_and_all_eight_groups_by_hand():
    rfm = RFMSegmenter().fit(RFM_TRAIN)
    assert (rfm.recency_threshold_, rfm.frequency_threshold_, rfm.monetary_threshold_) == pytest.approx((2, 2.2, 82))
    assert rfm.monetary_column_ == "amount_total" and rfm.n_buyers_ == 10
    probe = rfm_frame(
        [(1, 5, 200), (2, 3, 1), (1, 1, 200), (1, 1, 1), (50, 5, 200), (50, 5, 1), (50, 1, 200), (50, 1, 1),
         (NAN, 0, 0.0), (2.01, 2, 82)]
    )
    assert rfm.predict(probe).tolist() == [
        "champions", "loyal_low_spend", "big_spenders_new", "promising", "at_risk_big", "at_risk_loyal",
        "hibernating_big", "lost", "no_purchase", "lost",
    ]


def test_rfm_without_amounts_uses_buy_count_for_monetary():
    frame = RFM_TRAIN.assign(amount_total=NAN, buy_count=[9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    rfm = RFMSegmenter().fit(frame)
    assert rfm.monetary_column_ == "buy_count" and rfm.monetary_threshold_ == pytest.approx(1.0)
    assert rfm.predict(frame).tolist()[:2] == ["champions", "loyal_low_spend"]


def test_segmenter_fit_transform_round_trips_through_json_and_pickle():
    features = build_features(FIT_EVENTS, AS_OF)
    seg = Segmenter().fit(FIT_EVENTS, features, AS_OF)
    out = seg.transform(features)
    assert list(out.columns[-2:]) == ["lifecycle", "rfm_group"] and len(out) == len(features)
    # a: last event 23.5 d ago >= C = 6 (S = 3 >= the visit gap 2, no slower return: 2 S) -> churned; d as well
    assert dict(zip(out.user_id, out.lifecycle, strict=False)) == {
        "a": "churned", "b": "churned", "c": "churned", "d": "churned"
    }
    assert set(out.rfm_group) <= set(RFM_CODES)
    restored = Segmenter.from_dict(json.loads(json.dumps(seg.to_dict())))
    pd.testing.assert_frame_equal(restored.transform(features), out)
    assert restored.lifecycle_.rule_ == seg.lifecycle_.rule_ and restored.lifecycle_.churn_source_ == "twice_silent"
    pd.testing.assert_frame_equal(pickle.loads(pickle.dumps(seg)).transform(features), out)
    given = Segmenter(lifecycle=LifecycleSegmenter(silent_days=100, churn_days=200)).fit(FIT_EVENTS, features, AS_OF)
    assert given.transform(features).lifecycle.tolist() == ["growth", "growth", "growth", "new"]


def labelled() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "aipl_layer": ["L", "P", "I", "A", "none"],
            "lifecycle": ["mature", "growth", "new", "new", "churned"],
            "rfm_group": ["champions", "promising", "no_purchase", "no_purchase", "lost"],
        },
        index=[10, 11, 12, 13, 14],
    )


def test_encode_segments_uses_the_fixed_documented_codes():
    codes = encode_segments(labelled())
    expected = pd.DataFrame(
        {"aipl_code": [4, 3, 2, 1, 0], "lifecycle_code": [2, 1, 0, 0, 4], "rfm_code": [8, 5, 0, 0, 1]},
        index=[10, 11, 12, 13, 14],
    )
    pd.testing.assert_frame_equal(codes, expected)
    assert AIPL_CODES == {"none": 0, "A": 1, "I": 2, "P": 3, "L": 4}
    assert list(LIFECYCLE_CODES) == ["new", "growth", "mature", "silent", "churned"]
    assert sorted(RFM_CODES.values()) == list(range(9))
    assert list(encode_segments(labelled(), columns=("aipl_layer",)).columns) == ["aipl_code"]
    with pytest.raises(SegmentError, match="unknown lifecycle"):
        encode_segments(labelled().assign(lifecycle="zombie"))
    with pytest.raises(SegmentError, match="rfm_group"):
        encode_segments(labelled().drop(columns=["rfm_group"]))


def test_asset_summary_sizes_shares_and_pl_target():
    doc = asset_summary(labelled())
    assert doc["n_users"] == 5 and doc["n_assets"] == 4
    assert doc["aipl"]["L"] == {"count": 1, "share": 0.2} and doc["aipl"]["none"]["count"] == 1
    assert doc["lifecycle"]["new"] == {"count": 2, "share": 0.4} and doc["lifecycle"]["silent"]["count"] == 0
    assert doc["rfm_group"]["no_purchase"]["count"] == 2
    assert doc["pl_share"] == 0.5 and doc["pl_target_met"] is True
    assert asset_summary(labelled(), pl_target=0.6)["pl_target_met"] is False
    assert json.loads(json.dumps(doc)) == doc
    assert "lifecycle_rule" not in doc


def test_asset_summary_says_which_rule_set_s_and_c():
    features = build_features(LATE_EVENTS, AS_OF)
    seg = Segmenter().fit(LATE_EVENTS, features, AS_OF)
    doc = asset_summary(seg.transform(features), segmenter=seg)
    assert doc["lifecycle_rule"] == {
        "silent_days": 2.0, "churn_days": 7.0, "silent_source": "fitted", "churn_source": "late_returns",
        "rule": seg.lifecycle_.rule_,
    }
    assert doc["lifecycle"]["silent"]["count"] > 0
    assert asset_summary(seg.transform(features), segmenter=seg.lifecycle_)["lifecycle_rule"] == doc["lifecycle_rule"]
    with pytest.raises(SegmentError, match="not fitted"):
        asset_summary(labelled(), segmenter=Segmenter())
