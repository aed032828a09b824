"""What a campaign did: treatment against control after ``as_of``, the incremental effect and the playbook KPIs.

:func:`measure` reads canonical events (``user_id``, ``ts`` UTC, ``behavior``, optional ``amount``) against one
campaign. Only events inside the read window ``[as_of, min(window_close, events_end))`` of campaign members count;
events before ``as_of``, at or after the end of the read window, and of users outside the campaign are ignored and
counted (:class:`EventCounts`).

- **Conversion**: a purchase (``behavior == "buy"``) inside the window; for ``win_back`` any event of the user
  inside the window (a purchase, a visit, a view, ...), which ends the lapse - the lapse label's definition
  (``training.labels.lapse_labels``: no event at all).
- **Status**: ``closed`` when ``events_end >= window_close``; else ``in progress`` with the days elapsed, and no
  verdict: the lift, the forecast check and the KPIs are None until the window has closed.
- **Incremental rate** ``d = rate(treatment) - rate(control)`` with Newcombe's hybrid score interval
  (:func:`serving.activation.stats.newcombe_difference`, coverage close to nominal for small rates); the lift is
  ``credible`` when the interval excludes 0. Incremental conversions ``= d x treated users``; incremental revenue
  ``= conversions x mean order value`` (mean ``amount`` of the treated members' purchases in the window, else
  ``order_value_default``); incremental profit ``= revenue x margin_rate - cost_per_user x treated users``.
- **Relative lift**, comparable with the action's prior lift: ``d / control purchase rate`` (the rise of the purchase
  rate); for ``win_back`` ``d / control lapse rate`` (the share of would-be lapsers saved), with the Katz log
  interval of the ratio of the two rates (None when a group has no event).
- **Forecast vs outcome**: the control group's mean ``action_p`` (the model's untreated course: buy, or lapse for
  ``win_back``) against the control's realized rate of that course (purchase rate; lapse rate = no event in the
  window), with the Wilson interval of the realized rate.
- **KPIs** of the playbook, over treated users: *last-mile activation rate* = share of the treated users of a
  last-mile action (:data:`LAST_MILE_ACTIONS`: the I and A decision windows) who bought inside their own window
  ``[as_of, min(action_deadline, window_close))`` (target 50%; None for other actions); *conversion by AIPL layer* =
  share of treated users in layer P, I, A who bought in the campaign window (targets 50%, 20%, 5%).

The result is JSON-ready (:meth:`OutcomeResult.to_json`), appended to the campaign record (:func:`append_outcome`)
and logged to MLflow (:func:`log_to_mlflow`). Reads are idempotent: the same events give the same numbers.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from serving.activation.campaign_records import Campaign, iso, utc, write_outcome_read
from serving.activation.campaigns import CONTROL, GROUPS, TREATMENT
from serving.activation.outcome_result import (
    AIPL_TARGETS,
    CLOSED,
    IN_PROGRESS,
    LAST_MILE_TARGET,
    EventCounts,
    Forecast,
    GroupOutcome,
    Kpi,
    Lift,
    OutcomeError,
    OutcomeResult,
    playbook_kpis,
    pooled_kpi,
)
from serving.activation.stats import DEFAULT_CONFIDENCE, log_ratio_interval, newcombe_difference, wilson_interval

__all__ = [
    "AIPL_TARGETS", "CLOSED", "IN_PROGRESS", "LAST_MILE_ACTIONS", "LAST_MILE_TARGET", "EventCounts", "Forecast",
    "GroupOutcome", "Kpi", "Lift", "OutcomeError", "OutcomeResult", "append_outcome", "log_to_mlflow", "measure",
    "playbook_kpis",
]

WIN_BACK = "win_back"
LAST_MILE_ACTIONS: tuple[str, ...] = ("coupon_24h", "ad_retarget")
"""Actions whose window is a decision window of at most days: the I window (24 h after a fav/cart) and A at its
peak (1-3 days after an ad click)."""
INTERVAL_METHOD = "newcombe-hybrid-score"
EVENT_COLUMNS: tuple[str, ...] = ("user_id", "ts", "behavior")
_DAY_US = 86_400 * 1_000_000


def _epoch_us(ts: pd.Series) -> np.ndarray:
    """Microseconds since the epoch (int64) of a timestamp column (aware, or naive taken as UTC)."""
    if not (isinstance(ts.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(ts.dtype)):
        try:
            ts = pd.to_datetime(ts, utc=True, format="ISO8601")
        except (TypeError, ValueError) as exc:
            raise OutcomeError(f"events column 'ts' is not a timestamp: {exc}") from exc
    index = pd.DatetimeIndex(ts)
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    if index.hasnans:
        raise OutcomeError(f"events column 'ts' has {int(index.isna().sum())} null timestamp(s)")
    return index.as_unit("us").asi8


def _us(value: datetime) -> int:
    """Microseconds since the epoch of an aware (or naive UTC) datetime."""
    return int(utc(value).value // 1000)  # Timestamp.value is in nanoseconds whatever the unit


def _strings(values: pd.Series) -> pa.Array:
    """A column as one Arrow large-string array (ids of any type compare as text)."""
    array = pa.Array.from_pandas(values)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    return pc.cast(array, pa.large_string())


def measure(
    campaign: Campaign,
    events: pd.DataFrame,
    *,
    events_end: datetime,
    margin_rate: float,
    order_value_default: float,
    confidence: float = DEFAULT_CONFIDENCE,
) -> OutcomeResult:
    """The outcome of ``campaign`` in ``events`` (canonical events, any order), read up to ``events_end`` (the
    moment the events are complete to, exclusive). ``margin_rate`` in (0, 1]; ``order_value_default`` (currency,
    > 0) prices a conversion when no treated purchase carries an amount. See the module docstring."""
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise OutcomeError(f"events lack column(s) {missing}; expected canonical events {list(EVENT_COLUMNS)}")
    if not 0 < margin_rate <= 1:
        raise OutcomeError(f"margin_rate must be in (0, 1], got {margin_rate!r}")
    if not (math.isfinite(order_value_default) and order_value_default > 0):
        raise OutcomeError(f"order_value_default must be > 0, got {order_value_default!r}")
    members = campaign.members
    n = len(members)
    start, close, end = _us(campaign.as_of), _us(campaign.window_close), _us(events_end)
    stop = min(close, end)
    closed = end >= close
    ts = _epoch_us(events["ts"])
    after = ts >= start
    pos = np.full(len(events), -1, dtype=np.int64)
    found = pc.index_in(_strings(events["user_id"][after]), value_set=_strings(members["user_id"]))
    pos[after] = found.fill_null(-1).to_numpy(zero_copy_only=False)
    member = pos >= 0
    inside = member & (ts < stop)
    buy = events["behavior"].eq("buy").to_numpy(dtype=bool, na_value=False)
    bought = np.zeros(n, dtype=bool)
    bought[pos[inside & buy]] = True
    converted = bought
    if campaign.action == WIN_BACK:
        converted = np.zeros(n, dtype=bool)
        converted[pos[inside]] = True
    group_code = _group_codes(members)
    amount = _amounts(events)
    sold = inside & buy & np.isfinite(amount) & (amount > 0)
    revenue = np.bincount(pos[sold], weights=amount[sold], minlength=n)
    groups = {g: _group(group_code == i, converted, bought, revenue) for i, g in enumerate(GROUPS)}
    outside = after & ~member
    counts = EventCounts(
        total=len(events), used=int(inside.sum()), before_as_of=int((~after).sum()),
        after_window=int((member & ~inside).sum()), outside_campaign=int(outside.sum()),
        outside_users=int(pd.unique(events["user_id"][outside]).size) if outside.any() else 0,
    )
    lift = forecast = last_mile = aipl = None
    treated = group_code == GROUPS.index(TREATMENT)
    if closed:
        mean_value = _mean_order_value(pos[sold], amount[sold], treated)
        lift = _lift(campaign, groups, mean_value, order_value_default, margin_rate, confidence)
        forecast = _forecast(campaign, members, groups, group_code == GROUPS.index(CONTROL), treated, confidence)
        last_mile = _last_mile(campaign, members, pos, ts, inside & buy, treated)
        layers = members["aipl_layer"].to_numpy(dtype=object)
        aipl = {layer: _kpi(treated & (layers == layer), bought, target) for layer, target in AIPL_TARGETS.items()}
    return OutcomeResult(
        campaign_id=campaign.campaign_id, action=campaign.action, as_of=iso(campaign.as_of),
        window_close=iso(campaign.window_close), events_end=iso(events_end),
        status=CLOSED if closed else IN_PROGRESS,
        days_elapsed=min(max(end - start, 0), close - start) / _DAY_US, window_days=campaign.window_days,
        conversion="any event (the lapse ends)" if campaign.action == WIN_BACK else "purchase",
        groups=groups, lift=lift, forecast=forecast, last_mile=last_mile, aipl=aipl, events=counts,
        model_versions=dict(campaign.model_versions), snapshot_id=campaign.snapshot_id,
        lift_used=dict(campaign.lift_used), margin_rate=float(margin_rate), cost_per_user=campaign.cost_per_user,
        interval_method=INTERVAL_METHOD, confidence=confidence,
    )


def _group_codes(members: pd.DataFrame) -> np.ndarray:
    group = members["group"]
    code = np.full(len(members), -1, dtype=np.int64)
    for i, name in enumerate(GROUPS):
        code[group.eq(name).to_numpy(dtype=bool, na_value=False)] = i
    if (code < 0).any():
        raise OutcomeError(f"members hold unknown group(s) {sorted(set(group[code < 0].astype(str)))[:5]}")
    return code


def _amounts(events: pd.DataFrame) -> np.ndarray:
    if "amount" not in events.columns:
        return np.full(len(events), np.nan)
    try:
        return events["amount"].to_numpy(dtype="float64", na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise OutcomeError(f"events column 'amount' must be numeric: {exc}") from exc


def _group(rows: np.ndarray, converted: np.ndarray, bought: np.ndarray, revenue: np.ndarray) -> GroupOutcome:
    users, conversions = int(rows.sum()), int((converted & rows).sum())
    return GroupOutcome(users=users, conversions=conversions, rate=conversions / users if users else math.nan,
                        buyers=int((bought & rows).sum()), revenue=float(revenue[rows].sum()))


def _mean_order_value(pos: np.ndarray, amount: np.ndarray, treated: np.ndarray) -> float:
    """Mean ``amount`` per purchase of treated members in the window (NaN when none carries an amount)."""
    mine = treated[pos]
    return float(amount[mine].mean()) if mine.any() else math.nan


def _lift(campaign: Campaign, groups: dict[str, GroupOutcome], mean_value: float, default_value: float,
          margin_rate: float, confidence: float) -> Lift:
    t, c = groups[TREATMENT], groups[CONTROL]
    d, low, high = newcombe_difference(t.conversions, t.users, c.conversions, c.users, confidence)
    source = "treated purchases" if math.isfinite(mean_value) else "default"
    value = mean_value if math.isfinite(mean_value) else float(default_value)
    cost = campaign.cost_per_user * t.users
    if campaign.action == WIN_BACK:  # share of would-be lapsers saved: 1 - lapse(T) / lapse(C)
        r, r_low, r_high = log_ratio_interval(t.users - t.conversions, t.users, c.users - c.conversions, c.users,
                                              confidence)
        rel, rel_low, rel_high, basis = 1 - r, 1 - r_high, 1 - r_low, "lapse rate"
    else:
        r, r_low, r_high = log_ratio_interval(t.conversions, t.users, c.conversions, c.users, confidence)
        rel, rel_low, rel_high, basis = r - 1, r_low - 1, r_high - 1, "purchase rate"
    return Lift(
        incremental_rate=d, incremental_rate_low=low, incremental_rate_high=high,
        credible=bool(low > 0 or high < 0),
        incremental_conversions=d * t.users, incremental_conversions_low=low * t.users,
        incremental_conversions_high=high * t.users, mean_order_value=value, order_value_source=source,
        incremental_revenue=d * t.users * value, total_cost=cost,
        incremental_profit=d * t.users * value * margin_rate - cost,
        incremental_profit_low=low * t.users * value * margin_rate - cost,
        incremental_profit_high=high * t.users * value * margin_rate - cost,
        relative_lift=rel, relative_lift_low=rel_low, relative_lift_high=rel_high, relative_basis=basis,
    )


def _forecast(campaign: Campaign, members: pd.DataFrame, groups: dict[str, GroupOutcome], control: np.ndarray,
              treated: np.ndarray, confidence: float) -> Forecast:
    c = groups[CONTROL]
    lapse = campaign.action == WIN_BACK
    k = c.users - c.conversions if lapse else c.conversions
    low, high = wilson_interval(k, c.users, confidence)
    p = members["action_p"].to_numpy(dtype="float64", na_value=np.nan)[control]
    expected = None
    if "incremental_p" in members.columns:
        expected = float(np.nansum(members["incremental_p"].to_numpy(dtype="float64", na_value=np.nan)[treated]))
    return Forecast(course="lapse" if lapse else "purchase", users=c.users,
                    predicted=float(np.nanmean(p)) if np.isfinite(p).any() else math.nan,
                    realized=k / c.users if c.users else math.nan, realized_low=low, realized_high=high,
                    expected_incremental=expected)


def _last_mile(campaign: Campaign, members: pd.DataFrame, pos: np.ndarray, ts: np.ndarray, buys: np.ndarray,
               treated: np.ndarray) -> Kpi | None:
    """Treated users of a last-mile action who bought inside ``[as_of, min(action_deadline, window_close))``."""
    if campaign.action not in LAST_MILE_ACTIONS:
        return None
    own_close = np.full(len(members), _us(campaign.window_close), dtype=np.int64)
    if "action_deadline" in members.columns:
        deadline = pd.to_datetime(members["action_deadline"], utc=True)
        known = deadline.notna().to_numpy()
        own_close[known] = np.minimum(own_close[known], _epoch_us(deadline[known]))
    hit = buys.copy()
    hit[buys] = ts[buys] < own_close[pos[buys]]
    converted = np.zeros(len(members), dtype=bool)
    converted[pos[hit]] = True
    return _kpi(treated, converted, LAST_MILE_TARGET)


def _kpi(rows: np.ndarray, converted: np.ndarray, target: float | None) -> Kpi:
    return pooled_kpi([Kpi(int(rows.sum()), int((converted & rows).sum()), math.nan, None, None)], target)


def append_outcome(root: str | Path, campaign_id: str, result: OutcomeResult, read_at: datetime) -> Path:
    """Append ``result`` to the campaign's record as a new ``outcomes/<read_id>.json`` (earlier reads are never
    touched) and return its path."""
    if result.campaign_id != campaign_id:
        raise OutcomeError(f"the result is for campaign {result.campaign_id}, not {campaign_id}")
    return write_outcome_read(root, campaign_id, result.to_dict(), read_at)



def log_to_mlflow(
    result: OutcomeResult,
    tracking_uri: str,
    *,
    read_at: datetime,
    read_id: str | None = None,
    experiment: str = "campaign_outcomes",
    artifact_root: str | Path | None = None,
) -> str:
    """Log one outcome read as one MLflow run and return its run id.

    The run (named ``read_id``, or ``<campaign_id>@<read_at>``) starts and ends at ``read_at``; its tags are
    ``campaign_id``, ``action``, ``status``, ``snapshot_id`` and ``model_version.<target>`` per model version; its
    metrics are :meth:`OutcomeResult.metrics`, its params the read's settings (margin, cost, window, lift used,
    interval method). A new experiment stores artifacts under ``artifact_root/<experiment>`` when given.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        location = (Path(artifact_root).resolve() / experiment).as_uri() if artifact_root is not None else None
        try:
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        except MlflowException:  # created meanwhile by another reader
            experiment_id = client.get_experiment_by_name(experiment).experiment_id  # type: ignore[union-attr]
    else:
        experiment_id = found.experiment_id
    ms = int(utc(read_at).timestamp() * 1000)
    tags = {"campaign_id": result.campaign_id, "action": result.action, "status": result.status,
            "snapshot_id": str(result.snapshot_id),
            **{f"model_version.{k}": v for k, v in result.model_versions.items()}}
    params = {"margin_rate": result.margin_rate, "cost_per_user": result.cost_per_user, "as_of": result.as_of,
              "window_close": result.window_close, "events_end": result.events_end, "conversion": result.conversion,
              "interval_method": result.interval_method, "confidence": result.confidence,
              **{f"lift_used.{k}": v for k, v in result.lift_used.items()}}
    run = client.create_run(experiment_id, start_time=ms, tags=tags,
                            run_name=read_id or f"{result.campaign_id}@{iso(read_at)}")
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, v, ms, 0) for k, v in result.metrics().items()],
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("read_id", read_id)] if read_id else [],
    )
    client.set_terminated(run.info.run_id, end_time=ms)
    return str(run.info.run_id)
