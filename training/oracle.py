"""The oracle of a run on generated data: the simulator's true probabilities for the test users, or why there is none.

A truth file (``truth.parquet`` of :func:`features.simulate.shop.generate`) holds true probabilities per user at the
cutoffs and windows the generator was asked for. A run needs them at its test cutoff, for its own window (H for
last-mile buyers, N for lapse, which may be fitted). When the file does not cover them and it records the generator
config, the shop is simulated again for exactly that cutoff and window (:func:`features.simulate.shop.simulate_truth`);
otherwise the run gets the reason, to log and print, instead of a silently missing oracle row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.simulate.shop import GeneratorConfig, GeneratorConfigError, simulate_truth, truth_config
from training.datasets import window_days
from training.labels import LabelSpec

TRUTH_COLUMNS: dict[str, tuple[str, str]] = {
    "last_mile_buyer": ("p_buy_true", "horizon_days"),
    "lapse_risk": ("p_lapse_true", "lapse_days"),
}
"""Per target: the truth column holding its true probability and the column naming the window it was recorded for."""


def oracle_from(
    truth: pd.DataFrame, target: str, test: pd.DataFrame, label_spec: LabelSpec
) -> tuple[np.ndarray | None, str]:
    """``(p, "")`` with the true probabilities aligned with the ``test`` rows (shape (n,)), or ``(None, reason)``.

    ``truth``: rows ``user_id, as_of`` and the target's columns (:data:`TRUTH_COLUMNS`); ``test``: the run's test rows
    (``user_id``, ``as_of``, one cutoff). The reason names what is missing: the cutoff, the window or users.
    """
    column, window_col = TRUTH_COLUMNS[target]
    window = window_days(target, label_spec)
    kind = "horizon" if target == "last_mile_buyer" else "lapse window"
    as_of = pd.Timestamp(test["as_of"].iloc[0])
    as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
    missing = [c for c in ("user_id", "as_of", column, window_col) if c not in truth.columns]
    if missing:
        return None, f"the truth has no {', '.join(missing)} column"
    stamps = pd.to_datetime(truth["as_of"], utc=True)
    at = truth[stamps == as_of]
    if at.empty:
        held = sorted(stamps.unique())
        span = f"{len(held)} cutoffs, {held[0]:%Y-%m-%d} to {held[-1]:%Y-%m-%d}" if held else "no rows"
        return None, f"the truth holds no true probabilities at the test cutoff {as_of:%Y-%m-%d} ({span})"
    at = at[at[window_col] == window]
    if at.empty:
        recorded = sorted(int(w) for w in truth.loc[stamps == as_of, window_col].unique())
        return None, (
            f"the truth at {as_of:%Y-%m-%d} was recorded for a {', '.join(map(str, recorded))}-day {kind}, "
            f"this run uses {window} days"
        )
    at = at.drop_duplicates("user_id")
    ids = test["user_id"].astype(str)
    values = ids.map(pd.Series(at[column].to_numpy(np.float64), index=at["user_id"].astype(str)))
    lacking = int(values.isna().sum())
    if lacking:
        return None, f"the truth lacks {lacking:,} of the {len(ids):,} test users at {as_of:%Y-%m-%d}"
    return values.to_numpy(np.float64), ""


@dataclass
class Truth:
    """A truth file, read once, and the generator config it records (None when it has none)."""

    path: Path
    frame: pd.DataFrame
    config: GeneratorConfig | None = None
    resimulated: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Truth:
        return cls(Path(path), pd.read_parquet(path), truth_config(Path(path)))

    def oracle(
        self, target: str, test: pd.DataFrame, label_spec: LabelSpec, say: Callable[[str], None] = lambda _: None
    ) -> tuple[np.ndarray | None, str]:
        """:func:`oracle_from` on the file; when it does not cover the test cutoff or window and the file records the
        generator config, the truth simulated again for them (``say`` tells so). ``(None, reason)`` otherwise."""
        values, reason = oracle_from(self.frame, target, test, label_spec)
        if values is not None:
            return values, ""
        if self.config is None:
            return None, f"{reason}; the truth file records no generator config to simulate the shop again"
        as_of = pd.Timestamp(test["as_of"].iloc[0]).to_pydatetime()
        say(f"{target}: {reason}; simulating the shop again for its true probabilities")
        try:
            again = simulate_truth(
                self.config, [as_of], horizon_days=label_spec.horizon_days, lapse_days=label_spec.lapse_days
            ).to_pandas()
        except GeneratorConfigError as err:
            return None, f"{reason}; the generator cannot simulate it: {err}"
        values, second = oracle_from(again, target, test, label_spec)
        if values is None:
            return None, f"{reason}; simulated again: {second}"
        self.resimulated.append(f"{target} at {as_of:%Y-%m-%d}")
        return values, ""

