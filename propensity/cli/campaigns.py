"""Campaign commands: ``campaigns`` (list, ``show ID``) and ``outcomes`` (what the actions caused)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import DataDir, settings, time_option, utc
from propensity.cli.inputs import check_events
from propensity.cli.ui import console, kv_table
from propensity.config import Settings
from propensity.paths import check_output, replace_atomically

campaigns_app = typer.Typer(
    help="Campaigns the audiences became: `propensity campaigns` lists them, `campaigns show ID` prints one.",
    invoke_without_command=True, no_args_is_help=False,
)


@campaigns_app.callback()
def campaigns(ctx: typer.Context, data_dir: DataDir = None) -> None:
    """List the recorded campaigns, oldest first (action, as_of, window, groups, last outcome read)."""
    ctx.obj = settings(data_dir=data_dir)
    if ctx.invoked_subcommand is None:
        print_campaigns(ctx.obj)


@campaigns_app.command("show")
def show(ctx: typer.Context, campaign_id: Annotated[str, typer.Argument(metavar="ID")],
         data_dir: DataDir = None) -> None:
    """One campaign: its record and every outcome read."""
    from serving.activation.campaign_records import load_campaign, outcome_reads

    cfg = settings(data_dir=data_dir) if data_dir is not None else ctx.obj
    campaign = load_campaign(cfg.campaigns_dir, campaign_id)
    facts = campaign.to_dict()
    console().print(kv_table(f"campaign {campaign_id}", {k: _text(v) for k, v in facts.items()}))
    for read in outcome_reads(cfg.campaigns_dir, campaign_id):
        print_outcome(read)


def print_campaigns(cfg: Settings) -> None:
    from rich.table import Table

    from serving.activation.campaign_records import list_campaigns, outcome_reads

    found = list_campaigns(cfg.campaigns_dir) if cfg.campaigns_dir.is_dir() else []
    if not found:
        console().print(f"no campaigns in {cfg.campaigns_dir}: `propensity audience` records one per audience")
        return
    table = Table(title=f"campaigns in {cfg.campaigns_dir}", title_justify="left")
    for col in ("id", "action", "as_of", "window closes", "treatment", "control", "last read"):
        table.add_column(col, no_wrap=col == "id")
    for c in found:
        facts = c.to_dict()
        counts = facts.get("counts", {})
        reads = outcome_reads(cfg.campaigns_dir, c.campaign_id)
        table.add_row(c.campaign_id, c.action, str(facts.get("as_of")), str(facts.get("window_close")),
                      f"{counts.get('treatment', 0):,}", f"{counts.get('control', 0):,}",
                      reads[-1]["status"] if reads else "-")
    console().print(table)


def outcomes(
    events: Annotated[list[Path], typer.Option(
        "--events", help="Clean events after the campaigns' as_of (Parquet from `propensity validate`); repeatable.")],
    campaign: Annotated[str | None, typer.Option(help="Read only this campaign (default: every campaign).",
                                                 metavar="ID")] = None,
    until: Annotated[datetime | None, time_option(
        "--until", help="The events are complete up to this time.", show_default="the last event")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the numbers as JSON here.")] = None,
    data_dir: DataDir = None,
) -> None:
    """What each campaign caused: treatment vs control with a 95% interval, incremental profit, forecast vs
    outcome, and the playbook KPIs. Each read is appended to the campaign and logged to MLflow."""
    cfg = settings(data_dir=data_dir)
    if json_out is not None:
        check_output(json_out, cfg)
    results = run_outcomes(cfg, events, campaign_id=campaign, until=utc(until))
    for result in results:
        print_outcome(result.to_dict())
    print_kpis(results)
    if json_out is not None:
        from serving.activation.outcome_result import playbook_kpis

        kpis = {k: v.__dict__ for k, v in playbook_kpis(results).items()}
        text = json.dumps({"campaigns": [r.to_dict() for r in results], "kpis": kpis}, indent=2, default=str)
        replace_atomically(json_out, lambda tmp: tmp.write_text(text))
        console().print(f"numbers written to {json_out}")


def run_outcomes(cfg: Settings, events: list[Path], *, campaign_id: str | None = None,
                 until: datetime | None = None, campaign_ids: list[str] | None = None) -> list[Any]:
    """Read every campaign (or ``campaign_id``, or ``campaign_ids``) against the events, append the reads, log them
    to MLflow; the results."""
    import pandas as pd

    from propensity.cli.serving import activation_config
    from serving.activation.campaign_records import CampaignError, list_campaigns
    from serving.activation.loop import read_outcomes
    from serving.activation.outcomes import log_to_mlflow

    frames = [pd.read_parquet(check_events(p), columns=["user_id", "ts", "behavior", "amount"]) for p in events]
    frame = pd.concat(frames, ignore_index=True)
    if not (campaign_id or campaign_ids) and not (cfg.campaigns_dir.is_dir() and list_campaigns(cfg.campaigns_dir)):
        raise CampaignError(f"no campaigns in {cfg.campaigns_dir}: `propensity audience` records one per audience")
    if until is None:
        last = pd.to_datetime(frame["ts"], utc=True).max() if len(frame) else None
        if last is None or pd.isna(last):
            raise CampaignError("the events are empty: pass events after the campaigns' as_of, or --until")
        until = (last + pd.Timedelta(microseconds=1)).to_pydatetime()
    now = datetime.now(UTC)
    activation = activation_config(cfg)
    done = [read for one in (campaign_ids or [campaign_id]) for read in read_outcomes(
        cfg.campaigns_dir, frame, activation, events_end=until, read_at=now, campaign_id=one)]
    for _campaign, result, path in done:
        log_to_mlflow(result, cfg.tracking_uri, read_at=now, read_id=path.stem, artifact_root=cfg.artifact_root)
    return [result for _, result, _ in done]


def print_outcome(read: dict[str, Any]) -> None:
    """One outcome read as a table: groups, lift with its interval, money, forecast vs outcome."""
    groups = read.get("groups", {})
    rows: dict[str, Any] = {"status": read["status"], "window": f"{read['as_of']} -> {read['window_close']}"}
    if read["status"] != "closed":
        rows["days elapsed"] = f"{read['days_elapsed']:.1f} of {read['window_days']:.1f} (no verdict yet)"
    for name in ("treatment", "control", "global_control"):
        g = groups.get(name)
        if g and g.get("users"):
            rows[name] = f"{g['conversions']:,} of {g['users']:,} converted ({_pct(g.get('rate'))})"
    lift = read.get("lift")
    if lift:
        rows["incremental rate"] = (f"{_pct(lift['incremental_rate'])} (95% interval "
                                    f"{_pct(lift['incremental_rate_low'])}"
                                    f" to {_pct(lift['incremental_rate_high'])})"
                                    f" - {'credible' if lift['credible'] else 'not credible'}")
        rows["relative lift"] = (f"{_pct(lift['relative_lift'])} of the {lift['relative_basis']} "
                                 f"({_pct(lift['relative_lift_low'])} to {_pct(lift['relative_lift_high'])})")
        rows["incremental conversions"] = f"{lift['incremental_conversions']:,.1f}"
        rows["incremental profit"] = (f"{lift['incremental_profit']:,.2f} after cost {lift['total_cost']:,.2f} "
                                      f"({lift['incremental_profit_low']:,.2f} to "
                                      f"{lift['incremental_profit_high']:,.2f})")
    forecast = read.get("forecast")
    if forecast:
        rows["forecast vs outcome"] = (f"control predicted {_pct(forecast['predicted'])} {forecast['course']}, "
                                       f"realized {_pct(forecast['realized'])}")
    rows["lift used for its expected value"] = f"{read['lift_used']['value']:+.1%} ({read['lift_used']['source']})"
    console().print(kv_table(f"{read['campaign_id']} ({read['action']})", rows))


def print_kpis(results: list[Any]) -> None:
    """The playbook KPIs pooled over the closed reads, against their targets."""
    from serving.activation.outcome_result import playbook_kpis

    kpis = playbook_kpis(results)
    names = {"last_mile": "last-mile activation rate", "P": "conversion P", "I": "conversion I", "A": "conversion A"}
    rows = {}
    for key, kpi in kpis.items():
        verdict = "n/a" if kpi.met is None else ("met" if kpi.met else "missed")
        target = f" (target >= {kpi.target:.0%}: {verdict})" if kpi.target is not None else ""
        rows[names.get(key, key)] = f"{_pct(kpi.rate)} of {kpi.users:,}{target}" if kpi.users else f"n/a{target}"
    console().print(kv_table("playbook KPIs (closed campaigns, treated users)", rows))


def _pct(value: Any) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.1%}"


def _text(value: Any) -> str:
    return json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
