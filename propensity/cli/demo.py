"""``propensity demo``: the whole job end to end on generated data (and the real-format sample when present)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.campaigns import print_kpis, run_outcomes
from propensity.cli.common import DataDir, settings
from propensity.cli.data import generator_start, parse_day, print_assets, print_validation, run_validation, today_utc
from propensity.cli.models import run_train
from propensity.cli.monitor import run_monitor
from propensity.cli.serving import launch, open_score_store, run_report, run_score, write_send_list
from propensity.cli.ui import console, kv_table, progress_bar
from propensity.config import Settings

FOLLOW_DAYS = 7
"""Days the demo simulates after the cutoff, with the campaigns applied, before it reads their outcomes."""
MEASURE_ALL = 10**9
"""The demo's campaigns take every candidate (top-k above any audience): a test of each action's lift."""
TEST_CONTROL_SHARE = 0.5
TEST_MIN_CONTROL = 50
"""A lift test on a 20k-user shop splits each action's candidates half and half, so even the few hundred win-back
candidates leave a control group worth measuring (production audiences keep the configured 10%)."""
SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "taobao_user_behavior_sample.csv"


def truth_cutoffs(cfg: Settings, start: datetime, days: int, lapse_days: int) -> tuple[datetime, ...]:
    """The training cutoffs of both targets, so the generator records the true probabilities exactly there."""
    from training.datasets import cutoffs_for

    end = start + timedelta(days=days)
    t = cfg.training
    found = set()
    for window in (t.horizon_days, lapse_days):
        found.update(cutoffs_for(end, t.n_cutoffs, t.cutoff_spacing_days, window))
    first = min(found)
    if first < start + timedelta(days=1):
        needed = days + (start + timedelta(days=1) - first).days
        raise typer.BadParameter(
            f"use at least {needed} days: training takes {t.n_cutoffs} cutoffs {t.cutoff_spacing_days} days apart "
            f"before a {lapse_days}-day lapse window", param_hint="--days")
    return tuple(sorted(found))


def demo(
    users: Annotated[int, typer.Option(help="Simulated users.", min=1)] = 20_000,
    days: Annotated[int, typer.Option(help="Simulated days.", min=1)] = 120,
    end: Annotated[date | None, typer.Option(
        help="The simulated data ends at the start of this day (UTC).", parser=parse_day, metavar="DATE",
        show_default="today")] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    data_dir: DataDir = None,
) -> None:
    """Generate data, validate, segment, train, promote, score (a week ago and today), publish, look up, launch
    campaigns, simulate the week after, measure what the campaigns caused, monitor the models, report."""
    from features.build.builder import build_features, default_connection, events_table
    from features.segments.segmenter import Segmenter, asset_summary
    from features.simulate.shop import GeneratorConfig, generate

    cfg = settings(data_dir=data_dir)
    lapse_days = cfg.training.lapse_days or 30
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"lapse_days": lapse_days})})
    con_ = console()

    from features.simulate.continuation import continue_shop
    from serving.activation.campaign_records import CampaignError

    con_.rule("1. generate a shop's behavior log (with the true propensities)")
    gen_dir = cfg.data_dir / "generated"
    base = GeneratorConfig(n_users=users, days=days, start=generator_start(end or today_utc(), days), seed=seed,
                           dirty_share=0.004, lapse_days=lapse_days)
    gcfg = GeneratorConfig(**{**base.__dict__, "truth_cutoffs": truth_cutoffs(cfg, base.start_utc, days, lapse_days)})
    with progress_bar("simulating users") as progress:
        gen = generate(gcfg, gen_dir, progress=progress)
    con_.print(f"{gen.n_events:,} events of {gen.n_users:,} users in {gen.events_dir}")
    cutoff = gcfg.end

    con_.rule("2. validate: the contract, quarantine and the row accounting")
    report = run_validation(cfg, [gen.events_dir], as_of=cutoff)
    print_validation(report)
    if gen.raw_dirty_path is not None:
        con_.print("a raw export with bad rows, to show the quarantine:")
        dirty = run_validation(cfg, [gen.raw_dirty_path], out=cfg.data_dir / "dirty_check", as_of=cutoff,
                               max_bad_share=1.0)
        print_validation(dirty)
    if SAMPLE.is_file():
        con_.print(f"the real Taobao sample ({SAMPLE.name}), read in its own format:")
        print_validation(run_validation(cfg, [SAMPLE], out=cfg.data_dir / "taobao", taobao=True,
                                        source_tz="Asia/Shanghai"))

    con_.rule("3. audience assets as of the end of the data")
    con = default_connection()
    table = events_table(report.events_path, con)
    raw = build_features(table, cutoff, con=con)
    segmenter = Segmenter().fit(table, raw, cutoff)
    print_assets(asset_summary(segmenter.transform(raw), segmenter=segmenter))

    con_.rule("4. train both targets, track in MLflow, gate to @champion")
    run_train(cfg, report.events_path, gen.truth_path, data_end=cutoff)

    con_.rule("5. batch scoring: champions -> audience file -> published snapshot (a week ago, then today)")
    run_score(cfg, report.events_path, cutoff - timedelta(days=FOLLOW_DAYS), reasons=False)
    result = run_score(cfg, report.events_path, cutoff)
    _sample_lookup(cfg, result)
    _fresh_lookup(cfg, result, cutoff)

    con_.rule("6. activation: one campaign per action (treatment | control), send lists")
    test = cfg.campaigns.model_copy(update={"control_share": TEST_CONTROL_SHARE, "min_control": TEST_MIN_CONTROL})
    launched = _campaigns(cfg.model_copy(update={"campaigns": test}), result.audience_path, cutoff)

    con_.rule(f"7. the next {FOLLOW_DAYS} days, simulated with the campaigns applied; what they caused")
    with progress_bar("simulating the week after") as progress:
        nxt = continue_shop(gcfg, cutoff, FOLLOW_DAYS, _members(launched, "treatment"), cfg.data_dir / "generated_next",
                            seed=seed, controls=_members(launched, "control"), progress=progress)
    con_.print(f"{nxt.n_events:,} events after the cutoff in {nxt.events_dir}")
    if not launched:
        raise CampaignError("no action had an audience large enough for a control group: use more --users")
    results = run_outcomes(cfg, [nxt.events_dir], until=nxt.end,
                           campaign_ids=[done.campaign.campaign_id for done in launched.values()])
    print_kpis(results)
    _measured_vs_true(results, launched, nxt.uplift_path)

    con_.rule("8. models in production: both snapshots against what their users did next")
    run_monitor(cfg, [report.events_path, nxt.events_dir])

    con_.rule("9. the asset report")
    report_path = run_report(cfg, scores=result.audience_path)
    _outputs(cfg, result, cfg.scores_dir / "audiences", report_path)


def _sample_lookup(cfg: Settings, result: Any) -> None:
    import json

    import pandas as pd

    audience = pd.read_parquet(result.audience_path, columns=["user_id", "priority"])
    top = audience.sort_values("priority", ascending=False)["user_id"].head(1).tolist()
    store = open_score_store(cfg)
    try:
        snap, found = store.lookup([*top, "no-such-user"])
    finally:
        store.close()
    console().print("sample lookup (the highest-priority user), as the ad system sees it:")
    for uid in top:
        console().print_json(data=json.loads(found[uid]))
    assert snap is not None
    console().print(f"unknown users get the population defaults: {snap.meta.get('defaults')}")


def _fresh_lookup(cfg: Settings, result: Any, cutoff: datetime) -> None:
    """A user without an action carts an item ten hours after the batch: the lookup rescoring them (as ``/lookup``
    does for a user with ingested events) opens the 24-hour coupon window at once. The event goes to a throwaway
    event log, so the demo's history stays as generated."""
    import json
    import tempfile

    import pandas as pd

    from features.events.log import EventLog
    from propensity.cli.serving import activation_config, registry
    from serving.fresh import FreshScorer
    from training.job import load_champions

    audience = pd.read_parquet(result.audience_path, columns=["user_id", "action", "p_buy"])
    idle = audience[audience.action == "none"].sort_values("p_buy", ascending=False)
    if idle.empty or result.snapshot is None:
        return
    uid = str(idle.user_id.iloc[0])
    at = cutoff + timedelta(hours=10)
    cart = pd.DataFrame({"user_id": [uid], "ts": [at - timedelta(minutes=5)], "behavior": ["cart"],
                         "item_id": ["sku-demo"], "category_id": [None], "channel": ["search"], "amount": [None]})
    with tempfile.TemporaryDirectory() as tmp, EventLog(Path(tmp) / "log.db") as log:
        log.append(cart)
        fresh = FreshScorer(log, cfg.online_dir, activation_config(cfg))
        rows = fresh.rescore([uid], result.snapshot.snapshot_id, load_champions(registry(cfg)), at)
    if uid not in rows:
        return
    row = json.loads(rows[uid])
    console().print(f"fresh score: {uid} had no action at the batch (p_buy {idle.p_buy.iloc[0]:.3f}); a cart posted "
                    f"at {at - timedelta(minutes=5):%H:%M} is rescored at the next lookup ({at:%H:%M}): action "
                    f"{row['action']} until {row['action_deadline']}, p_buy {row['p_buy']:.3f}, fresh: "
                    f"{str(row['fresh']).lower()}", soft_wrap=True)


def _campaigns(cfg: Settings, audience_path: Path, as_of: datetime) -> dict[str, Any]:
    """One campaign per action from the profit-maximising audience, its send list as CSV; one summary table."""
    from rich.table import Table

    from serving.activation.actions import ACTIONS
    from serving.activation.campaign_records import CampaignError

    out_dir = cfg.scores_dir / "audiences"
    table = Table(title="campaigns: every candidate of each action, half held out as control (a lift test)",
                  title_justify="left")
    for col in ("action", "candidates", "selected", "to send", "control", "incremental conversions",
                "incremental profit", "send list"):
        table.add_column(col, justify="left" if col in ("action", "send list") else "right")
    launched = {}
    for action in ACTIONS:
        try:  # the whole candidate pool: the demo measures every action's lift, profitable or not yet
            done = launch(cfg, audience_path, action, top=MEASURE_ALL)
        except CampaignError as exc:  # too small an audience to keep a control group
            console().print(f"[yellow]{action}: no campaign[/] ({exc})", soft_wrap=True)
            continue
        path = out_dir / f"{action}.csv"
        write_send_list(done.send, path)
        counts = done.campaign.to_dict().get("counts", {})
        s = done.summary
        table.add_row(action, f"{s.candidates:,}", f"{s.size:,}", f"{counts.get('treatment', 0):,}",
                      f"{counts.get('control', 0):,}", f"{s.expected_incremental:.1f}", f"{s.expected_profit:,.2f}",
                      str(path))
        launched[action] = done
    console().print(table)
    return launched


def _members(launched: dict[str, Any], group: str) -> dict[str, str]:
    """user id -> action of every campaign member in ``group``."""
    out: dict[str, str] = {}
    for action, done in launched.items():
        members = done.campaign.members
        out.update(dict.fromkeys(members.loc[members["group"] == group, "user_id"].astype(str), action))
    return out


def _measured_vs_true(results: list[Any], launched: dict[str, Any], uplift_path: Path) -> None:
    """Measured relative lift (with its interval) next to the simulator's true lift over the same members."""
    import pandas as pd
    from rich.table import Table

    truth = pd.read_parquet(uplift_path)
    table = Table(title="measured vs true lift (relative to the untreated course; win_back: share of lapsers "
                        "saved)", title_justify="left")
    for col in ("action", "treated", "control", "measured lift", "95% interval", "credible", "true lift",
                "lift its value used"):
        table.add_column(col, justify="left" if col == "action" else "right")
    for result in results:
        members = set(launched[result.action].campaign.members["user_id"].astype(str)) if result.action in launched \
            else set()
        own = truth[truth["user_id"].astype(str).isin(members)]
        if own.empty or result.lift is None:
            continue
        if result.action == "win_back":
            true = float(own["uplift"].mean() / (1.0 - own["p_untreated"]).mean())
        else:
            true = float(own["p_treated"].mean() / own["p_untreated"].mean() - 1.0)
        lift = result.lift
        table.add_row(result.action, f"{result.groups['treatment'].users:,}", f"{result.groups['control'].users:,}",
                      f"{lift.relative_lift:+.1%}", f"{lift.relative_lift_low:+.1%} to {lift.relative_lift_high:+.1%}",
                      "yes" if lift.credible else "no", f"{true:+.1%}", f"{result.lift_used['value']:+.1%}")
    console().print(table)


def _outputs(cfg: Settings, result: Any, audiences: Path, report_path: Path) -> None:
    console().print(kv_table("where the results are", {
        "clean events": cfg.clean_dir / "events.parquet",
        "quarantine": cfg.clean_dir / "quarantine.csv",
        "MLflow (runs, registry)": f"{cfg.tracking_uri}  (browse: mlflow ui --backend-store-uri {cfg.tracking_uri})",
        "evaluation plots": cfg.reports_dir / "training",
        "audience file": result.audience_path,
        "send lists per action": audiences,
        "campaign records and outcome reads": cfg.campaigns_dir,
        "monitoring report (realized quality, drift)": cfg.monitoring_dir / "latest.json",
        "asset report": report_path,
        "score store": cfg.redis_url or cfg.store_path,
        "event history (fresh lookups)": cfg.online_dir,
        "kept feature state (next batch)": cfg.feature_state_dir,
        "event log (/events, ingest)": cfg.events_log_path,
    }))
    console().print("serve it: PROPENSITY_SERVING__API_TOKEN=<secret> propensity serve   (then POST /lookup with the "
                    "header Authorization: Bearer <secret>)", soft_wrap=True)
