"""Typed results of the Stablecog API routes (plain dataclasses, no Airflow, no requests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _int(value: Any, default: int = 0) -> int:
    """The server sends integers; the docs call some of them floats. Accept both."""
    if value is None:
        return default
    return int(float(value))


@dataclass(frozen=True)
class UpscaleOutput:
    """One image produced by ``POST /v1/image/upscale/create``."""

    id: str
    url: str | None = None
    upscaled_image_url: str | None = None

    @property
    def image_url(self) -> str | None:
        """The upscaled image: ``upscaled_image_url`` when the server sends it, else ``url``."""
        return self.upscaled_image_url or self.url

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpscaleOutput:
        return cls(id=str(data["id"]), url=data.get("url"), upscaled_image_url=data.get("upscaled_image_url"))


@dataclass(frozen=True)
class UpscaleResult:
    """The answer of an upscale: outputs, the balance after it, and the settings used."""

    outputs: tuple[UpscaleOutput, ...]
    remaining_credits: int | None
    model_id: str | None = None
    input: str | None = None

    @property
    def output(self) -> UpscaleOutput:
        return self.outputs[0]

    @property
    def output_id(self) -> str:
        return self.output.id

    @property
    def upscaled_image_url(self) -> str | None:
        return self.output.image_url

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UpscaleResult:
        outputs = tuple(UpscaleOutput.from_json(o) for o in data.get("outputs") or ())
        if not outputs:
            raise ValueError("upscale answer has no outputs")
        settings = data.get("settings") or {}
        remaining = data.get("remaining_credits")
        return cls(
            outputs=outputs,
            remaining_credits=None if remaining is None else _int(remaining),
            model_id=settings.get("model_id"),
            input=settings.get("input"),
        )


@dataclass(frozen=True)
class CreditType:
    id: str
    name: str
    amount: int
    description: str = ""


@dataclass(frozen=True)
class CreditGrant:
    id: str
    remaining_amount: int
    expires_at: str | None
    type: CreditType | None


@dataclass(frozen=True)
class Credits:
    """``GET /v1/credits``."""

    total_remaining_credits: int
    credits: tuple[CreditGrant, ...] = ()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credits:
        grants = []
        for c in data.get("credits") or ():
            t = c.get("type")
            ctype = (
                CreditType(
                    id=str(t.get("id", "")),
                    name=str(t.get("name", "")),
                    amount=_int(t.get("amount")),
                    description=str(t.get("description") or ""),
                )
                if isinstance(t, dict)
                else None
            )
            grants.append(
                CreditGrant(
                    id=str(c.get("id", "")),
                    remaining_amount=_int(c.get("remaining_amount")),
                    expires_at=c.get("expires_at"),
                    type=ctype,
                )
            )
        return cls(total_remaining_credits=_int(data.get("total_remaining_credits")), credits=tuple(grants))


@dataclass(frozen=True)
class UpscaleModel:
    id: str
    name: str
    is_default: bool = False


@dataclass(frozen=True)
class GenerationOutput:
    """One output of ``GET /v1/image/generation/outputs`` (the fields the provider uses)."""

    id: str
    image_url: str | None
    upscaled_image_url: str | None
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_upscaled(self) -> bool:
        return bool(self.upscaled_image_url)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationOutput:
        return cls(
            id=str(data["id"]),
            image_url=data.get("image_url"),
            upscaled_image_url=data.get("upscaled_image_url"),
            created_at=data.get("created_at"),
            raw=data,
        )


@dataclass(frozen=True)
class GenerationOutputsPage:
    outputs: tuple[GenerationOutput, ...]
    next_cursor: str | None
    total: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationOutputsPage:
        nxt = data.get("next")
        total = data.get("total")
        return cls(
            outputs=tuple(GenerationOutput.from_json(o) for o in data.get("outputs") or ()),
            next_cursor=None if nxt in (None, "") else str(nxt),
            total=None if total is None else _int(total),
        )
