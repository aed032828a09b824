"""The scoring commands on real champions (the ``trained`` fixture): every output follows ``--data-dir``, a stale
cutoff is warned about, and the report compares with the ``--previous`` audience file."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from propensity.config import load_settings
from tests.integration.conftest import AS_OF, Trained

pytestmark = pytest.mark.integration


def test_store_path_follows_the_data_dir_unless_set():
    assert load_settings(data_dir=Path("x")).store_path == Path("x/store/scores.sqlite")
    assert load_settings().store_path == Path("data/store/scores.sqlite")
    assert load_settings(data_dir=Path("x"), store_path=Path("s.db")).store_path == Path("s.db")


def test_store_path_from_the_environment_wins_over_the_data_dir(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROPENSITY_DATA_DIR", "elsewhere")
    assert load_settings().store_path == Path("elsewhere/store/scores.sqlite")
    monkeypatch.setenv("PROPENSITY_STORE_PATH", "pinned.sqlite")
    assert load_settings(data_dir=Path("x")).store_path == Path("pinned.sqlite")


def test_score_snapshots_lookup_and_report_follow_the_data_dir(cli, trained: Trained, tmp_path: Path):
    scored = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons",
                 "--data-dir", "x")
    assert scored.exit_code == 0, scored.output
    assert (tmp_path / "x" / "store" / "scores.sqlite").is_file()
    assert not (tmp_path / "data").exists()
    listed = cli("snapshots", "--data-dir", "x")
    assert listed.exit_code == 0 and "rows=" in listed.output, listed.output
    assert "no snapshot" in cli("snapshots").output  # the default data dir has none
    user = str(trained.scores["user_id"].iloc[0])
    found = cli("lookup", user, "--data-dir", "x")
    assert found.exit_code == 0 and f'"user_id": "{user}"' in found.output, found.output
    assert '"found": false' not in found.output and '"aipl_layer"' in found.output
    assert cli("lookup", user).exit_code == 6

    earlier = cli("score", "--as-of", (AS_OF - timedelta(days=7)).isoformat(), "--events", "events.parquet",
                  "--no-reasons", "--no-publish", "--out", "earlier.parquet", "--data-dir", "x")
    assert earlier.exit_code == 0, earlier.output
    report = cli("report", "--data-dir", "x", "--previous", "earlier.parquet")
    assert report.exit_code == 0, report.output
    html = (tmp_path / "x" / "reports" / "report.html").read_text()
    assert "No previous snapshot was given" not in html  # the flow compares with --previous
    assert "age of the data at report time (since the cutoff)" in html
    bad = cli("report", "--data-dir", "x", "--previous", "events.parquet")
    assert bad.exit_code == 1 and "not an audience file" in bad.output


def test_score_long_after_the_last_event_warns(cli, trained: Trained):
    last = trained.events["ts"].max()
    late = (last + timedelta(days=40)).strftime("%Y-%m-%dT%H:%M")
    result = cli("score", "--as-of", late, "--events", "events.parquet", "--no-reasons", "--no-publish",
                 "--out", "late.parquet")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "days after the last event" in result.stderr
    fresh = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons",
                "--no-publish", "--out", "fresh.parquet")
    assert "warning:" not in fresh.stderr


def test_score_before_the_data_is_warned_refused_and_forced(cli, trained: Trained, tmp_path: Path):
    first = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons")
    assert first.exit_code == 0, first.output
    early = (trained.events["ts"].min() - timedelta(days=3)).strftime("%Y-%m-%d")
    refused = cli("score", "--as-of", early, "--events", "events.parquet", "--no-reasons", "--out", "e.parquet")
    assert refused.exit_code == 1, refused.output
    assert "before the first event" in refused.stderr and "--force" in refused.stderr
    assert cli("snapshots").output.count("rows=") == 1
    forced = cli("score", "--as-of", early, "--events", "events.parquet", "--no-reasons", "--out", "f.parquet",
                 "--force")
    assert forced.exit_code == 0, forced.output
    assert cli("snapshots").output.count("rows=") == 2


def test_score_keeps_the_event_history_of_its_snapshot_and_a_failure_to_only_warns(cli, trained: Trained,
                                                                                    tmp_path: Path):
    from features.online.history import History

    first = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons")
    assert first.exit_code == 0, first.output
    [kept] = list((tmp_path / "data" / "online").iterdir())
    history = History(kept)
    assert history.meta["events"] == len(trained.events) and history.meta["snapshot_id"] == kept.name
    assert len(history.events(str(trained.scores["user_id"].iloc[0]))) > 0
    (tmp_path / "data" / "online").rename(tmp_path / "moved")
    (tmp_path / "data" / "online").write_text("not a directory")  # the history cannot be written
    second = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons", "--force")
    assert second.exit_code == 0, second.output
    assert "warning:" in second.stderr and "event history could not be written" in second.stderr
    assert cli("snapshots").output.count("rows=") == 2  # the batch was published all the same


def test_lookup_rescores_a_user_with_an_ingested_event_like_the_service(cli, trained: Trained, tmp_path: Path):
    from datetime import UTC, datetime

    import pandas as pd

    assert cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons").exit_code == 0
    user, other = str(trained.scores["user_id"].iloc[0]), str(trained.scores["user_id"].iloc[1])
    cart = pd.DataFrame({"user_id": [user], "ts": [pd.Timestamp(datetime.now(UTC)) - pd.Timedelta(hours=1)],
                         "behavior": ["cart"], "item_id": ["sku-9"], "category_id": ["c-9"], "channel": ["ad"],
                         "amount": [None]})
    cart.to_parquet(tmp_path / "cart.parquet")
    ingested = cli("ingest", "cart.parquet")
    assert ingested.exit_code == 0, ingested.output
    shown = cli("lookup", user, other)
    assert shown.exit_code == 0, shown.output
    first, second = shown.output.split(f'"user_id": "{other}"')
    assert '"fresh": true' in first and '"action": "coupon_24h"' in first, first
    assert '"fresh"' not in second


def _text(output: str) -> str:
    """A command's output without table borders, whitespace collapsed (a wrapped cell reads as one line)."""
    return " ".join(output.replace("│", " ").split())


def test_the_next_batch_extends_the_history_with_the_exported_events_only(cli, trained: Trained, tmp_path: Path):
    from datetime import UTC, datetime

    import pandas as pd

    from features.online.history import History

    clean = tmp_path / "data" / "clean"
    clean.mkdir(parents=True)
    trained.events.to_parquet(clean / "events.parquet")  # the default source, as `propensity validate` leaves it
    first = cli("score", "--as-of", AS_OF.isoformat(), "--no-reasons")
    assert first.exit_code == 0, first.output
    assert "history kept written whole:" in _text(first.output), first.output
    again = cli("score", "--as-of", AS_OF.isoformat(), "--no-reasons")
    assert "linked: no new event file since the last history" in _text(again.output), again.output
    user = str(trained.scores["user_id"].iloc[0])
    cart_ts = pd.Timestamp(datetime.now(UTC)) - pd.Timedelta(hours=1)
    pd.DataFrame({"user_id": [user], "ts": [cart_ts], "behavior": ["cart"], "item_id": ["sku-9"],
                  "category_id": ["c-9"], "channel": ["ad"], "amount": [None]}).to_parquet(tmp_path / "cart.parquet")
    assert cli("ingest", "cart.parquet").exit_code == 0
    second = cli("score", "--as-of", AS_OF.isoformat(), "--no-reasons")  # exports the cart, then scores
    assert second.exit_code == 0, second.output
    assert "extended: 1 new events from 1 file(s)," in _text(second.output), second.output
    snapshots = {p.name: History(p) for p in (tmp_path / "data" / "online").iterdir()}
    [extended] = [h for h in snapshots.values() if h.deltas == 1]
    listed = cli("snapshots").output
    assert f"* {extended.meta['snapshot_id']}" in listed, listed
    assert f"history={len(trained.events) + 1:,} events (1 added segment)" in listed, listed
    assert f"history={len(trained.events):,} events\n" in listed, listed
    assert extended.meta["events"] == len(trained.events) + 1 and extended.meta["log_seq"] == 1
    ts = extended.events(user).ts_us
    assert int(cart_ts.value // 1000) in ts.tolist() and len(ts) == (trained.events.user_id == user).sum() + 1


def test_the_next_nights_batch_moves_the_kept_feature_state_on(cli, trained: Trained, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    from datetime import UTC

    import pandas as pd

    clean = tmp_path / "data" / "clean"
    clean.mkdir(parents=True)
    events = trained.events[trained.events.ts < AS_OF]
    events.to_parquet(clean / "events.parquet")
    first = cli("score", "--as-of", AS_OF.isoformat(), "--no-reasons")
    assert first.exit_code == 0, first.output
    assert "built from all events (no kept feature state in" in _text(first.output), first.output
    assert "state kept for the next batch" in _text(first.output)
    user = str(trained.scores["user_id"].iloc[0])
    cart = pd.DataFrame({"user_id": [user], "ts": [pd.Timestamp(AS_OF) + pd.Timedelta(hours=3)],
                         "behavior": ["cart"], "item_id": ["sku-9"], "category_id": ["c-9"], "channel": ["ad"],
                         "amount": [None]})
    cart.to_parquet(tmp_path / "cart.parquet")
    assert cli("ingest", "cart.parquet").exit_code == 0
    night = (AS_OF + timedelta(days=1)).isoformat()
    kept = cli("score", "--as-of", night, "--no-reasons", "--no-publish", "--out", "kept.parquet")
    assert kept.exit_code == 0, kept.output
    assert "moved on 1 night(s) from the kept state: 1 events from 1 new file(s)" in _text(kept.output), kept.output
    earlier = cli("score", "--as-of", (AS_OF - timedelta(days=7)).isoformat(), "--no-reasons", "--no-publish",
                  "--out", "earlier.parquet")
    moved_to = (AS_OF + timedelta(days=1)).astimezone(UTC).isoformat()  # the state written while it scored
    assert f"the kept state of {moved_to} left as it is" in _text(earlier.output), earlier.output
    monkeypatch.setenv("PROPENSITY_FEATURES__KEEP_STATE", "false")
    whole = cli("score", "--as-of", night, "--no-reasons", "--no-publish", "--out", "whole.parquet")
    assert whole.exit_code == 0 and "kept state" not in _text(whole.output), whole.output
    a = pd.read_parquet(tmp_path / "kept.parquet").set_index("user_id").sort_index()
    b = pd.read_parquet(tmp_path / "whole.parquet").set_index("user_id").sort_index()
    assert a.index.equals(b.index) and a.loc[user, "action"] == "coupon_24h"
    for column in ("p_buy", "p_lapse", "priority"):
        pd.testing.assert_series_equal(a[column], b[column], rtol=1e-9, atol=1e-9)


def test_a_feature_state_that_cannot_be_kept_only_warns(cli, trained: Trained, tmp_path: Path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "features").write_text("not a folder")  # the state's folder cannot be made
    scored = cli("score", "--as-of", AS_OF.isoformat(), "--events", "events.parquet", "--no-reasons")
    assert scored.exit_code == 0, scored.output
    assert "the feature state could not be kept" in _text(scored.output), scored.output
    assert "Traceback" not in scored.output
    assert "rows=" in cli("snapshots").output  # the batch was published all the same
