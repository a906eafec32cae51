"""Decoding: turning a model's logits into text."""
