"""The online execution of the feature spec equals the batch feature table on random histories (every column).

Histories mix every behavior, channel, item and category, with ages at the window edges (exactly 1, 2, 3, 7,
15, 30, 35, 90 and 365 days, one second either side of a day) and users with a single event.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.build.builder import build_features
from features.events.schema import BEHAVIORS
from features.online.arrays import EventArrays
from features.online.compute import online_feature_table, split_by_user
from features.spec.definition import FeatureSpec, output_columns

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
DAY = 86_400
FAST = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)
SPECS = {
    "default": FeatureSpec(),
    "targets": FeatureSpec(target_categories=("c0", "c2")),
    "lookback": FeatureSpec(lookback_days=30, trend_days=5, trend_base_days=20, windows=(1, 4, 30)),
}

edge_ages = st.sampled_from(
    [DAY * d + s for d in (1, 2, 3, 7, 15, 30, 35, 90, 365) for s in (-1, 0, 1)] + [1, 0, DAY - 1, DAY + 1]
)
age_s = st.one_of(st.integers(1, 400 * DAY), edge_ages, st.integers(-3 * DAY, -1))  # negative: after as_of
event = st.tuples(
    st.sampled_from(["u0", "u1", "u2", "u3"]),
    st.sampled_from((*BEHAVIORS, "buy", "cart")),
    st.sampled_from([None, "i0", "i1", "i2", "i3"]),
    st.sampled_from([None, "c0", "c1", "c2"]),
    st.sampled_from([None, "search", "recommend", "ad", "live"]),
    st.one_of(st.none(), st.floats(0, 500, allow_nan=False)),
)
history = st.lists(st.tuples(event, age_s), min_size=1, max_size=60)


def frame(rows: list[tuple]) -> pd.DataFrame:
    data = [
        (u, AS_OF - timedelta(seconds=s), b, i, c, ch, amt if b == "buy" else None)
        for (u, b, i, c, ch, amt), s in rows
    ]
    return pd.DataFrame(data, columns=["user_id", "ts", "behavior", "item_id", "category_id", "channel", "amount"])


def online(events: pd.DataFrame, as_of: datetime, spec: FeatureSpec, **kw) -> pd.DataFrame:
    arrays = EventArrays.from_frame(events)
    return online_feature_table(split_by_user(events["user_id"].to_numpy(), arrays), as_of, spec, **kw)


def assert_parity(batch: pd.DataFrame, live: pd.DataFrame, spec: FeatureSpec) -> None:
    assert list(live.columns) == output_columns(spec)
    assert list(live["user_id"]) == list(batch["user_id"])
    for name in output_columns(spec):
        a, b = batch[name], live[name]
        assert a.dtype == b.dtype, (name, a.dtype, b.dtype)
        if a.dtype == "float64":
            np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-9, atol=1e-9, equal_nan=True, err_msg=name)
        else:
            assert a.tolist() == b.tolist(), name


CART_EDGES = [
    (("u0", "cart", "i0", "c0", "ad", None), 90 * DAY), (("u0", "buy", "i0", "c0", None, 5.0), 90 * DAY),
    (("u0", "cart", "i1", "c0", "search", None), 2 * DAY), (("u0", "buy", "i1", "c1", None, None), 3 * DAY),
    (("u1", "view", "i2", "c2", "recommend", None), 0), (("u1", "visit", None, None, None, None), 365 * DAY),
    (("u2", "buy", "i0", None, None, 1.5), -1),
]


@FAST
@given(history, st.sampled_from(sorted(SPECS)))
@example(CART_EDGES, "default")
@example(CART_EDGES, "targets")
def test_online_features_equal_the_batch_table_on_every_column(rows, spec_name):
    spec = SPECS[spec_name]
    events = frame(rows)
    assert_parity(build_features(events, AS_OF, spec), online(events, AS_OF, spec), spec)


@FAST
@given(history)
def test_parity_holds_without_item_and_amount_columns(rows):
    spec = SPECS["targets"]
    events = frame(rows).drop(columns=["item_id", "amount"])
    batch = build_features(events, AS_OF, spec)
    assert_parity(batch, online(events, AS_OF, spec, has_item=False, has_amount=False), spec)


def test_a_cutoff_between_batches_sees_only_events_before_it():
    events = frame([(("u0", "view", "i0", "c0", None, None), DAY), (("u0", "cart", "i0", "c0", None, None), 10)])
    as_of = AS_OF - timedelta(seconds=60)  # after the view, before the cart
    live = online(events, as_of, FeatureSpec())
    assert live.loc[0, "cart_count_1d"] == 0 and live.loc[0, "view_count_1d"] == 1
    assert_parity(build_features(events, as_of, FeatureSpec()), live, FeatureSpec())
