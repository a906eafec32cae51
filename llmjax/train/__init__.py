"""Training: loss, optimizer, state, jitted steps, the fit loop and checkpoints."""
