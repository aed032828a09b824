"""Synthetic shop behavior with ground-truth propensities.

:func:`generate` simulates users of an e-commerce shop moving through the funnel (browse, fav/cart, buy,
buy again, lapse) over ``config.days`` days and writes

- ``out_dir/events/part-NNNNN.parquet``: canonical events (:func:`features.events.schema.arrow_schema`), one part
  per chunk of users, rows sorted by time within a part;
- ``out_dir/truth.parquet``: for every cutoff and every user the TRUE probabilities ``p_buy_true`` (at
  least one purchase in ``(T, T + horizon_days]``) and ``p_lapse_true`` (no event at all in
  ``(T, T + lapse_days]``), given the simulator's hidden state at ``T``; its schema metadata holds the
  generator config (:data:`TRUTH_CONFIG_KEY`), so :func:`simulate_truth` can recompute the truth of the same
  shop at other cutoffs and windows;
- ``out_dir/raw_dirty.csv`` when ``dirty_share > 0``: a small CSV of valid events mixed with malformed
  rows, to demo validation and quarantine.

Users are independent, so they are simulated in chunks of ``chunk_users`` with memory bounded by one
chunk. Output is deterministic for a given config (the chunk size is part of the config: changing it
changes the random streams). The latent process is described in :mod:`features.simulate.process`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.events.schema import arrow_schema
from features.simulate import process as proc
from features.simulate.dirty import write_dirty_csv
from features.simulate.events import EventRows, IdTables, session_rows, to_table, user_ids
from features.simulate.truth import p_buy, p_lapse

Progress = Callable[[int, int | None], None]
ROWS_PER_GROUP = 1_000_000
TRUTH_CONFIG_KEY = b"propensity.generator"
"""Key of the generator config (JSON, :meth:`GeneratorConfig.to_dict`) in the schema metadata of truth.parquet."""
ACTIVE_WINDOW_DAYS = 15
# Rows are sorted by time within a part, so delta-encoded timestamps are about a third of the file size.
PARQUET_OPTIONS: dict = {
    "use_dictionary": ["user_id", "behavior", "item_id", "category_id", "channel"],
    "column_encoding": {"ts": "DELTA_BINARY_PACKED"},
}


class GeneratorConfigError(ValueError):
    """The generator configuration is invalid; the message says which field and why."""

    exit_code = 2  # CLI exit code: a bad option


@dataclass(frozen=True)
class GeneratorConfig:
    """Settings of the simulated shop.

    ``days`` is the simulated period from ``start`` (a UTC midnight); ``truth_cutoffs`` are the times ``T``
    at which true probabilities are computed (each must be ``start`` plus a whole number of days in
    ``[1, days]``); ``None`` means 8 cutoffs 7 days apart, the last ``horizon_days`` before the end.
    ``p_lapse_true`` is exact; ``p_buy_true`` is a Rao-Blackwellised Monte Carlo estimate where the session,
    ad-click and cart coins of the first two days are followed as weighted branches and only the views,
    fav and hidden intent jump are sampled, ``truth_paths`` times per user (at 1 path its standard error
    is about 3% of the spread of ``p_buy_true`` across active users; it falls as ``1 / sqrt(paths)``).
    ``dirty_share`` in ``[0, 0.5]`` is the share of malformed rows in ``raw_dirty.csv`` (0: no file).
    """

    n_users: int = 20_000
    days: int = 120
    start: datetime = datetime(2026, 6, 1, tzinfo=UTC)
    seed: int = 7
    n_categories: int = 40
    items_per_category: int = 250
    horizon_days: int = 3
    lapse_days: int = 30
    truth_cutoffs: tuple[datetime, ...] | None = None
    truth_paths: int = 1
    chunk_users: int = 50_000
    dirty_share: float = 0.0
    dirty_sample_rows: int = 5_000

    def __post_init__(self) -> None:
        positive = ("n_users", "days", "n_categories", "items_per_category", "horizon_days", "lapse_days")
        for name in (*positive, "truth_paths", "chunk_users", "dirty_sample_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GeneratorConfigError(f"GeneratorConfig.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.start, datetime) or self.start.tzinfo is None:
            raise GeneratorConfigError(f"GeneratorConfig.start must be a timezone-aware datetime, got {self.start!r}")
        s = self.start.astimezone(UTC)
        if (s.hour, s.minute, s.second, s.microsecond) != (0, 0, 0, 0):
            raise GeneratorConfigError(f"GeneratorConfig.start must be a UTC midnight, got {self.start.isoformat()}")
        if not 0.0 <= float(self.dirty_share) <= 0.5:
            raise GeneratorConfigError(f"GeneratorConfig.dirty_share must be in [0, 0.5], got {self.dirty_share!r}")
        if self.truth_cutoffs is not None:
            for t in self.truth_cutoffs:
                self.cutoff_day(t)

    @property
    def start_utc(self) -> datetime:
        return self.start.astimezone(UTC)

    @property
    def end(self) -> datetime:
        """End of the simulated period (exclusive): no event at or after it."""
        return self.start_utc + timedelta(days=self.days)

    def cutoff_day(self, t: datetime) -> int:
        """The day index ``d`` with ``t == start + d days``; raises :class:`GeneratorConfigError` otherwise."""
        if not isinstance(t, datetime) or t.tzinfo is None:
            raise GeneratorConfigError(f"truth cutoff {t!r} must be a timezone-aware datetime")
        delta = t.astimezone(UTC) - self.start_utc
        d = delta.days
        if delta != timedelta(days=d) or not 1 <= d <= self.days:
            raise GeneratorConfigError(
                f"truth cutoff {t.isoformat()} must be start plus a whole number of days in [1, {self.days}]"
            )
        return d

    def cutoffs(self) -> tuple[datetime, ...]:
        """The resolved, sorted, distinct truth cutoffs (UTC)."""
        if self.truth_cutoffs is not None:
            days = sorted({self.cutoff_day(t) for t in self.truth_cutoffs})
        else:
            last = max(1, self.days - self.horizon_days)
            days = sorted(d for d in (last - 7 * k for k in range(8)) if d >= 1)
        return tuple(self.start_utc + timedelta(days=d) for d in days)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (datetimes as ISO text, tuples as lists); :meth:`from_dict` inverts it."""
        doc = asdict(self)
        doc["start"] = self.start.isoformat()
        if self.truth_cutoffs is not None:
            doc["truth_cutoffs"] = [t.isoformat() for t in self.truth_cutoffs]
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> GeneratorConfig:
        """The config of :meth:`to_dict` output (validated again)."""
        fields = dict(doc)
        fields["start"] = datetime.fromisoformat(fields["start"])
        if fields.get("truth_cutoffs") is not None:
            fields["truth_cutoffs"] = tuple(datetime.fromisoformat(t) for t in fields["truth_cutoffs"])
        return cls(**fields)


def truth_config(truth_path: Path) -> GeneratorConfig | None:
    """The generator config recorded in a truth.parquet (None when the file carries none: an older file, or truth
    from elsewhere)."""
    meta = pq.read_schema(truth_path).metadata or {}
    raw = meta.get(TRUTH_CONFIG_KEY)
    return None if raw is None else GeneratorConfig.from_dict(json.loads(raw))


@dataclass(frozen=True)
class GeneratedData:
    """Where :func:`generate` wrote its outputs and how much it wrote."""

    out_dir: Path
    events_dir: Path
    truth_path: Path
    raw_dirty_path: Path | None
    n_users: int
    n_events: int
    cutoffs: tuple[datetime, ...]
    config: GeneratorConfig


def day_rows(
    rng: np.random.Generator, config: GeneratorConfig, users: proc.Users, day: int, start_us: int, idx: np.ndarray,
    sessions: proc.Sessions, bought: np.ndarray,
) -> EventRows:
    """The event rows of one simulated day's sessions (``idx``: the users with a session; times from ``start_us``,
    microseconds since the epoch). Draws the content (items, categories, amounts) from ``rng``, the day's stream."""
    return session_rows(
        rng, day=day, start_us=start_us, users_idx=idx, sessions=sessions, bought=bought,
        home_cat=users.home_cat[idx], amount_mu=users.amount_mu[idx], n_categories=config.n_categories,
        items_per_category=config.items_per_category,
    )


def truth_schema() -> pa.Schema:
    """Arrow schema of ``truth.parquet``: one row per (user, cutoff)."""
    return pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("as_of", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("p_buy_true", pa.float64(), nullable=False),
            pa.field("p_lapse_true", pa.float64(), nullable=False),
            pa.field("horizon_days", pa.int32(), nullable=False),
            pa.field("lapse_days", pa.int32(), nullable=False),
            pa.field("bought_before", pa.bool_(), nullable=False),
            pa.field("active_15d", pa.bool_(), nullable=False),
        ]
    )


@dataclass
class _ChunkResult:
    rows: EventRows
    truth: list[pa.Table]


def _simulate_chunk(
    config: GeneratorConfig, chunk: int, first: int, n: int, uids: pa.Array, cal: proc.Calendar
) -> _ChunkResult:
    """Simulate users ``first .. first + n - 1`` over all days; return their event rows and truth tables."""
    ss = np.random.SeedSequence(entropy=config.seed, spawn_key=(chunk,))
    rng_users, rng_days, rng_truth = (np.random.default_rng(s) for s in ss.spawn(3))
    users = proc.draw_users(rng_users, n, config.days, config.n_categories)
    state = proc.initial_state(users)
    start_us = int(config.start_utc.timestamp()) * 1_000_000
    cutoff_days = {config.cutoff_day(t): t for t in config.cutoffs()}
    parts: list[EventRows] = []
    truth: list[pa.Table] = []

    def record_truth(day: int) -> None:
        t = cutoff_days[day]
        pb = p_buy(rng_truth, users, state, day, config.horizon_days, cal, config.truth_paths)
        pl = p_lapse(users, state, day, config.lapse_days, cal)
        cols = {
            "user_id": uids,
            "as_of": pa.array(np.full(n, int(t.timestamp()) * 1_000_000), pa.timestamp("us", tz="UTC")),
            "p_buy_true": pb,
            "p_lapse_true": pl,
            "horizon_days": np.full(n, config.horizon_days, np.int32),
            "lapse_days": np.full(n, config.lapse_days, np.int32),
            "bought_before": state.n_buys > 0,
            "active_15d": state.last_active >= day - ACTIVE_WINDOW_DAYS,
        }
        truth.append(pa.Table.from_pydict(cols, schema=truth_schema()))

    for day in range(config.days):
        if day in cutoff_days:
            record_truth(day)
        idx, sessions, bought = proc.step_day(rng_days, users, state, day, cal)
        parts.append(day_rows(rng_days, config, users, day, start_us, idx, sessions, bought))
    if config.days in cutoff_days:
        record_truth(config.days)
    return _ChunkResult(rows=EventRows.concat(parts), truth=truth)


def _write_events(path: Path, rows: EventRows, uids: pa.Array, ids: IdTables) -> None:
    """Write one chunk's rows as a Parquet part, converting to strings one row group at a time."""
    with pq.ParquetWriter(path, arrow_schema(), **PARQUET_OPTIONS) as writer:
        for lo in range(0, max(rows.n, 1), ROWS_PER_GROUP):
            writer.write_table(to_table(rows.slice(lo, lo + ROWS_PER_GROUP), uids, ids))


def generate(config: GeneratorConfig, out_dir: Path, *, progress: Progress | None = None) -> GeneratedData:
    """Simulate the shop and write events, truth and (optionally) a dirty raw CSV under ``out_dir``.

    Stale ``events/part-*.parquet`` files and ``raw_dirty.csv`` from an earlier run are removed first.
    ``truth.parquet`` rows come chunk by chunk, cutoff by cutoff within a chunk. ``progress`` is called
    with ``(users_done, n_users)`` at the start and after each chunk. Memory is bounded by one chunk:
    about 70 event rows per user at the default settings, ~550 MiB peak RSS at ``chunk_users=50_000``.
    """
    out_dir = Path(out_dir)
    events_dir = out_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.parquet"):
        old.unlink()
    truth_path = out_dir / "truth.parquet"
    dirty_path = out_dir / "raw_dirty.csv"
    dirty_path.unlink(missing_ok=True)
    cal = proc.make_calendar(config.start_utc, config.days + max(config.horizon_days, config.lapse_days) + 1)
    ids = IdTables.build(config.n_categories, config.items_per_category)
    n_events = 0
    if progress is not None:
        progress(0, config.n_users)
    schema = truth_schema().with_metadata({TRUTH_CONFIG_KEY: json.dumps(config.to_dict(), sort_keys=True)})
    with pq.ParquetWriter(truth_path, schema) as truth_writer:
        for chunk, first in enumerate(range(0, config.n_users, config.chunk_users)):
            n = min(config.chunk_users, config.n_users - first)
            uids = user_ids(first, n, config.n_users)
            result = _simulate_chunk(config, chunk, first, n, uids, cal)
            for table in result.truth:
                truth_writer.write_table(table)
            _write_events(events_dir / f"part-{chunk:05d}.parquet", result.rows, uids, ids)
            if chunk == 0 and config.dirty_share > 0:
                pick = np.random.default_rng([config.seed, 1]).permutation(result.rows.n)
                sample = result.rows.take(np.sort(pick[: config.dirty_sample_rows]))
                write_dirty_csv(to_table(sample, uids, ids), dirty_path, config.dirty_share, config.seed)
            n_events += result.rows.n
            del result
            if progress is not None:
                progress(first + n, config.n_users)
    return GeneratedData(
        out_dir=out_dir,
        events_dir=events_dir,
        truth_path=truth_path,
        raw_dirty_path=dirty_path if config.dirty_share > 0 else None,
        n_users=config.n_users,
        n_events=n_events,
        cutoffs=config.cutoffs(),
        config=config,
    )


def simulate_truth(
    config: GeneratorConfig, cutoffs: Iterable[datetime], *, horizon_days: int | None = None,
    lapse_days: int | None = None,
) -> pa.Table:
    """Truth rows (:func:`truth_schema`) of the shop ``config`` generates, at ``cutoffs`` (each ``start`` plus a whole
    number of days in ``[1, days]``) for a ``horizon_days`` horizon and a ``lapse_days`` lapse window (default: the
    config's), without writing anything.

    The shop is simulated again user chunk by user chunk with the same random streams, so the users and their
    events are those of :func:`generate`; only the truth's own Monte Carlo draws (``p_buy_true``) differ. About as
    long as :func:`generate` (a few seconds per 20,000 users).
    """
    cfg = replace(
        config, truth_cutoffs=tuple(cutoffs), horizon_days=horizon_days or config.horizon_days,
        lapse_days=lapse_days or config.lapse_days, dirty_share=0.0,
    )
    cal = proc.make_calendar(cfg.start_utc, cfg.days + max(cfg.horizon_days, cfg.lapse_days) + 1)
    tables: list[pa.Table] = []
    for chunk, first in enumerate(range(0, cfg.n_users, cfg.chunk_users)):
        n = min(cfg.chunk_users, cfg.n_users - first)
        tables += _simulate_chunk(cfg, chunk, first, n, user_ids(first, n, cfg.n_users), cal).truth
    return pa.concat_tables(tables) if tables else truth_schema().empty_table()


def purchase_only(events_path: Path, out_path: Path) -> int:
    """Write an order-export style file: only the ``buy`` rows of ``events_path``, without ``channel``.

    ``events_path`` is a Parquet file or a directory of Parquet parts in the canonical schema; ``out_path``
    ends in ``.parquet`` or ``.csv``. Columns: user_id, ts, behavior, item_id, category_id, amount.
    Streams record batches, so memory stays small. Returns the number of rows written.
    """
    events_path, out_path = Path(events_path), Path(out_path)
    if not events_path.exists():
        raise FileNotFoundError(f"events path {events_path} does not exist")
    suffix = out_path.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise ValueError(f"purchase_only writes .parquet or .csv, got {out_path.name!r}")
    columns = ["user_id", "ts", "behavior", "item_id", "category_id", "amount"]
    dataset = ds.dataset(events_path, format="parquet")
    scanner = dataset.scanner(columns=columns, filter=ds.field("behavior") == "buy")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    schema = scanner.projected_schema
    written = 0
    if suffix == ".parquet":
        with pq.ParquetWriter(out_path, schema) as w:
            for batch in scanner.to_batches():
                w.write_batch(batch)
                written += batch.num_rows
    else:
        import pyarrow.csv as pacsv

        with pacsv.CSVWriter(out_path, schema) as w:
            for batch in scanner.to_batches():
                w.write_batch(batch)
                written += batch.num_rows
    return written
