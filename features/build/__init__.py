"""features.build.builder."""
