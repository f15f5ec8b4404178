"""Response bodies shared by the routes: errors, 429, 502 and the dropped connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from airflow_provider_stablecog.emulator.faults import BAD_GATEWAY_HTML
from airflow_provider_stablecog.emulator.state import RateDecision

UNKNOWN_ERROR = "An unknown error has occured"  # sic, as the server spells it


class ApiError(Exception):
    """An error answer ``{"error": code}`` with ``status``."""

    def __init__(self, status: int, code: str, **extra: Any) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.extra = extra

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, **self.extra)


def error_response(status: int, code: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, **extra}, status_code=status)


def too_many_requests(decision: RateDecision | None = None) -> PlainTextResponse:
    """The rate limiter's answer: plain text, not JSON."""
    headers = {"Retry-After": "1"}
    if decision is not None:
        headers.update(rate_headers(decision))
    return PlainTextResponse("Too Many Requests", status_code=429, headers=headers)


def rate_headers(decision: RateDecision) -> dict[str, str]:
    limit = decision.limit
    limit_text = str(int(limit)) if float(limit).is_integer() else str(limit)
    return {
        "X-RateLimit-Limit": limit_text,
        "X-RateLimit-Remaining": str(decision.remaining),
        "X-RateLimit-Reset": str(decision.reset),
    }


def bad_gateway() -> HTMLResponse:
    return HTMLResponse(BAD_GATEWAY_HTML, status_code=502)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


class DroppedResponse(Response):
    """Announce a full JSON body, send half of it, then abandon the connection."""

    media_type = "application/json"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        # Returning without completing makes the server close the connection mid-body.


class ResetResponse(Response):
    """Reset the connection (TCP RST) before any byte of the answer, as a crashed proxy would.

    Needs the transport, which :class:`TransportExposingApp` puts in the scope under a real
    server; without it (in-process test clients) it falls back to :class:`DroppedResponse`.
    """

    media_type = "application/json"

    def __init__(self, fallback: bytes) -> None:
        super().__init__(fallback)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = scope.get("extensions", {}).get(TRANSPORT_EXTENSION, {}).get("transport")
        if transport is None:
            await DroppedResponse(self.body)(scope, receive, send)
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        await asyncio.sleep(0.01)  # let the server see the connection lost, so it sends nothing


TRANSPORT_EXTENSION = "stablecog_emulator.transport"


class TransportExposingApp:
    """Outermost ASGI wrapper (uvicorn only): puts the connection's transport into the scope."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:  # app.state etc. stay reachable
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        transport = getattr(getattr(send, "__self__", None), "transport", None)
        if scope["type"] == "http" and transport is not None:
            scope.setdefault("extensions", {})[TRANSPORT_EXTENSION] = {"transport": transport}
        await self.app(scope, receive, send)


async def deliver_answer(request: Request, state: Any, body: dict[str, Any], fault: str | None) -> Response:
    """Send a charged job's answer the way the server would — or lose it after the charge.

    Shared by upscale and generation: the answer may be delayed (out of charge order), dropped or
    cut by a reset (``drop_after_charge``, ``reset_after_charge``); the ledger counts what the
    client got.
    """
    if jitter := state.answer_jitter():
        await asyncio.sleep(jitter)  # out of charge order: an older, higher balance can arrive later
    if fault in ("drop_after_charge", "reset_after_charge"):
        state.record_fault(fault)
        state.ledger.responses_lost += 1
        if fault == "reset_after_charge":
            return ResetResponse(fallback=json.dumps(body).encode())
        return DroppedResponse(json.dumps(body).encode())
    if await request.is_disconnected():
        state.ledger.responses_lost += 1
        state.ledger.abandoned_by_client += 1
    else:
        state.ledger.delivered += 1
    return JSONResponse(body)
