"""Configuration of the Stablecog emulator (plain dataclass, no heavy imports)."""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field
from typing import Any

#: Fault kinds understood by the emulator, in the order used to draw them.
FAULT_KINDS: tuple[str, ...] = (
    "timeout",
    "worker_failure",
    "bad_gateway",
    "spurious_429",
    "slow",
    "drop_after_charge",
)

#: Settings that ``PATCH /_emulator/config`` may change at run time.
RUNTIME_SETTINGS: tuple[str, ...] = (
    "latency",
    "rate_limit",
    "faults",
    "fault_seed",
    "slow_seconds",
    "server_timeout",
    "queue_limit",
)


def new_api_key() -> str:
    """Return a random key shaped like a real one: ``sc-`` + 64 hex characters."""
    return "sc-" + secrets.token_hex(32)


def parse_faults(spec: str | dict[str, Any] | None) -> dict[str, float]:
    """Parse ``"timeout=0.05,slow=0.1"`` (or a mapping) into validated probabilities."""
    if not spec:
        return {}
    items = spec.items() if isinstance(spec, dict) else _split_pairs(str(spec))
    faults: dict[str, float] = {}
    for kind, value in items:
        kind = str(kind).strip()
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULT_KINDS)}")
        probability = float(value)
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"fault probability for {kind!r} must be within 0..1")
        if probability:
            faults[kind] = probability
    if sum(faults.values()) > 1.0 + 1e-9:
        raise ValueError("fault probabilities must add up to at most 1")
    return faults


def _split_pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for part in spec.split(","):
        if not part.strip():
            continue
        kind, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"fault {part!r} must look like kind=probability")
        pairs.append((kind.strip(), value.strip()))
    return pairs


def format_faults(faults: dict[str, float]) -> str:
    """Inverse of :func:`parse_faults` (for command lines)."""
    return ",".join(f"{kind}={value}" for kind, value in faults.items())


@dataclass
class EmulatorConfig:
    """Everything that shapes the emulator's behaviour.

    Times are in seconds. ``rate_limit`` is the per-IP create-route budget per
    second (reads get twice that); ``0`` disables rate limiting.
    """

    api_key: str = field(default_factory=new_api_key)
    credits: int = 1000
    plan_concurrency: int = 4
    latency: float = 0.5
    rate_limit: float = 10.0
    queue_limit: int = 50
    server_timeout: float = 240.0
    faults: dict[str, float] = field(default_factory=dict)
    fault_seed: int = 0
    slow_seconds: float = 30.0
    data_dir: str | None = None
    seed_outputs: int = 8
    seed: int = 0
    public_base_url: str | None = None
    fetch_timeout: float = 10.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_input_pixels: int = 1024 * 1024
    admin_loopback_only: bool = True

    def __post_init__(self) -> None:
        self.faults = parse_faults(self.faults)
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` on settings that make no sense."""
        if self.plan_concurrency < 0:
            raise ValueError("plan_concurrency must be >= 0")
        if self.queue_limit < 0:
            raise ValueError("queue_limit must be >= 0")
        for name in ("latency", "rate_limit", "slow_seconds", "fetch_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.server_timeout <= 0:
            raise ValueError("server_timeout must be > 0")
        if self.credits < 0:
            raise ValueError("credits must be >= 0")

    def update(self, changes: dict[str, Any]) -> None:
        """Apply run-time changes (only :data:`RUNTIME_SETTINGS`), validating them."""
        unknown = set(changes) - set(RUNTIME_SETTINGS)
        if unknown:
            raise ValueError(f"cannot change {', '.join(sorted(unknown))} at run time")
        candidate = dataclasses.replace(self, **_coerce(changes))
        for name in RUNTIME_SETTINGS:
            setattr(self, name, getattr(candidate, name))

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly data (the API key is included)."""
        return dataclasses.asdict(self)


def _coerce(changes: dict[str, Any]) -> dict[str, Any]:
    types = {
        "latency": float,
        "rate_limit": float,
        "slow_seconds": float,
        "server_timeout": float,
        "queue_limit": int,
        "fault_seed": int,
    }
    coerced: dict[str, Any] = {}
    for name, value in changes.items():
        coerced[name] = parse_faults(value) if name == "faults" else types[name](value)
    return coerced
