"""Activation: which action each scored user should get now, by when, and what acting now is worth.

:func:`recommend` reads a scored frame with its feature columns kept (``serving.scoring.score_features(...,
keep_features=True)``) and assigns one action per user. The rules follow the activation windows of
docs/architecture.md and are tried in this order; the first that matches wins:

1. ``coupon_24h`` - a fav or cart less than 24 h before ``as_of`` and no purchase since. The I decision window is the
   shortest one (it closes 24 h after the fav/cart) and carries the strongest intent, so it goes first.
2. ``ad_retarget`` - the last ad click 1 to 3 days before ``as_of`` and no purchase since: A at its peak, a window
   of two days that closes 3 days after the click.
3. ``repurchase_reminder`` - a P/L user whose days since the last purchase are within
   ``[0.8, 1.2)`` x their own mean gap between purchase days. The window spans days to weeks and the message is
   cheap, so it yields to the two short windows above.
4. ``win_back`` - lapse risk ``p_lapse >= 0.5`` for a buyer who is valuable by RFM (frequency or monetary high):
   defensive and slow, with a configured window (7 days) starting at ``as_of``.
5. ``nurture`` - A users who are new to the target categories (``category_new == 1``) or, when the feature table
   has no target-category columns, A users who never bought. Lowest intent, so last. The window is the rest of
   the A window: it closes ``browse_days`` (15) after the user's last event, when they would drop out of A.
6. ``none`` - nothing applies.

Shorter windows and stronger intent come first so a user is never sent a slow action while a closing window is
open, and every user gets at most one action.

Windows are half-open ``[opens, closes)``: a trigger exactly at the opening counts, and at the closing moment the
window is over (no action; its urgency would be 0). Times are compared in seconds rounded to the millisecond, so
float noise in fractional-day features does not move a boundary.

Economics per user (currency units), always **incremental**: what acting causes, not what would happen anyway.
``action_p`` is the untreated course the action rides on (``p_buy``: the user buys in the window without the
action; for ``win_back``, ``p_lapse``: the user lapses without it). ``lift`` is the action's relative effect over that
course: for a p_buy action the relative rise of the purchase rate (coupon_24h +15% turns ``p`` into ``1.15 p``); for
``win_back`` the share of would-be lapsers it saves. ``lift`` is the prior of :data:`DEFAULT_LIFTS` (or the config)
until a campaign has measured it; ``lift_source`` says which was used. ``incremental_p = action_p x lift`` (extra
buyers, or saved lapsers, per targeted user); ``urgency`` is the share of the window still left at ``as_of`` (1 at
the opening, 0 at the deadline); ``expected_revenue = incremental_p x value x urgency`` with ``value`` the user's mean
order value (``default_order_value`` when unknown or not positive), or, for ``win_back``, the user's 365-day purchase
amount (``purchase days x default_order_value`` without amounts), the revenue a saved lapser keeps;
``expected_value = expected_revenue x margin_rate``; ``priority = expected_value`` (the incremental value of acting
now) and ``expected_profit = expected_value - cost of the action``. Within one action, ordering by priority and by
expected profit is the same; to rank users across actions, sort on ``expected_profit``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd

from features.columns import Table, column_names, fill_nan, n_rows, objects, with_columns
from features.segments.rfm import RFM_GROUPS
from features.spec.definition import AIPL_LAYERS

ACTIONS: tuple[str, ...] = ("coupon_24h", "ad_retarget", "repurchase_reminder", "win_back", "nurture")
"""Actions in precedence order (first matching rule wins)."""
NO_ACTION = "none"
WIN_BACK = "win_back"
"""The one action that rides on the lapse score (``p_lapse``); every other action rides on ``p_buy``."""
DEFAULT_COSTS: Mapping[str, float] = MappingProxyType(
    {"coupon_24h": 3.0, "ad_retarget": 0.8, "repurchase_reminder": 0.1, "win_back": 2.0, "nurture": 0.05}
)
DEFAULT_LIFTS: Mapping[str, float] = MappingProxyType(
    {"coupon_24h": 0.15, "ad_retarget": 0.10, "repurchase_reminder": 0.05, "win_back": 0.10, "nurture": 0.03}
)
"""Prior incremental effect per action: relative rise of the purchase rate, or for ``win_back`` the share of
would-be lapsers saved. Replaced by the measured lift (shrunk toward this prior) once a campaign has been read."""
LIFT_SOURCES: frozenset[str] = frozenset({"prior", "measured"})
VALUABLE_RFM_GROUPS: frozenset[str] = frozenset(name for (_r, f, m), name in RFM_GROUPS.items() if f or m)
"""RFM groups with frequency or monetary high: the buyers worth winning back."""
OUTPUT_COLUMNS: tuple[str, ...] = (
    "action",
    "action_deadline",
    "urgency",
    "action_p",
    "lift",
    "incremental_p",
    "expected_revenue",
    "expected_value",
    "action_cost",
    "expected_profit",
    "priority",
)
"""Columns :func:`recommend` adds, in order."""
SECONDS_PER_DAY = 86_400.0


class ActivationError(ValueError):
    """Bad activation input: missing or invalid columns, an invalid configuration, an unknown action."""

    exit_code = 1  # CLI exit code: bad input


@dataclass(frozen=True)
class ActivationConfig:
    """Economics and windows of the activation rules.

    Money in the shop's currency; ``margin_rate`` is a share of revenue; ``cost`` is per targeted user and per
    action (actions not listed keep their :data:`DEFAULT_COSTS`). Windows: ``coupon_window_hours`` after a fav/cart,
    ``ad_window_days = (opens, closes)`` days after an ad click, ``cycle_band = (low, high)`` as multiples of the
    user's mean purchase gap, ``win_back_days`` from ``as_of``, ``browse_days`` (the A window) after the last
    event. ``purchase_days`` is the ``FeatureSpec.purchase_days`` the features were built with (it names the
    ``amount_{n}d`` / ``purchase_days_{n}d`` columns used as customer value). ``lift`` is the incremental effect
    per action (see the module docstring; actions not listed keep their :data:`DEFAULT_LIFTS`), ``lift_source``
    says for each action whether it is the ``prior`` or a ``measured`` lift and ``lift_n`` how many users (control
    plus treatment) measured it.
    """

    default_order_value: float = 60.0
    margin_rate: float = 0.3
    cost: Mapping[str, float] = field(default_factory=lambda: DEFAULT_COSTS)
    lift: Mapping[str, float] = field(default_factory=lambda: DEFAULT_LIFTS)
    lift_source: Mapping[str, str] = field(default_factory=dict)
    lift_n: Mapping[str, int] = field(default_factory=dict)
    coupon_window_hours: float = 24.0
    ad_window_days: tuple[float, float] = (1.0, 3.0)
    cycle_band: tuple[float, float] = (0.8, 1.2)
    lapse_threshold: float = 0.5
    win_back_days: float = 7.0
    browse_days: float = 15.0
    purchase_days: int = 365

    def __post_init__(self) -> None:
        unknown = sorted(set(self.cost) - set(ACTIONS))
        if unknown:
            raise ActivationError(f"cost given for unknown action(s) {unknown}; actions are {list(ACTIONS)}")
        merged = {**DEFAULT_COSTS, **{k: _number(f"cost[{k!r}]", v) for k, v in self.cost.items()}}
        bad = {k: v for k, v in merged.items() if not (np.isfinite(v) and v >= 0)}
        if bad:
            raise ActivationError(f"action costs must be finite and >= 0, got {bad}")
        object.__setattr__(self, "cost", MappingProxyType(merged))
        unknown = sorted(set(self.lift) - set(ACTIONS))
        if unknown:
            raise ActivationError(f"lift given for unknown action(s) {unknown}; actions are {list(ACTIONS)}")
        lifts = {**DEFAULT_LIFTS, **{k: _number(f"lift[{k!r}]", v) for k, v in self.lift.items()}}
        bad = {k: v for k, v in lifts.items() if not (np.isfinite(v) and -1 <= v <= (1 if k == WIN_BACK else 10))}
        if bad:
            raise ActivationError(f"action lifts must be in [-1, 10] (win_back: a share in [-1, 1]), got {bad}")
        object.__setattr__(self, "lift", MappingProxyType(lifts))
        sources = {a: "prior" for a in ACTIONS} | dict(self.lift_source)
        if not set(sources.values()) <= LIFT_SOURCES or not set(sources) <= set(ACTIONS):
            raise ActivationError(f"lift_source maps actions to 'prior' or 'measured', got {dict(self.lift_source)}")
        object.__setattr__(self, "lift_source", MappingProxyType(sources))
        object.__setattr__(self, "lift_n", MappingProxyType({k: int(v) for k, v in self.lift_n.items()}))
        for name in ("ad_window_days", "cycle_band"):
            object.__setattr__(self, name, tuple(_number(name, v) for v in getattr(self, name)))
        for name in ("default_order_value", "margin_rate", "coupon_window_hours", "lapse_threshold", "win_back_days",
                     "browse_days"):
            object.__setattr__(self, name, _number(name, getattr(self, name)))
        _check(self.default_order_value > 0, "default_order_value must be > 0")
        _check(0 < self.margin_rate <= 1, "margin_rate must be in (0, 1]")
        _check(self.coupon_window_hours > 0, "coupon_window_hours must be > 0")
        _check(_is_band(self.ad_window_days, 0.0), "ad_window_days must be (opens, closes) with 0 <= opens < closes")
        _check(_is_band(self.cycle_band, 1e-12), "cycle_band must be (low, high) with 0 < low < high")
        _check(0 <= self.lapse_threshold <= 1, "lapse_threshold must be in [0, 1]")
        _check(self.win_back_days > 0, "win_back_days must be > 0")
        _check(self.browse_days > 0, "browse_days must be > 0")
        _check(isinstance(self.purchase_days, int) and self.purchase_days > 0, "purchase_days must be an int > 0")

    def __hash__(self) -> int:
        values = (getattr(self, f.name) for f in fields(self))
        return hash(tuple(tuple(sorted(v.items())) if isinstance(v, Mapping) else v for v in values))

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> ActivationConfig:
        """Build from an object or mapping with ``default_order_value``, ``margin_rate``, ``cost`` (e.g. the CLI's
        ``ActivationSettings``); any other field may be passed in ``overrides``."""
        get = settings.get if isinstance(settings, Mapping) else lambda k, d=None: getattr(settings, k, d)
        known = {f.name for f in fields(cls)}
        values = {k: get(k) for k in known if get(k) is not None}
        bad = sorted(set(overrides) - known)
        if bad:
            raise ActivationError(f"unknown ActivationConfig field(s) {bad}")
        return cls(**{**values, **overrides})

    def lift_of(self, action: str) -> float:
        """Incremental effect of ``action`` (0 for ``none``): relative purchase lift, or share of lapsers saved."""
        return _per_action(self.lift, action)

    def cost_of(self, action: str) -> float:
        """Cost per targeted user of ``action`` (0 for ``none``)."""
        return _per_action(self.cost, action)


def _per_action(values: Mapping[str, float], action: str) -> float:
    """``values[action]`` as a float; 0 for ``none``; an unknown action is an :class:`ActivationError`."""
    if action == NO_ACTION:
        return 0.0
    if action not in values:
        raise ActivationError(f"unknown action {action!r}; actions are {list(ACTIONS)}")
    return float(values[action])


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ActivationError(message)


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ActivationError(f"{name} must be a number, got {value!r}") from exc


def _is_band(band: tuple[float, ...], low: float) -> bool:
    return len(band) == 2 and all(np.isfinite(band)) and low <= band[0] < band[1]


def required_columns(cfg: ActivationConfig) -> list[str]:
    """Columns of the scored frame :func:`recommend` reads (``category_new`` is optional)."""
    n = cfg.purchase_days
    return [
        "user_id",
        "p_buy",
        "p_lapse",
        "aipl_layer",
        "rfm_group",
        "days_since_last_fav",
        "days_since_last_cart",
        "days_since_last_ad",
        "days_since_last_buy",
        "days_since_last_event",
        "purchase_gap_mean_days",
        "purchase_days",
        "amount_mean",
        f"amount_{n}d",
        f"purchase_days_{n}d",
    ]


@dataclass
class _Rule:
    """One action's verdict per user: who matches, seconds until the window closes, window length, p, value."""

    match: np.ndarray
    remaining_s: np.ndarray
    length_s: np.ndarray
    p: np.ndarray
    value: np.ndarray


def recommend(scored: Table, as_of: datetime, cfg: ActivationConfig | None = None) -> Table:
    """A copy of ``scored`` (n rows, feature columns kept) with the columns of :data:`OUTPUT_COLUMNS` added.

    ``as_of`` is the moment of acting (aware, or naive UTC). Recency features are ages at the features' cutoff,
    read from the frame's ``as_of`` column when present; acting later than the cutoff ages every trigger by the
    difference, acting before it is an error. Added columns: ``action`` (one of :data:`ACTIONS` or ``none``),
    ``action_deadline`` (ISO 8601 UTC string, e.g. ``2024-03-02T00:00:00Z``, when the window closes; None for
    ``none``), ``urgency`` (share of the window left, [0, 1]), ``action_p`` (the untreated course the action rides
    on: ``p_buy``, or ``p_lapse`` for ``win_back``; NaN for ``none``), ``lift`` and ``incremental_p`` (0 for
    ``none``), ``expected_revenue``, ``expected_value``, ``action_cost``, ``expected_profit`` and ``priority``
    (currency, incremental; all 0 for ``none``). See the module docstring for the rules, their order and the
    formulas.

    ``scored`` may also be :data:`features.columns.Columns` (as :func:`serving.scoring.score_features` returns for
    columns): the added columns then come back over them (arrays of shape (n,)), nothing copied.
    """
    cfg = cfg or ActivationConfig()
    present = column_names(scored)
    missing = [c for c in required_columns(cfg) if c not in present]
    if missing:
        raise ActivationError(
            f"scored frame lacks column(s) {missing}; score with keep_features=True so activation can read features"
        )
    now = _utc(as_of)
    shift_s = _cutoff_shift(scored, now)
    num = {c: _numeric(scored, c) for c in required_columns(cfg) if c not in ("user_id", "aipl_layer", "rfm_group")}
    if "category_new" in present:
        num["category_new"] = _numeric(scored, "category_new")
    p_buy, p_lapse = num["p_buy"], num["p_lapse"]
    if np.isnan(p_buy).any():
        raise ActivationError(f"p_buy is null for {int(np.isnan(p_buy).sum())} row(s); every user needs a p_buy")
    for name, p in (("p_buy", p_buy), ("p_lapse", p_lapse)):
        if ((p < 0) | (p > 1)).any():
            raise ActivationError(f"{name} must be a probability in [0, 1]")
    layer = objects(scored, "aipl_layer")
    unknown = sorted({str(v) for v in _distinct(layer) if v not in AIPL_LAYERS})
    if unknown:
        raise ActivationError(f"unknown aipl_layer value(s) {unknown[:5]}; expected one of {list(AIPL_LAYERS)}")
    rfm = objects(scored, "rfm_group")

    def age_s(col: str) -> np.ndarray:
        return np.round(num[col] * SECONDS_PER_DAY + shift_s, 3)

    order_value = np.where(num["amount_mean"] > 0, num["amount_mean"], cfg.default_order_value)
    buy_age = age_s("days_since_last_buy")
    rules: dict[str, Callable[[], _Rule]] = {  # evaluated in precedence order, only while some user is still free
        "coupon_24h": lambda: _coupon(np.fmin(age_s("days_since_last_fav"), age_s("days_since_last_cart")), buy_age,
                                      p_buy, order_value, cfg),
        "ad_retarget": lambda: _ad(age_s("days_since_last_ad"), buy_age, p_buy, order_value, cfg),
        "repurchase_reminder": lambda: _cycle(layer, buy_age, num["purchase_gap_mean_days"], p_buy, order_value, cfg),
        "win_back": lambda: _win_back(p_lapse, rfm, num[f"amount_{cfg.purchase_days}d"],
                                      num[f"purchase_days_{cfg.purchase_days}d"], cfg),
        "nurture": lambda: _nurture(layer, age_s("days_since_last_event"), num["purchase_days"],
                                    num.get("category_new"), p_buy, order_value, cfg),
    }
    added = _assemble(len(p_buy), now, rules, cfg)
    if not isinstance(scored, pd.DataFrame):
        return with_columns(scored, added)
    out = scored.copy()
    for name, values in added.items():
        out[name] = pd.Series(values, index=scored.index, dtype=object) if values.dtype == object else values
    return out


_BUYER_LAYERS = frozenset({"P", "L"})


def _member(values: np.ndarray, options: frozenset[str]) -> np.ndarray:
    """``np.isin(values, list(options))`` for an object array of labels (boolean, shape (n,)); a set lookup per
    value for a few values, where ``np.isin``'s sort costs tens of microseconds."""
    if len(values) > 64:
        return np.isin(values, list(options))
    return np.array([v in options for v in values.tolist()], dtype=bool)


def _distinct(values: np.ndarray) -> Any:
    """The distinct values of an object array (a set for a few, ``pd.unique`` for many)."""
    return set(values.tolist()) if len(values) <= 64 else pd.unique(values)


def _coupon(trigger: np.ndarray, buy_age: np.ndarray, p: np.ndarray, value: np.ndarray,
            cfg: ActivationConfig) -> _Rule:
    close = cfg.coupon_window_hours * 3600.0
    return _timed(trigger, 0.0, close, ~(buy_age <= trigger), p, value)


def _ad(trigger: np.ndarray, buy_age: np.ndarray, p: np.ndarray, value: np.ndarray, cfg: ActivationConfig) -> _Rule:
    opens, closes = (d * SECONDS_PER_DAY for d in cfg.ad_window_days)
    return _timed(trigger, opens, closes, ~(buy_age <= trigger), p, value)


def _timed(trigger: np.ndarray, opens: float, closes: float, extra: np.ndarray, p: np.ndarray,
           value: np.ndarray) -> _Rule:
    """A window ``[opens, closes)`` seconds after a trigger that happened ``trigger`` seconds before as_of."""
    match = (trigger >= opens) & (trigger < closes) & extra
    return _Rule(match, closes - trigger, np.full(len(trigger), closes - opens), p, value)


def _cycle(layer: np.ndarray, buy_age: np.ndarray, gap_days: np.ndarray, p: np.ndarray, value: np.ndarray,
           cfg: ActivationConfig) -> _Rule:
    low, high = cfg.cycle_band
    gap_s = gap_days * SECONDS_PER_DAY
    opens, closes = np.round(low * gap_s, 3), np.round(high * gap_s, 3)
    match = _member(layer, _BUYER_LAYERS) & (gap_s > 0) & (buy_age >= opens) & (buy_age < closes)
    return _Rule(match, closes - buy_age, closes - opens, p, value)


def _win_back(p_lapse: np.ndarray, rfm: np.ndarray, amount: np.ndarray, buy_days: np.ndarray,
              cfg: ActivationConfig) -> _Rule:
    match = (p_lapse >= cfg.lapse_threshold) & _member(rfm, VALUABLE_RFM_GROUPS)
    fallback = fill_nan(buy_days, 0.0) * cfg.default_order_value  # (an infinite count stays infinite either way)
    value = np.where(amount > 0, amount, fallback)
    length = np.full(len(p_lapse), cfg.win_back_days * SECONDS_PER_DAY)
    return _Rule(match, length, length, p_lapse, value)


def _nurture(layer: np.ndarray, event_age: np.ndarray, buy_days: np.ndarray, category_new: np.ndarray | None,
             p: np.ndarray, value: np.ndarray, cfg: ActivationConfig) -> _Rule:
    newcomer = (category_new == 1) if category_new is not None else (fill_nan(buy_days, 0.0) == 0)
    return _timed(event_age, 0.0, cfg.browse_days * SECONDS_PER_DAY, (layer == "A") & newcomer, p, value)


def _assemble(
    n: int, now: pd.Timestamp, rules: dict[str, Callable[[], _Rule]], cfg: ActivationConfig
) -> dict[str, np.ndarray]:
    """The :data:`OUTPUT_COLUMNS` of n users from the rules' verdicts (first match in :data:`ACTIONS` order wins; a
    rule is evaluated only while some user has no action yet): arrays of shape (n,), ``action`` and
    ``action_deadline`` object arrays, the rest float64."""
    action = np.full(n, NO_ACTION, dtype=object)
    remaining = np.full(n, np.nan)
    length = np.full(n, np.nan)
    p = np.full(n, np.nan)
    value = np.zeros(n)
    cost = np.zeros(n)
    lift = np.zeros(n)
    free = np.ones(n, dtype=bool)
    for name in ACTIONS:  # precedence order: first match wins
        if not free.any():
            break
        rule = rules[name]()
        take = free & rule.match
        if not take.any():
            continue
        action[take] = name
        remaining[take], length[take] = rule.remaining_s[take], rule.length_s[take]
        p[take], value[take] = rule.p[take], rule.value[take]
        cost[take] = cfg.cost_of(name)
        lift[take] = cfg.lift_of(name)
        free &= ~take
    acted = ~free
    urgency = np.zeros(n)
    urgency[acted] = np.clip(remaining[acted] / length[acted], 0.0, 1.0)
    incremental_p = np.where(acted, p * lift, 0.0)
    revenue = np.where(acted, incremental_p * value * urgency, 0.0)
    expected_value = revenue * cfg.margin_rate
    return {
        "action": action,
        "action_deadline": _deadlines(now, remaining, acted),
        "urgency": urgency,
        "action_p": p,
        "lift": lift,
        "incremental_p": incremental_p,
        "expected_revenue": revenue,
        "expected_value": expected_value,
        "action_cost": cost,
        "expected_profit": expected_value - cost,
        "priority": expected_value,
    }


def _deadlines(now: pd.Timestamp, remaining_s: np.ndarray, acted: np.ndarray) -> np.ndarray:
    """ISO UTC strings (whole seconds) of ``now + remaining`` for acted rows, None elsewhere."""
    out = np.full(len(remaining_s), None, dtype=object)
    if acted.any():
        base = np.datetime64(now.tz_convert(None).to_datetime64(), "ms")
        stamps = base + np.round(remaining_s[acted] * 1000).astype("int64").astype("timedelta64[ms]")
        stamps = (stamps + np.timedelta64(500, "ms")).astype("datetime64[s]")  # round half up to the second
        out[acted] = np.datetime_as_string(stamps, unit="s", timezone="UTC")
    return out


def _utc(as_of: datetime) -> pd.Timestamp:
    if not isinstance(as_of, datetime):
        raise ActivationError(f"as_of must be a datetime, got {type(as_of).__name__}")
    ts = pd.Timestamp(as_of)
    return ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)


def _cutoff_shift(scored: Table, now: pd.Timestamp) -> float:
    """Seconds between the features' cutoff (the table's ``as_of`` column, if any) and the moment of acting."""
    if "as_of" not in column_names(scored) or n_rows(scored) == 0:
        return 0.0
    values = _distinct(objects(scored, "as_of"))
    if len(values) == 1 and next(iter(values)) == now.isoformat():  # features cut at the moment of acting
        return 0.0
    try:
        if all(type(v) is str for v in values):  # one ISO text per batch: parsed once per process
            cutoffs = list(dict.fromkeys(_parse_cutoff(v) for v in values))
        else:
            cutoffs = list(pd.to_datetime(pd.Series(list(values), dtype=object), utc=True, format="ISO8601").unique())
    except (ValueError, TypeError) as exc:
        raise ActivationError(f"scored column 'as_of' is not a timestamp: {exc}") from exc
    if len(cutoffs) != 1 or pd.isna(cutoffs[0]):
        raise ActivationError(f"scored frame mixes feature cutoffs {[str(c) for c in cutoffs[:5]]}; score one as_of")
    shift = (now - pd.Timestamp(cutoffs[0])).total_seconds()
    if shift < 0:
        raise ActivationError(f"as_of {now.isoformat()} is before the features' cutoff {cutoffs[0]}")
    return float(shift)


@lru_cache(maxsize=256)
def _parse_cutoff(text: str) -> pd.Timestamp:
    """A cutoff's ISO 8601 text as an aware UTC timestamp (``pd.to_datetime(..., utc=True, format="ISO8601")``)."""
    return pd.to_datetime(pd.Series([text], dtype=object), utc=True, format="ISO8601").iloc[0]


def _numeric(table: Table, column: str) -> np.ndarray:
    """Column ``column`` as float64, shape (n,), missing values NaN; anything else is an :class:`ActivationError`."""
    try:
        values = table[column]
        if isinstance(values, pd.Series) or np.asarray(values).dtype == object:
            return pd.Series(values).to_numpy(dtype="float64", na_value=np.nan)
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ActivationError(f"column {column!r} must be numeric: {exc}") from exc
