"""propensity.cli.main."""
