"""Score rows as JSON text: the few-row path (values formatted in Python) writes exactly what the Arrow path does.

Online rescoring encodes one user's record per lookup; :func:`serving.store.encode.encode_chunk` formats up to
``SMALL_CHUNK_ROWS`` rows value by value instead of through Arrow's per-column kernels. These tests hold the two
paths to the same bytes on floats of every magnitude, text needing escapes, lists, nulls and odd columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from serving.store import encode
from serving.store.encode import _float_text, _fragments, encode_chunk


def _arrow_path(frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    with monkeypatch.context() as m:
        m.setattr(encode, "SMALL_CHUNK_ROWS", 0)
        return encode_chunk(frame)


def test_floats_are_written_as_arrow_writes_them() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([
        rng.random(20_000), rng.random(20_000) * 1e6, 10 ** rng.uniform(-30, 30, 40_000),
        -(10 ** rng.uniform(-30, 30, 20_000)), np.round(rng.random(5_000) * 1000, 2),
        np.floor(rng.random(5_000) * 1e12),
        rng.integers(0, 2**63, 20_000).view(np.float64),
        [0.0, -0.0, 1.0, -1.0, 1e-6, 1e-7, 9.999999e-7, 999_999_999.9, 1e9, 9_999_999_999.0, 1e10, 1e16, 1e21, 5e-324,
         1.7976931348623157e308, 1 / 3, np.nan, np.inf, -np.inf],
    ])
    arrow = _fragments(pd.Series(values)).to_pylist()
    assert [_float_text(v) for v in values.tolist()] == arrow


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    words = ["a", "plain", 'quo"te', "back\\slash", "tab\there", "é漢字", "line\nbreak", ""]
    return pd.DataFrame({
        "user_id": [f"u{i}-{words[i % 6]}" for i in range(n)],
        "p": rng.random(n) * 10.0 ** rng.integers(-8, 12, n),
        "with_nan": np.where(rng.random(n) < 0.4, np.nan, rng.random(n)),
        "whole": np.floor(rng.random(n) * 100),
        "count": rng.integers(-5, 5, n),
        "flag": rng.random(n) < 0.5,
        "label": pd.array([None if i % 4 == 0 else words[i % len(words)] for i in range(n)], dtype="str"),
        "text": pd.Series([None if i % 5 == 0 else words[(i * 3) % len(words)] for i in range(n)], dtype=object),
        "reasons": pd.Series([() if i % 3 == 0 else [words[i % 2], words[(i + 2) % len(words)]] for i in range(n)],
                             dtype=object),
        "maybe_list": pd.Series([None if i % 2 else ["x"] for i in range(n)], dtype=object),
        "numbers_as_objects": pd.Series([None if i % 3 == 0 else float(i) / 3 for i in range(n)], dtype=object),
        "nullable_int": pd.array([None if i % 3 == 0 else i for i in range(n)], dtype="Int64"),
        "stamp": pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC"),
        "all_none": pd.Series([None] * n, dtype=object),
    })


@pytest.mark.parametrize("n", [1, 2, 7, 16])
def test_a_few_rows_encode_to_the_arrow_paths_bytes(n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _frame(np.random.default_rng(n), n)
    arrow = _arrow_path(frame, monkeypatch)
    assert encode_chunk(frame) == arrow
    columns = {name: frame[name].to_numpy() for name in frame.columns if name not in ("stamp", "nullable_int")}
    assert encode_chunk(columns) == _arrow_path(frame[list(columns)], monkeypatch)


def test_columns_are_checked_like_a_frame() -> None:
    from serving.store.errors import StoreInputError

    with pytest.raises(StoreInputError, match="no 'user_id' column"):
        encode_chunk({"p": np.zeros(1)})
    with pytest.raises(StoreInputError, match="missing user_id"):
        encode_chunk({"user_id": np.array([None], dtype=object), "p": np.zeros(1)})
    with pytest.raises(StoreInputError, match="empty user_id"):
        encode_chunk(pd.DataFrame({"user_id": [""], "p": [1.0]}))
    assert encode_chunk({"user_id": np.array([7]), "p": np.array([2.0])}) == (["7"], ['{"user_id":"7","p":2.0}'])


def test_read_ahead_yields_every_item_in_order_and_raises_the_producers_error_unchanged():
    from serving.store.encode import read_ahead

    for depth in (1, 3):
        assert list(read_ahead(iter(range(50)), depth)) == list(range(50))

    class Broken(Exception):
        pass

    def source():
        yield from range(3)
        raise Broken("chunk 3 failed")

    got = []
    with pytest.raises(Broken, match="chunk 3 failed"):
        for item in read_ahead(source(), 2):
            got.append(item)
    assert got == [0, 1, 2]

    def interrupted():
        yield 1
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(read_ahead(interrupted(), 1))


def test_read_ahead_stops_its_thread_when_the_consumer_stops_early():
    import threading

    from serving.store.encode import read_ahead

    produced = []

    def source():
        for i in range(1000):
            produced.append(i)
            yield i

    items = read_ahead(source(), 2)
    assert [next(items), next(items)] == [0, 1]
    items.close()
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
    assert len(produced) <= 2 + 2 + 1  # consumed, queued, one in hand


def test_iter_encoded_overlapped_or_not_gives_the_same_payloads_and_progress():
    from serving.store.encode import iter_encoded

    chunks = [pd.DataFrame({"user_id": [f"u{i}-{j}" for j in range(4)], "p": [0.1 * j for j in range(4)]})
              for i in range(5)]
    seen: dict[int, list] = {0: [], 2: []}
    out = {ahead: list(iter_encoded(iter(chunks), 20, lambda d, t, a=ahead: seen[a].append((d, t)), ahead=ahead))
           for ahead in (0, 2)}
    assert out[0] == out[2] and len(out[0]) == 5
    assert seen[0] == seen[2] == [(4 * (i + 1), 20) for i in range(5)]
