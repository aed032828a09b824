"""features.events.validate."""
