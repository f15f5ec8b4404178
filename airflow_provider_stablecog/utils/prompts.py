"""Normalise and validate the prompts a generation task is asked for, against the API's limits.

Each item of ``prompts`` is a string (the prompt) or a dict with per-item parameters that
override the operator-level defaults:

``prompt``, ``negative_prompt``, ``model_id``, ``width``, ``height``, ``num_outputs``,
``guidance_scale``, ``scheduler_id``, ``seed``, ``init_image``, ``prompt_strength``.

Everything is checked before anything is spent, with the limits of
``POST /v1/image/generation/create``: sizes 256–1536, ``num_outputs`` 1–4, guidance 1–30, a seed
0…2³¹−2, the prompt at most 500 bytes once cleaned as the server cleans it (newlines to spaces,
whitespace runs collapsed), a ``model_id`` among the active models and a ``scheduler_id`` among
that model's schedulers (the server would silently swap it). Values must have the JSON type the
server expects (``512.0`` for a width is refused there with ``json_parse_error``).

Idempotency the API does not give: an item without a ``seed`` gets one derived from the item
itself (a hash of its settings), so the same item always asks for the same images, and a lost
answer can be recognised in the outputs listing by its prompt and seed. The item's identity (and
so its ledger key) is its full settings, seed included: duplicates are generated once.

``init_image`` (image-to-image) is an http(s) URL, an output ID of yours (its image URL is looked
up in the outputs listing), an ``s3://`` upload key, or a local / object-storage file (uploaded
first) — classified as :mod:`airflow_provider_stablecog.utils.inputs` classifies upscale inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_stablecog.utils.inputs import InputItem, InputPlan, InvalidInput, is_uuid, parse_input

if TYPE_CHECKING:
    from airflow_provider_stablecog.models import GenerationDefaults, GenerationModel

MIN_SIDE, MAX_SIDE = 256, 1536
MAX_OUTPUTS = 4
MIN_GUIDANCE, MAX_GUIDANCE = 1.0, 30.0
MAX_PROMPT_BYTES = 500
MAX_SEED = 2**31 - 2
#: width × height × inference steps must stay within this; at the default 30 steps that caps the
#: area at 1024×1024, so larger images are sent with 10 steps (the server replaces the steps by
#: the model's own default anyway: this changes nothing else)
MAX_AREA_STEPS = 31_457_280
DEFAULT_STEPS = 30
LARGE_IMAGE_STEPS = 10
PARAMETERS = (
    "prompt",
    "negative_prompt",
    "model_id",
    "width",
    "height",
    "num_outputs",
    "guidance_scale",
    "scheduler_id",
    "seed",
    "init_image",
    "prompt_strength",
)


def clean_prompt(text: str) -> str:
    """The prompt as the server stores it: newlines to spaces, whitespace runs collapsed."""
    return " ".join(text.split())


@dataclass(frozen=True)
class GenerationItem:
    """One valid generation request. ``key`` is its identity: equal keys are generated once."""

    key: str
    prompt: str
    model_id: str
    width: int
    height: int
    num_outputs: int
    seed: int
    guidance_scale: float | None = None
    negative_prompt: str | None = None
    scheduler_id: str | None = None
    prompt_strength: float | None = None
    init_image: InputItem | None = None
    kind: str = field(default="prompt", compare=False)

    @property
    def display(self) -> str:
        """How the item appears in logs, the manifest and XCom (the prompt, shortened)."""
        text = self.prompt if len(self.prompt) <= 80 else self.prompt[:79] + "…"
        return f"{text} [seed {self.seed}]"

    @property
    def needs_upload(self) -> bool:
        return self.init_image is not None and self.init_image.needs_upload

    def request(self, init_image_url: str | None = None) -> dict[str, Any]:
        """The keyword arguments of :meth:`StablecogClient.generate
        <airflow_provider_stablecog.client.StablecogClient.generate>` (``init_image_url``: the init
        image as the server takes it: URL or upload key)."""
        large = self.width * self.height * DEFAULT_STEPS > MAX_AREA_STEPS
        init = init_image_url if init_image_url is not None else self._sendable_init()
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "model_id": self.model_id,
            "width": self.width,
            "height": self.height,
            "num_outputs": self.num_outputs,
            "guidance_scale": self.guidance_scale,
            "scheduler_id": self.scheduler_id,
            "seed": self.seed,
            "init_image_url": init,
            "prompt_strength": self.prompt_strength if init is not None else None,
            "inference_steps": LARGE_IMAGE_STEPS if large else None,
        }

    def _sendable_init(self) -> str | None:
        if self.init_image is None or self.init_image.kind not in ("url", "upload_key"):
            return None
        return self.init_image.value


@dataclass
class PromptPlan(InputPlan["GenerationItem"]):
    """The plan of a generation batch: an :class:`~airflow_provider_stablecog.utils.inputs.InputPlan`
    of prompts, with what they cost."""

    def credits(self) -> int:
        """Σ num_outputs over the unique valid items: what generating all of them costs."""
        return sum(item.num_outputs for item in self.unique.values())


class _Bad(Exception):
    def __init__(self, code: str, what: str) -> None:
        super().__init__(what)
        self.code, self.what = code, what


def coerce_prompt_list(value: Any) -> list[Any]:
    """The rendered ``prompts`` argument as a list: one string or one dict is a batch of one."""
    from airflow_provider_stablecog.exceptions import StablecogConfigError

    if value is None:
        raise StablecogConfigError(
            "prompts is None: the upstream task returned nothing. Pass a list of prompts (strings) or "
            "of dicts with a 'prompt' key and per-item parameters",
            code="invalid_prompts",
        )
    if isinstance(value, (str, Mapping)):
        return [value]
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return list(value)
    raise StablecogConfigError(
        f"prompts must be a list of prompts (or one string), got {type(value).__name__}",
        code="invalid_prompts",
    )


def check_defaults(defaults: Mapping[str, Any]) -> None:
    """Operator-level defaults: only known parameters (``prompt`` is per item)."""
    unknown = sorted(set(defaults) - set(PARAMETERS) - {"prompt"})
    if unknown or "prompt" in defaults:
        bad = unknown or ["prompt"]
        raise ValueError(f"unknown generation parameter(s) {', '.join(bad)}; use {', '.join(PARAMETERS[1:])}")


def plan_prompts(
    values: Iterable[Any],
    defaults: Mapping[str, Any],
    models: list[GenerationModel],
    server_defaults: GenerationDefaults,
) -> PromptPlan:
    """Validate every item against the contract's limits and de-duplicate by identity."""
    positions: list[str | InvalidInput] = []
    unique: dict[str, GenerationItem] = {}
    by_id = {m.id.lower(): m for m in models}
    for position, raw in enumerate(values):
        shown = _shown(raw)
        try:
            item = _parse_item(raw, defaults, by_id, server_defaults)
        except _Bad as bad:
            positions.append(
                InvalidInput(position, shown, bad.code, f"prompt {position} ({shown}): {bad.what}")
            )
            continue
        unique.setdefault(item.key, item)
        positions.append(item.key)
    return PromptPlan(positions=positions, unique=unique)


def _shown(raw: Any) -> str:
    text = raw.get("prompt") if isinstance(raw, Mapping) else raw
    text = text if isinstance(text, str) else repr(raw)
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59] + "…"


def _parse_item(
    raw: Any,
    defaults: Mapping[str, Any],
    models: Mapping[str, GenerationModel],
    server: GenerationDefaults,
) -> GenerationItem:
    if isinstance(raw, str):
        raw = {"prompt": raw}
    if not isinstance(raw, Mapping):
        raise _Bad(
            "not_a_prompt",
            f"a {type(raw).__name__}; pass a prompt string or a dict with a 'prompt' key",
        )
    unknown = sorted(str(k) for k in raw if k not in PARAMETERS)
    if unknown:
        raise _Bad(
            "unknown_parameter",
            f"unknown parameter(s) {', '.join(unknown)}; the parameters are {', '.join(PARAMETERS)}",
        )
    values = {
        **{k: v for k, v in defaults.items() if v is not None},
        **{k: v for k, v in raw.items() if v is not None},
    }
    prompt = _text(values.get("prompt"), "prompt", required=True) or ""
    negative = _text(values.get("negative_prompt"), "negative_prompt")
    model_id = _model(values.get("model_id"), models, server)
    model = models.get(model_id)
    width = _int(values.get("width"), "width", MIN_SIDE, MAX_SIDE, _default_side(model, server, "width"))
    height = _int(values.get("height"), "height", MIN_SIDE, MAX_SIDE, _default_side(model, server, "height"))
    num_outputs = _int(values.get("num_outputs"), "num_outputs", 1, MAX_OUTPUTS, server.num_outputs)
    guidance = _number(values.get("guidance_scale"), "guidance_scale", MIN_GUIDANCE, MAX_GUIDANCE)
    scheduler = _scheduler(values.get("scheduler_id"), model)
    init = _init_image(values.get("init_image"))
    strength = _number(values.get("prompt_strength"), "prompt_strength", 0.0, 1.0)
    if init is None:
        strength = None  # only meaningful with an init image
    settings = {
        "prompt": prompt,
        "negative_prompt": negative,
        "model_id": model_id,
        "width": width,
        "height": height,
        "num_outputs": num_outputs,
        "guidance_scale": guidance,
        "scheduler_id": scheduler,
        "init_image": init.key if init is not None else None,
        "prompt_strength": strength,
    }
    seed_value = values.get("seed")
    seed = derived_seed(settings) if seed_value is None else _int(seed_value, "seed", 0, MAX_SEED, 0)
    identity = json.dumps({**settings, "seed": seed}, sort_keys=True, separators=(",", ":"))
    return GenerationItem(
        key=identity,
        prompt=prompt,
        model_id=model_id,
        width=width,
        height=height,
        num_outputs=num_outputs,
        seed=seed,
        guidance_scale=guidance,
        negative_prompt=negative,
        scheduler_id=scheduler,
        prompt_strength=strength,
        init_image=init,
    )


def derived_seed(settings: Mapping[str, Any]) -> int:
    """A seed that is a function of the item's settings only: the same item asks for the same images."""
    text = json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16) % (MAX_SEED + 1)


def _text(value: Any, name: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise _Bad("empty_prompt", "no prompt; give each item a non-empty 'prompt'")
        return None
    if not isinstance(value, str):
        raise _Bad("not_a_string", f"{name} must be a string, got {type(value).__name__}")
    cleaned = clean_prompt(value)
    if required and not cleaned:
        raise _Bad("empty_prompt", "an empty prompt; remove the item or fix the upstream task")
    size = len(cleaned.encode("utf-8"))
    if size > MAX_PROMPT_BYTES:
        raise _Bad(
            "prompt_too_long",
            f"{name} is {size} bytes once cleaned; Stablecog keeps only {MAX_PROMPT_BYTES} bytes, so "
            "shorten it",
        )
    return cleaned or None


def _int(value: Any, name: str, low: int, high: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(
            f"invalid_{name}",
            f"{name} must be a whole number (an int; the server refuses {value!r} with json_parse_error)",
        )
    if not low <= value <= high:
        raise _Bad(f"invalid_{name}", f"{name} must be {low}–{high}, got {value}")
    return value


def _number(value: Any, name: str, low: float, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"invalid_{name}", f"{name} must be a number, got {value!r}")
    if not low <= float(value) <= high:
        raise _Bad(f"invalid_{name}", f"{name} must be {low:g}–{high:g}, got {value}")
    return float(value)


def _model(value: Any, models: Mapping[str, GenerationModel], server: GenerationDefaults) -> str:
    if value is None:
        return server.model_id.lower()
    if not isinstance(value, str) or not is_uuid(value.strip()):
        raise _Bad(
            "json_parse_error",
            f"model_id {value!r} is not a UUID; list the models with "
            "StablecogHook().list_generation_models() or leave it unset",
        )
    model_id = value.strip().lower()
    if models and model_id not in models:
        known = ", ".join(f"{m.name} {m.id}" for m in models.values())
        raise _Bad("invalid_model_id", f"model_id {model_id} is not an active generation model ({known})")
    return model_id


def _default_side(model: GenerationModel | None, server: GenerationDefaults, side: str) -> int:
    value = getattr(model, f"default_{side}", None) if model is not None else None
    return int(value) if value else int(getattr(server, side))


def _scheduler(value: Any, model: GenerationModel | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_uuid(value.strip()):
        raise _Bad("json_parse_error", f"scheduler_id {value!r} is not a UUID")
    scheduler_id = value.strip().lower()
    if model is not None and model.available_schedulers:
        known = {s.id.lower(): s.name for s in model.available_schedulers}
        if scheduler_id not in known:
            names = ", ".join(f"{n} {i}" for i, n in known.items())
            raise _Bad(
                "invalid_scheduler_id",
                f"scheduler_id {scheduler_id} is not a scheduler of {model.name} ({names}); the server "
                "would silently use the model's default instead",
            )
    return scheduler_id


def _init_image(value: Any) -> InputItem | None:
    if value is None:
        return None
    parsed = parse_input(value)
    if isinstance(parsed, InvalidInput):
        raise _Bad(parsed.code, "init_image: " + parsed.message.split(": ", 1)[-1])
    return parsed


__all__ = [
    "PARAMETERS",
    "GenerationItem",
    "PromptPlan",
    "check_defaults",
    "clean_prompt",
    "coerce_prompt_list",
    "derived_seed",
    "plan_prompts",
]
