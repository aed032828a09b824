"""Score rows and metadata as compact JSON text: what the score store writes and serves.

Each user's record is one pre-serialised compact JSON object (the chunk's row, ``user_id`` included, keys in
column order, NaN/inf as ``null``), so a lookup is one indexed read and no re-encoding.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from serving.store.errors import StoreInputError

__all__ = ["ProgressFn", "dumps_compact", "encode_chunk", "iter_encoded", "normalize_user_ids"]

ProgressFn = Callable[[int, "int | None"], None]
"""Progress callback ``(rows_done, rows_total_or_None)``."""


# --------------------------------------------------------------------------------------------- user ids
def normalize_user_ids(user_ids: Sequence[str]) -> list[str]:
    """Lookup ids as a list of strings (ints are accepted and turned into their decimal string)."""
    if isinstance(user_ids, (str, bytes)):
        raise StoreInputError("user_ids must be a sequence of ids, not a single string; wrap it in a list")
    try:
        return [u if type(u) is str else _user_id_str(u) for u in user_ids]
    except TypeError as exc:
        raise StoreInputError(f"user_ids must be a sequence of strings: {exc}") from None


def _user_id_str(u: object) -> str:
    if isinstance(u, (int, np.integer)) and not isinstance(u, bool):
        return str(int(u))
    if isinstance(u, str):
        return str(u)
    raise TypeError(f"got {type(u).__name__} {u!r}")


# --------------------------------------------------------------------------------------------- JSON
def _json_default(o: Any) -> Any:
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (datetime, date)):
        return o.isoformat()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _finite(o: Any) -> Any:
    """Replace NaN/inf floats by None, recursively (JSON has no NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, Mapping):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default)


def dumps_compact(value: Any) -> str:
    """Compact JSON of ``value`` (numpy scalars, datetimes and paths allowed; NaN/inf become null)."""
    try:
        return _ENCODER.encode(value)
    except ValueError:  # NaN or inf somewhere
        return _ENCODER.encode(_finite(json.loads(json.dumps(value, default=_json_default))))


# --------------------------------------------------------------------------------------------- payloads
def _L(text: str) -> pa.Scalar:
    """A large_string Arrow scalar (all payload pieces are large_string so chunks may exceed 2 GB)."""
    return pa.scalar(text, pa.large_string())


def _py_fragments(values: pd.Series) -> pa.Array:
    out = []
    for v in values.tolist():
        if v is None or (not isinstance(v, (list, tuple, dict, np.ndarray)) and pd.isna(v)):
            out.append("null")
        else:
            out.append(dumps_compact(v))
    return pa.array(out, pa.string())


def _quoted(arr: pa.Array) -> pa.Array | None:
    """'"s"' for strings that need no JSON escaping; None when some value needs escaping."""
    arr = pc.cast(arr, pa.large_string())
    if _needs_escape(arr):
        return None
    return pc.binary_join_element_wise(_L('"'), arr, _L('"'), _L(""))


def _needs_escape(arr: pa.Array) -> bool:
    """True when a string array's bytes hold a quote, a backslash or a control character.

    Scans the whole data buffer at once (conservative for sliced arrays: may say True, never a false False).
    """
    data = arr.buffers()[2]
    if data is None or data.size == 0:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    return bool((raw < 0x20).any() or (raw == 0x22).any() or (raw == 0x5C).any())


def _fragments(values: pd.Series) -> pa.Array:
    """One JSON value (text) per row for one column, never null (missing values are ``null``)."""
    try:
        arr = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return _py_fragments(values)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    t = arr.type
    if pa.types.is_floating(t):
        text = pc.cast(pc.cast(arr, pa.float64()), pa.string())  # shortest round-trip form
        text = pc.cast(text, pa.large_string())
        nums = arr.to_numpy(zero_copy_only=False)
        with np.errstate(invalid="ignore"):
            if np.any(nums == np.floor(nums)):  # integral values print as "2": make them "2.0"
                integral = pc.match_substring_regex(text, r"^-?\d+$")
                text = pc.if_else(integral, pc.binary_join_element_wise(text, _L(".0"), _L("")), text)
        out = pc.if_else(pc.is_finite(arr), text, "null")
    elif pa.types.is_integer(t):
        out = pc.cast(arr, pa.string())
    elif pa.types.is_boolean(t):
        out = pc.if_else(arr, "true", "false")
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        out = _quoted(arr)
        if out is None:
            return _py_fragments(values)
    elif (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
        pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type) or pa.types.is_null(t.value_type)
    ):  # list<null>: every list empty (no reasons in this chunk)
        flat = pc.list_flatten(arr)
        if flat.null_count or (len(flat) and _quoted(flat) is None):  # an empty array's padding is no text
            return _py_fragments(values)
        inner = pc.binary_join(pc.cast(arr, pa.large_list(pa.large_string())), _L('","'))
        joined = pc.binary_join_element_wise(_L('["'), inner, _L('"]'), _L(""))
        out = pc.if_else(pc.equal(pc.list_value_length(arr), 0), "[]", joined)
    elif pa.types.is_null(t):
        out = pa.array(["null"] * len(arr), pa.string())
    else:
        return _py_fragments(values)
    return pc.fill_null(pc.cast(out, pa.large_string()), _L("null"))


def _user_id_array(uid: pd.Series) -> pa.Array:
    """The user_id column as a non-null Arrow string array (integers are written in decimal)."""
    if uid.isna().any():
        raise StoreInputError("chunk has missing user_id values")
    try:
        arr = pa.array(uid, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        try:
            arr = pa.array([u if type(u) is str else _user_id_str(u) for u in uid.tolist()], pa.string())
        except TypeError as exc:
            raise StoreInputError(f"user_id values must be strings or integers: {exc}") from None
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_integer(arr.type)):
        raise StoreInputError(f"user_id values must be strings or integers, got {arr.type}")
    arr = pc.cast(arr, pa.string())
    if pc.any(pc.equal(pc.utf8_length(arr), 0)).as_py():
        raise StoreInputError("chunk has empty user_id values")
    return arr


SMALL_CHUNK_ROWS = 16
"""Chunks of up to this many rows are encoded value by value in Python (:func:`_encode_small`), to the same text
as the Arrow path: Arrow's compute calls cost tens of microseconds per column whatever the size, a few
milliseconds for one row of thirty columns, where formatting the values takes tens of microseconds."""


def encode_chunk(chunk: pd.DataFrame | Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(user ids, compact JSON payloads) for one chunk of score rows, in row order.

    The payload of a row is a JSON object with every column of the chunk in column order (``user_id`` as
    a string). Floats are written in shortest round-trip form (integral floats keep a ``.0``), NaN/inf
    and missing values as ``null``, lists of strings as arrays, other objects via ``json``.
    Vectorised with Arrow: about 2 s of CPU per million rows of ten columns; up to :data:`SMALL_CHUNK_ROWS` rows
    are formatted in Python to the same text. ``chunk`` may also be a mapping of column name -> array (shape
    (n,); :data:`features.columns.Columns`, as online rescoring scores), encoded as ``pd.DataFrame(chunk)`` is.
    """
    if isinstance(chunk, Mapping) and not isinstance(chunk, pd.DataFrame):
        if "user_id" not in chunk:
            raise StoreInputError(f"chunk has no 'user_id' column (columns: {list(chunk)})")
        columns = {str(name): np.asarray(values) for name, values in chunk.items()}
        if len(columns) != len(chunk):
            raise StoreInputError(f"chunk has duplicate column names: {[str(c) for c in chunk]}")
        if len({len(v) for v in columns.values()}) != 1:
            raise StoreInputError("chunk columns have different lengths")
        if len(columns["user_id"]) <= SMALL_CHUNK_ROWS:
            small = _encode_small(list(columns), list(columns.values()), None)
            if small is not None:
                return small
        chunk = pd.DataFrame(columns)
    if not isinstance(chunk, pd.DataFrame):
        raise StoreInputError(f"each chunk must be a pandas DataFrame, got {type(chunk).__name__}")
    if "user_id" not in chunk.columns:
        raise StoreInputError(f"chunk has no 'user_id' column (columns: {list(chunk.columns)})")
    names = [str(c) for c in chunk.columns]
    if len(set(names)) != len(names):
        raise StoreInputError(f"chunk has duplicate column names: {names}")
    if len(chunk) == 0:
        return [], []
    if len(chunk) <= SMALL_CHUNK_ROWS:
        series = [chunk.iloc[:, i] for i in range(len(names))]
        small = _encode_small(names, [_plain_array(s) for s in series], series)
        if small is not None:
            return small
    uid_arr = _user_id_array(chunk["user_id"])
    parts: list[Any] = []
    for i, name in enumerate(names):
        parts.append(("{" if i == 0 else ",") + dumps_compact(name) + ":")
        if name == "user_id":
            frag = _quoted(uid_arr)
            if frag is None:
                frag = pa.array([dumps_compact(u) for u in uid_arr.to_pylist()], pa.string())
        else:
            frag = _fragments(chunk.iloc[:, i])
        parts.append(frag)
    parts.append("}")
    large = [_L(x) if isinstance(x, str) else pc.cast(x, pa.large_string()) for x in parts]
    payloads = pc.binary_join_element_wise(*large, _L(""))
    return uid_arr.to_pylist(), payloads.to_pylist()


def _plain_array(series: pd.Series) -> np.ndarray | None:
    """The values of a numpy-backed or text column as a numpy array (text as objects); None for other extension
    dtypes (nullable integers, dates, categories: the Arrow path types them)."""
    if isinstance(series.dtype, (np.dtype, pd.StringDtype)):
        return series.to_numpy()
    return None


def _encode_small(
    names: list[str], arrays: list[np.ndarray | None], series: list[pd.Series] | None
) -> tuple[list[str], list[str]] | None:
    """:func:`encode_chunk` of a few rows, value by value: ``arrays`` are the columns (shape (n,), n >= 1) in the
    order of ``names``; ``series`` the same columns as the chunk's Series (or None: the arrays are the columns). A
    column of a kind this does not format (dates, numbers in an object column, ... or None in ``arrays``) goes
    through the Arrow path; None when the user ids are not plain non-empty strings (the Arrow path then says what
    is wrong)."""
    uid = arrays[names.index("user_id")]
    if uid is None:
        return None
    ids = uid.tolist()
    if not all(type(u) is str and u for u in ids):
        return None
    rows: list[list[str]] = [[] for _ in ids]
    for i, (name, key, values) in enumerate(zip(names, _keys(tuple(names)), arrays, strict=True)):
        if name == "user_id":
            texts = [_basestring(u) for u in ids]
        else:
            texts = None if values is None else _small_texts(values)
            if texts is None:
                column = series[i] if series is not None else pd.Series(values)
                texts = _fragments(column).to_pylist()
        for row, text in zip(rows, texts, strict=True):
            row.append(key)
            row.append(text)
    return ids, ["".join(row) + "}" for row in rows]


def _small_texts(values: np.ndarray) -> list[str] | None:
    """The JSON text of every value of one column (shape (n,)) as the Arrow path writes it, or None for a kind
    left to it: floats as :func:`_float_text`, integers in decimal, booleans; in an object array nulls (None,
    NaN, NA) as ``null`` with text, or lists of strings, via :func:`dumps_compact` (what the Arrow path writes for
    those, escapes included)."""
    kind = values.dtype.kind
    if kind == "f":
        return [_float_text(v) for v in values.tolist()]
    if kind in "iu":
        return [str(v) for v in values.tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in values.tolist()]
    if kind != "O":
        return None
    out = []
    for v in values.tolist():
        if type(v) is str:
            out.append(_basestring(v))
        elif v is None or v is pd.NA or v is pd.NaT or (type(v) is float and v != v):
            out.append("null")
        elif type(v) in (list, tuple) and all(type(t) is str for t in v):
            out.append("[" + ",".join(map(_basestring, v)) + "]")
        else:
            return None
    return out


_basestring = json.encoder.encode_basestring  # what the compact encoder writes for a str (ensure_ascii=False)


@lru_cache(maxsize=64)
def _keys(names: tuple[str, ...]) -> list[str]:
    """The text before each column's value in a payload: ``{"name":`` for the first, ``,"name":`` after."""
    return [("{" if i == 0 else ",") + dumps_compact(name) + ":" for i, name in enumerate(names)]


def _float_text(v: float) -> str:
    """One float as the Arrow path writes it (see :func:`_fragments`): the shortest round-trip digits (Python's
    ``repr`` finds the same ones) laid out as Arrow does, positional for decimal exponents -6 to 9 and ``d.ddde+x``
    outside them; an integral positional value gets ``.0``; NaN and infinities are ``null``."""
    if 1e-4 <= abs(v) < 1e10 or v == 0:  # positional in both layouts: repr's text, integral ones with ".0"
        return repr(v)
    if not math.isfinite(v):
        return "null"
    mantissa, _, exp = repr(v).partition("e")
    sign = ""
    if mantissa[0] == "-":
        sign, mantissa = "-", mantissa[1:]
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    point = len(whole) - (len(whole) + len(frac) - len(digits)) + (int(exp) if exp else 0)  # value = 0.digits e point
    digits = digits.rstrip("0")
    if not digits:
        return sign + "0.0"
    e = point - 1
    if -6 <= e < 10:
        if point <= 0:
            return sign + "0." + "0" * -point + digits
        if point >= len(digits):
            return sign + digits + "0" * (point - len(digits)) + ".0"
        return sign + digits[:point] + "." + digits[point:]
    tail = "." + digits[1:] if len(digits) > 1 else ""
    return f"{sign}{digits[0]}{tail}e{'+' if e >= 0 else '-'}{abs(e)}"


def iter_encoded(
    chunks: Iterable[pd.DataFrame], total: int | None, progress: ProgressFn | None, *, ahead: int = 2
) -> Iterator[tuple[list[str], list[str]]]:
    """Encode chunks one by one, reporting ``progress(rows_done, total)`` after each one is yielded.

    Reading and encoding run in a background thread up to ``ahead`` chunks ahead of the consumer, so a backend's
    writes of one chunk overlap the reading and encoding of the next (both release the interpreter lock for much
    of their work: Arrow kernels, SQLite's B-tree). ``ahead=0`` does it all in the caller's thread. An exception
    of ``chunks`` or of the encoding comes out of this iterator unchanged; closing it early stops the thread.
    """
    encoded = (encode_chunk(chunk) for chunk in chunks)
    done = 0
    for ids, payloads in (read_ahead(encoded, ahead) if ahead > 0 else encoded):
        if not ids:
            continue
        yield ids, payloads
        done += len(ids)
        if progress is not None:
            progress(done, total)


_END = object()


def read_ahead(items: Iterable[Any], depth: int) -> Iterator[Any]:
    """The items of ``items``, produced by a background thread up to ``depth`` items ahead (``depth`` >= 1).

    The producer's exception (any, ``KeyboardInterrupt`` included) is raised here unchanged, after the items
    before it; when the consumer stops early (``close``, an exception, garbage collection) the producer stops at
    its next item and its thread ends.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((_END, exc))
            return
        put((_END, None))

    worker = threading.Thread(target=produce, name="read-ahead", daemon=True)
    worker.start()
    try:
        while True:
            item, error = slots.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join(timeout=5.0)
