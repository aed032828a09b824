"""Charts of the audience report as base64 PNG (matplotlib, an Agg canvas per figure, no pyplot state).

Each function returns a :class:`Chart` (name, alt text, PNG); titles and captions live in the HTML so they can be
read and searched. Importing this module does not import matplotlib.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.segments.segmenter import LIFECYCLE_STAGES, RFM_CODES
from serving.activation.flow import FROM_STATES, TO_STATES, FlowReport
from serving.report.data import ACTION_LABELS, TARGET_LABELS, ActionCurve

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 110
LAYER_COLORS: dict[str, str] = {"L": "#1b7a3d", "P": "#5cb85c", "I": "#f0ad4e", "A": "#5b9bd5", "none": "#b0b0b0"}
LAYER_NAMES: dict[str, str] = {
    "L": "L loyal", "P": "P purchased once", "I": "I interested", "A": "A browsing", "none": "none (dropped out)",
}
_STATE_NAMES: dict[str, str] = {**LAYER_NAMES, "none": "none", "new": "new user", "gone": "gone"}
ACTION_COLORS: dict[str, str] = {
    "coupon_24h": "#d9534f", "ad_retarget": "#5b9bd5", "repurchase_reminder": "#1b7a3d", "win_back": "#8e44ad",
    "nurture": "#f0ad4e",
}
TARGET_COLORS: dict[str, str] = {"last_mile_buyer": "#2f6eb5", "lapse_risk": "#c0504d"}


@dataclass(frozen=True)
class Chart:
    """One rendered chart: ``name`` (the ``data-chart`` value), ``alt`` (plain-text summary), ``png`` (base64)."""

    name: str
    alt: str
    png: str
    width: int
    height: int


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _encode(fig: Figure, name: str, alt: str) -> Chart:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
        width, height = (round(float(v) * DPI) for v in fig.get_size_inches())
    finally:
        fig.clear()
    return Chart(name, alt, base64.b64encode(buf.getvalue()).decode("ascii"), width, height)


def _plain(text: Any) -> str:
    """A label drawn literally: ``$`` would otherwise start matplotlib's math mode."""
    return str(text).replace("$", r"\$")


def _style(ax: Axes) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3, axis="both")
    ax.set_axisbelow(True)


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:.0%}" if x >= 0.1 or x == 0 else f"{x:.1%}"


def aipl_chart(summary: Mapping[str, Any]) -> Chart:
    """Users per AIPL layer, and the assets' layer mix against the P+L share target."""
    aipl = summary["aipl"]
    layers = list(aipl)  # L, P, I, A, none
    counts = [aipl[k]["count"] for k in layers]
    shares = [aipl[k]["share"] for k in layers]
    fig = _figure(10.0, 3.6)
    left, right = fig.subplots(1, 2, width_ratios=(1.1, 1))
    y = np.arange(len(layers))[::-1]
    left.barh(y, counts, color=[LAYER_COLORS[k] for k in layers])
    left.set_yticks(y, labels=[LAYER_NAMES[k] for k in layers])
    top = max(counts) if max(counts) > 0 else 1
    for yi, c, s in zip(y, counts, shares, strict=True):
        left.text(c + top * 0.01, yi, f"{c:,} ({_pct(s)})", va="center", fontsize=9)
    left.set_xlim(0, top * 1.3)
    left.set_xlabel("users")
    left.set_title("Users per layer (share of everyone scored)", fontsize=10)
    _style(left)
    left.grid(False, axis="y")

    assets = summary["n_assets"]
    start = 0.0
    for layer in ("L", "P", "I", "A"):
        share = aipl[layer]["count"] / assets if assets else 0.0
        right.barh(0, share, left=start, color=LAYER_COLORS[layer], edgecolor="white", label=LAYER_NAMES[layer])
        if share >= 0.06:
            right.text(start + share / 2, 0, f"{layer}\n{_pct(share)}", ha="center", va="center", fontsize=9,
                       color="white" if layer in ("L", "P") else "black")
        start += share
    target, pl = summary["pl_target"], summary["pl_share"]
    right.axvline(target, color="black", ls="--", lw=1.5)
    right.text(target + 0.01, 0.52, f"target: P+L \u2265 {target:.0%}", ha="left", va="bottom", fontsize=9)
    verdict = "met" if summary["pl_target_met"] else "NOT met"
    right.set_title(f"Mix of the {assets:,} assets: P+L = {pl:.1%} (target {verdict})", fontsize=10)
    right.set_xlim(0, 1)
    right.set_ylim(-0.6, 0.9)
    right.set_yticks([])
    right.xaxis.set_major_formatter(_percent_formatter())
    right.set_xlabel("share of assets (users in L, P, I or A)")
    right.spines[["top", "right", "left"]].set_visible(False)
    alt = "Bar chart of users per AIPL layer: " + ", ".join(
        f"{k} {c:,} ({_pct(s)})" for k, c, s in zip(layers, counts, shares, strict=True)
    ) + f". P+L share of assets {pl:.1%} against a target of {target:.0%} ({verdict})."
    return _encode(fig, "aipl_layers", alt)


def _percent_formatter() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def flow_chart(flow: FlowReport) -> Chart:
    """Transition matrix between two snapshots: counts in the cells, colour = share of the earlier row."""
    counts = flow.counts.loc[list(FROM_STATES), list(TO_STATES)]
    shares = flow.shares.loc[list(FROM_STATES), list(TO_STATES)].fillna(0.0).to_numpy()
    fig = _figure(10.0, 4.4)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(shares.shape[0]):
        for j in range(shares.shape[1]):
            n = int(counts.iat[i, j])
            color = "white" if shares[i, j] > 0.55 else "black"
            weight = "bold" if FROM_STATES[i] == TO_STATES[j] else "normal"
            ax.text(j, i, f"{n:,}  ({_pct(shares[i, j])})" if n else "0", ha="center", va="center", fontsize=9,
                    color=color, fontweight=weight)
    ax.set_xticks(range(len(TO_STATES)), labels=[_STATE_NAMES.get(s, s) for s in TO_STATES])
    ax.set_yticks(range(len(FROM_STATES)), labels=[_STATE_NAMES.get(s, s) for s in FROM_STATES])
    ax.set_xlabel("layer now (current snapshot)")
    ax.set_ylabel("layer before (previous snapshot)")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    bar = fig.colorbar(image, ax=ax, shrink=0.9, format=_percent_formatter())
    bar.set_label("share of the earlier layer")
    alt = (
        f"Heat map of users moving between AIPL layers: {flow.n_before:,} users before, {flow.n_after:,} now, "
        f"{flow.n_new:,} new, {flow.n_gone:,} gone; P+L share {_pct(flow.pl_share_before)} -> "
        f"{_pct(flow.pl_share_after)}; upgrade rates " + ", ".join(f"{k} {_pct(v)}" for k, v in flow.upgrade.items())
    )
    return _encode(fig, "aipl_flow", alt)



def lifecycle_chart(summary: Mapping[str, Any]) -> Chart:
    """Users per lifecycle stage, in the order a relationship moves through them."""
    doc = summary["lifecycle"]
    stages = list(LIFECYCLE_STAGES)
    counts = [doc[s]["count"] for s in stages]
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot()
    colors = ["#5b9bd5", "#5cb85c", "#1b7a3d", "#f0ad4e", "#b0b0b0"]
    ax.bar(stages, counts, color=colors)
    top = max(counts) if max(counts) > 0 else 1
    for i, s in enumerate(stages):
        ax.text(i, counts[i] + top * 0.02, f"{counts[i]:,}\n{_pct(doc[s]['share'])}", ha="center", va="bottom",
                fontsize=8)
    ax.set_ylim(0, top * 1.3)
    ax.set_xlabel("lifecycle stage")
    ax.set_ylabel("users")
    _style(ax)
    ax.grid(False, axis="x")
    alt = "Bar chart of users per lifecycle stage: " + ", ".join(
        f"{s} {doc[s]['count']:,} ({_pct(doc[s]['share'])})" for s in stages
    )
    return _encode(fig, "lifecycle", alt)


def rfm_chart(summary: Mapping[str, Any]) -> Chart:
    """Users per RFM group (recency, frequency, monetary high/low)."""
    doc = summary["rfm_group"]
    groups = list(RFM_CODES)[::-1]  # champions on top
    counts = [doc[g]["count"] for g in groups]
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot()
    ax.barh(range(len(groups)), counts, color=["#b0b0b0" if g == "no_purchase" else "#2f6eb5" for g in groups])
    ax.set_yticks(range(len(groups)), labels=[g.replace("_", " ") for g in groups])
    top = max(counts) if max(counts) > 0 else 1
    for i, g in enumerate(groups):
        ax.text(counts[i] + top * 0.01, i, f"{counts[i]:,} ({_pct(doc[g]['share'])})", va="center", fontsize=8)
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("users")
    _style(ax)
    ax.grid(False, axis="y")
    alt = "Bar chart of users per RFM group: " + ", ".join(f"{g} {doc[g]['count']:,}" for g in groups[::-1])
    return _encode(fig, "rfm_groups", alt)


def scores_chart(audience: pd.DataFrame, lapse_threshold: float) -> Chart:
    """Histograms of p_buy (everyone) and p_lapse (users who have one: past buyers)."""
    fig = _figure(10.0, 3.4)
    axes = fig.subplots(1, 2)
    bins = np.linspace(0.0, 1.0, 41)
    parts = []
    for ax, col, color, label in (
        (axes[0], "p_buy", "#2f6eb5", "chance of buying soon (p_buy)"),
        (axes[1], "p_lapse", "#c0504d", "chance of going silent (p_lapse)"),
    ):
        values = audience[col].dropna().to_numpy(dtype="float64")
        ax.hist(values, bins=bins, color=color)
        ax.set_xlabel(label)
        ax.set_ylabel("users")
        ax.set_xlim(0, 1)
        ax.xaxis.set_major_formatter(_percent_formatter())
        _style(ax)
        if len(values):
            mean = float(values.mean())
            ax.axvline(mean, color="black", lw=1.2, ls=":")
            ax.text(mean, ax.get_ylim()[1] * 0.95, f" mean {_pct(mean)}", fontsize=8, va="top")
            parts.append(f"{col}: {len(values):,} users, mean {_pct(mean)}")
        else:
            ax.text(0.5, 0.5, "no users with this score", transform=ax.transAxes, ha="center", color="grey")
            parts.append(f"{col}: no users")
    axes[1].axvline(lapse_threshold, color="#8e44ad", lw=1.2, ls="--")
    axes[1].text(lapse_threshold, axes[1].get_ylim()[1] * 0.8, f" win-back threshold {_pct(lapse_threshold)}",
                 fontsize=8, color="#8e44ad")
    alt = "Histograms of predicted probabilities. " + "; ".join(parts)
    return _encode(fig, "score_distributions", alt)


def conversions_chart(curves: Mapping[str, ActionCurve]) -> Chart:
    """Expected incremental conversions vs audience size, one small panel per action, the max-profit cut marked."""
    n = len(curves)
    ncols = min(n, 3)
    nrows = -(-n // ncols)
    fig = _figure(10.0, 3.0 * nrows)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    parts = []
    for ax, (action, curve) in zip(axes, curves.items(), strict=False):
        color = ACTION_COLORS.get(action, "#444444")
        ax.plot(np.r_[0, curve.size], np.r_[0.0, curve.expected_incremental], color=color, lw=2)
        s = curve.summary
        if s.size:
            ax.plot([s.size], [s.expected_incremental], "o", color="black", ms=6)
            ax.annotate(f"best profit: {s.size:,} users\n~{s.expected_incremental:,.1f} caused",
                        (s.size, s.expected_incremental), textcoords="offset points", xytext=(6, -26), fontsize=8)
        ax.set_title(_plain(ACTION_LABELS.get(action, action)), fontsize=9)
        ax.set_xlabel("audience size (users, best first)", fontsize=8)
        ax.set_ylabel("incremental conversions", fontsize=8)
        ax.set_xlim(0, None)
        ax.set_ylim(0, None)
        ax.tick_params(labelsize=8)
        _style(ax)
        parts.append(f"{action}: {s.candidates:,} candidates, {float(curve.expected_incremental[-1]):,.1f} caused "
                     f"if all are reached, best-profit audience {s.size:,} users")
    for ax in axes[n:]:
        ax.set_visible(False)
    alt = "Line charts of incremental conversions against audience size per action. " + "; ".join(parts)
    return _encode(fig, "incremental_conversions", alt)


def precision_chart(curves: Mapping[str, ActionCurve]) -> Chart:
    """Untreated rate (mean action_p of the audience) vs the share of an action's candidates reached."""
    fig = _figure(10.0, 3.6)
    ax = fig.add_subplot()
    parts = []
    for action, curve in curves.items():
        total = float(curve.size[-1])
        share = curve.size / total
        color = ACTION_COLORS.get(action, "#444444")
        ax.plot(share, curve.untreated_rate, color=color, lw=1.8,
                label=_plain(ACTION_LABELS.get(action, action)))
        s = curve.summary
        if s.size:
            ax.plot([s.size / total], [s.untreated_rate], "o", color=color, ms=7, mec="black")
        parts.append(f"{action}: {_pct(float(curve.untreated_rate[0]))} for the top user, "
                     f"{_pct(float(curve.untreated_rate[-1]))} for all {int(total):,}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.xaxis.set_major_formatter(_percent_formatter())
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_xlabel("share of the action's candidates reached (best first)")
    ax.set_ylabel("untreated rate\n(share who would buy, or lapse,\nwithout the action)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    _style(ax)
    alt = "Line chart of the untreated rate against audience share per action. " + "; ".join(parts)
    return _encode(fig, "untreated_rate", alt)


def calibration_chart(tables: Mapping[str, pd.DataFrame]) -> Chart:
    """Reliability curves (mean predicted vs observed rate per bin), one panel per model."""
    n = len(tables)
    fig = _figure(min(10.0, 4.2 * n + 0.6), 3.9)
    axes = np.atleast_1d(fig.subplots(1, n, squeeze=False)).ravel()
    parts = []
    for ax, (target, table) in zip(axes, tables.items(), strict=True):
        pred = table["mean_predicted"].to_numpy(dtype="float64")
        obs = table["observed_rate"].to_numpy(dtype="float64")
        count = table["count"].to_numpy(dtype="float64") if "count" in table else np.ones_like(pred)
        upper = float(np.nanmax(np.r_[pred, obs])) if len(pred) else 1.0
        lim = min(1.0, 1.1 * upper) if upper > 0 else 1.0
        ax.plot([0, lim], [0, lim], ls="--", color="grey", lw=1, label="perfect: predicted = happened")
        color = TARGET_COLORS.get(target, "#2f6eb5")
        ax.plot(pred, obs, marker="o", color=color, lw=1.8, label="model")
        ax.set_xlim(0, lim)
        ax.set_ylim(0, lim)
        ax.xaxis.set_major_formatter(_percent_formatter())
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.set_title(_plain(TARGET_LABELS.get(target, target)), fontsize=10)
        ax.set_xlabel("predicted chance (bin average)")
        ax.set_ylabel("share that actually happened")
        ax.legend(fontsize=8, loc="upper left")
        _style(ax)
        gap = float(np.sum(np.abs(pred - obs) * count) / count.sum()) if count.sum() else float("nan")
        parts.append(f"{target}: {len(pred)} bins, average gap {gap:.3f}")
    alt = "Reliability curves of predicted against observed rates. " + "; ".join(parts)
    return _encode(fig, "calibration", alt)


def lift_chart(lift: pd.DataFrame) -> Chart:
    """Grouped bars: lift at the top 1/5/10/20% of the ranking per model, with the random-targeting line at 1."""
    fig = _figure(5.6, 3.6)
    ax = fig.add_subplot()
    labels = list(lift.columns)
    x = np.arange(len(labels))
    width = 0.8 / max(len(lift), 1)
    parts = []
    for i, (target, row) in enumerate(lift.iterrows()):
        values = row.to_numpy(dtype="float64")
        pos = x - 0.4 + width * (i + 0.5)
        ax.bar(pos, np.nan_to_num(values), width, color=TARGET_COLORS.get(str(target)),
               label=_plain(TARGET_LABELS.get(str(target), target)))
        for xi, v in zip(pos, values, strict=True):
            if np.isfinite(v):
                ax.text(xi, v, f"{v:.1f}x", ha="center", va="bottom", fontsize=8)
        parts.append(f"{target}: " + ", ".join(f"{lab} {v:.1f}x" for lab, v in zip(labels, values, strict=True)
                                                 if np.isfinite(v)))
    ax.axhline(1.0, color="black", ls="--", lw=1, label="random targeting = 1x")
    ax.set_xticks(x, labels=[f"top {lab.removeprefix('top')}%" for lab in labels])
    ax.set_xlabel("users ranked highest by the model")
    ax.set_ylabel("lift (times the average rate)")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8)
    _style(ax)
    ax.grid(False, axis="x")
    alt = "Bar chart of lift at the top of the ranking. " + "; ".join(parts)
    return _encode(fig, "lift", alt)
