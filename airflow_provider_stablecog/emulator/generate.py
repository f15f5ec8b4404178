"""The generation create flow, in the server's order of checks: parse, validate, queue, charge, work.

``POST /v1/image/generation/create`` (alias ``/v1/image/generate``). What the contract says and this
emulates:

1. JSON with the right types, else 400 ``json_parse_error``; a banned user 403.
2. An unknown ``model_id`` with ``width`` or ``height`` omitted crashes the real handler: no JSON
   answer (here: the proxy's 502 page), nothing charged.
3. Sizes, guidance scale, steps and ``num_outputs`` out of range: 400 with an English sentence.
4. ``invalid_model_id``; a scheduler the model lacks is silently swapped for the model's default;
   ``invalid_init_image_url``.
5. The init image is fetched / looked up like an upscale input (``image_url_width_height_error``,
   401 ``init_image_not_owned``, ``init_image_not_found``).
6. Wait for one of the account's *generation* slots (its own counter: plan + 1 run at once) or
   ``queue_limit_reached`` (the queue is shared with upscales).
7. ``insufficient_credits`` (balance < ``num_outputs``), then ``nsfw_prompt`` (nothing charged).
8. ``num_outputs`` credits taken; a TIMEOUT or a worker failure refunds them all.

Outputs are listed by ``GET /v1/image/generation/outputs``, served under ``/outputs/`` and
upscalable by their ID. Images are deterministic: a function of the seed, the output's index, the
size and the init image.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from airflow_provider_stablecog.emulator.faults import PRE_CHARGE_FAULTS
from airflow_provider_stablecog.emulator.responses import (
    ApiError,
    bad_gateway,
    deliver_answer,
    error_response,
    too_many_requests,
)
from airflow_provider_stablecog.emulator.state import (
    GENERATION_MODELS,
    SCHEDULER_ID,
    Account,
    EmulatorState,
    GeneratedOutput,
    stable_uuid,
)
from airflow_provider_stablecog.emulator.upscale import (
    UUID_RE,
    _fetch,
    _read_upload,
    _validated,
    authenticate,
    output_url,
)

MIN_SIDE, MAX_SIDE = 256, 1536
MAX_AREA_STEPS = 31_457_280
MAX_OUTPUTS = 4
MAX_PROMPT_BYTES = 500
MAX_SEED = 2**31 - 2
MAX_INIT_IMAGE_BYTES = 5 * 1024 * 1024
DEFAULT_STEPS = 30
WORKER_FAILED = "runpod_failed"  # the worker's own error text, as the server passes it on
#: the emulator's moderation: a prompt with one of these words is refused (``nsfw_prompt``)
NSFW_WORDS = frozenset({"nsfw", "nude", "naked", "gore"})
MODELS = {m["id"]: m for m in GENERATION_MODELS}
DEFAULT_MODEL = next(m for m in GENERATION_MODELS if m["is_default"])
GENERATION_DEFAULTS: dict[str, Any] = {
    "model_id": DEFAULT_MODEL["id"],
    "scheduler_id": SCHEDULER_ID,
    "width": DEFAULT_MODEL["default_width"],
    "height": DEFAULT_MODEL["default_height"],
    "num_outputs": 2,
    "guidance_scale": 7,
    "inference_steps": DEFAULT_STEPS,
    "prompt_strength": 0.5,
}
_INT_FIELDS = ("width", "height", "inference_steps", "num_outputs", "seed")
_NUMBER_FIELDS = ("guidance_scale", "prompt_strength")
_STRING_FIELDS = ("prompt", "negative_prompt", "init_image_url", "mask_image_url")
_WORDS = re.compile(r"[a-z]+")


def clean_prompt(text: str) -> str:
    """As the server: newlines to spaces, whitespace runs collapsed, cut at 500 bytes."""
    cleaned = " ".join(text.split())
    data = cleaned.encode("utf-8")
    if len(data) > MAX_PROMPT_BYTES:
        cleaned = data[:MAX_PROMPT_BYTES].decode("utf-8", "ignore")
    return cleaned


def is_nsfw(prompt: str) -> bool:
    return bool(NSFW_WORDS & set(_WORDS.findall(prompt.lower())))


@dataclass
class GenerationJob:
    """One validated request, with the effective settings the server answers with."""

    prompt: str
    negative_prompt: str
    model_id: str
    scheduler_id: str
    width: int
    height: int
    inference_steps: int
    guidance_scale: float
    num_outputs: int
    seed: int
    init_image_url: str | None = None
    prompt_strength: float | None = None
    init_digest: str = ""

    @property
    def key(self) -> str:
        """What the ledger and the fault draw key on."""
        return f"generate:{self.prompt}:{self.seed}"

    def settings(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_id": self.model_id,
            "scheduler_id": self.scheduler_id,
            "width": self.width,
            "height": self.height,
            "num_outputs": self.num_outputs,
            "guidance_scale": self.guidance_scale,
            "inference_steps": self.inference_steps,
            "seed": self.seed,
        }
        if self.init_image_url is not None:
            body["init_image_url"] = self.init_image_url
            body["prompt_strength"] = self.prompt_strength
        return body


# -- parsing and validation -----------------------------------------------------------------------


def _typed(payload: dict[str, Any]) -> dict[str, Any]:
    """Go's JSON decoding: a wrong type anywhere is ``json_parse_error``."""
    for name in _INT_FIELDS:
        value = payload.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ApiError(400, "json_parse_error")
    for name in _NUMBER_FIELDS:
        value = payload.get(name)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ApiError(400, "json_parse_error")
    for name in _STRING_FIELDS:
        value = payload.get(name)
        if value is not None and not isinstance(value, str):
            raise ApiError(400, "json_parse_error")
    for name in ("model_id", "scheduler_id"):
        value = payload.get(name)
        if value is not None and (not isinstance(value, str) or not UUID_RE.match(value)):
            raise ApiError(400, "json_parse_error")
    return payload


def _check_ranges(width: int, height: int, steps: int, guidance: float, num_outputs: int) -> None:
    """Step 3: the free-text errors, in the server's order."""
    if height > MAX_SIDE:
        raise ApiError(400, f"Height is too large, max is: {MAX_SIDE}")
    if height < MIN_SIDE:
        raise ApiError(400, f"Height is too small, min is: {MIN_SIDE}")
    if width > MAX_SIDE:
        raise ApiError(400, f"Width is too large, max is: {MAX_SIDE}")
    if width < MIN_SIDE:
        raise ApiError(400, f"Width is too small, min is: {MIN_SIDE}")
    if guidance < 1:
        raise ApiError(400, "Guidance scale is too small, min is: 1.000000")
    if guidance > 30:
        raise ApiError(400, "Guidance scale is too large, max is: 30.000000")
    if steps < 10:
        raise ApiError(400, "Inference steps is too small, min is: 10")
    if width * height * steps > MAX_AREA_STEPS:
        raise ApiError(400, f"Pick fewer inference steps or smaller dimensions: {width} - {height} - {steps}")
    if num_outputs > MAX_OUTPUTS:
        raise ApiError(400, f"Number of outputs can't be more than {MAX_OUTPUTS}")


def parse_generation(raw: bytes, rng: random.Random) -> GenerationJob | Response:
    """Steps 1–4; a Response when the real handler would crash (step 2)."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "json_parse_error") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "json_parse_error")
    payload = _typed(payload)
    model_id = (payload.get("model_id") or DEFAULT_MODEL["id"]).lower()
    model = MODELS.get(model_id)
    if model is None and (payload.get("width") is None or payload.get("height") is None):
        return bad_gateway()  # the handler reads the unknown model's default size and panics
    width = payload.get("width") or (model or DEFAULT_MODEL)["default_width"]
    height = payload.get("height") or (model or DEFAULT_MODEL)["default_height"]
    steps = payload.get("inference_steps") or DEFAULT_STEPS
    guidance = payload.get("guidance_scale")
    guidance = 7.0 if guidance is None else float(guidance)
    num_outputs = payload.get("num_outputs")
    num_outputs = 2 if num_outputs is None or num_outputs < 0 else int(num_outputs)
    _check_ranges(int(width), int(height), int(steps), guidance, num_outputs)
    if model is None:
        raise ApiError(400, "invalid_model_id")
    schedulers = [s["id"] for s in model["available_schedulers"]]
    scheduler_id = (payload.get("scheduler_id") or "").lower()
    if scheduler_id not in schedulers:
        scheduler_id = schedulers[0]  # silently the model's default
    init = payload.get("init_image_url")
    if init is not None and not init.lower().startswith(("http://", "https://", "s3://")):
        raise ApiError(400, "invalid_init_image_url")
    seed = payload.get("seed")
    if seed is None or seed < 0:
        seed = rng.randint(0, MAX_SEED)
    strength = payload.get("prompt_strength")
    return GenerationJob(
        prompt=clean_prompt(payload.get("prompt") or ""),
        negative_prompt=clean_prompt(payload.get("negative_prompt") or ""),
        model_id=model_id,
        scheduler_id=scheduler_id,
        width=int(width),
        height=int(height),
        inference_steps=DEFAULT_STEPS,  # replaced by the model's own default, as on the server
        guidance_scale=guidance,
        num_outputs=num_outputs,
        seed=int(seed),
        init_image_url=init,
        prompt_strength=None if init is None else min(1.0, max(0.0, 0.5 if strength is None else strength)),
    )


async def _check_init_image(
    request: Request, state: EmulatorState, account: Account, job: GenerationJob
) -> None:
    """Step 5: the init image must be fetchable (≤ 5 MiB) or one of the account's own uploads."""
    url = job.init_image_url
    if url is None:
        return
    settings = {"settings": job.settings()}
    try:
        if url.lower().startswith("s3://"):
            data = _read_upload(state, account, url)
        else:
            if not url.split("://", 1)[1].split("/", 1)[0]:
                raise ApiError(401, "init_image_not_owned")
            data = await _fetch(request, state, url)
            if len(data) > MAX_INIT_IMAGE_BYTES:
                raise ApiError(400, "image_url_width_height_error")
        data = await _validated(state, data)
    except ApiError as exc:
        raise ApiError(exc.status, exc.code, **settings) from None
    job.init_digest = hashlib.sha256(data).hexdigest()[:16]


# -- the handler ------------------------------------------------------------------------------------


async def create_generation(request: Request, state: EmulatorState) -> Response:
    """``POST /v1/image/generation/create`` (and ``/v1/image/generate``)."""
    account = authenticate(request, state)
    parsed = parse_generation(await request.body(), state.jitter_rng)
    if isinstance(parsed, Response):
        return parsed
    job = parsed
    await _check_init_image(request, state, account, job)
    fault = state.draw_fault(job.key)
    if fault in PRE_CHARGE_FAULTS:
        state.record_fault(fault)
        return bad_gateway() if fault == "bad_gateway" else too_many_requests()
    pool, limit = account.generation_pool, account.run_limit
    if pool.must_wait(limit) and state.waiting(account) >= state.config.queue_limit:
        state.ledger.queue_rejected += 1
        return error_response(400, "queue_limit_reached", settings=job.settings())
    await pool.acquire(limit)  # the queue wait: the credits are taken after it
    state.generation_started()
    try:
        return await _charge_and_run(request, state, account, job, fault)
    finally:
        state.generation_stopped()
        pool.release(limit)


async def _charge_and_run(
    request: Request, state: EmulatorState, account: Account, job: GenerationJob, fault: str | None
) -> Response:
    if job.num_outputs == 0 or account.balance < job.num_outputs:
        return error_response(400, "insufficient_credits", settings=job.settings())
    if is_nsfw(job.prompt):
        state.ledger.nsfw_rejected += 1
        return error_response(400, "nsfw_prompt", settings=job.settings())
    charged_at = datetime.now(UTC)
    balance = state.charge(account, job.key, job.num_outputs)
    try:
        async with asyncio.timeout(state.config.server_timeout):
            if fault == "timeout":
                state.record_fault(fault)
                raise TimeoutError
            await _work(state, fault)
    except TimeoutError:
        state.refund(account, job.key, job.num_outputs)
        return error_response(500, "TIMEOUT", settings=job.settings())
    except _WorkerFailed:
        state.refund(account, job.key, job.num_outputs)
        return error_response(500, WORKER_FAILED, settings=job.settings())
    except asyncio.CancelledError:  # server shutting down: the job never finished
        state.refund(account, job.key, job.num_outputs)
        raise
    outputs = _store_outputs(state, account, job, charged_at)
    return await _deliver(request, state, job, outputs, balance, fault)


class _WorkerFailed(Exception):
    pass


async def _work(state: EmulatorState, fault: str | None) -> None:
    delay = state.config.latency
    if fault == "slow":
        state.record_fault(fault)
        delay = max(delay, state.config.slow_seconds)
    await asyncio.sleep(delay)
    if fault == "worker_failure":
        state.record_fault(fault)
        raise _WorkerFailed()


def _store_outputs(
    state: EmulatorState, account: Account, job: GenerationJob, charged_at: datetime
) -> list[GeneratedOutput]:
    """The finished job's outputs, listed from now on (a late drop of the answer does not undo them)."""
    generation_id = stable_uuid("generation", account.account_id, job.key, charged_at.isoformat())
    done = datetime.now(UTC)
    outputs = []
    for index in range(job.num_outputs):
        image_seed = int(hashlib.sha256(f"{job.seed}:{index}:{job.init_digest}".encode()).hexdigest()[:8], 16)
        output = GeneratedOutput(
            id=stable_uuid("output", generation_id, index),
            account_id=account.account_id,
            generation_id=generation_id,
            width=job.width,
            height=job.height,
            seed=job.seed,
            prompt=job.prompt,
            created_at=done,
            image_name=stable_uuid("image", generation_id, index) + ".jpeg",
            generation_created_at=charged_at,
            negative_prompt=job.negative_prompt or None,
            model_id=job.model_id,
            scheduler_id=job.scheduler_id,
            guidance_scale=job.guidance_scale,
            inference_steps=job.inference_steps,
            num_outputs=job.num_outputs,
            prompt_strength=job.prompt_strength,
        )
        state.add_generated(account, output, image_seed)
        outputs.append(output)
    state.ledger.generations_completed += 1
    state.ledger.outputs_generated += len(outputs)
    return outputs


async def _deliver(
    request: Request,
    state: EmulatorState,
    job: GenerationJob,
    outputs: list[GeneratedOutput],
    balance: int,
    fault: str | None,
) -> Response:
    body = {
        "outputs": [
            {
                "id": o.id,
                "url": output_url(request, state, o.image_name),
                "image_url": output_url(request, state, o.image_name),
            }
            for o in outputs
        ],
        "remaining_credits": int(balance),
        "settings": job.settings(),
    }
    return await deliver_answer(request, state, body, fault)


def models_body() -> dict[str, Any]:
    return {"models": [json.loads(json.dumps(m)) for m in GENERATION_MODELS]}


def defaults_body() -> dict[str, Any]:
    return dict(GENERATION_DEFAULTS)
