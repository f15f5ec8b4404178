"""``create_app(config)``: the FastAPI application of the Stablecog emulator."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from starlette.datastructures import UploadFile
from starlette.responses import FileResponse, JSONResponse, Response

from airflow_provider_stablecog.emulator import imaging
from airflow_provider_stablecog.emulator.admin import router as admin_router
from airflow_provider_stablecog.emulator.config import EmulatorConfig
from airflow_provider_stablecog.emulator.generate import create_generation, defaults_body, models_body
from airflow_provider_stablecog.emulator.middleware import V1Middleware
from airflow_provider_stablecog.emulator.responses import ApiError, api_error_handler
from airflow_provider_stablecog.emulator.samples import router as samples_router
from airflow_provider_stablecog.emulator.state import (
    AURA_SR_MODEL_ID,
    UPSCALE_MODELS,
    EmulatorState,
    GeneratedOutput,
    iso,
    stable_uuid,
)
from airflow_provider_stablecog.emulator.upscale import UUID_RE, authenticate, create_upscale, output_url

CREDIT_EXPIRY = "2100-01-01T05:00:00Z"
MAX_PER_PAGE = 300


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build an emulator app; its state is ``app.state.emulator``."""
    state = EmulatorState(config or EmulatorConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="Stablecog emulator", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.emulator = state
    app.add_middleware(V1Middleware, state=state)
    app.add_exception_handler(ApiError, api_error_handler)
    _add_v1_routes(app)
    _add_output_routes(app)
    app.include_router(samples_router)
    app.include_router(admin_router)
    return app


def get_state(request: Request) -> EmulatorState:
    return request.app.state.emulator


# -- /v1 ------------------------------------------------------------------------------------------


def _add_v1_routes(app: FastAPI) -> None:
    app.add_api_route("/v1/health", health, methods=["GET"])
    app.add_api_route("/v1/image/upscale/create", upscale_create, methods=["POST"])
    app.add_api_route("/v1/image/upscale", upscale_create, methods=["POST"])
    app.add_api_route("/v1/image/upscale/models", upscale_models, methods=["GET"])
    app.add_api_route("/v1/image/upscale/defaults", upscale_defaults, methods=["GET"])
    app.add_api_route("/v1/image/upload", upload_image, methods=["POST"])
    app.add_api_route("/v1/credits", credits, methods=["GET"])
    app.add_api_route("/v1/image/generation/outputs", generation_outputs, methods=["GET"])
    app.add_api_route("/v1/image/outputs", generation_outputs, methods=["GET"])
    for path in ("/v1/image/generation/create", "/v1/image/generate"):
        app.add_api_route(path, generation_create, methods=["POST"])
    for path in ("/v1/image/generation/models", "/v1/image/models/generate"):
        app.add_api_route(path, generation_models, methods=["GET"])
    for path in ("/v1/image/generation/defaults", "/v1/image/defaults/generate"):
        app.add_api_route(path, generation_defaults, methods=["GET"])


async def health() -> dict[str, str]:
    return {"status": "ok"}


async def upscale_create(request: Request) -> Response:
    return await create_upscale(request, get_state(request))


async def generation_create(request: Request) -> Response:
    return await create_generation(request, get_state(request))


async def generation_models() -> dict[str, Any]:
    return models_body()


async def generation_defaults() -> dict[str, Any]:
    return defaults_body()


async def upscale_models() -> dict[str, Any]:
    return {"models": [dict(model) for model in UPSCALE_MODELS]}


async def upscale_defaults() -> dict[str, str]:
    return {"model_id": AURA_SR_MODEL_ID}


async def upload_image(request: Request) -> dict[str, str]:
    state = get_state(request)
    account = authenticate(request, state)
    data = await _uploaded_file(request)
    if len(data) > state.config.max_image_bytes:
        raise ApiError(400, "image_too_large")
    try:
        info = imaging.inspect_image(data, decode=False)
    except imaging.ImageRejected as exc:
        raise ApiError(400, "invalid_file") from exc
    return {"object": state.add_upload(account, data, info.format).object_key}


async def _uploaded_file(request: Request) -> bytes:
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(400, "invalid_file")
    try:
        form = await request.form()
    except Exception as exc:  # python-multipart raises several kinds
        raise ApiError(400, "invalid_file") from exc
    part = form.get("file")
    if not isinstance(part, UploadFile):
        raise ApiError(400, "invalid_file")
    return await part.read()


async def credits(request: Request) -> dict[str, Any]:
    state = get_state(request)
    account = authenticate(request, state)
    balance = int(account.balance)
    credit_type = {
        "id": stable_uuid("credit-type", "emulator"),
        "name": "Emulator Gift",
        "amount": max(account.initial_credits, balance),
        "description": "Credits granted by the Stablecog emulator.",
    }
    credit = {
        "id": stable_uuid("credit", account.account_id),
        "remaining_amount": balance,
        "expires_at": CREDIT_EXPIRY,
        "type": credit_type,
    }
    return {"total_remaining_credits": balance, "credits": [credit]}


async def generation_outputs(request: Request) -> dict[str, Any]:
    state = get_state(request)
    account = authenticate(request, state)
    per_page, cursor, upscaled, order, model_ids = _page_params(request)
    # As on the server: ``upscaled`` is validated and counted in ``total`` but not applied to the
    # page; pages are sorted by the generation's created_at, while the cursor filters on the
    # output's own created_at (so overlapping jobs can be skipped across a page boundary).
    outputs = state.outputs_of(account)
    if order == "asc":
        outputs.reverse()
    if model_ids:
        outputs = [o for o in outputs if o.model_id in model_ids]
    total = sum(1 for o in outputs if _upscale_filter(o, upscaled))
    if cursor is not None:
        if order == "asc":
            outputs = [o for o in outputs if iso(o.created_at) > cursor]
        else:
            outputs = [o for o in outputs if iso(o.created_at) < cursor]
    page = outputs[:per_page]
    body: dict[str, Any] = {"outputs": [_output_json(request, state, o) for o in page]}
    if cursor is None:
        body["total"] = total
    if len(outputs) > per_page:
        body["next"] = iso(page[-1].created_at)
    return body


def _page_params(request: Request) -> tuple[int, str | None, str, str, set[str]]:
    query = request.query_params
    per_page_text = query.get("per_page", "50")
    if not per_page_text.isdigit():
        raise ApiError(400, "per_page must be an integer")
    per_page = int(per_page_text)
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ApiError(400, f"per_page must be between 1 and {MAX_PER_PAGE}")
    upscaled = query.get("upscaled", "any") or "any"
    if upscaled not in ("any", "only", "not"):
        raise ApiError(400, "upscaled must be one of any, only, not")
    order = query.get("order", "desc") or "desc"
    if order not in ("asc", "desc"):
        raise ApiError(400, "order must be one of asc, desc")
    model_ids = {m.strip().lower() for m in (query.get("model_ids") or "").split(",") if m.strip()}
    if any(not UUID_RE.match(m) for m in model_ids):
        raise ApiError(400, "model_ids must be comma-separated UUIDs")
    # validated like the server, and (like the server) not applied to the page
    for name in ("start_dt", "end_dt"):
        if query.get(name) and _rfc3339(query[name]) is None:
            raise ApiError(400, f"{name} must be an RFC 3339 time")
    for name in ("widths", "heights"):
        if query.get(name) and not all(p.strip().isdigit() for p in query[name].split(",")):
            raise ApiError(400, f"{name} must be comma-separated integers")
    return per_page, query.get("cursor") or None, upscaled, order, model_ids


def _rfc3339(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _upscale_filter(output: GeneratedOutput, upscaled: str) -> bool:
    if upscaled == "only":
        return output.upscaled_name is not None
    if upscaled == "not":
        return output.upscaled_name is None
    return True


def _output_json(request: Request, state: EmulatorState, output: GeneratedOutput) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": output.id,
        "image_url": output_url(request, state, output.image_name),
        "gallery_status": "not_submitted",
        "is_favorited": False,
        "was_auto_submitted": False,
        "created_at": iso(output.created_at),
    }
    if output.upscaled_name:
        body["upscaled_image_url"] = output_url(request, state, output.upscaled_name)
    body["generation"] = _generation_json(output)
    return body


def _generation_json(output: GeneratedOutput) -> dict[str, Any]:
    created = output.sort_time
    body: dict[str, Any] = {
        "id": output.generation_id,
        "width": output.width,
        "height": output.height,
        "inference_steps": output.inference_steps,
        "guidance_scale": output.guidance_scale,
        "num_outputs": output.num_outputs,
        "model_id": output.model_id,
        "scheduler_id": output.scheduler_id,
        "prompt": {"id": stable_uuid("prompt", output.prompt), "text": output.prompt},
        "seed": output.seed,
        "created_at": iso(created),
        "started_at": iso(created + timedelta(seconds=1))
        if output.generation_created_at is None
        else iso(created),
        "completed_at": iso(created + timedelta(seconds=5))
        if output.generation_created_at is None
        else iso(output.created_at),
    }
    if output.negative_prompt:
        body["negative_prompt"] = {
            "id": stable_uuid("prompt", output.negative_prompt),
            "text": output.negative_prompt,
        }
    if output.prompt_strength is not None:
        body["prompt_strength"] = output.prompt_strength
    return body


# -- served output images ---------------------------------------------------------------------------


def _add_output_routes(app: FastAPI) -> None:
    app.add_api_route("/outputs/{name}", serve_output, methods=["GET", "HEAD"])


async def serve_output(name: str, request: Request) -> Response:
    path = get_state(request).output_path(name)
    if path is None:
        return JSONResponse({"error": "not_found"}, status_code=404)
    return FileResponse(path, media_type="image/jpeg")
