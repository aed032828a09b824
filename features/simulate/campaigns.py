"""True campaign effects in the simulated shop: what an action does to a user's hidden state, and its true uplift.

A campaign action is sent at the cutoff ``as_of`` (the start of day ``D``) and acts through the latent process of
:mod:`features.simulate.process`, so its effect flows through sessions, carts and purchases like any other cause:

- **intent dose** (``intent_dose``, in units of intent; an ad click adds about 1.0): the message brings the user
  back; more intent means more sessions, carts and purchases, fading overnight (x0.55 a day) like any intent;
- **purchase gain** (``buy_gain``): the purchase propensity ``buy`` is multiplied by ``1 + gain`` on the days of
  the action's window (a coupon makes each session more likely to end in a purchase); 0 for never-buyers;
- **engagement dose** (``act_dose``, in units of the user's base engagement): a win-back message lifts a lapsing
  user's engagement, which then decays at the user's own lapse rate, so fewer lapsing buyers go silent.

Heterogeneity, all from the hidden state at ``as_of``:

- a user inside the action's **decision window** (:func:`decision_window`) gets the full dose; anyone else
  ``outside_window`` of it (default 20%);
- a user who would act anyway gets little: every positive dose is multiplied by ``1 / (1 + (readiness /
  anyway_readiness) ** 4)`` with ``readiness = intent + (K_NEED / K_INTENT) * rep * need`` (the user's own
  short-term intent plus repurchase pressure, on the intent scale of the session rate): half the dose at
  ``anyway_readiness`` (1.0, about the intent a cart session leaves), a sixth at 1.5 times that, 6% at twice;
- never-buyers cannot respond to the purchase actions, and users with no engagement left respond only to an
  engagement dose (an intent dose needs sessions to act through);
- a share ``annoyed_share`` (5%) of users are annoyed by any message: no positive dose, engagement cut by
  ``annoyed_visit_cut`` (it then moves back to its course at the usual rates) and ``buy`` cut by
  ``annoyed_buy_cut`` in the window: a negative effect.

**Conversion** is a purchase on days ``D .. D + window_days - 1`` (``[as_of, as_of + window_days)``), for
``win_back`` any session at all (a visit or a purchase ends the lapse). :func:`true_uplift` gives both potential
outcomes of every assigned user from the same hidden state: exactly for ``win_back`` (no session is a product of
deterministic steps, :func:`features.simulate.truth.p_lapse`) and by the Rao-Blackwellised Monte Carlo of
:func:`features.simulate.truth.p_buy` for the purchase actions, run on both arms with common random numbers
(:func:`features.simulate.paired.paired_p_buy`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from features.simulate import process as proc
from features.simulate.paired import paired_p_buy
from features.simulate.replay import Marks
from features.simulate.truth import p_lapse

CAMPAIGN_ACTIONS: tuple[str, ...] = ("coupon_24h", "ad_retarget", "repurchase_reminder", "win_back", "nurture")
"""The actions the simulated shop responds to (the names of the activation rules)."""
VISIT_ACTIONS: frozenset[str] = frozenset({"win_back"})
"""Actions whose conversion is any visit or purchase (ending a lapse) rather than a purchase."""
UNTREATED = -1
"""Action code of a user that gets no action."""


def _frozen(values: dict[str, float | int]) -> Mapping[str, float | int]:
    return MappingProxyType(values)


class CampaignEffectsError(ValueError):
    """Invalid campaign effect sizes; the message says which field and why."""


@dataclass(frozen=True)
class CampaignEffects:
    """Sizes of the true campaign effects (see the module docstring for how each acts).

    ``window_days``: the conversion window per action, whole days from ``as_of`` (also the days ``buy_gain`` and
    the annoyed ``buy`` cut last). ``intent_dose`` (intent units), ``buy_gain`` (relative rise of ``buy``) and
    ``act_dose`` (multiples of base engagement) per action; actions not listed get 0. ``outside_window``,
    ``anyway_readiness``, ``annoyed_share``, ``annoyed_visit_cut`` and ``annoyed_buy_cut`` are shares or scales
    as documented in the module docstring.

    Defaults: windows of 1 day (coupon_24h), 2 (ad_retarget) and 7 (repurchase_reminder, win_back, nurture);
    intent doses 0.3 (coupon_24h), 1.0 (ad_retarget, like an ad click), 0.6 (repurchase_reminder), 0.3
    (nurture); coupon_24h doubles ``buy`` in its window; win_back adds 0.1 x base engagement. On a 20k-user,
    120-day shop these give the in-window users a true uplift of about +0.03 (coupon_24h, from 0.05), +0.04
    (ad_retarget, from 0.06), +0.03 (repurchase_reminder, from 0.22), +0.13 (win_back, from 0.18) and +0.008
    (nurture, from 0.02), and a few thousandths to users outside their window.
    """

    window_days: Mapping[str, int] = field(
        default_factory=lambda: _frozen(
            {"coupon_24h": 1, "ad_retarget": 2, "repurchase_reminder": 7, "win_back": 7, "nurture": 7}
        )
    )
    intent_dose: Mapping[str, float] = field(
        default_factory=lambda: _frozen(
            {"coupon_24h": 0.3, "ad_retarget": 1.0, "repurchase_reminder": 0.6, "nurture": 0.3}
        )
    )
    buy_gain: Mapping[str, float] = field(default_factory=lambda: _frozen({"coupon_24h": 1.0}))
    act_dose: Mapping[str, float] = field(default_factory=lambda: _frozen({"win_back": 0.1}))
    outside_window: float = 0.2
    anyway_readiness: float = 1.0
    annoyed_share: float = 0.05
    annoyed_visit_cut: float = 0.5
    annoyed_buy_cut: float = 0.5

    def __post_init__(self) -> None:
        for name in ("window_days", "intent_dose", "buy_gain", "act_dose"):
            table = dict(getattr(self, name))
            unknown = sorted(set(table) - set(CAMPAIGN_ACTIONS))
            if unknown:
                raise CampaignEffectsError(f"CampaignEffects.{name} names unknown action(s) {unknown}")
            if any(not np.isfinite(v) or v < 0 for v in table.values()):
                raise CampaignEffectsError(f"CampaignEffects.{name} values must be finite and >= 0, got {table}")
            object.__setattr__(self, name, MappingProxyType(table))
        missing = [a for a in CAMPAIGN_ACTIONS if a not in self.window_days]
        bad = {a: w for a, w in self.window_days.items() if not isinstance(w, int) or isinstance(w, bool) or w < 1}
        if missing or bad:
            raise CampaignEffectsError(
                f"CampaignEffects.window_days needs a whole number >= 1 of days for every "
                f"action; missing {missing}, bad {bad}"
            )
        for name in ("outside_window", "annoyed_share", "annoyed_visit_cut", "annoyed_buy_cut"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CampaignEffectsError(f"CampaignEffects.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not self.anyway_readiness > 0:
            raise CampaignEffectsError(f"CampaignEffects.anyway_readiness must be > 0, got {self.anyway_readiness!r}")

    def code_of(self, action: str) -> int:
        """Position of ``action`` in :data:`CAMPAIGN_ACTIONS`; raises :class:`CampaignEffectsError` if unknown."""
        if action not in CAMPAIGN_ACTIONS:
            raise CampaignEffectsError(f"unknown action {action!r}; actions are {list(CAMPAIGN_ACTIONS)}")
        return CAMPAIGN_ACTIONS.index(action)

    @property
    def max_window_days(self) -> int:
        return max(self.window_days.values())


def decision_window(
    action: str, users: proc.Users, state: proc.State, marks: Marks, day: int, window_days: int = 7
) -> np.ndarray:
    """Whether each user is inside ``action``'s decision window at the start of ``day``, bool shape ``(n,)``.

    ``coupon_24h``: a fav or cart on day ``day - 1`` (within 24 h of ``as_of``) and no purchase since;
    ``ad_retarget``: an ad-click session 1 to 3 days back and no purchase since; ``repurchase_reminder``: a buyer
    whose days since the last purchase are within ``[0.8, 1.2)`` x the hidden cycle length; ``win_back``: a buyer
    whose engagement is decaying (the lapse day is before the ``window_days`` window ends); ``nurture``: a user
    who never bought with a session in the last 15 days (the A layer).
    """
    last_buy = day - state.clock  # -inf for users who never bought
    if action == "coupon_24h":
        return (marks.fav_cart == day - 1) & (last_buy < day - 1)
    if action == "ad_retarget":
        return (marks.ad >= day - 3) & (marks.ad <= day - 1) & (last_buy < marks.ad)
    if action == "repurchase_reminder":
        return (state.n_buys > 0) & (state.clock >= 0.8 * users.cycle) & (state.clock < 1.2 * users.cycle)
    if action == "win_back":
        return (state.n_buys > 0) & (users.lapse_day < day + window_days)
    if action == "nurture":
        return (state.n_buys == 0) & (state.last_active >= day - 15)
    raise CampaignEffectsError(f"unknown action {action!r}; actions are {list(CAMPAIGN_ACTIONS)}")


def readiness(users: proc.Users, state: proc.State) -> np.ndarray:
    """How close each user is to acting anyway, on the intent scale: ``intent + (K_NEED / K_INTENT) * rep * need``."""
    return state.intent + (proc.K_NEED / proc.K_INTENT) * users.rep * proc.need(users, state)


@dataclass(frozen=True)
class Treated:
    """The hidden state of a block of users under their actions, shape ``(n,)`` everywhere.

    ``state``: the latent state at the start of day ``day`` after the message; ``buy``: the purchase propensity on
    the days of the window (the untreated ``buy`` for untreated users); ``window_days``: days the window lasts (0:
    untreated); ``in_window``: inside the action's decision window.
    """

    state: proc.State
    buy: np.ndarray
    window_days: np.ndarray
    in_window: np.ndarray

    def users_on(self, users: proc.Users, j: int) -> proc.Users:
        """The traits in force on day ``day + j``: the window's ``buy`` while the user's window is open."""
        return replace(users, buy=np.where(j < self.window_days, self.buy, users.buy))


def treat(
    users: proc.Users,
    state: proc.State,
    marks: Marks,
    day: int,
    codes: np.ndarray,
    annoyed: np.ndarray,
    effects: CampaignEffects,
) -> Treated:
    """Apply each user's action (``codes``: index into :data:`CAMPAIGN_ACTIONS`, :data:`UNTREATED` for none) at
    the start of ``day``; ``annoyed`` (bool) marks the users who react badly to any message. ``state`` is not
    changed. All arrays have shape ``(n,)``."""
    st = state.copy()
    buy = users.buy.copy()
    window = np.zeros(codes.shape[0], dtype=np.int32)
    in_window = np.zeros(codes.shape[0], dtype=bool)
    damp = 1.0 / (1.0 + (readiness(users, state) / effects.anyway_readiness) ** 4)
    for code, action in enumerate(CAMPAIGN_ACTIONS):
        mine = codes == code
        if not mine.any():
            continue
        inside = decision_window(action, users, state, marks, day, effects.window_days[action])
        in_window |= mine & inside
        window[mine] = effects.window_days[action]
        good = mine & ~annoyed
        scale = np.where(inside, 1.0, effects.outside_window) * damp
        st.intent = np.where(good, st.intent + effects.intent_dose.get(action, 0.0) * scale, st.intent)
        st.act = np.where(good, st.act + effects.act_dose.get(action, 0.0) * scale * users.base, st.act)
        buy = np.where(good, buy * (1.0 + effects.buy_gain.get(action, 0.0) * scale), buy)
    bad = (codes != UNTREATED) & annoyed
    st.act = np.where(bad, st.act * (1.0 - effects.annoyed_visit_cut), st.act)
    buy = np.where(bad, buy * (1.0 - effects.annoyed_buy_cut), buy)
    return Treated(state=st, buy=buy, window_days=window, in_window=in_window)


@dataclass(frozen=True)
class Uplift:
    """True potential outcomes of assigned users, shape ``(n,)`` (NaN where the code is :data:`UNTREATED`):
    probability of converting in the action's window without and with the action, the window in days and the
    decision-window flag."""

    p_untreated: np.ndarray
    p_treated: np.ndarray
    window_days: np.ndarray
    in_window: np.ndarray


def true_uplift(
    seed: np.random.SeedSequence,
    users: proc.Users,
    state: proc.State,
    marks: Marks,
    day: int,
    codes: np.ndarray,
    annoyed: np.ndarray,
    effects: CampaignEffects,
    cal: proc.Calendar,
    paths: int,
) -> Uplift:
    """Both potential outcomes of every user with an action code, from the hidden state at the start of ``day``.

    ``win_back``: ``1 - p_lapse`` (exact); other actions: :func:`features.simulate.paired.paired_p_buy` with
    ``paths`` Rao-Blackwellised paths per user, both arms from the same draws (common random numbers; one stream
    per action, spawned from ``seed``).
    ``cal`` must cover days ``day .. day + max window - 1``.
    """
    n = codes.shape[0]
    treated = treat(users, state, marks, day, codes, annoyed, effects)
    p0, p1 = np.full(n, np.nan), np.full(n, np.nan)
    for code, action in enumerate(CAMPAIGN_ACTIONS):
        pos = np.flatnonzero(codes == code)
        if pos.size == 0:
            continue
        w = effects.window_days[action]
        u0, s0 = users.take(pos), state.take(pos)
        u1, s1 = treated.users_on(users, 0).take(pos), treated.state.take(pos)
        if action in VISIT_ACTIONS:
            p0[pos] = 1.0 - p_lapse(u0, s0, day, w, cal)
            p1[pos] = 1.0 - p_lapse(u1, s1, day, w, cal)
        else:
            rng = np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, code)))
            p0[pos], p1[pos] = paired_p_buy(rng, (u0, u1), (s0, s1), day, w, cal, paths)
    return Uplift(p0, p1, np.where(codes == UNTREATED, 0, treated.window_days), treated.in_window)
