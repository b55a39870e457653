"""Training pruning parameters and saving them as checkpoints."""
