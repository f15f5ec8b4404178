"""``/samples/...``: deterministic test images, and deliberately bad ones."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from fastapi import APIRouter
from starlette.responses import JSONResponse, Response, StreamingResponse

from airflow_provider_stablecog.emulator import imaging

router = APIRouter()

BAD_SAMPLES = (
    "not-an-image.png",
    "wrong-type.png",
    "no-length.png",
    "truncated.jpg",
    "too-big.png",
    "missing.png",
    "worker-fails.png",
)


@router.api_route("/samples/bad/{name}", methods=["GET", "HEAD"])
async def bad_sample(name: str) -> Response:
    if name == "not-an-image.png":
        return Response(imaging.NOT_AN_IMAGE, media_type="image/png")
    if name == "wrong-type.png":
        return Response(imaging.sample_bytes(64, 64, "png", 0), media_type="text/plain")
    if name == "no-length.png":
        return StreamingResponse(_chunks(imaging.sample_bytes(64, 64, "png", 0)), media_type="image/png")
    if name == "truncated.jpg":
        return Response(imaging.truncated_jpeg(), media_type="image/jpeg")
    if name == "too-big.png":
        return Response(imaging.too_big_png(), media_type="image/png")
    if name == "worker-fails.png":  # valid, but the emulated worker fails on it every time
        return Response(imaging.worker_fails_png(), media_type="image/png")
    return JSONResponse({"error": "not_found"}, status_code=404)


def _chunks(data: bytes, size: int = 4096) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@router.api_route("/samples/{name}", methods=["GET", "HEAD"])
async def sample(name: str, seed: int = 0) -> Response:
    try:
        width, height, fmt = imaging.parse_sample_name(name)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    data = await asyncio.to_thread(imaging.sample_bytes, width, height, fmt, seed)
    return Response(data, media_type=imaging.MEDIA_TYPES[fmt])
