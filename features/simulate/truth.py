"""Ground-truth probabilities from the simulator's hidden state at a cutoff.

Both functions take the state at the start of day ``day`` (the cutoff ``T`` is that midnight) and look at
days ``day .. day + n_days - 1``, i.e. the window ``(T, T + n_days]`` (no event is ever stamped exactly
at midnight). They use the same dynamics as the realised event stream (:mod:`features.simulate.process`).
"""

from __future__ import annotations

import numpy as np

from features.simulate.process import (
    Calendar,
    State,
    Users,
    ad_prob,
    advance,
    advance_sessions,
    cart_prob,
    draw_browsing,
    draw_sessions,
    intent_after,
    need,
    no_buy_factors,
    session_prob,
)

MIN_BRANCH_WEIGHT = 1e-12  # branches lighter than this (relative to one path) are dropped


def p_lapse(users: Users, state: State, day: int, n_days: int, cal: Calendar) -> np.ndarray:
    """Exact probability of no session, hence no event at all, on days ``day .. day + n_days - 1``.

    Every event belongs to a session and without a session the state moves deterministically, so the
    probability is the product of ``1 - s`` along the session-free path. Returns shape ``(n,)``.
    """
    st = state.copy()
    log_none = np.zeros(st.act.shape[0])
    for j in range(n_days):
        log_none += np.log1p(-session_prob(users, st, cal.mult[day + j]))
        advance(users, st, day + j)
    return np.exp(log_none)


def _expected_hazard(users: Users, state: State, nd: np.ndarray) -> np.ndarray:
    """Purchase probability of a session averaged exactly over the ad-click and cart coins, shape ``(n,)``."""
    base, f_ad, f_cart = no_buy_factors(users, state, nd)
    pa, pc0, pc1 = ad_prob(users), cart_prob(users, state, False, nd), cart_prob(users, state, True, nd)
    no_ad = (1.0 - pc0) + pc0 * f_cart
    with_ad = f_ad * ((1.0 - pc1) + pc1 * f_cart)
    return 1.0 - base * ((1.0 - pa) * no_ad + pa * with_ad)


def p_buy(
    rng: np.random.Generator,
    users: Users,
    state: State,
    day: int,
    n_days: int,
    cal: Calendar,
    paths: int,
    branch_days: int = 2,
) -> np.ndarray:
    """Probability of at least one purchase on days ``day .. day + n_days - 1``, shape ``(n,)``.

    Rao-Blackwellised Monte Carlo. The purchase coin is never sampled: each path keeps the weight of
    "no purchase so far" (``prod (1 - h)``), the only branch on which the event can still fail to happen.
    On the first ``branch_days`` days every outcome of the session coin and of the ad-click and cart coins
    is followed as a weighted branch (5 per path and day); later days but the last sample those coins; on
    the last day they are integrated out exactly (factor ``1 - s E[h]``). Only the views, fav and the
    hidden intent jump are sampled, ``paths`` times per user. Never-buyers and users who have not joined
    by the end of the window get exactly 0.
    """
    n = state.act.shape[0]
    out = np.zeros(n)
    cand = np.flatnonzero((users.buy > 0) & (users.join <= day + n_days - 1))
    if cand.size == 0:
        return out
    row_user = np.tile(cand, paths)
    st = state.take(row_user)
    weight = np.full(row_user.shape[0], 1.0 / paths)
    surv = np.ones(row_user.shape[0])
    for j in range(n_days):
        d, promo = day + j, bool(cal.promo[day + j])
        us = users.take(row_user)
        nd = need(us, st)
        s = session_prob(us, st, cal.mult[d], nd)
        if j == n_days - 1:
            surv *= 1.0 - s * _expected_hazard(us, st, nd)
            break
        if j >= branch_days:
            idx = np.flatnonzero(rng.random(row_user.shape[0]) < s)
            sess = draw_sessions(rng, us.take(idx), st.take(idx), promo, content=False)
            surv[idx] *= 1.0 - sess.hazard
            advance(us, st, d, idx, sess, None)
            continue
        pa = ad_prob(us)
        base, f_ad, f_cart = no_buy_factors(us, st, nd)
        kids_weight, kids_surv, kids_intent = [], [], []
        for ad in (False, True):
            pc = cart_prob(us, st, ad, nd)
            for cart in (False, True):
                kids_weight.append(weight * s * (pa if ad else 1.0 - pa) * (pc if cart else 1.0 - pc))
                kids_surv.append(surv * base * (f_ad if ad else 1.0) * (f_cart if cart else 1.0))
                kids_intent.append(intent_after(st, draw_browsing(rng, us, st), ad, cart))
        kids_state = advance_sessions(us, st, d, kids_intent)
        advance(us, st, d)
        weight = np.concatenate([weight * (1.0 - s), *kids_weight])
        surv = np.concatenate([surv, *kids_surv])
        st = State.concat([st, *kids_state])
        row_user = np.tile(row_user, 5)
        keep = np.flatnonzero(weight > MIN_BRANCH_WEIGHT / paths)
        if keep.shape[0] < weight.shape[0]:
            st, surv, row_user, weight = st.take(keep), surv[keep], row_user[keep], weight[keep]
    p_none = np.bincount(row_user, weights=weight * surv, minlength=n)
    out[cand] = 1.0 - p_none[cand]
    return np.clip(out, 0.0, 1.0)
