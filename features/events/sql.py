"""DuckDB SQL that normalises raw event columns and assigns quarantine reasons.

Helpers of :mod:`features.events.validate`. :func:`normalised_select` builds one nested SELECT per source:
layer 0 renames the source columns (``_s_<name>``) and keeps their text (``raw_<name>``), layer 1
trims text, layers 2-3 parse and cast, layer 4 assigns the reason. Each per-column builder adds its
steps to those layers so every derived value is computed once per row. Naive timestamps are read in
the session ``TimeZone``, which the caller sets to the source time zone.
"""

from __future__ import annotations

import re

from features.events.schema import BEHAVIOR_ALIASES, BEHAVIORS, CHANNELS
from features.events.sources import sql_str

# Quarantine reasons, in the order they are tested (a row gets the first that applies).
REASONS: tuple[str, ...] = (
    "malformed_row",
    "null_user_id",
    "bad_ts",
    "unknown_behavior",
    "bad_amount",
    "future_ts",
)

# Which canonical column each reason is about, and how to say what is wrong with it.
REASON_TEXT: dict[str, tuple[str, str]] = {
    "malformed_row": ("row", "could not be split into the expected columns"),
    "null_user_id": ("user_id", "null or empty"),
    "bad_ts": ("ts", "unparseable or out of range"),
    "unknown_behavior": ("behavior", "not a known behavior"),
    "bad_amount": ("amount", "negative, NaN, infinite or unparseable"),
    "future_ts": ("ts", "later than the cutoff plus tolerance"),
}

EPOCH_FACTORS: dict[str, float] = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}

# Epoch seconds accepted as timestamps: about years 1200 to 5100; beyond is a unit or data error.
_EPOCH_LIMIT = 1e11
_WS = "e' \\t\\r\\n'"

_INT_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
_NAIVE_TS_TYPES = {"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATETIME"}
_TZ_TYPES = {"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"}


def type_kind(duckdb_type: str) -> str:
    """Classify a DuckDB type name: text, int, float, decimal, naive_ts, tz_ts, date or other."""
    t = duckdb_type.upper()
    if t == "VARCHAR":
        return "text"
    if t in _INT_TYPES:
        return "int"
    if t in _FLOAT_TYPES:
        return "float"
    if t.startswith("DECIMAL"):
        return "decimal"
    if t in _NAIVE_TS_TYPES:
        return "naive_ts"
    if t in _TZ_TYPES:
        return "tz_ts"
    if t == "DATE":
        return "date"
    return "other"


def _clean_text(x: str) -> str:
    """VARCHAR ``x`` trimmed of spaces, tabs and line breaks; '' becomes NULL.

    The common case (no surrounding whitespace) is detected with cheap comparisons so the much
    slower ``trim(x, characters)`` only runs on the rare values that need it.
    """
    ends_ws = " OR ".join(f"suffix({x}, {c})" for c in ("' '", "e'\\t'", "e'\\r'", "e'\\n'"))
    return f"CASE WHEN {x} >= '!' AND NOT ({ends_ws}) THEN {x} ELSE NULLIF(trim({x}, {_WS}), '') END"


def _is_numeric(kind: str) -> bool:
    return kind in ("int", "float", "decimal")


def _epoch_expr(d: str, unit: str) -> str:
    """TIMESTAMPTZ from a DOUBLE column ``d`` of epoch numbers; NULL when non-finite or out of range."""
    factor = EPOCH_FACTORS[unit]
    return (
        f"CASE WHEN isfinite({d}) AND abs({d}) < {_EPOCH_LIMIT / factor!r} "
        f"THEN to_timestamp({d} * {factor!r}) END"
    )


class _Layers:
    """Builds nested SELECTs so every derived value is computed once per row."""

    def __init__(self, n: int) -> None:
        self.layers: list[list[str]] = [[] for _ in range(n)]

    def add(self, layer: int, expr: str, name: str) -> None:
        self.layers[layer].append(f"{expr} AS {name}")

    def sql(self, base: str) -> str:
        query = f"SELECT {', '.join(self.layers[0])} FROM {base}"
        for cols in self.layers[1:]:
            query = f"SELECT *{''.join(', ' + c for c in cols)} FROM ({query})"
        return query


def _id(layers: _Layers, name: str, ref: str | None, dtype: str) -> None:
    """Identifier as text: integers without a fraction ('999477', never '999477.0'); '' -> NULL."""
    if ref is None:
        layers.add(2, "NULL::VARCHAR", name)
        return
    kind = type_kind(dtype)
    if kind == "int":
        layers.add(2, f"raw_{name}", name)
        return
    text = f"_t_{name}"
    layers.add(1, _clean_text(f"raw_{name}"), text)
    stripped = (
        f"CASE WHEN contains({text}, '.') "
        f"THEN regexp_replace({text}, '^([+-]?[0-9]+)\\.0+$', '\\1') ELSE {text} END"
    )
    if kind == "float":
        stripped = f"CASE WHEN isnan(_s_{name}) OR NOT isfinite(_s_{name}) THEN NULL ELSE {stripped} END"
    layers.add(2, stripped, name)


def _ts(layers: _Layers, dtype: str, epoch_unit: str) -> None:
    """``ts`` as TIMESTAMPTZ from epoch numbers (in ``epoch_unit``), ISO text or native timestamps.

    Text holding a number is epoch time; other text must start with a digit and cast to
    TIMESTAMPTZ (an explicit offset or zone is honoured, naive text is in the session zone).
    Unparseable values give NULL.
    """
    kind = type_kind(dtype)
    if _is_numeric(kind):
        layers.add(1, "CAST(_s_ts AS DOUBLE)", "_d_ts")
        expr = _epoch_expr("_d_ts", epoch_unit)
    elif kind == "naive_ts":
        expr = "CAST(CAST(_s_ts AS TIMESTAMP) AS TIMESTAMPTZ)"
    elif kind in ("tz_ts", "date"):
        expr = "CAST(_s_ts AS TIMESTAMPTZ)"
    else:
        layers.add(1, _clean_text("raw_ts"), "_t_ts")
        layers.add(2, "TRY_CAST(_t_ts AS DOUBLE)", "_d_ts")
        expr = (
            f"CASE WHEN _d_ts IS NOT NULL THEN {_epoch_expr('_d_ts', epoch_unit)} "
            "WHEN left(_t_ts, 1) BETWEEN '0' AND '9' THEN TRY_CAST(_t_ts AS TIMESTAMPTZ) END"
        )
    layers.add(3, expr, "ts")


def _behavior(layers: _Layers) -> None:
    """Canonical behavior (lower-cased, trimmed, aliases applied) or NULL when unknown."""
    layers.add(1, f"lower({_clean_text('raw_behavior')})", "_t_behavior")
    whens = [f"WHEN {sql_str(v)} THEN {sql_str(v)}" for v in BEHAVIORS]
    whens += [f"WHEN {sql_str(k)} THEN {sql_str(v)}" for k, v in BEHAVIOR_ALIASES.items()]
    layers.add(2, f"CASE _t_behavior {' '.join(whens)} END", "behavior")


def _channel(layers: _Layers, present: bool) -> None:
    """Canonical channel: a known one, 'other' for any other text, NULL when empty."""
    if not present:
        layers.add(2, "NULL::VARCHAR", "channel")
        return
    layers.add(1, f"lower({_clean_text('raw_channel')})", "_t_channel")
    known = ", ".join(sql_str(v) for v in CHANNELS)
    layers.add(
        2,
        f"CASE WHEN _t_channel IS NULL THEN NULL WHEN _t_channel IN ({known}) "
        "THEN _t_channel ELSE 'other' END",
        "channel",
    )


def _amount(layers: _Layers, dtype: str | None) -> None:
    """``amount`` as DOUBLE (-0.0 as 0.0) and ``_amount_bad``: present but negative/NaN/inf/unparseable."""
    if dtype is None:
        layers.add(3, "NULL::DOUBLE", "amount")
        layers.add(3, "false", "_amount_bad")
        return
    if _is_numeric(type_kind(dtype)):
        layers.add(1, "_s_amount IS NOT NULL", "_p_amount")
        layers.add(2, "CAST(_s_amount AS DOUBLE)", "_a")
    else:
        layers.add(1, _clean_text("raw_amount"), "_t_amount")
        layers.add(2, "_t_amount IS NOT NULL", "_p_amount")
        layers.add(2, "TRY_CAST(_t_amount AS DOUBLE)", "_a")
    layers.add(3, "_a + 0.0", "amount")
    layers.add(3, "(_p_amount AND (_a IS NULL OR NOT isfinite(_a) OR _a < 0))", "_amount_bad")


OUTPUT_COLUMNS: tuple[str, ...] = (
    "user_id", "ts", "behavior", "item_id", "category_id", "channel", "amount",
)  # fmt: skip


def normalised_select(
    source_sql: str,
    columns: dict[str, str],
    types: dict[str, str],
    *,
    cutoff_sql: str,
    epoch_unit: str,
    file_col: str,
    row_col: str | None,
) -> str:
    """SELECT of the normalised rows of ``source_sql`` (a table function call), one per input row.

    ``columns`` maps canonical names to source column names (absent optional columns give NULL).
    Output columns: ``_file``, ``_row`` (``row_col`` or NULL), the seven canonical columns
    normalised, ``raw_<name>`` (the source value as text) and ``reason`` (NULL for a good row, else
    the first failing check of :data:`REASONS`). ``cutoff_sql`` is a TIMESTAMPTZ literal: later
    timestamps are ``future_ts``.
    """
    layers = _Layers(5)
    layers.add(0, file_col, "_file")
    layers.add(0, row_col if row_col is not None else "NULL::BIGINT", "_row")
    for c in OUTPUT_COLUMNS:
        name = columns.get(c)
        ref = "NULL::VARCHAR" if name is None else '"' + name.replace('"', '""') + '"'
        layers.add(0, ref, f"_s_{c}")
        layers.add(0, f"CAST({ref} AS VARCHAR)", f"raw_{c}")
    for c in ("user_id", "item_id", "category_id"):
        _id(layers, c, columns.get(c), types.get(c, "VARCHAR"))
    _ts(layers, types["ts"], epoch_unit)
    _behavior(layers)
    _channel(layers, "channel" in columns)
    _amount(layers, types.get("amount") if "amount" in columns else None)
    layers.add(
        4,
        "CASE WHEN user_id IS NULL THEN 'null_user_id' "
        "WHEN ts IS NULL OR NOT isfinite(ts) THEN 'bad_ts' "
        "WHEN behavior IS NULL THEN 'unknown_behavior' "
        "WHEN _amount_bad THEN 'bad_amount' "
        f"WHEN ts > {cutoff_sql} THEN 'future_ts' END",
        "reason",
    )
    return layers.sql(source_sql)


_SAFE_ZONE = re.compile(r"^[A-Za-z0-9_+\-/]+$")


def set_timezone_sql(zone: str) -> str:
    """``SET TimeZone`` statement for an IANA zone name (validated by the caller)."""
    if not _SAFE_ZONE.match(zone):
        raise ValueError(f"invalid time zone name {zone!r}")
    return f"SET TimeZone = {sql_str(zone)}"
