"""Evaluation plots written as PNG files (matplotlib, Agg canvas, no pyplot state).

Figures are built as :class:`matplotlib.figure.Figure` objects attached to an Agg canvas inside
:func:`save_plots`, so importing this module does not import matplotlib, the process-wide backend
is never switched, and no figure is kept in pyplot's registry (nothing to leak between calls).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from training.evaluate import (
    EvaluationInputError,
    _auc,
    _average_precision,
    _check_labels,
    _check_scores,
    _descending_order,
    _pr_points,
    _roc_points,
    reliability_table,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["PLOT_FILES", "save_plots"]

PLOT_FILES: dict[str, str] = {
    "roc": "roc.png",
    "pr": "pr.png",
    "reliability": "reliability.png",
    "gain": "gain.png",
    "precision_vs_audience": "precision_vs_audience.png",
    "feature_importance": "feature_importance.png",
    "mean_abs_contribution": "mean_abs_contribution.png",
}
_MAX_CURVE_POINTS = 2000
_TOP_FEATURES = 20
_MIN_AUDIENCE = 100  # precision of fewer users is too noisy to read on the audience-size plot
_DPI = 110


def _figure(width: float = 7.0, height: float = 5.0) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _write(fig: Figure, path: Path) -> Path:
    try:
        fig.savefig(path, dpi=_DPI)
    finally:
        fig.clear()
    return path


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """At most ``_MAX_CURVE_POINTS`` evenly spaced points of a curve, always keeping both ends."""
    if x.size <= _MAX_CURVE_POINTS:
        return x, y
    idx = np.unique(np.linspace(0, x.size - 1, _MAX_CURVE_POINTS).round().astype(np.int64))
    return x[idx], y[idx]


def _captured(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Cumulative positives when users are taken in descending score order (stable)."""
    return np.cumsum(y[_descending_order(s)])


def _label(
    ax: Any, title: str, xlim: tuple[float, float], xlabel: str, ylabel: str, loc: str, **legend: Any
) -> None:
    """Title, x range (y from 0 to just above 1), axis labels, legend and grid of a curve panel."""
    ax.set(xlim=xlim, ylim=(0, 1.01), title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(loc=loc, **legend)
    ax.grid(alpha=0.3, which="both")


def _roc(
    path: Path, y: np.ndarray, scores: dict[str, np.ndarray], aucs: dict[str, float], title: str
) -> Path:
    fig = _figure(6.0, 6.0)
    ax = fig.add_subplot()
    for i, (name, s) in enumerate(scores.items()):
        fpr, tpr = _thin(*_roc_points(y, s))
        ax.plot(fpr, tpr, lw=2.2 if i == 0 else 1.4, label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random order (AUC 0.500)")
    _label(ax, f"{title}ROC curve: positives found vs. false alarms", (0, 1),
           "Share of negatives ranked above the cut (false positive rate)",
           "Share of positives ranked above the cut (true positive rate)", "lower right")
    return _write(fig, path)


def _pr(
    path: Path, y: np.ndarray, scores: dict[str, np.ndarray], aucs: dict[str, float], title: str
) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, s) in enumerate(scores.items()):
        recall, precision = _thin(*_pr_points(y, s))
        ax.step(
            np.r_[0.0, recall],
            np.r_[precision[0], precision],
            where="post",
            lw=2.2 if i == 0 else 1.4,
            label=f"{name} (AUC {aucs[name]:.3f}, avg. precision {_average_precision(y, s):.3f})",
        )
    base_rate = float(y.mean())
    ax.axhline(
        base_rate, ls="--", color="grey", lw=1, label=f"random order (base rate {base_rate:.3f})"
    )
    _label(ax, f"{title}Precision vs. recall", (0, 1), "Share of all positives found (recall)",
           "Share of selected users who are positive (precision)", "upper right", fontsize="small")
    return _write(fig, path)


def _reliability(
    path: Path, y: np.ndarray, name: str, p: np.ndarray, auc: float, n_bins: int, title: str
) -> Path:
    table = reliability_table(y, p, n_bins)
    gaps = (table["mean_predicted"] - table["observed_rate"]).abs()
    ece = float((gaps * table["count"]).sum() / y.size)
    fig = _figure(6.0, 7.0)
    top, bottom = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    upper = float(max(table["mean_predicted"].max(), table["observed_rate"].max()))
    lim = min(1.0, 1.05 * upper) if upper > 0 else 1.0
    top.plot([0, lim], [0, lim], ls="--", color="grey", lw=1, label="perfectly calibrated")
    top.plot(
        table["mean_predicted"],
        table["observed_rate"],
        marker="o",
        lw=1.8,
        label=f"{name} (AUC {auc:.3f}, ECE {ece:.4f})",
    )
    top.set(xlim=(0, lim), ylim=(0, lim))
    top.set_title(f"{title}Calibration: predicted vs. observed\n({len(table)} bins of equal user count)")
    top.set_ylabel("Observed share of positives in the bin")
    top.legend(loc="upper left")
    top.grid(alpha=0.3)
    bottom.hist(p[p <= lim], bins=50, range=(0.0, lim), color="tab:blue")
    bottom.set_xlabel("Predicted probability (upper panel: mean within each bin)")
    bottom.set_ylabel("Users")
    bottom.grid(alpha=0.3)
    return _write(fig, path)


def _gain(
    path: Path, y: np.ndarray, scores: dict[str, np.ndarray], aucs: dict[str, float], title: str
) -> Path:
    n, positives = y.size, float(y.sum())
    sizes = np.unique(np.linspace(1, n, min(n, 400)).round().astype(np.int64))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, s) in enumerate(scores.items()):
        captured = _captured(y, s)[sizes - 1] / positives
        label = f"{name} (AUC {aucs[name]:.3f})"
        ax.plot(np.r_[0.0, sizes / n], np.r_[0.0, captured], lw=2.2 if i == 0 else 1.4, label=label)
    base_rate = positives / n
    ax.plot([0, base_rate, 1], [0, 1, 1], ls=":", color="black", lw=1, label="perfect ranking")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random order")
    _label(ax, f"{title}Cumulative gain: positives captured by audience size", (0, 1),
           "Share of audience selected, highest scores first", "Share of all positives captured", "lower right")
    return _write(fig, path)


def _precision_vs_audience(
    path: Path, y: np.ndarray, scores: dict[str, np.ndarray], aucs: dict[str, float], title: str
) -> Path:
    n = y.size
    smallest = min(_MIN_AUDIENCE, max(1, n // 10))
    sizes = np.unique(np.geomspace(smallest, n, min(n, 300)).round().astype(np.int64))
    fig = _figure()
    ax = fig.add_subplot()
    for i, (name, s) in enumerate(scores.items()):
        precision = _captured(y, s)[sizes - 1] / sizes
        label = f"{name} (AUC {aucs[name]:.3f})"
        ax.plot(sizes / n, precision, lw=2.2 if i == 0 else 1.4, label=label)
    base_rate = float(y.mean())
    ax.axhline(
        base_rate, ls="--", color="grey", lw=1, label=f"whole audience (base rate {base_rate:.3f})"
    )
    ax.set_xscale("log")
    _label(ax, f"{title}Precision by audience size", (smallest / n, 1),
           "Share of audience selected, highest scores first (log scale)", "Share of selected users who are positive",
           "upper right")
    return _write(fig, path)


def _bars(path: Path, values: pd.Series, title: str, xlabel: str) -> Path:
    top = values.sort_values(ascending=False, kind="stable").head(_TOP_FEATURES).iloc[::-1]
    fig = _figure(7.0, 0.5 + 0.3 * len(top) + 1.0)
    ax = fig.add_subplot()
    ax.barh([str(i) for i in top.index], top.to_numpy(dtype=np.float64), color="tab:blue")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Feature")
    ax.grid(alpha=0.3, axis="x")
    return _write(fig, path)


def _check_series(name: str, values: object) -> pd.Series:
    if not isinstance(values, pd.Series):
        raise EvaluationInputError(
            f"{name} must be a pandas Series (feature -> value), got {type(values).__name__}"
        )
    if values.empty:
        raise EvaluationInputError(f"{name} is empty: no features to plot")
    try:
        numeric = values.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationInputError(f"{name} must hold numbers: {exc}") from None
    if not np.isfinite(numeric.to_numpy()).all():
        raise EvaluationInputError(f"{name} must be finite (found NaN or infinity)")
    return numeric


def save_plots(
    out_dir: Path,
    y_true: np.ndarray,
    scores: Mapping[str, np.ndarray],
    *,
    importance: pd.Series | None = None,
    mean_abs_contrib: pd.Series | None = None,
    title_prefix: str = "",
    n_bins: int = 10,
) -> dict[str, Path]:
    """Write the evaluation figures as PNG files into ``out_dir`` (created if missing).

    ``scores`` maps model name to a 1-D score array of ``len(y_true)`` rows; the first entry is
    the main model and must be probabilities in ``[0, 1]`` (it gets the calibration plot); the
    others may be any finite scores (a rule score, an oracle). ``importance`` (feature -> total
    gain) and ``mean_abs_contrib`` (feature -> mean |contribution| in log-odds) each give a bar
    chart of the top 20 features when provided. ``title_prefix`` starts every title (e.g.
    ``"p_buy, cutoff 2026-11-01: "``).

    Returns ``{plot name: path}`` for the files written, names as in :data:`PLOT_FILES`:
    ``roc``, ``pr``, ``reliability``, ``gain``, ``precision_vs_audience`` always, plus
    ``feature_importance`` and ``mean_abs_contribution`` when their series are given.
    Curves are drawn through at most a few thousand points; the precision-by-audience plot starts
    at 100 users (or a tenth of a smaller audience), where precision stops being mostly noise.
    """
    y = _check_labels(y_true)
    if not scores:
        raise EvaluationInputError("scores is empty: give at least the main model's probabilities")
    checked: dict[str, np.ndarray] = {}
    for i, (name, s) in enumerate(scores.items()):
        checked[str(name)] = _check_scores(f"scores[{name!r}]", s, y.size, probability=i == 0)
    imp = None if importance is None else _check_series("importance", importance)
    contrib = None if mean_abs_contrib is None else _check_series("mean_abs_contrib", mean_abs_contrib)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aucs = {name: _auc(y, s) for name, s in checked.items()}
    main = next(iter(checked))
    paths: dict[str, Path] = {
        "roc": _roc(out / PLOT_FILES["roc"], y, checked, aucs, title_prefix),
        "pr": _pr(out / PLOT_FILES["pr"], y, checked, aucs, title_prefix),
        "reliability": _reliability(
            out / PLOT_FILES["reliability"], y, main, checked[main], aucs[main], n_bins, title_prefix
        ),
        "gain": _gain(out / PLOT_FILES["gain"], y, checked, aucs, title_prefix),
        "precision_vs_audience": _precision_vs_audience(
            out / PLOT_FILES["precision_vs_audience"], y, checked, aucs, title_prefix
        ),
    }
    if imp is not None:
        paths["feature_importance"] = _bars(
            out / PLOT_FILES["feature_importance"],
            imp,
            f"{title_prefix}Feature importance: top {min(_TOP_FEATURES, imp.size)} by total gain",
            "Total gain (loss reduction from splits on the feature)",
        )
    if contrib is not None:
        paths["mean_abs_contribution"] = _bars(
            out / PLOT_FILES["mean_abs_contribution"],
            contrib,
            f"{title_prefix}Mean absolute contribution: top {min(_TOP_FEATURES, contrib.size)} features",
            "Mean |contribution| to the score (log-odds)",
        )
    return paths
