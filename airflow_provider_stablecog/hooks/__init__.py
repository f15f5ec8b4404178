"""Hooks of the Stablecog provider."""
