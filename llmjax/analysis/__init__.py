"""Measurements of trained models: what a position depends on (leakage)."""
