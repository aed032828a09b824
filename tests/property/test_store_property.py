"""The vectorised payload encoder writes strict JSON that decodes to exactly the row, for any score values."""

from __future__ import annotations

import json
import math

import hypothesis.strategies as st
import pandas as pd
from hypothesis import given, settings

from serving.store.base import encode_chunk

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, -0.0, 1.0, 1e16, 5e-324, 0.1])
texts = st.text(max_size=12)
rows = st.lists(
    st.tuples(
        floats,
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        texts,
        st.none() | texts,
        st.lists(texts, max_size=3),
        st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


def expected_float(x: float) -> float | None:
    return x if math.isfinite(x) else None


@settings(max_examples=150, deadline=None, derandomize=True)
@given(rows=rows)
def test_payload_is_the_row_as_json(rows: list[tuple]) -> None:
    chunk = pd.DataFrame(
        {
            "user_id": [f"user-{i}" for i in range(len(rows))],
            "score": [r[0] for r in rows],
            "count": pd.array([r[1] for r in rows], dtype="int64"),
            "label": [r[2] for r in rows],
            "maybe": pd.Series([r[3] for r in rows], dtype=object),
            "reasons": [r[4] for r in rows],
            "flag": [r[5] for r in rows],
        }
    )
    ids, payloads = encode_chunk(chunk)
    assert ids == list(chunk["user_id"])
    for row, uid, payload in zip(rows, ids, payloads, strict=False):
        decoded = json.loads(payload)  # strict JSON: no NaN, every string escaped
        assert list(decoded) == ["user_id", "score", "count", "label", "maybe", "reasons", "flag"]
        assert decoded == {
            "user_id": uid,
            "score": expected_float(row[0]),
            "count": row[1],
            "label": row[2],
            "maybe": row[3],
            "reasons": row[4],
            "flag": row[5],
        }
        if math.isfinite(row[0]):
            assert isinstance(decoded["score"], float)  # 1.0 stays a float, not the integer 1
            assert math.copysign(1.0, decoded["score"]) == math.copysign(1.0, row[0])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(ids=st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=20, unique=True))
def test_integer_user_ids_become_their_decimal_string(ids: list[int]) -> None:
    got, payloads = encode_chunk(pd.DataFrame({"user_id": ids}))
    assert got == [str(i) for i in ids]
    assert [json.loads(p) for p in payloads] == [{"user_id": str(i)} for i in ids]
