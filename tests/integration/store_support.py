"""Helpers of the score-store tests: a backend in a private namespace, and score chunks that mark their batch."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from serving.store.redis import RedisScoreStore
from serving.store.sqlite import SQLiteScoreStore


class Backend:
    """Builds stores of one kind in a private namespace and counts what is physically stored."""

    def __init__(self, kind: str, tmp_path: Path, redis_url: str | None) -> None:
        self.kind, self.tmp_path, self.redis_url = kind, tmp_path, redis_url
        self.db = tmp_path / "scores.db"
        self.prefix = f"test-{uuid.uuid4().hex[:8]}"
        self.opened: list[Any] = []

    def make(self, **kwargs: Any) -> Any:
        if self.kind == "sqlite":
            store: Any = SQLiteScoreStore(self.db, commit_rows=kwargs.pop("commit_rows", 50), **kwargs)
        else:
            batch_rows = kwargs.pop("batch_rows", 50)
            store = RedisScoreStore(self.redis_url, prefix=self.prefix, batch_rows=batch_rows, **kwargs)
        self.opened.append(store)
        return store

    def stored(self) -> tuple[int, int]:
        """(snapshot data tables/hashes, snapshot records) physically present, finished or not."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.db) as conn:
                tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'scores_%'").fetchone()[0]
                records = conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
            return tables, records
        import redis

        client = redis.Redis.from_url(self.redis_url)
        try:
            return len(client.keys(f"{self.prefix}:data:*")), client.hlen(f"{self.prefix}:snapshots")
        finally:
            client.close()

    def close(self) -> None:
        for store in self.opened:
            store.close()
        if self.kind == "redis":
            import redis

            client = redis.Redis.from_url(self.redis_url)
            try:
                keys = client.keys(f"{self.prefix}:*")
                if keys:
                    client.delete(*keys)
            except redis.RedisError:
                pass
            finally:
                client.close()


def meta_for(batch: str, **extra: Any) -> dict[str, Any]:
    return {"created_at": "2026-11-24T01:02:03+00:00", "as_of": "2026-11-23", "batch": batch, **extra}


def frames(batch: str, n_chunks: int = 3, per_chunk: int = 20, delay: float = 0.0) -> Iterator[pd.DataFrame]:
    """Chunks of users u<chunk>_<i>; every payload carries the ``batch`` marker of its snapshot."""
    for c in range(n_chunks):
        if delay:
            time.sleep(delay)
        ids = [f"u{c}_{i}" for i in range(per_chunk)]
        yield pd.DataFrame(
            {
                "user_id": ids,
                "p_buy": [0.1 + 0.8 * i / per_chunk for i in range(per_chunk)],
                "rank": list(range(per_chunk)),
                "reasons": [["cart_24h", f"views_{i}"] for i in range(per_chunk)],
                "batch": batch,
            }
        )
