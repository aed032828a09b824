"""The oracle of a run on generated data: true probabilities at its test cutoff and window, or why there is none."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from features.simulate.shop import GeneratorConfig, generate, simulate_truth, truth_config
from training.labels import LabelSpec
from training.oracle import Truth, oracle_from

CONFIG = GeneratorConfig(n_users=300, days=30, seed=5, chunk_users=120, lapse_days=7)
RECORDED = CONFIG.start_utc + timedelta(days=20)
ASKED = CONFIG.start_utc + timedelta(days=25)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory):
    return generate(replace(CONFIG, truth_cutoffs=(RECORDED,)), tmp_path_factory.mktemp("oracle_shop"))


def test_oracle_from_aligns_the_test_users_or_says_what_is_missing(shop) -> None:
    truth = pd.read_parquet(shop.truth_path)
    users = truth["user_id"].iloc[[5, 1, 9]].tolist()
    test = pd.DataFrame({"user_id": users, "as_of": pd.Timestamp(RECORDED)})
    spec = LabelSpec(horizon_days=3, lapse_days=7)
    values, reason = oracle_from(truth, "lapse_risk", test, spec)
    assert reason == "" and values is not None
    np.testing.assert_array_equal(values, truth.set_index("user_id").loc[users, "p_lapse_true"].to_numpy())
    _, reason = oracle_from(truth, "lapse_risk", test.assign(as_of=pd.Timestamp(ASKED)), spec)
    assert reason == (f"the truth holds no true probabilities at the test cutoff {ASKED:%Y-%m-%d} "
                      f"(1 cutoffs, {RECORDED:%Y-%m-%d} to {RECORDED:%Y-%m-%d})")
    _, reason = oracle_from(truth, "lapse_risk", test, LabelSpec(lapse_days=12))
    assert reason == f"the truth at {RECORDED:%Y-%m-%d} was recorded for a 7-day lapse window, this run uses 12 days"
    _, reason = oracle_from(truth, "last_mile_buyer", test, LabelSpec(horizon_days=5))
    assert "recorded for a 3-day horizon, this run uses 5 days" in reason
    _, reason = oracle_from(truth, "last_mile_buyer", pd.concat([test, test.assign(user_id="nobody")]), spec)
    assert reason == f"the truth lacks 3 of the 6 test users at {RECORDED:%Y-%m-%d}"
    _, reason = oracle_from(truth.drop(columns="p_buy_true"), "last_mile_buyer", test, spec)
    assert reason == "the truth has no p_buy_true column"


def test_the_truth_file_records_its_generator_config(shop) -> None:
    config = truth_config(shop.truth_path)
    assert config == shop.config
    assert GeneratorConfig.from_dict(config.to_dict()) == config


def test_a_run_beyond_the_recorded_truth_gets_it_simulated_again(shop, tmp_path: Path) -> None:
    """The shop simulated again gives the true probabilities a generator asked for that cutoff and window would have
    written: exactly for lapse (the truth is exact), the same users for last-mile buyers (Monte Carlo draws differ)."""
    truth = Truth.read(shop.truth_path)
    users = pd.read_parquet(shop.truth_path)["user_id"].iloc[::7].tolist()
    test = pd.DataFrame({"user_id": users, "as_of": pd.Timestamp(ASKED)})
    spec = LabelSpec(horizon_days=2, lapse_days=4)
    said: list[str] = []
    values, reason = truth.oracle("lapse_risk", test, spec, said.append)
    assert reason == "" and values is not None and len(said) == 1 and "simulating the shop again" in said[0]
    direct = generate(replace(CONFIG, truth_cutoffs=(ASKED,), lapse_days=4, horizon_days=2), tmp_path / "direct")
    want = pd.read_parquet(direct.truth_path).set_index("user_id")
    np.testing.assert_array_equal(values, want.loc[users, "p_lapse_true"].to_numpy())
    again = simulate_truth(shop.config, [ASKED], horizon_days=2, lapse_days=4).to_pandas().set_index("user_id")
    assert again.index.tolist() == want.index.tolist()
    assert (again["bought_before"] == want["bought_before"]).all()  # the same shop: the same histories
    buy, _ = truth.oracle("last_mile_buyer", test, spec)
    assert buy is not None and ((buy >= 0) & (buy <= 1)).all()
    assert truth.resimulated == [f"lapse_risk at {ASKED:%Y-%m-%d}", f"last_mile_buyer at {ASKED:%Y-%m-%d}"]


def test_without_a_generator_config_or_outside_the_period_the_reason_says_so(shop, tmp_path: Path) -> None:
    bare = tmp_path / "truth.parquet"
    pq.write_table(pq.read_table(shop.truth_path).replace_schema_metadata(None), bare)
    test = pd.DataFrame({"user_id": ["u0000001"], "as_of": pd.Timestamp(ASKED)})
    values, reason = Truth.read(bare).oracle("lapse_risk", test, LabelSpec(lapse_days=7))
    assert values is None and reason.endswith("; the truth file records no generator config to simulate the shop again")
    late = test.assign(as_of=pd.Timestamp(CONFIG.end + timedelta(days=3)))
    values, reason = Truth.read(shop.truth_path).oracle("lapse_risk", late, LabelSpec(lapse_days=7))
    assert values is None and "the generator cannot simulate it: truth cutoff" in reason
