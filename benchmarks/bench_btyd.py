"""The BTYD part in the model: AUC of every model of the evaluation table with and without the BTYD columns.

    .venv/bin/python benchmarks/bench_btyd.py --users 20000 [--days 120] [--lapse-days 30] [--seed 7]
    .venv/bin/python benchmarks/bench_btyd.py --users 20000 --days 240 --purchase-only --horizon-days 30 --lapse-days 90

Generates a shop (``features.simulate.shop``) whose truth is recorded at the training cutoffs of both targets (as
``propensity demo`` does), then runs the real training job (``training.job.run_training``, default training
settings) twice into temporary MLflow registries: without the BTYD columns as LightGBM features
(``btyd_features=False``; the BG/NBD baseline row is there either way) and with them. Prints, per target, the AUC
and its 95% bootstrap interval (200 resamples of the test users) of LightGBM, the logistic regression, the rule
score, BG/NBD and the oracle, before and after, and the fitted BG/NBD parameters. ``--lapse-days 0`` leaves N to
the 80/20 fit (the truth is then simulated again for the fitted window: slower). ``--purchase-only`` trains on the
shop's order export instead (buy rows with amounts, :func:`features.simulate.shop.purchase_only`; no oracle: the
simulator's truth describes the clickstream labels).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("lightgbm", "logistic", "rule_score", "bgnbd", "oracle")


def main() -> None:
    from features.settings import FeatureSettings
    from features.simulate.shop import GeneratorConfig, generate, purchase_only
    from training.datasets import cutoffs_for
    from training.job import TrainConfig, run_training
    from training.registry import Registry
    from training.settings import TrainingSettings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--lapse-days", type=int, default=30, help="N; 0 = the fitted 80/20 gap")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--horizon-days", type=int, default=TrainingSettings().horizon_days, help="H")
    ap.add_argument("--purchase-only", action="store_true", help="train on the buy rows only (an order export)")
    args = ap.parse_args()

    training = TrainingSettings(horizon_days=args.horizon_days, lapse_days=args.lapse_days or None)
    base = GeneratorConfig(n_users=args.users, days=args.days, seed=args.seed, lapse_days=args.lapse_days or 30,
                           horizon_days=args.horizon_days)
    end = base.start_utc + timedelta(days=args.days)
    windows = (training.horizon_days, base.lapse_days)
    cutoffs = {c for w in windows for c in cutoffs_for(end, training.n_cutoffs, training.cutoff_spacing_days, w)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        shop = generate(replace(base, truth_cutoffs=tuple(sorted(cutoffs))), root / "shop")
        print(f"generated {shop.n_users:,} users, {shop.n_events:,} events in {time.perf_counter() - t0:.1f} s")
        events, truth = shop.events_dir, shop.truth_path
        if args.purchase_only:
            events, truth = root / "orders.parquet", None
            print(f"order export: {purchase_only(shop.events_dir, events):,} buy rows")
        reports = {}
        for with_btyd in (False, True):
            registry = Registry(f"sqlite:///{root}/mlflow_{with_btyd}.db", root / f"artifacts_{with_btyd}")
            cfg = TrainConfig.from_settings(
                training, FeatureSettings(), events_path=events, out_dir=root / f"plots_{with_btyd}",
                truth_path=truth, data_end=end, btyd_features=with_btyd,
            )
            t0 = time.perf_counter()
            reports[with_btyd] = run_training(cfg, registry)
            print(f"trained {'with' if with_btyd else 'without'} the BTYD columns in {time.perf_counter() - t0:.0f} s")
    for target in reports[True].outcomes:
        before, after = reports[False].outcomes[target], reports[True].outcomes[target]
        n = len(after.result.test_labels)
        print(f"\n{target}: test cutoff {after.cutoffs[-1]:%Y-%m-%d}, {n:,} users, "
              f"base rate {after.result.test_labels.mean():.3f}, N = {reports[True].lapse_days} days")
        print("| model | AUC without BTYD columns | AUC with BTYD columns |\n|---|---|---|")
        for name in MODELS:
            cells = [_cell(o.result.metrics.get(name)) for o in (before, after)]
            print(f"| {name} | {cells[0]} | {cells[1]} |")
        if after.oracle_reason or truth is None:
            print(f"no oracle: {after.oracle_reason or 'no truth for an order export'}")
        btyd = after.result.bundle.btyd
        if btyd is not None:
            b = btyd.bgf_
            gg = "none" if btyd.ggf_ is None else f"p={btyd.ggf_.p_:.3g} q={btyd.ggf_.q_:.3g} v={btyd.ggf_.v_:.3g}"
            print(f"BG/NBD r={b.r_:.3g} alpha={b.alpha_:.3g} a={b.a_:.3g} b={b.b_:.3g} (penalizer {b.penalizer}) on "
                  f"{btyd.n_rows_:,} buyer rows; Gamma-Gamma {gg}")


def _cell(metrics: dict[str, float] | None) -> str:
    if metrics is None:
        return "-"
    return f"{metrics['auc']:.4f} [{metrics['auc_ci_low']:.4f}, {metrics['auc_ci_high']:.4f}]"


if __name__ == "__main__":
    main()
