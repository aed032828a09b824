"""A :class:`FeatureState` on disk: one folder, written whole in a temporary folder and renamed into place.

Layout: ``meta.json`` (spec, origin, night, source flags, and whatever the caller records under ``extra``),
``arrays/<name>.npy`` (every numeric array; read back memory-mapped, copy on write, or read-only for the arrays a
night replaces instead of changing: sorted keys, dictionaries, row order), ``user_ids.arrow`` (the users' ids in
code order) and ``rollups/day-<d>/`` (the days still inside a window). What is unchanged since the last state (a
read-only array still the one read, a day's roll-up) is linked to its file, not written again. A state that is
missing, damaged or of another spec raises :class:`StateError`; the caller then builds from all events.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from features.incremental.state import Dictionary, FeatureState
from features.spec.definition import FeatureSpec

FORMAT = 2
_READS = (1, 2)
"""Formats read: 1 has no fresh runs (read as empty)."""
_DICTS = ("users", "items", "categories", "views_dict")


class StateError(ValueError):
    """The kept feature state cannot be used (missing, damaged, another spec or format)."""


def save_state(state: FeatureState, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write ``state`` to the folder ``path``, replacing what is there only once the new one is complete. The state
    is compacted first (:meth:`FeatureState.compact`)."""
    path = Path(path)
    state.compact()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    (tmp / "rollups").mkdir(parents=True)
    n = state.n_users  # per-user arrays are saved with spare rows (read back as their first n rows)
    arrays = {f"p_{k}": state.padded(("p", k), v, n) for k, v in state.per_user.items()}
    arrays.update({f"w_{g}_{w}": state.padded(("w", (g, w)), v, n) for (g, w), v in state.win.items()})
    arrays.update({f"g_{k}": v for k, v in state.gaps.items()})
    arrays.update({f"gf_{k}": v for k, v in state.fresh_gaps.items()})
    arrays.update({f"gs_{k}": v for k, v in state.gap_starts.items()})
    arrays.update({f"leave_{k}": at for k, (_, at) in state.leaving.items()})
    for prefix, runs in (("pair", state.pairs), ("fresh", state.fresh)):
        for name, (keys, values) in runs.items():
            arrays[f"{prefix}_{name}_keys"] = keys
            arrays.update({f"{prefix}_{name}_{i}": v for i, v in enumerate(values)})
    arrays.update({f"d_{name}": getattr(state, name).values for name in _DICTS}, order=state.order)
    (tmp / "arrays").mkdir()
    for name, values in arrays.items():
        kept = state.kept_arrays.get(name)
        target = tmp / "arrays" / f"{name}.npy"
        if kept is not None and kept[0] is values and not values.flags.writeable:  # as read: cannot have changed
            try:
                os.link(kept[1], target)
                continue
            except OSError:  # its file is gone, another file system, or no links: written from memory
                pass
        np.save(target, values)
    table = pa.table({"user_id": pa.array(state.user_ids.tolist(), pa.string())})
    with pa.OSFile(str(tmp / "user_ids.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    for day, rollup in state.rollups.items():
        target = tmp / "rollups" / f"day-{day}"
        if isinstance(rollup, Path):  # unchanged since it was kept: linked, not written again
            target.mkdir()
            for file in rollup.iterdir():
                _link(file, target / file.name)
        else:
            rollup.save(target)
    meta = {"format": FORMAT, "spec": state.spec.to_dict(), "origin_us": state.origin_us, "night": state.night,
            "has_item": state.has_item, "has_amount": state.has_amount, "users": state.n_users,
            "leaving_nights": {k: night for k, (night, _) in state.leaving.items()},
            "extra": extra or {}}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not supported
        shutil.copyfile(source, target)


def read_meta(path: Path) -> dict[str, Any]:
    """The ``meta.json`` of a kept state; :class:`StateError` when there is none or it is unreadable."""
    try:
        meta = json.loads((Path(path) / "meta.json").read_text())
    except FileNotFoundError as exc:
        raise StateError(f"no kept feature state in {path}") from exc
    except (OSError, ValueError) as exc:
        raise StateError(f"the kept feature state in {path} is damaged: {exc}") from exc
    if meta.get("format") not in _READS:
        raise StateError(f"the kept feature state in {path} has format {meta.get('format')}, not {FORMAT}")
    return meta


def load_state(path: Path, spec: FeatureSpec | None = None) -> FeatureState:
    """The state kept in ``path``; with ``spec``, :class:`StateError` unless it was kept for that spec."""
    path = Path(path)
    meta = read_meta(path)
    kept = FeatureSpec.from_dict(meta["spec"])
    if spec is not None and kept.fingerprint() != spec.fingerprint():
        raise StateError(f"the kept feature state in {path} is of another feature spec")
    state = FeatureState(kept, meta["origin_us"], has_item=meta["has_item"], has_amount=meta["has_amount"])
    state.night = int(meta["night"])
    try:
        files = sorted((path / "arrays").glob("*.npy"))
        _read_ahead(files)
        arrays = {file.stem: np.load(file, mmap_mode="r" if _replaced(file.stem) else "c") for file in files}
        state.kept_arrays = {file.stem: (arrays[file.stem], file) for file in files if _replaced(file.stem)}
        ids = pa.ipc.open_file(pa.memory_map(str(path / "user_ids.arrow"))).read_all()
        state.user_ids = np.asarray(ids.column("user_id").to_pylist(), dtype=object)
        n = int(meta["users"])
        state.bases = {("p", k): arrays[f"p_{k}"] for k in state.per_user}
        state.bases.update({("w", key): arrays[f"w_{key[0]}_{key[1]}"] for key in state.win})
        state.per_user = {key[1]: base[:n] for key, base in state.bases.items() if key[0] == "p"}
        state.win = {key[1]: base[:n] for key, base in state.bases.items() if key[0] == "w"}
        if any(len(base) < n for base in state.bases.values()):
            raise ValueError(f"per-user arrays shorter than its {n} users")
        state.gaps = {k: arrays[f"g_{k}"] for k in state.gaps}
        state.pairs = _runs(arrays, "pair", state.pairs)
        if meta["format"] >= 2:
            state.fresh_gaps = {k: arrays[f"gf_{k}"] for k in state.fresh_gaps}
            state.fresh = _runs(arrays, "fresh", state.fresh)
            state.gap_starts = {k: arrays[f"gs_{k}"] for k in state.gaps if f"gs_{k}" in arrays}
            state.leaving = {k: (int(night), arrays[f"leave_{k}"])
                             for k, night in meta.get("leaving_nights", {}).items()}
        for name in _DICTS:
            setattr(state, name, Dictionary(arrays[f"d_{name}"]))
        state.order = arrays["order"]
        for folder in (path / "rollups").glob("day-*"):
            state.rollups[int(folder.name[len("day-"):])] = folder  # days before the origin are negative
    except (OSError, KeyError, ValueError, pa.ArrowInvalid) as exc:
        raise StateError(f"the kept feature state in {path} is damaged: {exc}") from exc
    if len(state.user_ids) != meta["users"] or len(state.users.values) != meta["users"]:
        raise StateError(f"the kept feature state in {path} is damaged: {meta['users']} users expected")
    return state


def _replaced(name: str) -> bool:
    """Whether the array ``name`` is only ever replaced by a night, never changed in place (read read-only)."""
    return name.endswith("_keys") or name.startswith(("g_", "gf_", "gs_", "leave_", "d_")) or name == "order"


def _runs(arrays: dict[str, np.ndarray], prefix: str, like: dict) -> dict:
    """The pair runs ``<prefix>_<name>_keys`` and ``_<i>`` of ``arrays``, for the names (and value counts) of
    ``like``."""
    return {name: (arrays[f"{prefix}_{name}_keys"], tuple(arrays[f"{prefix}_{name}_{i}"] for i in range(len(values))))
            for name, (_, values) in like.items()}


def _read_ahead(files: list[Path]) -> None:
    """Ask the kernel to start reading ``files`` into the page cache now (asynchronously, in large sequential reads),
    so that a state read from a cold cache is not read page by page as the night first touches it."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:  # not on every platform
        return
    for file in files:
        try:
            fd = os.open(file, os.O_RDONLY)
        except OSError:
            continue
        try:
            advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)
