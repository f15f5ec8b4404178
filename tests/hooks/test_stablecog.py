from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest

from airflow_provider_stablecog.exceptions import (
    InsufficientCreditsError,
    StablecogAuthError,
    StablecogConfigError,
    StablecogInputError,
)
from airflow_provider_stablecog.hooks.stablecog import StablecogHook
from tests.conftest import API_KEY, BASE_URL

CREDITS = {"total_remaining_credits": 1391, "credits": []}


def test_hook_identity():
    assert StablecogHook.conn_name_attr == "stablecog_conn_id"
    assert StablecogHook.default_conn_name == "stablecog_default"
    assert StablecogHook.conn_type == "stablecog"
    assert StablecogHook.hook_name == "Stablecog"


def test_settings_from_json_connection(stablecog_conn):
    stablecog_conn(
        host="http://127.0.0.1:8765",
        extra={"timeout": 400, "connect_timeout": 3, "plan_concurrency": 4, "rate_limit": 6, "max_retries": 2, "retry_backoff": 0.5},
    )
    settings = StablecogHook().settings
    assert settings.base_url == "http://127.0.0.1:8765"
    assert settings.api_key == API_KEY
    assert (settings.read_timeout, settings.connect_timeout) == (400, 3)
    assert settings.plan_concurrency == 4
    assert settings.rate_limit == 6
    assert settings.max_retries == 2
    assert API_KEY not in repr(settings)
    client = StablecogHook().client
    assert client.timeout == (3.0, 400.0)
    assert client.retry_policy.max_attempts == 3
    assert client.retry_policy.initial_backoff == 0.5
    assert client.pool_size >= 4


@pytest.mark.parametrize(
    ("uri", "base_url"),
    [
        (f"stablecog://:{API_KEY}@127.0.0.1:8765/?scheme=http&plan_concurrency=3", "http://127.0.0.1:8765"),
        (f"stablecog://:{API_KEY}@http%3A%2F%2Flocalhost%3A9000", "http://localhost:9000"),
        (f"stablecog://:{API_KEY}@api.stablecog.com", "https://api.stablecog.com"),
    ],
)
def test_settings_from_uri_connection(monkeypatch, uri, base_url):
    monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", uri)
    settings = StablecogHook().settings
    assert settings.base_url == base_url
    assert settings.api_key == API_KEY


def test_defaults_when_only_the_key_is_set(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", json.dumps({"conn_type": "stablecog", "password": API_KEY}))
    settings = StablecogHook().settings
    assert settings.base_url == "https://api.stablecog.com"
    assert settings.read_timeout > 240
    assert settings.plan_concurrency == 1


@pytest.mark.parametrize("host", ["http://api.stablecog.com", "http://10.0.0.5:8765", "http://example.org"])
def test_plain_http_refused_for_non_loopback(stablecog_conn, host):
    stablecog_conn(host=host)
    with pytest.raises(StablecogConfigError, match="https://"):
        StablecogHook().settings


@pytest.mark.parametrize("host", ["ftp://x", "https://"])
def test_bad_base_url(stablecog_conn, host):
    stablecog_conn(host=host)
    with pytest.raises(StablecogConfigError, match="base URL"):
        StablecogHook().settings


def test_missing_password(stablecog_conn):
    stablecog_conn(password=None)
    with pytest.raises(StablecogConfigError, match="password field"):
        StablecogHook().settings


def test_bad_extra(stablecog_conn):
    stablecog_conn(extra={"timeout": "soon"})
    with pytest.raises(StablecogConfigError, match="'timeout' must be a number"):
        StablecogHook().settings


def test_unknown_connection_id():
    with pytest.raises(Exception, match="no_such_conn"):
        StablecogHook("no_such_conn").settings


def test_test_connection_reports_credits(stablecog_conn, requests_mock):
    m = requests_mock.get(f"{BASE_URL}/v1/credits", json=CREDITS)
    assert StablecogHook().test_connection() == (True, "Connected: 1,391 credits remaining")
    assert m.last_request.headers["Authorization"] == f"Bearer {API_KEY}"


def test_test_connection_bad_key(stablecog_conn, requests_mock):
    requests_mock.get(f"{BASE_URL}/v1/credits", status_code=401, json={"error": "Unauthorized"})
    ok, message = StablecogHook().test_connection()
    assert ok is False
    assert "Unauthorized" in message and "password" in message
    assert API_KEY not in message


def test_delegates(stablecog_conn, requests_mock):
    requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create",
        json={"outputs": [{"id": "o", "url": "u", "upscaled_image_url": "v"}], "remaining_credits": 5},
    )
    requests_mock.get(f"{BASE_URL}/v1/image/upscale/models", json={"models": [{"id": "m", "name": "n", "is_default": True}]})
    requests_mock.get(f"{BASE_URL}/v1/image/upscale/defaults", json={"model_id": "m"})
    requests_mock.post(f"{BASE_URL}/v1/image/upload", json={"object": "s3://a/b.png"})
    requests_mock.get(f"{BASE_URL}/v1/health", json={"status": "ok"})
    requests_mock.get(f"{BASE_URL}/v1/image/generation/outputs", json={"outputs": [{"id": "g1"}]})
    hook = StablecogHook()
    assert hook.upscale("https://x/a.png").upscaled_image_url == "v"
    assert hook.list_upscale_models()[0].id == "m"
    assert hook.get_upscale_defaults() == "m"
    assert hook.upload_image(b"\x89PNG\r\n\x1a\n", filename="a.png") == "s3://a/b.png"
    assert hook.health() is True
    assert [o.id for o in hook.iter_generation_outputs()] == ["g1"]
    assert hook.get_conn() is hook.client


def test_errors_surface_through_the_hook(stablecog_conn, requests_mock):
    requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", status_code=400, json={"error": "insufficient_credits"})
    with pytest.raises(InsufficientCreditsError, match="no credits left"):
        StablecogHook().upscale("https://x/a.png")


def test_key_is_masked_and_never_logged(stablecog_conn, requests_mock, caplog, capsys):
    from airflow.sdk._shared.secrets_masker import redact

    caplog.set_level(logging.DEBUG)
    requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", status_code=400, json={"error": "invalid_image_url"})
    hook = StablecogHook()
    with pytest.raises(StablecogInputError) as info:
        hook.upscale("https://x/a.png")
    logged = caplog.text + "".join(capsys.readouterr())  # stdlib records and Airflow's structlog output
    assert "invalid_image_url" in logged or "invalid_image_url" in str(info.value)
    assert API_KEY not in logged
    assert API_KEY not in str(info.value)
    assert redact(f"key={API_KEY}") != f"key={API_KEY}"  # registered with the secrets masker


# -- async (triggers) --------------------------------------------------------------------------


def _serve_once(status: int, body: str):
    """A tiny loopback server answering /v1/credits (httpx is not covered by requests-mock)."""
    import http.server
    import threading

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen["auth"] = self.headers.get("Authorization")
            seen["path"] = self.path
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.parametrize(("status", "body", "expected"), [(200, json.dumps(CREDITS), 1391), (401, '{"error":"Unauthorized"}', StablecogAuthError)])
def test_aget_credits(stablecog_conn, status, body, expected):
    server, seen = _serve_once(status, body)
    try:
        stablecog_conn(host=f"http://127.0.0.1:{server.server_port}")
        hook = StablecogHook()
        if isinstance(expected, int):
            assert asyncio.run(hook.aget_credits()).total_remaining_credits == expected
        else:
            with pytest.raises(expected):
                asyncio.run(hook.aget_credits())
        assert seen == {"auth": f"Bearer {API_KEY}", "path": "/v1/credits"}
    finally:
        server.shutdown()


# -- import cost -------------------------------------------------------------------------------


def test_import_adds_no_heavy_modules():
    """DAG files import the hook at every parse: it must not pull requests, PIL or httpx itself."""
    code = (
        "import sys, airflow.sdk\n"
        "before = set(sys.modules)\n"
        "import airflow_provider_stablecog.hooks.stablecog\n"
        "new = set(sys.modules) - before\n"
        "heavy = sorted(m for m in new if m.split('.')[0] in ('requests', 'PIL', 'httpx', 'urllib3', 'tenacity'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
