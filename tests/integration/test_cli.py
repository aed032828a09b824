"""The command line as a user meets it: clear one-line errors and documented exit codes, never a stack trace."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from propensity.cli.common import EXIT_CODES
from propensity.cli.main import app

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture()
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    for var in ("PROPENSITY_REDIS_URL", "PROPENSITY_TRACKING_URI", "PROPENSITY_DATA_DIR", "PROPENSITY_STORE_PATH",
                "PROPENSITY_ARTIFACT_ROOT", "PROPENSITY_CONFIG"):
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


def one_error_line(result) -> str:
    """The one line of the error on stderr (other stderr lines may be warnings or library logs, never a box)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.output
    assert "╭" not in result.output and "Traceback" not in result.output, result.output
    return lines[0]


EVENTS_CSV = (
    "user_id,ts,behavior\n"
    "a,2026-01-01T10:00:00,view\na,2026-01-03T10:00:00,fav\n"  # A on Jan 2 -> I on Jan 5
    "b,2026-01-01T10:00:00,buy\nb,2026-01-03T10:00:00,buy\n"  # P on Jan 2 -> L on Jan 5
    "c,2026-01-04T10:00:00,view\n"  # new between the cutoffs, A
)


def test_missing_required_column_names_it_the_columns_seen_and_the_cli_options(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", "user_id,when,behavior\nu1,2026-01-01T00:00:00,view\n")
    result = run("validate", str(src), "--as-of", "2026-02-01")
    assert result.exit_code == 1
    line = one_error_line(result)
    assert "ts" in line and "when" in line and "--map" in line and "--names" in line
    assert "ReadOptions" not in result.output
    fixed = run("validate", str(src), "--as-of", "2026-02-01", "--map", "when=ts")
    assert fixed.exit_code == 0, fixed.output


def test_too_many_bad_rows_exit_3_with_a_summary_by_reason(run, tmp_path: Path):
    src = _csv(
        tmp_path / "e.csv",
        "user_id,ts,behavior\nu1,2026-01-01T00:00:00,view\n,2026-01-01T00:00:00,view\nu2,yesterday,view\n",
    )
    result = run("validate", str(src), "--as-of", "2026-02-01")
    assert result.exit_code == 3
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


def test_bad_reader_options_are_usage_errors_naming_the_option(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", EVENTS_CSV)
    for args, option in ((["--map", "when"], "--map"), (["--map", "when=timestamp"], "--map"),
                         (["--source-tz", "Mars/Olympus"], "--source-tz"), (["--names", "a,,b"], "--names")):
        result = run("validate", str(src), *args)
        assert result.exit_code == 2, (args, result.output)
        assert option in one_error_line(result)


def test_outputs_never_overwrite_the_store_or_registry(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", "user_id,ts,behavior\nu1,2026-01-01T00:00:00,view\n")
    result = run("validate", str(src), "--as-of", "2026-02-01", "--out", "mlruns")
    assert result.exit_code == 2 and "refusing to write" in one_error_line(result)
    result = run("audience", "--action", "nurture", "--out", "data/store/scores.sqlite")
    assert result.exit_code == 2 and "score store" in one_error_line(result)


def test_unknown_action_and_missing_inputs_are_explained(run):
    bogus = run("audience", "--action", "bogus", "--out", "a.csv")
    assert bogus.exit_code == 2 and "coupon_24h" in one_error_line(bogus)
    missing = run("audience", "--action", "nurture", "--out", "a.csv")
    assert missing.exit_code == 1 and "propensity score" in one_error_line(missing)
    gone = run("audience", "--action", "nurture", "--out", "a.csv", "--scores", "nope.parquet")
    line = one_error_line(gone)
    assert gone.exit_code == 1 and "nope.parquet does not exist" in line and "propensity score" in line


def test_score_without_champions_exits_6(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", EVENTS_CSV)
    assert run("validate", str(src), "--as-of", "2026-02-01").exit_code == 0
    no_model = run("score", "--as-of", "2026-01-05")
    assert no_model.exit_code == 6 and "has no @champion" in one_error_line(no_model)


def test_bad_as_of_is_a_usage_error(run):
    result = run("features", "--as-of", "not-a-date")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "--as-of" in line and "ISO 8601" in line and "propensity features --help" in line


def test_flow_between_two_cutoffs_shows_the_transitions(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", EVENTS_CSV)
    assert run("validate", str(src), "--as-of", "2026-02-01").exit_code == 0
    result = run("flow", "--from", "2026-01-02", "--to", "2026-01-05")
    assert result.exit_code == 0, result.output
    assert "A->I │ 100.0%" in result.output and "P->L │ 100.0%" in result.output
    assert "new users        │ 1" in result.output
    backwards = run("flow", "--from", "2026-01-05", "--to", "2026-01-02")
    assert backwards.exit_code == 2 and "--from" in one_error_line(backwards)


def test_bad_training_sample_and_feature_file_options_are_usage_errors(run):
    tiny = run("train", "--max-users", "5", "--events", "nothing.parquet")
    assert tiny.exit_code == 2 and "at least 1,000 users" in tiny.output
    negative = run("train", "--max-users", "-1", "--events", "nothing.parquet")
    assert negative.exit_code == 2 and "--max-users" in negative.output
    spark = run("score", "--as-of", "2026-02-01", "--engine", "spark", "--features", "f.parquet")
    assert spark.exit_code == 2 and "duckdb engine only" in spark.output
    polars = run("features", "--as-of", "2026-02-01", "--engine", "polars")
    assert polars.exit_code == 2 and "--engine" in one_error_line(polars)


# ----------------------------------------------------------------------------------------------- exit codes ----------
def test_every_documented_exit_code_is_the_one_the_commands_return(run, tmp_path: Path):
    """0 ok, 1 bad input, 2 usage, 3 too many bad rows, 4 lock busy, 5 monitoring alert, 6 unavailable."""
    from training.lock import exclusive_lock

    good = _csv(tmp_path / "e.csv", EVENTS_CSV)
    bad = _csv(tmp_path / "bad.csv", "user_id,ts,behavior\nu1,2026-01-01T00:00:00,view\nu2,never,view\n")
    seen = {
        0: run("validate", str(good), "--as-of", "2026-02-01"),
        1: run("features", "--as-of", "2026-01-05", "--events", str(good)),
        3: run("validate", str(bad), "--as-of", "2026-02-01", "--out", "elsewhere"),
        6: run("lookup", "u1"),
    }
    usage = [run("promote", "foo"), run("rollback-scores", "--to", "nope"), run("features", "--as-of", "x"),
             run("features", "--as-of", "2026-01-05", "--engine", "polars"), run("generate", "--days", "0"),
             run("flow", "--from", "2026-01-05", "--to", "2026-01-02"), run("bogus-command")]
    with exclusive_lock(tmp_path / "mlruns" / ".retrain.lock", "2026-01-01T00:00:00+00:00"):
        seen[4] = run("retrain", str(good))
    for code, result in seen.items():
        assert result.exit_code == code, (code, result.output)
    assert [r.exit_code for r in usage] == [2] * len(usage), [r.output for r in usage]
    for result in [*usage, *(r for c, r in seen.items() if c)]:
        one_error_line(result)
    assert "holds" in seen[4].stderr and "unchanged" not in seen[4].output
    assert set(EXIT_CODES) == {0, 1, 2, 3, 4, 5, 6}


def test_exit_code_table_is_the_same_in_the_readme_and_in_help(run):
    help_text = run("--help").output
    readme = README.read_text()
    table = dict(re.findall(r"^\| (\d) \| (.+?) \|$", readme, flags=re.MULTILINE))
    assert {int(k) for k in table} == set(EXIT_CODES)
    for code, text in EXIT_CODES.items():
        kind = text.split(":")[0]
        assert re.search(rf"^\s*{code}\s+{re.escape(text)}\s*$", help_text, flags=re.MULTILINE), code
        assert table[str(code)].startswith(kind.split(" (")[0]), (code, table[str(code)])


def test_every_expected_error_class_carries_a_documented_exit_code():
    from features.build.spark import SparkUnavailableError
    from features.events.validate import EventsError, TooManyBadRowsError
    from features.segments.lifecycle import SegmentError
    from features.simulate.shop import GeneratorConfigError
    from features.spec.definition import FeatureInputError, FeatureSpecError
    from propensity.cli.inputs import InputError
    from propensity.cli.serving import UnavailableError
    from propensity.paths import UnsafeOutputError
    from propensity.service.options import ServiceConfigError
    from serving.activation.flow import FlowError
    from serving.report.data import ReportError
    from training.datasets import IneligibleError
    from training.evaluate import EvaluationInputError
    from training.lock import LockBusyError
    from training.registry import RegistryError

    expected = {
        EventsError: 1, TooManyBadRowsError: 3, FeatureInputError: 1, FeatureSpecError: 2, GeneratorConfigError: 2,
        SegmentError: 1, SparkUnavailableError: 6, IneligibleError: 1, EvaluationInputError: 1, LockBusyError: 4,
        RegistryError: 6, FlowError: 1, ReportError: 1, InputError: 1, UnavailableError: 6, UnsafeOutputError: 2,
        ServiceConfigError: 2,
    }
    assert {cls: cls.exit_code for cls in expected} == expected


# ------------------------------------------------------------------------------------------------ the sweep ----------
def _sweep_inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.parquet").write_bytes(b"")
    (tmp_path / "empty.csv").write_bytes(b"")
    _csv(tmp_path / "raw.parquet", EVENTS_CSV)  # a CSV under a Parquet name
    _csv(tmp_path / "raw.csv", EVENTS_CSV)
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.parquet").write_bytes(b"\x00\x01\xff\xfe not parquet \x00" * 8)
    return {"missing": tmp_path / "missing.parquet", "empty": tmp_path / "empty.parquet",
            "csv": tmp_path / "raw.csv", "csv named parquet": tmp_path / "raw.parquet", "folder": tmp_path / "folder",
            "binary": tmp_path / "binary.parquet"}


SWEEP: dict[str, list[str]] = {
    "features": ["features", "--as-of", "2026-01-05", "--events", "{}"],
    "segments": ["segments", "--as-of", "2026-01-05", "--events", "{}"],
    "flow": ["flow", "--from", "2026-01-02", "--to", "2026-01-05", "--events", "{}"],
    "train": ["train", "--events", "{}"],
    "score --events": ["score", "--as-of", "2026-01-05", "--events", "{}"],
    "score --features": ["score", "--as-of", "2026-01-05", "--features", "{}"],
    "audience": ["audience", "--action", "nurture", "--out", "a.csv", "--scores", "{}"],
    "report --scores": ["report", "--scores", "{}"],
    "report --previous": ["report", "--scores", "{}", "--previous", "{}"],
}
RAW_SWEEP: dict[str, list[str]] = {
    "validate": ["validate", "{}"],
    "retrain": ["retrain", "{}"],
}


@pytest.mark.parametrize("command", [*SWEEP, *RAW_SWEEP])
def test_sweep_every_command_answers_a_bad_file_in_one_line(run, tmp_path: Path, command: str):
    """A missing file, an empty file, a folder without Parquet, a raw CSV and a binary file where Parquet is needed:
    a documented non-zero exit code, one line on stderr that names the file, no traceback, and nothing written."""
    inputs = _sweep_inputs(tmp_path)
    raw = command in RAW_SWEEP
    cases = ["missing", "empty", "folder", "csv named parquet", "binary"] if raw else list(inputs)
    for case in cases:
        path = inputs[case]
        args = [a.replace("{}", str(path)) for a in (RAW_SWEEP if raw else SWEEP)[command]]
        result = run(*args)
        assert result.exit_code in (1, 2), (command, case, result.output)
        line = one_error_line(result)
        assert path.name in line, (command, case, line)
        if case in ("csv", "csv named parquet"):
            assert "not Parquet" in line and ("propensity" in line or ".csv" in line), line
        if case == "binary":
            assert "not a Parquet file" in line and "not Parquet, not Parquet" not in line, line
    assert not (tmp_path / "data" / "clean" / "events.parquet").exists()


def test_unvalidated_parquet_is_refused_with_what_to_run(run, tmp_path: Path):
    """A Parquet with a float user_id and an int behavior never becomes user "1.5"."""
    path = tmp_path / "raw.parquet"
    pd.DataFrame({"user_id": [1.5, 2.0], "ts": pd.to_datetime(["2026-01-01", "2026-01-02"], utc=True),
                  "behavior": [1, 2]}).to_parquet(path)
    for args in (["features", "--as-of", "2026-01-05"], ["segments", "--as-of", "2026-01-05"]):
        result = run(*args, "--events", str(path))
        assert result.exit_code == 1
        line = one_error_line(result)
        assert "user_id is double" in line and "behavior is int64" in line and "propensity validate" in line
    assert not (tmp_path / "data" / "features").exists()


def test_store_path_that_is_not_a_database_is_one_line(run, tmp_path: Path):
    store = tmp_path / "data" / "store" / "scores.sqlite"
    store.parent.mkdir(parents=True)
    _csv(store, EVENTS_CSV)
    for args in (["lookup", "u1"], ["snapshots"], ["rollback-scores"]):
        result = run(*args)
        assert result.exit_code in (1, 6), (args, result.output)
        one_error_line(result)


# ----------------------------------------------------------------------------------------------- help, times ----------
def test_help_shows_every_default_and_no_type_label_on_flags(run):
    from propensity.cli.main import COMMANDS

    names = [fn.__name__.replace("_", "-") for fn in COMMANDS]
    for name in names:
        text = run(name, "--help").output
        assert "<bool>" not in text and "[default: data]" not in text, name
        assert not re.search(r"\S \.\s", text), (name, text)  # help strings no longer end in " ." (eaten markup)
        if name not in ("promote", "rollback", "models"):
            assert "--data-dir" in text and "[default: (data)]" in text, name
    features = run("features", "--help").output
    assert "DATETIME" in features and "[default: duckdb]" in features and "<%Y" not in features
    assert "(<data-dir>/clean/events.parquet)" in features
    assert "[default: 20000]" in run("generate", "--help").output
    validate = run("validate", "--help").output
    assert "future_ts" in validate and "[default: (now)]" in validate
    assert "Exit codes" in run("retrain", "--help").output


@pytest.mark.parametrize("text, expected", [
    ("2026-09-01", "2026-09-01T00:00:00+00:00"),
    ("2026-09-01T10:00", "2026-09-01T10:00:00+00:00"),
    ("2026-09-01 10:00:30", "2026-09-01T10:00:30+00:00"),
    ("2026-09-01T10:00:30.5", "2026-09-01T10:00:30.500000+00:00"),
    ("2026-09-01T10:00Z", "2026-09-01T10:00:00+00:00"),
    ("2026-09-01T12:00+02:00", "2026-09-01T10:00:00+00:00"),
])
def test_one_time_parser_reads_dates_minutes_seconds_offsets_and_z(text: str, expected: str):
    from propensity.cli.common import parse_datetime

    assert parse_datetime(text).isoformat() == expected


def test_every_time_option_takes_the_same_formats(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", EVENTS_CSV)
    assert run("validate", str(src), "--as-of", "2026-02-01T10:00Z").exit_code == 0
    built = run("features", "--as-of", "2026-01-05T10:00", "--out", "f.parquet")
    assert built.exit_code == 0, built.output
    assert "2026-01-05T10:00:00+00:00" in built.output
    assert run("segments", "--as-of", "2026-01-05T12:00+02:00").exit_code == 0
    assert run("flow", "--from", "2026-01-02T10:00", "--to", "2026-01-05T10:00Z").exit_code == 0
    help_text = {name: run(name, "--help").output for name in ("features", "segments", "score", "validate", "flow")}
    assert all("DATETIME" in text for text in help_text.values())


# ----------------------------------------------------------------------------------------------------- serve ----------
def test_serve_on_a_port_in_use_names_the_port_and_the_option(run, monkeypatch: pytest.MonkeyPatch):
    import socket

    monkeypatch.setenv("PROPENSITY_SERVING__ALLOW_NO_AUTH", "1")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.exit_code == 6
    line = one_error_line(result)
    assert f"port {port}" in line and "in use" in line and "--port" in line


# --------------------------------------------------------------------------------------------------- retrain ----------
def test_failed_retrain_keeps_the_clean_events(run, tmp_path: Path):
    """`retrain ten_rows.csv` stops on eligibility and the clean events of the last good run stay in place."""
    import pyarrow.parquet as pq

    first = _csv(tmp_path / "e.csv", EVENTS_CSV)
    assert run("validate", str(first), "--as-of", "2026-02-01").exit_code == 0
    clean = tmp_path / "data" / "clean" / "events.parquet"
    before = clean.read_bytes()
    ten = _csv(tmp_path / "ten_rows.csv", "user_id,ts,behavior\n" + "".join(
        f"u{i},2026-03-0{1 + i % 5}T10:00:00,{'buy' if i % 3 == 0 else 'view'}\n" for i in range(10)))
    result = run("retrain", str(ten))
    assert result.exit_code == 1, result.output
    assert "positives" in one_error_line(result) or "too few" in one_error_line(result)
    assert clean.read_bytes() == before and pq.read_metadata(clean).num_rows == 5
    assert "unchanged" in result.stderr
    staged = list((tmp_path / "data" / "retrain").glob("*/events.parquet"))
    assert len(staged) == 1 and pq.read_metadata(staged[0]).num_rows == 10


# -------------------------------------------------------------------------------------------------- warnings ----------
def test_empty_or_stale_results_are_warned_about(run, tmp_path: Path):
    src = _csv(tmp_path / "e.csv", EVENTS_CSV)
    assert run("validate", str(src), "--as-of", "2026-02-01").exit_code == 0
    before = run("segments", "--as-of", "2025-12-01")
    assert before.exit_code == 0
    assert "warning:" in before.stderr and "before the first event" in before.stderr
    assert "0.0% of 0 assets" not in before.output
    stale = run("segments", "--as-of", "2026-06-01")
    assert "warning:" in stale.stderr and "days after the last event" in stale.stderr
    empty_side = run("flow", "--from", "2025-12-01", "--to", "2026-01-05")
    assert empty_side.exit_code == 0, empty_side.output
    assert "warning:" in empty_side.stderr and "--from" in empty_side.stderr
    assert "nan" not in empty_side.output.lower()
    assert "warning:" not in run("segments", "--as-of", "2026-01-05").stderr


# -------------------------------------------------------------------------------------------------- generate ----------
def test_generated_data_ends_today_by_default_or_on_end(run, tmp_path: Path):
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert run("generate", "--users", "40", "--days", "6", "--out", "g").exit_code == 0
    ts = pd.read_parquet(tmp_path / "g" / "events")["ts"]
    assert ts.max() < today and ts.min() >= today - timedelta(days=6)
    assert ts.max() >= today - timedelta(days=2)  # the data reaches (nearly) today: a batch of it is fresh
    assert run("generate", "--users", "40", "--days", "6", "--end", "2026-03-01", "--out", "h").exit_code == 0
    ts = pd.read_parquet(tmp_path / "h" / "events")["ts"]
    assert ts.max() < datetime(2026, 3, 1, tzinfo=UTC) and ts.min() >= datetime(2026, 2, 23, tzinfo=UTC)
    bad = run("generate", "--end", "March")
    assert bad.exit_code == 2 and "--end" in one_error_line(bad)
    days = run("generate", "--days", "0")
    assert days.exit_code == 2 and "--days" in one_error_line(days) and "GeneratorConfig" not in days.output


def test_demo_ends_with_how_to_serve_with_a_token(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    from types import SimpleNamespace

    from propensity.cli.demo import _outputs
    from propensity.config import load_settings

    result = SimpleNamespace(audience_path=tmp_path / "a.parquet")
    _outputs(load_settings(data_dir=tmp_path), result, tmp_path / "audiences", tmp_path / "report.html")
    out = capsys.readouterr().out
    assert "PROPENSITY_SERVING__API_TOKEN=" in out and "propensity serve" in out and "Bearer" in out


def test_readme_states_what_the_code_does(run):
    from features.events.schema import BEHAVIOR_ALIASES
    from propensity.config import Settings

    readme = README.read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| behavior |"))
    assert all(alias in row for alias in BEHAVIOR_ALIASES), [a for a in BEHAVIOR_ALIASES if a not in row]
    cfg = Settings()
    assert f"at most {cfg.training.max_users // 1000}k users by default" in readme
    assert "PROPENSITY_STORE_PATH" in readme and "store_path" in readme
    assert (f"at most {cfg.serving.score_max_users} users and {cfg.serving.score_max_events:,} events"
            in readme.replace("\n", " "))
    assert "--previous" in readme and "--previous" in run("report", "--help").output
    assert "--end DATE" in readme and "--end" in run("generate", "--help").output


def test_demo_too_short_for_the_training_cutoffs_names_days(run, tmp_path: Path):
    result = run("demo", "--days", "20", "--users", "100")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "--days" in line and "at least" in line and "GeneratorConfig" not in result.output
    assert not (tmp_path / "data" / "generated").exists()


def test_events_with_no_rows_are_warned_about_or_refused_for_training(run, tmp_path: Path):
    import pyarrow.parquet as pq

    from features.events.schema import arrow_schema

    zero = tmp_path / "zero.parquet"
    pq.write_table(arrow_schema().empty_table(), zero)
    segments = run("segments", "--as-of", "2026-01-05", "--events", str(zero))
    assert segments.exit_code == 0 and "no rows" in segments.stderr
    train = run("train", "--events", str(zero))
    assert train.exit_code == 1 and "holds no events" in one_error_line(train)
    header_only = _csv(tmp_path / "header.csv", "user_id,ts,behavior\n")
    retrain = run("retrain", str(header_only))
    assert retrain.exit_code == 1 and "holds no events" in one_error_line(retrain)
    assert not (tmp_path / "data" / "clean" / "events.parquet").exists()


def test_serve_with_a_missing_model_dir_is_bad_input(run, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROPENSITY_SERVING__ALLOW_NO_AUTH", "1")
    result = run("serve", "--model-dir", "nope")
    assert result.exit_code == 1 and "propensity pin" in one_error_line(result)


def test_an_invalid_setting_is_a_usage_error_naming_it(run, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PROPENSITY_TRAINING__MAX_USERS", "5")
    result = run("segments", "--as-of", "2026-01-05")
    assert result.exit_code == 2
    line = one_error_line(result)
    assert "training.max_users" in line and "PROPENSITY_" in line
