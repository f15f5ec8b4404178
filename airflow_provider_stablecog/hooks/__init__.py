"""Hooks of the Stablecog provider."""

from __future__ import annotations

#: The connection every hook, operator and sensor uses unless told otherwise (importing it is free).
DEFAULT_CONN_ID = "stablecog_default"
