"""The latent process behind the simulated shop: per-user traits, daily state and its dynamics.

Everything here works on whole arrays of users at once (shape ``(n,)``); one call advances every user by
one day. The same functions drive the realised event stream (:mod:`features.simulate.shop`) and the ground
truth (:mod:`features.simulate.truth`), so labels read off the events agree with the true probabilities.

Time unit is the day: day ``d`` covers ``[start + d days, start + (d + 1) days)``. Per day and user:

1. session probability ``s = 1 - exp(-cal_d * act * (1 + K_INTENT * intent + K_NEED * rep * need))``
   where ``act`` is the engagement level (0 before the join day, decaying to 0 after a lapse day), ``intent``
   the short-term purchase intent and ``need`` the repurchase pressure (a bump around the user's own cycle
   length after the last purchase). ``cal_d`` is the shop calendar (weekends, promotion days).
2. on a session day: an ad click with probability :func:`ad_prob`, a cart with :func:`cart_prob`, views of
   several items of one category (more with intent), maybe a fav.
3. on a session day the user buys with hazard :func:`hazard` of the state, the ad click and the cart;
   never-buyers have ``buy == 0``.
4. overnight: intent jumps by a hidden random amount that grows with views, fav, cart and ad click, then
   decays; engagement moves towards its target; the repurchase clock ticks.

Without a session the overnight update is deterministic, which makes the lapse truth an exact product.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta

import numpy as np

# Channel codes index features.events.schema.CHANNELS: search, recommend, ad, live, promo, other.
CH_SEARCH, CH_RECOMMEND, CH_AD, CH_LIVE, CH_PROMO, CH_OTHER = range(6)

K_INTENT = 1.5  # session-rate multiplier per unit of intent
K_NEED = 2.0  # session-rate multiplier at the peak of the repurchase cycle
INTENT_DECAY = 0.55  # overnight intent retention
INTENT_AFTER_BUY = 0.15  # share of intent left after a purchase
ACT_REVERT = float(np.exp(-1.0 / 8.0))  # engagement mean reversion per day (non-lapsed users)
JOIN_BOOST = 1.5  # engagement on the join day, relative to the user's base level
SESSION_ACT_BOOST = 0.04  # engagement boost (times base) after a session day
H_BASE, H_INTENT, H_AD, H_CART, H_NEED = 0.003, 0.045, 0.06, 0.12, 0.3  # purchase rate terms
NEVER = -(10**6)  # "last active day" of a user without any session yet


@dataclass(frozen=True)
class Users:
    """Static hidden traits of a block of users; every field is an array of shape ``(n,)``."""

    join: np.ndarray  # int: first day with any chance of a session
    base: np.ndarray  # float: base engagement (session rate at intent 0, before calendar effects)
    lapse_day: np.ndarray  # float: day from which engagement decays to 0 (inf: never lapses)
    lapse_keep: np.ndarray  # float: daily engagement retention once lapsed
    buy: np.ndarray  # float: purchase propensity (0: never buys)
    rep: np.ndarray  # float in [0, 1]: repurchase loyalty
    cycle: np.ndarray  # float: repurchase cycle length in days
    width: np.ndarray  # float: spread of the repurchase bump in days
    ad_aff: np.ndarray  # float: affinity to ad clicks
    fav_aff: np.ndarray  # float: tendency to favourite
    cart_aff: np.ndarray  # float: tendency to cart
    amount_mu: np.ndarray  # float: log of the user's typical order value
    home_cat: np.ndarray  # int: the user's favourite category

    def take(self, idx: np.ndarray) -> Users:
        """The traits of the users at positions ``idx`` (fancy indexing, may repeat users)."""
        return Users(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


@dataclass
class State:
    """Latent daily state at the start of a day; every field is an array of shape ``(n,)``."""

    act: np.ndarray  # engagement level >= 0
    intent: np.ndarray  # short-term purchase intent >= 0
    clock: np.ndarray  # days since the last purchase (inf: never bought)
    n_buys: np.ndarray  # purchases so far
    last_active: np.ndarray  # last day with a session (NEVER: none)

    def copy(self) -> State:
        return State(**{f.name: getattr(self, f.name).copy() for f in fields(self)})

    def take(self, idx: np.ndarray) -> State:
        return State(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    @staticmethod
    def concat(parts: list[State]) -> State:
        return State(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(State)})


@dataclass(frozen=True)
class Calendar:
    """Per-day shop calendar from the start day on: session multiplier and promotion flag, shape ``(n_days,)``."""

    mult: np.ndarray
    promo: np.ndarray


def make_calendar(start: datetime, n_days: int) -> Calendar:
    """Weekends lift sessions by 10%; the 11th and 18th of each month are promotion days (x1.5)."""
    dates = [start + timedelta(days=d) for d in range(n_days)]
    weekend = np.array([dt.weekday() >= 5 for dt in dates])
    promo = np.array([dt.day in (11, 18) for dt in dates])
    mult = np.where(weekend, 1.1, 1.0) * np.where(promo, 1.5, 1.0)
    return Calendar(mult=mult, promo=promo)


def draw_users(rng: np.random.Generator, n: int, days: int, n_categories: int) -> Users:
    """Draw the hidden traits of ``n`` users.

    Mix: 30% never buy (window shoppers: they fav more and cart less), 15% loyal repeat buyers with short
    cycles (7-30 days), the rest occasional buyers; 35% lapse at some point after joining. Join days are
    front-loaded over the simulated period. Purchase propensity is correlated with the cart tendency, so
    observable carts carry part of the hidden propensity.
    """
    u = rng.random((3, n))
    z = rng.normal(0.0, 1.0, (8, n))
    join = np.floor(u[0] ** 2 * days).astype(np.int32)
    base = np.exp(np.log(0.2) + 0.7 * z[0])
    lapses = u[1] < 0.35
    lapse_day = np.where(lapses, join + rng.exponential(40.0, n), np.inf)
    lapse_keep = np.exp(-1.0 / rng.uniform(3.0, 15.0, n))
    never, loyal = u[2] < 0.30, u[2] > 0.85
    cart_aff = np.exp(0.5 * z[1]) * np.where(never, 0.3, 1.0)
    fav_aff = np.exp(0.5 * z[2]) * np.where(never, 1.5, 1.0)
    buy = np.exp(0.45 * z[1] + 0.25 * z[3]) * np.where(loyal, 1.5, 1.0) * np.where(never, 0.0, 1.0)
    rep = np.where(loyal, rng.uniform(0.6, 1.0, n), rng.uniform(0.0, 0.25, n))
    cycle = np.where(loyal, rng.uniform(7.0, 30.0, n), rng.uniform(30.0, 90.0, n))
    return Users(
        join=join,
        base=base,
        lapse_day=lapse_day,
        lapse_keep=lapse_keep,
        buy=buy,
        rep=rep,
        cycle=cycle,
        width=0.25 * cycle,
        ad_aff=np.exp(0.6 * z[4]),
        fav_aff=fav_aff,
        cart_aff=cart_aff,
        amount_mu=np.log(45.0) + 0.5 * z[5],
        home_cat=rng.integers(0, n_categories, n, dtype=np.int32),
    )


def initial_state(users: Users) -> State:
    """State at the start of day 0 (users joining on day 0 start with their join boost)."""
    n = users.join.shape[0]
    return State(
        act=np.where(users.join == 0, JOIN_BOOST * users.base, 0.0),
        intent=np.zeros(n),
        clock=np.full(n, np.inf),
        n_buys=np.zeros(n, dtype=np.int32),
        last_active=np.full(n, NEVER, dtype=np.int32),
    )


def need(users: Users, state: State) -> np.ndarray:
    """Repurchase pressure in [0, 1]: a Gaussian bump of the clock around the user's cycle (0 if never bought)."""
    z = (state.clock - users.cycle) / users.width
    return np.exp(-0.5 * z * z)


def session_prob(users: Users, state: State, cal_mult: float, nd: np.ndarray | None = None) -> np.ndarray:
    """Probability of a session day, shape ``(n,)``; ``nd`` is :func:`need` if already computed."""
    nd = need(users, state) if nd is None else nd
    rate = cal_mult * state.act * (1.0 + K_INTENT * state.intent + K_NEED * users.rep * nd)
    return -np.expm1(-rate)


def ad_prob(users: Users) -> np.ndarray:
    """Probability that a session comes from an ad click, shape ``(n,)``."""
    return np.minimum(0.10 * users.ad_aff, 0.45)


def cart_prob(users: Users, state: State, is_ad: np.ndarray | bool, nd: np.ndarray | None = None) -> np.ndarray:
    """Probability of a cart in a session (higher with intent, near the repurchase cycle, after an ad click)."""
    nd = need(users, state) if nd is None else nd
    rate = users.cart_aff * (0.03 + 0.20 * state.intent + 0.5 * users.rep * nd + 0.08 * is_ad)
    return -np.expm1(-rate)


def no_buy_factors(
    users: Users, state: State, nd: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Factors of the probability of no purchase in a session: ``1 - h = base * ad**is_ad * cart**has_cart``.

    The purchase rate is ``buy * (H_BASE + H_INTENT * intent + H_AD * is_ad + H_CART * cart + H_NEED * rep
    * need)``; the three returned arrays (shape ``(n,)``) are ``exp(-buy * rate at no ad, no cart)``,
    ``exp(-buy * H_AD)`` and ``exp(-buy * H_CART)``.
    """
    nd = need(users, state) if nd is None else nd
    base = np.exp(-users.buy * (H_BASE + H_INTENT * state.intent + H_NEED * users.rep * nd))
    return base, np.exp(-users.buy * H_AD), np.exp(-users.buy * H_CART)


def hazard(
    users: Users, state: State, is_ad: np.ndarray | bool, cart: np.ndarray | bool, nd: np.ndarray | None = None
) -> np.ndarray:
    """Probability of a purchase in a session with the given ad click / cart flags, shape ``(n,)``."""
    base, ad, crt = no_buy_factors(users, state, nd)
    return 1.0 - base * np.where(is_ad, ad, 1.0) * np.where(cart, crt, 1.0)


@dataclass(frozen=True)
class Sessions:
    """The content of one day's sessions; arrays of shape ``(m,)`` for the m users with a session.

    ``channel`` and ``visit`` only matter for the emitted rows and are ``None`` when drawn with
    ``content=False`` (as the ground-truth paths do).
    """

    is_ad: np.ndarray  # bool: the session came from an ad click
    n_views: np.ndarray  # int: views of items of one category (>= 1)
    fav: np.ndarray  # bool
    cart: np.ndarray  # bool
    intent_after: np.ndarray  # float: intent after the session (hidden jump included)
    hazard: np.ndarray  # float: probability of a purchase in this session
    channel: np.ndarray | None  # int8 channel code
    visit: np.ndarray | None  # bool: an explicit visit row opens the session


def _other_channel(rng: np.random.Generator, intent: np.ndarray, promo: bool) -> np.ndarray:
    """Channel of a session that did not come from an ad: search (more likely with intent), recommend,
    live, promo (much more likely on promotion days) or other."""
    m = intent.shape[0]
    w_search = 0.28 + 0.05 * np.minimum(intent, 2.0)
    w = (0.30, 0.07, 0.25 if promo else 0.04, 0.10)
    x = rng.random(m) * (w_search + sum(w))
    channel = np.full(m, CH_OTHER, dtype=np.int8)
    edge = w_search + w[0] + w[1] + w[2]
    for code, width in ((CH_PROMO, w[2]), (CH_LIVE, w[1]), (CH_RECOMMEND, w[0])):
        channel[x < edge] = code
        edge = edge - width
    channel[x < w_search] = CH_SEARCH
    return channel


@dataclass(frozen=True)
class Browsing:
    """The part of a session's content that does not branch in the ground truth; arrays of shape ``(m,)``."""

    n_views: np.ndarray  # int: views of items of one category (>= 1; more with intent: comparison shopping)
    fav: np.ndarray  # bool
    noise: np.ndarray  # float: hidden multiplier of the intent jump


def draw_browsing(rng: np.random.Generator, users: Users, state: State) -> Browsing:
    """Draw views, fav and the hidden intent noise of sessions of the given users."""
    m = state.act.shape[0]
    intent = state.intent
    mean_extra = 1.3 + 1.6 * np.minimum(intent, 4.0)  # geometric number of extra views with this mean
    extra = np.floor(np.log1p(-rng.random(m)) / np.log1p(-1.0 / (1.0 + mean_extra)))
    n_views = 1 + np.minimum(extra, 14).astype(np.int64)
    fav = rng.random(m) < -np.expm1(-users.fav_aff * (0.05 + 0.12 * intent))
    noise = np.exp(rng.normal(0.0, 0.35, m))
    return Browsing(n_views, fav, noise)


def intent_after(state: State, b: Browsing, is_ad: np.ndarray | bool, cart: np.ndarray | bool) -> np.ndarray:
    """Intent right after a session: it jumps with views, fav, cart and an ad click, times hidden noise."""
    return state.intent + b.noise * (0.10 + 0.03 * b.n_views + 0.3 * b.fav + 0.8 * cart + 1.0 * is_ad)


def draw_sessions(
    rng: np.random.Generator,
    users: Users,
    state: State,
    promo: bool,
    *,
    content: bool = True,
    nd: np.ndarray | None = None,
) -> Sessions:
    """Draw the content of sessions of the given users (all arrays given are already subset).

    ``nd`` is :func:`need` if already computed. With ``content=False`` channel and visit are not drawn.
    """
    m = state.act.shape[0]
    nd = need(users, state) if nd is None else nd
    is_ad = rng.random(m) < ad_prob(users)
    cart = rng.random(m) < cart_prob(users, state, is_ad, nd)
    b = draw_browsing(rng, users, state)
    h = hazard(users, state, is_ad, cart, nd)
    channel = visit = None
    if content:
        channel = np.where(is_ad, np.int8(CH_AD), _other_channel(rng, state.intent, promo)).astype(np.int8)
        visit = rng.random(m) < 0.5
    return Sessions(is_ad, b.n_views, b.fav, cart, intent_after(state, b, is_ad, cart), h, channel, visit)


def overnight(users: Users, state: State, day: int) -> None:
    """The deterministic part of the night after ``day`` (in place): intent decays, the repurchase clock
    ticks, engagement moves towards its target (base level, or 0 once lapsed; the join boost on join day)."""
    state.intent *= INTENT_DECAY
    state.clock += 1.0
    nxt = day + 1
    lapsed = nxt >= users.lapse_day
    target = np.where(lapsed, 0.0, users.base)
    keep = np.where(lapsed, users.lapse_keep, ACT_REVERT)
    act = target + (state.act - target) * keep
    act = np.where(nxt > users.join, act, 0.0)
    state.act = np.where(nxt == users.join, JOIN_BOOST * users.base, act)


def advance(
    users: Users,
    state: State,
    day: int,
    idx: np.ndarray | None = None,
    sessions: Sessions | None = None,
    bought: np.ndarray | None = None,
) -> None:
    """Move ``state`` (in place) from the start of ``day`` to the start of ``day + 1``.

    ``idx`` are the positions of users with a session today, ``sessions`` their content and ``bought`` the
    boolean mask (over ``idx``) of those who purchased. With ``idx=None`` nobody had a session: the update is
    then deterministic.
    """
    if idx is not None and sessions is not None:
        state.intent[idx] = sessions.intent_after
        state.last_active[idx] = day
        state.act[idx] += SESSION_ACT_BOOST * users.base[idx]
        if bought is not None and bought.any():
            b = idx[bought]
            state.intent[b] *= INTENT_AFTER_BUY
            state.clock[b] = 0.0
            state.n_buys[b] += 1
    overnight(users, state, day)


def advance_sessions(users: Users, state: State, day: int, intents: list[np.ndarray]) -> list[State]:
    """States at the start of ``day + 1`` if every user had a session without purchase on ``day``, one per
    array of post-session intents given (the branches differ only in intent). Same dynamics as
    :func:`advance`; ``state`` is not changed."""
    common = state.copy()
    common.last_active[:] = day
    common.act += SESSION_ACT_BOOST * users.base
    overnight(users, common, day)
    return [replace(common, intent=ia * INTENT_DECAY) for ia in intents]


def step_day(
    rng: np.random.Generator, users: Users, state: State, day: int, cal: Calendar
) -> tuple[np.ndarray, Sessions, np.ndarray]:
    """Simulate one day for every user and advance ``state`` (in place) to the next day.

    Returns ``(idx, sessions, bought)``: positions of users with a session, their session content
    (with channel and visit) and the mask over ``idx`` of those who purchased.
    """
    nd = need(users, state)
    s = session_prob(users, state, cal.mult[day], nd)
    idx = np.flatnonzero(rng.random(state.act.shape[0]) < s)
    sessions = draw_sessions(rng, users.take(idx), state.take(idx), bool(cal.promo[day]), nd=nd[idx])
    bought = rng.random(idx.shape[0]) < sessions.hazard
    advance(users, state, day, idx, sessions, bought)
    return idx, sessions, bought
