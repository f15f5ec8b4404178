"""Pure ASGI middleware for /v1/*: request counting and the per-IP rate limit."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_stablecog.emulator.responses import rate_headers, too_many_requests
from airflow_provider_stablecog.emulator.state import EmulatorState


def route_class(method: str, path: str) -> str | None:
    """The server's rate-limit class: ``upload``, ``create`` (other POSTs), ``read``; None: unlimited."""
    if path.rstrip("/") == "/v1/image/upload":
        return "upload"
    if path.rstrip("/") == "/v1/health":
        return None
    return "create" if method == "POST" else "read"


class V1Middleware:
    """Count /v1 requests by route and apply the sliding one-second window per client IP.

    As on the server: creates and reads of one IP share one counter (``/v1/image/*``,
    ``/v1/credits``), a create is refused once it holds ``rate_limit`` requests, a read once it
    holds ``read_rate_limit``; uploads have their own window (``upload_rate_limit``); health is free.
    """

    def __init__(self, app: ASGIApp, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        self.state.ledger.requests_by_route[f"{method} {scope['path']}"] += 1
        kind = route_class(method, scope["path"])
        limit = self.state.config.limit_for(kind) if kind else 0
        if kind is None or limit <= 0:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        window = f"upload:{client}" if kind == "upload" else client
        decision = self.state.rate_limiter.check(window, limit)
        if not decision.allowed:
            self.state.ledger.rate_limited += 1
            self.state.ledger.rate_limited_by_class[kind] += 1
            await too_many_requests(decision)(scope, receive, send)
            return
        extra = rate_headers(decision)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
