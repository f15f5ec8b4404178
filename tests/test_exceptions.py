from __future__ import annotations

import json

import pytest

from airflow_provider_stablecog import exceptions as exc

CASES = [
    # status, body, headers, class, code
    (401, {"error": "Unauthorized"}, {}, exc.StablecogAuthError, "Unauthorized"),
    (403, {"error": "user_banned"}, {}, exc.StablecogAuthError, "user_banned"),
    (401, {"error": "image_not_owned"}, {}, exc.StablecogInputError, "image_not_owned"),
    (400, {"error": "insufficient_credits"}, {}, exc.InsufficientCreditsError, "insufficient_credits"),
    (400, {"error": "queue_limit_reached"}, {}, exc.QueueLimitError, "queue_limit_reached"),
    (400, {"error": "invalid_image_url"}, {}, exc.StablecogInputError, "invalid_image_url"),
    (
        400,
        {"error": "image_url_width_height_error"},
        {},
        exc.StablecogInputError,
        "image_url_width_height_error",
    ),
    (400, {"error": "output_not_found"}, {}, exc.StablecogInputError, "output_not_found"),
    (400, {"error": "invalid_model_id"}, {}, exc.StablecogInputError, "invalid_model_id"),
    (400, {"error": "json_parse_error"}, {}, exc.StablecogInputError, "json_parse_error"),
    (400, {"error": "init_image_not_found"}, {}, exc.StablecogInputError, "init_image_not_found"),
    (400, {"error": "invalid_file"}, {}, exc.StablecogInputError, "invalid_file"),
    (400, {"error": "image_too_large"}, {}, exc.StablecogInputError, "image_too_large"),
    (429, "Too Many Requests", {"Retry-After": "1"}, exc.RateLimitError, "rate_limited"),
    (500, {"error": "TIMEOUT"}, {}, exc.UpscaleTimeoutError, "TIMEOUT"),
    (500, {"error": "An unknown error has occured"}, {}, exc.StablecogServerError, "unknown_error"),
    (500, {"error": "unknown_error"}, {}, exc.StablecogServerError, "unknown_error"),
    (500, "<html>oops</html>", {}, exc.StablecogServerError, "unknown_error"),
    (502, "<html>Bad Gateway</html>", {}, exc.StablecogServerError, "bad_gateway"),
    (503, "<html>Unavailable</html>", {}, exc.StablecogServerError, "bad_gateway"),
    (504, "<html>Gateway Timeout</html>", {}, exc.StablecogServerError, "bad_gateway"),
    (418, {"error": "teapot"}, {}, exc.StablecogAPIError, "teapot"),
    (404, "not found", {}, exc.StablecogAPIError, "http_404"),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code"), CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES]
)
def test_error_from_response_classifies_every_code(status, body, headers, cls, code):
    text = body if isinstance(body, str) else json.dumps(body)
    error = exc.error_from_response(status, headers, text, context="upscale of 'x.png'")
    assert type(error) is cls
    assert error.code == code
    assert error.status_code == status
    message = str(error)
    assert message.startswith("upscale of 'x.png': ")
    assert code in message
    assert f"HTTP {status}" in message
    # the explanation is a sentence the user can act on, not just the code
    assert len(message) > len(code) + 40


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code"), CASES, ids=[f"{c[0]}-{c[4]}" for c in CASES]
)
def test_retry_predicate_is_by_class(status, body, headers, cls, code):
    text = body if isinstance(body, str) else json.dumps(body)
    error = exc.error_from_response(status, headers, text)
    expected = cls in (
        exc.RateLimitError,
        exc.QueueLimitError,
        exc.UpscaleTimeoutError,
        exc.StablecogServerError,
    )
    assert exc.is_retryable(error) is expected


def test_never_retry_insufficient_credits_or_401():
    assert not exc.is_retryable(exc.error_from_response(400, {}, '{"error":"insufficient_credits"}'))
    assert not exc.is_retryable(exc.error_from_response(401, {}, '{"error":"Unauthorized"}'))
    assert isinstance(exc.error_from_response(401, {}, ""), exc.StablecogFatalError)


def test_retry_after_is_parsed():
    error = exc.error_from_response(429, {"Retry-After": "3"}, "Too Many Requests")
    assert error.retry_after == 3.0
    assert exc.error_from_response(429, {"Retry-After": "soon"}, "").retry_after is None


def test_connection_error_is_retryable_and_config_error_is_value_error():
    assert exc.is_retryable(exc.StablecogConnectionError("x"))
    assert isinstance(exc.StablecogConfigError("x"), ValueError)
    assert not exc.is_retryable(exc.CancelledError("x"))
