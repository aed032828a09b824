"""serving.http."""
