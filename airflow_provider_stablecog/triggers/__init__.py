"""Triggers of the Stablecog provider."""
