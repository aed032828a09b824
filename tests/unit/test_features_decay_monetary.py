"""Decay weights, monetary and repurchase-cadence features on hand-computed frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from features.build.builder import build_features, default_connection, events_table
from features.spec.definition import FeatureSpec
from features.spec.table import event_weights

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
NAN = np.nan


def events(rows: list[tuple], with_amount: bool = True) -> pd.DataFrame:
    """rows: (user, age in days before AS_OF, behavior[, item, category, channel, amount])."""
    full = [tuple(r) + (None,) * (7 - len(r)) for r in rows]
    frame = pd.DataFrame(full, columns=["user_id", "age", "behavior", "item_id", "category_id", "channel", "amount"])
    frame["ts"] = [AS_OF - timedelta(days=a) for a in frame.pop("age")]
    frame["amount"] = frame["amount"].astype("float64")
    return frame if with_amount else frame.drop(columns=["amount"])


def expect(data: dict[str, list], index: list[str]) -> pd.DataFrame:
    return pd.DataFrame(data, index=pd.Index(index, name="user_id"))


def got(features: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return features.set_index("user_id")[columns]


def test_decay_sums_per_layer_with_channel_multipliers():
    ev = events(
        [
            ("u1", 3, "view"),                              # 1 - 3/15 = 0.8, neutral x1
            ("u1", 6, "view", None, None, "search"),        # (1 - 6/15) x1.5 = 0.9
            ("u1", 15, "visit"),                            # at the span: 0
            ("u1", 20, "view", None, None, "ad"),           # beyond the span: 0
            ("u1", 9, "fav", None, None, "ad"),             # (1 - 9/90) x2 = 1.8
            ("u1", 45, "cart", None, None, "recommend"),    # (1 - 45/90) x0.8 = 0.4
            ("u1", 73, "buy", None, None, None, 5.0),       # 1 - 73/365 = 0.8
            ("u2", 400, "buy", None, None, None, 1.0),      # beyond 365 days: 0
        ]
    )
    f = got(build_features(ev, AS_OF), ["decay_browse", "decay_interest", "decay_purchase"])
    expected = expect(
        {"decay_browse": [1.7, 0.0], "decay_interest": [2.2, 0.0], "decay_purchase": [0.8, 0.0]}, ["u1", "u2"]
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)


def test_decay_spans_and_multipliers_come_from_the_spec():
    ev = events([("u1", 3, "view", None, None, "ad"), ("u1", 5, "fav", None, None, "recommend")])
    spec = FeatureSpec(decay_browse_days=6.0, decay_interest_days=10.0, ad_multiplier=3.0, passive_multiplier=0.5)
    row = build_features(ev, AS_OF, spec).iloc[0]
    assert row.decay_browse == 0.5 * 3.0
    assert row.decay_interest == 0.5 * 0.5


def test_event_weights_expose_age_day_layer_decay_and_multiplier():
    ev = events(
        [("u1", 2.5, "view", None, None, "search"), ("u1", 100, "buy"), ("u1", 1, "cart", None, None, "other"),
         ("u1", 0, "view")]
    )
    table = event_weights(events_table(ev), AS_OF, FeatureSpec())
    w = default_connection().to_pandas(table).sort_values("age_days").reset_index(drop=True)
    expected = pd.DataFrame(
        {
            "age_days": [1.0, 2.5, 100.0],
            "day": [0, 2, 99],
            "layer": ["interest", "browse", "purchase"],
            "decay": [1 - 1 / 90, 1 - 2.5 / 15, 1 - 100 / 365],
            "multiplier": [1.0, 1.5, 1.0],
        }
    )
    pd.testing.assert_frame_equal(w[list(expected.columns)], expected, check_dtype=False, rtol=1e-12)
    assert np.allclose(w["weight"], w["decay"] * w["multiplier"])


def test_monetary_and_repurchase_cadence():
    ev = events(
        [
            ("u1", 40, "buy", "i1", None, None, 20.0),
            ("u1", 100, "buy", "i2", None, None, 10.0),
            ("u1", 400, "buy", "i3", None, None, 30.0),
            ("u1", 41, "view", "i1"),
            ("u2", 2.2, "buy", "i1", None, None, 7.0),      # two buys in the same day bucket: 1 purchase day
            ("u2", 2.9, "buy", "i2", None, None, None),     # amount unknown: not in the sum or the mean
            ("u3", 1, "view"),                              # never bought
        ]
    )
    cols = ["buy_count", "purchase_days", "purchase_days_365d", "amount_total", "amount_mean", "amount_365d",
            "purchase_gap_mean_days", "repurchase_cycle_ratio"]
    expected = expect(
        {
            "buy_count": [3, 2, 0],
            "purchase_days": [3, 1, 0],
            "purchase_days_365d": [2, 1, 0],
            "amount_total": [60.0, 7.0, 0.0],
            "amount_mean": [20.0, 7.0, NAN],
            "amount_365d": [30.0, 7.0, 0.0],
            "purchase_gap_mean_days": [(400 - 40) / 2, NAN, NAN],
            "repurchase_cycle_ratio": [40 / 180, NAN, NAN],
        },
        ["u1", "u2", "u3"],
    )
    pd.testing.assert_frame_equal(got(build_features(ev, AS_OF), cols), expected, rtol=1e-12)


def test_without_amount_column_amounts_are_null_and_counts_still_work():
    ev = events([("u1", 5, "buy"), ("u1", 50, "buy"), ("u2", 1, "view")], with_amount=False)
    f = got(build_features(ev, AS_OF), ["buy_count", "purchase_days", "amount_total", "amount_mean", "amount_365d",
                                         "purchase_gap_mean_days"])
    expected = expect(
        {"buy_count": [2, 0], "purchase_days": [2, 0], "amount_total": [NAN, NAN], "amount_mean": [NAN, NAN],
         "amount_365d": [NAN, NAN], "purchase_gap_mean_days": [45.0, NAN]},
        ["u1", "u2"],
    )
    pd.testing.assert_frame_equal(f, expected, rtol=1e-12)
