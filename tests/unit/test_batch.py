"""The one-machine batch and the shared scoring path on a small simulated shop with tiny models.

Covers who gets a lapse score (past buyers only), the publish guard (an empty or much smaller batch never
replaces the served snapshot unless forced), the unknown-user defaults over every chunk, the audience file
a failed publish leaves (none), and the BTYD part of a bundle (the same columns on every path, its outputs in the
audience file and the store).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.build.builder import build_features
from features.simulate.shop import GeneratorConfig, generate
from features.spec.definition import FeatureSpec
from serving.activation.actions import WIN_BACK, ActivationConfig, recommend
from serving.batch.run import (
    DEFAULT_MIN_SHARE,
    PublishRefusedError,
    check_publish,
    population_defaults,
    run_batch,
    score_chunks,
)
from serving.scoring import score_features
from serving.store.base import StoreInputError, encode_chunk, open_store

CONFIG = GeneratorConfig(n_users=400, days=45, seed=11, chunk_users=400)
AS_OF = CONFIG.start_utc + timedelta(days=42)
SPEC = FeatureSpec()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(events, feature table at AS_OF) of a small simulated shop."""
    data = generate(CONFIG, tmp_path_factory.mktemp("batch_shop"))
    events = pd.read_parquet(data.events_dir)
    return events, build_features(events, AS_OF, SPEC)


def _tiny_bundle(target: str, raw: pd.DataFrame, events: pd.DataFrame, seed: int, btyd: Any = None) -> Any:
    """A small calibrated LightGBM bundle on labels derived from the features (as the service fixtures do), with the
    fitted BTYD part ``btyd`` when given."""
    import lightgbm as lgb

    from features.segments.segmenter import Segmenter
    from training.bundle import ModelBundle, design_matrix
    from training.calibration import Calibrator
    from training.labels import LabelSpec

    segmenter = Segmenter().fit(events, raw, AS_OF)
    x, names = design_matrix(segmenter.transform(raw), SPEC, btyd)
    rng = np.random.default_rng(seed)
    signal = np.nan_to_num(x[:, seed % 8], nan=0.0)
    y = (signal + rng.normal(0, signal.std() + 1e-9, len(x)) < np.median(signal)).astype(int)
    params = {"objective": "binary", "verbosity": -1, "num_leaves": 7, "min_data_in_leaf": 10, "seed": seed,
              "deterministic": True, "num_threads": 1}
    booster = lgb.train(params, lgb.Dataset(x, label=y, feature_name=names), num_boost_round=10)
    calibrator = Calibrator(kind="platt").fit(booster.predict(x), y)
    return ModelBundle(target=target, booster=booster, calibrator=calibrator, segmenter=segmenter, spec=SPEC,
                       label_spec=LabelSpec(), feature_names=names, meta={"version": str(seed)}, btyd=btyd)


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


# ------------------------------------------------------------------------------------------ publish guard
def _run(raw: pd.DataFrame, bundles: dict[str, Any], store: Any, out: Path, hours: int, **kwargs: Any) -> Any:
    return run_batch(None, AS_OF, bundles, store, out, features=raw, reasons=False,
                     created_at=AS_OF + timedelta(hours=hours), **kwargs)


def test_an_empty_or_much_smaller_batch_is_not_published_unless_forced(shop, bundles, tmp_path: Path) -> None:
    _, raw = shop
    store = open_store(tmp_path / "scores.sqlite")
    try:
        with pytest.raises(PublishRefusedError, match="^refusing to publish an empty snapshot: the batch scored 0 "
                                                      "users and no snapshot is served yet; .* --force$"):
            _run(raw.iloc[:0], bundles, store, tmp_path / "none.parquet", 1)
        full = _run(raw, bundles, store, tmp_path / "full.parquet", 2)
        assert full.snapshot is not None and full.snapshot.rows == len(raw) == store.current().rows
        served = full.snapshot.snapshot_id
        with pytest.raises(PublishRefusedError) as empty:
            _run(raw.iloc[:0], bundles, store, tmp_path / "empty.parquet", 3)
        assert str(empty.value) == (
            f"refusing to publish an empty snapshot: the batch scored 0 users and the served snapshot {served} has "
            f"{len(raw):,}; check --as-of (after the events?) and the events file, or publish anyway with --force"
        )
        small = int(len(raw) * 0.4)
        with pytest.raises(PublishRefusedError) as fewer:
            _run(raw.iloc[:small], bundles, store, tmp_path / "small.parquet", 4)
        assert str(fewer.value).startswith(
            f"refusing to publish: the batch scored {small:,} users, under 50% of the {len(raw):,} in the served "
            f"snapshot {served}; "
        ) and "\n" not in str(fewer.value)
        assert store.current().snapshot_id == served
        assert not list(tmp_path.glob("empty.*")) and not list(tmp_path.glob("small.*"))  # nothing written
        assert _run(raw.iloc[:small], bundles, None, tmp_path / "local.parquet", 5).users == small  # no publish
        lower = _run(raw.iloc[:small], bundles, store, tmp_path / "lower.parquet", 6, min_share=0.3)
        assert store.current() == lower.snapshot and lower.snapshot.rows == small
        forced = _run(raw.iloc[:0], bundles, store, tmp_path / "forced.parquet", 7, force=True)
        assert store.current() == forced.snapshot and forced.snapshot.rows == 0 and forced.users == 0
        assert pd.read_parquet(tmp_path / "forced.parquet").empty
    finally:
        store.close()
    with pytest.raises(ValueError, match=r"min_share must be a share in \[0, 1\], got 1.5"):
        check_publish(10, None, min_share=1.5)


def test_the_publish_share_setting_defaults_to_the_library_default() -> None:
    from serving.settings import ServingSettings

    assert ServingSettings().min_publish_share == DEFAULT_MIN_SHARE == 0.5
    assert ServingSettings(min_publish_share=0.2).min_publish_share == 0.2
    with pytest.raises(ValueError, match="min_publish_share"):
        ServingSettings(min_publish_share=1.2)


# ------------------------------------------------------------------------------------------ defaults, partial file
def test_unknown_user_defaults_come_from_every_chunk(shop, bundles, tmp_path: Path) -> None:
    """The layer-``none`` prior is the mean over all such users, not over the first chunk's."""
    _, raw = shop
    scored = score_features(raw, bundles, AS_OF, reasons=False)
    none = scored["aipl_layer"] == "none"
    ranked = np.flatnonzero(none.to_numpy())[np.argsort(-scored.loc[none, "p_buy"].to_numpy(), kind="stable")]
    order = np.concatenate([ranked[:5], np.flatnonzero(~none.to_numpy()), ranked[5:]])  # chunk 1: the top 5 of none
    ordered = raw.iloc[order].reset_index(drop=True)
    expected = float(scored.loc[none, "p_buy"].mean())
    assert none.sum() > 10
    assert float(scored.loc[ranked[:5], "p_buy"].mean()) - expected > 1e-3  # the first chunk's prior is far off
    store = open_store(tmp_path / "scores.sqlite")
    try:
        result = _run(ordered, bundles, store, tmp_path / "a.parquet", 1, chunk_users=50)
        defaults = store.current().meta["defaults"]
    finally:
        store.close()
    assert defaults["p_buy"] == pytest.approx(expected, rel=1e-12)
    whole = population_defaults(scored)
    assert whole["p_buy"] == pytest.approx(expected, rel=1e-12)
    assert {**defaults, "p_buy": 0} == {**whole, "p_buy": 0} and defaults["aipl_layer"] == "none"
    assert result.mean_p_buy == pytest.approx(float(scored["p_buy"].mean()), rel=1e-12)
    everyone = population_defaults(scored[~none])  # nobody in layer none: the mean over everyone
    assert everyone["p_buy"] == pytest.approx(float(scored.loc[~none, "p_buy"].mean()), rel=1e-12)


def test_published_records_are_the_scored_ones_byte_for_byte(shop, bundles, tmp_path: Path) -> None:
    _, raw = shop
    store = open_store(tmp_path / "scores.sqlite")
    try:
        result = run_batch(None, AS_OF, bundles, store, tmp_path / "a.parquet", features=raw, chunk_users=120,
                           created_at=AS_OF)
        expected = pd.concat(list(score_chunks(raw, bundles, AS_OF, ActivationConfig(), 120)), ignore_index=True)
        ids, payloads = encode_chunk(expected)
        _, found = store.lookup(ids)
    finally:
        store.close()
    assert found == dict(zip(ids, payloads, strict=False))
    assert result.action_counts == {str(k): int(v) for k, v in expected["action"].value_counts().items()}
    written = pd.read_parquet(result.audience_path)
    assert written["user_id"].tolist() == expected["user_id"].tolist()


def test_a_failed_publish_or_scoring_leaves_no_partial_file_and_the_old_snapshot(shop, bundles, tmp_path) -> None:
    _, raw = shop
    store = open_store(tmp_path / "scores.sqlite")
    try:
        served = _run(raw, bundles, store, tmp_path / "a.parquet", 1).snapshot
        twice = pd.concat([raw, raw.iloc[:1]], ignore_index=True)  # a duplicate user: the store refuses it
        with pytest.raises(StoreInputError, match="(?i)duplicate"):
            _run(twice, bundles, store, tmp_path / "b.parquet", 2)
        assert not (tmp_path / "b.partial").exists() and not (tmp_path / "b.parquet").exists()

        def stop(done: int, total: int | None) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _run(raw, bundles, store, tmp_path / "c.parquet", 3, chunk_users=100, progress=stop)
        assert not (tmp_path / "c.partial").exists() and not (tmp_path / "c.parquet").exists()
        assert store.current() == served
    finally:
        store.close()


# ------------------------------------------------------------------------------------------ the BTYD part
@pytest.fixture(scope="module")
def btyd_bundles(shop: tuple[pd.DataFrame, pd.DataFrame]) -> dict[str, Any]:
    """Tiny bundles with a BTYD part each (windows 3 and 10 days), fitted on the features of two earlier cutoffs."""
    from training.btyd.features import BTYDFeatures

    events, raw = shop
    fit_on = [build_features(events, AS_OF - timedelta(days=d), SPEC) for d in (7, 14)]
    return {
        target: _tiny_bundle(target, raw, events, seed=3 + i, btyd=BTYDFeatures(window).fit(fit_on))
        for i, (target, window) in enumerate((("last_mile_buyer", 3), ("lapse_risk", 10)))
    }


def _btyd_columns(bundle: Any, segmented: pd.DataFrame) -> pd.DataFrame:
    """The BTYD columns of the bundle's design matrix, one row per user (indexed by user id)."""
    cols = [i for i, name in enumerate(bundle.feature_names) if name.startswith("btyd_")]
    x = bundle.matrix(segmented)[:, cols]
    return pd.DataFrame(x, columns=[bundle.feature_names[i] for i in cols], index=segmented["user_id"].to_numpy())


def test_btyd_columns_are_equal_on_the_training_batch_and_online_paths(shop, btyd_bundles) -> None:
    import ibis

    from training.btyd import BetaGeoFitter, rfm_summary
    from training.bundle import design_matrix
    from training.datasets import labelled_frame
    from training.labels import LabelSpec

    events, raw = shop
    bundle = btyd_bundles["lapse_risk"]
    assert [n for n in bundle.feature_names if n.startswith("btyd_")] == bundle.btyd.columns
    batch = _btyd_columns(bundle, bundle.segmenter.transform(raw))  # the whole audience (batch, the bundle's path)
    repeat = sorted(raw.loc[raw["purchase_days"] >= 2, "user_id"])[:4]
    never = sorted(raw.loc[raw["purchase_days"] == 0, "user_id"])[:2]
    users = repeat + never
    few = build_features(events[events["user_id"].isin(users)], AS_OF, SPEC)  # /score: the users' own events
    online = _btyd_columns(bundle, bundle.segmenter.transform(few))
    pd.testing.assert_frame_equal(online.loc[users], batch.loc[users], check_exact=True)
    # training: the labelled frame of the cutoff, as the job stacks it, through the same design matrix
    frame = labelled_frame("lapse_risk", ibis.memtable(events), AS_OF, LabelSpec(lapse_days=3),
                           bundle.segmenter.transform(raw))
    x, names = design_matrix(frame, SPEC, bundle.btyd)
    training = pd.DataFrame(x, columns=names, index=frame["user_id"].to_numpy())[bundle.btyd.columns]
    assert len(training) == int((raw["purchase_days"] >= 1).sum()) > 20
    pd.testing.assert_frame_equal(training, batch.loc[training.index], check_exact=True)
    assert batch.loc[never].isna().all().all() and batch.loc[repeat].notna().all().all()
    # by hand for one user: the fitted BG/NBD parameters on the RFM summary of the user's events
    user = repeat[0]
    rfm = rfm_summary(events, AS_OF).loc[user]
    bgf = BetaGeoFitter.from_dict(bundle.btyd.to_dict()["bgnbd"])
    p_alive = float(bgf.p_alive(rfm["frequency"], rfm["recency"], rfm["T"]))
    p_10d = float(bgf.p_any_purchase(10, rfm["frequency"], rfm["recency"], rfm["T"]))
    e_90d = float(bgf.expected_purchases(90, rfm["frequency"], rfm["recency"], rfm["T"]))
    assert batch.loc[user, "btyd_p_alive"] == pytest.approx(p_alive, rel=1e-12)
    assert batch.loc[user, "btyd_p_purchase_10d"] == pytest.approx(p_10d, rel=1e-12)
    assert batch.loc[user, "btyd_expected_90d"] == pytest.approx(e_90d, rel=1e-12)
    scored = score_features(few, btyd_bundles, AS_OF, reasons=False).set_index("user_id")  # the lapse bundle's part
    assert scored.loc[user, "p_alive"] == pytest.approx(p_alive, rel=1e-12)
    assert scored.loc[user, "expected_purchases_90d"] == pytest.approx(e_90d, rel=1e-12)
    assert scored.loc[never, ["p_alive", "clv_365d", "next_order_date"]].isna().all().all()


def test_bundle_round_trip_keeps_the_btyd_part(shop, btyd_bundles, bundles, tmp_path: Path) -> None:
    import json

    from training.bundle import ModelBundle

    _, raw = shop
    for target, bundle in btyd_bundles.items():
        again = ModelBundle.load(bundle.save(tmp_path / target))
        assert again.btyd is not None and again.btyd.to_dict() == bundle.btyd.to_dict()
        segmented = bundle.segmenter.transform(raw)
        np.testing.assert_array_equal(again.matrix(segmented), bundle.matrix(segmented))
        np.testing.assert_array_equal(again.predict(segmented), bundle.predict(segmented))
    plain = ModelBundle.load(bundles["lapse_risk"].save(tmp_path / "plain"))
    assert plain.btyd is None and json.loads((tmp_path / "plain" / "bundle.json").read_text())["btyd"] is None
    assert not any(n.startswith("btyd_") for n in plain.feature_names)


def test_audience_file_and_store_carry_the_btyd_outputs(shop, btyd_bundles, bundles, tmp_path: Path) -> None:
    import json

    from serving.batch.run import AUDIENCE_COLUMNS
    from serving.scoring import BTYD_OUTPUT

    _, raw = shop
    store = open_store(tmp_path / "scores.sqlite")
    try:
        result = run_batch(None, AS_OF, btyd_bundles, store, tmp_path / "a.parquet", features=raw, chunk_users=150,
                           created_at=AS_OF, reasons=False)
        written = pd.read_parquet(result.audience_path)
        _, found = store.lookup(written["user_id"].tolist())
    finally:
        store.close()
    assert list(written.columns) == [c for c in AUDIENCE_COLUMNS if c in written.columns]
    assert set(BTYD_OUTPUT) <= set(written.columns)
    buyers = (raw.set_index("user_id").loc[written["user_id"], "purchase_days"] >= 1).to_numpy()
    assert written.loc[buyers, "p_alive"].between(0, 1).all() and written.loc[buyers, "clv_365d"].ge(0).all()
    assert written.loc[~buyers, list(BTYD_OUTPUT)].isna().all().all()
    dated = written["next_order_date"].dropna()
    assert len(dated) and (pd.to_datetime(dated) >= pd.Timestamp(AS_OF.date())).all()
    records = {uid: json.loads(payload) for uid, payload in found.items()}
    first = written.loc[buyers, "user_id"].iloc[0]
    assert records[first]["p_alive"] == pytest.approx(written.set_index("user_id").loc[first, "p_alive"])
    assert all(set(BTYD_OUTPUT) <= set(r) for r in records.values())
    old = run_batch(None, AS_OF, bundles, None, tmp_path / "b.parquet", features=raw, created_at=AS_OF, reasons=False)
    assert not set(BTYD_OUTPUT) & set(pd.read_parquet(old.audience_path).columns)  # models without the part


def test_a_model_of_an_older_feature_spec_says_to_retrain(shop, bundles) -> None:
    from dataclasses import replace

    from features.spec.definition import FeatureSpec
    from training.bundle import BundleMismatchError

    _events, raw = shop
    bundle = bundles["last_mile_buyer"]
    names_v1 = [n for n in bundle.feature_names if "_trend_" not in n]  # spec 1 had no trend columns
    old = replace(bundle, spec=replace(FeatureSpec(), version="1"), feature_names=names_v1)
    with pytest.raises(BundleMismatchError, match=r"feature spec 1.*retrain") as caught:
        old.matrix(old.segmenter.transform(raw))
    assert caught.value.exit_code == 6


# ------------------------------------------------------------------------------------------ readable reasons
REASON_COLUMNS = {"last_mile_buyer": ("reasons_buy", "reasons_buy_text"),
                  "lapse_risk": ("reasons_lapse", "reasons_lapse_text")}


def _count_shap_rows(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Rows each target's SHAP contributions are computed for from now on (``ModelBundle.contributions`` counted)."""
    from training.bundle import ModelBundle

    spent: dict[str, int] = {}
    real = ModelBundle.contributions

    def counting(self: Any, x: np.ndarray) -> np.ndarray:
        spent[self.target] = spent.get(self.target, 0) + len(x)
        return real(self, x)

    monkeypatch.setattr(ModelBundle, "contributions", counting)
    return spent


def test_the_batch_explains_only_the_users_an_audience_selects(shop, btyd_bundles, tmp_path, monkeypatch) -> None:
    """SHAP rows go only to the users of their action's best-profit audience (what ``select_audience`` picks), from
    the model the action rides on; those users get feature names and phrases equal to the full scoring's, everyone
    else (no action, or an action that does not pay) gets none, and none is computed for them."""
    from serving.activation.audiences import select_audience
    from serving.batch.run import reason_masks

    _, raw = shop
    spent = _count_shap_rows(monkeypatch)
    result = run_batch(None, AS_OF, btyd_bundles, None, tmp_path / "a.parquet", features=raw, chunk_users=150,
                       created_at=AS_OF)
    frame = pd.read_parquet(result.audience_path)
    masks = reason_masks(frame)
    selected = masks["last_mile_buyer"] | masks["lapse_risk"]
    acted = frame["action"].ne("none").to_numpy()
    assert masks["lapse_risk"].sum() > 0 and 0 < selected.sum() < acted.sum()  # some actions do not pay
    assert spent == {t: int(m.sum()) for t, m in masks.items()}  # no SHAP row for anyone else
    for action in frame.loc[acted, "action"].unique():
        picked, _ = select_audience(frame, action, ActivationConfig())
        assert set(picked["user_id"]) == set(frame.loc[selected & frame["action"].eq(action).to_numpy(), "user_id"])
    full = score_features(raw, btyd_bundles, AS_OF).set_index("user_id")
    for target, (names_col, text_col) in REASON_COLUMNS.items():
        mask = masks[target]
        rows = frame.loc[mask, ["user_id", names_col, text_col]]
        for uid, names, texts in rows.itertuples(index=False):
            assert list(names) == list(full.loc[uid, names_col]) and list(texts) == list(full.loc[uid, text_col])
            assert len(texts) == len(names) and all(t.endswith(f" ({n})") for t, n in zip(texts, names, strict=True))
            assert all(t and "nan" not in t.split() for t in texts)
        assert rows[text_col].map(len).gt(0).any()
        assert frame.loc[~mask, names_col].map(len).eq(0).all() and frame.loc[~mask, text_col].map(len).eq(0).all()


def test_the_batch_can_explain_every_user_with_an_action(shop, bundles, tmp_path, monkeypatch) -> None:
    _, raw = shop
    spent = _count_shap_rows(monkeypatch)
    result = run_batch(None, AS_OF, bundles, None, tmp_path / "a.parquet", features=raw, created_at=AS_OF,
                       explain="actions")
    frame = pd.read_parquet(result.audience_path)
    win_back = frame["action"].eq(WIN_BACK)
    buy = frame["action"].ne("none") & ~win_back
    assert spent == {"last_mile_buyer": int(buy.sum()), "lapse_risk": int(win_back.sum())}
    assert frame.loc[buy, "reasons_buy_text"].map(len).eq(frame.loc[buy, "reasons_buy"].map(len)).all()
    assert frame.loc[~buy, "reasons_buy_text"].map(len).eq(0).all()
    with pytest.raises(ValueError, match="explain must be one of"):
        run_batch(None, AS_OF, bundles, None, tmp_path / "b.parquet", features=raw, created_at=AS_OF,
                  explain="everyone")


def test_the_audience_schema_is_the_same_with_or_without_reasons(shop, bundles, tmp_path) -> None:
    """The four reason columns are list<string> in every chunk: one explained, ones where nobody is selected, and a
    batch run without reasons."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.batch.run import reason_masks

    _, raw = shop
    first = run_batch(None, AS_OF, bundles, None, tmp_path / "a.parquet", features=raw, created_at=AS_OF)
    frame = pd.read_parquet(first.audience_path)
    masks = reason_masks(frame)
    chosen = frame["user_id"][masks["last_mile_buyer"] | masks["lapse_risk"]]
    picked = raw["user_id"].isin(set(chosen)).to_numpy()
    ordered = pd.concat([raw[picked], raw[~picked]], ignore_index=True)  # chunks 2..: nobody to explain
    mixed = run_batch(None, AS_OF, bundles, None, tmp_path / "b.parquet", features=ordered, created_at=AS_OF,
                      chunk_users=int(picked.sum()))
    bare = run_batch(None, AS_OF, bundles, None, tmp_path / "c.parquet", features=raw, created_at=AS_OF,
                     reasons=False)
    schemas = [pq.read_schema(r.audience_path) for r in (first, mixed, bare)]
    assert schemas[0].equals(schemas[1]) and schemas[0].equals(schemas[2])
    for names_col, text_col in REASON_COLUMNS.values():
        for col in (names_col, text_col):
            assert schemas[0].field(col).type == pa.list_(pa.string())
    assert pd.read_parquet(bare.audience_path)["reasons_buy_text"].map(len).eq(0).all()


# ------------------------------------------------------------------------------------------ one user, as columns
def test_one_user_as_columns_scores_byte_for_byte_as_the_batch_frame(shop, btyd_bundles) -> None:
    """Online rescoring hands the batch's functions one user's features as numpy columns (no pandas): every user
    scored alone that way gets exactly the record the batch writes for them from its DataFrame chunk."""
    _, raw = shop
    activation = ActivationConfig()
    now = AS_OF + timedelta(hours=5)
    sample = raw.iloc[::9].reset_index(drop=True)
    batch = next(score_chunks(sample, btyd_bundles, now, activation, len(sample), explain="actions"))
    expected = dict(zip(*encode_chunk(batch), strict=True))
    arrays = {c: sample[c].to_numpy(dtype=object) if c in ("user_id", "aipl_layer")
              else sample[c].to_numpy(dtype="float64", na_value=np.nan) for c in sample.columns}
    explained = 0
    for i in range(len(sample)):
        record = next(score_chunks({c: v[i : i + 1] for c, v in arrays.items()}, btyd_bundles, now, activation, 1,
                                   explain="actions"))
        assert isinstance(record, dict) and list(record) == list(batch.columns)
        (uid,), (payload,) = encode_chunk(record)
        assert payload == expected[uid], uid
        explained += bool(len(record["reasons_buy"][0]) or len(record["reasons_lapse"][0]))
    assert explained > 0 and batch["p_alive"].notna().any()
