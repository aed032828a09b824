"""The one-machine batch and the shared scoring path on a small simulated shop with tiny models.

Covers who gets a lapse score (past buyers only), the publish guard (an empty or much smaller batch never
replaces the served snapshot unless forced), the unknown-user defaults over every chunk, and the audience file
a failed publish leaves (none).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features
from features.simulate.shop import GeneratorConfig, generate
from features.spec.definition import FeatureSpec
from serving.activation.actions import WIN_BACK, ActivationConfig, recommend
from serving.batch.run import score_chunks
from serving.scoring import score_features

CONFIG = GeneratorConfig(n_users=400, days=45, seed=11, chunk_users=400)
AS_OF = CONFIG.start_utc + timedelta(days=42)
SPEC = FeatureSpec()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, feature table at AS_OF) of a small simulated shop."""
    data = generate(CONFIG, tmp_path_factory.mktemp("batch_shop"))
    events = pd.read_parquet(data.events_dir)
    return events, build_features(events, AS_OF, SPEC)


def _tiny_bundle(target: str, raw: pd.DataFrame, events: pd.DataFrame, seed: int) -> Any:
    """A small calibrated LightGBM bundle on labels derived from the features (as the service fixtures do)."""
    import lightgbm as lgb

    from features.segments.segmenter import Segmenter
    from training.bundle import ModelBundle, design_matrix
    from training.calibration import Calibrator
    from training.labels import LabelSpec

    segmenter = Segmenter().fit(events, raw, AS_OF)
    x, names = design_matrix(segmenter.transform(raw), SPEC)
    rng = np.random.default_rng(seed)
    signal = np.nan_to_num(x[:, seed % 8], nan=0.0)
    y = (signal + rng.normal(0, signal.std() + 1e-9, len(x)) < np.median(signal)).astype(int)
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 10, "seed": seed,
              "deterministic": True, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y, feature_name=names), num_boost_round=10)
    calibrator = Calibrator(kind="platt").fit(booster.predict(x), y)
    return ModelBundle(target=target, booster=booster, calibrator=calibrator, segmenter=segmenter, spec=SPEC,
                       label_spec=LabelSpec(), feature_names=names, meta={"version": str(seed)})


@pytest.fixture(scope="module")
def bundles(shop: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, Any]:
    events, raw = shop
    return {t: _tiny_bundle(t, raw, events, seed=3 + i) for i, t in enumerate(("last_mile_buyer", "lapse_risk"))}


# ------------------------------------------------------------------------------------------ lapse population
def test_p_lapse_only_for_users_with_a_purchase_before_the_cutoff(shop, bundles) -> None:
    """Users who never bought get no lapse score and no win-back, whatever their lifecycle stage (``churned``
    included); every past buyer gets one."""
    _, raw = shop
    never = pd.DataFrame({
        "user_id": ["only_old_view", "fresh_view"],
        "ts": [pd.Timestamp(AS_OF) - pd.Timedelta(days=40), pd.Timestamp(AS_OF) - pd.Timedelta(hours=3)],
        "behavior": ["view", "view"],
    })
    extra = build_features(never, AS_OF, SPEC)
    table = pd.concat([raw, extra], ignore_index=True)
    scored = score_features(table, bundles, AS_OF, keep_features=True, reasons=False)
    buyers = scored["purchase_days"].to_numpy() >= 1
    assert 0 < buyers.sum() < len(scored)
    assert ((scored["lifecycle"] != "new") & ~buyers).any()  # non-buyers the old rule scored (churned ones)
    assert scored.loc[buyers, "p_lapse"].notna().all()
    assert scored.loc[~buyers, "p_lapse"].isna().all()
    assert scored.set_index("user_id").loc["only_old_view", "lifecycle"] == "churned"
    acted = recommend(scored, AS_OF, ActivationConfig(lapse_threshold=0.0))  # every scored buyer qualifies on p
    assert not (acted.loc[~buyers, "action"] == WIN_BACK).any()
    chunks = pd.concat(list(score_chunks(table, bundles, AS_OF, ActivationConfig(), 150)), ignore_index=True)
    assert chunks["p_lapse"].isna().tolist() == (~buyers).tolist()
