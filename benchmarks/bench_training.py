"""Wall and CPU time of the training job (both targets) with a breakdown, against a plain ``lightgbm.train``.

    .venv/bin/python benchmarks/bench_training.py --users 200000 [--days 120] [--lapse-days 30] [--profile out.prof]

Generates a shop without ground truth (or reuses it from the cache shared with ``bench_quality.py``), runs
``training.job.run_training`` into a temporary MLflow sqlite registry and times its parts by wrapping the real
functions it calls (the same code runs; only a stopwatch is added around each call):

- feature builds (``build_features``, one per distinct cutoff of both targets), segmenter fit and transform,
  labels and joins (``labelled_frame``);
- ``train_target``: LightGBM fit (``fit_booster``), logistic baseline, SHAP contributions, evaluation;
- plots, MLflow logging and registration (``Registry.log_challenger``), the champion check.

Same-run baseline: a plain ``lightgbm.train`` (same parameters, early stopping, ``num_threads``) on the very same
design matrices the job built, so the job's overhead over the bare fit is visible. Target: 1M users <= 120 s.
``--profile`` also writes a cProfile of the job (Python frames only; DuckDB and LightGBM threads show as the
calls that wait for them). ``--omp-check`` instead times one LightGBM fit in fresh processes with 2 threads as
shipped, with ``OMP_WAIT_POLICY=passive`` and with 1 thread (spinning OpenMP workers on shared cores).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT, ROOT / "benchmarks"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import bench_quality
from bench_quality import (
    CACHE,
    bundle_dir,
    cpu_seconds,
    describe_training,
    load_note,
    make_shop,
    max_users_arg,
    peak_rss_mib,
    save_bundles,
    temp_registry,
    train_config,
)


class Stopwatch:
    """Inclusive wall/CPU seconds and call counts per named function."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0, c0 = time.perf_counter(), cpu_seconds()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall[name] += time.perf_counter() - t0
                self.cpu[name] += cpu_seconds() - c0
                self.calls[name] += 1

        return timed


@contextmanager
def instrumented(watch: Stopwatch, points: list[tuple[Any, str, str]]) -> Iterator[None]:
    """Wrap ``getattr(owner, attr)`` in ``watch`` under ``name`` for every point; restore them afterwards."""
    saved = []
    try:
        for owner, attr, name in points:
            original = getattr(owner, attr)
            saved.append((owner, attr, original))
            setattr(owner, attr, watch.wrap(name, original))
        yield
    finally:
        for owner, attr, original in reversed(saved):
            setattr(owner, attr, original)


# (name, indent level) in display order; each child's time is included in its parent's.
BREAKDOWN = (
    ("data fingerprint", 0),
    ("feature builds", 0),
    ("segmenter fit", 0),
    ("segmenter transform", 0),
    ("labels + join", 0),
    ("train_target", 0),
    ("LightGBM fit", 1),
    ("logistic fit", 1),
    ("SHAP contributions", 1),
    ("evaluate", 1),
    ("plots", 0),
    ("champion check", 0),
    ("MLflow log + register", 0),
    ("MLflow promote + tag", 0),
)


def points(captured: list[tuple[Any, ...]]) -> list[tuple[Any, str, str]]:
    from features.segments.segmenter import Segmenter
    from training import job, train
    from training.bundle import ModelBundle
    from training.registry import Registry

    def capture(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def keep(*args: Any, **kwargs: Any) -> Any:
            captured.append(args)
            return fn(*args, **kwargs)

        return keep

    train.fit_booster = capture(train.fit_booster)  # restored by the caller (module attribute saved first)
    return [
        (job, "data_fingerprint", "data fingerprint"),
        (job, "build_features", "feature builds"),
        (Segmenter, "fit", "segmenter fit"),
        (Segmenter, "transform", "segmenter transform"),
        (job, "labelled_frame", "labels + join"),
        (job, "train_target", "train_target"),
        (train, "fit_booster", "LightGBM fit"),
        (train, "fit_logistic", "logistic fit"),
        (ModelBundle, "contributions", "SHAP contributions"),
        (train, "evaluate", "evaluate"),
        (job, "write_plots", "plots"),
        (job, "_champion_metrics", "champion check"),
        (Registry, "log_challenger", "MLflow log + register"),
        (Registry, "promote", "MLflow promote + tag"),
    ]


def plain_lightgbm(captured: list[tuple[Any, ...]]) -> tuple[float, float, list[int]]:
    """Bare ``lightgbm.train`` on the job's own matrices (same params, early stopping): wall, CPU, rounds."""
    import lightgbm as lgb

    wall = cpu = 0.0
    rounds = []
    for x_tr, y_tr, x_va, y_va, names, params in captured:
        t0, c0 = time.perf_counter(), cpu_seconds()
        pos = int(y_tr.sum())
        train = lgb.Dataset(x_tr, label=y_tr, feature_name=names)
        valid = lgb.Dataset(x_va, label=y_va, reference=train)
        booster = lgb.train(params.lgb_params(pos, len(y_tr) - pos), train, num_boost_round=params.num_boost_round,
                            valid_sets=[valid],
                            callbacks=[lgb.early_stopping(params.early_stopping_rounds, verbose=False)])
        wall += time.perf_counter() - t0
        cpu += cpu_seconds() - c0
        rounds.append(int(booster.best_iteration or booster.current_iteration()))
    return wall, cpu, rounds


def omp_child(rows: int, threads: int) -> None:
    """Fit 150 rounds on a synthetic (rows, 77) matrix with ``threads`` threads; print wall and CPU as JSON."""
    import lightgbm as lgb
    import numpy as np

    from training.models import BoosterParams

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 77))
    x[rng.random(x.shape) < 0.2] = np.nan
    y = (rng.random(rows) < 1 / (1 + np.exp(3 - np.nan_to_num(x[:, 1]) - 0.5 * np.nan_to_num(x[:, 2])))).astype(np.int8)
    params = BoosterParams(num_threads=threads).lgb_params(int(y.sum()), int(rows - y.sum()))
    t0, c0 = time.perf_counter(), cpu_seconds()
    lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=150)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0}))


def omp_check(rows: int, busy: int) -> list[str]:
    """The same LightGBM fit in fresh processes: 2 threads as shipped, 2 threads with ``OMP_WAIT_POLICY=passive``
    (OpenMP workers sleep instead of spinning at barriers) and 1 thread. On a machine whose cores are shared with
    other work, spinning workers burn their time slices waiting for a descheduled sibling. ``busy`` > 0 starts
    that many CPU-bound Python processes for the duration (a reproducible stand-in for a shared machine)."""
    import subprocess

    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        return _omp_rows(rows, busy)
    finally:
        for hog in hogs:
            hog.terminate()
            hog.wait(10)


def _omp_rows(rows: int, busy: int) -> list[str]:
    import os
    import subprocess

    out = []
    for label, env, threads in (("2 threads (as shipped)", {}, 2), ("2 threads, OMP_WAIT_POLICY=passive",
                                {"OMP_WAIT_POLICY": "passive"}, 2), ("1 thread", {}, 1)):
        done = subprocess.run([sys.executable, __file__, "--omp-child", str(threads), "--omp-rows", str(rows)],
                              env={**os.environ, **env}, capture_output=True, text=True, check=True, cwd=ROOT)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        out.append(f"| {label} | {rows:,} x 77, 150 rounds | {busy} | {r['wall']:.1f} | {r['cpu']:.1f} "
                   f"| {os.getloadavg()[0]:.1f} |")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=200_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--lapse-days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--fresh", action="store_true", help="regenerate the shop even when cached")
    ap.add_argument("--max-users", type=max_users_arg, default=-1,
                    help="training.max_users for this run (0 = everyone; default: the product default)")
    ap.add_argument("--profile", type=Path, default=None, help="write a cProfile of run_training here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--no-header", action="store_true", help="print only the summary row")
    ap.add_argument("--omp-check", action="store_true", help="only compare LightGBM thread settings (fresh processes)")
    ap.add_argument("--omp-rows", type=int, default=300_000, help=argparse.SUPPRESS)
    ap.add_argument("--busy", type=int, default=0, help="with --omp-check: CPU-bound processes to run alongside")
    ap.add_argument("--omp-child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.max_users != -1:
        bench_quality.TRAINING_OVERRIDES["max_users"] = args.max_users
    if args.omp_child is not None:
        omp_child(args.omp_rows, args.omp_child)
        return 0
    if args.omp_check:
        print("| LightGBM fit | data | busy processes alongside | wall s | CPU s | load (1 min) |\n"
              "|---|---|---|---|---|---|")
        print("\n".join(omp_check(args.omp_rows, args.busy)))
        return 0

    from training import train
    from training.job import run_training

    shop = make_shop(args.users, days=args.days, seed=args.seed, lapse_days=args.lapse_days, truth=False,
                     cache=args.cache, fresh=args.fresh)
    how = "reused from cache" if shop.cached else f"generated in {shop.gen_seconds:.1f} s"
    print(f"shop: {shop.users:,} users, {shop.events:,} events ({how})", file=sys.stderr, flush=True)
    watch, captured = Stopwatch(), []
    original_fit = train.fit_booster
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        cfg = train_config(shop, root / "plots", args.lapse_days)
        registry = temp_registry(root)
        print(describe_training(cfg), file=sys.stderr, flush=True)
        profiler = cProfile.Profile() if args.profile else None
        try:
            with instrumented(watch, points(captured)):
                t0, c0 = time.perf_counter(), cpu_seconds()
                if profiler:
                    profiler.enable()
                report = run_training(cfg, registry)
                if profiler:
                    profiler.disable()
                total, total_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        finally:
            train.fit_booster = original_fit
        if profiler and args.profile:
            profiler.dump_stats(str(args.profile))
        save_bundles(report, bundle_dir(args.users, args.days, args.seed, args.lapse_days, args.cache))
    base_wall, base_cpu, rounds = plain_lightgbm(captured)
    rows = {t: len(o.result.test_labels) for t, o in report.outcomes.items()}
    train_rows = [len(c[1]) for c in captured]
    n_features = captured[0][0].shape[1] if captured else 0
    del captured

    if not args.no_header:
        print(f"\nrun_training at {args.users:,} users ({shop.events:,} events): {total:.1f} s wall, "
              f"{total_cpu:.1f} s CPU, peak RSS {peak_rss_mib():,.0f} MiB; {load_note()}")
        print(f"user sample (training.max_users): {report.train_users:,} of {report.shop_users:,} users")
        print(f"design matrices: train rows {train_rows} x {n_features} features; test rows {rows}; "
              f"LightGBM rounds {rounds}\n")
        print("| part | calls | wall s | CPU s | share of wall |\n|---|---|---|---|---|")
        accounted = 0.0
        for name, level in BREAKDOWN:
            if name not in watch.calls:
                continue
            if level == 0:
                accounted += watch.wall[name]
            label = ("&nbsp;&nbsp;" * 2 * level) + name
            print(f"| {label} | {watch.calls[name]} | {watch.wall[name]:.1f} | {watch.cpu[name]:.1f} "
                  f"| {watch.wall[name] / total:.0%} |")
        print(f"| other (job glue) | | {total - accounted:.1f} | | {(total - accounted) / total:.0%} |")
        print(f"| **run_training total** | | **{total:.1f}** | **{total_cpu:.1f}** | 100% |")
        print(f"| baseline: plain lightgbm.train, same matrices | {len(rounds)} | {base_wall:.1f} | {base_cpu:.1f} "
              f"| {base_wall / total:.0%} |\n")
        print("| users | events | run_training s (CPU s) | plain lightgbm.train s (CPU s) | ratio wall (CPU) "
              "| feature builds s | LightGBM fit s | MLflow s | target 1M <= 120 s |"
              "\n|---|---|---|---|---|---|---|---|---|")
    per_million = total * 1_000_000 / args.users
    verdict = ("met" if total <= 120 else "missed") if args.users >= 1_000_000 else (
        f"{'on track' if per_million <= 120 else 'missed'}: linear extrapolation {per_million:,.0f} s at 1M")
    print(f"| {args.users:,} | {shop.events:,} | {total:.1f} ({total_cpu:.1f}) | {base_wall:.1f} ({base_cpu:.1f}) "
          f"| {total / base_wall:.1f}x ({total_cpu / base_cpu:.1f}x) | {watch.wall['feature builds']:.1f} "
          f"| {watch.wall['LightGBM fit']:.1f} | {watch.wall['MLflow log + register']:.1f} | {verdict} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "users": args.users, "events": shop.events, "seconds": total, "cpu": total_cpu,
            "train_users": report.train_users,
            "baseline_seconds": base_wall, "baseline_cpu": base_cpu, "rounds": rounds, "train_rows": train_rows,
            "parts": {k: {"wall": watch.wall[k], "cpu": watch.cpu[k], "calls": watch.calls[k]} for k in watch.calls},
        }, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
