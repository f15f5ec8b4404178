"""Pure ASGI middleware for /v1/*: request counting and the per-IP rate limit."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from airflow_provider_stablecog.emulator.responses import rate_headers, too_many_requests
from airflow_provider_stablecog.emulator.state import EmulatorState


class V1Middleware:
    """Count /v1 requests by route and apply the sliding one-second window per client IP.

    POST routes (create, upload) get ``rate_limit`` requests per second, reads twice that;
    all /v1 requests of one IP share one window.
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
        rate_limit = self.state.config.rate_limit
        if rate_limit <= 0:
            await self.app(scope, receive, send)
            return
        limit = rate_limit if method == "POST" else 2 * rate_limit
        client = (scope.get("client") or ("unknown", 0))[0]
        decision = self.state.rate_limiter.check(client, limit)
        if not decision.allowed:
            self.state.ledger.rate_limited += 1
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
