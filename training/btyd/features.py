"""BTYD columns of the model: BG/NBD and Gamma-Gamma fitted on the purchase history before the training cutoffs.

The inputs come from columns of the one feature definition (:mod:`features.spec.definition`), so training, batch
and online scoring compute them by the same code (the bundle's design matrix, :func:`training.bundle.design_matrix`):

- ``frequency`` = ``purchase_days - 1`` (repeat purchase days);
- ``T`` = day bucket of the first purchase and ``recency`` = ``T`` - bucket of the last purchase, in days, with the
  bucket of an age ``a`` (days) = ``ceil(a) - 1`` as in :func:`training.btyd.rfm.rfm_summary`. The last purchase's
  age is ``days_since_last_buy``; the first one's is ``days_since_last_buy + purchase_gap_mean_days *
  (purchase_days - 1)`` (the spec defines the mean gap as their difference over ``purchase_days - 1``). Ages are
  whole microseconds, so they are rounded back to microseconds before bucketing: the float round trip cannot move a
  purchase across a day boundary, and the three equal ``rfm_summary`` of the events at the same cutoff;
- spend: the feature table holds no amount of the first purchase day (``rfm_summary``'s ``monetary_value`` averages
  the repeat days only), so the Gamma-Gamma part models the mean spend per purchase day over *all* purchase days:
  ``x = purchase_days`` and ``m = amount_mean * buy_count / purchase_days`` (``amount_total / purchase_days`` when
  every amount is known; NaN when none is).

Users who never bought (``purchase_days == 0``) are outside BTYD: every column is NaN for them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from features.columns import Table, column_names, fill_nan, floats, n_rows
from training.btyd.bgnbd import BetaGeoFitter, BTYDError, summary_arrays
from training.btyd.gamma_gamma import GammaGammaFitter

INPUT_COLUMNS: tuple[str, ...] = (
    "purchase_days", "days_since_last_buy", "purchase_gap_mean_days", "buy_count", "amount_mean",
)
"""Feature-table columns the BTYD inputs are derived from."""
OUTPUT_COLUMNS: tuple[str, ...] = (
    "p_alive", "expected_purchases_30d", "expected_purchases_90d", "clv_365d", "next_order_date",
)
"""Per-user outputs of :meth:`BTYDFeatures.outputs` (the audience file, the store, ``/lookup``)."""
PENALIZERS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
"""L2 penalties tried in turn when a BG/NBD fit predicts non-finite values on its own rows (a few hundred buyers
with near-equal rates drive ``r`` and ``alpha`` to ~1e7, where the hypergeometric term overflows)."""
NEVER_DAYS = 36_500.0
"""A median wait to the next order beyond this many days (100 years) has no date: ``next_order_date`` is null."""
_DAY_US = 86_400_000_000


def btyd_inputs(features: pd.DataFrame) -> pd.DataFrame:
    """The BTYD inputs of every row of a feature table (n users), see the module docstring.

    Returns n rows (the index of ``features``): ``buyer`` (bool: at least one purchase day), ``frequency``,
    ``recency``, ``T`` (float64, whole days; NaN for non-buyers), ``purchase_days`` (float64) and ``spend`` (mean
    spend per purchase day, currency; NaN when unknown or for non-buyers).
    """
    return pd.DataFrame(input_arrays(features), index=_index(features))


def input_arrays(features: Table) -> dict[str, np.ndarray]:
    """:func:`btyd_inputs` as arrays of shape (n,), for a DataFrame or :data:`features.columns.Columns`."""
    missing = [c for c in INPUT_COLUMNS if c not in column_names(features)]
    if missing:
        raise ValueError(f"feature table lacks {missing}, which the BTYD inputs are derived from")
    days, last, gap = (floats(features, c) for c in ("purchase_days", "days_since_last_buy", "purchase_gap_mean_days"))
    days = fill_nan(days, 0.0)  # a count: never infinite
    if not (days >= 1).any():  # nobody ever bought (most users): no buyer, every input NaN
        buyer = np.zeros(len(days), dtype=bool)
        return {"buyer": buyer, **{c: np.full(len(days), np.nan) for c in _INPUTS[1:]}}
    first = np.where(days >= 2, last + gap * (days - 1), last)
    buyer = (days >= 1) & np.isfinite(last) & np.isfinite(first) & (last > 0)
    safe_last = np.where(buyer, last, 1.0)
    safe_first = np.where(buyer, np.maximum(first, last), 1.0)
    last_bucket = _bucket(safe_last)
    first_bucket = _bucket(safe_first)
    nan = np.full(len(days), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        spend = floats(features, "amount_mean") * floats(features, "buy_count") / days
    return {
        "buyer": buyer,
        "frequency": np.where(buyer, days - 1, nan),
        "recency": np.where(buyer, first_bucket - last_bucket, nan),
        "T": np.where(buyer, first_bucket, nan),
        "purchase_days": np.where(buyer, days, nan),
        "spend": np.where(buyer & np.isfinite(spend), spend, nan),
    }


_INPUTS = ("buyer", "frequency", "recency", "T", "purchase_days", "spend")


def _index(features: Table) -> pd.Index:
    """The index of a DataFrame; a RangeIndex of n rows for columns."""
    return features.index if isinstance(features, pd.DataFrame) else pd.RangeIndex(n_rows(features))


def _bucket(age_days: np.ndarray) -> np.ndarray:
    """Day bucket ``ceil(age) - 1`` of ages in days (> 0), computed on whole microseconds; float64, shape (n,)."""
    age_us = np.rint(age_days * _DAY_US).astype(np.int64)
    return ((np.maximum(age_us, 1) - 1) // _DAY_US).astype(np.float64)


class _Summaries(NamedTuple):
    """Buyers' distinct summaries (each shape (m,)), ``key`` (shape (buyers,)) mapping each buyer row to its summary,
    and P(alive) of each summary."""

    key: np.ndarray
    x: np.ndarray
    tx: np.ndarray
    t_obs: np.ndarray
    alive: np.ndarray


class BTYDFeatures:
    """BG/NBD + Gamma-Gamma on the feature table, sklearn style; the columns it adds to the design matrix.

    Hyperparameters: ``window_days`` (the target's label window: H for last-mile buyers, N for lapse), ``penalizer``
    (L2 penalty of both fits, 0 = plain maximum likelihood), ``horizons`` (days of the ``btyd_expected_{d}d``
    columns and the ``expected_purchases_{d}d`` outputs), ``clv_days`` (CLV horizon, days; undiscounted).
    Learned: ``bgf_`` (:class:`BetaGeoFitter`, days; fitted with ``penalizer``, or the first of :data:`PENALIZERS`
    above it whose predictions on the fitted rows are finite: ``bgf_.penalizer``), ``ggf_`` (:class:`GammaGammaFitter`
    of the spend per purchase day, None when it cannot be fitted: no amounts, or a fit with an infinite mean,
    ``q <= 1``),
    ``spend_mean_`` (mean spend per purchase day over the fitted rows with a known spend, currency; None without
    amounts), ``n_rows_`` (buyer rows fitted on: users x cutoffs).
    """

    def __init__(
        self, window_days: int = 3, *, penalizer: float = 0.0, horizons: Sequence[int] = (30, 90),
        clv_days: int = 365,
    ) -> None:  # fmt: skip
        if int(window_days) < 1 or int(clv_days) < 1 or not horizons or min(int(h) for h in horizons) < 1:
            raise BTYDError("window_days, clv_days and every horizon must be whole days >= 1")
        self.window_days = int(window_days)
        self.penalizer = float(penalizer)
        self.horizons = tuple(int(h) for h in horizons)
        self.clv_days = int(clv_days)

    # ------------------------------------------------------------------------------------------------ fitting
    def fit(self, tables: pd.DataFrame | Iterable[pd.DataFrame]) -> BTYDFeatures:
        """Fit on feature tables built at the training cutoffs (one table, or one per cutoff; rows = users); only
        buyers count, each (user, cutoff) once. Raises :class:`BTYDError` when there is no buyer or a fit fails."""
        frames = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
        inputs = pd.concat([btyd_inputs(f) for f in frames], ignore_index=True)
        rows = inputs[inputs["buyer"]]
        if rows.empty:
            raise BTYDError("no buyers before the training cutoffs: BG/NBD has nothing to fit")
        self.bgf_ = _fit_bgnbd(rows, self.penalizer, float(max(self.clv_days, *self.horizons)))
        known = rows[np.isfinite(rows["spend"]) & (rows["spend"] > 0)]
        self.spend_mean_ = float(known["spend"].mean()) if len(known) else None
        self.ggf_: GammaGammaFitter | None = None
        if len(known):
            try:
                gg = GammaGammaFitter(self.penalizer).fit(known["purchase_days"], known["spend"])
            except BTYDError:
                gg = None
            self.ggf_ = gg if gg is not None and gg.q_ > 1 else None
        self.n_rows_ = len(rows)
        return self

    def _fitted(self) -> BetaGeoFitter:
        if not hasattr(self, "bgf_"):
            raise BTYDError("BTYDFeatures is not fitted")
        return self.bgf_

    # ------------------------------------------------------------------------------------------------ columns
    @property
    def columns(self) -> list[str]:
        """Design-matrix columns, in order: P(alive), P(any purchase in the window), expected purchases in the
        window, expected purchases in each of ``horizons`` and the ``clv_days`` CLV."""
        return list(self._column_names)

    @cached_property
    def _column_names(self) -> tuple[str, ...]:
        w = self.window_days
        return (
            "btyd_p_alive", f"btyd_p_purchase_{w}d", f"btyd_expected_purchases_{w}d",
            *(f"btyd_expected_{h}d" for h in self.horizons), f"btyd_clv_{self.clv_days}d",
        )  # fmt: skip

    def transform(self, features: Table) -> pd.DataFrame:
        """:attr:`columns` for every row of a feature table (n users): float64 (n, k), the index of ``features``;
        probabilities in [0, 1], expected purchase days, CLV in currency; NaN for users who never bought."""
        return pd.DataFrame(self.transform_array(features), columns=self.columns, index=_index(features))

    def transform_array(self, features: Table, inputs: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """:meth:`transform` as a float64 array of shape (n, k), for a DataFrame or :data:`features.columns.Columns`
        (``inputs``: their :func:`input_arrays`, when already computed)."""
        inp = input_arrays(features) if inputs is None else inputs
        return self._columns(inp, self._summaries(inp))

    def _summaries(self, inp: Mapping[str, np.ndarray]) -> _Summaries | None:
        """The buyers' distinct (x, t_x, T) summaries, checked, and their P(alive); None without a buyer."""
        bgf = self._fitted()
        buyer = inp["buyer"]
        if not buyer.any():
            return None
        key, distinct = _distinct(*(inp[c][buyer] for c in ("frequency", "recency", "T")))
        ux, utx, ut = summary_arrays(*distinct)
        return _Summaries(key, ux, utx, ut, bgf._alive(ux, utx, ut))

    def _columns(self, inp: Mapping[str, np.ndarray], s: _Summaries | None) -> np.ndarray:
        """:meth:`transform_array` of :func:`input_arrays` output and its :meth:`_summaries`."""
        bgf = self._fitted()
        buyer = inp["buyer"]
        out = np.full((len(buyer), len(self.columns)), np.nan)
        if s is not None:
            days = np.array([self.window_days, *self.horizons, self.clv_days], dtype=np.float64)[:, None]
            expected = bgf._expected(days, s.x, s.t_obs, s.alive)[:, s.key]
            out[buyer, 0] = s.alive[s.key]
            out[buyer, 1] = bgf._any_purchase(float(self.window_days), s.x, s.t_obs, s.alive)[s.key]
            out[buyer, 2 : 3 + len(self.horizons)] = expected[:-1].T
            out[buyer, -1] = expected[-1] * self._spend(inp["purchase_days"][buyer], inp["spend"][buyer])
        return out

    def _spend(self, purchase_days: np.ndarray, m: np.ndarray) -> np.ndarray:
        """Expected spend per purchase day of buyer rows (currency, shape (n,)) from their purchase days and mean
        spend ``m``: the Gamma-Gamma estimate, or without it the user's own mean spend, else the fitted population
        mean (NaN without any amount)."""
        if self.ggf_ is not None:
            return self.ggf_.conditional_expected_average_profit(purchase_days, m)
        fallback = np.nan if self.spend_mean_ is None else self.spend_mean_
        return np.where(np.isfinite(m), m, fallback)

    def p_any_purchase(self, features: pd.DataFrame, days: float) -> np.ndarray:
        """P(at least one purchase in the next ``days`` days) per row, shape (n,); NaN for users who never bought."""
        bgf = self._fitted()
        inp = input_arrays(features)
        buyer = inp["buyer"]
        out = np.full(len(buyer), np.nan)
        if buyer.any():
            x, tx, t_obs = (inp[c][buyer] for c in ("frequency", "recency", "T"))
            out[buyer] = bgf.p_any_purchase(float(days), x, tx, t_obs)
        return out

    def outputs(self, features: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
        """Per-user outputs at ``as_of`` (n rows, the index of ``features``): ``p_alive``,
        ``expected_purchases_{d}d`` for ``horizons``, ``clv_{clv_days}d`` (currency) and ``next_order_date``
        (ISO date of ``as_of`` + the median wait to the next purchase; None when the user more likely than not
        never buys again, or beyond :data:`NEVER_DAYS`). Every value is NaN/None for users who never bought."""
        index = _index(features)
        out = pd.DataFrame(index=index)
        for name, values in self.output_arrays(features, as_of).items():
            out[name] = pd.Series(values, index=index, dtype=object) if name == "next_order_date" else values
        return out

    def output_arrays(
        self, features: Table, as_of: datetime, columns: np.ndarray | None = None,
        inputs: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`outputs` as arrays of shape (n,) (float64; ``next_order_date`` an object array of ISO dates and
        None), for a DataFrame or :data:`features.columns.Columns`. ``columns``: the :meth:`transform_array` of
        these rows when already computed (a design matrix holds them); ``inputs``: their :func:`input_arrays`."""
        inp = input_arrays(features) if inputs is None else inputs
        s = self._summaries(inp)
        cols = self._columns(inp, s) if columns is None else columns
        out: dict[str, np.ndarray] = {"p_alive": cols[:, 0]}
        for i, h in enumerate(self.horizons):
            out[f"expected_purchases_{h}d"] = cols[:, 3 + i]
        out[f"clv_{self.clv_days}d"] = cols[:, -1]
        out["next_order_date"] = self._next_order_array(inp, s, as_of)
        return out

    def next_order_dates(self, features: pd.DataFrame, as_of: datetime) -> pd.Series:
        """ISO date (``YYYY-MM-DD``) of ``as_of`` + the median wait to the next purchase, an object Series of
        n rows; None for non-buyers, users who more likely than not never buy again, or waits past NEVER_DAYS."""
        inp = input_arrays(features)
        return pd.Series(self._next_order_array(inp, self._summaries(inp), as_of), index=_index(features), dtype=object)

    def _next_order_array(self, inp: Mapping[str, np.ndarray], s: _Summaries | None, as_of: datetime) -> np.ndarray:
        """:meth:`next_order_dates` of :func:`input_arrays` output and its :meth:`_summaries`, as an object array of
        shape (n,)."""
        bgf = self._fitted()
        buyer = inp["buyer"]
        wait = np.full(len(buyer), np.inf)
        if s is not None:
            wait[buyer] = bgf._next_purchase_days(s.x, s.t_obs, s.alive, 0.5)[s.key]
        dated = np.isfinite(wait) & (wait <= NEVER_DAYS)
        dates = np.full(len(buyer), None, dtype=object)
        if dated.any():
            base = pd.Timestamp(as_of)
            base = base.tz_localize("UTC") if base.tzinfo is None else base.tz_convert("UTC")
            us = np.rint(wait[dated] * _DAY_US).astype("timedelta64[us]")
            days = (np.datetime64(base.tz_localize(None).to_datetime64(), "us") + us).astype("datetime64[D]")
            dates[dated] = days.astype(str)
        return dates

    # ------------------------------------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe state: hyperparameters and the two fitted models (``gamma_gamma`` None when not fitted)."""
        bgf = self._fitted()
        return {
            "kind": "btyd_features", "window_days": self.window_days, "penalizer": self.penalizer,
            "horizons": list(self.horizons), "clv_days": self.clv_days, "bgnbd": bgf.to_dict(),
            "gamma_gamma": None if self.ggf_ is None else self.ggf_.to_dict(), "spend_mean": self.spend_mean_,
            "n_rows": self.n_rows_,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BTYDFeatures:
        """A fitted transformer from :meth:`to_dict` output."""
        if doc.get("kind") != "btyd_features":
            raise BTYDError(f"not a BTYD features document: kind={doc.get('kind')!r}")
        model = cls(
            int(doc["window_days"]), penalizer=float(doc.get("penalizer", 0.0)), horizons=doc["horizons"],
            clv_days=int(doc["clv_days"]),
        )
        model.bgf_ = BetaGeoFitter.from_dict(doc["bgnbd"])
        gg = doc.get("gamma_gamma")
        model.ggf_ = None if gg is None else GammaGammaFitter.from_dict(gg)
        spend = doc.get("spend_mean")
        model.spend_mean_ = None if spend is None or not math.isfinite(float(spend)) else float(spend)
        model.n_rows_ = int(doc.get("n_rows", 0))
        return model


def _fit_bgnbd(rows: pd.DataFrame, penalizer: float, horizon: float) -> BetaGeoFitter:
    """BG/NBD on buyer rows (``frequency``, ``recency``, ``T``) with ``penalizer`` or, while its P(alive) or expected
    purchases in ``horizon`` days are not finite on those rows, the next larger of :data:`PENALIZERS`."""
    x, tx, t_obs = (rows[c].to_numpy() for c in ("frequency", "recency", "T"))
    _, (ux, utx, ut) = _distinct(x, tx, t_obs)
    for p in (penalizer, *(p for p in PENALIZERS if p > penalizer)):
        bgf = BetaGeoFitter(p).fit(x, tx, t_obs)
        with np.errstate(all="ignore"):
            finite = np.isfinite(bgf.expected_purchases(horizon, ux, utx, ut)).all()
        if finite and np.isfinite(bgf.p_alive(ux, utx, ut)).all():
            return bgf
    raise BTYDError(f"BG/NBD predictions are not finite even with penalizer {PENALIZERS[-1]}")


def _distinct(x: np.ndarray, tx: np.ndarray, t_obs: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """Distinct (x, t_x, T) rows of whole-day inputs (each shape (n,)): ``(inverse, (ux, utx, uT))`` with
    ``ux[inverse] == x``. Users share few distinct summaries, so the special functions run once per summary."""
    if len(x) == 1:  # one summary: itself (as the key's whole-day decomposition gives it back)
        return np.zeros(1, dtype=np.intp), tuple(v.astype(np.int64).astype(np.float64) for v in (x, tx, t_obs))
    span = int(np.max(t_obs)) + 1
    key = (x.astype(np.int64) * span + tx.astype(np.int64)) * span + t_obs.astype(np.int64)
    uniq, inverse = np.unique(key, return_inverse=True)
    ut = uniq % span
    utx = (uniq // span) % span
    ux = uniq // (span * span)
    return inverse.ravel(), (ux.astype(np.float64), utx.astype(np.float64), ut.astype(np.float64))
