"""Both potential outcomes of a purchase window from common random numbers: the true uplift of an action.

:func:`paired_p_buy` is :func:`features.simulate.truth.p_buy` run on two arms at once, the untreated and the treated
hidden state of the same users, with every sampled value shared between the two copies of a path (one
:class:`features.simulate.draws.UserDraws` value per pair of rows). The difference of the arms then comes from the
treatment alone, not from Monte Carlo noise of two independent estimates: identical arms give exactly zero uplift,
and an action that only raises the purchase propensity gives a non-negative uplift for every user.
"""

from __future__ import annotations

from dataclasses import fields

import numpy as np

from features.simulate import process as proc
from features.simulate.draws import UserDraws
from features.simulate.truth import MIN_BRANCH_WEIGHT, _expected_hazard


def _stack(a: proc.Users, b: proc.Users) -> proc.Users:
    return proc.Users(**{f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in fields(a)})


def _subset(s: proc.Sessions, idx: np.ndarray) -> proc.Sessions:
    return proc.Sessions(**{f.name: None if getattr(s, f.name) is None else getattr(s, f.name)[idx] for f in fields(s)})


def paired_p_buy(
    rng: np.random.Generator,
    users: tuple[proc.Users, proc.Users],
    states: tuple[proc.State, proc.State],
    day: int,
    n_days: int,
    cal: proc.Calendar,
    paths: int,
    branch_days: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Probability of at least one purchase on days ``day .. day + n_days - 1`` in each arm, two arrays ``(n,)``.

    ``users`` and ``states`` hold the untreated and the treated traits and latent state of the same ``n`` users
    (arm 0, arm 1). The estimator is that of :func:`features.simulate.truth.p_buy` (every outcome of the session,
    ad-click and cart coins followed as weighted branches on the first ``branch_days`` days, those coins sampled on
    the later days but the last, integrated out on the last day; views, fav and the intent jump sampled ``paths``
    times per user); a pair of rows is dropped only when both its arms weigh less than the pruning threshold.
    """
    n = states[0].act.shape[0]
    out = (np.zeros(n), np.zeros(n))
    joined = users[0].join <= day + n_days - 1
    cand = np.flatnonzero(((users[0].buy > 0) | (users[1].buy > 0)) & joined)
    if cand.size == 0:
        return out
    row_user = np.tile(cand, paths)
    k = row_user.shape[0]
    both = _stack(*users)
    rows = np.concatenate([row_user, row_user + n])  # arm 0 rows, then the same paths in arm 1
    pair = np.tile(np.arange(k), 2)
    st = proc.State.concat(list(states)).take(rows)
    weight = np.full(2 * k, 1.0 / paths)
    surv = np.ones(2 * k)
    for j in range(n_days):
        d, promo = day + j, bool(cal.promo[day + j])
        us = both.take(rows)
        nd = proc.need(us, st)
        s = proc.session_prob(us, st, cal.mult[d], nd)
        if j == n_days - 1:
            surv *= 1.0 - s * _expected_hazard(us, st, nd)
            break
        draws = UserDraws(rng, k).bind(pair)
        if j >= branch_days:
            idx = np.flatnonzero(draws.random(2 * k) < s)
            sess = proc.draw_sessions(draws, us, st, promo, content=False, nd=nd)
            surv[idx] *= 1.0 - sess.hazard[idx]
            proc.advance(us, st, d, idx, _subset(sess, idx), None)
            continue
        pa = proc.ad_prob(us)
        base, f_ad, f_cart = proc.no_buy_factors(us, st, nd)
        kids_weight, kids_surv, kids_intent = [], [], []
        for ad in (False, True):
            pc = proc.cart_prob(us, st, ad, nd)
            for cart in (False, True):
                kids_weight.append(weight * s * (pa if ad else 1.0 - pa) * (pc if cart else 1.0 - pc))
                kids_surv.append(surv * base * (f_ad if ad else 1.0) * (f_cart if cart else 1.0))
                kids_intent.append(proc.intent_after(st, proc.draw_browsing(draws, us, st), ad, cart))
        kids_state = proc.advance_sessions(us, st, d, kids_intent)
        proc.advance(us, st, d)
        weight = np.concatenate([weight * (1.0 - s), *kids_weight])
        surv = np.concatenate([surv, *kids_surv])
        st = proc.State.concat([st, *kids_state])
        rows = np.tile(rows, 5)
        pair = np.concatenate([pair + b * k for b in range(5)])
        heavy = np.zeros(5 * k, dtype=bool)
        np.logical_or.at(heavy, pair, weight > MIN_BRANCH_WEIGHT / paths)
        keep = np.flatnonzero(heavy[pair])
        st, surv, rows, weight = st.take(keep), surv[keep], rows[keep], weight[keep]
        _, pair = np.unique(pair[keep], return_inverse=True)
        k = int(pair.max()) + 1 if pair.size else 0
    p_none = np.bincount(rows, weights=weight * surv, minlength=2 * n)
    for arm in (0, 1):
        p = np.zeros(n)
        p[cand] = 1.0 - p_none[arm * n + cand]
        out[arm][:] = np.clip(p, 0.0, 1.0)
    return out
