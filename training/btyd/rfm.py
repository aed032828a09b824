"""The buy-till-you-die summary of an order history: frequency, recency, T and monetary value per buyer.

Convention (the project's day buckets of :mod:`features.spec.definition`, and the ``lifetimes`` summary):

- only ``buy`` rows with ``ts < as_of`` count; every other behavior and every event at or after ``as_of`` is ignored;
- a purchase *day* is a 24-hour bucket counted back from ``as_of``: bucket ``k`` holds the buys with
  ``as_of - (k+1) days <= ts < as_of - k days``, i.e. ``k = ceil((as_of - ts) / 1 day) - 1`` (bucket 0 = the 24 h
  before ``as_of``); several buys in one bucket are one purchase day, their amounts summed. With ``as_of`` at
  midnight UTC the buckets are the UTC calendar days;
- ``frequency`` = distinct purchase days - 1 (the repeat purchase days), int64 >= 0;
- ``T`` = bucket of the first purchase = days from the first purchase day to the last day before ``as_of``
  (bucket 0), so a purchase in bucket 0 has ``recency == T`` and the next ``t`` days after ``as_of`` are the model
  times ``(T, T + t]``;
- ``recency`` = bucket of the first purchase - bucket of the last purchase = days from the first to the last
  purchase day, so ``0 <= recency <= T`` and ``recency == 0`` when ``frequency == 0``;
- ``monetary_value`` = mean of the per-day amounts over the repeat purchase days (the first purchase day
  excluded), ``0.0`` when ``frequency == 0``. A missing amount (NaN, or no ``amount`` column) is skipped in a
  day's sum; a day whose amounts are all missing is left out of the mean, and the mean is NaN when no repeat
  day has a known amount.

For ``as_of`` at midnight this equals ``lifetimes.utils.summary_data_from_transaction_data(freq="D",
observation_period_end=as_of - 1 day)``. ``time_unit_days`` rescales ``recency`` and ``T`` (7.0 gives weeks, as in
the CDNOW sample); the day stays the granularity of the buckets.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

RFM_COLUMNS: tuple[str, ...] = ("frequency", "recency", "T", "monetary_value")
_DAY_US = 86_400_000_000


def rfm_summary(events: pd.DataFrame, as_of: datetime, *, time_unit_days: float = 1.0) -> pd.DataFrame:
    """Per-buyer BTYD summary before ``as_of`` (see the module docstring for the exact convention).

    ``events``: canonical events (``user_id``, ``ts``, ``behavior``, optional ``amount``). ``as_of``: the cutoff, an
    aware datetime (a naive one is taken as UTC). Returns one row per user with at least one buy before ``as_of``,
    indexed by ``user_id`` (sorted), columns ``frequency`` (int64, days), ``recency`` and ``T`` (float64, in units
    of ``time_unit_days`` days), ``monetary_value`` (float64, the shop's currency per purchase day).
    """
    missing = {"user_id", "ts", "behavior"} - set(events.columns)
    if missing:
        raise ValueError(f"events lack the columns {sorted(missing)}")
    if not time_unit_days > 0:
        raise ValueError(f"time_unit_days must be > 0, got {time_unit_days}")
    cutoff = pd.Timestamp(as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)).tz_convert("UTC")
    ts = pd.to_datetime(events["ts"], utc=True)
    keep = (events["behavior"] == "buy").to_numpy(dtype=bool) & (ts < cutoff).to_numpy(dtype=bool)
    amount = events["amount"] if "amount" in events.columns else pd.Series(np.nan, index=events.index)
    buys = pd.DataFrame(
        {
            "user_id": events["user_id"].to_numpy()[keep],
            "day": (_age_us(cutoff, ts[keep]) - 1) // _DAY_US,  # ceil(age in days) - 1
            "amount": pd.to_numeric(amount[keep], errors="coerce").to_numpy(dtype=np.float64),
        }
    )
    # one row per (user, purchase day): the day's known amounts summed, NaN when none is known
    days = buys.groupby(["user_id", "day"], sort=True)["amount"].sum(min_count=1).reset_index()
    per_user = days.groupby("user_id", sort=True)
    first = per_user["day"].max()
    last = per_user["day"].min()
    frequency = per_user["day"].size() - 1
    repeat = days[days["day"] < days["user_id"].map(first).to_numpy()]  # the first purchase day excluded
    monetary = repeat.groupby("user_id", sort=True)["amount"].mean().reindex(first.index)
    out = pd.DataFrame(
        {
            "frequency": frequency.astype(np.int64),
            "recency": (first - last).astype(np.float64) / time_unit_days,
            "T": first.astype(np.float64) / time_unit_days,
            "monetary_value": monetary.where(frequency > 0, 0.0).astype(np.float64),
        },
        index=first.index,
    )
    out.index.name = "user_id"
    return out


def _age_us(cutoff: pd.Timestamp, ts: pd.Series) -> np.ndarray:
    """Whole microseconds from each ``ts`` to ``cutoff``, int64, shape (n,)."""
    return (cutoff - ts).to_numpy().astype("timedelta64[us]").astype(np.int64)
