"""Errors raised by the Stablecog client, hook, operators and sensors.

The Stablecog API answers ``{"error": "<code>"}`` without a human description, so every
exception here carries the code *and* a sentence that tells the user what to do.
What happens next is decided by class, never by message text::

    StablecogError                      base: .code, .status_code, .retry_after
    ├── StablecogConfigError            bad connection or arguments; no request was sent
    ├── StablecogFatalError             stop the whole batch at once; retrying cannot help
    │   ├── StablecogAuthError          401 Unauthorized, 403 user_banned
    │   ├── InsufficientCreditsError    400 insufficient_credits (never retried)
    │   └── StablecogBudgetExceededError  the task's ``max_credits`` is spent (no request sent)
    ├── StablecogInputError             this one item is bad (invalid_image_url, output_not_found,
    │   │                               image_url_width_height_error, invalid_model_id, ...)
    │   └── ImageProbablyBrokenError    the worker failed twice on this input (image_probably_broken)
    ├── StablecogRetryableError         transient: retried with backoff, bounded
    │   ├── RateLimitError              429 (plain text) with Retry-After
    │   ├── QueueLimitError             400 queue_limit_reached
    │   ├── UpscaleTimeoutError         500 TIMEOUT (credit refunded by the server)
    │   ├── StablecogServerError        500 unknown worker failure, 502/503/504
    │   └── StablecogConnectionError    nothing was sent (connection refused, DNS, TLS), or a lost
    │                                   answer of a route that charges nothing (GET, upload)
    ├── StablecogResponseLostError      a charging request was sent and its answer lost (reset,
    │   │                               read timeout, cut-off body): maybe charged; never resent
    │   │                               by the client (response_lost)
    │   └── ResponseAbandonedError      the client itself dropped it: cancel(abort=True) / close()
    │                                   (also a CancelledError; code response_abandoned)
    ├── StablecogAPIError               any other answer we do not know (not retried)
    └── CancelledError                  the batch was stopped (on_kill, a fatal error elsewhere)

:func:`error_from_response` is the one place that turns an HTTP answer into one of these; the
sync client (requests) and the async trigger path (httpx) both call it. :func:`lost_answer_error`
is the one place that decides what a transport failure *after sending* is (the client's
``classify_transport_error`` decides whether anything was sent).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# What each server code means, in words a user can act on.
CODE_EXPLANATIONS: dict[str, str] = {
    "Unauthorized": (
        "the API key was rejected (missing, malformed, unknown or deactivated). Put a valid key "
        "(sc-...) in the password field of the Stablecog connection"
    ),
    "user_banned": "the Stablecog account behind this API key is banned; contact Stablecog support",
    "image_not_owned": (
        "the s3:// upload key belongs to another account; upload the image again with this "
        "connection's API key"
    ),
    "insufficient_credits": (
        "the account has no credits left for this request; buy or add credits, then clear the "
        "task to resume (finished images are not charged again)"
    ),
    "queue_limit_reached": (
        "more than 50 of the account's requests are already waiting; lower max_concurrency "
        "(this is retried automatically)"
    ),
    "invalid_image_url": (
        "the input is neither an output ID, an http(s) image URL nor an s3:// upload key of this "
        "account; check the item"
    ),
    "image_url_width_height_error": (
        "the server could not use the image: the URL must answer HEAD with a Content-Length and "
        "GET with Content-Type image/jpeg, image/png or image/webp, at most 10 MiB and "
        "1,048,576 pixels (e.g. 1024x1024); fix or downscale the image"
    ),
    "output_not_found": (
        "the UUID is not an output of one of this account's generations; check the output ID"
    ),
    "init_image_not_found": "the s3:// upload key is unknown; upload the image again",
    "invalid_model_id": (
        "the model_id is not a known upscale model; list models with "
        "StablecogHook().list_upscale_models() or leave model_id unset for the default"
    ),
    "json_parse_error": (
        "the request body could not be parsed (for example a model_id that is not a UUID); "
        "check the arguments"
    ),
    "nsfw_prompt": (
        "Stablecog's moderation refused this prompt (nothing was charged); reword the prompt of this item"
    ),
    "invalid_scheduler_id": (
        "the scheduler_id is not one of the model's schedulers; list them with "
        "StablecogHook().list_generation_models() or leave scheduler_id unset"
    ),
    "invalid_init_image_url": (
        "the init image is not an http(s) URL or an s3:// upload key of this account; fix the item's init_image"
    ),
    "invalid_mask_image_url": "the mask image is not an http(s) URL or an s3:// upload key of this account",
    "init_image_not_owned": (
        "the init image's s3:// upload key belongs to another account (or its URL has no host); "
        "upload the image again with this connection's API key"
    ),
    "mask_image_not_found": "the mask image's s3:// upload key is unknown; upload the image again",
    "invalid_file": "the uploaded file is not a JPEG, PNG or WebP image",
    "image_too_large": "the uploaded file is larger than 10 MiB; downscale or recompress it",
    "rate_limited": "the per-IP rate limit was hit; lower rate_limit (this is retried after Retry-After)",
    "TIMEOUT": ("the worker took longer than 240 s; the credits were refunded (this is retried)"),
    "unknown_error": "the worker failed; the credits were refunded (this is retried)",
    "bad_gateway": "the Stablecog service or its proxy is unavailable (this is retried)",
    "connection_error": "the Stablecog API could not be reached or the answer was cut off",
    "response_lost": (
        "the request was sent and may have been charged, but its answer was lost (connection reset, "
        "read timeout or a cut-off body); it is not resent automatically. The server carries on with "
        "a job it accepted: an output-ID input shows as upscaled in the outputs listing; resending a "
        "URL or upload input may charge it twice"
    ),
    "response_abandoned": (
        "the client stopped waiting for a request it had sent (the batch was stopped); it may have "
        "been charged and the server carries on with it"
    ),
    "image_probably_broken": (
        "the Stablecog worker failed twice on this same input (each attempt was refunded), so the "
        "image itself is probably broken (corrupt pixel data, an unusual encoding); re-encode it as a "
        "plain JPEG or PNG and try again"
    ),
}

INPUT_ERROR_CODES = frozenset(
    {
        "invalid_image_url",
        "image_url_width_height_error",
        "output_not_found",
        "init_image_not_found",
        "invalid_model_id",
        "json_parse_error",
        "image_not_owned",
        "invalid_file",
        "image_too_large",
        "nsfw_prompt",
        "invalid_scheduler_id",
        "invalid_init_image_url",
        "invalid_mask_image_url",
        "init_image_not_owned",
        "mask_image_not_found",
    }
)
WORKER_FAILURE_CODES = frozenset({"An unknown error has occured", "unknown_error"})


class StablecogError(Exception):
    """Base of every error this provider raises."""

    default_code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.status_code = status_code
        self.retry_after = retry_after


class StablecogConfigError(StablecogError, ValueError):
    """The connection or the arguments are wrong; nothing was sent."""

    default_code = "config_error"


class StablecogFatalError(StablecogError):
    """Retrying cannot help and no other request will succeed: stop the batch."""


class StablecogAuthError(StablecogFatalError):
    """401 or 403: the key is bad, or the account is banned."""

    default_code = "Unauthorized"


class InsufficientCreditsError(StablecogFatalError):
    """400 insufficient_credits. Never retried."""

    default_code = "insufficient_credits"


class StablecogBudgetExceededError(StablecogFatalError):
    """The task's budget (``max_credits``) is spent across its tries: a retry cannot help."""

    default_code = "max_credits"


class StablecogInputError(StablecogError):
    """One item is bad; other items of a batch are unaffected."""

    default_code = "invalid_input"


class StablecogRetryableError(StablecogError):
    """A transient failure, retried with backoff (bounded in count and time)."""


class RateLimitError(StablecogRetryableError):
    """429 Too Many Requests; ``retry_after`` holds the server's Retry-After in seconds."""

    default_code = "rate_limited"


class QueueLimitError(StablecogRetryableError):
    default_code = "queue_limit_reached"


class UpscaleTimeoutError(StablecogRetryableError):
    default_code = "TIMEOUT"


class StablecogServerError(StablecogRetryableError):
    default_code = "unknown_error"


class StablecogConnectionError(StablecogRetryableError):
    default_code = "connection_error"


class ImageProbablyBrokenError(StablecogInputError):
    """The worker failed on this same input twice in a row (500 unknown error, refunded each time).

    Per item and not retried: a third attempt would fail and be refunded again. The message says
    to re-encode the image. ``worker_failures`` counts the failures seen.
    """

    default_code = "image_probably_broken"

    def __init__(self, message: str, *, worker_failures: int = 2, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.worker_failures = worker_failures


class StablecogResponseLostError(StablecogError):
    """A charging request was sent, and its answer was lost: it may have been charged.

    Raised for ``POST /v1/image/upscale/create`` (any route that takes credits) when the connection
    was reset or aborted after the request was sent, the read timeout passed, or the body was cut
    off or unreadable. It is **not** a :class:`StablecogRetryableError`: the client never resends
    it by itself, because the server carries on with a job it accepted and charges it. The caller
    (the batch engine) records the item as possibly charged and decides: resending may charge twice
    (URL and upload inputs), while an output-ID input shows up as upscaled in
    ``GET /v1/image/generation/outputs`` once the server finishes it.

    Retry policy by route: GET routes and uploads charge nothing, so their lost answers are plain
    :class:`StablecogConnectionError` and retried; a connect failure (nothing sent) is always a
    retryable :class:`StablecogConnectionError`.

    ``possibly_charged`` is always True; ``method`` and ``path`` name the request.
    """

    default_code = "response_lost"
    possibly_charged = True

    def __init__(self, message: str, *, method: str = "", path: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.method = method
        self.path = path


class StablecogAPIError(StablecogError):
    """An answer this provider does not know; not retried."""

    default_code = "api_error"


class StablecogCancelledError(StablecogError):
    """The batch was stopped before this request was sent; nothing was charged for it.

    (Its subclass :class:`ResponseAbandonedError` is the exception: sent, then abandoned.)
    """

    default_code = "cancelled"


#: the name of provider 0.1 (not ``asyncio.CancelledError`` nor ``concurrent.futures.CancelledError``)
CancelledError = StablecogCancelledError


class ResponseAbandonedError(StablecogResponseLostError, CancelledError):
    """The client was stopped with in-flight requests closed (``cancel(abort=True)``, ``close()``).

    The request was sent, so it may have been charged, like :class:`StablecogResponseLostError`;
    it is also a :class:`CancelledError`, so code that only knows "stopped" still treats it so.
    """

    default_code = "response_abandoned"


def explain(code: str) -> str:
    """The user-facing sentence for a server code (or a generic one)."""
    return CODE_EXPLANATIONS.get(code, f"the Stablecog API answered with error code {code!r}")


def is_retryable(exc: BaseException) -> bool:
    """The single retry predicate: by class only."""
    return isinstance(exc, StablecogRetryableError)


def is_worker_failure(exc: BaseException) -> bool:
    """A 500 from the worker (``An unknown error has occured``), refunded: the input may be broken."""
    return isinstance(exc, StablecogServerError) and exc.status_code == 500 and exc.code == "unknown_error"


def lost_answer_error(context: str, method: str, path: str, why: str) -> StablecogResponseLostError:
    """The error for a charging request whose answer was lost after sending (``why``: what happened)."""
    prefix = f"{context}: " if context else ""
    return StablecogResponseLostError(
        f"{prefix}response_lost ({why}): {explain('response_lost')}", method=method, path=path
    )


def image_probably_broken(context: str, failures: int) -> ImageProbablyBrokenError:
    prefix = f"{context}: " if context else ""
    return ImageProbablyBrokenError(
        f"{prefix}image_probably_broken (HTTP 500 {failures} times): {explain('image_probably_broken')}",
        worker_failures=failures,
        status_code=500,
    )


def _parse_retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After") or headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_code(text: str) -> str | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return body["error"]
    return None


def error_from_response(
    status_code: int, headers: Mapping[str, str], text: str, *, context: str = ""
) -> StablecogError:
    """Classify an error answer. ``context`` (e.g. ``"upscale of 'x.png'"``) leads the message."""
    code = _error_code(text)
    retry_after = _parse_retry_after(headers)
    cls: type[StablecogError]
    if status_code == 429:
        cls, code = RateLimitError, "rate_limited"
    elif code == "insufficient_credits":
        cls = InsufficientCreditsError
    elif code == "queue_limit_reached":
        cls = QueueLimitError
    elif code in INPUT_ERROR_CODES or (status_code == 400 and code is not None and " " in code.strip()):
        # the generation route answers bad sizes, guidance or steps with a sentence, not a code
        cls = StablecogInputError
    elif status_code in (401, 403):
        cls, code = StablecogAuthError, code or "Unauthorized"
    elif code == "TIMEOUT":
        cls = UpscaleTimeoutError
    elif status_code == 500:
        cls, code = (
            StablecogServerError,
            "unknown_error" if code in WORKER_FAILURE_CODES or not code else code,
        )
    elif status_code in (502, 503, 504):
        cls, code = StablecogServerError, "bad_gateway"
    else:
        cls, code = StablecogAPIError, code or f"http_{status_code}"
    prefix = f"{context}: " if context else ""
    message = f"{prefix}{code} (HTTP {status_code}): {explain(code)}"
    return cls(message, code=code, status_code=status_code, retry_after=retry_after)
