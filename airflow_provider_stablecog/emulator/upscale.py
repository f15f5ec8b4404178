"""The upscale create flow: parse, classify and validate the input, charge, queue, work."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from airflow_provider_stablecog.emulator import imaging
from airflow_provider_stablecog.emulator.faults import PRE_CHARGE_FAULTS
from airflow_provider_stablecog.emulator.fetch import FetchFailed, fetch_image
from airflow_provider_stablecog.emulator.responses import (
    UNKNOWN_ERROR,
    ApiError,
    bad_gateway,
    deliver_answer,
    error_response,
    too_many_requests,
)
from airflow_provider_stablecog.emulator.state import (
    AURA_SR_MODEL_ID,
    UPSCALE_MODELS,
    Account,
    EmulatorState,
    GeneratedOutput,
)

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
MODEL_IDS = frozenset(model["id"] for model in UPSCALE_MODELS)


class WorkerFailed(Exception):
    """The (emulated) worker failed."""


@dataclass
class UpscaleJob:
    """One parsed upscale request."""

    input: str
    model_id: str
    file: bytes | None = None

    @property
    def key(self) -> str:
        """What the ledger and the fault draw key on: the input, or the file's digest."""
        if self.file is not None:
            return "file:" + hashlib.sha256(self.file).hexdigest()[:16]
        return self.input


# -- helpers used by several routes -------------------------------------------------------------


def authenticate(request: Request, state: EmulatorState) -> Account:
    account = state.account_for(request.headers.get("authorization"))
    if account is None:
        raise ApiError(401, "Unauthorized")
    if account.banned:
        raise ApiError(403, "user_banned")
    return account


def base_url(request: Request, state: EmulatorState) -> str:
    return (state.config.public_base_url or str(request.base_url)).rstrip("/")


def output_url(request: Request, state: EmulatorState, name: str) -> str:
    return f"{base_url(request, state)}/outputs/{name}"


# -- parsing ------------------------------------------------------------------------------------


async def parse_job(request: Request) -> UpscaleJob:
    """Read the JSON (or multipart) body; bad JSON or model_id -> json_parse_error."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        payload, file = await _read_multipart(request)
    else:
        payload, file = _decode_json(await request.body()), None
    raw_input = payload.get("input", "")
    model_id = payload.get("model_id")
    if not isinstance(raw_input, str):
        raise ApiError(400, "json_parse_error")
    if model_id is None:
        model_id = AURA_SR_MODEL_ID
    elif not isinstance(model_id, str) or not UUID_RE.match(model_id):
        raise ApiError(400, "json_parse_error")
    model_id = model_id.lower()
    if model_id not in MODEL_IDS:
        raise ApiError(400, "invalid_model_id")
    return UpscaleJob(raw_input, model_id, file)


def _decode_json(raw: bytes | str) -> dict[str, Any]:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "json_parse_error") from exc
    if not isinstance(payload, dict):
        raise ApiError(400, "json_parse_error")
    return payload


async def _read_multipart(request: Request) -> tuple[dict[str, Any], bytes | None]:
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart raises several kinds
        raise ApiError(400, "json_parse_error") from exc
    data = form.get("data")
    if isinstance(data, UploadFile):
        data = (await data.read()).decode("utf-8", "replace")
    payload = _decode_json(data) if data else {}
    part = form.get("file")
    file = await part.read() if isinstance(part, UploadFile) else None
    if file is None and not payload:
        raise ApiError(400, "json_parse_error")
    return payload, file


# -- input classification and validation --------------------------------------------------------


async def resolve_source(
    request: Request, state: EmulatorState, account: Account, job: UpscaleJob
) -> GeneratedOutput | bytes:
    """A generation output (for output IDs) or the validated image bytes."""
    if job.file is not None:
        return await _validated(state, job.file)
    if UUID_RE.match(job.input):
        output = state.outputs.get(job.input.lower())
        if output is None or output.account_id != account.account_id:
            raise ApiError(400, "output_not_found")
        return output
    if job.input.startswith("s3://"):
        return await _validated(state, _read_upload(state, account, job.input))
    if job.input.lower().startswith(("http://", "https://")):
        return await _validated(state, await _fetch(request, state, job.input))
    raise ApiError(400, "invalid_image_url")


def _read_upload(state: EmulatorState, account: Account, object_key: str) -> bytes:
    upload = state.uploads.get(object_key)
    if upload is None:
        raise ApiError(400, "init_image_not_found")
    if upload.account_id != account.account_id:
        raise ApiError(401, "image_not_owned")
    return upload.path.read_bytes()


async def _fetch(request: Request, state: EmulatorState, url: str) -> bytes:
    origins = [str(request.base_url)]
    if state.config.public_base_url:
        origins.append(state.config.public_base_url)
    try:
        return await fetch_image(
            url,
            max_bytes=state.config.max_image_bytes,
            timeout=state.config.fetch_timeout,
            self_app=request.app,
            self_origins=origins,
        )
    except FetchFailed as exc:
        raise ApiError(400, "image_url_width_height_error") from exc


async def _validated(state: EmulatorState, data: bytes) -> bytes:
    if len(data) > state.config.max_image_bytes:
        raise ApiError(400, "image_url_width_height_error")
    try:
        await asyncio.to_thread(imaging.inspect_image, data, state.config.max_input_pixels)
    except imaging.ImageRejected as exc:
        raise ApiError(400, "image_url_width_height_error") from exc
    return data


# -- the handler ---------------------------------------------------------------------------------


async def create_upscale(request: Request, state: EmulatorState) -> Response:
    """``POST /v1/image/upscale/create`` (and the deprecated ``/v1/image/upscale``)."""
    account = authenticate(request, state)
    with state.request_open():
        return await _create_upscale(request, state, account)


async def _create_upscale(request: Request, state: EmulatorState, account: Account) -> Response:
    job = await parse_job(request)
    fault = state.draw_fault(job.key)
    if fault in PRE_CHARGE_FAULTS:
        state.record_fault(fault)
        return bad_gateway() if fault == "bad_gateway" else too_many_requests()
    source = await resolve_source(request, state, account, job)
    if isinstance(source, GeneratedOutput) and source.upscaled_name:
        return _already_upscaled(request, state, account, job, source)
    if account.balance <= 0:
        raise ApiError(400, "insufficient_credits")
    balance = state.charge(account, job.key)
    return await _run_charged(request, state, account, job, source, fault, balance)


def _already_upscaled(
    request: Request, state: EmulatorState, account: Account, job: UpscaleJob, output: GeneratedOutput
) -> Response:
    state.ledger.free_answers += 1
    state.ledger.delivered += 1
    assert output.upscaled_name is not None
    body = _success_body(request, state, account, job, output.id, output.image_name, output.upscaled_name)
    return JSONResponse(body)


async def _run_charged(
    request: Request,
    state: EmulatorState,
    account: Account,
    job: UpscaleJob,
    source: GeneratedOutput | bytes,
    fault: str | None,
    balance: int,
) -> Response:
    """The credit is taken (``balance`` is what it left): every path either refunds or answers."""
    if fault == "timeout":
        state.record_fault(fault)
        return _refunded(state, account, job, 500, "TIMEOUT")
    pool, limit = account.pool, account.run_limit
    if pool.must_wait(limit) and state.waiting(account) >= state.config.queue_limit:
        state.ledger.queue_rejected += 1
        return _refunded(state, account, job, 400, "queue_limit_reached")
    try:
        async with asyncio.timeout(state.config.server_timeout):
            name = await _hold(state, account, source, fault)
    except TimeoutError:
        return _refunded(state, account, job, 500, "TIMEOUT")
    except WorkerFailed:
        return _refunded(state, account, job, 500, UNKNOWN_ERROR)
    except asyncio.CancelledError:  # server shutting down: the job never finished
        state.refund(account, job.key)
        raise
    return await _deliver(request, state, account, job, source, name, fault, balance)


def _refunded(state: EmulatorState, account: Account, job: UpscaleJob, status: int, code: str) -> Response:
    state.refund(account, job.key)
    return error_response(status, code)


async def _hold(
    state: EmulatorState, account: Account, source: GeneratedOutput | bytes, fault: str | None
) -> str:
    """Wait for a run slot, then do the work while holding it."""
    await account.pool.acquire(account.run_limit)
    state.started_running()
    try:
        return await _work(state, source, fault)
    finally:
        state.stopped_running()
        account.pool.release(account.run_limit)


async def _work(state: EmulatorState, source: GeneratedOutput | bytes, fault: str | None) -> str:
    """The job in its run slot: ``latency`` seconds in all, the emulator's own image work included
    (a real worker's time is the latency a user measures; Pillow's here is an artefact)."""
    started = time.monotonic()
    delay = state.config.latency
    if fault == "slow":
        state.record_fault(fault)
        delay = max(delay, state.config.slow_seconds)
    name: str | None = None
    if fault == "worker_failure":
        state.record_fault(fault)
    elif isinstance(source, bytes) and imaging.WORKER_FAILS_MARKER in source:
        state.ledger.broken_inputs += 1  # an image the validation accepts and the worker cannot process
    else:
        name, path = state.new_output_file()
        try:
            await asyncio.to_thread(_upscale_source, state, source, path)
        except (OSError, SyntaxError, ValueError):  # Pillow could not process it: as the worker
            state.ledger.broken_inputs += 1
            name = None
    await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
    if name is None:
        raise WorkerFailed()
    return name


def _upscale_source(state: EmulatorState, source: GeneratedOutput | bytes, path: Path) -> None:
    if isinstance(source, GeneratedOutput):
        source_path = state.output_path(source.image_name)
        assert source_path is not None
        imaging.upscale_to_file(source_path, path)
    else:
        imaging.upscale_to_file(source, path)


async def _deliver(
    request: Request,
    state: EmulatorState,
    account: Account,
    job: UpscaleJob,
    source: GeneratedOutput | bytes,
    name: str,
    fault: str | None,
    balance: int,
) -> Response:
    state.ledger.upscales_completed += 1
    if isinstance(source, GeneratedOutput):
        source.upscaled_name = name
        body = _success_body(request, state, account, job, source.id, source.image_name, name, balance)
    else:
        body = _success_body(request, state, account, job, name.removesuffix(".jpeg"), name, name, balance)
    return await deliver_answer(request, state, body, fault)


def _success_body(
    request: Request,
    state: EmulatorState,
    account: Account,
    job: UpscaleJob,
    output_id: str,
    image_name: str,
    upscaled_name: str,
    balance: int | None = None,
) -> dict[str, Any]:
    """The 200 body; ``balance``: the balance right after this request's charge (None: now)."""
    return {
        "outputs": [
            {
                "id": output_id,
                "url": output_url(request, state, image_name),
                "upscaled_image_url": output_url(request, state, upscaled_name),
            }
        ],
        "remaining_credits": int(account.balance if balance is None else balance),
        "settings": {"model_id": job.model_id, "input": job.input},
    }
