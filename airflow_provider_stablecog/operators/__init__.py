"""Operators of the Stablecog provider."""
