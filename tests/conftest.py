"""Shared fixtures. Connections come from AIRFLOW_CONN_* via monkeypatch, never from a database."""

from __future__ import annotations

import json

import pytest

API_KEY = "sc-" + "0123456789abcdef" * 4
BASE_URL = "https://api.stablecog.test"


@pytest.fixture
def api_key() -> str:
    return API_KEY


@pytest.fixture
def stablecog_conn(monkeypatch):
    """Set ``stablecog_default`` from a JSON AIRFLOW_CONN_ variable; returns a setter for more."""

    def set_conn(conn_id: str = "stablecog_default", **fields) -> dict:
        conn = {"conn_type": "stablecog", "host": BASE_URL, "password": API_KEY, **fields}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn

    set_conn()
    return set_conn


@pytest.fixture
def client():
    from airflow_provider_stablecog.client import RetryPolicy, StablecogClient

    retry = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05, jitter=0.01)
    with StablecogClient(API_KEY, BASE_URL, rate_limit=None, retry=retry) as c:
        yield c


def fresh_emulator(emulator, monkeypatch, *, plan_concurrency: int):
    """Reset a shared (module-scoped) emulator and point ``stablecog_default`` at it."""
    emulator.reset()
    emulator.configure(latency=0.05, faults={}, rate_limit=0)
    monkeypatch.setenv(
        "AIRFLOW_CONN_STABLECOG_DEFAULT",
        emulator.connection_json(plan_concurrency=plan_concurrency, rate_limit=0),
    )
    return emulator
