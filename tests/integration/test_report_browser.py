"""The audience report opened in a real headless Chromium (Debian's ``chromium`` package).

The browser loads the report from a file:// URL with networking features off, prints the DOM after load and takes a
1280x4000 screenshot, saved to ``tests/artifacts/`` with the HTML. Any console message fails the test: the report has
no scripts, so a message means a blocked fetch (the page's Content-Security-Policy forbids any) or a broken element.
Chromium is found on PATH or at /usr/bin/chromium; when missing and we are root with apt-get it is installed (set
``PROPENSITY_TEST_NO_APT=1`` to forbid that), otherwise the tests are skipped with the reason.
"""

from __future__ import annotations

import io
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving.activation.actions import ACTIONS, ActivationConfig
from serving.batch.run import AUDIENCE_COLUMNS
from serving.report.build import CHART_NAMES, build_report, write_report
from serving.report.charts import LAYER_COLORS, TARGET_COLORS
from tests.unit.test_report import outcome_read
from tests.unit.test_report_monitoring import monitoring_report
from training.evaluate import reliability_table

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CFG = ActivationConfig()
WIDTH, HEIGHT = 1280, 4000


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]
    screenshot: Path
    stderr: str


def render(chromium: str, page: Path, screenshot: Path, profile: Path) -> Rendered:
    """Open ``page`` headless: the DOM after load, the console messages and a screenshot."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
        "--hide-scrollbars", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={screenshot}", "--dump-dom", page.resolve().as_uri(),
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return Rendered(done.stdout, console, screenshot, done.stderr)


def synthetic_audience(n: int, seed: int, as_of: str) -> pd.DataFrame:
    """A batch-shaped audience (:data:`AUDIENCE_COLUMNS`) with plausible mixes of layers, scores and actions."""
    rng = np.random.default_rng(seed)
    layer = rng.choice(["L", "P", "I", "A", "none"], n, p=[0.08, 0.2, 0.24, 0.33, 0.15])
    buyer = np.isin(layer, ["P", "L"])
    p_buy = np.clip(rng.beta(0.7, 14, n) * np.where(np.isin(layer, ["I", "P", "L"]), 2.5, 1.0), 0, 1)
    p_lapse = np.where(buyer, rng.beta(2, 3, n), np.nan)
    action = rng.choice([*ACTIONS, "none"], n, p=[0.05, 0.08, 0.07, 0.05, 0.15, 0.6]).astype(object)
    action[(action == "win_back") & ~buyer] = "none"
    acting = action != "none"
    action_p = np.where(action == "win_back", p_lapse, p_buy)
    action_p[~acting] = np.nan
    lift = np.array([CFG.lift_of(a) for a in action])
    incremental = np.where(acting, action_p * lift, 0.0)
    revenue = incremental * 60 * rng.uniform(0.2, 1.0, n)
    value = revenue * CFG.margin_rate
    cost = np.array([CFG.cost_of(a) for a in action])
    frame = pd.DataFrame({
        "user_id": [f"u{i:06d}" for i in range(n)], "p_buy": p_buy, "p_lapse": p_lapse, "aipl_layer": layer,
        "lifecycle": np.where(buyer, rng.choice(["growth", "mature", "silent"], n),
                              rng.choice(["new", "churned"], n, p=[0.8, 0.2])),
        "rfm_group": np.where(buyer, rng.choice(["champions", "promising", "at_risk_big", "lost"], n), "no_purchase"),
        "rule_score": rng.uniform(0, 1, n), "action": action, "action_deadline": None, "urgency": 1.0,
        "action_p": action_p, "lift": lift, "incremental_p": incremental, "expected_revenue": revenue,
        "expected_value": value, "action_cost": cost,
        "expected_profit": value - cost, "priority": value, "reasons_buy": None, "reasons_buy_text": None,
        "reasons_lapse": None, "reasons_lapse_text": None,
        "model_buy": "12", "model_lapse": "9", "as_of": as_of,
    })
    frame["p_alive"] = np.where(buyer, rng.uniform(0.2, 1.0, n), np.nan)  # BTYD outputs: past buyers only
    frame["expected_purchases_30d"] = np.where(buyer, rng.gamma(1.0, 0.5, n), np.nan)
    frame["expected_purchases_90d"] = frame["expected_purchases_30d"] * 2.5
    frame["clv_365d"] = frame["expected_purchases_90d"] * 4 * 60
    frame["next_order_date"] = np.where(buyer, "2024-03-20", None)
    return frame[list(AUDIENCE_COLUMNS)]


@pytest.fixture(scope="module")
def chromium(chromium_binary: str) -> str:
    return chromium_binary


@pytest.fixture(scope="module")
def report_file() -> Path:
    """The full report (every chart) on 5,000 synthetic users, written under tests/artifacts/."""
    audience = synthetic_audience(5000, seed=7, as_of="2024-03-01T00:00:00+00:00")
    previous = synthetic_audience(4500, seed=8, as_of="2024-02-29T00:00:00+00:00")[["user_id", "aipl_layer"]]
    rng = np.random.default_rng(3)
    p = rng.beta(1, 9, 4000)
    q = rng.uniform(0, 1, 4000)
    calibration = {
        "last_mile_buyer": reliability_table((rng.uniform(size=4000) < p).astype(int), p),
        "lapse_risk": reliability_table((rng.uniform(size=4000) < q).astype(int), q),
    }
    lifts = {"lift_top1": 8.4, "lift_top5": 4.9, "lift_top10": 3.3, "lift_top20": 2.2}
    model_info = {
        "last_mile_buyer": {"version": "12", "test_as_of": "2024-02-25T00:00:00Z",
                            "metrics": {"auc": 0.83, "log_loss": 0.11, "ece": 0.003, **lifts}},
        "lapse_risk": {"version": "9", "test_as_of": "2024-02-10T00:00:00Z",
                       "metrics": {"auc": 0.76, "log_loss": 0.55, "ece": 0.012, "lift_top1": 2.1, "lift_top5": 1.9,
                                   "lift_top10": 1.7, "lift_top20": 1.5}},
    }
    html = build_report(
        audience, previous=previous, model_info=model_info, calibration=calibration,
        snapshot_info={"snapshot_id": "20240301T041000-ab12", "created_at": "2024-03-01T04:10:00Z", "rows": 5000},
        activation=CFG, outcomes=[outcome_read()], monitoring=monitoring_report(degraded=True),
        generated_at=datetime(2024, 3, 1, 6, 30, tzinfo=UTC),
    )
    return write_report(html, ARTIFACTS / "audience_report.html")


def test_report_renders_in_chromium_without_console_errors(chromium, report_file, tmp_path):
    shot = ARTIFACTS / "audience_report.png"
    shot.unlink(missing_ok=True)
    out = render(chromium, report_file, shot, tmp_path / "profile")
    assert out.console == [], "console messages:\n" + "\n".join(out.console)
    for name in CHART_NAMES:
        assert f'data-chart="{name}"' in out.dom, f"chart {name} missing from the rendered DOM"
    assert "data-note=" not in out.dom
    assert 'data-table="actions"' in out.dom and "Audience assets report" in out.dom

    from PIL import Image

    image = Image.open(io.BytesIO(shot.read_bytes()))
    assert image.format == "PNG" and image.size == (WIDTH, HEIGHT)
    assert shot.stat().st_size > 100_000
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
    colors = {tuple(c) for c in np.unique(pixels[:: 7], axis=0)}
    assert len(colors) > 500, f"screenshot has only {len(colors)} colours: the charts did not paint"
    for hex_color in (LAYER_COLORS["L"], LAYER_COLORS["A"], TARGET_COLORS["lapse_risk"]):
        rgb = np.array([int(hex_color[i: i + 2], 16) for i in (1, 3, 5)])
        close = int((np.abs(pixels.astype(int) - rgb).sum(axis=1) <= 6).sum())
        assert close > 500, f"colour {hex_color} of a chart is not on screen ({close} pixels)"


def test_a_fetch_from_the_network_would_be_blocked_and_reported(chromium, report_file, tmp_path):
    """The check above can fail: the same page with one external image logs a policy violation."""
    page = tmp_path / "leaky.html"
    html = report_file.read_text(encoding="utf-8")
    page.write_text(html.replace("<main>", '<main><img src="http://127.0.0.1:9/pixel.png" alt="external">', 1),
                    encoding="utf-8")
    out = render(chromium, page, tmp_path / "leaky.png", tmp_path / "profile")
    assert any("127.0.0.1:9/pixel.png" in line and "Content Security Policy" in line for line in out.console), (
        out.stderr[-2000:]
    )
