"""Deterministic user samples for training: the same users at every cutoff, drawn before the feature builds.

Training stacks many cutoffs, and each cutoff is a full feature build. Quality moves little beyond a few hundred
thousand users (see ``benchmarks/README.md``), so a large shop trains on a sample of its users: the events are
filtered to the sampled users once, and every feature build, label and segmenter fit then reads only those.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import ibis
import numpy as np
import pandas as pd


def pick_users(user_ids: pd.Series, max_users: int, seed: int = 0) -> pd.Series:
    """The ``max_users`` ids (strings) with the smallest seeded hash, sorted; all of them when there are fewer.

    The choice depends only on the ids and the seed (not on their order or on the data's other columns), and a
    larger ``max_users`` keeps every user of a smaller one.
    """
    if max_users < 1:
        raise ValueError(f"max_users must be >= 1, got {max_users}")
    ids = pd.Series(pd.unique(user_ids.astype("str")), dtype="str")
    if len(ids) <= max_users:
        return ids.sort_values(ignore_index=True)
    key = hashlib.blake2b(str(seed).encode(), digest_size=16).hexdigest()[:16]
    hashes = pd.util.hash_array(ids.to_numpy(dtype=object), hash_key=key, categorize=False)
    keep = np.argpartition(hashes, max_users - 1)[:max_users]
    return ids.iloc[keep].sort_values(ignore_index=True)


@contextmanager
def sampled_events(
    events: ibis.Table, max_users: int | None, seed: int, con: ibis.BaseBackend
) -> Iterator[tuple[ibis.Table, int]]:
    """``events`` restricted to :func:`pick_users` of its users, materialised once on ``con`` for the block.

    Yields ``(table, n_users)`` where ``n_users`` is the number of distinct users in ``events``; when it is at
    most ``max_users`` (or ``max_users`` is None) the input table is yielded unchanged. On DuckDB the sample is a
    temporary table, scanned by every feature build of the block instead of the source files, and dropped at
    the end; other backends get the filtered expression.
    """
    users = con.to_pandas(events.select("user_id").distinct())["user_id"]
    if max_users is None or len(users) <= max_users:
        yield events, len(users)
        return
    picked = ibis.memtable(pd.DataFrame({"_sample_uid": pick_users(users, max_users, seed)}))
    sampled = events.semi_join(picked, events.user_id == picked._sample_uid)
    if getattr(con, "name", None) != "duckdb":
        yield sampled, len(users)
        return
    name = f"_train_sample_{uuid.uuid4().hex}"
    view = f"{name}_view"
    con.create_view(view, sampled)
    try:
        con.raw_sql(f'CREATE TEMP TABLE "{name}" AS SELECT * FROM "{view}"')
    finally:
        con.raw_sql(f'DROP VIEW IF EXISTS "{view}"')
    try:
        yield con.table(name), len(users)
    finally:
        con.raw_sql(f'DROP TABLE IF EXISTS "{name}"')
