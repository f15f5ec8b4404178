"""Seeded, order-independent fault decisions.

The fault for a request is a pure function of ``(fault_seed, input, attempt)``,
where ``attempt`` counts the upscale requests for that same input (1, 2, ...).
So a run is reproducible from its seed even when requests arrive concurrently.
"""

from __future__ import annotations

import hashlib

from airflow_provider_stablecog.emulator.config import FAULT_KINDS

#: Faults answered before anything is charged.
PRE_CHARGE_FAULTS = frozenset({"bad_gateway", "spurious_429"})

BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def fault_draw(seed: int, key: str, attempt: int) -> float:
    """A uniform number in [0, 1) derived only from the arguments."""
    digest = hashlib.sha256(f"{seed}\x00{key}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def decide_fault(faults: dict[str, float], seed: int, key: str, attempt: int) -> str | None:
    """Return the fault kind for this attempt, or ``None`` for a normal answer."""
    if not faults:
        return None
    draw = fault_draw(seed, key, attempt)
    cumulative = 0.0
    for kind in FAULT_KINDS:
        cumulative += faults.get(kind, 0.0)
        if draw < cumulative:
            return kind
    return None
