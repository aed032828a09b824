"""Outcome read of one large campaign: records on disk, a week of events, :func:`measure` and the read appended.

Usage: ``python benchmarks/bench_outcomes.py --users 1000000 [--events 10000000] [--days 7]``. Builds a campaign
of ``--users`` members (10% control) with ``create_campaign``, draws ``--events`` canonical events over ``--days``
days after its as_of (members' purchases at a higher rate in treatment, views, visits, and 5% of the events from
non-members), then times loading the record, :func:`serving.activation.outcomes.measure` and
:func:`append_outcome`. Same-run baseline: a bare pandas ``merge`` of the events with the members plus a
``groupby`` of conversions per group (the least any outcome read has to do). Prints a Markdown row.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.activation.campaigns import create_campaign, load_campaign
from serving.activation.outcomes import append_outcome, measure

AS_OF = datetime(2026, 11, 1, tzinfo=UTC)


def members_frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": [f"u{i:08d}" for i in range(n)], "action_p": rng.uniform(0.01, 0.3, n),
        "priority": np.sort(rng.uniform(0, 10, n))[::-1], "expected_profit": rng.normal(0.5, 1, n),
        "aipl_layer": rng.choice(["A", "I", "P", "L"], n), "lifecycle": "growth", "rfm_group": "promising",
    })


def events_frame(members: pd.DataFrame, n_events: int, days: int, rng: np.random.Generator) -> pd.DataFrame:
    n = len(members)
    idx = rng.integers(0, n, n_events)
    outsider = rng.random(n_events) < 0.05
    users = members["user_id"].to_numpy()[idx].astype(object)
    users[outsider] = "x" + pd.Series(idx[outsider]).astype(str).to_numpy()
    treated = (members["group"].to_numpy()[idx] == "treatment")
    buy = rng.random(n_events) < np.where(treated, 0.012, 0.01)
    behavior = np.where(buy, "buy", rng.choice(["view", "visit", "cart"], n_events, p=[0.7, 0.2, 0.1]))
    ts = pd.Timestamp(AS_OF) + pd.to_timedelta(rng.uniform(0, days * 86400, n_events), unit="s")
    amount = np.where(buy, rng.gamma(2.0, 30.0, n_events), np.nan)
    return pd.DataFrame({"user_id": users, "ts": ts, "behavior": behavior, "amount": amount})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        campaign = create_campaign(
            root, members_frame(args.users, rng), action="coupon_24h", as_of=AS_OF, created_at=AS_OF,
            window_days=args.days, control_share=0.1, cost_per_user=0.5, model_versions={"last_mile_buyer": "1"},
            snapshot_id="bench", selection_rule={"rule": "top_k", "budget": None, "top_k": args.users},
            lift_used={"value": 0.15, "source": "prior", "n": None})
        created = time.perf_counter() - t0
        events = events_frame(campaign.members, args.events, args.days, rng)
        t0 = time.perf_counter()
        merged = events.merge(campaign.members[["user_id", "group"]], on="user_id", how="inner")
        merged[merged["behavior"] == "buy"].groupby("group")["user_id"].nunique()
        baseline = time.perf_counter() - t0
        cpu0, t0 = time.process_time(), time.perf_counter()
        loaded = load_campaign(root, campaign.campaign_id)
        loaded.members  # noqa: B018 - members.parquet is read lazily; the read is part of the outcome
        result = measure(loaded, events, events_end=AS_OF + timedelta(days=args.days), margin_rate=0.3,
                         order_value_default=60.0)
        append_outcome(root, campaign.campaign_id, result, read_at=AS_OF + timedelta(days=args.days))
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024
    lift = result.lift
    print("| members | events | create campaign s | outcome read s (CPU s) | pandas merge+groupby s | ratio | "
          "peak GB | incremental rate [95%] |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.users:,} | {args.events:,} | {created:.1f} | {wall:.1f} ({cpu:.1f}) | {baseline:.1f} | "
          f"{wall / baseline:.1f}x | {peak:.1f} | {lift.incremental_rate:+.4f} [{lift.incremental_rate_low:+.4f}, "
          f"{lift.incremental_rate_high:+.4f}] |")


if __name__ == "__main__":
    main()
