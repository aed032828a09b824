"""serving.store.base."""
