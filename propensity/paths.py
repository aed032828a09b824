"""Guards on output paths, so a command cannot overwrite the score store or the model registry by accident."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from propensity.config import Settings


class UnsafeOutputError(ValueError):
    """An output path points at data the service depends on."""

    exit_code = 2  # CLI exit code: a bad option (choose another --out)


def protected_paths(cfg: Settings) -> list[tuple[Path, str]]:
    """Files and folders no command may write its outputs into: the store, the MLflow database and artifacts, the
    event log."""
    found = [(cfg.store_path, "the score store"), (cfg.artifact_root, "the MLflow artifact store"),
             (cfg.events_log_path, "the event log")]
    if cfg.tracking_uri.startswith("sqlite:///"):
        found.append((Path(cfg.tracking_uri.removeprefix("sqlite:///")), "the MLflow database"))
    databases = [(p, what) for p, what in found if what != "the MLflow artifact store"]
    found += [(p.with_name(p.name + side), f"{what} ({side} file)") for p, what in databases
              for side in ("-wal", "-shm", "-journal")]
    return [(p.resolve(), what) for p, what in found]


def check_output(path: Path, cfg: Settings, *, is_dir: bool = False) -> Path:
    """Return ``path`` when it is safe to write; raise :class:`UnsafeOutputError` naming what it would clobber.

    A file output must not be (or sit inside) a protected location; a folder output must also not contain one.
    """
    target = path.resolve()
    for protected, what in protected_paths(cfg):
        if target == protected or protected in target.parents:
            raise UnsafeOutputError(
                f"refusing to write {path}: it would overwrite {what} ({protected}); choose another --out"
            )
        if is_dir and target in protected.parents:
            raise UnsafeOutputError(
                f"refusing to write into {path}: it holds {what} ({protected}); choose another --out"
            )
    return path


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Write ``path`` through ``write(temp_path)`` beside it, then rename over it: readers (and a failed or killed
    run) see the old file or the new one, never a half-written one. On an error the temp file goes, the old stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
