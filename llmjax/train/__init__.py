"""Training: optimizer, state, steps, the one loop (`Trainer`) with its hooks, and `fit`."""
