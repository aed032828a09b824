"""serving.batch.run."""
