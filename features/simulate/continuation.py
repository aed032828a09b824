"""Continue a generated shop past a cutoff, with campaign actions applied, and record the true uplift.

:func:`continue_shop` re-creates every user's hidden state at ``as_of`` exactly as :func:`generate` had it
(:mod:`features.simulate.replay`: same seeds, same streams, so the history before ``as_of`` is the generated one),
applies each treated user's action (:mod:`features.simulate.campaigns`) and simulates days ``as_of .. as_of +
days`` for every user. It writes, under ``out_dir``:

- ``events/part-NNNNN.parquet``: the events in ``[as_of, as_of + days)`` in the event contract
  (:func:`features.events.schema.arrow_schema`), one part per chunk of users, time-sorted within a part;
- ``uplift_truth.parquet`` (:func:`uplift_schema`): for every treated and control user both potential outcomes,
  the probability of converting in the action's window without and with the action, and their difference.

Counterfactuals are exact in the sense of common random numbers: after ``as_of`` every random value belongs to
one user, day and call (:class:`features.simulate.draws.UserDraws`, streams keyed by ``(config.seed, seed, chunk,
day)``), so a user's future depends only on the user's own state and action. The untreated future of a user is
the same whoever else is treated, and running the same users with and without an action gives paired outcomes.
The future after ``as_of`` is a fresh draw: it is not the generator's own events after ``as_of`` when ``as_of``
is before ``config.end`` (the generator's single stream cannot give paired futures). Users keep the traits they
were drawn with; nobody new joins after ``config.end``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.events.schema import arrow_schema
from features.simulate import process as proc
from features.simulate.campaigns import (
    CAMPAIGN_ACTIONS,
    UNTREATED,
    CampaignEffects,
    CampaignEffectsError,
    Treated,
    Uplift,
    treat,
    true_uplift,
)
from features.simulate.draws import MAX_SESSION_ROWS, UserDraws
from features.simulate.events import EventRows, IdTables, session_rows, to_table
from features.simulate.replay import ReplayedChunk, as_of_day, replay
from features.simulate.shop import PARQUET_OPTIONS, ROWS_PER_GROUP, GeneratorConfig, GeneratorConfigError

Progress = Callable[[int, int | None], None]
_RESPONSE, _TRUTH, _COINS, _CONTENT = range(4)  # stream kinds, part of every post-cutoff spawn key


def uplift_schema() -> pa.Schema:
    """Arrow schema of ``uplift_truth.parquet``: one row per treated or control user.

    ``p_untreated`` / ``p_treated``: probability of converting on days ``[as_of, as_of + window_days)`` without /
    with the action (a purchase; for ``win_back`` any visit or purchase); ``uplift = p_treated - p_untreated``;
    ``group``: ``treatment`` or ``control``; ``in_window``: inside the action's decision window at ``as_of``;
    ``annoyed``: the user reacts badly to any message (negative effect).
    """
    return pa.schema(
        [
            pa.field("user_id", pa.string(), nullable=False),
            pa.field("as_of", pa.timestamp("us", tz="UTC"), nullable=False),
            pa.field("action", pa.string(), nullable=False),
            pa.field("group", pa.string(), nullable=False),
            pa.field("p_untreated", pa.float64(), nullable=False),
            pa.field("p_treated", pa.float64(), nullable=False),
            pa.field("uplift", pa.float64(), nullable=False),
            pa.field("window_days", pa.int32(), nullable=False),
            pa.field("in_window", pa.bool_(), nullable=False),
            pa.field("annoyed", pa.bool_(), nullable=False),
        ]
    )


@dataclass(frozen=True)
class ContinuedShop:
    """Where :func:`continue_shop` wrote its outputs and how much: events in ``[as_of, end)``."""

    out_dir: Path
    events_dir: Path
    uplift_path: Path
    as_of: datetime
    end: datetime
    n_users: int
    n_events: int
    n_treated: int
    n_control: int
    config: GeneratorConfig
    effects: CampaignEffects


def _positions(
    assign: Mapping[str, str], config: GeneratorConfig, effects: CampaignEffects, what: str
) -> dict[int, int]:
    """Global user number -> action code for a ``user_id -> action`` mapping; unknown ids or actions raise."""
    width = max(7, len(str(config.n_users - 1)))
    out: dict[int, int] = {}
    unknown: list[str] = []
    for uid, action in assign.items():
        digits = uid[1:] if isinstance(uid, str) and uid.startswith("u") else ""
        j = int(digits) if digits.isdigit() else -1
        if not (0 <= j < config.n_users and uid == f"u{j:0{width}d}"):
            unknown.append(repr(uid))
            continue
        out[j] = effects.code_of(action)
    if unknown:
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise GeneratorConfigError(f"{what} name users that are not in the shop: {', '.join(unknown[:3])}{more}")
    return out


def _codes(assigned: dict[int, int], first: int, n: int) -> np.ndarray:
    codes = np.full(n, UNTREATED, dtype=np.int64)
    for j, code in assigned.items():
        if first <= j < first + n:
            codes[j - first] = code
    return codes


def _stream(config: GeneratorConfig, seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=(config.seed, seed), spawn_key=key)


def _future(
    config: GeneratorConfig, seed: int, rc: ReplayedChunk, tr: Treated, days: int, cal: proc.Calendar
) -> EventRows:
    """Simulate days ``rc.day .. rc.day + days - 1`` for one chunk from the treated state; the event rows."""
    state = tr.state.copy()
    start_us = int(config.start_utc.timestamp()) * 1_000_000
    parts: list[EventRows] = []
    for j in range(days):
        d = rc.day + j
        u = tr.users_on(rc.users, j)
        coins = np.random.default_rng(_stream(config, seed, rc.chunk, _COINS, d))
        content = np.random.default_rng(_stream(config, seed, rc.chunk, _CONTENT, d))
        nd = proc.need(u, state)
        s = proc.session_prob(u, state, cal.mult[d], nd)
        idx = np.flatnonzero(coins.random(rc.n) < s)
        draws = UserDraws(coins, rc.n).bind(idx)
        sessions = proc.draw_sessions(draws, u.take(idx), state.take(idx), bool(cal.promo[d]), nd=nd[idx])
        bought = draws.random(idx.shape[0]) < sessions.hazard
        proc.advance(u, state, d, idx, sessions, bought)
        parts.append(
            session_rows(
                UserDraws(content, rc.n, MAX_SESSION_ROWS).bind_rows(idx, sessions, bought),
                day=d,
                start_us=start_us,
                users_idx=idx,
                sessions=sessions,
                bought=bought,
                home_cat=rc.users.home_cat[idx],
                amount_mu=rc.users.amount_mu[idx],
                n_categories=config.n_categories,
                items_per_category=config.items_per_category,
            )
        )
    return EventRows.concat(parts)


def _uplift_table(
    rc: ReplayedChunk, as_of_us: int, codes_t: np.ndarray, codes: np.ndarray, annoyed: np.ndarray, up: Uplift
) -> pa.Table:
    """Rows of ``uplift_truth.parquet`` for one chunk: the users with an action code, in chunk order."""
    pos = np.flatnonzero(codes != UNTREATED)
    return pa.Table.from_pydict(
        {
            "user_id": rc.uids.take(pa.array(pos, pa.int64())),
            "as_of": pa.array(np.full(pos.size, as_of_us), pa.timestamp("us", tz="UTC")),
            "action": pa.array(np.asarray(CAMPAIGN_ACTIONS, dtype=object)[codes[pos]], pa.string()),
            "group": pa.array(np.where(codes_t[pos] != UNTREATED, "treatment", "control"), pa.string()),
            "p_untreated": up.p_untreated[pos],
            "p_treated": up.p_treated[pos],
            "uplift": up.p_treated[pos] - up.p_untreated[pos],
            "window_days": up.window_days[pos].astype(np.int32),
            "in_window": up.in_window[pos],
            "annoyed": annoyed[pos],
        },
        schema=uplift_schema(),
    )


def _write_events(path: Path, rows: EventRows, uids: pa.Array, ids: IdTables) -> None:
    with pq.ParquetWriter(path, arrow_schema(), **PARQUET_OPTIONS) as writer:
        for lo in range(0, max(rows.n, 1), ROWS_PER_GROUP):
            writer.write_table(to_table(rows.slice(lo, lo + ROWS_PER_GROUP), uids, ids))


def continue_shop(
    config: GeneratorConfig,
    as_of: datetime,
    days: int,
    treatments: Mapping[str, str],
    out_dir: Path,
    *,
    seed: int,
    controls: Mapping[str, str] | None = None,
    effects: CampaignEffects | None = None,
    truth_paths: int = 4,
    progress: Progress | None = None,
) -> ContinuedShop:
    """Continue the shop of ``config`` from ``as_of`` for ``days`` days with ``treatments`` applied at ``as_of``.

    ``as_of`` is ``config.start`` plus a whole number of days in ``[1, config.days]``; ``treatments`` and
    ``controls`` map user ids to an action of :data:`features.simulate.campaigns.CAMPAIGN_ACTIONS` (controls get
    nothing, but their true uplift is recorded as if treated); a user may not be in both. ``seed`` (>= 0) keys the
    post-cutoff streams; ``truth_paths`` is the number of Monte Carlo paths of the purchase truth (its standard
    error falls as ``1 / sqrt(paths)``). Stale ``events/part-*.parquet`` are removed first. Output is
    deterministic for a given ``(config, as_of, days, treatments, controls, effects, seed)``; a user's events do not
    depend on the other users' actions. Raises :class:`GeneratorConfigError` for a bad ``as_of``, ``days``,
    ``seed`` or user id and :class:`CampaignEffectsError` for an unknown action.
    """
    effects = CampaignEffects() if effects is None else effects
    controls = {} if controls is None else controls
    for name, value, low in (("days", days, 1), ("seed", seed, 0), ("truth_paths", truth_paths, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise GeneratorConfigError(f"continue_shop {name} must be an integer >= {low}, got {value!r}")
    day = as_of_day(config, as_of)
    both = sorted(set(treatments) & set(controls))
    if both:
        raise CampaignEffectsError(f"{len(both)} user(s) are in both treatment and control, e.g. {both[0]!r}")
    treated_at, control_at = (
        _positions(m, config, effects, w) for m, w in ((treatments, "treatments"), (controls, "controls"))
    )
    out_dir = Path(out_dir)
    events_dir = out_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.parquet"):
        old.unlink()
    uplift_path = out_dir / "uplift_truth.parquet"
    cal = proc.make_calendar(config.start_utc, day + max(days, effects.max_window_days) + 1)
    ids = IdTables.build(config.n_categories, config.items_per_category)
    as_of_us = int(config.start_utc.timestamp() + day * 86_400) * 1_000_000
    n_events = 0
    if progress is not None:
        progress(0, config.n_users)
    with pq.ParquetWriter(uplift_path, uplift_schema()) as uplift_writer:
        for rc in replay(config, as_of):
            codes_t = _codes(treated_at, rc.first, rc.n)
            codes_c = _codes(control_at, rc.first, rc.n)
            annoyed = np.random.default_rng(_stream(config, seed, rc.chunk, _RESPONSE)).random(rc.n)
            annoyed = annoyed < effects.annoyed_share
            tr = treat(rc.users, rc.state, rc.marks, day, codes_t, annoyed, effects)
            rows = _future(config, seed, rc, tr, days, cal)
            _write_events(events_dir / f"part-{rc.chunk:05d}.parquet", rows, rc.uids, ids)
            n_events += rows.n
            codes = np.where(codes_t != UNTREATED, codes_t, codes_c)
            up = true_uplift(
                _stream(config, seed, rc.chunk, _TRUTH),
                rc.users,
                rc.state,
                rc.marks,
                day,
                codes,
                annoyed,
                effects,
                cal,
                truth_paths,
            )
            uplift_writer.write_table(_uplift_table(rc, as_of_us, codes_t, codes, annoyed, up))
            if progress is not None:
                progress(rc.first + rc.n, config.n_users)
    return ContinuedShop(
        out_dir=out_dir,
        events_dir=events_dir,
        uplift_path=uplift_path,
        as_of=config.start_utc + timedelta(days=day),
        end=config.start_utc + timedelta(days=day + days),
        n_users=config.n_users,
        n_events=n_events,
        n_treated=len(treated_at),
        n_control=len(control_at),
        config=config,
        effects=effects,
    )
