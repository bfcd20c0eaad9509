"""Training: the loop every model shares, checkpoints and run folders, and each model's training task."""
