"""propensity.service."""
