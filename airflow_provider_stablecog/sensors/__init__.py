"""Sensors of the Stablecog provider."""
