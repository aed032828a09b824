"""The BTYD part of the model: inputs from the feature table; columns and outputs checked by hand with the fitters."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features
from training.btyd import BetaGeoFitter, BTYDError, GammaGammaFitter, rfm_summary
from training.btyd.features import BTYDFeatures, btyd_inputs

AS_OF = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)
BGNBD = {"model": "bgnbd", "r": 0.8, "alpha": 12.0, "a": 0.6, "b": 2.5}
GAMMA_GAMMA = {"model": "gamma_gamma", "p": 4.0, "q": 3.0, "v": 20.0}


def events() -> pd.DataFrame:
    rows = [
        ("a", AS_OF - 10 * DAY, "buy", 5.0),  # exactly 10 days before: the first purchase day, bucket 9
        ("a", AS_OF - 10 * DAY + timedelta(hours=20), "buy", 7.0),  # same bucket
        ("a", AS_OF - 4 * DAY, "buy", 10.0),  # exactly 4 days before: bucket 3
        ("a", AS_OF - 4 * DAY + timedelta(hours=2), "buy", 6.0),
        ("a", AS_OF - 2 * DAY - timedelta(microseconds=1), "buy", 30.0),  # one microsecond past a boundary: bucket 2
        ("a", AS_OF + DAY, "buy", 999.0),  # after the cutoff: ignored
        ("b", AS_OF - 30 * DAY + timedelta(hours=3), "buy", 8.0),  # one purchase day only
        ("b", AS_OF - 40 * DAY, "view", None),
        ("c", AS_OF - 2 * DAY, "visit", None),  # never bought
        ("d", AS_OF - 6 * DAY, "buy", 4.0),
        ("d", AS_OF - 2 * DAY, "buy", float("nan")),  # a repeat day with an unknown amount
    ]
    frame = pd.DataFrame(rows, columns=["user_id", "ts", "behavior", "amount"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def fitted(gamma_gamma: dict | None = GAMMA_GAMMA, spend_mean: float | None = 15.0) -> BTYDFeatures:
    return BTYDFeatures.from_dict({
        "kind": "btyd_features", "window_days": 3, "horizons": [30, 90], "clv_days": 365, "bgnbd": BGNBD,
        "gamma_gamma": gamma_gamma, "spend_mean": spend_mean,
    })


@pytest.mark.parametrize("as_of", [AS_OF, AS_OF - timedelta(hours=12)])
def test_inputs_from_the_feature_table_equal_the_rfm_summary_of_the_events(as_of: datetime) -> None:
    ev = events()
    table = build_features(ev, as_of).set_index("user_id")
    got = btyd_inputs(table)
    want = rfm_summary(ev, as_of)
    buyers = got[got["buyer"]]
    assert sorted(buyers.index) == sorted(want.index) == ["a", "b", "d"]
    for column in ("frequency", "recency", "T"):
        np.testing.assert_array_equal(buyers.loc[want.index, column].to_numpy(), want[column].to_numpy(float))
    assert got.loc["c", ["frequency", "recency", "T", "spend"]].isna().all()
    if as_of == AS_OF:
        assert buyers.loc["a", ["frequency", "recency", "T"]].tolist() == [2.0, 7.0, 9.0]
        # spend per purchase day over all purchase days: (12 + 16 + 30) / 3; d: the known amount stands for both
        assert buyers.loc["a", "spend"] == pytest.approx(58 / 3) and buyers.loc["d", "spend"] == pytest.approx(4.0)


def test_columns_and_outputs_for_one_user_by_hand() -> None:
    table = build_features(events(), AS_OF).set_index("user_id")
    btyd = fitted()
    cols = btyd.transform(table)
    assert list(cols.columns) == [
        "btyd_p_alive", "btyd_p_purchase_3d", "btyd_expected_purchases_3d", "btyd_expected_30d", "btyd_expected_90d",
        "btyd_clv_365d",
    ]
    # user a: x = 2 repeat purchase days, t_x = 7, T = 9 (days), 3 purchase days spending 58/3 on average
    r, alpha, a, b = (BGNBD[k] for k in ("r", "alpha", "a", "b"))
    x, tx, t_obs = 2, 7.0, 9.0
    p_alive = 1 / (1 + a / (b + x - 1) * ((alpha + t_obs) / (alpha + tx)) ** (r + x))
    p_3d = p_alive * (1 - ((alpha + t_obs) / (alpha + t_obs + 3)) ** (r + x))
    bgf, ggf = BetaGeoFitter.from_dict(BGNBD), GammaGammaFitter.from_dict(GAMMA_GAMMA)
    p, q, v = 4.0, 3.0, 20.0
    spend = p * (v + 3 * 58 / 3) / (p * 3 + q - 1)
    row = cols.loc["a"]
    assert row["btyd_p_alive"] == pytest.approx(p_alive, rel=1e-12)
    assert row["btyd_p_purchase_3d"] == pytest.approx(p_3d, rel=1e-12)
    for name, days in (("btyd_expected_purchases_3d", 3), ("btyd_expected_30d", 30), ("btyd_expected_90d", 90)):
        assert row[name] == pytest.approx(float(bgf.expected_purchases(days, x, tx, t_obs)), rel=1e-12)
    assert row["btyd_clv_365d"] == pytest.approx(float(bgf.expected_purchases(365, x, tx, t_obs)) * spend, rel=1e-12)
    assert float(ggf.conditional_expected_average_profit(3, 58 / 3)) == pytest.approx(spend)
    assert cols.loc["b", "btyd_p_alive"] == 1.0  # no repeat purchase: BG/NBD has not seen a drop-out chance
    assert cols.loc["c"].isna().all()  # never bought

    out = btyd.outputs(table, AS_OF)
    assert list(out.columns) == ["p_alive", "expected_purchases_30d", "expected_purchases_90d", "clv_365d",
                                 "next_order_date"]
    wait = (alpha + t_obs) * ((1 - 0.5 / p_alive) ** (-1 / (r + x)) - 1)  # median wait, days
    assert out.loc["a", "next_order_date"] == (AS_OF + timedelta(days=wait)).date().isoformat()
    assert out.loc["a", "p_alive"] == row["btyd_p_alive"] and out.loc["a", "clv_365d"] == row["btyd_clv_365d"]
    assert out.loc["c"].isna().all() and out.loc["c", "next_order_date"] is None
    assert out["next_order_date"].dtype == object


def test_next_order_date_is_null_when_probably_never() -> None:
    btyd = fitted()
    long_gone = pd.DataFrame({  # 5 purchase days long ago, the last one 300 days before the cutoff
        "purchase_days": [5], "days_since_last_buy": [300.5], "purchase_gap_mean_days": [3.0], "buy_count": [5],
        "amount_mean": [10.0],
    })
    assert btyd.transform(long_gone)["btyd_p_alive"].iloc[0] < 0.5
    assert btyd.next_order_dates(long_gone, AS_OF).iloc[0] is None


def test_without_amounts_the_clv_is_unknown_and_fit_and_json_round_trip() -> None:
    ev = events()
    tables = [build_features(ev, AS_OF - k * DAY) for k in (0, 3)]
    btyd = BTYDFeatures(window_days=7).fit(tables)
    assert btyd.n_rows_ == sum(int((t["purchase_days"] >= 1).sum()) for t in tables) == 6
    assert "btyd_p_purchase_7d" in btyd.columns and btyd.bgf_.n_users_ == 6
    doc = json.loads(json.dumps(btyd.to_dict(), allow_nan=False))
    again = BTYDFeatures.from_dict(doc)
    pd.testing.assert_frame_equal(again.transform(tables[0]), btyd.transform(tables[0]))
    no_amount = build_features(ev.drop(columns="amount"), AS_OF)
    plain = BTYDFeatures().fit(no_amount)
    assert plain.ggf_ is None and plain.spend_mean_ is None
    assert plain.transform(no_amount)["btyd_clv_365d"].isna().all()
    assert BTYDFeatures.from_dict(json.loads(json.dumps(plain.to_dict()))).spend_mean_ is None
    # without a Gamma-Gamma fit the CLV uses the user's own mean spend per purchase day, else the population's
    bgf = BetaGeoFitter.from_dict(BGNBD)
    table = build_features(ev, AS_OF).set_index("user_id")
    table.loc["d", "amount_mean"] = np.nan
    own = fitted(gamma_gamma=None, spend_mean=15.0).transform(table)
    assert own.loc["a", "btyd_clv_365d"] == pytest.approx(float(bgf.expected_purchases(365, 2, 7.0, 9.0)) * 58 / 3)
    assert own.loc["d", "btyd_clv_365d"] == pytest.approx(float(bgf.expected_purchases(365, 1, 4.0, 5.0)) * 15.0)
    with pytest.raises(BTYDError, match="no buyers"):
        BTYDFeatures().fit(build_features(ev[ev["behavior"] != "buy"], AS_OF))
    with pytest.raises(BTYDError, match="not fitted"):
        BTYDFeatures().transform(tables[0])
    with pytest.raises(ValueError, match="purchase_gap_mean_days"):
        btyd.transform(tables[0].drop(columns="purchase_gap_mean_days"))
