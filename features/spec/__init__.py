"""features.spec.definition."""
