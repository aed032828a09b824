"""An exclusive, crash-safe lock so two training runs never interleave.

The lock is an ``flock`` on a file: the kernel releases it when the holding process dies, even by ``kill -9``, so a
crashed run never leaves a stale lock behind. The file records the holder's pid and start time for the message.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusyError(RuntimeError):
    """Another run holds the lock."""

    exit_code = 4  # CLI exit code: lock busy


@contextmanager
def exclusive_lock(path: Path, started_at: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the duration of the block; raise :class:`LockBusyError` at once when
    another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            raise LockBusyError(f"another training run holds {path} ({holder}); wait for it to finish") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started_at": started_at}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
