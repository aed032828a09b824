"""Readable reason codes: each feature a score's reasons name, as a short phrase with the user's own values.

:func:`phrase` turns one feature name and the user's feature row into a phrase: ``cart_count_1d`` = 2 reads
"carted 2 items in the last day"; ``days_since_last_visit`` = 19 with ``active_gap_mean_days`` = 4.2 reads "no visit
for 19 days, usually every 4". :func:`reason_text` keeps the feature name next to it ("carted 2 items in the last
day (cart_count_1d)"), the form the audience file, ``/lookup``, ``/score`` and the report show.

Every feature family of :mod:`features.spec.definition` is read by its name pattern (windows and spans come from the
name, so any spec's windows work): recency and first-seen days, window counts, active days, distinct items and
categories, comparison shopping, unbought carts, channel shares, decay sums, money and purchase cadence, rhythm gaps,
ratios and survival, trends, target categories, the AIPL rule score and the segment codes of the design matrix,
and the BTYD columns (``btyd_*`` of :mod:`training.btyd.features` and their outputs ``p_alive``,
``expected_purchases_{d}d``, ``clv_{d}d``, ``next_order_date``). Any other name falls back to "<feature> = <value>",
so no feature is left unexplained.

Numbers: counts as integers, days with one decimal (trailing ``.0`` dropped; hours under one day), a user's usual
rhythm ("usually every 4") in whole days, shares and probabilities as whole percentages, money with two decimals.
A missing value (None, NaN) never prints "nan": it reads "never ..." or what it means ("no repeat purchase yet").

Pure functions, no state: the rule of a feature name is parsed once and cached (:func:`columns_read` lists the
columns a phrase reads, so a caller may pass only those).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pandas as pd

from features.segments.segmenter import AIPL_CODES, LIFECYCLE_CODES, RFM_CODES
from features.spec.definition import AIPL_BASE

__all__ = ["columns_read", "phrase", "reason_text", "reason_texts"]

_BEHAVIORS = "view|fav|cart|buy|visit|event"

_COUNT: dict[str, tuple[str, str, str]] = {  # (one, several, none)
    "view": ("viewed 1 item", "viewed {n} items", "viewed nothing"),
    "fav": ("favorited 1 item", "favorited {n} items", "favorited nothing"),
    "cart": ("carted 1 item", "carted {n} items", "carted nothing"),
    "buy": ("bought 1 item", "bought {n} items", "bought nothing"),
    "visit": ("visited once", "visited {n} times", "no visits"),
    "event": ("1 event", "{n} events", "no events"),
    "ad": ("came from an ad once", "came from ads {n} times", "no visits from ads"),
}
_NEVER: dict[str, str] = {
    "view": "never viewed an item", "fav": "never favorited an item", "cart": "never carted an item",
    "buy": "never bought", "visit": "never visited", "event": "no activity yet", "ad": "never came from an ad",
}
_DID: dict[str, str] = {
    "view": "viewed an item", "fav": "favorited an item", "cart": "carted an item", "buy": "bought",
    "visit": "visited", "event": "last active", "ad": "came from an ad",
}
_FIRST: dict[str, str] = {
    "view": "first viewed an item", "fav": "first favorited an item", "cart": "first carted an item",
    "buy": "first bought", "visit": "first visited", "event": "first seen",
}
_RHYTHM: dict[str, tuple[str, str]] = {  # behavior -> (noun, the column of the user's usual gap in days)
    "visit": ("visit", "active_gap_mean_days"),
    "event": ("activity", "active_gap_mean_days"),
    "buy": ("purchase", "purchase_gap_mean_days"),
}
_TREND: dict[str, str] = {
    "view": "views", "fav": "favorites", "cart": "carts", "buy": "purchases", "visit": "visits", "event": "activity",
}
_DECAY: dict[str, tuple[str, str]] = {  # layer -> (what is summed, what none of it reads)
    "browse": ("views and visits", "no recent views or visits"),
    "interest": ("favorites and carts", "no recent favorites or carts"),
    "purchase": ("purchases", "no recent purchases"),
}
_CHANNELS: dict[str, str] = {"active": "search or ads", "passive": "recommendations"}
_LAYERS: dict[str, str] = {
    "L": "L (loyal: repeat buyer)", "P": "P (purchased)", "I": "I (interested: favorited or carted)",
    "A": "A (aware: browsing)", "none": "none (no recent activity)",
}
_STAGES: dict[str, str] = {
    "new": "new (no purchase yet)", "growth": "growth (bought once)", "mature": "mature (bought repeatedly)",
    "silent": "silent (stopped visiting after an order)", "churned": "churned (stopped visiting)",
}
_TARGET: dict[str, tuple[str, str, str]] = {
    "view": ("viewed 1 item", "viewed {n} items", "viewed nothing"),
    "cart": ("carted 1 item", "carted {n} items", "carted nothing"),
    "buy": ("bought 1 item", "bought {n} items", "bought nothing"),
}
_NO_REPEAT = "no repeat purchase yet"
_ONE_DAY = "active on one day only"
_NO_BTYD = "no purchase history"


@dataclass(frozen=True)
class _Rule:
    """How one feature reads: the columns it needs (the feature first) and the phrase of their values."""

    needs: tuple[str, ...]
    render: Callable[..., str]


# ------------------------------------------------------------------------------------------------- public
def phrase(feature: str, row: Mapping[str, Any]) -> str:
    """The phrase of ``feature`` for one user, from ``row`` (feature name -> value: the feature table row, the design
    matrix columns, the segment labels; numpy scalars, None and NaN allowed). Columns the phrase reads beyond the
    feature (the user's usual gap, the AIPL label) are optional. Never empty, never raises on odd values: a value
    it cannot read gives the generic "<feature> = <value>"."""
    rule = _rule(str(feature))
    return _render(rule, str(feature), tuple(_value(row.get(c)) for c in rule.needs))


def reason_text(feature: str, row: Mapping[str, Any]) -> str:
    """``"<phrase> (<feature>)"``: the phrase with the feature name next to it."""
    return f"{phrase(feature, row)} ({feature})"


def columns_read(feature: str) -> tuple[str, ...]:
    """The columns :func:`phrase` reads for ``feature``: the feature itself first, then its context columns."""
    return _rule(str(feature)).needs


def reason_texts(names: Sequence[Sequence[str]], columns: Mapping[str, Any]) -> list[list[str]]:
    """:func:`reason_text` of every reason of n users: ``names[i]`` are user i's reason features (strongest first),
    ``columns`` maps a column name to its n values in the same user order (numpy arrays or lists; a column absent
    here reads as missing). Returns n lists aligned with ``names``. Equal (feature, values) pairs are phrased once,
    so a batch of users costs about a microsecond per reason."""
    done: dict[tuple[Any, ...], str] = {}
    lists: dict[str, list[Any] | None] = {}  # the columns read, as Python lists (one C conversion per column)
    rules: dict[str, _Rule] = {}
    out: list[list[str]] = []
    for i, features in enumerate(names):
        texts = []
        for feature in features:
            rule = rules.get(feature)
            if rule is None:
                rule = rules[feature] = _rule(str(feature))
                for c in rule.needs:
                    if c not in lists:
                        lists[c] = _as_list(columns.get(c))
            values = tuple(None if (col := lists[c]) is None else _value(col[i]) for c in rule.needs)
            key = (feature, *values)
            text = done.get(key)
            if text is None:
                text = done[key] = f"{_render(rule, str(feature), values)} ({feature})"
            texts.append(text)
        out.append(texts)
    return out


# ------------------------------------------------------------------------------------------------- values
def _value(v: Any) -> Any:
    """A row value as a float (numbers; NaN -> None), a str, or None (missing)."""
    if type(v) is float:
        return None if v != v else v
    if v is None or isinstance(v, str):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        try:
            missing = bool(pd.isna(v))
        except (TypeError, ValueError):
            missing = False
        return None if missing else str(v)
    return None if math.isnan(f) else f


def _as_list(column: Any) -> list[Any] | None:
    """A column's values as a Python list (numpy arrays and pandas series converted at C speed), None when absent."""
    if column is None:
        return None
    return column.tolist() if hasattr(column, "tolist") else list(column)


def _render(rule: _Rule, feature: str, values: tuple[Any, ...]) -> str:
    """The rule's phrase, or the generic one when the feature's value is infinite or the rule cannot read it (an
    infinite context value reads as missing)."""
    if values and isinstance(values[0], float) and math.isinf(values[0]):
        return _generic(feature, values[0])
    values = tuple(None if isinstance(v, float) and math.isinf(v) else v for v in values)
    try:
        text = rule.render(*values)
    except (TypeError, ValueError, OverflowError, KeyError):
        text = ""
    return text or _generic(feature, values[0] if values else None)


def _generic(feature: str, v: Any) -> str:
    if v is None:
        return f"{feature}: no value"
    if isinstance(v, str):
        return f"{feature} = {v}"
    return f"{feature} = {_int(v) if float(v).is_integer() else format(v, '.3g')}"


# ------------------------------------------------------------------------------------------------- numbers
def _round(x: float) -> int:
    """Half up (``round`` rounds half to even)."""
    return int(math.floor(x + 0.5))


def _int(x: float) -> str:
    return f"{_round(x):,}"


def _one_decimal(x: float) -> str:
    text = f"{x:,.1f}"
    return text[:-2] if text.endswith(".0") else text


def _days(d: float) -> str:
    """A duration in days: hours under one day, else days with one decimal ("19 days", "2.5 days", "1 day")."""
    if d < 1:
        hours = _round(d * 24)
        if hours < 1:
            return "less than an hour"
        return "1 hour" if hours == 1 else ("1 day" if hours == 24 else f"{hours} hours")
    text = _one_decimal(d)
    return "1 day" if text == "1" else f"{text} days"


def _usual(gap: float) -> str:
    """The user's usual rhythm in whole days: "usually every 4", "usually daily"."""
    n = max(1, _round(gap))
    return "usually daily" if n == 1 else f"usually every {n:,}"


def _pct(p: float) -> str:
    if 0 < p < 0.005:
        return "under 1%"
    if 0.995 < p < 1:
        return "over 99%"
    return f"{p:.0%}"


def _money(x: float) -> str:
    return f"{x:,.2f}"


def _small(x: float) -> str:
    """Expected counts: two decimals below 0.1, else one ("0.04", "1.2", "3")."""
    if 0 < abs(x) < 0.095:
        return f"{x:.2f}"
    return _one_decimal(x)


def _window(w: int) -> str:
    return "the last day" if w == 1 else f"the last {w:,} days"


def _next(w: int) -> str:
    return "the next day" if w == 1 else f"the next {w:,} days"


def _counted(forms: tuple[str, str, str], v: Any) -> str:
    n = 0 if v is None else _round(v)
    one, several, none = forms
    return none if n == 0 else (one if n == 1 else several.format(n=f"{n:,}"))


def _label(v: Any, codes: Mapping[str, int]) -> str | None:
    """A segment label from its label (str) or its integer code."""
    if isinstance(v, str):
        return v
    if v is None:
        return None
    by_code = {c: name for name, c in codes.items()}
    return by_code.get(_round(v))


# ------------------------------------------------------------------------------------------------- rules
def _recency(b: str) -> _Rule:
    rhythm = _RHYTHM.get(b)

    def render(d: Any, gap: Any = None) -> str:
        if d is None:
            return _NEVER[b]
        if rhythm is not None and gap is not None and gap > 0 and d >= 1:
            return f"no {rhythm[0]} for {_days(d)}, {_usual(gap)}"
        return f"{_DID[b]} {_days(d)} ago"

    return _Rule((f"days_since_last_{b}", rhythm[1]) if rhythm else (f"days_since_last_{b}",), render)


def _first(b: str) -> _Rule:
    return _Rule((f"days_since_first_{b}",), lambda d: _NEVER[b] if d is None else f"{_FIRST[b]} {_days(d)} ago")


def _count(feature: str, b: str, w: int) -> _Rule:
    return _Rule((feature,), lambda v: f"{_counted(_COUNT[b], v)} in {_window(w)}")


def _trend(feature: str, b: str, recent: int, base: int) -> _Rule:
    noun = _TREND[b]

    def render(t: Any) -> str:
        if t is None:
            return f"no {noun} to compare"
        if t > 0.05:
            return f"{noun} up in the last {recent} days vs the {base} before ({t:+.2f})"
        if t < -0.05:
            return f"{noun} down in the last {recent} days vs the {base} before ({t:+.2f})"
        return f"{noun} steady over the last {recent + base} days"

    return _Rule((feature,), render)


def _ratio(feature: str, days_col: str, gap_col: str, noun: str, missing: str) -> _Rule:
    def render(r: Any, d: Any, gap: Any) -> str:
        if r is None:
            return missing
        text = f"{r:.1f}x the usual gap since the last {noun}"
        if d is not None and gap is not None and gap > 0:
            return f"{text} ({_days(d)}, {_usual(gap)})"
        return text

    return _Rule((feature, days_col, gap_col), render)


def _windowed(feature: str, kind: str, w: int) -> _Rule:
    win = _window(w)
    forms: dict[str, tuple[str, str, str]] = {
        "active_days": ("active on 1 day of {win}", "active on {n} days of {win}", "not active in {win}"),
        "distinct_items": ("looked at 1 item in {win}", "looked at {n} different items in {win}",
                           "looked at no items in {win}"),
        "distinct_categories": ("looked at 1 category in {win}", "looked at {n} categories in {win}",
                                "looked at no categories in {win}"),
        "max_items_per_category": ("viewed 1 item per category at most in {win}",
                                   "compared {n} items in one category in {win}", "viewed no items in {win}"),
        "carts_unbought": ("1 carted item not bought, from {win}", "{n} carted items not bought, from {win}",
                           "no unbought carts from {win}"),
        "favcart_count": ("favorited or carted 1 item in {win}", "favorited or carted {n} items in {win}",
                          "favorited or carted nothing in {win}"),
        "purchase_days": ("bought on 1 day in {win}", "bought on {n} days in {win}", "no purchase in {win}"),
    }
    one, several, none = (s.replace("{win}", win) for s in forms[kind])
    return _Rule((feature,), lambda v: _counted((one, several, none), v))


def _share(feature: str, kind: str, w: int) -> _Rule:
    def render(p: Any) -> str:
        if p is None:
            return f"no channel recorded in {_window(w)}"
        return f"{_pct(p)} of events from {_CHANNELS[kind]} in {_window(w)}"

    return _Rule((feature,), render)


def _decay(feature: str, layer: str) -> _Rule:
    what, none = _DECAY[layer]
    return _Rule((feature,), lambda v: none if not v else f"recency-weighted {what}: {_small(v)}")


def _btyd(feature: str, kind: str, w: int) -> _Rule:
    def render(v: Any) -> str:
        if v is None:
            return _NO_BTYD
        if kind == "p_purchase":
            return f"{_pct(v)} chance of buying in {_next(w)}"
        if kind == "expected":
            return f"expects {_small(v)} purchases in {_next(w)}"
        return f"expected spend {_money(v)} in {_next(w)}"

    return _Rule((feature,), render)


def _amount(feature: str, w: int | None) -> _Rule:
    where = "in all" if w is None else f"in {_window(w)}"

    def render(v: Any) -> str:
        if v is None:
            return "spend unknown"
        return f"spent nothing {where}" if v == 0 else f"spent {_money(v)} {where}"

    return _Rule((feature,), render)


def _rule_score(v: Any, layer: Any) -> str:
    if v is None:
        return "no rule score"
    name = _label(layer, AIPL_CODES)
    if name is None:
        by_base = {base: code for code, base in AIPL_BASE.items()}
        name = by_base.get(float(min(max(math.floor(v), 0), 4)))
    return f"rule score {v:.2f}, AIPL layer {_LAYERS.get(name, name)}"


def _segment(kind: str) -> Callable[..., str]:
    def render(v: Any, label: Any = None) -> str:
        if kind == "aipl":
            name = _label(label, AIPL_CODES) or _label(v, AIPL_CODES)
            return f"AIPL layer {_LAYERS.get(name, name)}" if name else ""
        if kind == "lifecycle":
            name = _label(label, LIFECYCLE_CODES) or _label(v, LIFECYCLE_CODES)
            return f"lifecycle stage {_STAGES.get(name, name)}" if name else ""
        name = _label(label, RFM_CODES) or _label(v, RFM_CODES)
        return f"RFM group {name.replace('_', ' ')}" if name else ""

    return render


def _flag(yes: str, no: str) -> Callable[[Any], str]:
    return lambda v: yes if v else no


def _plain(missing: str, text: Callable[[float], str]) -> Callable[[Any], str]:
    return lambda v: missing if v is None else text(v)


_EXACT: dict[str, Callable[[], _Rule]] = {
    "buy_count": lambda: _Rule(("buy_count",), lambda v: "never bought" if not v else
                               f"bought {_counted(('1 item', '{n} items', ''), v)} in all"),
    "purchase_days": lambda: _Rule(("purchase_days",), lambda v: "never bought" if not v else
                                   _counted(("bought on 1 day", "bought on {n} different days", ""), v)),
    "amount_total": lambda: _amount("amount_total", None),
    "amount_mean": lambda: _Rule(("amount_mean",), _plain("no known purchase amount",
                                                          lambda v: f"spends {_money(v)} per purchase on average")),
    "purchase_gap_mean_days": lambda: _Rule(("purchase_gap_mean_days",), _plain(
        _NO_REPEAT, lambda v: f"buys every {_days(v)} on average")),
    "purchase_gap_median_days": lambda: _Rule(("purchase_gap_median_days",), _plain(
        _NO_REPEAT, lambda v: f"typically {_days(v)} between purchase days")),
    "repurchase_cycle_ratio": lambda: _ratio("repurchase_cycle_ratio", "days_since_last_buy", "purchase_gap_mean_days",
                                             "purchase", _NO_REPEAT),
    "active_gap_mean_days": lambda: _Rule(("active_gap_mean_days",), _plain(
        _ONE_DAY, lambda v: f"active every {_days(v)} on average")),
    "active_gap_median_days": lambda: _Rule(("active_gap_median_days",), _plain(
        _ONE_DAY, lambda v: f"typically {_days(v)} between active days")),
    "active_recency_ratio": lambda: _ratio("active_recency_ratio", "days_since_last_event", "active_gap_mean_days",
                                           "activity", _ONE_DAY),
    "active_survival": lambda: _Rule(("active_survival",), _plain(
        _ONE_DAY, lambda p: f"{_pct(p)} chance of a break this long at the user's usual pace")),
    "purchase_survival": lambda: _Rule(("purchase_survival",), _plain(
        _NO_REPEAT, lambda p: f"{_pct(p)} chance of going this long without buying at the user's usual pace")),
    "category_new": lambda: _Rule(("category_new",), _flag("new to the target categories",
                                                           "not new to the target categories")),
    "category_regular": lambda: _Rule(("category_regular",), _flag("bought in the target categories before",
                                                                   "never bought in the target categories")),
    "rule_score": lambda: _Rule(("rule_score", "aipl_layer"), _rule_score),
    "aipl_code": lambda: _Rule(("aipl_code", "aipl_layer"), _segment("aipl")),
    "aipl_layer": lambda: _Rule(("aipl_layer",), _segment("aipl")),
    "lifecycle_code": lambda: _Rule(("lifecycle_code", "lifecycle"), _segment("lifecycle")),
    "lifecycle": lambda: _Rule(("lifecycle",), _segment("lifecycle")),
    "rfm_code": lambda: _Rule(("rfm_code", "rfm_group"), _segment("rfm")),
    "rfm_group": lambda: _Rule(("rfm_group",), _segment("rfm")),
    "btyd_p_alive": lambda: _Rule(("btyd_p_alive",), _plain(_NO_BTYD, lambda p: f"{_pct(p)} likely still a customer")),
    "p_alive": lambda: _Rule(("p_alive",), _plain(_NO_BTYD, lambda p: f"{_pct(p)} likely still a customer")),
    "next_order_date": lambda: _Rule(("next_order_date",), lambda v: "no next order expected" if v is None else
                                     f"next order expected around {v}"),
}

_PATTERNS: tuple[tuple[re.Pattern[str], Callable[[str, re.Match[str]], _Rule]], ...] = (
    (re.compile(r"days_since_last_(view|fav|cart|buy|visit|event|ad)"), lambda f, m: _recency(m[1])),
    (re.compile(rf"days_since_first_({_BEHAVIORS})"), lambda f, m: _first(m[1])),
    (re.compile(rf"({_BEHAVIORS}|ad)_count_(\d+)d"), lambda f, m: _count(f, m[1], int(m[2]))),
    (re.compile(r"(active_days|distinct_items|distinct_categories|max_items_per_category|carts_unbought"
                r"|favcart_count|purchase_days)_(\d+)d"), lambda f, m: _windowed(f, m[1], int(m[2]))),
    (re.compile(r"(active|passive)_channel_share_(\d+)d"), lambda f, m: _share(f, m[1], int(m[2]))),
    (re.compile(r"decay_(browse|interest|purchase)"), lambda f, m: _decay(f, m[1])),
    (re.compile(r"amount_(\d+)d"), lambda f, m: _amount(f, int(m[1]))),
    (re.compile(rf"({_BEHAVIORS})_trend_(\d+)d_vs_(\d+)d"), lambda f, m: _trend(f, m[1], int(m[2]), int(m[3]))),
    (re.compile(r"target_(view|cart|buy)_count"),
     lambda f, m: _Rule((f,), lambda v: f"{_counted(_TARGET[m[1]], v)} in the target categories")),
    (re.compile(r"btyd_p_purchase_(\d+)d"), lambda f, m: _btyd(f, "p_purchase", int(m[1]))),
    (re.compile(r"(?:btyd_expected_purchases|btyd_expected|expected_purchases)_(\d+)d"),
     lambda f, m: _btyd(f, "expected", int(m[1]))),
    (re.compile(r"(?:btyd_)?clv_(\d+)d"), lambda f, m: _btyd(f, "clv", int(m[1]))),
)


@lru_cache(maxsize=4096)
def _rule(feature: str) -> _Rule:
    """The rule of a feature name: an exact name, else the first matching pattern, else the generic one."""
    exact = _EXACT.get(feature)
    if exact is not None:
        return exact()
    for pattern, make in _PATTERNS:
        m = pattern.fullmatch(feature)
        if m is not None:
            return make(feature, m)
    return _Rule((feature,), lambda v: "")  # empty: _render falls back to "<feature> = <value>"
