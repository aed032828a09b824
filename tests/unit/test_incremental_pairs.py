"""Pair runs and per-user counts of :mod:`features.incremental.pairs` against plain Python models (seeded data)."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from features.incremental.pairs import (
    empty_run,
    merge_runs,
    per_user_max_distinct,
    per_user_max_distinct_windows,
    upsert_runs,
)


def test_upserts_over_two_runs_keep_the_last_values_of_every_key():
    rng = np.random.default_rng(11)
    main = (np.zeros(0, np.int64), (np.zeros(0, np.int32),))
    fresh = empty_run(main)
    model: dict[int, int] = {}
    for night in range(12):
        new = np.unique(rng.integers(0, 400, 60))
        main, fresh, found, previous = upsert_runs(main, fresh, new, (np.full(len(new), night, np.int32),))
        assert found.tolist() == [int(key) in model for key in new]
        assert previous[found].tolist() == [model[int(key)] for key in new[found]]
        model.update(dict.fromkeys(new.tolist(), night))
        assert not set(main[0].tolist()) & set(fresh[0].tolist())  # no key in both runs
        assert (np.diff(fresh[0]) > 0).all() and (np.diff(main[0]) > 0).all()
        if night % 4 == 3:  # merged now and then, dropping the keys of odd nights
            keep = (main[1][0] % 2 == 0, fresh[1][0] % 2 == 0)
            main, fresh = merge_runs(main, fresh, *keep), empty_run(fresh)
            model = {key: day for key, day in model.items() if day % 2 == 0}
        both = dict(zip(main[0].tolist(), main[1][0].tolist(), strict=True))
        both.update(zip(fresh[0].tolist(), fresh[1][0].tolist(), strict=True))
        assert both == model


def test_a_read_only_main_run_is_copied_before_its_values_change():
    keys, days = np.array([1, 5, 9]), np.array([0, 0, 0], np.int32)
    days.flags.writeable = False
    main, fresh, found, _ = upsert_runs((keys, (days,)), empty_run((keys, (days,))), np.array([5, 7]),
                                        (np.array([3, 3], np.int32),))
    assert days.tolist() == [0, 0, 0] and main[1][0].tolist() == [0, 3, 0]
    assert fresh[0].tolist() == [7] and found.tolist() == [True, False]


def test_the_most_distinct_entries_in_one_group_per_window_match_counting_them():
    rng = np.random.default_rng(5)
    n_users, windows = 50, (3, 7)
    users, groups, since = rng.integers(0, n_users, 2_000), rng.integers(0, 9, 2_000), rng.integers(1, 8, 2_000)
    got = per_user_max_distinct_windows(users, groups, since, windows, n_users)
    for w in windows:
        cells: dict[int, Counter] = defaultdict(Counter)
        for u, g, s in zip(users.tolist(), groups.tolist(), since.tolist(), strict=True):
            if s <= w:
                cells[u][g] += 1
        expected = [max(cells[u].values(), default=0) for u in range(n_users)]
        assert got[w].tolist() == expected
        assert per_user_max_distinct(users[since <= w], groups[since <= w], n_users).tolist() == expected
    assert all(v.tolist() == [0] * n_users for v in per_user_max_distinct_windows(
        users[:0], groups[:0], since[:0], windows, n_users).values())
