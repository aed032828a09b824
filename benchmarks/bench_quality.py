"""Model quality on a generated shop with known true probabilities, and the real Taobao sample as a format check.

    .venv/bin/python benchmarks/bench_quality.py --users 20000 [--days 120] [--lapse-days 30] [--truth-paths 1]

1. Generates a shop (``features.simulate.shop``) whose ground truth is recorded exactly at the training cutoffs of
   both targets (``training.datasets.cutoffs_for``, as ``propensity demo`` does), then runs the real training
   job (``training.job.run_training``) into a temporary MLflow sqlite registry.
2. For each target prints AUC, PR-AUC, log loss, ECE and lift at the top 5% of LightGBM, the rule score (raw
   ranking and isotonic-calibrated), the logistic regression and the oracle (the simulator's true
   probabilities) on the test cutoff, then the gaps against the targets: AUC within 0.01 of the oracle, at least
   +0.05 AUC over the rule score for last-mile buyers, ECE <= 0.02. Gaps carry a paired bootstrap 95% interval
   over test users (the test cutoff is one sample of users: small shops cannot resolve a 0.01 gap). A diagnostic
   row, "features -> true p (ceiling)", fits LightGBM to the simulator's true probabilities (not the 0/1
   outcomes) from the same design matrices: what these features can express once label noise is gone.
3. The real Taobao sample (``../shared/data/taobao_user_behavior_sample.csv`` next to the repository, when
   present): validated in its own format, features as of 2017-12-02 00:00 +08:00, the share of users who buy on
   Dec 2-3 (about 32% expected) and the AUC of the rule score for that label (far too small to train on).

Generated shops and trained bundles are cached under ``--cache`` (keyed by users, days, seed, lapse window and
truth paths) so the other benchmark scripts can reuse them; ``--fresh`` ignores the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data/taobao_user_behavior_sample.csv"
CACHE = ROOT / "benchmarks" / "out" / "cache"
TARGETS = ("last_mile_buyer", "lapse_risk")
CEILING = "features -> true p (ceiling)"
MODELS = ("lightgbm", "rule_score (raw)", "rule_score", "logistic", CEILING, "oracle")


# ------------------------------------------------------------------------------------------------- shared helpers
def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (steadier than wall time on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def load_note() -> str:
    return f"load average (1 min) {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


@dataclass(frozen=True)
class Shop:
    """A generated shop on disk: events (Parquet parts), truth (or None), the end of the simulated period."""

    events_dir: Path
    truth_path: Path | None
    end: datetime
    users: int
    events: int
    gen_seconds: float
    gen_cpu: float
    cached: bool


TRAINING_OVERRIDES: dict[str, Any] = {}
"""Training settings changed from the product defaults by ``--max-users`` (this script and ``bench_training``)."""


def product_settings(lapse_days: int) -> Any:
    """The product's default settings (as ``propensity demo`` uses them: N = ``lapse_days``), ignoring the
    environment and any ``propensity.toml`` for the training section; plus :data:`TRAINING_OVERRIDES`."""
    from propensity.config import Settings, TrainingSettings

    return Settings(training=TrainingSettings(lapse_days=lapse_days, **TRAINING_OVERRIDES))


def max_users_arg(value: str) -> int | None:
    """``--max-users``: a user count, or 0 for everyone."""
    return int(value) or None


def training_cutoffs(end: datetime, lapse_days: int) -> tuple[datetime, ...]:
    """Every training cutoff of both targets under the product settings, so the generator records the truth
    exactly there (``propensity demo`` does the same)."""
    from training.datasets import cutoffs_for

    t = product_settings(lapse_days).training
    found = {*cutoffs_for(end, t.n_cutoffs, t.cutoff_spacing_days, t.horizon_days),
             *cutoffs_for(end, t.n_cutoffs, t.cutoff_spacing_days, lapse_days)}
    return tuple(sorted(found))


def settings_key(lapse_days: int) -> str:
    """Cache-key part naming the training settings a shop's truth or a bundle depends on."""
    t = product_settings(lapse_days).training
    return f"l{lapse_days}-c{t.n_cutoffs}x{t.cutoff_spacing_days}"


def make_shop(users: int, *, days: int = 120, seed: int = 7, lapse_days: int = 30, truth: bool = True,
              truth_paths: int = 1, cache: Path = CACHE, fresh: bool = False) -> Shop:
    """Generate (or reuse from ``cache``) a shop of ``users`` users over ``days`` days."""
    from features.simulate.shop import GeneratorConfig, generate

    key = f"shop-u{users}-d{days}-s{seed}-" + (f"{settings_key(lapse_days)}-truth{truth_paths}" if truth else "notruth")
    where = cache / key
    done = where / "done.json"
    base = GeneratorConfig(n_users=users, days=days, seed=seed, lapse_days=lapse_days, truth_paths=truth_paths)
    end = base.start_utc + timedelta(days=days)
    if done.is_file() and not fresh:
        doc = json.loads(done.read_text())
        truth_path = where / "truth.parquet"
        return Shop(where / "events", truth_path if truth else None, end, users, doc["events"], doc["seconds"],
                    doc["cpu"], cached=True)
    shutil.rmtree(where, ignore_errors=True)
    cutoffs = training_cutoffs(end, lapse_days) if truth else ()
    t0, c0 = time.perf_counter(), cpu_seconds()
    data = generate(replace(base, truth_cutoffs=cutoffs), where)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    done.write_text(json.dumps({"events": data.n_events, "seconds": seconds, "cpu": cpu}))
    return Shop(data.events_dir, data.truth_path if truth else None, end, users, data.n_events, seconds, cpu, False)


def temp_registry(root: Path) -> Any:
    """A private MLflow registry (sqlite tracking store, artifacts beside it)."""
    from training.registry import Registry

    return Registry(f"sqlite:///{root}/mlflow.db", root / "artifacts")


def train_config(shop: Shop, out_dir: Path, lapse_days: int) -> Any:
    """The product's training config (``propensity.cli.models.train_config`` over the default settings, N =
    ``lapse_days``) for ``shop``, plots written under ``out_dir``."""
    import propensity.cli.main  # noqa: F401  (registers the commands; importing cli_models first is circular)
    from propensity.cli.models import train_config as product_config

    cfg = product_config(product_settings(lapse_days), shop.events_dir, shop.truth_path, data_end=shop.end)
    return replace(cfg, out_dir=out_dir)


def describe_training(cfg: Any) -> str:
    """One line naming the training settings a result depends on."""
    b = cfg.params
    return (f"training: {cfg.n_cutoffs} cutoffs {cfg.cutoff_spacing_days} days apart, H = {cfg.horizon_days} d, "
            f"N = {cfg.lapse_days} d; LightGBM lr {b.learning_rate}, {b.num_leaves} leaves, min {b.min_data_in_leaf} "
            f"per leaf, <= {b.num_boost_round} rounds (early stop {b.early_stopping_rounds}), {b.num_threads} threads; "
            f"{cfg.calibration} calibration; user sample <= {cfg.max_users or 'all'}; lapse holdout {cfg.holdout:.0%}")


def save_bundles(report: Any, directory: Path) -> None:
    for target, outcome in report.outcomes.items():
        bundle = outcome.result.bundle
        bundle.meta = {**bundle.meta, "version": outcome.version}
        bundle.save(directory / target)


def load_bundles(directory: Path) -> dict[str, Any] | None:
    from training.bundle import ModelBundle

    if not all((directory / t / "bundle.json").is_file() for t in TARGETS):
        return None
    return {t: ModelBundle.load(directory / t) for t in TARGETS}


def bundle_dir(users: int, days: int, seed: int, lapse_days: int, cache: Path) -> Path:
    """Where bundles trained with the current training settings are cached (a settings change retrains)."""
    import hashlib

    settings = product_settings(lapse_days).training.model_dump_json().encode()
    digest = hashlib.sha1(settings).hexdigest()[:8]
    return cache / f"bundles-u{users}-d{days}-s{seed}-{settings_key(lapse_days)}-{digest}"


def trained_bundles(users: int, *, days: int = 120, seed: int = 7, lapse_days: int = 30, cache: Path = CACHE,
                    fresh: bool = False) -> dict[str, Any]:
    """Both targets' bundles trained on a ``users``-user shop (cached under ``cache``)."""
    from training.job import run_training

    where = bundle_dir(users, days, seed, lapse_days, cache)
    found = None if fresh else load_bundles(where)
    if found is not None:
        return found
    shop = make_shop(users, days=days, seed=seed, lapse_days=lapse_days, truth=False, cache=cache, fresh=fresh)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        report = run_training(train_config(shop, Path(tmp) / "plots", lapse_days), temp_registry(Path(tmp)))
        save_bundles(report, where)
    loaded = load_bundles(where)
    assert loaded is not None
    return loaded


# ------------------------------------------------------------------------------------------------- quality
class CutoffFrames:
    """Labelled feature frames of one shop by (target, cutoff), rebuilt the way the job builds them (features at
    the cutoff inner-joined with that cutoff's labels); raw feature tables are built once per cutoff."""

    def __init__(self, shop: Shop) -> None:
        from features.build.builder import default_connection, events_table

        self.con = default_connection()
        self.events = events_table(shop.events_dir, self.con)
        self._raw: dict[datetime, Any] = {}
        self.sample: set[str] | None = None  # the job's user sample (training.max_users), when it took one
        t = product_settings(30).training
        if t.max_users:
            from training.sampling import pick_users

            users = self.con.to_pandas(self.events.select("user_id").distinct())["user_id"]
            if len(users) > t.max_users:
                self.sample = set(pick_users(users, t.max_users, t.seed))

    def frame(self, target: str, as_of: datetime, bundle: Any, held: bool | None = None) -> Any:
        """The labelled frame; with ``held`` only the users the job held out of training (True) or trained on
        (False) when it split users as well as time (targets whose label window is longer than the spacing)."""
        from features.build.builder import build_features
        from training.datasets import held_out, labelled_frame, window_days

        if as_of not in self._raw:
            self._raw[as_of] = build_features(self.events, as_of, bundle.spec, con=self.con)
        frame = labelled_frame(target, self.events, as_of, bundle.label_spec, self._raw[as_of])
        if self.sample is not None:
            frame = frame[frame["user_id"].isin(self.sample)].reset_index(drop=True)
        t = product_settings(bundle.label_spec.lapse_days).training
        if held is None or window_days(target, bundle.label_spec) <= t.cutoff_spacing_days:
            return frame
        return frame[held_out(frame["user_id"], t.holdout, t.seed) == held].reset_index(drop=True)


def raw_rule_scores(frames: CutoffFrames, target: str, outcome: Any) -> np.ndarray:
    """The unscaled rule score of the test rows (same rows and order as the job's test cutoff), signed so that
    higher means more likely (the rule score ranks value: negated for lapse risk)."""
    frame = frames.frame(target, outcome.cutoffs[-1], outcome.result.bundle, held=True)
    if not np.array_equal(frame["label"].to_numpy(np.int8), outcome.result.test_labels):
        raise RuntimeError(f"{target}: rebuilt test cutoff does not match the job's test rows")
    sign = -1.0 if target == "lapse_risk" else 1.0
    return sign * frame["rule_score"].to_numpy(np.float64)


def feature_ceiling(frames: CutoffFrames, target: str, outcome: Any, truth: Any) -> np.ndarray | None:
    """Test-cutoff scores of a LightGBM fitted to the TRUE probabilities instead of the 0/1 outcomes (cross-entropy
    objective), on the job's own design matrices: trained on the training cutoffs, early-stopped on the validation
    cutoff. It shows how much of the oracle these features can express when label noise is taken away: if it
    lands near the trained model, the features (not the data size or the learner) limit the AUC."""
    import lightgbm as lgb
    import pandas as pd

    bundle = outcome.result.bundle
    column, window_col, window = (("p_buy_true", "horizon_days", bundle.label_spec.horizon_days)
                                  if target == "last_mile_buyer" else
                                  ("p_lapse_true", "lapse_days", bundle.label_spec.lapse_days))
    as_of_col = pd.to_datetime(truth["as_of"], utc=True)

    def matrix(cutoffs: list[datetime], held: bool) -> tuple[np.ndarray, np.ndarray] | None:
        xs, ps = [], []
        for as_of in cutoffs:
            frame = bundle.segmenter.transform(frames.frame(target, as_of, bundle, held))
            at = truth[(as_of_col == pd.Timestamp(as_of)) & (truth[window_col] == window)]
            p = frame[["user_id"]].merge(at[["user_id", column]], on="user_id", how="left")[column]
            if p.isna().any():
                return None
            xs.append(bundle.matrix(frame))
            ps.append(p.to_numpy(np.float64))
        return np.concatenate(xs), np.concatenate(ps)

    train, valid, test = (matrix(outcome.cutoffs[:-2], False), matrix(outcome.cutoffs[-2:-1], True),
                          matrix(outcome.cutoffs[-1:], True))
    if train is None or valid is None or test is None:
        return None
    params = {"objective": "cross_entropy", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50,
              "feature_fraction": 0.8, "verbosity": -1, "num_threads": 2, "deterministic": True, "seed": 7}
    dtrain = lgb.Dataset(train[0], label=train[1])
    booster = lgb.train(params, dtrain, num_boost_round=2000,
                        valid_sets=[lgb.Dataset(valid[0], label=valid[1], reference=dtrain)],
                        callbacks=[lgb.early_stopping(50, verbose=False)])
    return np.clip(booster.predict(test[0]), 0.0, 1.0)


def bootstrap_gap(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int,
                  seed: int = 0) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the full set and its paired bootstrap 95% interval over rows."""
    from sklearn.metrics import roc_auc_score

    point = roc_auc_score(y, a) - roc_auc_score(y, b)
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        if 0 < y[idx].sum() < y.size:
            gaps.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    lo, hi = np.percentile(gaps, [2.5, 97.5]) if gaps else (float("nan"), float("nan"))
    return float(point), float(lo), float(hi)


def quality_tables(shop: Shop, report: Any, n_boot: int, ceiling: bool) -> tuple[list[str], list[str], dict[str, Any]]:
    """Markdown rows: metrics per (target, model), and the gaps against the targets per target."""
    import pandas as pd

    from training.evaluate import evaluate, rank_metrics

    frames = CutoffFrames(shop)
    truth = pd.read_parquet(shop.truth_path) if ceiling and shop.truth_path else None
    metric_rows, gap_rows, doc = [], [], {}
    for target in TARGETS:
        outcome = report.outcomes[target]
        res = outcome.result
        y = res.test_labels.astype(np.int8)
        scores = dict(res.test_scores)
        metrics = {k: dict(v) for k, v in res.metrics.items()}
        rule_raw = raw_rule_scores(frames, target, outcome)
        scores["rule_score (raw)"] = rule_raw
        metrics["rule_score (raw)"] = rank_metrics(y, rule_raw)
        fitted = feature_ceiling(frames, target, outcome, truth) if truth is not None else None
        if fitted is not None:
            scores[CEILING] = fitted
            metrics[CEILING] = evaluate(y, fitted)
        for model in MODELS:
            if model not in metrics:
                continue
            m = metrics[model]
            ll = f"{m['log_loss']:.4f}" if "log_loss" in m else "n/a (not a probability)"
            ece = f"{m['ece']:.4f}" if "ece" in m else "n/a"
            metric_rows.append(
                f"| {target} | {model} | {m['auc']:.4f} | {m['pr_auc']:.4f} | {ll} | {ece} | {m['lift_top5']:.2f} |"
            )
        lgb = scores["lightgbm"]
        rule_best = max(("rule_score (raw)", "rule_score"), key=lambda k: metrics[k]["auc"])
        vs_rule = bootstrap_gap(y, lgb, scores[rule_best], n_boot)
        vs_lr = bootstrap_gap(y, lgb, scores["logistic"], n_boot)
        vs_oracle = bootstrap_gap(y, scores["oracle"], lgb, n_boot) if "oracle" in scores else None
        vs_ceiling = bootstrap_gap(y, scores[CEILING], lgb, n_boot) if CEILING in scores else None
        ece = metrics["lightgbm"]["ece"]
        verdicts = []
        if vs_oracle is not None:
            verdicts.append(_verdict("oracle gap <= 0.01", vs_oracle, 0.01, below=True))
        if target == "last_mile_buyer":
            verdicts.append(_verdict("rule gap >= 0.05", vs_rule, 0.05, below=False))
        verdicts.append(f"ECE <= 0.02: {'met' if ece <= 0.02 else 'missed'} ({ece:.4f})")
        gap_rows.append(
            f"| {target} | {y.size:,} | {int(y.sum()):,} ({y.mean():.1%}) | {_fmt_gap(vs_oracle)} | "
            f"{_fmt_gap(vs_ceiling)} | {_fmt_gap(vs_rule)} vs {rule_best} | {_fmt_gap(vs_lr)} | {ece:.4f} "
            f"| {'; '.join(verdicts)} |"
        )
        doc[target] = {"metrics": metrics, "n": int(y.size), "positives": int(y.sum()), "gap_oracle": vs_oracle,
                       "gap_rule": vs_rule, "gap_logistic": vs_lr, "gap_ceiling": vs_ceiling,
                       "rule_baseline": rule_best, "best_iteration": res.bundle.meta.get("best_iteration")}
    return metric_rows, gap_rows, doc


def _fmt_gap(gap: tuple[float, float, float] | None) -> str:
    return "n/a" if gap is None else f"{gap[0]:+.4f} [{gap[1]:+.4f}, {gap[2]:+.4f}]"


def _verdict(name: str, gap: tuple[float, float, float], bound: float, *, below: bool) -> str:
    point, lo, hi = gap
    ok = point <= bound if below else point >= bound
    sure = (hi <= bound) if below else (lo >= bound)
    return f"{name}: {'met' if ok else 'missed'}" + ("" if ok == sure else " (not resolved at this size)")


# ------------------------------------------------------------------------------------------------- Taobao sample
def taobao_check(sample: Path, workdir: Path) -> dict[str, Any]:
    """Validate the real sample, build features as of 2017-12-02 00:00 +08:00, label buys on Dec 2-3."""
    from features.build.builder import build_features, default_connection, events_table
    from features.events.validate import ReadOptions, ValidationConfig, validate_events
    from training.evaluate import rank_metrics
    from training.labels import LabelSpec, last_mile_labels

    t0 = time.perf_counter()
    report = validate_events(sample, workdir / "taobao", ValidationConfig(),
                             ReadOptions.taobao(source_tz="Asia/Shanghai"), now=datetime(2017, 12, 4, tzinfo=UTC))
    as_of = datetime(2017, 12, 2, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)
    con = default_connection()
    events = events_table(report.events_path, con)
    raw = build_features(events, as_of, con=con)
    labels = last_mile_labels(events, as_of, LabelSpec(horizon_days=2, population="aipl")).to_pandas()
    labels["user_id"] = labels["user_id"].astype(str)
    frame = raw.merge(labels, on="user_id", how="inner", validate="one_to_one")
    y = frame["label"].to_numpy(np.int8)
    out = {"rows_in": report.rows_in, "accepted": report.accepted, "quarantined": report.quarantined,
           "users_with_features": len(raw), "labelled_users": len(frame), "buyers": int(y.sum()),
           "buy_share": float(y.mean()) if len(y) else float("nan"), "seconds": time.perf_counter() - t0}
    out["rule_auc"] = rank_metrics(y, frame["rule_score"].to_numpy(np.float64))["auc"] if 0 < y.sum() < len(y) else None
    return out


# ------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=120)
    ap.add_argument("--lapse-days", type=int, default=30)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--truth-paths", type=int, default=1, help="Monte Carlo paths of p_buy_true (oracle noise)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the gap intervals")
    ap.add_argument("--cache", type=Path, default=CACHE)
    ap.add_argument("--fresh", action="store_true", help="regenerate the shop even when cached")
    ap.add_argument("--max-users", type=max_users_arg, default=-1,
                    help="training.max_users for this run (0 = everyone; default: the product default)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the fit of the true probabilities")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.max_users != -1:
        TRAINING_OVERRIDES["max_users"] = args.max_users

    from training.job import run_training

    shop = make_shop(args.users, days=args.days, seed=args.seed, lapse_days=args.lapse_days,
                     truth_paths=args.truth_paths, cache=args.cache, fresh=args.fresh)
    how = "reused from cache" if shop.cached else f"generated in {shop.gen_seconds:.1f} s (CPU {shop.gen_cpu:.1f} s)"
    print(f"shop: {shop.users:,} users, {shop.events:,} events, {args.days} days, truth paths {args.truth_paths}, "
          f"{how}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        root = Path(tmp)
        t0, c0 = time.perf_counter(), cpu_seconds()
        cfg = train_config(shop, root / "plots", args.lapse_days)
        print(describe_training(cfg), flush=True)
        report = run_training(cfg, temp_registry(root))
        train_s, train_cpu = time.perf_counter() - t0, cpu_seconds() - c0
        save_bundles(report, bundle_dir(args.users, args.days, args.seed, args.lapse_days, args.cache))
        metric_rows, gap_rows, doc = quality_tables(shop, report, args.bootstrap, not args.no_ceiling)
        taobao = taobao_check(SAMPLE, root) if SAMPLE.is_file() else None

    print(f"\nrun_training (both targets, temp MLflow registry): {train_s:.1f} s wall, {train_cpu:.1f} s CPU; "
          f"{load_note()}\n")
    print("| target | model | AUC | PR-AUC | log loss | ECE | lift@5% |\n|---|---|---|---|---|---|---|")
    print("\n".join(metric_rows))
    print("\n| target | test users | positives | oracle - LightGBM AUC [95% CI] | ceiling - LightGBM AUC [95% CI] "
          "| LightGBM - rule AUC [95% CI] | LightGBM - logistic AUC [95% CI] | LightGBM ECE | targets |\n"
          "|---|---|---|---|---|---|---|---|---|")
    print("\n".join(gap_rows))
    if taobao is None:
        print(f"\nTaobao sample not found at {SAMPLE}: skipped")
    else:
        auc = "n/a" if taobao["rule_auc"] is None else f"{taobao['rule_auc']:.3f}"
        print("\n| Taobao sample | rows in / accepted / quarantined | users (as of Dec 2 +08) | buy Dec 2-3 "
              "| rule-score AUC | seconds |\n|---|---|---|---|---|---|")
        print(f"| {SAMPLE.name} | {taobao['rows_in']:,} / {taobao['accepted']:,} / {taobao['quarantined']:,} "
              f"| {taobao['labelled_users']} | {taobao['buyers']} ({taobao['buy_share']:.1%}; ~32% expected) "
              f"| {auc} | {taobao['seconds']:.1f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"users": args.users, "events": shop.events, "train_seconds": train_s,
                                         "train_cpu": train_cpu, "quality": doc, "taobao": taobao}, indent=1,
                                        default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
