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
    """One output of ``GET /v1/image/generation/outputs`` (the fields the provider uses).

    The ``generation`` block gives the job's settings: ``prompt`` (the cleaned text), ``seed``,
    size, ``model_id``, and ``generation_created_at`` (set when the credits were taken); outputs
    of one job share ``generation_id``.
    """

    id: str
    image_url: str | None
    upscaled_image_url: str | None
    created_at: str | None = None
    generation_id: str | None = None
    generation_created_at: str | None = None
    prompt: str | None = None
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    model_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_upscaled(self) -> bool:
        return bool(self.upscaled_image_url)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationOutput:
        raw_gen = data.get("generation")
        gen: dict[str, Any] = raw_gen if isinstance(raw_gen, dict) else {}
        prompt = gen.get("prompt")
        return cls(
            id=str(data["id"]),
            image_url=data.get("image_url"),
            upscaled_image_url=data.get("upscaled_image_url"),
            created_at=data.get("created_at"),
            generation_id=None if gen.get("id") is None else str(gen["id"]),
            generation_created_at=gen.get("created_at"),
            prompt=prompt.get("text") if isinstance(prompt, dict) else None,
            seed=None if gen.get("seed") is None else _int(gen["seed"]),
            width=None if gen.get("width") is None else _int(gen["width"]),
            height=None if gen.get("height") is None else _int(gen["height"]),
            model_id=gen.get("model_id"),
            raw=data,
        )


@dataclass(frozen=True)
class GeneratedImage:
    """One image of ``POST /v1/image/generation/create``: its output ID (a valid upscale input) and URL."""

    id: str
    url: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GeneratedImage:
        url = data.get("image_url") or data.get("url")
        return cls(id=str(data["id"]), url=url if isinstance(url, str) and url else None)


@dataclass(frozen=True)
class GenerationResult:
    """The answer of a generation: its images, the balance after it, the effective settings.

    ``settings`` holds what the server used (swapped scheduler, overridden steps, the seed,
    clamped strength); a 200 may hold fewer images than ``num_outputs`` (no partial refund).
    """

    outputs: tuple[GeneratedImage, ...]
    remaining_credits: int | None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def output_ids(self) -> list[str]:
        return [o.id for o in self.outputs]

    @property
    def seed(self) -> int | None:
        seed = self.settings.get("seed")
        return None if seed is None else _int(seed)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationResult:
        outputs = tuple(GeneratedImage.from_json(o) for o in data.get("outputs") or ())
        if not outputs:
            raise ValueError("generation answer has no outputs")
        remaining = data.get("remaining_credits")
        settings = data.get("settings")
        return cls(
            outputs=outputs,
            remaining_credits=None if remaining is None else _int(remaining),
            settings=dict(settings) if isinstance(settings, dict) else {},
        )


@dataclass(frozen=True)
class Scheduler:
    id: str
    name: str


@dataclass(frozen=True)
class GenerationModel:
    """``GET /v1/image/generation/models``: an active model, its schedulers and default size."""

    id: str
    name: str
    is_default: bool = False
    available_schedulers: tuple[Scheduler, ...] = ()
    default_width: int | None = None
    default_height: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationModel:
        schedulers = tuple(
            Scheduler(id=str(s["id"]), name=str(s.get("name", "")))
            for s in data.get("available_schedulers") or ()
            if isinstance(s, dict) and "id" in s
        )
        width, height = data.get("default_width"), data.get("default_height")
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            is_default=bool(data.get("is_default")),
            available_schedulers=schedulers,
            default_width=None if width is None else _int(width),
            default_height=None if height is None else _int(height),
        )


@dataclass(frozen=True)
class GenerationDefaults:
    """``GET /v1/image/generation/defaults``; ``scheduler_id`` is global and may not fit the model."""

    model_id: str
    scheduler_id: str | None = None
    width: int = 1024
    height: int = 1024
    num_outputs: int = 2
    guidance_scale: float = 7.0
    inference_steps: int = 30
    prompt_strength: float = 0.5

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationDefaults:
        return cls(
            model_id=str(data["model_id"]),
            scheduler_id=None if data.get("scheduler_id") is None else str(data["scheduler_id"]),
            width=_int(data.get("width"), 1024),
            height=_int(data.get("height"), 1024),
            num_outputs=_int(data.get("num_outputs"), 2),
            guidance_scale=float(data.get("guidance_scale") or 7.0),
            inference_steps=_int(data.get("inference_steps"), 30),
            prompt_strength=float(data.get("prompt_strength") or 0.5),
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
