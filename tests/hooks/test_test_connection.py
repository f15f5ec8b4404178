"""StablecogHook.test_connection (the UI's Test button, `airflow connections test`): fast, no
retries, and it says what is wrong. Every server here is on loopback; DNS is simulated."""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from airflow_provider_stablecog.hooks import stablecog as hook_module
from airflow_provider_stablecog.hooks.stablecog import StablecogHook
from tests.conftest import API_KEY

# generous: the check itself answers in well under a second on loopback (the README quotes the figure)
UNREACHABLE_BOUND = 15.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Answering:
    """A loopback HTTP server giving every GET the same answer, counting requests."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.port = self.httpd.server_port

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def answering():
    servers: list[Answering] = []

    def make(status: int, body: bytes, content_type: str = "application/json") -> Answering:
        servers.append(Answering(status, body, content_type))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def run_test(stablecog_conn, host: str, **fields) -> tuple[bool, str, float]:
    # the connection's own retry settings are generous: test_connection must not use them
    extra = {"max_retries": 5, "retry_backoff": 1, **fields.pop("extra", {})}
    stablecog_conn(host=host, extra=extra, **fields)
    started = time.monotonic()
    ok, message = StablecogHook().test_connection()
    elapsed = time.monotonic() - started
    assert API_KEY not in message
    return ok, message, elapsed


def test_unreachable_loopback_port_answers_false_fast(stablecog_conn):
    port = free_port()  # nothing listens there any more
    ok, message, elapsed = run_test(stablecog_conn, f"http://127.0.0.1:{port}")
    print(f"test_connection on an unreachable loopback port: {elapsed:.2f} s")
    assert ok is False
    assert elapsed < UNREACHABLE_BOUND
    assert f"Could not talk to http://127.0.0.1:{port}" in message
    assert "connection was refused" in message


def test_dns_failure_is_named(stablecog_conn, monkeypatch):
    real = socket.getaddrinfo

    def fake_getaddrinfo(host, *args, **kwargs):
        if host == "api.nowhere.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    ok, message, _ = run_test(stablecog_conn, "https://api.nowhere.test")
    assert ok is False
    assert "could not be resolved (DNS)" in message


def test_tls_failure_is_named(stablecog_conn, answering):
    server = answering(200, b'{"total_remaining_credits": 1}')  # plain http, asked for https
    ok, message, _ = run_test(stablecog_conn, f"https://127.0.0.1:{server.port}")
    assert ok is False
    assert "TLS handshake failed" in message


def test_read_timeout_is_named_and_bounded(stablecog_conn):
    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        ok, message, elapsed = run_test(stablecog_conn, f"http://127.0.0.1:{port}", extra={"timeout": 0.5})
    assert ok is False
    assert "no answer within 0.5 s (timeout)" in message
    assert elapsed < 5


def test_whole_check_is_bounded_even_when_the_lookup_hangs(stablecog_conn, monkeypatch):
    real = socket.getaddrinfo

    def slow_getaddrinfo(host, *args, **kwargs):
        if host == "slow.nowhere.test":
            time.sleep(3)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    monkeypatch.setattr(hook_module, "TEST_CONNECTION_TIMEOUT", 0.5)
    ok, message, elapsed = run_test(stablecog_conn, "https://slow.nowhere.test")
    assert ok is False
    assert elapsed < 2.5
    assert "No answer from https://slow.nowhere.test within" in message


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expected"),
    [
        pytest.param(
            401,
            b'{"error":"Unauthorized"}',
            "application/json",
            "rejected the API key (401 Unauthorized)",
            id="401",
        ),
        pytest.param(
            403,
            b'{"error":"user_banned"}',
            "application/json",
            "refused this account (403 user_banned)",
            id="403",
        ),
        pytest.param(
            200, b"<html>hello</html>", "text/html", "answered HTTP 200 but not with JSON", id="html-200"
        ),
        pytest.param(404, b"not found", "text/plain", "has no /v1/credits (HTTP 404)", id="404"),
        pytest.param(503, b"<html>down</html>", "text/html", "bad_gateway (HTTP 503)", id="503"),
    ],
)
def test_answers_are_explained_without_retries(
    stablecog_conn, answering, status, body, content_type, expected
):
    server = answering(status, body, content_type)
    ok, message, elapsed = run_test(stablecog_conn, f"http://127.0.0.1:{server.port}")
    assert ok is False
    assert expected in message, message
    assert server.hits == 1  # one request: no retries, even for the retryable 503
    assert elapsed < 5


def test_success_through_a_loopback_server(stablecog_conn, answering):
    server = answering(200, b'{"total_remaining_credits": 1391, "credits": []}')
    ok, message, _ = run_test(stablecog_conn, f"http://127.0.0.1:{server.port}")
    assert (ok, message) == (True, f"Connected to http://127.0.0.1:{server.port}: 1,391 credits remaining")
