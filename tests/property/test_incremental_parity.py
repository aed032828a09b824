"""The kept feature state, moved on night by night, equals the batch feature table on random histories.

Histories are those of ``test_online_parity`` (every behavior, channel, item and category, ages at every window
edge and a second either side). The state is replayed up to three nights before the cutoff, then moved on one night
at a time with each day's events only, and compared with :func:`build_features` at every night (every column).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.build.builder import build_features
from features.incremental.build import advance_to, state_from_events
from features.incremental.state import IncrementalUnsupported
from features.incremental.table import feature_frame
from features.spec.definition import FeatureSpec
from tests.property.test_online_parity import AS_OF, CART_EDGES, DAY, SPECS, assert_parity, frame, history

NIGHTS = 3
FAST = settings(  # each example replays up to 400 days and builds the batch table four times
    max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _nightly(events, spec):
    """Replay to ``NIGHTS`` nights before ``AS_OF``, then move on a night at a time, checking every night."""
    first = AS_OF - timedelta(days=NIGHTS)
    state = state_from_events(events, first, spec)
    assert_parity(build_features(events, first, spec), feature_frame(state), spec)
    for night in range(1, NIGHTS + 1):
        cutoff = first + timedelta(days=night)
        day = events[(events.ts >= cutoff - timedelta(days=1)) & (events.ts < cutoff)]
        state = advance_to(state, day, cutoff)
        assert_parity(build_features(events, cutoff, spec), feature_frame(state), spec)
    return state


NEW_USER = [  # u3 is first seen on the last day; u0's cart and buy move across the 90-day edge overnight
    (("u0", "cart", "i0", "c0", "ad", None), 89 * DAY), (("u0", "buy", "i0", "c0", None, 5.0), 91 * DAY),
    (("u3", "view", "i1", "c1", "search", None), DAY // 2), (("u3", "cart", "i1", "c1", None, None), DAY // 3),
]


@FAST
@given(history, st.sampled_from(sorted(SPECS)))
@example(CART_EDGES, "default")
@example(CART_EDGES, "targets")
@example(NEW_USER, "default")
def test_the_kept_state_equals_the_batch_table_every_night(rows, spec_name):
    _nightly(frame(rows), SPECS[spec_name])


@FAST
@given(history)
def test_parity_holds_without_item_and_amount_columns(rows):
    _nightly(frame(rows).drop(columns=["item_id", "amount"]), SPECS["targets"])


def test_a_user_first_seen_after_the_last_night_gets_a_row():
    state = _nightly(frame(NEW_USER), FeatureSpec())
    table = feature_frame(state)
    row = table.set_index("user_id").loc["u3"]
    assert row["cart_count_1d"] == 1 and row["view_count_1d"] == 1 and row["aipl_layer"] == "I"


def test_a_late_event_is_refused_not_miscounted():
    events = frame([(("u0", "view", "i0", "c0", None, None), 3 * DAY)])
    state = state_from_events(events, AS_OF - timedelta(days=1), FeatureSpec())
    late = frame([(("u0", "buy", "i0", "c0", None, 2.0), 2 * DAY)])  # before the state's cutoff
    with pytest.raises(IncrementalUnsupported, match="before the kept state"):
        advance_to(state, late, AS_OF)
    with pytest.raises(IncrementalUnsupported, match="whole number of days"):
        advance_to(state, events.iloc[:0], AS_OF + timedelta(hours=3))


def test_fractional_decay_spans_are_refused():
    with pytest.raises(IncrementalUnsupported, match="whole days"):
        state_from_events(frame(NEW_USER), AS_OF, FeatureSpec(decay_browse_days=10.5))


def test_a_replay_and_a_kept_state_agree_on_every_sum():
    """The state a night starts from is the one a replay from scratch gives: the same arrays, not just the table."""
    events = frame(CART_EDGES + NEW_USER)
    kept = _nightly(events, FeatureSpec())
    replayed = state_from_events(events, AS_OF, FeatureSpec())
    order = np.argsort(kept.user_ids.astype(str))
    other = np.argsort(replayed.user_ids.astype(str))
    for key, sums in kept.win.items():
        np.testing.assert_allclose(sums[order], replayed.win[key][other], atol=1e-9, err_msg=str(key))
