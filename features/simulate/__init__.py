"""features.simulate."""
