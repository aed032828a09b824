"""Security properties that need no server: no unsafe deserialisation or code evaluation in the code that touches
request data, SQL built only from bound parameters and validated table names, secrets kept off command lines and
out of messages, a loopback default bind, and command outputs that cannot overwrite the store or the registry.

The static scans parse the source with :mod:`ast` (comments and docstrings never trigger them, import aliases do
not hide a call), and each scanner is first shown to catch an injected offending line.
"""

from __future__ import annotations

import ast
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from propensity.config import Settings
from propensity.paths import UnsafeOutputError, check_output
from serving.store.base import SnapshotNotFoundError, StoreUnavailableError, validate_snapshot_id
from serving.store.sqlite import SQLiteScoreStore, table_name

REPO = Path(__file__).resolve().parents[2]
SCANNED_PACKAGES = ("serving", "features", "training")  # request handling, and the bundle loading it relies on
TOKEN = "s3cret-token-for-the-security-tests"


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No PROPENSITY_* variables and no propensity.toml: the settings are the code's defaults."""
    for name in list(os.environ):
        if name.startswith("PROPENSITY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------------- unsafe loads
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve", "torch"}
UNSAFE_CALLS = {"eval", "exec", "builtins.eval", "builtins.exec", "pandas.read_pickle", "yaml.unsafe_load"}


def _qualify(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` of a call target with the import alias of ``a`` resolved (None for computed targets)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def scan_unsafe(source: str, filename: str = "<string>") -> list[str]:
    """Findings ``file:line: what`` for imports of unpickling modules and calls that run or unpickle data."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    findings: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    findings.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            if node.module.split(".")[0] in UNSAFE_MODULES:
                findings.append(f"{filename}:{node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _qualify(node.func, aliases)
        if name is None:
            continue
        if name in UNSAFE_CALLS or name.split(".")[0] in UNSAFE_MODULES:
            findings.append(f"{filename}:{node.lineno}: call {name}()")
        elif name in ("numpy.load", "np.load") and any(
            k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
            for k in node.keywords
        ):
            findings.append(f"{filename}:{node.lineno}: call {name}(allow_pickle=...)")
    return findings


@pytest.mark.parametrize(
    "line",
    [
        "import pickle\nobj = pickle.loads(body)",
        "from pickle import loads as l\nobj = l(body)",
        "import cloudpickle as cp\nmodel = cp.load(fh)",
        "import joblib\nmodel = joblib.load(path)",
        "import marshal\ncode = marshal.loads(blob)",
        "value = eval(request_text)",
        "exec(code, {})",
        "import builtins\nbuiltins.eval(s)",
        "import pandas as pd\nframe = pd.read_pickle(path)",
        "import numpy as np\narr = np.load(path, allow_pickle=True)",
    ],
)
def test_the_unsafe_load_scanner_catches_an_injected_line(line: str) -> None:
    assert scan_unsafe(line), line


@pytest.mark.parametrize(
    "line",
    [
        "import json\ndoc = json.loads(body)",
        "import ast\nvalue = ast.literal_eval(text)",
        '"""Never pickle.loads(data) or eval(text) here."""',
        "# eval(x) in a comment\nx = 1",
        "sql = con.compile(expr)\nmodel.eval()",
        "import numpy as np\narr = np.load(path, allow_pickle=False)",
    ],
)
def test_the_unsafe_load_scanner_leaves_safe_code_alone(line: str) -> None:
    assert scan_unsafe(line) == []


def _sources(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((REPO / package).rglob("*.py"))


def test_no_pickle_joblib_eval_or_exec_in_the_serving_features_and_training_code() -> None:
    files = list(_sources(*SCANNED_PACKAGES))
    assert len(files) > 20 and any(p.as_posix().endswith("serving/http/app.py") for p in files)
    findings = [f for p in files for f in scan_unsafe(p.read_text(), str(p.relative_to(REPO)))]
    assert findings == []


# ------------------------------------------------------------------------------------------------- SQL
SQL_METHODS = {"execute", "executemany", "executescript"}
TABLE_HELPERS = {"table_name", "_safe_table"}  # build identifiers only from a validated snapshot id
REVIEWED = {
    # (function, interpolated expression): why it cannot carry caller data
    ("_connect", "self._busy_ms"): "int() of the busy timeout set in __init__",
    ("_reader", "self._mmap_bytes"): "int() of the mmap size set in __init__",
    ("_init_schema", "SCHEMA_VERSION"): "module constant",
    ("lookup", "where"): "'user_id = ?' or 'user_id IN (?,?,...)': placeholders only",
    ("_drop_unfinished", "name"): "a table name read from sqlite_master, dropped only if equal to _safe_table(...)",
}


class _SQLScan(ast.NodeVisitor):
    """Checks every ``execute*`` call's SQL text (see :func:`scan_sql`)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.findings: list[str] = []
        self.used: set[tuple[str, str]] = set()
        self.function = "<module>"
        self.assigned: dict[str, list[ast.expr]] = {}
        self.loop_vars: dict[str, ast.expr] = {}
        self.constants: set[str] = set()  # module-level NAME = "literal"

    def visit_Module(self, node: ast.Module) -> None:
        for stmt in node.body:
            if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
                self.constants.update(t.id for t in stmt.targets if isinstance(t, ast.Name) and t.id.isupper())
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        saved = (self.function, self.assigned, self.loop_vars)
        self.function, self.assigned, self.loop_vars = node.name, {}, {}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Assign):
                for target in sub.targets:
                    if isinstance(target, ast.Name):
                        self.assigned.setdefault(target.id, []).append(sub.value)
            elif isinstance(sub, ast.For):
                for name in ast.walk(sub.target):
                    if isinstance(name, ast.Name):
                        self.loop_vars[name.id] = sub.iter
        self.generic_visit(node)
        self.function, self.assigned, self.loop_vars = saved

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute) and node.func.attr in SQL_METHODS and node.args:
            self._check(node.args[0], node.lineno, depth=0)
        self.generic_visit(node)

    def _trusted_value(self, expr: ast.expr) -> bool:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id in TABLE_HELPERS:
            return True
        key = (self.function, ast.unparse(expr))
        if key in REVIEWED:
            self.used.add(key)
            return True
        if isinstance(expr, ast.Name) and self.assigned.get(expr.id):
            return all(self._trusted_value(v) for v in self.assigned[expr.id])
        return False

    def _check(self, sql: ast.expr, line: int, depth: int) -> None:
        where = f"{self.filename}:{line} in {self.function}()"
        if isinstance(sql, ast.Constant) and isinstance(sql.value, str):
            return
        if isinstance(sql, ast.IfExp):
            self._check(sql.body, line, depth)
            self._check(sql.orelse, line, depth)
            return
        if isinstance(sql, ast.Name) and sql.id in self.constants:
            return
        if isinstance(sql, ast.JoinedStr):
            for part in sql.values:
                if isinstance(part, ast.FormattedValue) and not self._trusted_value(part.value):
                    self.findings.append(f"{where}: f-string interpolates {ast.unparse(part.value)}")
            return
        if isinstance(sql, ast.Name) and depth < 3:
            if sql.id in self.assigned:
                for value in self.assigned[sql.id]:
                    self._check(value, line, depth + 1)
                return
            root = self.loop_vars.get(sql.id)
            while isinstance(root, (ast.Call, ast.Attribute)):
                root = root.func if isinstance(root, ast.Call) else root.value
            if isinstance(root, ast.Name) and root.id.isupper():  # iterating over a module constant
                return
        self.findings.append(f"{where}: SQL text built by {type(sql).__name__}: {ast.unparse(sql)[:80]}")


def scan_sql(source: str, filename: str = "<string>") -> tuple[list[str], set[tuple[str, str]]]:
    """(findings, reviewed entries used): every SQL text passed to ``execute*`` must be a literal (or a module-level
    literal constant, or a choice between literals), or an f-string whose values come from the table-name helpers
    or the :data:`REVIEWED` list; ``%``, ``+`` and ``.format`` never pass."""
    scan = _SQLScan(filename)
    scan.visit(ast.parse(source, filename))
    return scan.findings, scan.used


@pytest.mark.parametrize(
    "code",
    [
        'def f(conn, uid):\n    conn.execute(f"SELECT payload FROM t WHERE user_id = \'{uid}\'")',
        'def f(conn, uid):\n    conn.execute("SELECT payload FROM t WHERE user_id = \'%s\'" % uid)',
        'def f(conn, uid):\n    conn.execute("SELECT payload FROM t WHERE user_id = \'{}\'".format(uid))',
        'def f(conn, uid):\n    sql = f"DELETE FROM t WHERE user_id = \'{uid}\'"\n    conn.executemany(sql, [])',
        'def f(conn, sid):\n    table = "scores_" + sid\n    conn.execute(f\'DROP TABLE "{table}"\')',
        'def f(conn, parts):\n    conn.execute(" ".join(parts))',
    ],
)
def test_the_sql_scanner_catches_an_injected_line(code: str) -> None:
    findings, _ = scan_sql(code)
    assert findings, code


def test_the_sql_scanner_accepts_bound_parameters_and_validated_table_names() -> None:
    code = (
        "def f(conn, sid, uid):\n"
        '    conn.execute("SELECT payload FROM t WHERE user_id = ?", (uid,))\n'
        "    table = table_name(sid)\n"
        "    conn.execute(f'SELECT payload FROM \"{table}\" WHERE user_id = ?', (uid,))\n"
        "    conn.execute(f'DROP TABLE \"{table_name(sid)}\"')\n"
    )
    assert scan_sql(code) == ([], set())


def test_sqlite_store_builds_sql_only_from_bound_parameters_and_validated_table_names() -> None:
    path = REPO / "serving" / "store" / "sqlite.py"
    findings, used = scan_sql(path.read_text(), "serving/store/sqlite.py")
    assert findings == []
    assert used == set(REVIEWED), f"stale entries in REVIEWED: {set(REVIEWED) - used}"


@pytest.mark.parametrize(
    "bad",
    ['x"; DROP TABLE snapshots; --', '20261124T010203Z-a1b2c3"', "20261124T010203Z-A1B2C3", "", None, 20261124,
     "../20261124T010203Z-a1b2c3", "20261124T010203Z-a1b2c3 OR 1=1", "20261124T010203Z-a1b2c"],
)
def test_table_names_come_only_from_well_formed_snapshot_ids(bad: object) -> None:
    assert table_name("20261124T010203Z-a1b2c3") == "scores_20261124T010203Z_a1b2c3"
    with pytest.raises(SnapshotNotFoundError, match="is not a snapshot id"):
        table_name(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\x00"])
def test_snapshot_ids_with_trailing_line_breaks_are_refused(suffix: str) -> None:
    """``re.match`` with ``$`` also matches before a final newline: ids must be matched in full."""
    with pytest.raises(SnapshotNotFoundError):
        validate_snapshot_id("20261124T010203Z-a1b2c3" + suffix)


def test_redis_key_prefixes_with_trailing_line_breaks_are_refused() -> None:
    from serving.store.base import StoreInputError
    from serving.store.redis import RedisScoreStore

    with pytest.raises(StoreInputError, match="prefix"):
        RedisScoreStore("redis://127.0.0.1:1/0", prefix="propensity\n")


def test_hostile_ids_are_data_not_sql(tmp_path: Path) -> None:
    store = SQLiteScoreStore(tmp_path / "s.db")
    try:
        store.publish([pd.DataFrame({"user_id": ["u1", "x' OR '1'='1"], "p": [0.1, 0.2]})],
                      {"created_at": "2026-11-24T00:00:00Z"})
        hostile = ["' OR '1'='1", '"; DROP TABLE snapshots; --', "u1' --", "*"]
        info, found = store.lookup(hostile + ["x' OR '1'='1"])
        assert list(found) == ["x' OR '1'='1"]  # matched as a literal id, nothing else
        with pytest.raises(SnapshotNotFoundError):
            store.rollback(to='20261124T000000Z-abcdef"; DROP TABLE snapshots; --')
        assert store.current() == info and len(store.snapshots()) == 1
    finally:
        store.close()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ------------------------------------------------------------------------------------------------- secrets, bind
def test_token_stays_off_the_command_line_and_out_of_the_shipped_settings(clean_env: Path) -> None:
    from propensity.service.launch import serve_args
    from propensity.service.options import SETTINGS_ENV, TOKEN_ENV, service_options

    settings = Settings(serving={"api_token": TOKEN})
    argv, env = serve_args(settings, environ={"PATH": "/usr/bin"})
    assert not any(TOKEN in arg for arg in argv), argv
    assert env[TOKEN_ENV] == TOKEN and TOKEN not in env[SETTINGS_ENV]
    assert [k for k, v in env.items() if TOKEN in v] == [TOKEN_ENV]  # the one variable meant for it
    assert TOKEN not in repr(settings) and TOKEN not in settings.model_dump_json()
    assert TOKEN not in repr(service_options(settings, {}))

    token_file = clean_env / "token.txt"
    token_file.write_text(TOKEN + "\n")
    argv, env = serve_args(Settings(serving={"api_token_file": token_file}), environ={"PATH": "/usr/bin"})
    assert not any(TOKEN in arg for arg in argv) and not any(TOKEN in v for v in env.values())
    assert service_options(Settings(serving={"api_token_file": token_file}), {}).token == TOKEN


def test_redis_password_is_redacted_from_urls_and_errors() -> None:
    from serving.store.redis import RedisScoreStore

    store = RedisScoreStore("redis://:hunter2-pw@127.0.0.1:1/0", socket_timeout=0.5)  # nothing listens on port 1
    try:
        assert "hunter2-pw" not in store.url and "hunter2-pw" not in repr(store) and "***" in store.url
        with pytest.raises(StoreUnavailableError) as err:
            store.ping()
        assert "hunter2-pw" not in str(err.value) and "127.0.0.1:1" in str(err.value)
    finally:
        store.close()


def test_server_binds_loopback_unless_told_otherwise(clean_env: Path) -> None:
    from propensity.service.launch import serve_args

    settings = Settings(serving={"api_token": TOKEN})
    assert settings.serving.host == "127.0.0.1"
    argv, _ = serve_args(settings, environ={"PATH": "/usr/bin"})
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv.count("--host") == 1
    argv, _ = serve_args(settings, "0.0.0.0", environ={"PATH": "/usr/bin"})  # an explicit choice is honoured
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


# ------------------------------------------------------------------------------------------------- outputs
@pytest.fixture()
def layout(clean_env: Path) -> Settings:
    """Store, MLflow database (relative URI, resolved from the working directory) and artifacts under tmp."""
    root = clean_env
    (root / "data" / "store").mkdir(parents=True)
    (root / "data" / "store" / "scores.sqlite").write_bytes(b"")
    (root / "registry").mkdir()
    (root / "registry" / "mlflow.db").write_bytes(b"")
    (root / "mlruns" / "1" / "abc" / "artifacts").mkdir(parents=True)
    return Settings(data_dir=Path("data"), store_path=Path("data/store/scores.sqlite"),
                    tracking_uri="sqlite:///registry/mlflow.db", artifact_root=Path("mlruns"))


@pytest.mark.parametrize(
    ("out", "is_dir", "what"),
    [
        ("data/store/scores.sqlite", False, "the score store"),
        ("data/reports/../store/./scores.sqlite", False, "the score store"),
        ("registry/mlflow.db", False, "the MLflow database"),
        ("mlruns/1/abc/artifacts/model.txt", False, "the MLflow artifact store"),
        ("mlruns", True, "the MLflow artifact store"),
        ("mlruns/1", True, "the MLflow artifact store"),
        ("data", True, "the score store"),
        ("data/store", True, "the score store"),
        (".", True, "the"),
        ("registry", True, "the MLflow database"),
    ],
)
def test_outputs_cannot_overwrite_or_contain_the_store_or_registry(
    layout: Settings, out: str, is_dir: bool, what: str
) -> None:
    with pytest.raises(UnsafeOutputError, match=f"{what}.*choose another --out"):
        check_output(Path(out), layout, is_dir=is_dir)
    with pytest.raises(UnsafeOutputError):  # the same through an absolute path
        check_output(Path(out).resolve(), layout, is_dir=is_dir)


def test_a_symlink_to_the_store_is_refused(layout: Settings, clean_env: Path) -> None:
    link = clean_env / "innocent.csv"
    link.symlink_to(clean_env / "data" / "store" / "scores.sqlite")
    with pytest.raises(UnsafeOutputError, match="the score store"):
        check_output(link, layout)
    (clean_env / "elsewhere").symlink_to(clean_env / "mlruns", target_is_directory=True)
    with pytest.raises(UnsafeOutputError, match="the MLflow artifact store"):
        check_output(clean_env / "elsewhere" / "report.html", layout)


@pytest.mark.parametrize(
    ("out", "is_dir"),
    [("data/audience.csv", False), ("data/store2.sqlite", False), ("data/reports", True), ("mlruns-copy/x.txt", False),
     ("data/store/scores.sqlite.csv", False), ("out", True)],
)
def test_ordinary_outputs_are_allowed(layout: Settings, out: str, is_dir: bool) -> None:
    assert check_output(Path(out), layout, is_dir=is_dir) == Path(out)


@pytest.mark.parametrize("out", ["data/store/scores.sqlite-wal", "data/store/scores.sqlite-shm",
                                 "data/store/scores.sqlite-journal", "registry/mlflow.db-wal",
                                 "registry/mlflow.db-journal"])
def test_outputs_cannot_overwrite_the_sqlite_side_files_of_the_store_or_registry(layout: Settings, out: str) -> None:
    """Overwriting a database's WAL or journal corrupts its latest transactions as surely as the file itself."""
    with pytest.raises(UnsafeOutputError):
        check_output(Path(out), layout)
