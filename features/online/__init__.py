"""Online execution of the feature spec: per-user event arrays and the features computed from them."""
