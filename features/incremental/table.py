"""The feature table of a :class:`features.incremental.state.FeatureState`: the derived columns of
:mod:`features.spec.aggregate` and :mod:`features.spec.rhythm` computed from the kept sums, vectorized over users.

The result has the columns, dtypes and row order of :func:`features.build.builder.build_features` at the state's
cutoff (one row per user with an event before it, sorted by ``user_id``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from features.incremental.pairs import key_users, per_user_max_distinct_windows
from features.incremental.state import NEVER_TS, NO_DAY, NO_TS, FeatureState
from features.spec.definition import (
    AIPL_BASE,
    AIPL_LAYERS,
    BEHAVIOR_CODES,
    FEATURE_TABLE_KEY,
    RECENCY_BEHAVIORS,
    FeatureSpec,
    count_column,
    integer_columns,
    output_columns,
    trend_column,
)
from features.spec.table import SECONDS_PER_DAY

_MAX_TERM = 1.0 - 1e-9  # as features.spec.aggregate
_FAV, _CART, _BUY = BEHAVIOR_CODES["fav"], BEHAVIOR_CODES["cart"], BEHAVIOR_CODES["buy"]


def _age(as_of_us: int, ts: np.ndarray, never: int) -> np.ndarray:
    """Fractional days from ``ts`` to the cutoff as the spec computes them (NaN where ``ts == never``)."""
    out = np.full(ts.shape, np.nan)
    seen = ts != never
    out[seen] = np.maximum((as_of_us - ts[seen]).astype(np.float64) / 1e6, 0.0) / SECONDS_PER_DAY
    return out


def _ratio(num: np.ndarray, den: np.ndarray, when: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    out[when] = num[when] / den[when]
    return out


def feature_frame(state: FeatureState) -> pd.DataFrame:
    """The feature table at ``state.as_of_us`` (see the module docstring). The per-user arrays are first put in row
    order (one gather per array, not one per column), then the columns are computed in that order."""
    s, spec, a = state, state.spec, state.as_of_us
    rows = s.order
    if spec.lookback_days:
        since_last = _age(a, s.per_user["last_ts"][:, 5], NEVER_TS)
        rows = rows[since_last[rows] <= spec.lookback_days]
    pool = ThreadPoolExecutor(1, thread_name_prefix="feature-table")  # numpy frees the GIL: both cores work
    pairs = pool.submit(_pair_columns, s)
    p = {name: values[rows] for name, values in s.per_user.items()}
    win = {key: values[rows] for key, values in s.win.items()}
    n_users = len(rows)
    f: dict[str, np.ndarray] = {}
    last = _age(a, p["last_ts"], NEVER_TS)
    first = _age(a, p["first_ts"], NO_TS)
    for i, beh in enumerate(RECENCY_BEHAVIORS):
        f[f"days_since_last_{beh}"] = last[:, i]
    f["days_since_last_event"], f["days_since_first_event"] = last[:, 5], first[:, 5]

    def counts(w: int) -> np.ndarray:
        return win[("n", w)]

    for w in spec.windows:
        n = counts(w)
        for i, beh in enumerate(RECENCY_BEHAVIORS):
            f[count_column(beh, w)] = n[:, i]
        f[count_column("event", w)] = n.sum(axis=1)
    for w in spec.active_day_windows:
        f[f"active_days_{w}d"] = win[("active", w)][:, 0]
    dd = spec.distinct_days
    f[f"distinct_items_{dd}d"], f[f"distinct_categories_{dd}d"] = p["distinct_item"], p["distinct_category"]
    fc = counts(spec.favcart_days)
    f[f"favcart_count_{spec.favcart_days}d"] = fc[:, _FAV] + fc[:, _CART]
    for w in spec.ad_windows:
        f[count_column("ad", w)] = win[("ad", w)][:, 0]
    f["days_since_last_ad"] = last[:, 6]
    chan = win[("chan", spec.channel_share_days)]
    has_chan = chan[:, 0] > 0
    cd = spec.channel_share_days
    f[f"active_channel_share_{cd}d"] = _ratio(chan[:, 1].astype(float), chan[:, 0].astype(float), has_chan)
    f[f"passive_channel_share_{cd}d"] = _ratio(chan[:, 2].astype(float), chan[:, 0].astype(float), has_chan)
    for i, layer in enumerate(("browse", "interest", "purchase")):
        f[f"decay_{layer}"] = p["decay"][:, i]
    pw = spec.purchase_days
    f["buy_count"] = p["buy_count"]
    f["purchase_days"] = p["buy_days"]
    f[f"purchase_days_{pw}d"] = win[("bought", pw)][:, 0]
    if s.has_amount:
        f["amount_total"] = p["amount_total"].copy()
        f["amount_mean"] = _ratio(p["amount_total"], p["amount_n"].astype(float), p["amount_n"] > 0)
        f[f"amount_{pw}d"] = win[("amount", pw)][:, 0].copy()
    else:
        f["amount_total"] = f["amount_mean"] = f[f"amount_{pw}d"] = np.full(n_users, np.nan)
    last_buy, n_days = f["days_since_last_buy"], p["buy_days"]
    gap = _ratio(first[:, _BUY] - last_buy, (n_days - 1).astype(float), n_days >= 2)
    f["purchase_gap_mean_days"] = gap
    f["repurchase_cycle_ratio"] = _ratio(last_buy, gap, np.nan_to_num(gap) > 0)
    for i, beh in enumerate(RECENCY_BEHAVIORS):
        f[f"days_since_first_{beh}"] = first[:, i]
    n_active = p["active_n"]
    span = np.where(p["first_day"] == NO_DAY, 0, p["last_day"] - p["first_day"]).astype(float)
    mean_gap = _ratio(span, (n_active - 1).astype(float), n_active >= 2)
    f["active_gap_mean_days"] = mean_gap
    f["active_gap_median_days"] = np.where(n_active >= 2, p["active_median"], np.nan)
    ratio = _ratio(f["days_since_last_event"], mean_gap, np.nan_to_num(mean_gap) > 0)
    f["active_recency_ratio"] = ratio
    f["active_survival"] = np.exp(-ratio)
    f["purchase_gap_median_days"] = np.where(n_days >= 2, p["buy_median"], np.nan)
    f["purchase_survival"] = np.exp(-f["repurchase_cycle_ratio"])
    scale = spec.trend_days / spec.trend_base_days
    recent, both = counts(spec.trend_days), counts(spec.trend_days + spec.trend_base_days)
    for i, beh in enumerate((*RECENCY_BEHAVIORS, "event")):
        a_ = (recent[:, i] if i < 5 else recent.sum(axis=1)).astype(float)
        ab = (both[:, i] if i < 5 else both.sum(axis=1)).astype(float)
        r = (ab - a_) * scale
        f[trend_column(beh, spec)] = (a_ - r) / (a_ + r + 1.0)
    if spec.target_categories:
        for i, beh in enumerate(("view", "cart", "buy")):
            f[f"target_{beh}_count"] = p["target"][:, i]
        browse_age = _age(a, p["target_first_browse"], NO_TS)
        f["category_new"] = ((browse_age <= spec.category_new_days) & (p["target"][:, 2] == 0)).astype(np.int64)
        f["category_regular"] = (p["target"][:, 2] > 0).astype(np.int64)
    interest = counts(spec.interest_days)
    layer = np.select(
        [f[f"purchase_days_{pw}d"] >= 2, f[f"purchase_days_{pw}d"] == 1,
         interest[:, _FAV] + interest[:, _CART] > 0, counts(spec.browse_days).sum(axis=1) > 0],
        ["L", "P", "I", "A"], default="none")
    activity = (spec.browse_weight * f["decay_browse"] + spec.interest_weight * f["decay_interest"]
                + spec.purchase_weight * f["decay_purchase"])
    base = np.select([layer == name for name in AIPL_LAYERS], [AIPL_BASE[name] for name in AIPL_LAYERS])
    f["rule_score"] = base + np.minimum(activity / (activity + spec.rule_score_scale), _MAX_TERM)
    f["aipl_layer"] = layer
    with pool:
        f.update({name: values[rows] for name, values in pairs.result().items()})
        if not s.has_item:
            for name in (f"distinct_items_{dd}d", *(f"max_items_per_category_{w}d" for w in spec.comparison_windows),
                         f"carts_unbought_{spec.cart_unbought_days}d"):
                f[name] = np.zeros(n_users, np.int64)
        f[FEATURE_TABLE_KEY] = s.user_ids[rows]
        names = output_columns(spec)
        given: set[int] = set()
        for name in names:  # an array given to two columns (the missing amounts) is copied for the second
            if id(f[name]) in given:
                f[name] = np.array(f[name], copy=True)
            given.add(id(f[name]))
        half = pool.submit(_typed, f, names[len(names) // 2:], spec)
        data = {**_typed(f, names[:len(names) // 2], spec), **half.result()}
    return pd.DataFrame(data, columns=names, copy=False)  # one block per column, no 2nd copy


def _pair_columns(s: FeatureState) -> dict[str, np.ndarray]:
    """The columns read off the pair states: most distinct items viewed in one category, unbought carts."""
    spec, n_users, k = s.spec, s.n_users, s.night
    out = {}
    views, widest = s.pair_runs("view"), max(spec.comparison_windows)
    inside = [days >= k - widest for _, (days, _) in views]
    users = np.concatenate([key_users(keys[m]) for (keys, _), m in zip(views, inside, strict=True)])
    cats = np.concatenate([cat[m] for (_, (_, cat)), m in zip(views, inside, strict=True)])
    since = np.concatenate([k - days[m] for (_, (days, _)), m in zip(views, inside, strict=True)])  # 1: last day
    counts = per_user_max_distinct_windows(users, cats, since, tuple(spec.comparison_windows), n_users)
    for w in spec.comparison_windows:
        out[f"max_items_per_category_{w}d"] = counts[w]
    keys, (cart_ts, buy_ts) = s.pairs["cart"]
    open_cart = ~(buy_ts >= cart_ts)
    out[f"carts_unbought_{spec.cart_unbought_days}d"] = np.bincount(key_users(keys[open_cart]),
                                                                    minlength=n_users).astype(np.int64)
    return out


def _typed(f: dict[str, np.ndarray], names: list[str], spec: FeatureSpec) -> dict[str, object]:
    """The columns ``names`` of ``f`` (no two the same array) typed as the batch table types them, copied only when
    strided or of another dtype."""
    ints = set(integer_columns(spec))
    data: dict[str, object] = {}
    for name in names:
        col = np.asarray(f[name])
        if name in (FEATURE_TABLE_KEY, "aipl_layer"):
            data[name] = pd.array(col.astype(object), dtype="str")
        else:
            data[name] = np.ascontiguousarray(col, dtype=np.int64 if name in ints else np.float64)
    return data

