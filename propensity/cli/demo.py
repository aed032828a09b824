"""``propensity demo``: the whole job end to end on generated data (and the real-format sample when present)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from propensity.cli.common import DataDir, settings
from propensity.cli.data import generator_start, parse_day, print_assets, print_validation, run_validation, today_utc
from propensity.cli.models import run_train
from propensity.cli.serving import activation_config, open_score_store, run_report, run_score
from propensity.cli.ui import console, kv_table, progress_bar
from propensity.config import Settings

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
    """Generate data, validate, segment, train both models, promote, batch-score, publish, look up, report."""
    from features.build.builder import build_features, default_connection, events_table
    from features.segments.segmenter import Segmenter, asset_summary
    from features.simulate.shop import GeneratorConfig, generate

    cfg = settings(data_dir=data_dir)
    lapse_days = cfg.training.lapse_days or 30
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"lapse_days": lapse_days})})
    con_ = console()

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
    print_assets(asset_summary(Segmenter().fit(table, raw, cutoff).transform(raw)))

    con_.rule("4. train both targets, track in MLflow, gate to @champion")
    run_train(cfg, report.events_path, gen.truth_path, data_end=cutoff)

    con_.rule("5. batch scoring: champions -> audience file -> published snapshot")
    result = run_score(cfg, report.events_path, cutoff)
    _sample_lookup(cfg, result)

    con_.rule("6. activation: one audience file per action, and the asset report")
    audiences = _audiences(cfg, result.audience_path)
    report_path = run_report(cfg, scores=result.audience_path)
    _outputs(cfg, result, audiences, report_path)


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


def _audiences(cfg: Settings, audience_path: Path) -> Path:
    """The profit-maximising audience of every action, as CSV files, with one summary table."""
    import pandas as pd
    from rich.table import Table

    from serving.activation.actions import ACTIONS
    from serving.activation.audiences import select_audience

    frame = pd.read_parquet(audience_path)
    out_dir = cfg.scores_dir / "audiences"
    out_dir.mkdir(parents=True, exist_ok=True)
    table = Table(title="who to activate first (profit-maximising cut per action)", title_justify="left")
    for col in ("action", "candidates", "selected", "incremental conversions", "incremental profit", "file"):
        table.add_column(col, justify="left" if col in ("action", "file") else "right")
    for action in ACTIONS:
        picked, summary = select_audience(frame, action, activation_config(cfg))
        path = out_dir / f"{action}.csv"
        picked.drop(columns=[c for c in picked.columns if c.startswith("reasons_")]).to_csv(path, index=False)
        table.add_row(action, f"{summary.candidates:,}", f"{summary.size:,}", f"{summary.expected_incremental:.1f}",
                      f"{summary.expected_profit:,.2f}", str(path))
    console().print(table)
    return out_dir


def _outputs(cfg: Settings, result: Any, audiences: Path, report_path: Path) -> None:
    console().print(kv_table("where the results are", {
        "clean events": cfg.clean_dir / "events.parquet",
        "quarantine": cfg.clean_dir / "quarantine.csv",
        "MLflow (runs, registry)": f"{cfg.tracking_uri}  (browse: mlflow ui --backend-store-uri {cfg.tracking_uri})",
        "evaluation plots": cfg.reports_dir / "training",
        "audience file": result.audience_path,
        "audiences per action": audiences,
        "asset report": report_path,
        "score store": cfg.redis_url or cfg.store_path,
    }))
    console().print("serve it: PROPENSITY_SERVING__API_TOKEN=<secret> propensity serve   (then POST /lookup with the "
                    "header Authorization: Bearer <secret>)", soft_wrap=True)
