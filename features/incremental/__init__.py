"""The feature table kept from night to night: per-user state moved on by one day at a time.

:class:`features.incremental.state.FeatureState` holds, for a cutoff ``as_of``, everything from which the feature
table at ``as_of`` and at ``as_of + 1 day`` (given that day's events) follow exactly: windowed sums, all-history
extremes and totals, per-day roll-ups of the days still inside a window, and the (user, item), (user, category),
viewed (user, category, item) and carted (user, item) pairs of their windows. The definition stays
:func:`features.spec.table.feature_table`; ``tests/property/test_incremental_parity.py`` proves the kept table
equal to it on random histories, night after night.
"""
