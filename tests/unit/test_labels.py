"""Labels on hand-built frames, including the boundary timestamps T and T+H."""

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ibis
import pandas as pd
import pytest

from training.labels import LabelSpec, buyer_events, buyers_before, lapse_labels, lapse_population, last_mile_labels

T = datetime(2026, 1, 10, tzinfo=UTC)
D = timedelta(days=1)


def _events(rows):
    df = pd.DataFrame(rows, columns=["user_id", "ts", "behavior"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return ibis.memtable(df)


def _labels(expr):
    return dict(expr.to_pandas().itertuples(index=False, name=None))


def test_last_mile_window_is_open_at_t_and_closed_at_t_plus_h():
    ev = _events(
        [
            ("at_t", T - D, "view"), ("at_t", T, "buy"),                      # buy exactly at T: not a label
            ("at_end", T - D, "view"), ("at_end", T + 3 * D, "buy"),          # buy at T+H: counts
            ("after", T - D, "view"), ("after", T + 3 * D + timedelta(seconds=1), "buy"),  # just after T+H
            ("just_in", T - D, "view"), ("just_in", T + timedelta(microseconds=1), "buy"),
        ]
    )
    assert _labels(last_mile_labels(ev, T, LabelSpec(horizon_days=3, population="aipl"))) == {
        "after": 0, "at_end": 1, "at_t": 0, "just_in": 1,
    }


def test_last_mile_population_is_a_and_i_audiences():
    ev = _events(
        [
            ("browse14", T - 14 * D, "view"),                 # A: event within 15 days
            ("browse16", T - 16 * D, "view"),                 # too old for A, no fav/cart
            ("cart80", T - 80 * D, "cart"),                   # I: cart within 90 days
            ("fav91", T - 91 * D, "fav"),                     # too old for I
            ("buyer_old", T - 100 * D, "buy"), ("buyer_old", T - 2 * D, "view"),  # any purchase history
            ("future_only", T + D, "buy"),                    # no event before T
        ]
    )
    got = _labels(last_mile_labels(ev, T, LabelSpec(population="aipl")))
    assert got == {"browse14": 0, "buyer_old": 0, "cart80": 0}


def test_purchase_only_data_uses_past_buyers_and_repurchase():
    ev = _events(
        [
            ("rebuy", T - 40 * D, "buy"), ("rebuy", T + 2 * D, "buy"),
            ("once", T - 200 * D, "buy"),
            ("new", T + D, "buy"),                            # first purchase after T: not in the population
        ]
    )
    assert _labels(last_mile_labels(ev, T, LabelSpec(population="auto"))) == {"once": 0, "rebuy": 1}


def test_auto_population_on_clickstream_is_aipl():
    ev = _events([("v", T - D, "view"), ("old", T - 30 * D, "buy"), ("old", T + D, "buy")])
    assert _labels(last_mile_labels(ev, T, LabelSpec(population="auto"))) == {"v": 0}


def test_lapse_label_needs_silence_over_the_whole_window():
    ev = _events(
        [
            ("silent", T - 5 * D, "buy"),
            ("visits", T - 5 * D, "buy"), ("visits", T + 29 * D, "view"),
            ("at_end", T - 5 * D, "buy"), ("at_end", T + 30 * D, "visit"),      # T+N is inside the window
            ("late", T - 5 * D, "buy"), ("late", T + 30 * D + timedelta(seconds=1), "buy"),
            ("at_t", T - 5 * D, "buy"), ("at_t", T, "view"),                     # event at T is outside (T, T+N]
            ("browser", T - D, "view"),                                          # never bought: not in population
        ]
    )
    got = _labels(lapse_labels(ev, T, LabelSpec(lapse_days=30)))
    assert got == {"at_end": 0, "at_t": 1, "late": 1, "silent": 1, "visits": 0}


def test_naive_cutoff_is_refused():
    ev = _events([("a", T - D, "view")])
    with pytest.raises(ValueError, match="timezone-aware"):
        last_mile_labels(ev, T.replace(tzinfo=None), LabelSpec())


def test_buyer_events_keep_every_event_of_past_buyers_only():
    ev = _events(
        [
            ("buyer", T - 5 * D, "view"), ("buyer", T - D, "buy"), ("buyer", T + D, "view"),
            ("at_t", T - D, "view"), ("at_t", T, "buy"),          # buys exactly at T: not before the cutoff
            ("browser", T - D, "view"),
        ]
    )
    kept = buyer_events(ev, T).to_pandas()
    assert sorted(kept["user_id"]) == ["buyer", "buyer", "buyer"]
    assert set(_labels(lapse_labels(ev, T, LabelSpec(lapse_days=30)))) == set(kept["user_id"])


def test_lapse_features_from_buyer_events_equal_the_full_table_rows():
    from features.build.builder import build_features
    from features.simulate.shop import GeneratorConfig, generate

    with tempfile.TemporaryDirectory() as tmp:
        data = generate(GeneratorConfig(n_users=300, days=40, seed=3, chunk_users=300), Path(tmp))
        events = pd.read_parquet(data.events_dir)
    as_of = pd.Timestamp(events["ts"].max()).to_pydatetime() - 5 * D
    table = ibis.memtable(events)
    full = build_features(table, as_of).set_index("user_id")
    narrow = build_features(buyer_events(table, as_of), as_of).set_index("user_id")
    buyers = set(_labels(lapse_labels(table, as_of, LabelSpec(lapse_days=10))))
    assert set(narrow.index) == buyers and 0 < len(buyers) < len(full)
    pd.testing.assert_frame_equal(narrow, full.loc[narrow.index])


def test_lapse_population_on_features_is_the_buyers_before_the_cutoff():
    """The feature-table population that scoring uses (``lapse_population``) holds exactly the users the lapse
    labels cover: a buy before T at any age, not a buy exactly at T, not a browser, a churned or a future buyer."""
    from features.build.builder import build_features

    ev = _events(
        [
            ("recent", T - 2 * D, "buy"),
            ("old", T - 400 * D, "buy"), ("old", T - 300 * D, "view"),   # bought long ago, gone since
            ("browser", T - 60 * D, "view"),                              # never bought
            ("at_t", T - D, "view"), ("at_t", T, "buy"),                  # its buy is not before the cutoff
            ("future", T - D, "view"), ("future", T + D, "buy"),
        ]
    )
    raw = build_features(ev, T)
    scored = set(raw.loc[lapse_population(raw), "user_id"])
    assert scored == set(buyers_before(ev, T).to_pandas()["user_id"]) == {"recent", "old"}
    assert set(_labels(lapse_labels(ev, T, LabelSpec(lapse_days=30)))) == scored
    with pytest.raises(ValueError, match="purchase_days"):
        lapse_population(raw.drop(columns=["purchase_days"]))
