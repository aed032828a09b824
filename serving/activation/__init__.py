"""serving.activation.actions."""
