"""A raw CSV export with malformed rows mixed in, for demos and tests of validation and quarantine."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.events.schema import CANONICAL_COLUMNS

#: The kinds of malformed rows written, in the order they are cycled through.
DEFECTS: tuple[str, ...] = ("null_user_id", "bad_ts", "unknown_behavior", "negative_amount", "future_ts")
FAR_FUTURE_TS = "2099-01-01T00:00:00+00:00"


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _corrupt(row: list[str], defect: str) -> list[str]:
    row = list(row)
    col = {c: i for i, c in enumerate(CANONICAL_COLUMNS)}
    if defect == "null_user_id":
        row[col["user_id"]] = ""
    elif defect == "bad_ts":
        row[col["ts"]] = "not-a-timestamp"
    elif defect == "unknown_behavior":
        row[col["behavior"]] = "wishlist"
    elif defect == "negative_amount":
        row[col["behavior"]] = "buy"
        row[col["amount"]] = "-19.99"
    elif defect == "future_ts":
        row[col["ts"]] = FAR_FUTURE_TS
    else:  # pragma: no cover - DEFECTS is closed
        raise ValueError(f"unknown defect {defect!r}")
    return row


def dirty_rows_count(n_valid: int, share: float) -> int:
    """Number of malformed rows so that they make up ``share`` of all rows (rounded)."""
    if share <= 0:
        return 0
    return max(1, round(n_valid * share / (1.0 - share)))


def write_dirty_csv(valid: pa.Table, path: Path, share: float, seed: int) -> tuple[int, int]:
    """Write ``valid`` (canonical events) plus malformed rows as a CSV with a header and ISO ``ts``.

    Each malformed row is a copy of a random valid row with one defect from :data:`DEFECTS` (cycled, so
    every kind appears once there are at least 5). Rows are shuffled deterministically for ``seed``.
    Returns ``(valid_rows, malformed_rows)``.
    """
    rng = np.random.default_rng([seed, 2])
    columns = list(CANONICAL_COLUMNS)
    data = valid.select(columns).to_pydict()
    good = [[_fmt(data[c][i]) for c in columns] for i in range(valid.num_rows)]
    n_bad = dirty_rows_count(len(good), share) if good else 0
    sources = rng.integers(0, len(good), n_bad) if good else np.zeros(0, np.int64)
    bad = [_corrupt(good[j], DEFECTS[k % len(DEFECTS)]) for k, j in enumerate(sources)]
    rows = good + bad
    order = rng.permutation(len(rows))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows[i] for i in order)
    return len(good), n_bad
