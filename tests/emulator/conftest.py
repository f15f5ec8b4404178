"""Fixtures for the emulator tests: in-process apps and a real emulator process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from airflow_provider_stablecog.emulator.app import create_app
from airflow_provider_stablecog.emulator.pytest_plugin import (  # noqa: F401  (fixtures and marker)
    pytest_configure,
    stablecog_emulator,
    stablecog_emulator_module,
)
from tests.emulator.helpers import make_config


@pytest.fixture
def make_app() -> Iterator[Callable[..., FastAPI]]:
    apps: list[FastAPI] = []

    def build(**overrides: Any) -> FastAPI:
        app = create_app(make_config(**overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.state.emulator.close()


@pytest.fixture
def make_client(make_app: Callable[..., FastAPI]) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        client = TestClient(make_app(**overrides))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def app_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
