"""The kept feature state, moved on night by night, equals the batch feature table on random histories.

Histories are those of ``test_online_parity`` (every behavior, channel, item and category, ages at every window
edge and a second either side). The state is computed three nights before the cutoff (at once, or replayed day by
day), then moved on one night at a time with each day's events only, and compared with :func:`build_features` at
every night (every column). The state computed at once and the replayed one hold the same sums and pairs. Each
runs with the fresh runs (pairs, day gaps) merged into the main ones each time the state is compacted (as it is
when kept, and between nights) and with them kept apart (merged only to drop retired pairs).
"""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from features.build.builder import build_features
from features.incremental import state as state_module
from features.incremental.build import advance_to, state_from_events
from features.incremental.state import DEAD_DAY, IncrementalUnsupported
from features.incremental.table import feature_frame
from features.spec.definition import FeatureSpec
from tests.property.test_online_parity import AS_OF, CART_EDGES, DAY, SPECS, assert_parity, frame, history

NIGHTS = 3
FAST = settings(  # each example replays up to 400 days and builds the batch table four times
    max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)


MERGED = {"merged": 0.0, "kept apart": float("inf")}


def _fresh_share(name):
    """Merge the fresh runs into the main ones whenever the state is compacted, or keep them apart."""
    return mock.patch.object(state_module, "FRESH_SHARE", MERGED[name])


def _nightly(events, spec, replay=False):
    """The state ``NIGHTS`` nights before ``AS_OF``, then moved on a night at a time, checked every night."""
    first = AS_OF - timedelta(days=NIGHTS)
    state = state_from_events(events, first, spec, replay=replay)
    assert_parity(build_features(events, first, spec), feature_frame(state), spec)
    for night in range(1, NIGHTS + 1):
        cutoff = first + timedelta(days=night)
        day = events[(events.ts >= cutoff - timedelta(days=1)) & (events.ts < cutoff)]
        state = advance_to(state, day, cutoff)
        assert_parity(build_features(events, cutoff, spec), feature_frame(state), spec)
        state.compact()  # as keeping it does
    return state


NEW_USER = [  # u3 is first seen on the last day; u0's cart and buy move across the 90-day edge overnight
    (("u0", "cart", "i0", "c0", "ad", None), 89 * DAY), (("u0", "buy", "i0", "c0", None, 5.0), 91 * DAY),
    (("u3", "view", "i1", "c1", "search", None), DAY // 2), (("u3", "cart", "i1", "c1", None, None), DAY // 3),
]


@FAST
@given(history, st.sampled_from(sorted(SPECS)), st.sampled_from(sorted(MERGED)))
@example(CART_EDGES, "default", "kept apart")
@example(CART_EDGES, "targets", "merged")
@example(NEW_USER, "default", "kept apart")
def test_the_kept_state_equals_the_batch_table_every_night(rows, spec_name, merged):
    with _fresh_share(merged):
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


def test_parity_holds_with_thousands_of_users():
    """User codes past 2**11 (a 32-bit code shifted into a 64-bit key would overflow)."""
    rng = np.random.default_rng(3)
    behaviors = ("view", "fav", "cart", "buy", "visit")
    rows = [((f"u{u}", behaviors[b], f"i{i}", f"c{i % 5}", None, 3.0), int(age))
            for u in range(3_000) for b, i, age in zip(rng.integers(0, 5, 3), rng.integers(0, 20, 3),
                                                      rng.integers(1, 40 * DAY, 3), strict=True)]
    _nightly(frame(rows), FeatureSpec())


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


def _canonical(state):
    """A state's sums and pairs keyed by user id and id hashes instead of its codes (which follow input order)."""
    ids = state.user_ids.astype(str)
    order = np.argsort(ids)
    out = {f"win {key}": sums[order] for key, sums in state.win.items()}
    out.update({f"per_user {name}": values[order] for name, values in state.per_user.items()})
    decode = {"item": state.items.values, "category": state.categories.values, "cart": state.items.values,
              "view": state.views_dict.values}
    for name, (keys, values) in state.pairs.items():
        if name in state.fresh:  # both runs
            fresh_keys, fresh_values = state.fresh[name]
            keys = np.concatenate([keys, fresh_keys])
            values = tuple(np.concatenate(v) for v in zip(values, fresh_values, strict=True))
        if name != "cart":  # pairs retired in place are not in the state
            alive = values[0] != DEAD_DAY
            keys, values = keys[alive], tuple(v[alive] for v in values)
        rows = sorted(zip(ids[keys >> 32], decode[name][keys & 0xFFFFFFFF].tolist() if len(keys) else [],
                          *(v.tolist() for v in values), strict=True))
        if name == "view":  # (category, item) and category codes -> hashes
            rows = sorted((u, (int(state.categories.values[c >> 32]), int(state.items.values[c & 0xFFFFFFFF])), d,
                           int(state.categories.values[cat])) for u, c, d, cat in rows)
        if name == "cart":  # a buy before the last cart closes nothing: keep only whether one is at or after it
            rows = [(u, i, cart, buy >= cart) for u, i, cart, buy in rows]
        out[f"pairs {name}"] = rows
    for name, keys in state.gaps.items():
        keys = np.concatenate([keys, state.fresh_gaps[name]])
        out[f"gaps {name}"] = sorted(zip(ids[keys >> 20], (keys & 0xFFFFF).tolist(), strict=True))
    return out


def _assert_same_state(a, b):
    ca, cb = _canonical(a), _canonical(b)
    assert a.as_of_us == b.as_of_us and list(ca) == list(cb)
    for name, value in ca.items():
        if isinstance(value, np.ndarray):
            if value.dtype.kind == "f":
                np.testing.assert_allclose(value, cb[name], rtol=1e-9, atol=1e-9, err_msg=name)
            elif name.endswith(("first_day", "last_day", "last_buy_day")):  # day numbers count from each origin
                shift = (a.origin_us - b.origin_us) // 86_400_000_000
                seen = value != np.iinfo(np.int64).min
                assert (value[seen] + shift == cb[name][seen]).all(), name
            else:
                assert np.array_equal(value, cb[name]), name
        elif name in ("pairs item", "pairs category", "pairs view"):  # last-seen days likewise
            shift = (a.origin_us - b.origin_us) // 86_400_000_000
            assert [(*r[:2], r[2] + shift, *r[3:]) for r in value] == cb[name], name
        else:
            assert value == cb[name], name


@settings(FAST, max_examples=10)
@given(history, st.sampled_from(sorted(MERGED)))
@example(CART_EDGES + NEW_USER, "kept apart")
def test_the_state_computed_at_once_is_the_replayed_state(rows, merged):
    events = frame(rows)
    with _fresh_share(merged):
        replayed = state_from_events(events, AS_OF, FeatureSpec(), replay=True)
    if merged == "kept apart":  # every gap is in the fresh run: the medians read it alone
        assert len(replayed.gaps["active"]) == 0
    _assert_same_state(state_from_events(events, AS_OF, FeatureSpec()), replayed)


@pytest.mark.parametrize("merged", sorted(MERGED))
def test_a_replayed_state_moves_on_like_one_computed_at_once(merged):
    with _fresh_share(merged):
        _nightly(frame(CART_EDGES + NEW_USER), FeatureSpec(), replay=True)
