"""Configuration of the Stablecog emulator (plain dataclass, no heavy imports)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
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
    "reset_after_charge",
)

#: Settings that ``PATCH /_emulator/config`` may change at run time.
RUNTIME_SETTINGS: tuple[str, ...] = (
    "latency",
    "latency_jitter",
    "rate_limit",
    "read_rate_limit",
    "upload_rate_limit",
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

    Times are in seconds. Rate limits are per client IP in a sliding 1 s window, as on the
    server: ``rate_limit`` for create routes (POST upscale), ``read_rate_limit`` for GET routes
    (default twice ``rate_limit``) on the *same* counter (a create is refused once the counter
    reaches ``rate_limit``, a read at ``read_rate_limit``), and ``upload_rate_limit`` for
    ``POST /v1/image/upload`` in its own window (default 0.4 × ``rate_limit``: 4 for 10).
    ``rate_limit=0`` disables the derived ones too; ``/v1/health`` is not limited.

    ``latency``: how long an upscale job holds one of the account's run slots, the emulator's own
    image work included (so the ceiling is ``(plan_concurrency + 1) / latency`` however fast the
    machine); fetching and validating a URL input comes before, as on the server.

    ``latency_jitter``: each charged upscale answer is delayed by a further random 0..jitter s
    (drawn from ``fault_seed``) after the work, so answers arrive out of charge order; every
    answer's ``remaining_credits`` is the balance right after its own charge, as on the server.

    Faults (probabilities per upscale attempt): ``timeout``, ``worker_failure``, ``bad_gateway``,
    ``spurious_429``, ``slow``, ``drop_after_charge`` (charged, then half the body and the
    connection closed) and ``reset_after_charge`` (charged, then the connection reset before any
    byte of the answer). Both count in the ledger's ``responses_lost``, as does every answer
    whose client had already gone (read timeout, abort).
    """

    api_key: str = field(default_factory=new_api_key)
    credits: int = 1000
    plan_concurrency: int = 4
    latency: float = 0.5
    latency_jitter: float = 0.0
    rate_limit: float = 10.0
    read_rate_limit: float | None = None
    upload_rate_limit: float | None = None
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
        for name in ("latency", "latency_jitter", "rate_limit", "slow_seconds", "fetch_timeout"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in ("read_rate_limit", "upload_rate_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
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

    def limit_for(self, route_class: str) -> float:
        """Requests/s per IP of a route class (``create``, ``read``, ``upload``); 0 = unlimited."""
        if route_class == "upload":
            return self.upload_rate_limit if self.upload_rate_limit is not None else 0.4 * self.rate_limit
        if route_class == "read":
            return self.read_rate_limit if self.read_rate_limit is not None else 2 * self.rate_limit
        return self.rate_limit

    def public_dict(self) -> dict[str, Any]:
        """The settings as JSON-friendly data (the API key is included)."""
        return dataclasses.asdict(self)


def _coerce(changes: dict[str, Any]) -> dict[str, Any]:
    types: dict[str, Callable[[Any], Any]] = {
        "latency": float,
        "latency_jitter": float,
        "rate_limit": float,
        "read_rate_limit": _optional_float,
        "upload_rate_limit": _optional_float,
        "slow_seconds": float,
        "server_timeout": float,
        "queue_limit": int,
        "fault_seed": int,
    }
    coerced: dict[str, Any] = {}
    for name, value in changes.items():
        coerced[name] = parse_faults(value) if name == "faults" else types[name](value)
    return coerced


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)
