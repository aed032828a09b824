"""Training sets stacked over several cutoffs, split by time (and by user when label windows overlap).

Train on the earlier cutoffs, early-stop and calibrate on the second-to-last, test on the last. Every cutoff's
features see only events before it; its labels only the window after it. When the label window is longer than
the cutoff spacing (the lapse target), users are split too, so no user's later outcome is both trained on and
tested (see :func:`time_split`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import ibis.expr.types as ir
import numpy as np
import pandas as pd

from training.labels import LabelSpec, buyer_events, lapse_labels, last_mile_labels

LabelFn = Callable[[ir.Table, datetime, LabelSpec], ir.Table]
LABEL_FUNCTIONS: dict[str, LabelFn] = {"last_mile_buyer": last_mile_labels, "lapse_risk": lapse_labels}


class IneligibleError(ValueError):
    """Too few positives or negatives to train or judge a model."""

    exit_code = 1  # CLI exit code: bad input (the data cannot support the run)


POPULATION_EVENTS: dict[str, Callable[[ir.Table, datetime], ir.Table]] = {"lapse_risk": buyer_events}
"""Targets whose labels cover only part of the users, and the events of that population at a cutoff."""


def window_days(target: str, spec: LabelSpec) -> int:
    """Label window length in days for ``target``."""
    return spec.horizon_days if target == "last_mile_buyer" else spec.lapse_days


def cutoffs_for(end: datetime, n: int, spacing_days: int, window: int) -> list[datetime]:
    """``n`` cutoffs at UTC midnight, oldest first, ``spacing_days`` apart, the last one leaving a full label window
    (``window`` days) before ``end`` (the last event time)."""
    if n < 3:
        raise ValueError("need at least 3 cutoffs: train, validation, test")
    last = (end - timedelta(days=window)).replace(hour=0, minute=0, second=0, microsecond=0)
    return [last - timedelta(days=spacing_days * k) for k in range(n - 1, -1, -1)]


@dataclass
class TimeSplit:
    """Rows of one target split by cutoff. Each frame: segmented features + ``label`` + ``as_of``."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame

    @property
    def test_as_of(self) -> datetime:
        return self.test["as_of"].iloc[0].to_pydatetime()


def labelled_frame(
    target: str,
    events: ir.Table,
    as_of: datetime,
    label_spec: LabelSpec,
    segmented: pd.DataFrame,
) -> pd.DataFrame:
    """Inner join of one cutoff's segmented features (one row per user) with that cutoff's labels."""
    labels = LABEL_FUNCTIONS[target](events, as_of, label_spec).to_pandas()
    labels["user_id"] = labels["user_id"].astype(str)
    frame = segmented.merge(labels, on="user_id", how="inner", validate="one_to_one")
    frame["as_of"] = pd.Timestamp(as_of)
    return frame


def time_split(frames: Sequence[pd.DataFrame], holdout: float | None = None, seed: int = 0) -> TimeSplit:
    """Frames ordered oldest cutoff first -> train (all but the last two), valid, test.

    When the label window is longer than the spacing of the cutoffs, the label of a training cutoff covers the
    valid and test periods, so the same user's later outcome leaks into training and early stopping never stops
    (the model memorises users). ``holdout`` (a share in (0, 1)) then splits the *users* as well: a seeded hash
    holds that share of them out of training; training takes the other users at every cutoff, validation the
    held-out users at the second-to-last cutoff and test the held-out users at the last one. Validation only
    picks the number of trees and fits the monotone calibrator, so sharing its users with test leaks nothing a
    model could memorise, and both stay large enough on a small shop.
    """
    if len(frames) < 3:
        raise ValueError("need at least 3 cutoffs")
    if holdout is None:
        return TimeSplit(
            train=pd.concat(frames[:-2], ignore_index=True), valid=frames[-2].reset_index(drop=True),
            test=frames[-1].reset_index(drop=True),
        )
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be a share in (0, 1), got {holdout}")
    held = [held_out(f["user_id"], holdout, seed) for f in frames]
    return TimeSplit(
        train=pd.concat([f[~h] for f, h in zip(frames, held, strict=True)], ignore_index=True),
        valid=frames[-2][held[-2]].reset_index(drop=True),
        test=frames[-1][held[-1]].reset_index(drop=True),
    )


def held_out(user_ids: pd.Series, holdout: float, seed: int) -> np.ndarray:
    """Boolean per user id, True for the ``holdout`` share of users kept out of training (seeded hash: the same
    user gets the same answer at every cutoff)."""
    key = f"{seed:016d}"[-16:]
    unit = pd.util.hash_array(user_ids.astype("str").to_numpy(dtype=object), hash_key=key) / float(2**64)
    return unit < holdout


def check_eligible(target: str, split: TimeSplit, min_pos: int, min_neg: int) -> dict[str, int]:
    """Count classes; raise :class:`IneligibleError` naming what is missing when training could not be trusted.

    The training cutoffs need ``min_pos``/``min_neg`` of each class; the validation and test cutoffs need at least
    a tenth of that (and never fewer than 5) to early-stop, calibrate and judge the model.
    """
    counts: dict[str, int] = {}
    problems: list[str] = []
    for name, frame, need_pos, need_neg in (
        ("train", split.train, min_pos, min_neg),
        ("valid", split.valid, max(5, min_pos // 10), max(5, min_neg // 10)),
        ("test", split.test, max(5, min_pos // 10), max(5, min_neg // 10)),
    ):
        pos = int(frame["label"].sum())
        neg = int(len(frame) - pos)
        counts[f"{name}_positives"], counts[f"{name}_negatives"] = pos, neg
        if pos < need_pos:
            problems.append(f"{name}: {pos} positives, need {need_pos} (missing {need_pos - pos})")
        if neg < need_neg:
            problems.append(f"{name}: {neg} negatives, need {need_neg} (missing {need_neg - neg})")
    if problems:
        raise IneligibleError(
            f"not enough labelled users to train {target}: " + "; ".join(problems)
            + ". Use more history or users, more cutoffs (training.n_cutoffs), a longer window, "
            "or lower training.min_positives / min_negatives."
        )
    return counts
