"""Evaluation and measurement helpers that experiments and notebooks share."""
