"""The command line as a user meets it: clear one-line errors and documented exit codes, never a stack trace."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from propensity.cli.main import app

pytestmark = pytest.mark.integration


@pytest.fixture()
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for var in ("PROPENSITY_REDIS_URL", "PROPENSITY_TRACKING_URI", "PROPENSITY_DATA_DIR"):
        monkeypatch.delenv(var, raising=False)
    runner = CliRunner()

    def invoke(*args: str):
        result = runner.invoke(app, list(args), catch_exceptions=True)
        assert "Traceback" not in result.output
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return invoke


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_missing_required_column_names_it_and_the_columns_seen(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", "user_id,when,behavior\nu1,2026-01-01T00:00:00,view\n")
    result = run("validate", str(src), "--as-of", "2026-02-01")
    assert result.exit_code == 1
    assert "ts" in result.output and "when" in result.output


def test_too_many_bad_rows_exit_2_with_a_summary_by_reason(run, tmp_path: Path):
    src = _csv(
        tmp_path / "e.csv",
        "user_id,ts,behavior\nu1,2026-01-01T00:00:00,view\n,2026-01-01T00:00:00,view\nu2,yesterday,view\n",
    )
    result = run("validate", str(src), "--as-of", "2026-02-01")
    assert result.exit_code == 2
    assert "null_user_id" in result.output and "bad_ts" in result.output
    assert (tmp_path / "data" / "clean" / "quarantine.csv").is_file()


def test_validate_prints_the_row_accounting(run, tmp_path: Path):
    src = _csv(
        tmp_path / "e.csv",
        "user_id,ts,behavior,amount\n" + "u1,2026-01-01T00:00:00,pv,\n" * 2 + "u2,1767225600,purchase,12.5\n",
    )
    result = run("validate", str(src), "--as-of", "2026-02-01", "--max-bad-share", "0.5")
    assert result.exit_code == 0, result.output
    assert "3 == 2 + 0 + 1" in result.output


def test_outputs_never_overwrite_the_store_or_registry(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", "user_id,ts,behavior\nu1,2026-01-01T00:00:00,view\n")
    result = run("validate", str(src), "--as-of", "2026-02-01", "--out", "mlruns")
    assert result.exit_code == 1 and "refusing to write" in result.output
    result = run("audience", "--action", "nurture", "--out", "data/store/scores.sqlite")
    assert result.exit_code == 1 and "score store" in result.output


def test_unknown_action_and_missing_inputs_are_explained(run):
    assert run("audience", "--action", "bogus", "--out", "a.csv").exit_code == 1
    missing = run("audience", "--action", "nurture", "--out", "a.csv")
    assert missing.exit_code == 1 and "propensity score" in missing.output
    no_model = run("score", "--as-of", "2026-02-01", "--events", "nothing.parquet")
    assert no_model.exit_code == 4 and "has no @champion" in no_model.output


def test_bad_as_of_is_a_usage_error(run):
    result = run("features", "--as-of", "not-a-date")
    assert result.exit_code == 2
    assert "--as-of" in result.output


def test_flow_between_two_cutoffs_shows_the_transitions(run, tmp_path: Path):
    src = _csv(
        tmp_path / "e.csv",
        "user_id,ts,behavior\n"
        "a,2026-01-01T10:00:00,view\na,2026-01-03T10:00:00,fav\n"      # A on Jan 2 -> I on Jan 5
        "b,2026-01-01T10:00:00,buy\nb,2026-01-03T10:00:00,buy\n"       # P on Jan 2 -> L on Jan 5
        "c,2026-01-04T10:00:00,view\n",                                 # new between the cutoffs, A
    )
    assert run("validate", str(src), "--as-of", "2026-02-01").exit_code == 0
    result = run("flow", "--from", "2026-01-02", "--to", "2026-01-05")
    assert result.exit_code == 0, result.output
    assert "A->I │ 100.0%" in result.output and "P->L │ 100.0%" in result.output
    assert "new users        │ 1" in result.output
    assert run("flow", "--from", "2026-01-05", "--to", "2026-01-02").exit_code == 2


def test_bad_training_sample_and_feature_file_options_are_usage_errors(run):
    tiny = run("train", "--max-users", "5", "--events", "nothing.parquet")
    assert tiny.exit_code == 2 and "at least 1,000 users" in tiny.output
    negative = run("train", "--max-users", "-1", "--events", "nothing.parquet")
    assert negative.exit_code == 2 and "--max-users" in negative.output
    spark = run("score", "--as-of", "2026-02-01", "--engine", "spark", "--features", "f.parquet")
    assert spark.exit_code == 2 and "duckdb engine only" in spark.output
