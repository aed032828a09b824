"""Splitting stacked cutoffs: by time, and by user when label windows overlap later cutoffs."""

from __future__ import annotations

import pandas as pd
import pytest

from training.datasets import time_split

CUTOFFS = pd.date_range("2026-01-01", periods=5, freq="4D", tz="UTC")


def frames(n_users: int = 2000) -> list[pd.DataFrame]:
    return [
        pd.DataFrame({"user_id": [f"u{i}" for i in range(n_users)], "label": [i % 2 for i in range(n_users)],
                      "as_of": t})
        for t in CUTOFFS
    ]


def test_time_split_trains_on_earlier_cutoffs_and_tests_on_the_last():
    split = time_split(frames(100))
    assert set(split.train["as_of"]) == set(CUTOFFS[:-2])
    assert set(split.valid["as_of"]) == {CUTOFFS[-2]} and set(split.test["as_of"]) == {CUTOFFS[-1]}
    assert len(split.valid) == len(split.test) == 100


def test_user_holdout_keeps_held_out_users_out_of_training():
    split = time_split(frames(), holdout=0.3, seed=7)
    train, valid, test = (set(f["user_id"]) for f in (split.train, split.valid, split.test))
    assert not (train & valid) and not (train & test)
    assert valid == test and train | test == {f"u{i}" for i in range(2000)}
    assert 0.25 < len(test) / 2000 < 0.35
    # training users are kept at every cutoff, the held-out ones only where they are evaluated
    assert set(split.train["as_of"]) == set(CUTOFFS)
    assert split.train.groupby("user_id")["as_of"].nunique().eq(len(CUTOFFS)).all()
    assert set(split.valid["as_of"]) == {CUTOFFS[-2]} and set(split.test["as_of"]) == {CUTOFFS[-1]}


def test_user_holdout_is_seeded_and_checked():
    a, b = time_split(frames(), holdout=0.3, seed=7), time_split(frames(), holdout=0.3, seed=7)
    assert a.test["user_id"].tolist() == b.test["user_id"].tolist()
    assert a.test["user_id"].tolist() != time_split(frames(), holdout=0.3, seed=8).test["user_id"].tolist()
    with pytest.raises(ValueError, match="holdout"):
        time_split(frames(), holdout=1.5)
