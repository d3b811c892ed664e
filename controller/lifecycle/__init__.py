"""A new model's lifecycle at the edge (docs/models.md#at-the-edge): validated, run as a challenger in
shadow beside the active model, promoted by policy, watched, rolled back when it misbehaves."""
