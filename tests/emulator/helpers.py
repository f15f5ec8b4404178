"""Helpers shared by the emulator tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_provider_stablecog.emulator.config import EmulatorConfig
from airflow_provider_stablecog.emulator.state import EmulatorState

KEY = "sc-" + "a" * 64
OTHER_KEY = "sc-" + "b" * 64
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER_AUTH = {"Authorization": f"Bearer {OTHER_KEY}"}
T = TypeVar("T")


def make_config(**overrides: Any) -> EmulatorConfig:
    """Test defaults: fixed key, short latency, no rate limit."""
    options: dict[str, Any] = {"api_key": KEY, "latency": 0.05, "rate_limit": 0, "credits": 100}
    options.update(overrides)
    return EmulatorConfig(**options)


def state_of(client_or_app: TestClient | FastAPI) -> EmulatorState:
    app = client_or_app.app if isinstance(client_or_app, TestClient) else client_or_app
    return app.state.emulator  # type: ignore[union-attr]


def add_other_account(client: TestClient, **extra: Any) -> dict[str, Any]:
    response = client.post("/_emulator/accounts", json={"api_key": OTHER_KEY, "credits": 10, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def run_async(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """Run ``scenario`` against ``app`` on one event loop (for concurrency tests)."""

    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as http:
            return await scenario(http)

    return asyncio.run(main())
