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
    StablecogConnectionError,
    StablecogInputError,
    StablecogServerError,
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
        extra={
            "timeout": 400,
            "connect_timeout": 3,
            "plan_concurrency": 4,
            "rate_limit": 6,
            "max_retries": 2,
            "retry_backoff": 0.5,
        },
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
        # the documented form: the whole base URL in host (URL-encoded in a URI)
        pytest.param(
            f"stablecog://:{API_KEY}@http%3A%2F%2F127.0.0.1%3A8765?plan_concurrency=4",
            "http://127.0.0.1:8765",
            id="encoded-url",
        ),
        pytest.param(
            f"stablecog://:{API_KEY}@http%3A%2F%2Flocalhost%3A9000",
            "http://localhost:9000",
            id="encoded-localhost",
        ),
        pytest.param(
            f"stablecog://:{API_KEY}@https%3A%2F%2Fapi.stablecog.com",
            "https://api.stablecog.com",
            id="encoded-https",
        ),
        pytest.param(
            f"stablecog://:{API_KEY}@?plan_concurrency=2", "https://api.stablecog.com", id="no-host"
        ),
        # older forms, still read
        pytest.param(
            f"stablecog://:{API_KEY}@127.0.0.1:8765/?scheme=http&plan_concurrency=3",
            "http://127.0.0.1:8765",
            id="old-scheme-extra",
        ),
        pytest.param(
            f"stablecog://http://:{API_KEY}@127.0.0.1:8765",
            "http://127.0.0.1:8765",
            id="old-protocol-and-port",
        ),
        pytest.param(
            f"stablecog://:{API_KEY}@api.stablecog.com", "https://api.stablecog.com", id="old-bare-host"
        ),
    ],
)
def test_settings_from_uri_connection(monkeypatch, uri, base_url):
    monkeypatch.setenv("AIRFLOW_CONN_STABLECOG_DEFAULT", uri)
    settings = StablecogHook().settings
    assert settings.base_url == base_url
    assert settings.api_key == API_KEY


@pytest.mark.parametrize(
    "conn",
    [
        pytest.param({"host": "http://127.0.0.1:8765"}, id="json"),
        pytest.param({"uri": f"stablecog://:{API_KEY}@http%3A%2F%2F127.0.0.1%3A8765"}, id="uri"),
    ],
)
def test_documented_forms_show_the_whole_base_url_in_host(conn):
    """What the connection form shows as "Base URL" is ``host``: the whole URL, port included."""
    from airflow.sdk import Connection

    if "uri" in conn:
        parsed = Connection.from_uri(conn["uri"], conn_id="c")
    else:
        parsed = Connection(conn_id="c", conn_type="stablecog", password=API_KEY, **conn)
    assert (parsed.host, parsed.port) == ("http://127.0.0.1:8765", None)
    assert parsed.extra_dejson == {}


def test_the_ui_test_round_trip_keeps_the_base_url(monkeypatch):
    """The UI's Test exports the form as ``conn.get_uri()`` under a random id; the hook reads it back."""
    from airflow.models.connection import Connection

    form = Connection(
        conn_id="x",
        conn_type="stablecog",
        host="http://127.0.0.1:8765",
        password=API_KEY,
        extra='{"plan_concurrency": 4}',
    )
    monkeypatch.setenv("AIRFLOW_CONN_TMPABC123", form.get_uri())
    settings = StablecogHook("tmpabc123").settings
    assert (settings.base_url, settings.plan_concurrency, settings.api_key) == (
        "http://127.0.0.1:8765",
        4,
        API_KEY,
    )


@pytest.mark.parametrize("empty", [None, "", "  "])
def test_empty_extras_mean_the_defaults(stablecog_conn, empty):
    """A form saved with empty fields stores null or "": nothing is frozen, the defaults apply."""
    from airflow_provider_stablecog.client import (
        DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_RATE_LIMIT,
        DEFAULT_READ_TIMEOUT,
    )

    names = ("timeout", "connect_timeout", "plan_concurrency", "rate_limit", "max_retries", "retry_backoff")
    stablecog_conn(extra=dict.fromkeys(names, empty))

    settings = StablecogHook().settings
    assert (settings.read_timeout, settings.connect_timeout) == (
        DEFAULT_READ_TIMEOUT,
        DEFAULT_CONNECT_TIMEOUT,
    )
    assert (settings.plan_concurrency, settings.rate_limit, settings.max_retries, settings.retry_backoff) == (
        1,
        DEFAULT_RATE_LIMIT,
        5,
        1,
    )


def test_pool_size_is_a_constructor_argument(stablecog_conn):
    stablecog_conn(extra={"plan_concurrency": 3})
    assert StablecogHook().pool_size == 5  # plan + 2
    hook = StablecogHook(pool_size=12)
    assert hook.pool_size == 12
    assert hook.client.pool_size == 12


def test_pool_size_can_be_set_until_the_client_is_used(stablecog_conn):
    stablecog_conn(extra={"plan_concurrency": 4})
    hook = StablecogHook()
    hook.pool_size = hook.plan_concurrency + 4
    assert hook.client.pool_size == 8 == hook.pool_size
    with pytest.raises(RuntimeError, match="before the hook's client is first used"):
        hook.pool_size = 20
    with pytest.raises(ValueError, match="pool_size"):
        StablecogHook().pool_size = 0


@pytest.mark.parametrize(
    "kwargs", [{"pool_size": 0}, {"pool_size": 2.5}, {"pool_size": True}, {"max_retries": -1}]
)
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        StablecogHook(**kwargs)


def test_defaults_when_only_the_key_is_set(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_STABLECOG_DEFAULT", json.dumps({"conn_type": "stablecog", "password": API_KEY})
    )
    settings = StablecogHook().settings
    assert settings.base_url == "https://api.stablecog.com"
    assert settings.read_timeout > 240
    assert settings.plan_concurrency == 1


@pytest.mark.parametrize("host", ["http://api.stablecog.com", "http://10.0.0.5:8765", "http://example.org"])
def test_plain_http_refused_for_non_loopback(stablecog_conn, host):
    stablecog_conn(host=host)
    with pytest.raises(StablecogConfigError, match="https://"):
        _ = StablecogHook().settings


@pytest.mark.parametrize("host", ["ftp://x", "https://"])
def test_bad_base_url(stablecog_conn, host):
    stablecog_conn(host=host)
    with pytest.raises(StablecogConfigError, match="base URL"):
        _ = StablecogHook().settings


def test_missing_password(stablecog_conn):
    stablecog_conn(password=None)
    with pytest.raises(StablecogConfigError, match="'API key' field") as info:
        _ = StablecogHook().settings
    assert "Connection 'stablecog_default' has no API key" in str(info.value)  # tasks name it


def test_credentials_in_the_base_url_are_refused(stablecog_conn):
    stablecog_conn(host="https://user:hunter2@api.stablecog.com")
    with pytest.raises(StablecogConfigError, match="user:password@") as info:
        _ = StablecogHook().settings
    assert "hunter2" not in str(info.value)


def test_bad_extra(stablecog_conn):
    stablecog_conn(extra={"timeout": "soon"})
    with pytest.raises(StablecogConfigError, match="'timeout' must be a number"):
        _ = StablecogHook().settings


def test_unknown_connection_id():
    with pytest.raises(Exception, match="no_such_conn"):
        _ = StablecogHook("no_such_conn").settings


def test_test_connection_reports_credits(stablecog_conn, requests_mock):
    m = requests_mock.get(f"{BASE_URL}/v1/credits", json=CREDITS)
    assert StablecogHook().test_connection() == (True, f"Connected to {BASE_URL}: 1,391 credits remaining")
    assert m.last_request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert m.call_count == 1


def test_test_connection_bad_key(stablecog_conn, requests_mock):
    requests_mock.get(f"{BASE_URL}/v1/credits", status_code=401, json={"error": "Unauthorized"})
    ok, message = StablecogHook().test_connection()
    assert ok is False
    assert "rejected the API key (401 Unauthorized)" in message
    assert "'API key' field" in message and "password" not in message
    assert API_KEY not in message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param(
            {"password": ""},
            "The connection has no API key: enter your sc-... key in the 'API key' field",
            id="no-key",
        ),
        pytest.param(
            {"extra": {"timeout": "soon"}}, "The connection: extra 'timeout' must be a number", id="bad-extra"
        ),
        pytest.param({"host": "ftp://x"}, "The connection: the Base URL (host) must be", id="bad-url"),
        pytest.param(
            {"host": "http://example.org"}, "The connection: plain http:// is only allowed", id="plain-http"
        ),
    ],
)
def test_test_connection_does_not_quote_the_transient_id(stablecog_conn, fields, expected):
    """The UI's Test button tests a copy of the form under a random id: never show that id."""
    stablecog_conn("tmp7f3kq9zx", **fields)
    ok, message = StablecogHook("tmp7f3kq9zx").test_connection()
    assert ok is False
    assert message.startswith(expected), message
    assert "tmp7f3kq9zx" not in message


def test_delegates(stablecog_conn, requests_mock):
    requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create",
        json={"outputs": [{"id": "o", "url": "u", "upscaled_image_url": "v"}], "remaining_credits": 5},
    )
    requests_mock.get(
        f"{BASE_URL}/v1/image/upscale/models", json={"models": [{"id": "m", "name": "n", "is_default": True}]}
    )
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
    requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create", status_code=400, json={"error": "insufficient_credits"}
    )
    with pytest.raises(InsufficientCreditsError, match="no credits left"):
        StablecogHook().upscale("https://x/a.png")


def test_key_is_masked_and_never_logged(stablecog_conn, requests_mock, caplog, capsys):
    from airflow.sdk._shared.secrets_masker import redact

    caplog.set_level(logging.DEBUG)
    requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create", status_code=400, json={"error": "invalid_image_url"}
    )
    hook = StablecogHook()
    with pytest.raises(StablecogInputError) as info:
        hook.upscale("https://x/a.png")
    logged = caplog.text + "".join(capsys.readouterr())  # stdlib records and Airflow's structlog output
    assert "invalid_image_url" in logged or "invalid_image_url" in str(info.value)
    assert API_KEY not in logged
    assert API_KEY not in str(info.value)
    assert redact(f"key={API_KEY}") != f"key={API_KEY}"  # registered with the secrets masker


# -- async (triggers) --------------------------------------------------------------------------


def _serve_once(status: int, body: str, delay: float = 0.0):
    """A tiny loopback server answering /v1/credits."""
    import http.server
    import threading
    import time

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen["auth"] = self.headers.get("Authorization")
            seen["path"] = self.path
            time.sleep(delay)
            encoded = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(encoded)))
            self.end_headers()
            self.wfile.write(encoded)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(200, json.dumps(CREDITS), 1391, id="ok"),
        pytest.param(401, '{"error":"Unauthorized"}', StablecogAuthError, id="401"),
        pytest.param(200, "not json", StablecogConnectionError, id="non-json-200"),
        pytest.param(503, "<html>down</html>", StablecogServerError, id="503"),
    ],
)
def test_aget_credits_matches_get_credits(stablecog_conn, status, body, expected):
    """The async path is the sync client in a thread: same answers, same error classes."""
    server, seen = _serve_once(status, body)
    try:
        stablecog_conn(host=f"http://127.0.0.1:{server.server_port}", extra={"max_retries": 0})
        for call in (lambda hook: asyncio.run(hook.aget_credits()), lambda hook: hook.get_credits()):
            hook = StablecogHook()
            if isinstance(expected, int):
                assert call(hook).total_remaining_credits == expected
            else:
                with pytest.raises(expected) as info:
                    call(hook)
                assert type(info.value) is expected
            assert seen == {"auth": f"Bearer {API_KEY}", "path": "/v1/credits"}
    finally:
        server.shutdown()


def test_aget_credits_does_not_block_the_event_loop(stablecog_conn):
    server, _ = _serve_once(200, json.dumps(CREDITS), delay=0.5)
    try:
        stablecog_conn(host=f"http://127.0.0.1:{server.server_port}")

        async def scenario():
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            hook = StablecogHook()
            credits = await hook.aget_credits()
            task.cancel()
            return credits, ticks, hook

        credits, ticks, hook = asyncio.run(scenario())
        assert credits.total_remaining_credits == 1391
        assert ticks >= 20  # the loop ran while the request waited 0.5 s
        assert hook.client is asyncio.run(hook.aget_client())  # one client per hook
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
