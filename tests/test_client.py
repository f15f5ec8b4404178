from __future__ import annotations

import io
import json
import logging
import threading
import time

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from airflow_provider_stablecog import exceptions as exc
from airflow_provider_stablecog.client import (
    DEFAULT_READ_TIMEOUT,
    SERVER_LONGEST_HOLD,
    RateLimiter,
    RetryPolicy,
    StablecogClient,
    read_timeout_warning,
    request_was_sent,
)
from tests.conftest import API_KEY, BASE_URL

OUTPUT_ID = "6f1c2a52-0c61-4c5e-9a10-1d6cf0a8b0f1"
MODEL_ID = "14c9c5a4-33a8-4aed-a648-ee8510ae65b2"
UPSCALE_OK = {
    "outputs": [
        {
            "id": OUTPUT_ID,
            "url": "https://b.stablecog.com/a.jpeg",
            "upscaled_image_url": "https://b.stablecog.com/b.jpeg",
        }
    ],
    "remaining_credits": 1391,
    "settings": {"model_id": MODEL_ID, "input": "https://img.test/cat.png"},
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32
CONNECT_REFUSED = requests.exceptions.ConnectionError(
    MaxRetryError(None, "/v1", NewConnectionError(None, "Failed to establish a new connection: refused"))
)


def _auth(req) -> str:
    return req.headers.get("Authorization", "")


# -- every route: request and parsed response -----------------------------------------------


def test_upscale_request_and_result(client, requests_mock):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", json=UPSCALE_OK)
    result = client.upscale("https://img.test/cat.png", model_id=MODEL_ID)
    req = m.last_request
    assert req.method == "POST"
    assert _auth(req) == f"Bearer {API_KEY}"
    assert req.json() == {"input": "https://img.test/cat.png", "model_id": MODEL_ID}
    assert result.output_id == OUTPUT_ID
    assert result.upscaled_image_url == "https://b.stablecog.com/b.jpeg"
    assert result.remaining_credits == 1391
    assert result.model_id == MODEL_ID
    assert result.input == "https://img.test/cat.png"


def test_upscale_without_model_omits_it_and_falls_back_to_url(client, requests_mock):
    body = json.loads(json.dumps(UPSCALE_OK))
    del body["outputs"][0]["upscaled_image_url"]
    body["remaining_credits"] = 12.0  # the docs call it a float
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", json=body)
    result = client.upscale(OUTPUT_ID)
    assert m.last_request.json() == {"input": OUTPUT_ID}
    assert result.upscaled_image_url == "https://b.stablecog.com/a.jpeg"
    assert result.remaining_credits == 12


def test_get_credits(client, requests_mock):
    body = {
        "total_remaining_credits": 1391,
        "credits": [
            {
                "id": "c1",
                "remaining_amount": 1391,
                "expires_at": "2100-01-01T05:00:00Z",
                "type": {
                    "id": "t1",
                    "name": "Gift XLarge",
                    "amount": 1500,
                    "description": "XLarge gift pack.",
                },
            }
        ],
    }
    m = requests_mock.get(f"{BASE_URL}/v1/credits", json=body)
    credits = client.get_credits()
    assert m.last_request.method == "GET"
    assert _auth(m.last_request) == f"Bearer {API_KEY}"
    assert credits.total_remaining_credits == 1391
    assert credits.credits[0].type.name == "Gift XLarge"
    assert credits.credits[0].remaining_amount == 1391


def test_upscale_models_and_defaults_need_no_key(client, requests_mock):
    requests_mock.get(
        f"{BASE_URL}/v1/image/upscale/models",
        json={"models": [{"id": MODEL_ID, "name": "SwinIR", "is_default": True}]},
    )
    d = requests_mock.get(f"{BASE_URL}/v1/image/upscale/defaults", json={"model_id": MODEL_ID})
    models = client.list_upscale_models()
    assert models[0].id == MODEL_ID and models[0].is_default and models[0].name == "SwinIR"
    assert client.get_upscale_defaults() == MODEL_ID
    assert "Authorization" not in d.last_request.headers


@pytest.mark.parametrize("kind", ["path", "bytes", "fileobj"])
def test_upload_image(client, requests_mock, tmp_path, kind):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upload", json={"object": "s3://abc/def.png"})
    path = tmp_path / "in.png"
    path.write_bytes(PNG)
    source = {"path": path, "bytes": PNG, "fileobj": io.BytesIO(PNG)}[kind]
    key = client.upload_image(source, filename="in.png")
    req = m.last_request
    assert key == "s3://abc/def.png"
    assert _auth(req) == f"Bearer {API_KEY}"
    assert req.headers["Content-Type"].startswith("multipart/form-data")
    body = req.body if isinstance(req.body, bytes) else req.body.read()
    assert b'name="file"; filename="in.png"' in body
    assert b"Content-Type: image/png" in body
    assert PNG in body


def test_upload_is_retried_from_the_start_of_the_file(client, requests_mock):
    m = requests_mock.post(
        f"{BASE_URL}/v1/image/upload",
        [{"status_code": 502, "text": "<html>bad gateway</html>"}, {"json": {"object": "s3://k/x.png"}}],
    )
    assert client.upload_image(io.BytesIO(PNG), filename="x.png") == "s3://k/x.png"
    assert m.call_count == 2
    assert PNG in m.last_request.body


def test_generation_outputs_pagination(client, requests_mock):
    page1 = {
        "total": 3,
        "next": "cur-2",
        "outputs": [
            {"id": "o1", "image_url": "u1"},
            {"id": "o2", "image_url": "u2", "upscaled_image_url": "x2"},
        ],
    }
    page2 = {"outputs": [{"id": "o3", "image_url": "u3"}]}
    m = requests_mock.get(f"{BASE_URL}/v1/image/generation/outputs", [{"json": page1}, {"json": page2}])
    outputs = list(client.iter_generation_outputs(per_page=2, upscaled="any"))
    assert [o.id for o in outputs] == ["o1", "o2", "o3"]
    assert [o.is_upscaled for o in outputs] == [False, True, False]
    first, second = m.request_history
    assert first.qs == {"per_page": ["2"], "upscaled": ["any"]}
    assert second.qs["cursor"] == ["cur-2"]
    assert _auth(first) == f"Bearer {API_KEY}"


def test_generation_outputs_argument_checks(client):
    with pytest.raises(exc.StablecogConfigError, match="per_page"):
        client.list_generation_outputs(per_page=301)
    with pytest.raises(exc.StablecogConfigError, match="upscaled"):
        client.list_generation_outputs(upscaled="yes")


def test_health(client, requests_mock):
    m = requests_mock.get(f"{BASE_URL}/v1/health", json={"status": "ok"})
    assert client.health() is True
    assert "Authorization" not in m.last_request.headers


# -- errors and retries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "cls"),
    [
        (401, {"error": "Unauthorized"}, exc.StablecogAuthError),
        (403, {"error": "user_banned"}, exc.StablecogAuthError),
        (400, {"error": "insufficient_credits"}, exc.InsufficientCreditsError),
        (400, {"error": "invalid_image_url"}, exc.StablecogInputError),
        (400, {"error": "output_not_found"}, exc.StablecogInputError),
        (400, {"error": "image_url_width_height_error"}, exc.StablecogInputError),
    ],
)
def test_non_retryable_errors_are_sent_once(client, requests_mock, status, body, cls):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", status_code=status, json=body)
    with pytest.raises(cls) as info:
        client.upscale("https://img.test/a.png")
    assert m.call_count == 1
    assert info.value.code == body["error"]
    assert "https://img.test/a.png" in str(info.value)


def test_429_is_retried_after_retry_after_without_spending_an_attempt(requests_mock):
    policy = RetryPolicy(max_attempts=1, rate_limit_jitter=0)
    m = requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create",
        [{"status_code": 429, "text": "Too Many Requests", "headers": {"Retry-After": "0.3"}}] * 3
        + [{"json": UPSCALE_OK}],
    )
    with StablecogClient(API_KEY, BASE_URL, rate_limit=None, retry=policy) as c:
        start = time.monotonic()
        assert c.upscale("https://img.test/a.png").output_id == OUTPUT_ID
        elapsed = time.monotonic() - start
    assert m.call_count == 4  # three 429s and the answer, with max_attempts=1
    assert elapsed >= 0.9  # Retry-After honoured each time
    assert c.rate_limiter.rate_limited == 3


def test_429s_are_bounded_by_the_rate_limit_budget(requests_mock):
    policy = RetryPolicy(max_attempts=10, rate_limit_budget=0.3, rate_limit_jitter=0)
    m = requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create",
        status_code=429,
        text="Too Many Requests",
        headers={"Retry-After": "0.1"},
    )
    with (
        StablecogClient(API_KEY, BASE_URL, rate_limit=None, retry=policy) as c,
        pytest.raises(exc.RateLimitError, match="rate_limit_budget"),
    ):
        c.upscale("https://img.test/a.png")
    assert 3 <= m.call_count <= 6


@pytest.mark.parametrize(
    "failure",
    [
        {"status_code": 400, "json": {"error": "queue_limit_reached"}},
        {"status_code": 500, "json": {"error": "TIMEOUT"}},
        {"status_code": 502, "text": "<html>Bad Gateway</html>"},
        {"status_code": 503, "text": "<html>Unavailable</html>"},
        {"exc": CONNECT_REFUSED},
        {"exc": requests.exceptions.ConnectTimeout("slow to connect")},
    ],
    ids=["queue_limit", "TIMEOUT", "502", "503", "connect_refused", "connect_timeout"],
)
def test_transient_errors_are_retried(client, requests_mock, failure):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", [failure, failure, {"json": UPSCALE_OK}])
    assert client.upscale("https://img.test/a.png").output_id == OUTPUT_ID
    assert m.call_count == 3


LOST = [
    {
        "exc": requests.exceptions.ConnectionError(
            ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
        )
    },
    {"exc": requests.exceptions.ConnectionError("reset")},
    {"exc": requests.exceptions.ReadTimeout("slow")},
    {"exc": requests.exceptions.ChunkedEncodingError("cut")},
    {"status_code": 200, "text": '{"outputs": [{"id"'},
]
LOST_IDS = ["conn_reset", "unknown_conn_error", "read_timeout", "cut_off", "truncated_200"]


@pytest.mark.parametrize("failure", LOST, ids=LOST_IDS)
def test_lost_answer_of_an_upscale_is_never_resent(client, requests_mock, failure, caplog):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", [failure, {"json": UPSCALE_OK}])
    with pytest.raises(exc.StablecogResponseLostError) as info:
        client.upscale("https://img.test/a.png")
    assert m.call_count == 1
    error = info.value
    assert error.code == "response_lost" and error.possibly_charged
    assert (error.method, error.path) == ("POST", "/v1/image/upscale/create")
    assert not exc.is_retryable(error) and not isinstance(error, exc.StablecogConnectionError)
    assert "may have been charged" in str(error)
    assert "check the base URL" not in str(error)


@pytest.mark.parametrize("failure", LOST[:4], ids=LOST_IDS[:4])
def test_lost_answer_of_a_read_is_retried(client, requests_mock, failure):
    ok = {"json": {"total_remaining_credits": 5, "credits": []}}
    m = requests_mock.get(f"{BASE_URL}/v1/credits", [failure, ok])
    assert client.get_credits().total_remaining_credits == 5
    assert m.call_count == 2


def test_connect_error_says_check_the_base_url(client, requests_mock):
    requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", exc=CONNECT_REFUSED)
    with pytest.raises(exc.StablecogConnectionError, match="could not connect; check the base URL") as info:
        client.upscale("https://img.test/a.png")
    assert not isinstance(info.value, exc.StablecogResponseLostError)


def test_request_was_sent_classification():
    assert not request_was_sent(CONNECT_REFUSED)
    assert not request_was_sent(requests.exceptions.ConnectTimeout())
    assert request_was_sent(requests.exceptions.ReadTimeout())
    assert request_was_sent(requests.exceptions.ChunkedEncodingError())
    assert request_was_sent(requests.exceptions.ConnectionError(ProtocolError("Connection aborted.")))


def test_worker_failing_twice_on_one_input_is_a_broken_image(client, requests_mock):
    failure = {"status_code": 500, "json": {"error": "An unknown error has occured"}}
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", [failure] * 5 + [{"json": UPSCALE_OK}])
    with pytest.raises(exc.ImageProbablyBrokenError) as info:
        client.upscale("https://img.test/a.png")
    assert m.call_count == 2
    assert info.value.code == "image_probably_broken" and isinstance(info.value, exc.StablecogInputError)
    assert not exc.is_retryable(info.value) and "re-encode" in str(info.value)


def test_one_worker_failure_is_retried(client, requests_mock):
    failure = {"status_code": 500, "json": {"error": "An unknown error has occured"}}
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", [failure, {"json": UPSCALE_OK}])
    assert client.upscale("https://img.test/a.png").output_id == OUTPUT_ID
    assert m.call_count == 2


def test_read_timeout_rule():
    assert read_timeout_warning(DEFAULT_READ_TIMEOUT) is None
    assert DEFAULT_READ_TIMEOUT > SERVER_LONGEST_HOLD
    message = read_timeout_warning(300)
    assert message and "480" in message and "240 s" in message


def test_short_read_timeout_is_warned_once(requests_mock, caplog):
    caplog.set_level(logging.WARNING)
    requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", json=UPSCALE_OK)
    with StablecogClient(API_KEY, BASE_URL, read_timeout=123.5, rate_limit=None) as c:
        c.upscale("https://img.test/a.png")
        c.upscale("https://img.test/b.png")
    with StablecogClient(API_KEY, BASE_URL, read_timeout=123.5, rate_limit=None) as c:
        c.upscale("https://img.test/a.png")
    assert caplog.text.count("read timeout 123.5 s is shorter") == 1


def test_retries_are_bounded_by_count(client, requests_mock):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", status_code=500, json={"error": "TIMEOUT"})
    with pytest.raises(exc.UpscaleTimeoutError, match="240 s"):
        client.upscale("https://img.test/a.png")
    assert m.call_count == client.retry_policy.max_attempts


def test_retries_are_bounded_by_time(requests_mock):
    policy = RetryPolicy(max_attempts=100, max_elapsed=0.2, initial_backoff=0.05, max_backoff=0.05, jitter=0)
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", status_code=502, text="<html/>")
    with (
        StablecogClient(API_KEY, BASE_URL, rate_limit=None, retry=policy) as c,
        pytest.raises(exc.StablecogServerError),
    ):
        c.upscale("https://img.test/a.png")
    assert 2 <= m.call_count < 20


def test_cancel_stops_retries_and_new_requests(client, requests_mock):
    m = requests_mock.post(f"{BASE_URL}/v1/image/upscale/create", status_code=502, text="<html/>")
    client.cancel()
    with pytest.raises(exc.CancelledError):
        client.upscale("https://img.test/a.png")
    assert m.call_count == 0


def test_not_json_answer_is_a_clear_error(client, requests_mock):
    requests_mock.get(f"{BASE_URL}/v1/credits", text="<html>captive portal</html>")
    with pytest.raises(exc.StablecogConnectionError, match="not JSON"):
        client.get_credits()


def test_missing_key_is_a_config_error_before_any_request(requests_mock):
    m = requests_mock.get(f"{BASE_URL}/v1/credits", json={})
    with (
        StablecogClient(None, BASE_URL) as c,
        pytest.raises(exc.StablecogConfigError, match="password field"),
    ):
        c.get_credits()
    assert m.call_count == 0


# -- downloads ---------------------------------------------------------------------------------


def test_download_streams_without_the_key(client, requests_mock):
    url = "https://b.stablecog.test/out.jpeg"
    m = requests_mock.get(url, content=b"\xff\xd8\xff" + b"x" * 5000, headers={"Content-Type": "image/jpeg"})
    sink = io.BytesIO()
    sink.close = lambda: None  # keep the buffer readable after the with-block
    written = client.download(url, lambda: sink, chunk_size=1024)
    assert written == 5003
    assert sink.getvalue().startswith(b"\xff\xd8\xff")
    assert "Authorization" not in m.last_request.headers


@pytest.mark.parametrize(
    ("url", "response", "code"),
    [
        ("file:///etc/passwd", None, "invalid_output_url"),
        (
            "https://b.test/x",
            {"text": "<html/>", "headers": {"Content-Type": "text/html"}},
            "invalid_output_content",
        ),
        (
            "https://b.test/y",
            {"content": b"x" * 100, "headers": {"Content-Type": "image/jpeg", "Content-Length": "100"}},
            "output_too_large",
        ),
        (
            "https://b.test/z",
            {"content": b"x" * 100, "headers": {"Content-Type": "image/jpeg"}},
            "output_too_large",
        ),
    ],
)
def test_download_refuses_untrusted_answers(client, requests_mock, url, response, code):
    if response:
        requests_mock.get(url, **response)
    with pytest.raises(exc.StablecogInputError) as info:
        client.download(url, io.BytesIO, max_bytes=50)
    assert info.value.code == code


# -- secrets -----------------------------------------------------------------------------------


def test_key_never_in_logs_or_exception_text(client, requests_mock, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    requests_mock.post(
        f"{BASE_URL}/v1/image/upscale/create",
        [
            {
                "exc": requests.exceptions.ConnectionError(
                    MaxRetryError(
                        None, "/", NewConnectionError(None, f"boom Authorization: Bearer {API_KEY}")
                    )
                )
            }
        ]
        * 10,
    )
    with pytest.raises(exc.StablecogConnectionError) as info:
        client.upscale("https://user:hunter2@img.test/a.png?X-Amz-Signature=secretsig")
    text = str(info.value) + repr(info.value) + repr(client) + caplog.text + "".join(capsys.readouterr())
    assert "retrying" in text  # the retries were logged, without the key
    assert API_KEY not in text
    assert "hunter2" not in text and "secretsig" not in text
    assert info.value.__cause__ is None  # the transport exception (which may echo headers) is not chained


# -- rate limiter ------------------------------------------------------------------------------


def test_rate_limiter_spaces_requests():
    now = [0.0]
    limiter = RateLimiter(2.0, burst=1, clock=lambda: now[0])
    assert limiter.delay() == 0
    assert limiter.delay() == pytest.approx(0.5)
    now[0] = 0.5
    assert limiter.delay() == 0
    limiter.pause(3)
    assert limiter.delay() == pytest.approx(3)


def test_rate_limiter_is_shared_by_threads():
    limiter = RateLimiter(50.0, burst=1)
    import time

    start = time.monotonic()
    threads = [threading.Thread(target=limiter.acquire) for _ in range(11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - start >= 0.18  # 10 tokens after the first, at 50/s


def test_download_429_waits_retry_after_without_a_shared_limiter(client, requests_mock, monkeypatch):
    sleeps: list[float] = []
    monkeypatch.setattr(client, "_sleep", sleeps.append)
    url = "https://b.stablecog.test/out.jpeg"
    m = requests_mock.get(
        url,
        [
            {"status_code": 429, "text": "slow down", "headers": {"Retry-After": "2"}},
            {"content": b"\xff\xd8\xff", "headers": {"Content-Type": "image/jpeg"}},
        ],
    )
    sink = io.BytesIO()
    sink.close = lambda: None
    assert client.download(url, lambda: sink) == 3
    assert (
        m.call_count == 2
        and len(sleeps) == 1
        and 2.0 <= sleeps[0] <= 2.0 + client.retry_policy.rate_limit_jitter
    )


def test_proxy_environment_is_honoured_and_read_once_per_host(monkeypatch):
    """The session takes proxies and CA bundle from the environment as requests does, reading the
    environment once per scheme and host rather than on every request."""
    import requests.utils

    reads = []
    real = requests.utils.get_environ_proxies

    def counting(url, no_proxy=None):
        reads.append(url)
        return real(url, no_proxy=no_proxy)

    monkeypatch.setattr(requests.utils, "get_environ_proxies", counting)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", "bypass.test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ca.pem")
    urls = [
        "https://api.test/v1/a",
        "https://api.test/v1/b",
        "https://bypass.test/x",
        "https://api.test/v1/c",
    ]
    with StablecogClient(API_KEY, BASE_URL) as client:
        session = client.session
        ours = [session.merge_environment_settings(u, {}, None, None, None) for u in urls]
        assert len(reads) == 2  # api.test and bypass.test, once each
        plain = requests.Session()
        assert ours == [plain.merge_environment_settings(u, {}, None, None, None) for u in urls]
        assert ours[0]["proxies"] == {"https": "http://proxy.test:3128", "no": "bypass.test"}
        assert ours[0]["verify"] == "/etc/ca.pem"
        assert "https" not in ours[2]["proxies"]  # NO_PROXY honoured
        session.trust_env = False  # still turns the environment off
        assert session.merge_environment_settings(urls[0], {}, None, None, None)["proxies"] == {}
